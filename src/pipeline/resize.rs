//! Resizing that reproduces OpenCV's `cv::resize(..., INTER_LINEAR)` on 8-bit
//! images, which is what Caffe's `convert_imageset` and ImageData layer use.
//!
//! OpenCV's bilinear does not antialias when shrinking and works in fixed
//! point: 11-bit coefficients, a horizontal pass into i32 rows (kept here as
//! `row >> 4` in i16, all the vertical pass reads), and a vertical pass that
//! computes `((r0>>4)*b0>>16) + ((r1>>4)*b1>>16) + 2 >> 2` for every element;
//! rows outside the image reuse the edge row with both weights. An exact 2x
//! shrink in both axes is switched to INTER_AREA, i.e. the rounded mean of
//! each 2x2 block. Checked against cv2 4.5.5 and 5.0 on random sizes. Resamplers that antialias (Pillow,
//! fast_image_resize's convolution) do not reproduce these bytes.
use super::mat::Mat8;

const COEF_BITS: i32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// Resizes `src` to `width` x `height` exactly as OpenCV's INTER_LINEAR does.
pub fn resize_linear(src: &Mat8, width: usize, height: usize) -> Mat8 {
    assert!(width > 0 && height > 0 && src.width > 0 && src.height > 0);
    if src.width == width && src.height == height {
        return src.clone();
    }
    if src.width == 2 * width && src.height == 2 * height {
        return shrink_2x2(src, width, height);
    }
    let cn = src.channels;
    let (xofs, alpha) = axis_coeffs(src.width, width);
    let (yofs, beta) = vertical_coeffs(src.height, height);

    let row_len = width * cn;
    // Horizontally resized source rows, cached by source row index: each
    // output row needs two, and neighbouring output rows share them.
    let mut cache: [(usize, Vec<i16>); 2] = [
        (usize::MAX, vec![0; row_len]),
        (usize::MAX, vec![0; row_len]),
    ];
    let mut out = vec![0u8; height * row_len];
    for (dy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let last = src.height as i64 - 1;
        let sy0 = yofs[dy].clamp(0, last) as usize;
        let sy1 = (yofs[dy] + 1).clamp(0, last) as usize;
        for sy in [sy0, sy1] {
            if cache[0].0 != sy && cache[1].0 != sy {
                // Evict the slot not holding the other row we need.
                let slot = if cache[0].0 == sy0 || cache[0].0 == sy1 {
                    1
                } else {
                    0
                };
                let line = &src.data[sy * src.width * cn..(sy + 1) * src.width * cn];
                horizontal(line, cn, &xofs, &alpha, &mut cache[slot].1);
                cache[slot].0 = sy;
            }
        }
        let r0 = if cache[0].0 == sy0 {
            &cache[0].1
        } else {
            &cache[1].1
        };
        let r1 = if cache[0].0 == sy1 {
            &cache[0].1
        } else {
            &cache[1].1
        };
        vertical(r0, r1, beta[dy], out_row);
    }
    Mat8::new(width, height, cn, out)
}

/// OpenCV's scale for one axis: the reciprocal of dst/src (not src/dst,
/// which can differ in the last bit).
fn axis_scale(src_len: usize, dst_len: usize) -> f64 {
    1.0 / (dst_len as f64 / src_len as f64)
}

/// OpenCV's source position for output index `d` at `scale` (source pixels
/// per output pixel), in its float arithmetic: the index below and the
/// fraction past it.
fn source_position(d: usize, scale: f64) -> (i64, f32) {
    let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
    let s = f.floor();
    (s as i64, f - s)
}

/// The two 11-bit weights for fraction `f`, rounded as OpenCV's
/// `saturate_cast<short>` does (ties to even).
fn weights(f: f32) -> [i32; 2] {
    [
        ((1.0f32 - f) * COEF_SCALE).round_ties_even() as i32,
        (f * COEF_SCALE).round_ties_even() as i32,
    ]
}

