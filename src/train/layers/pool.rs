//! Pooling (MAX with argmax routing, AVE), Caffe's output-size rounding.
use super::{nchw, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{
    pooling_parameter::PoolMethod, pooling_parameter::RoundMode, Phase, PoolingParameter,
};
use crate::error::{Error, Result};
use crate::train::fused::MaxPool;
use crate::train::kernels::{
    ave_pool, ave_pool_backward, max_pool, max_pool_backward, pooled_size, Window,
};
use crate::train::tensor_ops::PoolTables;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub struct Pooling {
    p: PoolingParameter,
    name: String,
    win: Option<Window>,
    argmax: Vec<u32>,
    device: Device,
    path: OpPath,
    /// Tensor-op pooling (GPU nets): gather tables, or for MAX on the
    /// fused path the fused kernels.
    tables: Option<PoolTables>,
    fused: Option<MaxPool>,
    /// Fused MAX: the last forward's top stacked with its argmax.
    saved: Option<Tensor>,
}

impl Pooling {
    pub fn new(p: PoolingParameter, name: &str, device: &Device, path: OpPath) -> Result<Self> {
        if p.pool() == PoolMethod::Stochastic {
            return Err(Error::model(
                format!("layer '{name}'"),
                "STOCHASTIC pooling is not supported",
            ));
        }
        Ok(Pooling {
            p,
            name: name.to_string(),
            win: None,
            argmax: Vec::new(),
            device: device.clone(),
            path,
            tables: None,
            fused: None,
            saved: None,
        })
    }
}

impl Layer for Pooling {
    fn type_name(&self) -> &'static str {
        "Pooling"
    }

    fn any_batch(&self) -> bool {
        true
    }

    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // Only the batch changes (behind a Filter): the window tables stay.
        let win = self.win.expect("setup ran");
        let n = super::conv::same_image_shape(bottom, &win, &self.name)?;
        Ok(vec![vec![n, win.c, win.oh, win.ow]])
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        let [n, c, h, w] = nchw(bottom, &ctx)?;
        let p = &self.p;
        let (kh, kw) = if p.global_pooling() {
            if p.kernel_size.is_some() || p.kernel_h.is_some() || p.kernel_w.is_some() {
                return Err(Error::model(
                    &ctx,
                    "with global_pooling the kernel is the whole input: give no kernel size",
                ));
            }
            (h, w)
        } else {
            match (p.kernel_h, p.kernel_w, p.kernel_size) {
                (Some(a), Some(b), None) => (a as usize, b as usize),
                (None, None, Some(k)) => (k as usize, k as usize),
                _ => {
                    return Err(Error::model(
                        &ctx,
                        "needs kernel_size, or kernel_h and kernel_w (not both)",
                    ))
                }
            }
        };
        // Caffe's rules: `pad` (or `stride`) alone, or both of its _h and
        // _w fields without it.
        let pair =
            |one: Option<u32>, h: Option<u32>, w: Option<u32>, default: u32, what: &str| match (
                one, h, w,
            ) {
                (_, None, None) => Ok((
                    one.unwrap_or(default) as usize,
                    one.unwrap_or(default) as usize,
                )),
                (None, Some(a), Some(b)) => Ok((a as usize, b as usize)),
                _ => Err(Error::model(
                    &ctx,
                    format!("give {what}, or {what}_h and {what}_w (both, without {what})"),
                )),
            };
        let (ph, pw) = pair(p.pad, p.pad_h, p.pad_w, 0, "pad")?;
        let (sh, sw) = pair(p.stride, p.stride_h, p.stride_w, 1, "stride")?;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || kh > h + 2 * ph || kw > w + 2 * pw {
            return Err(Error::model(
                &ctx,
                format!("kernel {kh}x{kw}, stride {sh}x{sw} do not fit the input {h}x{w}"),
            ));
        }
        if (ph > 0 || pw > 0) && (ph >= kh || pw >= kw) {
            return Err(Error::model(&ctx, "pad must be smaller than the kernel"));
        }
        let ceil = p.round_mode() == RoundMode::Ceil;
        let oh = pooled_size(h, kh, ph, sh, ceil);
        let ow = pooled_size(w, kw, pw, sw, ceil);
        // Caffe's ceil rounding can add a last window that starts past the
        // input when the stride exceeds the kernel (and there is no pad to
        // trigger its correction); Caffe then pools nothing there and its
        // backward writes out of bounds. Refuse such a geometry.
        if (oh - 1) * sh >= h + ph || (ow - 1) * sw >= w + pw {
            return Err(Error::model(
                &ctx,
                format!(
                    "kernel {kh}x{kw} with stride {sh}x{sw} leaves the last window past the \
                     {h}x{w} input (use a stride no larger than the kernel, or floor rounding)"
                ),
            ));
        }
        let win = Window {
            c,
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            sh,
            sw,
            dh: 1,
            dw: 1,
            oh,
            ow,
        };
        self.win = Some(win);
        if self.path.fused() && self.p.pool() == PoolMethod::Max {
            self.fused = Some(MaxPool { win });
        } else if self.path.tensor_ops() {
            self.tables = Some(PoolTables::new(&win, &self.device)?);
        }
        Ok(vec![vec![n, c, oh, ow]])
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        if let Some(op) = &self.fused {
            let (y, saved) = op.forward(&bottom[0])?;
            self.saved = Some(saved);
            return Ok(vec![y]);
        }
        if let Some(t) = &self.tables {
            let y = if self.p.pool() == PoolMethod::Max {
                t.max_forward(&bottom[0])?
            } else {
                t.ave_forward(&bottom[0])?
            };
            return Ok(vec![y]);
        }
        let g = self.win.expect("setup ran");
        let n = bottom[0].dim(0)?;
        let (img, out) = (g.c * g.h * g.w, g.c * g.oh * g.ow);
        let mut y = vec![0.0f32; n * out];
        let max = self.p.pool() == PoolMethod::Max;
        if max {
            self.argmax.resize(n * out, 0);
        }
        let argmax = &mut self.argmax;
        // The bottom is read in place, not copied (conv1's output is 58 MB at batch 50).
        with_f32(&bottom[0], |x| {
            if max {
                y.par_chunks_mut(out)
                    .zip(argmax.par_chunks_mut(out))
                    .zip(x.par_chunks(img))
                    .for_each(|((yi, ai), xi)| max_pool(xi, &g, yi, ai));
            } else {
                y.par_chunks_mut(out)
                    .zip(x.par_chunks(img))
                    .for_each(|(yi, xi)| ave_pool(xi, &g, yi));
            }
        })?;
        Ok(vec![Tensor::from_vec(
            y,
            (n, g.c, g.oh, g.ow),
            bottom[0].device(),
        )?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        if let (Some(op), Some(saved)) = (&self.fused, &self.saved) {
            return Ok((vec![Some(op.backward(saved, dy)?)], vec![]));
        }
        if let Some(t) = &self.tables {
            let dx = if self.p.pool() == PoolMethod::Max {
                t.max_backward(&a.bottom[0], dy)?
            } else {
                t.ave_backward(dy)?
            };
            return Ok((vec![Some(dx)], vec![]));
        }
        let g = self.win.expect("setup ran");
        let n = a.bottom[0].dim(0)?;
        let (img, out) = (g.c * g.h * g.w, g.c * g.oh * g.ow);
        let mut dx = vec![0.0f32; n * img];
        with_f32(dy, |dy| {
            if self.p.pool() == PoolMethod::Max {
                dx.par_chunks_mut(img)
                    .zip(dy.par_chunks(out))
                    .zip(self.argmax.par_chunks(out))
                    .for_each(|((dxi, dyi), ai)| max_pool_backward(dyi, ai, dxi));
            } else {
                dx.par_chunks_mut(img)
                    .zip(dy.par_chunks(out))
                    .for_each(|(dxi, dyi)| ave_pool_backward(dyi, &g, dxi));
            }
        })?;
        Ok((
            vec![Some(Tensor::from_vec(
                dx,
                a.bottom[0].shape(),
                a.bottom[0].device(),
            )?)],
            vec![],
        ))
    }
}
