//! Direct CPU kernels for convolutions whose groups each read one input
//! channel (depthwise: `group` equal to the input channels, as MobileNet's
//! 3x3 layers). Caffe's im2col would build a column matrix and run one
//! matrix product per channel with a single output row, which leaves the
//! multiply units idle; here each output plane is a sum over the kernel's
//! taps, taken tap by tap over whole rows so the inner loops run along
//! memory. Same geometry as [`Window`] (padding, stride, dilation).
use crate::train::kernels::Window;

/// For kernel tap offset `t` (row or column, `kernel_index * dilation`), the
/// outputs `o` of an axis of `out` outputs whose input `o * stride - pad + t`
/// lies inside `0..len`: the first and one-past-last such `o`.
fn valid_outputs(t: usize, pad: usize, stride: usize, len: usize, out: usize) -> (usize, usize) {
    // o * stride + t >= pad  and  o * stride + t < pad + len.
    let first = pad.saturating_sub(t).div_ceil(stride);
    let end = if pad + len > t {
        (pad + len - t).div_ceil(stride).min(out)
    } else {
        0
    };
    (first.min(end), end)
}

/// Adds `k * x[...]` over one tap to every output it reaches: `y` is one
/// output plane, `x` its input plane, `(i, j)` the tap.
fn tap_into(y: &mut [f32], x: &[f32], k: f32, i: usize, j: usize, g: &Window) {
    let (t_h, t_w) = (i * g.dh, j * g.dw);
    let (r0, r1) = valid_outputs(t_h, g.ph, g.sh, g.h, g.oh);
    let (c0, c1) = valid_outputs(t_w, g.pw, g.sw, g.w, g.ow);
    for r in r0..r1 {
        let ih = r * g.sh + t_h - g.ph;
        let row = &x[ih * g.w..(ih + 1) * g.w];
        let out = &mut y[r * g.ow + c0..r * g.ow + c1];
        if g.sw == 1 {
            let iw0 = c0 + t_w - g.pw;
            for (o, &v) in out.iter_mut().zip(&row[iw0..]) {
                *o += k * v;
            }
        } else {
            let iw0 = c0 * g.sw + t_w - g.pw;
            for (o, &v) in out.iter_mut().zip(row[iw0..].iter().step_by(g.sw)) {
                *o += k * v;
            }
        }
    }
}

/// One output plane: the sum over the kernel `taps` (kh x kw) of the input
/// plane `x`, plus `bias`.
pub fn forward_plane(x: &[f32], taps: &[f32], bias: f32, g: &Window, y: &mut [f32]) {
    y.fill(0.0);
    for i in 0..g.kh {
        for j in 0..g.kw {
            tap_into(y, x, taps[i * g.kw + j], i, j, g);
        }
    }
    if bias != 0.0 {
        y.iter_mut().for_each(|v| *v += bias);
    }
}

/// Adds one output plane's share of its input plane's gradient: `dy` spread
/// back through each tap of `taps` into `dx`.
pub fn input_grad_plane(dy: &[f32], taps: &[f32], g: &Window, dx: &mut [f32]) {
    for i in 0..g.kh {
        for j in 0..g.kw {
            let k = taps[i * g.kw + j];
            let (t_h, t_w) = (i * g.dh, j * g.dw);
            let (r0, r1) = valid_outputs(t_h, g.ph, g.sh, g.h, g.oh);
            let (c0, c1) = valid_outputs(t_w, g.pw, g.sw, g.w, g.ow);
            for r in r0..r1 {
                let ih = r * g.sh + t_h - g.ph;
                let row = &mut dx[ih * g.w..(ih + 1) * g.w];
                let d = &dy[r * g.ow + c0..r * g.ow + c1];
                if g.sw == 1 {
                    let iw0 = c0 + t_w - g.pw;
                    for (o, &v) in row[iw0..].iter_mut().zip(d) {
                        *o += k * v;
                    }
                } else {
                    let iw0 = c0 * g.sw + t_w - g.pw;
                    for (o, &v) in row[iw0..].iter_mut().step_by(g.sw).zip(d) {
                        *o += k * v;
                    }
                }
            }
        }
    }
}

