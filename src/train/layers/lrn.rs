//! Local response normalisation across channels (Caffe's LRN, alpha/n form;
//! `WITHIN_CHANNEL` is [`super::lrn_within`]).
use super::{nchw, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{LrnParameter, Phase};
use crate::error::{Error, Result};
use crate::train::kernels::{lrn_backward, lrn_forward, Lrn};
use crate::train::{fused, tensor_ops};
use candle_core::Tensor;
use rayon::prelude::*;

/// `local_size`, which must be odd (the window is centred), for either region.
pub(super) fn window(p: &LrnParameter, ctx: &str) -> Result<usize> {
    if p.local_size() % 2 == 0 {
        return Err(Error::model(ctx, "local_size must be odd"));
    }
    Ok(p.local_size() as usize)
}

pub struct LocalResponseNorm {
    p: Lrn,
    name: String,
    scale: Vec<f32>,
    path: OpPath,
    /// Fused path: the last forward's top stacked with its scale.
    saved: Option<Tensor>,
}

impl LocalResponseNorm {
    pub fn new(p: LrnParameter, name: &str, path: OpPath) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        Ok(LocalResponseNorm {
            p: Lrn {
                size: window(&p, &ctx)?,
                alpha: p.alpha(),
                beta: p.beta(),
                k: p.k(),
            },
            name: name.to_string(),
            scale: Vec::new(),
            path,
            saved: None,
        })
    }
}

impl Layer for LocalResponseNorm {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "LRN"
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        nchw(bottom, &format!("layer '{}'", self.name))?;
        Ok(vec![bottom[0].clone()])
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        if self.path.fused() {
            let (y, saved) = fused::lrn_forward(&self.p, &bottom[0])?;
            self.saved = Some(saved);
            return Ok(vec![y]);
        }
        if self.path.tensor_ops() {
            return Ok(vec![tensor_ops::lrn_forward(&self.p, &bottom[0])?]);
        }
        let dims = bottom[0].dims();
        let (c, plane) = (dims[1], dims[2] * dims[3]);
        let img = c * plane;
        let count = bottom[0].elem_count();
        let mut y = vec![0.0f32; count];
        self.scale.resize(count, 0.0);
        let (p, scale) = (self.p, &mut self.scale);
        // Inputs are read in place, not copied (conv1's output is 58 MB at batch 50).
        with_f32(&bottom[0], |x| {
            y.par_chunks_mut(img)
                .zip(scale.par_chunks_mut(img))
                .zip(x.par_chunks(img))
                .for_each(|((yi, si), xi)| lrn_forward(xi, c, plane, &p, yi, si))
        })?;
        Ok(vec![Tensor::from_vec(
            y,
            bottom[0].shape(),
            bottom[0].device(),
        )?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        if let (true, Some(saved)) = (self.path.fused(), &self.saved) {
            let dx = fused::lrn_backward(&self.p, &a.bottom[0], saved, dy)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        if self.path.tensor_ops() {
            let dx = tensor_ops::lrn_backward(&self.p, &a.bottom[0], &a.top[0], dy)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        let dims = a.bottom[0].dims();
        let (c, plane) = (dims[1], dims[2] * dims[3]);
        let img = c * plane;
        let mut dx = vec![0.0f32; a.bottom[0].elem_count()];
        let p = self.p;
        with_f32(&a.bottom[0], |x| {
            with_f32(&a.top[0], |y| {
                with_f32(dy, |dy| {
                    dx.par_chunks_mut(img).enumerate().for_each(|(i, dxi)| {
                        let r = i * img..(i + 1) * img;
                        lrn_backward(
                            &x[r.clone()],
                            &y[r.clone()],
                            &self.scale[r.clone()],
                            &dy[r],
                            c,
                            plane,
                            &p,
                            dxi,
                        )
                    })
                })
            })
        })???;
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