/// Source index and weights for each output column. Columns past either
/// edge take the edge pixel with full weight.
fn axis_coeffs(src_len: usize, dst_len: usize) -> (Vec<usize>, Vec<[i32; 2]>) {
    let scale = axis_scale(src_len, dst_len);
    (0..dst_len)
        .map(|d| {
            let (s, f) = source_position(d, scale);
            if s < 0 {
                (0, weights(0.0))
            } else if s >= src_len as i64 - 1 {
                (src_len - 1, weights(0.0))
            } else {
                (s as usize, weights(f))
            }
        })
        .unzip()
}

/// The vertical counterpart of `axis_coeffs`. OpenCV clamps only the row
/// indices here, not the weights: above the first and below the last row an
/// output row still mixes two (equal) source rows with both weights, and the
/// vertical pass rounds `a*b0 + a*b1` differently from `a*2048`.
fn vertical_coeffs(src_len: usize, dst_len: usize) -> (Vec<i64>, Vec<[i32; 2]>) {
    let scale = axis_scale(src_len, dst_len);
    (0..dst_len)
        .map(|d| {
            let (s, f) = source_position(d, scale);
            (s, weights(f))
        })
        .unzip()
}

/// One source row resized horizontally: `v0*a0 + v1*a1` exactly (OpenCV's
/// i32 row), stored already shifted right by 4 as the vertical pass reads it
/// (it fits an i16: at most 255*2048 >> 4 = 32640).
fn horizontal(line: &[u8], cn: usize, xofs: &[usize], alpha: &[[i32; 2]], row: &mut [i16]) {
    // A fixed channel count lets the compiler unroll the inner loop.
    match cn {
        1 => horizontal_cn::<1>(line, xofs, alpha, row),
        3 => horizontal_cn::<3>(line, xofs, alpha, row),
        4 => horizontal_cn::<4>(line, xofs, alpha, row),
        _ => {
            let last = line.len() / cn - 1;
            for ((out, &sx), &[a0, a1]) in row.chunks_exact_mut(cn).zip(xofs).zip(alpha) {
                let (i0, i1) = (sx * cn, (sx + 1).min(last) * cn);
                for c in 0..cn {
                    let v = line[i0 + c] as i32 * a0 + line[i1 + c] as i32 * a1;
                    out[c] = (v >> 4) as i16;
                }
            }
        }
    }
}

#[inline(always)]
fn horizontal_cn<const CN: usize>(
    line: &[u8],
    xofs: &[usize],
    alpha: &[[i32; 2]],
    row: &mut [i16],
) {
    // SAFETY: `[u8; CN]` has the size of CN bytes and alignment 1, so the
    // first len / CN * CN bytes of `line` are that many pixels (this is
    // `<[u8]>::as_chunks`, newer than our MSRV).
    let pixels: &[[u8; CN]] =
        unsafe { std::slice::from_raw_parts(line.as_ptr().cast(), line.len() / CN) };
    let last = pixels.len() - 1;
    for ((o, &sx), &[a0, a1]) in row.chunks_exact_mut(CN).zip(xofs).zip(alpha) {
        let (p0, p1) = (pixels[sx], pixels[(sx + 1).min(last)]);
        for c in 0..CN {
            o[c] = ((p0[c] as i32 * a0 + p1[c] as i32 * a1) >> 4) as i16;
        }
    }
}

/// OpenCV's vertical pass (its SIMD form, which it uses for every element of
/// 8-bit images): `((r0*b0 >> 16) + (r1*b1 >> 16) + 2) >> 2` on the shifted
/// rows, i.e. a 16-bit multiply-high and a saturating pack to u8.
fn vertical(r0: &[i16], r1: &[i16], [b0, b1]: [i32; 2], out: &mut [u8]) {
    let (b0, b1) = (b0 as i16, b1 as i16);
    let (r0, r1) = (&r0[..out.len()], &r1[..out.len()]);
    let done = vertical_simd(r0, r1, b0, b1, out);
    let mul_hi = |a: i16, b: i16| ((a as i32 * b as i32) >> 16) as i16;
    for ((o, &a), &b) in out[done..].iter_mut().zip(&r0[done..]).zip(&r1[done..]) {
        // Each product is at most 32640*2048 >> 16 = 1020: no overflow.
        let v = mul_hi(a, b0) + mul_hi(b, b1);
        *o = ((v + 2) >> 2).clamp(0, 255) as u8;
    }
}

