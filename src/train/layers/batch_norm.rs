//! Caffe's BatchNorm layer (ResNet's; the learned scale and shift are a
//! separate Scale layer). Three blobs hold running sums, not learned
//! values: the channel means, the channel variances and the factor both
//! are divided by. Caffe forces their lr_mult to 0, so the solver leaves
//! them to this layer, which updates them on each TRAIN pass.
//!
//! - Batch statistics (TRAIN by default): each channel is normalised by its
//!   mean and biased variance over the batch and the spatial positions;
//!   then `factor = maf*factor + 1`, `mean_sum = mean + maf*mean_sum` and
//!   `var_sum = m/(m-1)*var + maf*var_sum` for the `m` values averaged.
//! - Global statistics (TEST by default, or `use_global_stats`): the stored
//!   sums divided by the factor (0 when the factor is 0).
//!
//! On the CPU the statistics are per-channel sums on all cores (in f64);
//! elsewhere candle ops, their twin.
use super::{to_vec, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{BatchNormParameter, Phase};
use crate::error::{Error, Result};
use crate::train::kernels::{channel_sums, lane_sum, per_channel};
use candle_core::{Device, Tensor, D};

pub struct BatchNorm {
    global: bool,
    fraction: f32,
    eps: f32,
    params: Vec<Tensor>,
    device: Device,
    path: OpPath,
    /// Bottom dims as (N, C, spatial).
    dims: (usize, usize, usize),
    /// `1 / sqrt(var + eps)` of the last forward pass, shaped (1, C, 1).
    inv_std: Option<Tensor>,
    ctx: String,
}

impl BatchNorm {
    pub fn new(
        p: Option<BatchNormParameter>,
        phase: Phase,
        device: Device,
        path: OpPath,
        name: &str,
    ) -> Self {
        let p = p.unwrap_or_default();
        BatchNorm {
            // Caffe: global statistics in TEST unless the net says otherwise.
            global: p.use_global_stats.unwrap_or(phase == Phase::Test),
            fraction: p.moving_average_fraction(),
            eps: p.eps(),
            params: Vec::new(),
            device,
            path,
            dims: (0, 0, 0),
            inv_std: None,
            ctx: format!("layer '{name}'"),
        }
    }

    /// What the stored sums are multiplied by to give the statistics: one
    /// over the factor, 0 while nothing has been accumulated.
    fn stored_scale(&self) -> Result<f32> {
        let factor = to_vec(&self.params[2])?[0];
        Ok(if factor == 0.0 { 0.0 } else { 1.0 / factor })
    }

    /// Caffe's unbiased-variance factor m/(m-1) for the `m` values a
    /// channel's statistics average (setup makes sure m >= 2).
    fn correction(&self) -> f64 {
        let m = (self.dims.0 * self.dims.2) as f64;
        m / (m - 1.0)
    }

    /// The stored statistics as (mean, variance), each (1, C, 1).
    fn global_stats(&self) -> Result<(Tensor, Tensor)> {
        let scale = self.stored_scale()?;
        let c = self.dims.1;
        let mean = self.params[0].affine(f64::from(scale), 0.0)?;
        let var = self.params[1].affine(f64::from(scale), 0.0)?;
        Ok((mean.reshape((1, c, 1))?, var.reshape((1, c, 1))?))
    }

    /// The forward pass on the CPU: the same arithmetic as the tensor ops
    /// below, with the sums in f64 and on all cores.
    fn forward_cpu(&mut self, x: &Tensor) -> Result<Tensor> {
        let (n, c, s) = self.dims;
        let (mean, var) = if self.global {
            let scale = self.stored_scale()?;
            let scaled = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(to_vec(t)?.iter().map(|v| v * scale).collect())
            };
            (scaled(&self.params[0])?, scaled(&self.params[1])?)
        } else {
            let m = (n * s) as f64;
            let (mean, var) = with_f32(x, |xs| {
                let mean: Vec<f32> =
                    channel_sums(n, c, s, |_, r| lane_sum(&xs[r.clone()], &xs[r], |x, _| x))
                        .iter()
                        .map(|v| (v / m) as f32)
                        .collect();
                let var: Vec<f32> = channel_sums(n, c, s, |ch, r| {
                    let mu = mean[ch];
                    lane_sum(&xs[r.clone()], &xs[r], |x, _| (x - mu) * (x - mu))
                })
                .iter()
                .map(|v| (v / m) as f32)
                .collect();
                (mean, var)
            })?;
            let (f, correction) = (self.fraction, self.correction() as f32);
            let (p0, p1, p2) = (
                to_vec(&self.params[0])?,
                to_vec(&self.params[1])?,
                to_vec(&self.params[2])?,
            );
            let sums0: Vec<f32> = mean.iter().zip(&p0).map(|(v, p)| v + p * f).collect();
            let sums1: Vec<f32> = var
                .iter()
                .zip(&p1)
                .map(|(v, p)| v * correction + p * f)
                .collect();
            self.params = vec![
                Tensor::from_vec(sums0, c, &self.device)?,
                Tensor::from_vec(sums1, c, &self.device)?,
                Tensor::from_vec(vec![p2[0] * f + 1.0], 1, &self.device)?,
            ];
            (mean, var)
        };
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let mut y = vec![0f32; n * c * s];
        with_f32(x, |xs| {
            per_channel(&mut y, c, s, |ch, at, row| {
                let (m, k) = (mean[ch], inv[ch]);
                for (y, &x) in row.iter_mut().zip(&xs[at..]) {
                    *y = (x - m) * k;
                }
            })
        })?;
        self.inv_std = Some(Tensor::from_vec(inv, (1, c, 1), &self.device)?);
        Ok(Tensor::from_vec(y, x.shape(), &self.device)?)
    }

    /// The backward pass on the CPU (see [`Layer::backward`] below).
    fn backward_cpu(&self, dy: &Tensor, y: &Tensor, inv_std: &Tensor) -> Result<Tensor> {
        let (n, c, s) = self.dims;
        let inv = to_vec(inv_std)?;
        let mut dx = vec![0f32; n * c * s];
        with_f32(dy, |d| -> Result<()> {
            if self.global {
                per_channel(&mut dx, c, s, |ch, at, row| {
                    for (g, &d) in row.iter_mut().zip(&d[at..]) {
                        *g = d * inv[ch];
                    }
                });
                return Ok(());
            }
            with_f32(y, |y| {
                let m = (n * s) as f64;
                let mean =
                    |sums: Vec<f64>| -> Vec<f32> { sums.iter().map(|v| (v / m) as f32).collect() };
                let mdy = mean(channel_sums(n, c, s, |_, r| {
                    lane_sum(&d[r.clone()], &d[r], |d, _| d)
                }));
                let mdyy = mean(channel_sums(n, c, s, |_, r| {
                    lane_sum(&d[r.clone()], &y[r], |d, y| d * y)
                }));
                per_channel(&mut dx, c, s, |ch, at, row| {
                    let (a, b, k) = (mdy[ch], mdyy[ch], inv[ch]);
                    for ((g, &d), &y) in row.iter_mut().zip(&d[at..]).zip(&y[at..]) {
                        *g = (d - a - y * b) * k;
                    }
                });
            })
        })??;
        Ok(Tensor::from_vec(dx, dy.shape(), &self.device)?)
    }
}