/// Adds to `acc` (one value per tap) the sums `dy * x` over the outputs of
/// one plane that each tap reaches: that plane's share of the tap weights'
/// gradient (in f64, summed over the batch by the caller).
pub fn weight_grad_plane(x: &[f32], dy: &[f32], g: &Window, acc: &mut [f64]) {
    for i in 0..g.kh {
        for j in 0..g.kw {
            let (t_h, t_w) = (i * g.dh, j * g.dw);
            let (r0, r1) = valid_outputs(t_h, g.ph, g.sh, g.h, g.oh);
            let (c0, c1) = valid_outputs(t_w, g.pw, g.sw, g.w, g.ow);
            let mut sum = 0f32;
            for r in r0..r1 {
                let ih = r * g.sh + t_h - g.ph;
                let row = &x[ih * g.w..(ih + 1) * g.w];
                let d = &dy[r * g.ow + c0..r * g.ow + c1];
                if g.sw == 1 {
                    let iw0 = c0 + t_w - g.pw;
                    sum += d.iter().zip(&row[iw0..]).map(|(a, b)| a * b).sum::<f32>();
                } else {
                    let iw0 = c0 * g.sw + t_w - g.pw;
                    sum += d
                        .iter()
                        .zip(row[iw0..].iter().step_by(g.sw))
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                }
            }
            acc[i * g.kw + j] += f64::from(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::kernels::im2col_row;

    /// Each output as im2col sees it: the dot product of its column with
    /// the taps (the general path's arithmetic, one channel).
    fn reference(x: &[f32], taps: &[f32], g: &Window) -> Vec<f32> {
        let (k, np) = (g.kh * g.kw, g.oh * g.ow);
        let mut cols = vec![0f32; k * np];
        for (r, row) in cols.chunks_mut(np).enumerate() {
            im2col_row(x, g, 1, r, row);
        }
        (0..np)
            .map(|p| (0..k).map(|t| taps[t] * cols[t * np + p]).sum())
            .collect()
    }

    #[test]
    fn planes_match_im2col_and_their_gradients_are_its_transposes() {
        for (h, w, k, s, p, d) in [
            (7, 6, 3, 1, 1, 1),
            (9, 9, 3, 2, 1, 1),
            (8, 11, 3, 2, 0, 1),
            (10, 10, 5, 3, 2, 1),
            (9, 8, 3, 1, 2, 2),
            (5, 5, 3, 1, 0, 1),
        ] {
            let (oh, ow) = (
                (h + 2 * p - d * (k - 1) - 1) / s + 1,
                (w + 2 * p - d * (k - 1) - 1) / s + 1,
            );
            let g = Window::square(1, h, w, k, s, p, d, (oh, ow));
            let x: Vec<f32> = (0..h * w)
                .map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0)
                .collect();
            let taps: Vec<f32> = (0..k * k)
                .map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0)
                .collect();
            let mut y = vec![0f32; oh * ow];
            forward_plane(&x, &taps, 0.5, &g, &mut y);
            let want: Vec<f32> = reference(&x, &taps, &g).iter().map(|v| v + 0.5).collect();
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{h}x{w} k{k} s{s} p{p} d{d}: {a} vs {b}"
                );
            }
            // <dy, conv(x)> = <conv^T(dy), x> = <dw, taps>: the gradients
            // are the transposes of the forward map.
            let dy: Vec<f32> = (0..oh * ow)
                .map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0)
                .collect();
            let mut dx = vec![0f32; h * w];
            input_grad_plane(&dy, &taps, &g, &mut dx);
            let mut dw = vec![0f64; k * k];
            weight_grad_plane(&x, &dy, &g, &mut dw);
            let lhs: f64 = dy
                .iter()
                .zip(reference(&x, &taps, &g))
                .map(|(a, b)| f64::from(*a) * f64::from(b))
                .sum();
            let via_dx: f64 = dx
                .iter()
                .zip(&x)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let via_dw: f64 = dw.iter().zip(&taps).map(|(a, b)| a * f64::from(*b)).sum();
            assert!(
                (lhs - via_dx).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {via_dx}"
            );
            assert!(
                (lhs - via_dw).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {via_dw}"
            );
        }
    }

    #[test]
    fn valid_outputs_cover_exactly_the_inputs_inside() {
        for (t, pad, stride, len, out) in [
            (0, 1, 1, 5, 5),
            (2, 1, 1, 5, 5),
            (4, 0, 2, 9, 3),
            (0, 3, 2, 2, 4),
        ] {
            let (a, b) = valid_outputs(t, pad, stride, len, out);
            for o in 0..out {
                let i = (o * stride + t) as i64 - pad as i64;
                assert_eq!(
                    (a..b).contains(&o),
                    (0..len as i64).contains(&i),
                    "{t} {pad} {stride} {len} o{o}"
                );
            }
        }
    }
}