/// The vertical pass 16 outputs at a time with SSE2 (part of every x86-64
/// CPU), the instructions OpenCV's own loop compiles to; returns how many
/// outputs it wrote. LLVM does not find `pmulhw` in the scalar form.
#[cfg(target_arch = "x86_64")]
fn vertical_simd(r0: &[i16], r1: &[i16], b0: i16, b1: i16, out: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = out.len().min(r0.len()).min(r1.len()) / 16 * 16;
    // SAFETY: SSE2 is baseline on x86-64; every load reads 8 i16s at
    // x or x + 8 < n <= r0.len(), r1.len(), and every store writes 16 bytes
    // at x + 16 <= n <= out.len().
    unsafe {
        let (vb0, vb1, two) = (_mm_set1_epi16(b0), _mm_set1_epi16(b1), _mm_set1_epi16(2));
        let half = |r: &[i16], x: usize, b: __m128i| {
            _mm_mulhi_epi16(_mm_loadu_si128(r.as_ptr().add(x).cast()), b)
        };
        for x in (0..n).step_by(16) {
            let lo = _mm_add_epi16(half(r0, x, vb0), half(r1, x, vb1));
            let hi = _mm_add_epi16(half(r0, x + 8, vb0), half(r1, x + 8, vb1));
            let lo = _mm_srai_epi16(_mm_add_epi16(lo, two), 2);
            let hi = _mm_srai_epi16(_mm_add_epi16(hi, two), 2);
            _mm_storeu_si128(out.as_mut_ptr().add(x).cast(), _mm_packus_epi16(lo, hi));
        }
    }
    n
}

#[cfg(not(target_arch = "x86_64"))]
fn vertical_simd(_: &[i16], _: &[i16], _: i16, _: i16, _: &mut [u8]) -> usize {
    0
}