/// Per-channel mean of an (N, C, S) tensor, as (1, C, 1).
fn channel_mean(x: &Tensor) -> Result<Tensor> {
    let (n, _, s) = x.dims3()?;
    Ok(x.sum_keepdim(D::Minus1)?
        .sum_keepdim(0)?
        .affine(1.0 / (n * s) as f64, 0.0)?)
}

impl Layer for BatchNorm {
    fn type_name(&self) -> &'static str {
        "BatchNorm"
    }
    fn any_batch(&self) -> bool {
        true
    }
    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // Only the batch changes (behind a Filter); the statistics stay.
        let shape = &bottom[0];
        let (_, c, s) = self.dims;
        let (n, rest) = (shape[0], shape.iter().skip(2).product::<usize>());
        if shape.get(1).copied().unwrap_or(1) != c || rest != s {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "was set up for {c} channels of {s} values, not a bottom of shape {shape:?}"
                ),
            ));
        }
        if !self.global && n * s < 2 {
            return Err(Error::model(
                &self.ctx,
                format!("batch statistics need at least two values per channel, but the Filter before it kept one item of shape {shape:?} (Caffe divides by zero there)"),
            ));
        }
        self.dims = (n, c, s);
        Ok(vec![shape.clone()])
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let c = match shape.len() {
            0 => {
                return Err(Error::model(
                    &self.ctx,
                    "needs a bottom with at least one axis",
                ))
            }
            1 => 1,
            _ => shape[1],
        };
        let n = shape[0];
        let s = shape.iter().skip(2).product::<usize>();
        self.dims = (n, c, s);
        if !self.global && n * s < 2 {
            return Err(Error::model(
                &self.ctx,
                format!("batch statistics need at least two values per channel, but the bottom is {shape:?}; use a larger batch, or `batch_norm_param {{ use_global_stats: true }}` to normalise by the stored statistics"),
            ));
        }
        self.params = vec![
            Tensor::zeros(c, candle_core::DType::F32, &self.device)?,
            Tensor::zeros(c, candle_core::DType::F32, &self.device)?,
            Tensor::zeros(1, candle_core::DType::F32, &self.device)?,
        ];
        Ok(vec![shape.clone()])
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn fixed_params(&self) -> bool {
        true
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        if !self.path.tensor_ops() {
            return Ok(vec![self.forward_cpu(&bottom[0])?]);
        }
        let (n, c, s) = self.dims;
        let x = bottom[0].reshape((n, c, s))?;
        let (mean, var) = if self.global {
            self.global_stats()?
        } else {
            let mean = channel_mean(&x)?;
            let var = channel_mean(&x.broadcast_sub(&mean)?.sqr()?)?;
            // Caffe updates the sums on every pass with batch statistics,
            // TEST ones included (use_global_stats: false there).
            let correction = self.correction();
            let f = f64::from(self.fraction);
            let p = &self.params;
            let updated = [
                (mean.flatten_all()? + p[0].affine(f, 0.0)?)?,
                (var.flatten_all()?.affine(correction, 0.0)? + p[1].affine(f, 0.0)?)?,
                p[2].affine(f, 1.0)?,
            ];
            self.params = updated.into();
            (mean, var)
        };
        let inv_std = var.affine(1.0, f64::from(self.eps))?.sqrt()?.recip()?;
        let y = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        self.inv_std = Some(inv_std);
        Ok(vec![y.reshape(bottom[0].shape())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let none = || Ok((vec![None], vec![None, None, None]));
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return none();
        };
        let inv_std = self
            .inv_std
            .as_ref()
            .ok_or_else(|| Error::model(&self.ctx, "backward before forward"))?;
        if !self.path.tensor_ops() {
            let dx = self.backward_cpu(dy, &a.top[0], inv_std)?;
            return Ok((vec![Some(dx)], vec![None, None, None]));
        }
        let (n, c, s) = self.dims;
        let shape = dy.shape().clone();
        let dy = dy.reshape((n, c, s))?;
        let dx = if self.global {
            dy.broadcast_mul(inv_std)?
        } else {
            // dx = (dy - mean(dy) - y * mean(dy * y)) / std, with y the
            // normalised output (per channel means over N and space).
            let y = a.top[0].reshape((n, c, s))?;
            let centred = dy
                .broadcast_sub(&channel_mean(&dy)?)?
                .sub(&y.broadcast_mul(&channel_mean(&(&dy * &y)?)?)?)?;
            centred.broadcast_mul(inv_std)?
        };
        Ok((vec![Some(dx.reshape(shape)?)], vec![None, None, None]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str, phase: Phase) -> BatchNorm {
        let p: BatchNormParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("bn")).unwrap();
        BatchNorm::new(Some(p), phase, Device::Cpu, OpPath::CpuKernels, "bn")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Two images, two channels, two positions: channel 0 holds 1,3 | 5,7
    /// (mean 4, biased variance 5), channel 1 holds 2,2 | 2,2 (variance 0).
    fn input() -> Tensor {
        Tensor::new(&[1f32, 3., 2., 2., 5., 7., 2., 2.], &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 2))
            .unwrap()
    }

    /// Behind a Filter only the batch may change, and batch statistics
    /// still need two values per channel.
    #[test]
    fn reshapes_to_other_batches_of_the_same_items() {
        let mut l = layer("", Phase::Train);
        l.setup(&[vec![4, 3]]).unwrap();
        assert_eq!(l.reshape(&[vec![2, 3]]).unwrap(), [vec![2, 3]]);
        let err = l.reshape(&[vec![1, 3]]).unwrap_err().to_string();
        assert!(err.contains("kept one item"), "{err}");
        let err = l.reshape(&[vec![2, 5]]).unwrap_err().to_string();
        assert!(err.contains("set up for 3 channels"), "{err}");
        let mut global = layer("use_global_stats: true", Phase::Train);
        global.setup(&[vec![4, 3]]).unwrap();
        assert!(global.reshape(&[vec![1, 3]]).is_ok());
    }

    #[test]
    fn batch_statistics_normalise_and_accumulate() {
        let mut l = layer("eps: 0", Phase::Train);
        l.setup(&[vec![2, 2, 2]]).unwrap();
        let y = l.forward(&[input()], Phase::Train).unwrap();
        let r = 5f32.sqrt();
        // Channel 1 has no spread: 0/0 with eps 0 is NaN, so check channel 0.
        let got = values(&y[0]);
        for (i, want) in [(0, -3.0 / r), (1, -1.0 / r), (4, 1.0 / r), (5, 3.0 / r)] {
            assert!((got[i] - want).abs() < 1e-6, "{got:?}");
        }
        // Sums: factor 1, means as they are, variances times 4/3.
        assert_eq!(values(&l.params[2]), [1.0]);
        assert_eq!(values(&l.params[0]), [4.0, 2.0]);
        let var = values(&l.params[1]);
        assert!(
            (var[0] - 20.0 / 3.0).abs() < 1e-6 && var[1] == 0.0,
            "{var:?}"
        );
        // A second pass decays them by the fraction.
        l.forward(&[input()], Phase::Train).unwrap();
        assert!((values(&l.params[2])[0] - 1.999).abs() < 1e-6);
        assert!((values(&l.params[0])[0] - 4.0 * 1.999).abs() < 1e-5);
    }

    #[test]
    fn global_statistics_divide_the_sums_by_the_factor() {
        let mut l = layer("", Phase::Test);
        l.setup(&[vec![2, 2, 2]]).unwrap();
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        // Sums as after two passes: factor 2.
        l.params = vec![t(&[8.0, 4.0]), t(&[2.0, 8.0]), t(&[2.0])];
        let y = values(&l.forward(&[input()], Phase::Test).unwrap()[0]);
        // Channel 0: mean 4, variance 1; channel 1: mean 2, variance 4.
        let s0 = (1.0f32 + 1e-5).sqrt();
        assert!((y[0] - (1.0 - 4.0) / s0).abs() < 1e-5, "{y:?}");
        assert!((y[5] - (7.0 - 4.0) / s0).abs() < 1e-5, "{y:?}");
        assert!(y[2].abs() < 1e-6 && y[7].abs() < 1e-6, "{y:?}");
        // A zero factor (nothing accumulated yet) reads as zero statistics.
        l.params[2] = t(&[0.0]);
        let y = values(&l.forward(&[input()], Phase::Test).unwrap()[0]);
        assert!((y[0] - 1.0 / 1e-5f32.sqrt()).abs() / y[0] < 1e-5, "{y:?}");
        // And the gradient is dy / std.
        let dy = Tensor::ones((2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = input();
        let top = l.forward(std::slice::from_ref(&x), Phase::Test).unwrap();
        let (g, p) = l
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &top,
                top_diff: &[Some(dy)],
                propagate: &[true],
                param_grad: &[false, false, false],
            })
            .unwrap();
        assert!(p.iter().all(Option::is_none));
        let g = values(g[0].as_ref().unwrap());
        assert!((g[0] - 1.0 / 1e-5f32.sqrt()).abs() / g[0] < 1e-5, "{g:?}");
    }

    #[test]
    fn settings_follow_caffe() {
        assert!(!layer("", Phase::Train).global);
        assert!(layer("", Phase::Test).global);
        assert!(!layer("use_global_stats: false", Phase::Test).global);
        let mut l = layer("", Phase::Train);
        let e = l.setup(&[vec![1, 3]]).err().unwrap().to_string();
        assert!(
            e.contains("layer 'bn'") && e.contains("at least two values"),
            "{e}"
        );
    }
}
