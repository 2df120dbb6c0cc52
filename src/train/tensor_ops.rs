//! The layers' computations composed from candle tensor ops, so they run on
//! every candle backend (CUDA included).
//!
//! On the CPU the hand-written kernels in [`super::kernels`] stay the fast,
//! Caffe-exact path; a net built for a GPU uses these instead. Each function
//! here has a CPU twin there, and the tests compare the two on the CPU (and
//! check these against finite differences), which is how CI covers the GPU
//! code without a GPU.
use super::kernels::{window_bounds, Lrn, Window};
use super::precision::Precision;
use super::sgd::ParamStep;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Convolution geometry. candle's conv ops take one pad, stride and
/// dilation for both axes: a larger pad on one axis is added to the input
/// explicitly, while stride and dilation must be square here (the layers
/// turn unequal ones into square ones: see `layers::conv::Strided`).
#[derive(Clone, Copy, Debug)]
pub struct ConvGeom {
    /// Groups the channels are split into.
    pub group: usize,
    /// Zero padding on each side: (height, width).
    pub pad: (usize, usize),
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// The arithmetic of the convolution's matrix products.
    pub precision: Precision,
    /// Convolve with cuDNN (a GPU in a `cudnn` build) instead of candle's
    /// im2col products; the bias and its gradient stay tensor ops.
    pub cudnn: bool,
}