/// OpenCV's INTER_AREA fast path for an exact 2x shrink: the mean of each
/// 2x2 block, rounded up on a tie by its SIMD loops (1, 3 and 4 channels)
/// and to even by its scalar loop (any other channel count).
fn shrink_2x2(src: &Mat8, width: usize, height: usize) -> Mat8 {
    let cn = src.channels;
    let simd_rounding = matches!(cn, 1 | 3 | 4);
    let stride = src.width * cn;
    let mut out = vec![0u8; width * height * cn];
    for dy in 0..height {
        let top = &src.data[2 * dy * stride..(2 * dy + 1) * stride];
        let bottom = &src.data[(2 * dy + 1) * stride..(2 * dy + 2) * stride];
        let dst = &mut out[dy * width * cn..(dy + 1) * width * cn];
        for dx in 0..width {
            for c in 0..cn {
                let i = 2 * dx * cn + c;
                let sum =
                    top[i] as u32 + top[i + cn] as u32 + bottom[i] as u32 + bottom[i + cn] as u32;
                dst[dx * cn + c] = if simd_rounding {
                    ((sum + 2) >> 2) as u8
                } else {
                    // cvRound(sum * 0.25): halves go to even.
                    (sum as f32 * 0.25).round_ties_even() as u8
                };
            }
        }
    }
    Mat8::new(width, height, cn, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let m = Mat8::new(3, 2, 1, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(resize_linear(&m, 3, 2), m);
    }

    #[test]
    fn exact_half_averages_blocks_with_rounding() {
        let m = Mat8::new(2, 2, 1, vec![0, 1, 1, 0]);
        assert_eq!(resize_linear(&m, 1, 1).data, vec![1]); // (2+2)>>2
        let m = Mat8::new(2, 2, 1, vec![0, 1, 0, 0]);
        assert_eq!(resize_linear(&m, 1, 1).data, vec![0]);
    }

    #[test]
    fn exact_half_of_two_channels_rounds_halves_to_even() {
        // OpenCV's scalar INTER_AREA loop (no SIMD for 2 channels) rounds
        // 0.5 and 2.5 to even, unlike the 1/3/4-channel loops.
        let m = Mat8::new(2, 2, 2, vec![0, 2, 1, 3, 0, 2, 1, 3]);
        assert_eq!(resize_linear(&m, 1, 1).data, vec![0, 2]);
        let m = Mat8::new(2, 2, 1, vec![0, 1, 0, 1]);
        assert_eq!(resize_linear(&m, 1, 1).data, vec![1]);
    }

    #[test]
    fn upscale_interpolates_and_clamps_edges() {
        // 2 -> 4 columns: OpenCV gives 0, 64, 191, 255 for a 0..255 ramp.
        let m = Mat8::new(2, 1, 1, vec![0, 255]);
        let r = resize_linear(&m, 4, 1);
        assert_eq!(r.data, vec![0, 64, 191, 255]);
    }

    #[test]
    fn constant_image_stays_constant() {
        let m = Mat8::new(7, 5, 3, vec![200; 7 * 5 * 3]);
        let r = resize_linear(&m, 13, 3);
        assert!(r.data.iter().all(|&v| v == 200));
    }
    #[test]
    fn upscale_edge_rows_round_as_opencv_does() {
        // Golden values from cv2.resize(src, (20, 11), INTER_LINEAR) (OpenCV
        // 5.0.0, whose result equals the 4.6 of Caffe's fixtures): the first
        // and last output rows lie outside the source rows and mix row 0 (or
        // row 2) with itself, rounding unlike a single full weight would.
        let src = Mat8::new(
            7,
            3,
            1,
            vec![
                99, 206, 239, 189, 230, 118, 144, 73, 8, 228, 231, 190, 155, 112, 158, 208, 7, 204,
                143, 113, 181,
            ],
        );
        #[rustfmt::skip]
        let want = vec![99, 101, 139, 176, 208, 220, 231, 233, 215, 198, 196, 210, 225, 205, 165, 126, 125, 134, 143, 144, 99, 101, 139, 177, 208, 220, 232, 233, 215, 198, 196, 210, 225, 205, 166, 126, 125, 134, 143, 144, 94, 96, 123, 149, 175, 198, 222, 232, 218, 204, 201, 210, 219, 201, 166, 132, 128, 133, 138, 138, 87, 88, 98, 108, 125, 166, 207, 231, 222, 213, 208, 210, 211, 194, 167, 140, 133, 131, 129, 129, 80, 79, 73, 67, 75, 134, 193, 230, 226, 221, 216, 210, 203, 188, 169, 149, 138, 130, 121, 121, 73, 71, 49, 26, 25, 101, 178, 228, 229, 230, 224, 209, 195, 182, 170, 158, 143, 128, 113, 112, 96, 95, 83, 72, 70, 107, 144, 175, 194, 214, 215, 199, 183, 169, 158, 146, 140, 135, 131, 131, 119, 119, 118, 118, 116, 113, 109, 121, 159, 197, 207, 189, 171, 157, 146, 134, 137, 143, 149, 149, 143, 143, 153, 163, 162, 119, 75, 67, 124, 181, 199, 179, 159, 144, 134, 123, 134, 151, 167, 168, 158, 159, 177, 194, 193, 122, 52, 32, 100, 169, 193, 172, 150, 136, 126, 115, 131, 155, 179, 181, 158, 159, 177, 194, 193, 123, 52, 32, 101, 169, 193, 172, 151, 136, 126, 115, 132, 155, 179, 181];
        assert_eq!(resize_linear(&src, 20, 11).data, want);
    }
}
