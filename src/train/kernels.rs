//! CPU kernels for the layers candle lacks or does slowly: im2col/col2im
//! (convolution backward as matrix products), max/average pooling with
//! Caffe's ceil rounding and argmax routing, and cross-channel LRN. Each
//! works on one image (CHW, contiguous f32); callers parallelise over the batch.
//! Also per-channel sums over a batch ([`channel_sums`]) for the
//! normalisation layers, parallel over the channels.
use rayon::prelude::*;

/// Per-channel sums over an (outer, channels, inner) buffer: `row(c, r)`
/// sums row `r` (an index range) of channel `c`; rows add up in f64, one
/// channel per task.
pub fn channel_sums(
    outer: usize,
    channels: usize,
    inner: usize,
    row: impl Fn(usize, std::ops::Range<usize>) -> f64 + Sync,
) -> Vec<f64> {
    (0..channels)
        .into_par_iter()
        .map(|c| {
            (0..outer)
                .map(|o| {
                    let base = (o * channels + c) * inner;
                    row(c, base..base + inner)
                })
                .sum()
        })
        .collect()
}

/// The sum of `f(a[i], b[i])` in eight f32 lanes (so it vectorises).
pub fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += f(x[l], y[l]);
        }
    }
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// Fills each row of `inner` values of an (outer, channels, inner) buffer
/// with `g(channel, offset, row)`, `offset` being the row's first index;
/// rows in parallel.
pub fn per_channel(
    out: &mut [f32],
    channels: usize,
    inner: usize,
    g: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let inner = inner.max(1);
    out.par_chunks_mut(inner)
        .with_min_len((1 << 14) / inner + 1)
        .enumerate()
        .for_each(|(row, chunk)| g(row % channels, row * inner, chunk));
}

/// Geometry of a 2-D window sweep (convolution or pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Input channels, height, width.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Kernel size.
    pub kh: usize,
    pub kw: usize,
    /// Zero padding.
    pub ph: usize,
    pub pw: usize,
    /// Stride.
    pub sh: usize,
    pub sw: usize,
    /// Dilation (convolution only).
    pub dh: usize,
    pub dw: usize,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
}

#[cfg(test)]
impl Window {
    /// A window with the same kernel `k`, stride `s`, pad `p` and dilation
    /// `d` on both axes and output `oh` x `ow` (for tests).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn square(
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        p: usize,
        d: usize,
        (oh, ow): (usize, usize),
    ) -> Self {
        Window {
            c,
            h,
            w,
            kh: k,
            kw: k,
            ph: p,
            pw: p,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            oh,
            ow,
        }
    }
}

/// For kernel column `kj`: the output columns `[lo, hi)` whose input column
/// lies inside the image (the rest read padding), and the input column of
/// output column 0 (`ix = ox * sw + shift`). Hoisting this out of the inner
/// loops leaves plain (for stride 1, contiguous) copies and sums.
fn inside_columns(g: &Window, kj: usize) -> (usize, usize, isize) {
    let shift = (kj * g.dw) as isize - g.pw as isize;
    let lo = if shift >= 0 {
        0
    } else {
        ((-shift) as usize).div_ceil(g.sw)
    }
    .min(g.ow);
    let limit = g.w as isize - shift;
    let hi = if limit <= 0 {
        0
    } else {
        (limit as usize).div_ceil(g.sw).min(g.ow)
    }
    .max(lo);
    (lo, hi, shift)
}

/// One row of the batched column matrix: row `r` = (channel, ki, kj) of the
/// unfolded input, laid out as `n_images` blocks of `oh*ow` values. Filling
/// rows independently lets callers parallelise over rows and get one big
/// `(rows) x (images*positions)` matrix for a single GEMM per group.
pub fn im2col_row(x: &[f32], g: &Window, n_images: usize, r: usize, out: &mut [f32]) {
    let (c, rest) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
    let (ki, kj) = (rest / g.kw, rest % g.kw);
    let plane = g.oh * g.ow;
    let img = g.c * g.h * g.w;
    let (lo, hi, shift) = inside_columns(g, kj);
    for n in 0..n_images {
        let xc = &x[n * img + c * g.h * g.w..n * img + (c + 1) * g.h * g.w];
        let block = &mut out[n * plane..(n + 1) * plane];
        for oy in 0..g.oh {
            let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
            let dst = &mut block[oy * g.ow..(oy + 1) * g.ow];
            if iy < 0 || iy >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            let first = (lo * g.sw) as isize + shift;
            if g.sw == 1 {
                dst[lo..hi].copy_from_slice(&src[first as usize..first as usize + (hi - lo)]);
            } else {
                for (d, s) in dst[lo..hi]
                    .iter_mut()
                    .zip(src[first as usize..].iter().step_by(g.sw))
                {
                    *d = *s;
                }
            }
        }
    }
}