/// `y = conv(x, w) + b`, per group.
pub fn conv_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: &ConvGeom) -> Result<Tensor> {
    let y = convolve(x, w, g)?;
    Ok(match b {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
}

/// `conv(x, w)` without the bias: cuDNN's when `g.cudnn`, else candle's.
fn convolve(x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if g.cudnn {
        return super::cudnn::conv_forward(x, w, g);
    }
    let (x, pad) = pad_unequal(x, g.pad)?;
    g.precision
        .conv2d(&x.contiguous()?, w, pad, g.stride, g.dilation, g.group)
}

/// `x` with the part of its padding that differs between the axes added
/// explicitly, and the pad left for candle's conv (the same on both).
fn pad_unequal(x: &Tensor, (ph, pw): (usize, usize)) -> Result<(Tensor, usize)> {
    let common = ph.min(pw);
    let x = match (ph - common, pw - common) {
        (0, 0) => x.clone(),
        (h, 0) => x.pad_with_zeros(2, h, h)?,
        (0, w) => x.pad_with_zeros(3, w, w)?,
        (h, w) => x.pad_with_zeros(2, h, h)?.pad_with_zeros(3, w, w)?,
    };
    Ok((x, common))
}

/// Gradients of [`conv_forward`]: `(dx, dw, db)`, each only when asked for.
pub fn conv_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &ConvGeom,
    col2im: &Col2Im,
    want: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let db = if want[2] {
        Some(dy.sum((0, 2, 3))?)
    } else {
        None
    };
    #[cfg(feature = "cudnn")]
    if g.cudnn {
        use super::cudnn;
        let dx = match want[0] {
            true => Some(cudnn::conv_backward_data(dy, w, x.dims4()?, g)?),
            false => None,
        };
        let dw = match want[1] {
            true => Some(cudnn::conv_backward_filter(x, dy, w.dims4()?, g)?),
            false => None,
        };
        return Ok((dx, dw, db));
    }
    let (n, c, _, _) = x.dims4()?;
    let (o, _, kh, kw) = w.dims4()?;
    let (_, _, oh, ow) = dy.dims4()?;
    let (cg, og) = (c / g.group, o / g.group);
    let (mut dxs, mut dws) = (Vec::new(), Vec::new());
    for gi in 0..g.group {
        let dyg = dy.narrow(1, gi * og, og)?.contiguous()?;
        if want[1] {
            // dW[o,c,i,j] = sum over images and positions of dy[n,o,p,q] *
            // x[n,c,p*s+i*d,q*s+j*d]: a convolution of xᵀ by dyᵀ with stride
            // and dilation swapped, cropped to the kernel size.
            let (xg, pad) = pad_unequal(&x.narrow(1, gi * cg, cg)?, g.pad)?;
            let xg = xg.transpose(0, 1)?.contiguous()?;
            let k = dyg.transpose(0, 1)?.contiguous()?;
            let dw = g
                .precision
                .conv2d(&xg, &k, pad, g.dilation, g.stride, 1)?
                .transpose(0, 1)?
                .narrow(2, 0, kh)?
                .narrow(3, 0, kw)?;
            dws.push(dw.contiguous()?);
        }
        if want[0] {
            // Column-matrix gradient Wᵀ·dy per image (one batched GEMM),
            // folded back onto the input by `col2im` below.
            let kg = cg * kh * kw;
            let wt = w
                .narrow(0, gi * og, og)?
                .reshape((og, kg))?
                .t()?
                .contiguous()?;
            let dyg = dyg.reshape((n, og, oh * ow))?;
            dxs.push(g.precision.matmul(&wt.broadcast_left(n)?, &dyg)?);
        }
    }
    let dx = if want[0] {
        Some(col2im.apply(&Tensor::cat(&dxs, 1)?)?)
    } else {
        None
    };
    let dw = if want[1] {
        Some(Tensor::cat(&dws, 0)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// Folds a column-matrix gradient `(N, C*kh*kw, OH*OW)` back onto the
/// input `(N, C, H, W)` as a gather plus a sum (every input pixel collects
/// its at most `slots` entries), which runs in parallel on any device where
/// a scatter-add would serialise on collisions.
pub enum Col2Im {
    /// The gather table, for any device.
    Gather {
        /// `(C*H*W*slots)` indices into an image's flattened column matrix;
        /// empty slots point at an extra zero entry.
        index: Tensor,
        slots: usize,
        shape: (usize, usize, usize),
    },
    /// One fused kernel ([`super::fused::col2im`]).
    Fused(Window),
}

impl Col2Im {
    /// The fused kernel for one convolution geometry.
    pub fn fused(win: &Window) -> Self {
        Col2Im::Fused(*win)
    }

    /// The gather table for one convolution geometry, on `device`.
    pub fn new(win: &Window, device: &Device) -> Result<Self> {
        let plane = win.oh * win.ow;
        let per_channel = win.kh * win.kw * plane;
        // Sources of each pixel of one channel, as offsets within that channel's rows.
        let mut sources: Vec<Vec<u32>> = vec![Vec::new(); win.h * win.w];
        for i in 0..win.kh {
            for j in 0..win.kw {
                for oy in 0..win.oh {
                    let iy = (oy * win.sh + i * win.dh) as isize - win.ph as isize;
                    if iy < 0 || iy >= win.h as isize {
                        continue;
                    }
                    for ox in 0..win.ow {
                        let ix = (ox * win.sw + j * win.dw) as isize - win.pw as isize;
                        if ix >= 0 && (ix as usize) < win.w {
                            sources[iy as usize * win.w + ix as usize]
                                .push(((i * win.kw + j) * plane + oy * win.ow + ox) as u32);
                        }
                    }
                }
            }
        }
        let slots = sources.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let zero = (win.c * per_channel) as u32;
        let mut index = Vec::with_capacity(win.c * win.h * win.w * slots);
        for c in 0..win.c {
            let base = (c * per_channel) as u32;
            for src in &sources {
                index.extend(src.iter().map(|s| base + s));
                index.extend(std::iter::repeat_n(zero, slots - src.len()));
            }
        }
        Ok(Col2Im::Gather {
            index: Tensor::from_vec(index, win.c * win.h * win.w * slots, device)?,
            slots,
            shape: (win.c, win.h, win.w),
        })
    }

    /// The input gradient for column-matrix gradient `cols` (N, C*kh*kw, OH*OW).
    pub fn apply(&self, cols: &Tensor) -> Result<Tensor> {
        let (index, slots, (c, h, w)) = match self {
            Col2Im::Fused(win) => return super::fused::col2im(win, cols),
            Col2Im::Gather {
                index,
                slots,
                shape,
            } => (index, *slots, *shape),
        };
        let n = cols.dim(0)?;
        let flat = cols.reshape((n, cols.elem_count() / n))?;
        let zero = Tensor::zeros((n, 1), cols.dtype(), cols.device())?;
        let flat = Tensor::cat(&[flat, zero], 1)?;
        Ok(flat
            .index_select(index, 1)?
            .reshape((n, c * h * w, slots))?
            .sum(2)?
            .reshape((n, c, h, w))?)
    }
}

/// Gather tables for pooling on any device: every output's window as input
/// positions, with positions outside the image pointing at an extra
/// "sentinel" row (`-inf` for MAX, 0 for AVE).
pub struct PoolTables {
    /// `(outputs * window)` input positions, u32.
    index: Tensor,
    /// The reverse, for the backward pass as a gather: `(H*W*slots)`
    /// window entries that read each input pixel; empty slots point at an
    /// extra zero row.
    back: Tensor,
    slots: usize,
    /// AVE: Caffe's divisor per output, `(outputs, 1)`.
    divisor: Tensor,
    /// MAX tie-breaking: `window, window-1, ..., 1` as `(1, window, 1)`.
    rank: Tensor,
    win: Window,
}

impl PoolTables {
    /// Tables for one pooling geometry, on `device`.
    pub fn new(win: &Window, device: &Device) -> Result<Self> {
        let (k, hw) = (win.kh * win.kw, win.h * win.w);
        let mut index = Vec::with_capacity(win.oh * win.ow * k);
        let mut divisor = Vec::with_capacity(win.oh * win.ow);
        for oy in 0..win.oh {
            let (y0, y1, sy) = window_bounds(oy, win.sh, win.ph, win.kh, win.h);
            for ox in 0..win.ow {
                let (x0, x1, sx) = window_bounds(ox, win.sw, win.pw, win.kw, win.w);
                divisor.push((sy * sx) as f32);
                for i in 0..win.kh {
                    let iy = (oy * win.sh + i) as isize - win.ph as isize;
                    for j in 0..win.kw {
                        let ix = (ox * win.sw + j) as isize - win.pw as isize;
                        let inside = iy >= y0 as isize
                            && iy < y1 as isize
                            && ix >= x0 as isize
                            && ix < x1 as isize;
                        index.push(if inside {
                            (iy as usize * win.w + ix as usize) as u32
                        } else {
                            hw as u32
                        });
                    }
                }
            }
        }
        let mut readers: Vec<Vec<u32>> = vec![Vec::new(); hw];
        for (j, &q) in index.iter().enumerate() {
            if (q as usize) < hw {
                readers[q as usize].push(j as u32);
            }
        }
        let slots = readers.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let zero = index.len() as u32;
        let mut back = Vec::with_capacity(hw * slots);
        for r in &readers {
            back.extend_from_slice(r);
            back.extend(std::iter::repeat_n(zero, slots - r.len()));
        }
        let rank: Vec<f32> = (0..k).map(|i| (k - i) as f32).collect();
        Ok(PoolTables {
            back: Tensor::from_vec(back, hw * slots, device)?,
            slots,
            index: Tensor::from_vec(index, win.oh * win.ow * k, device)?,
            divisor: Tensor::from_vec(divisor, (win.oh * win.ow, 1), device)?,
            rank: Tensor::from_vec(rank, (1, k, 1), device)?,
            win: *win,
        })
    }

    /// Every window of `x` (N, C, H, W) as `(outputs, window, N*C)`.
    fn gather(&self, x: &Tensor, sentinel: f32) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let r = n * c;
        let xt = x.reshape((r, h * w))?.t()?.contiguous()?;
        let pad = Tensor::full(sentinel, (1, r), x.device())?;
        let xt = Tensor::cat(&[xt, pad], 0)?;
        let g = xt.index_select(&self.index, 0)?;
        Ok(g.reshape((self.win.oh * self.win.ow, self.win.kh * self.win.kw, r))?)
    }

    /// `dy` (N, C, OH, OW) as `(outputs, 1, N*C)`.
    fn top_rows(&self, dy: &Tensor) -> Result<Tensor> {
        let (n, c, oh, ow) = dy.dims4()?;
        Ok(dy
            .reshape((n * c, oh * ow))?
            .t()?
            .contiguous()?
            .unsqueeze(1)?)
    }

    /// Sums per-window gradients `(outputs, window, N*C)` back onto (N, C, H, W):
    /// each input pixel gathers the entries that read it (a gather runs in
    /// parallel where a scatter-add would serialise on overlapping windows).
    fn scatter(&self, src: &Tensor, n: usize) -> Result<Tensor> {
        let win = &self.win;
        let r = n * win.c;
        let (hw, k) = (win.h * win.w, win.kh * win.kw);
        let src = src.contiguous()?.reshape((win.oh * win.ow * k, r))?;
        let zero = Tensor::zeros((1, r), src.dtype(), src.device())?;
        let dxt = Tensor::cat(&[src, zero], 0)?
            .index_select(&self.back, 0)?
            .reshape((hw, self.slots, r))?
            .sum(1)?;
        Ok(dxt.t()?.reshape((n, win.c, win.h, win.w))?)
    }

    /// Output rows `(outputs, N*C)` as (N, C, OH, OW).
    fn to_top(&self, y: Tensor, n: usize) -> Result<Tensor> {
        let win = &self.win;
        Ok(y.t()?.reshape((n, win.c, win.oh, win.ow))?)
    }

    /// Max pooling.
    pub fn max_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.gather(x, f32::NEG_INFINITY)?.max(1)?;
        self.to_top(y, x.dim(0)?)
    }

    /// Gradient of [`Self::max_forward`]: each output's gradient goes to the
    /// first maximum of its window in scan order, as Caffe's argmax does.
    pub fn max_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let g = self.gather(x, f32::NEG_INFINITY)?;
        let hit = g.broadcast_eq(&g.max_keepdim(1)?)?.to_dtype(DType::F32)?;
        // Earlier positions rank higher, so the largest ranked hit is the first.
        let ranked = hit.broadcast_mul(&self.rank)?;
        let first = (ranked
            .broadcast_eq(&ranked.max_keepdim(1)?)?
            .to_dtype(DType::F32)?
            * hit)?;
        let src = first.broadcast_mul(&self.top_rows(dy)?)?;
        self.scatter(&src, x.dim(0)?)
    }

    /// Average pooling with Caffe's divisor (padding counts, the ceil overhang does not).
    pub fn ave_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.gather(x, 0.0)?.sum(1)?.broadcast_div(&self.divisor)?;
        self.to_top(y, x.dim(0)?)
    }

    /// Gradient of [`Self::ave_forward`].
    pub fn ave_backward(&self, dy: &Tensor) -> Result<Tensor> {
        let share = self
            .top_rows(dy)?
            .broadcast_div(&self.divisor.unsqueeze(1)?)?;
        let k = self.win.kh * self.win.kw;
        let (p, _, r) = share.dims3()?;
        let src = share.broadcast_as((p, k, r))?;
        self.scatter(&src, dy.dim(0)?)
    }
}

