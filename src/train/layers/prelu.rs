//! Caffe's PReLU layer: a ReLU whose negative slope is learned, one per
//! channel (axis 1) or one for all (`channel_shared`), starting at 0.25
//! unless a filler says otherwise. On the CPU parallel passes over the rows
//! (slope gradients summed in f64); elsewhere candle ops, their twin.
use super::{to_vec, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{PReLuParameter, Phase};
use crate::caffe::rng::{lock, SharedCaffeRng};
use crate::error::{Error, Result};
use crate::train::filler::fill_or_constant;
use crate::train::kernels::{channel_sums, lane_sum, per_channel};
use candle_core::{Device, Tensor};

pub struct PRelu {
    p: PReLuParameter,
    params: Vec<Tensor>,
    device: Device,
    path: OpPath,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    /// The bottom as (outer, channels, inner); channels 1 when shared.
    dims: (usize, usize, usize),
    ctx: String,
}

impl PRelu {
    pub fn new(
        p: Option<PReLuParameter>,
        device: Device,
        path: OpPath,
        rng: SharedCaffeRng,
        name: &str,
    ) -> Self {
        PRelu {
            p: p.unwrap_or_default(),
            params: Vec::new(),
            device,
            path,
            rng,
            dims: (0, 0, 0),
            ctx: format!("layer '{name}'"),
        }
    }

    /// The slopes shaped (1, channels, 1) for broadcasting.
    fn slopes(&self) -> Result<Tensor> {
        Ok(self.params[0].reshape((1, self.dims.1, 1))?)
    }

    fn backward_cpu(&self, a: &BackwardArgs, dy: &Tensor) -> Result<Grads> {
        let (outer, c, inner) = self.dims;
        with_f32(dy, |d| {
            with_f32(&a.bottom[0], |x| -> Result<Grads> {
                let slope_grad = if a.param_grad[0] {
                    let sums = channel_sums(outer, c, inner, |_, r| {
                        lane_sum(
                            &d[r.clone()],
                            &x[r],
                            |d, x| if x <= 0.0 { d * x } else { 0.0 },
                        )
                    });
                    let v: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
                    Some(Tensor::from_vec(v, self.params[0].shape(), &self.device)?)
                } else {
                    None
                };
                let dx = if a.propagate[0] {
                    let slope = to_vec(&self.params[0])?;
                    let mut dx = vec![0f32; d.len()];
                    per_channel(&mut dx, c, inner, |ch, at, row| {
                        let k = slope[ch];
                        for ((g, &d), &x) in row.iter_mut().zip(&d[at..]).zip(&x[at..]) {
                            *g = if x > 0.0 { d } else { d * k };
                        }
                    });
                    Some(Tensor::from_vec(dx, a.bottom[0].shape(), &self.device)?)
                } else {
                    None
                };
                Ok((vec![dx], vec![slope_grad]))
            })?
        })?
    }
}

impl PRelu {
    /// A bottom of `shape` as (outer, channels, inner); channels 1 when shared.
    fn dims_of(&self, shape: &[usize]) -> (usize, usize, usize) {
        let (channels, inner) = (shape[1], shape[2..].iter().product::<usize>());
        if self.p.channel_shared() {
            (1, 1, shape[0] * channels * inner)
        } else {
            (shape[0], channels, inner)
        }
    }
}

impl Layer for PRelu {
    fn type_name(&self) -> &'static str {
        "PReLU"
    }
    fn any_batch(&self) -> bool {
        true
    }
    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // Only the batch changes (behind a Filter); the slopes stay.
        let shape = &bottom[0];
        let channels = shape.get(1).copied().unwrap_or(0);
        if shape.len() < 2 || (!self.p.channel_shared() && channels != self.dims.1) {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "was set up for {} channels, not a bottom of shape {shape:?}",
                    self.dims.1
                ),
            ));
        }
        self.dims = self.dims_of(shape);
        Ok(vec![shape.clone()])
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        if shape.len() < 2 {
            return Err(Error::model(
                &self.ctx,
                format!("needs a bottom with at least 2 axes (channels on axis 1), got {shape:?}"),
            ));
        }
        let channels = shape[1];
        self.dims = self.dims_of(shape);
        let blob = vec![if self.p.channel_shared() { 1 } else { channels }];
        let slopes = fill_or_constant(
            self.p.filler.as_ref(),
            0.25,
            &blob,
            &mut lock(&self.rng),
            &self.ctx,
        )?;
        self.params = vec![Tensor::from_vec(slopes, blob, &self.device)?];
        Ok(vec![shape.clone()])
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        if !self.path.tensor_ops() {
            let (_, c, inner) = self.dims;
            let slope = to_vec(&self.params[0])?;
            let mut y = vec![0f32; x.elem_count()];
            with_f32(x, |xs| {
                per_channel(&mut y, c, inner, |ch, at, row| {
                    let k = slope[ch];
                    for (y, &x) in row.iter_mut().zip(&xs[at..]) {
                        // Caffe: max(x, 0) + slope * min(x, 0).
                        *y = x.max(0.0) + k * x.min(0.0);
                    }
                })
            })?;
            return Ok(vec![Tensor::from_vec(y, x.shape(), &self.device)?]);
        }
        let v = x.reshape(self.dims)?;
        let y = (v.maximum(0f32)? + v.minimum(0f32)?.broadcast_mul(&self.slopes()?)?)?;
        Ok(vec![y.reshape(x.shape())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None], vec![None]));
        };
        if !self.path.tensor_ops() {
            return self.backward_cpu(a, dy);
        }
        let x = a.bottom[0].reshape(self.dims)?;
        let d = dy.reshape(self.dims)?;
        let slope_grad = if a.param_grad[0] {
            // Sum of dy * x over the non-positive inputs, per channel.
            let neg = (&d * x.minimum(0f32)?)?;
            Some(neg.sum(2)?.sum(0)?.reshape(self.params[0].shape())?)
        } else {
            None
        };
        let dx = if a.propagate[0] {
            let negative = d.broadcast_mul(&self.slopes()?)?;
            let dx = x.gt(0f32)?.where_cond(&d, &negative)?;
            Some(dx.reshape(a.bottom[0].shape())?)
        } else {
            None
        };
        Ok((vec![dx], vec![slope_grad]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> SharedCaffeRng {
        crate::caffe::rng::shared(1)
    }

    fn layer(text: &str, path: OpPath) -> PRelu {
        let p: PReLuParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("p")).unwrap();
        PRelu::new(Some(p), Device::Cpu, path, rng(), "p")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn learns_a_slope_per_channel_or_one_shared() {
        for path in [OpPath::CpuKernels, OpPath::TensorOps] {
            let mut l = layer("", path);
            assert_eq!(l.setup(&[vec![2, 2, 2]]).unwrap(), vec![vec![2, 2, 2]]);
            assert_eq!(values(&l.params[0]), [0.25, 0.25]);
            l.params = vec![Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap()];
            let x = Tensor::new(&[1f32, -2., -4., 3., -1., 0., 2., -3.], &Device::Cpu)
                .unwrap()
                .reshape((2, 2, 2))
                .unwrap();
            let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
            assert_eq!(values(&y[0]), [1., -1., 4., 3., -0.5, 0., 2., 3.]);
            let dy = Tensor::new(&[1f32, 2., 3., 4., 5., 6., 7., 8.], &Device::Cpu)
                .unwrap()
                .reshape((2, 2, 2))
                .unwrap();
            let (g, p) = l
                .backward(&BackwardArgs {
                    bottom: &[x],
                    top: &y,
                    top_diff: &[Some(dy)],
                    propagate: &[true],
                    param_grad: &[true],
                })
                .unwrap();
            // x <= 0 (0 included) takes the slope, as in Caffe.
            assert_eq!(
                values(g[0].as_ref().unwrap()),
                [1., 1., -3., 4., 2.5, 3., 7., -8.]
            );
            // Channel 0: 2*-2 + 5*-1 + 6*0 = -9; channel 1: 3*-4 + 8*-3 = -36.
            assert_eq!(values(p[0].as_ref().unwrap()), [-9.0, -36.0]);

            let mut shared = layer(
                "channel_shared: true filler { type: \"constant\" value: 0.1 }",
                path,
            );
            shared.setup(&[vec![2, 3, 4]]).unwrap();
            assert_eq!(values(&shared.params[0]), [0.1]);
        }
        let e = layer("", OpPath::CpuKernels)
            .setup(&[vec![5]])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("layer 'p'") && e.contains("2 axes"), "{e}");
    }
}