/// One output row `oy` of image `img`, unfolded as the transpose of the
/// column matrix: `out` holds `ow` rows of `c*kh*kw` values, the inputs each
/// output position's window sees (zeros in the padding) in the column
/// matrix's row order. The whole `(images*positions) x (c*kh*kw)` matrix,
/// read as a column-major right-hand side, makes the gemm crate's forward
/// product faster than the column matrix does (CaffeNet's conv1 at batch 50:
/// 110-115 ms instead of 175-250 for the product alone; `time --phase test`).
pub fn im2row_line(x: &[f32], g: &Window, img: usize, oy: usize, out: &mut [f32]) {
    let k = g.c * g.kh * g.kw;
    let plane_in = g.h * g.w;
    let xi = &x[img * g.c * plane_in..(img + 1) * g.c * plane_in];
    for (ox, row) in out.chunks_exact_mut(k).take(g.ow).enumerate() {
        let x0 = (ox * g.sw) as isize - g.pw as isize;
        // Every kernel column inside the image: each (channel, ki) run of
        // kw values is one copy (stride-1 dilation) from the input row.
        let inside = x0 >= 0 && x0 + (((g.kw - 1) * g.dw) as isize) < g.w as isize;
        for (run, dst) in row.chunks_exact_mut(g.kw).enumerate() {
            let (c, ki) = (run / g.kh, run % g.kh);
            let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
            if iy < 0 || iy >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &xi[c * plane_in + iy as usize * g.w..c * plane_in + (iy as usize + 1) * g.w];
            if inside && g.dw == 1 {
                // An element loop: memcpy's call costs more than these few values.
                for (d, s) in dst.iter_mut().zip(&src[x0 as usize..]) {
                    *d = *s;
                }
                continue;
            }
            for (kj, d) in dst.iter_mut().enumerate() {
                let ix = x0 + (kj * g.dw) as isize;
                *d = if ix >= 0 && ix < g.w as isize {
                    src[ix as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

/// The adjoint of [`im2col_row`] for one (image, channel) plane: sums every
/// column-matrix entry that came from this plane. `cols` is the whole
/// `(c*kh*kw) x (n_images*oh*ow)` matrix.
pub fn col2im_plane(
    cols: &[f32],
    g: &Window,
    n_images: usize,
    n: usize,
    c: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let plane = g.oh * g.ow;
    let row_len = n_images * plane;
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            let r = (c * g.kh + ki) * g.kw + kj;
            let block = &cols[r * row_len + n * plane..r * row_len + (n + 1) * plane];
            let (lo, hi, shift) = inside_columns(g, kj);
            if lo == hi {
                continue;
            }
            let first = ((lo * g.sw) as isize + shift) as usize;
            for oy in 0..g.oh {
                let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let dst = &mut out[iy as usize * g.w..(iy as usize + 1) * g.w];
                let src = &block[oy * g.ow + lo..oy * g.ow + hi];
                if g.sw == 1 {
                    for (d, &v) in dst[first..first + src.len()].iter_mut().zip(src) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in dst[first..].iter_mut().step_by(g.sw).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// [`col2im_plane`] for every (image, channel) plane of `out` (`n_images`
/// images of `c x h x w`), in parallel channel by channel: a task then reads
/// its channel's rows of `cols` front to back, image after image, instead of
/// jumping between rows (a page apart) for each plane. Each plane's sums are
/// unchanged. Folding CaffeNet's conv3 input gradient, 50 images at once:
/// 9-15 ms instead of 29-38 on two cores; conv2-conv5 backward in the net:
/// 1236-1381 ms instead of 1288-1458.
pub fn col2im_batch(cols: &[f32], g: &Window, n_images: usize, out: &mut [f32]) {
    let hw = g.h * g.w;
    if g.c < rayon::current_num_threads() {
        // Too few channels to keep every thread busy: plane by plane.
        out.par_chunks_mut(hw)
            .take(n_images * g.c)
            .enumerate()
            .for_each(|(i, plane)| col2im_plane(cols, g, n_images, i / g.c, i % g.c, plane));
        return;
    }
    let mut by_channel: Vec<Vec<(usize, &mut [f32])>> =
        (0..g.c).map(|_| Vec::with_capacity(n_images)).collect();
    for (i, plane) in out.chunks_exact_mut(hw).take(n_images * g.c).enumerate() {
        by_channel[i % g.c].push((i / g.c, plane));
    }
    by_channel
        .par_iter_mut()
        .enumerate()
        .for_each(|(c, planes)| {
            for (n, plane) in planes.iter_mut() {
                col2im_plane(cols, g, n_images, *n, c, plane);
            }
        });
}

/// Caffe's pooled size: ceil rounding, and the last window dropped when it
/// would start inside the bottom/right padding.
pub fn pooled_size(input: usize, kernel: usize, pad: usize, stride: usize, ceil: bool) -> usize {
    let span = (input + 2 * pad).saturating_sub(kernel);
    let mut out = if ceil {
        span.div_ceil(stride)
    } else {
        span / stride
    } + 1;
    if pad > 0 && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    out
}

/// Window bounds `[start, end)` for output position `o`, clipped to the input,
/// plus the unclipped-to-input size Caffe divides by in average pooling.
pub(crate) fn window_bounds(
    o: usize,
    stride: usize,
    pad: usize,
    kernel: usize,
    input: usize,
) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min((input + pad) as isize);
    let size = (end - start) as usize;
    (
        start.max(0) as usize,
        end.min(input as isize) as usize,
        size,
    )
}

/// Max pooling of one image; `argmax` receives each output's input index.
pub fn max_pool(x: &[f32], g: &Window, y: &mut [f32], argmax: &mut [u32]) {
    for c in 0..g.c {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..g.oh {
            let (y0, y1, _) = window_bounds(oy, g.sh, g.ph, g.kh, g.h);
            for ox in 0..g.ow {
                let (x0, x1, _) = window_bounds(ox, g.sw, g.pw, g.kw, g.w);
                // The window's first element starts the search, so the loop
                // needs no "nothing yet" test (a window is never empty).
                let mut best_i = y0 * g.w + x0;
                let mut best = xc[best_i];
                for iy in y0..y1 {
                    let row = iy * g.w;
                    for (ix, &v) in xc[row + x0..row + x1].iter().enumerate() {
                        // Strictly greater: the first maximum wins, like Caffe.
                        if v > best {
                            best = v;
                            best_i = row + x0 + ix;
                        }
                    }
                }
                let o = (c * g.oh + oy) * g.ow + ox;
                y[o] = best;
                argmax[o] = (c * g.h * g.w + best_i) as u32;
            }
        }
    }
}

/// Routes output gradients to the stored argmax positions (overlaps add up).
pub fn max_pool_backward(dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    dx.fill(0.0);
    for (&g, &i) in dy.iter().zip(argmax) {
        dx[i as usize] += g;
    }
}

/// Average pooling of one image; divides by the window size including
/// padding (clipped at `input + pad`), as Caffe does.
pub fn ave_pool(x: &[f32], g: &Window, y: &mut [f32]) {
    for c in 0..g.c {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..g.oh {
            let (y0, y1, sy) = window_bounds(oy, g.sh, g.ph, g.kh, g.h);
            for ox in 0..g.ow {
                let (x0, x1, sx) = window_bounds(ox, g.sw, g.pw, g.kw, g.w);
                let mut sum = 0.0f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        sum += xc[iy * g.w + ix];
                    }
                }
                y[(c * g.oh + oy) * g.ow + ox] = sum / (sy * sx) as f32;
            }
        }
    }
}

/// Gradient of [`ave_pool`].
pub fn ave_pool_backward(dy: &[f32], g: &Window, dx: &mut [f32]) {
    dx.fill(0.0);
    for c in 0..g.c {
        let dxc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..g.oh {
            let (y0, y1, sy) = window_bounds(oy, g.sh, g.ph, g.kh, g.h);
            for ox in 0..g.ow {
                let (x0, x1, sx) = window_bounds(ox, g.sw, g.pw, g.kw, g.w);
                let v = dy[(c * g.oh + oy) * g.ow + ox] / (sy * sx) as f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        dxc[iy * g.w + ix] += v;
                    }
                }
            }
        }
    }
}

/// Cross-channel LRN parameters (Caffe's `lrn_param`).
#[derive(Clone, Copy, Debug)]
pub struct Lrn {
    /// Channels in the window.
    pub size: usize,
    /// Caffe's alpha (divided by `size` in the formula).
    pub alpha: f32,
    /// Exponent.
    pub beta: f32,
    /// Additive constant.
    pub k: f32,
}

/// `scale = k + alpha/size * sum of squares over the centred window`,
/// `y = x * scale^-beta`, for one image of `c` planes of `plane` values.
pub fn lrn_forward(x: &[f32], c: usize, plane: usize, p: &Lrn, y: &mut [f32], scale: &mut [f32]) {
    let a = p.alpha / p.size as f32;
    let squares: Vec<f32> = x.iter().map(|v| v * v).collect();
    channel_window_sums(&squares, c, plane, p.size, |ch, acc| {
        let r = ch * plane..(ch + 1) * plane;
        for (((o, sc), &v), &s) in y[r.clone()]
            .iter_mut()
            .zip(&mut scale[r.clone()])
            .zip(&x[r])
            .zip(acc)
        {
            *sc = p.k + a * s;
            *o = v * sc.powf(-p.beta);
        }
    });
}

/// Gradient of [`lrn_forward`]:
/// `dx = dy * scale^-beta - (2*alpha*beta/size) * x * sum_window(dy * y / scale)`.
#[allow(clippy::too_many_arguments)] // mirrors the math: x, y, scale, dy, shape, params, out
pub fn lrn_backward(
    x: &[f32],
    y: &[f32],
    scale: &[f32],
    dy: &[f32],
    c: usize,
    plane: usize,
    p: &Lrn,
    dx: &mut [f32],
) {
    let ratio: Vec<f32> = dy
        .iter()
        .zip(y)
        .zip(scale)
        .map(|((&g, &o), &s)| g * o / s)
        .collect();
    let coeff = 2.0 * p.alpha * p.beta / p.size as f32;
    channel_window_sums(&ratio, c, plane, p.size, |ch, acc| {
        let r = ch * plane..(ch + 1) * plane;
        for (((o, &g), &s), (&xv, &a)) in dx[r.clone()]
            .iter_mut()
            .zip(&dy[r.clone()])
            .zip(&scale[r.clone()])
            .zip(x[r].iter().zip(acc))
        {
            *o = g * s.powf(-p.beta) - coeff * xv * a;
        }
    });
}

/// For each channel `ch`, calls `f(ch, sums)` where `sums` holds, per
/// position, the sum of `v` over the `size` channels centred on `ch` (zero
/// outside). The sum runs: add the channel entering the window, subtract the
/// one leaving, as Caffe accumulates it.
fn channel_window_sums(
    v: &[f32],
    c: usize,
    plane: usize,
    size: usize,
    mut f: impl FnMut(usize, &[f32]),
) {
    let pre = (size - 1) / 2;
    let mut acc = vec![0.0f32; plane];
    let add = |acc: &mut [f32], ch: usize, sign: f32| {
        for (s, &x) in acc.iter_mut().zip(&v[ch * plane..(ch + 1) * plane]) {
            *s += sign * x;
        }
    };
    for ch in 0..pre.min(c) {
        add(&mut acc, ch, 1.0);
    }
    for ch in 0..c {
        if ch + pre < c {
            add(&mut acc, ch + pre, 1.0);
        }
        if ch > pre {
            add(&mut acc, ch - pre - 1, -1.0);
        }
        f(ch, &acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Per-image reference implementations (Caffe's im2col/col2im), which the
    // batched row/plane kernels above must agree with.
    /// Unfolds one image into a `(c*kh*kw) x (oh*ow)` column matrix (Caffe's im2col).
    fn im2col(x: &[f32], g: &Window, col: &mut [f32]) {
        let plane = g.oh * g.ow;
        let mut row = 0;
        for c in 0..g.c {
            let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let out = &mut col[row * plane..(row + 1) * plane];
                    for oy in 0..g.oh {
                        let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                        let dst = &mut out[oy * g.ow..(oy + 1) * g.ow];
                        if iy < 0 || iy >= g.h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * g.sw + kj * g.dw) as isize - g.pw as isize;
                            *d = if ix >= 0 && (ix as usize) < g.w {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// Folds a column matrix back, summing overlaps (the adjoint of [`im2col`]).
    fn col2im(col: &[f32], g: &Window, x: &mut [f32]) {
        x.fill(0.0);
        let plane = g.oh * g.ow;
        let mut row = 0;
        for c in 0..g.c {
            let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let src = &col[row * plane..(row + 1) * plane];
                    for oy in 0..g.oh {
                        let iy = (oy * g.sh + ki * g.dh) as isize - g.ph as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                        for (ox, &v) in src[oy * g.ow..(oy + 1) * g.ow].iter().enumerate() {
                            let ix = (ox * g.sw + kj * g.dw) as isize - g.pw as isize;
                            if ix >= 0 && (ix as usize) < g.w {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    #[test]
    fn pooled_size_uses_caffe_ceil_rounding() {
        assert_eq!(pooled_size(30, 3, 0, 2, true), 15); // tiny-net pool1
        assert_eq!(pooled_size(30, 3, 0, 2, false), 14);
        assert_eq!(pooled_size(55, 3, 0, 2, true), 27); // CaffeNet pool1
        assert_eq!(pooled_size(13, 3, 0, 2, true), 6);
        // With padding, a window starting in the padding is dropped.
        assert_eq!(pooled_size(4, 2, 1, 2, true), 3);
    }

    fn window(c: usize, h: usize, w: usize, k: usize, p: usize, s: usize) -> Window {
        let out = |i: usize| (i + 2 * p - k) / s + 1;
        Window::square(c, h, w, k, s, p, 1, (out(h), out(w)))
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for arbitrary x, c.
        let g = window(2, 5, 4, 3, 1, 2);
        let x: Vec<f32> = (0..2 * 5 * 4).map(|i| (i as f32 * 0.37).sin()).collect();
        let rows = 2 * 9 * g.oh * g.ow;
        let c: Vec<f32> = (0..rows).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut col = vec![0.0; rows];
        im2col(&x, &g, &mut col);
        let mut back = vec![0.0; x.len()];
        col2im(&c, &g, &mut back);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} {rhs}");
    }

    /// Square windows (channels, height, width, kernel, stride, pad,
    /// dilation): strides 1, 2 and 4, pads wider than the kernel reach (rows
    /// and columns that read only padding), dilation, 1x1 kernels, and
    /// CaffeNet's conv1 (11x11, stride 4).
    fn unfolding_windows() -> Vec<Window> {
        let cases = [
            (3, 6, 5, 3, 2, 1, 1),
            (2, 7, 9, 3, 1, 1, 1),
            (2, 11, 13, 5, 1, 2, 1),
            (1, 9, 10, 3, 4, 0, 1),
            (2, 8, 7, 3, 1, 2, 2),
            (1, 4, 5, 1, 1, 3, 1),
            (2, 6, 6, 2, 3, 4, 1),
            (3, 12, 12, 11, 4, 0, 1),
        ];
        cases
            .into_iter()
            .map(|(ch, h, w, k, s, p, d)| {
                let out = |i: usize| (i + 2 * p - (d * (k - 1) + 1)) / s + 1;
                Window::square(ch, h, w, k, s, p, d, (out(h), out(w)))
            })
            .collect()
    }

    #[test]
    fn batched_rows_match_per_image_im2col() {
        for g in unfolding_windows() {
            let (ch, h, w) = (g.c, g.h, g.w);
            let n = 2;
            let img_len = ch * h * w;
            let x: Vec<f32> = (0..n * img_len).map(|i| (i as f32 * 0.21).sin()).collect();
            let rows = ch * g.kh * g.kw;
            let plane = g.oh * g.ow;
            let mut batched = vec![f32::NAN; rows * n * plane];
            for (r, out) in batched.chunks_mut(n * plane).enumerate() {
                im2col_row(&x, &g, n, r, out);
            }
            // The batch folded by channels (one thread) and by planes (more
            // threads than channels), to compare with each plane's fold.
            let folds: Vec<Vec<f32>> = [1, 4 * ch]
                .into_iter()
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut all = vec![f32::NAN; n * img_len];
                    pool.install(|| col2im_batch(&batched, &g, n, &mut all));
                    all
                })
                .collect();
            for img in 0..n {
                let mut single = vec![0.0; rows * plane];
                im2col(&x[img * img_len..(img + 1) * img_len], &g, &mut single);
                for r in 0..rows {
                    assert_eq!(
                        &batched[r * n * plane + img * plane..r * n * plane + (img + 1) * plane],
                        &single[r * plane..(r + 1) * plane],
                        "{g:?} row {r}"
                    );
                }
                let mut a = vec![0.0; img_len];
                col2im(&single, &g, &mut a);
                let mut b = vec![f32::NAN; img_len];
                for c in 0..ch {
                    col2im_plane(&batched, &g, n, img, c, &mut b[c * h * w..(c + 1) * h * w]);
                }
                assert_eq!(a, b, "{g:?}");
                for all in &folds {
                    assert_eq!(&all[img * img_len..(img + 1) * img_len], &b[..], "{g:?}");
                }
            }
        }
    }

    #[test]
    fn unfolded_rows_are_the_column_matrix_transposed() {
        for g in unfolding_windows() {
            let (ch, h, w, k) = (g.c, g.h, g.w, g.kh);
            let n = 2;
            let x: Vec<f32> = (0..n * ch * h * w)
                .map(|i| (i as f32 * 0.37).cos())
                .collect();
            let (rows, np) = (ch * k * k, n * g.oh * g.ow);
            let mut cols = vec![f32::NAN; rows * np];
            for (r, out) in cols.chunks_mut(np).enumerate() {
                im2col_row(&x, &g, n, r, out);
            }
            let mut unfolded = vec![f32::NAN; np * rows];
            for (line, out) in unfolded.chunks_mut(g.ow * rows).enumerate() {
                im2row_line(&x, &g, line / g.oh, line % g.oh, out);
            }
            for r in 0..rows {
                for q in 0..np {
                    assert_eq!(cols[r * np + q], unfolded[q * rows + r], "{g:?} ({r}, {q})");
                }
            }
        }
    }

    /// Finite-difference check of a scalar function's gradient.
    fn grad_check(x: &[f32], f: impl Fn(&[f32]) -> f64, analytic: &[f32]) {
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let mut xp = x.to_vec();
            xp[i] += eps;
            let mut xm = x.to_vec();
            xm[i] -= eps;
            let numeric = (f(&xp) - f(&xm)) / (2.0 * eps as f64);
            let a = analytic[i] as f64;
            assert!(
                (numeric - a).abs() <= 1e-3 * (1.0 + a.abs()),
                "index {i}: numeric {numeric} analytic {a}"
            );
        }
    }

    #[test]
    fn lrn_gradient_matches_finite_differences() {
        let p = Lrn {
            size: 3,
            alpha: 0.5,
            beta: 0.75,
            k: 1.0,
        };
        let (c, plane) = (5, 3);
        let x: Vec<f32> = (0..c * plane)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let w: Vec<f32> = (0..c * plane)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.2)
            .collect();
        let loss = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            let mut s = vec![0.0; x.len()];
            lrn_forward(x, c, plane, &p, &mut y, &mut s);
            y.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let mut y = vec![0.0; x.len()];
        let mut s = vec![0.0; x.len()];
        lrn_forward(&x, c, plane, &p, &mut y, &mut s);
        let mut dx = vec![0.0; x.len()];
        lrn_backward(&x, &y, &s, &w, c, plane, &p, &mut dx);
        grad_check(&x, loss, &dx);
    }

    #[test]
    fn pooling_gradients_match_finite_differences() {
        let g = Window {
            oh: pooled_size(5, 3, 0, 2, true),
            ow: pooled_size(6, 3, 0, 2, true),
            ..window(2, 5, 6, 3, 0, 2)
        };
        let x: Vec<f32> = (0..2 * 5 * 6)
            .map(|i| ((i * 13 % 17) as f32) * 0.1 + (i as f32) * 1e-3)
            .collect();
        let w: Vec<f32> = (0..2 * g.oh * g.ow)
            .map(|i| (i as f32 * 0.3).sin())
            .collect();
        let max_loss = |x: &[f32]| {
            let mut y = vec![0.0; w.len()];
            let mut a = vec![0; w.len()];
            max_pool(x, &g, &mut y, &mut a);
            y.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let mut y = vec![0.0; w.len()];
        let mut a = vec![0; w.len()];
        max_pool(&x, &g, &mut y, &mut a);
        let mut dx = vec![0.0; x.len()];
        max_pool_backward(&w, &a, &mut dx);
        grad_check(&x, max_loss, &dx);

        let gp = Window {
            ph: 1,
            pw: 1,
            oh: pooled_size(5, 3, 1, 2, true),
            ow: pooled_size(6, 3, 1, 2, true),
            ..g
        };
        let wp: Vec<f32> = (0..2 * gp.oh * gp.ow)
            .map(|i| (i as f32 * 0.7).cos())
            .collect();
        let ave_loss = |x: &[f32]| {
            let mut y = vec![0.0; wp.len()];
            ave_pool(x, &gp, &mut y);
            y.iter().zip(&wp).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let mut dx = vec![0.0; x.len()];
        ave_pool_backward(&wp, &gp, &mut dx);
        grad_check(&x, ave_loss, &dx);
    }
}