/// Sum over a channel window `[c - before, c + after]` with zero padding.
fn channel_window_sum(t: &Tensor, before: usize, after: usize) -> Result<Tensor> {
    let c = t.dim(1)?;
    let padded = t.pad_with_zeros(1, before, after)?;
    let mut acc = padded.narrow(1, 0, c)?;
    for i in 1..=before + after {
        acc = (acc + padded.narrow(1, i, c)?)?;
    }
    Ok(acc)
}

/// LRN's `k + alpha/size * (window sum of x²)`, the window centred as Caffe's.
fn lrn_scale(p: &Lrn, x: &Tensor) -> Result<Tensor> {
    let pre = (p.size - 1) / 2;
    let s = channel_window_sum(&x.sqr()?, pre, p.size - 1 - pre)?;
    Ok(s.affine(p.alpha as f64 / p.size as f64, p.k as f64)?)
}

/// Local response normalisation across channels: `y = x * scale^-beta`.
pub fn lrn_forward(p: &Lrn, x: &Tensor) -> Result<Tensor> {
    Ok((x * lrn_scale(p, x)?.powf(-p.beta as f64)?)?)
}

/// Caffe's LRN gradient: `dy * scale^-beta - 2*alpha*beta/size * x * window
/// sum of (dy * y / scale)`, the window mirrored.
pub fn lrn_backward(p: &Lrn, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let pre = (p.size - 1) / 2;
    let scale = lrn_scale(p, x)?;
    let ratio = ((dy * y)? / &scale)?;
    let acc = channel_window_sum(&ratio, p.size - 1 - pre, pre)?;
    let coeff = 2.0 * p.alpha as f64 * p.beta as f64 / p.size as f64;
    let first = (dy * scale.powf(-p.beta as f64)?)?;
    Ok((first - (x * acc)?.affine(coeff, 0.0)?)?)
}

