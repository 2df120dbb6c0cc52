//! Caffe's Bias layer: a shift per position of the axes
//! `axis..axis+num_axes`, broadcast over the others; learned (filler
//! default 0), or with a second bottom that blob, laid over the first from
//! `axis` on. On the CPU parallel passes over the rows (sums in f64);
//! elsewhere candle ops, their twin.
use super::scale::span;
use super::{to_vec, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{BiasParameter, Phase};
use crate::caffe::rng::{lock, SharedCaffeRng};
use crate::error::{Error, Result};
use crate::train::filler::fill_or_constant;
use crate::train::kernels::{channel_sums, lane_sum, per_channel};
use candle_core::{Device, Tensor};

pub struct Bias {
    p: BiasParameter,
    params: Vec<Tensor>,
    device: Device,
    path: OpPath,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    /// The bottom as (outer, shifted, inner).
    dims: (usize, usize, usize),
    /// Whether the shift is the second bottom (else the parameter).
    shift_bottom: bool,
    /// Whether the batch axis comes before the shift's axes.
    batch_outside: bool,
    ctx: String,
}

impl Bias {
    pub fn new(
        p: Option<BiasParameter>,
        device: Device,
        path: OpPath,
        rng: SharedCaffeRng,
        name: &str,
    ) -> Self {
        Bias {
            p: p.unwrap_or_default(),
            params: Vec::new(),
            device,
            path,
            rng,
            dims: (0, 0, 0),
            shift_bottom: false,
            batch_outside: false,
            ctx: format!("layer '{name}'"),
        }
    }

    fn shift<'a>(&'a self, bottom: &'a [Tensor]) -> &'a Tensor {
        if self.shift_bottom {
            &bottom[1]
        } else {
            &self.params[0]
        }
    }
}

impl Bias {
    /// The bottom as (outer, shifted, inner) and the shift's shape.
    fn span(&self, bottom: &[Vec<usize>]) -> Result<((usize, usize, usize), Vec<usize>)> {
        span(bottom, self.p.axis(), self.p.num_axes(), "shift", &self.ctx)
    }
}

impl Layer for Bias {
    fn type_name(&self) -> &'static str {
        "Bias"
    }
    fn any_batch(&self) -> bool {
        !self.shift_bottom && self.batch_outside
    }
    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (dims, blob) = self.span(bottom)?;
        super::scale::same_blob(&self.params[0], &blob, &self.ctx)?;
        self.dims = dims;
        Ok(vec![bottom[0].clone()])
    }
    fn variadic_bottoms(&self) -> bool {
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        if bottom.len() > 2 {
            return Err(Error::model(
                &self.ctx,
                format!("takes one or two bottoms, got {}", bottom.len()),
            ));
        }
        self.shift_bottom = bottom.len() == 2;
        let (dims, blob) = self.span(bottom)?;
        self.dims = dims;
        self.batch_outside = super::scale::starts_after_batch(self.p.axis(), &bottom[0]);
        self.params.clear();
        if !self.shift_bottom {
            let shift = fill_or_constant(
                self.p.filler.as_ref(),
                0.0,
                &blob,
                &mut lock(&self.rng),
                &self.ctx,
            )?;
            self.params
                .push(Tensor::from_vec(shift, blob, &self.device)?);
        }
        Ok(vec![bottom[0].clone()])
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let shift = self.shift(bottom);
        if !self.path.tensor_ops() {
            let (_, c, inner) = self.dims;
            let b = to_vec(shift)?;
            let mut y = vec![0f32; bottom[0].elem_count()];
            with_f32(&bottom[0], |x| {
                per_channel(&mut y, c, inner, |ch, at, row| {
                    for (y, &x) in row.iter_mut().zip(&x[at..]) {
                        *y = x + b[ch];
                    }
                })
            })?;
            return Ok(vec![Tensor::from_vec(y, bottom[0].shape(), &self.device)?]);
        }
        let y = bottom[0]
            .reshape(self.dims)?
            .broadcast_add(&shift.reshape((1, self.dims.1, 1))?)?;
        Ok(vec![y.reshape(bottom[0].shape())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let want_shift = if self.shift_bottom {
            a.propagate[1]
        } else {
            a.param_grad[0]
        };
        let (dx, dshift) = match &a.top_diff[0] {
            None => (None, None),
            Some(dy) => {
                let dshift = if !want_shift {
                    None
                } else if self.path.tensor_ops() {
                    let d = dy.reshape(self.dims)?.sum(2)?.sum(0)?;
                    Some(d.reshape(self.shift(a.bottom).shape())?)
                } else {
                    let (outer, c, inner) = self.dims;
                    let sums = with_f32(dy, |d| {
                        channel_sums(outer, c, inner, |_, r| {
                            lane_sum(&d[r.clone()], &d[r], |d, _| d)
                        })
                    })?;
                    let v: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
                    Some(Tensor::from_vec(
                        v,
                        self.shift(a.bottom).shape(),
                        &self.device,
                    )?)
                };
                (a.propagate[0].then(|| dy.clone()), dshift)
            }
        };
        Ok(if self.shift_bottom {
            (vec![dx, dshift], vec![])
        } else {
            (vec![dx], vec![dshift])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> SharedCaffeRng {
        crate::caffe::rng::shared(1)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn shifts_each_channel_learned_or_from_a_second_bottom() {
        let t = |v: &[f32], s: &[usize]| Tensor::new(v, &Device::Cpu).unwrap().reshape(s).unwrap();
        for path in [OpPath::CpuKernels, OpPath::TensorOps] {
            let mut l = Bias::new(None, Device::Cpu, path, rng(), "b");
            assert_eq!(l.setup(&[vec![2, 2, 2]]).unwrap(), [vec![2, 2, 2]]);
            assert_eq!(values(&l.params[0]), [0.0, 0.0]);
            l.params = vec![t(&[1., -1.], &[2])];
            let x = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
            let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
            assert_eq!(values(&y[0]), [2., 3., 2., 3., 6., 7., 6., 7.]);
            let dy = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
            let (g, p) = l
                .backward(&BackwardArgs {
                    bottom: std::slice::from_ref(&x),
                    top: &y,
                    top_diff: &[Some(dy.clone())],
                    propagate: &[true],
                    param_grad: &[true],
                })
                .unwrap();
            assert_eq!(values(g[0].as_ref().unwrap()), values(&dy));
            // Channel 0: 1+2+5+6, channel 1: 3+4+7+8.
            assert_eq!(values(p[0].as_ref().unwrap()), [14., 22.]);

            // The shift as a second bottom (one per image and channel, axis 0).
            let p: BiasParameter =
                crate::caffe::prototxt::parse("axis: 0", std::path::Path::new("b")).unwrap();
            let mut two = Bias::new(Some(p), Device::Cpu, path, rng(), "b");
            two.setup(&[vec![2, 2, 2], vec![2, 2]]).unwrap();
            assert!(two.params.is_empty());
            let b = t(&[1., 0., 0., 2.], &[2, 2]);
            let bottom = [x, b];
            let y = two.forward(&bottom, Phase::Train).unwrap();
            assert_eq!(values(&y[0]), [2., 3., 3., 4., 5., 6., 9., 10.]);
            let (g, p) = two
                .backward(&BackwardArgs {
                    bottom: &bottom,
                    top: &y,
                    top_diff: &[Some(dy)],
                    propagate: &[true, true],
                    param_grad: &[],
                })
                .unwrap();
            assert!(p.is_empty());
            assert_eq!(values(g[1].as_ref().unwrap()), [3., 7., 11., 15.]);
        }
        let e = Bias::new(None, Device::Cpu, OpPath::CpuKernels, rng(), "b")
            .setup(&[vec![2, 3], vec![2]])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("layer 'b'") && e.contains("shift (second bottom)"),
            "{e}"
        );
    }
}