/// Caffe's ReLU gradient: `dy` where `x > 0`, `slope * dy` elsewhere.
pub fn relu_backward(x: &Tensor, dy: &Tensor, slope: f32) -> Result<Tensor> {
    let other = if slope == 0.0 {
        dy.zeros_like()?
    } else {
        dy.affine(slope as f64, 0.0)?
    };
    Ok(x.gt(0f32)?.where_cond(dy, &other)?)
}

/// One parameter's gradient clipped, normalised and regularised (see
/// [`ParamStep::prepared`]) as tensor ops.
pub fn prepared_grad(w: &Tensor, grad: &Tensor, step: &ParamStep) -> Result<Tensor> {
    let mut d = grad.clone();
    for &s in step.grad_scale.iter().flatten() {
        d = d.affine(s as f64, 0.0)?;
    }
    if step.decay != 0.0 {
        let reg = if step.l1 { w.sign()? } else { w.clone() };
        d = (d + reg.affine(step.decay as f64, 0.0)?)?;
    }
    Ok(d)
}

/// One parameter's SGD update (see [`ParamStep`]) as tensor ops.
/// Returns the new `(w, h)`.
pub fn sgd_step(
    w: &Tensor,
    grad: &Tensor,
    hist: &Tensor,
    step: &ParamStep,
) -> Result<(Tensor, Tensor)> {
    let d = prepared_grad(w, grad, step)?;
    let h = (d.affine(step.rate as f64, 0.0)? + hist.affine(step.momentum as f64, 0.0)?)?;
    let w = (w - &h)?;
    Ok((w, h))
}

/// Sum of squares of a tensor, on its device.
pub fn sum_sq(t: &Tensor) -> Result<f32> {
    Ok(t.sqr()?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?)
}
