//! Caffe's Scale layer: a learned factor (and with `bias_term` a shift) per
//! position of the axes `axis..axis+num_axes`, broadcast over the others;
//! after a BatchNorm it is the learned gamma and beta. With a second bottom
//! the factor is that blob, laid over the first from `axis` on (a
//! squeeze-and-excitation gate: N x C factors with `axis: 0`), and only the
//! shift is learned. On the CPU one parallel pass over the rows
//! (per-channel sums in f64); elsewhere candle ops, their twin.
use super::{to_vec, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{Phase, ScaleParameter};
use crate::caffe::rng::{lock, SharedCaffeRng};
use crate::error::{Error, Result};
use crate::train::filler::{fill, fill_or_constant};
use crate::train::kernels::{channel_sums, lane_sum, per_channel};
use candle_core::{Device, Tensor};

pub struct Scale {
    p: ScaleParameter,
    params: Vec<Tensor>,
    device: Device,
    path: OpPath,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    /// The bottom as (outer, scaled, inner).
    dims: (usize, usize, usize),
    /// Whether the factor is the second bottom (else the first parameter).
    factor_bottom: bool,
    /// Whether the batch axis comes before the factor's axes (so a Filter's
    /// changing batch leaves the factor alone).
    batch_outside: bool,
    ctx: String,
}

impl Scale {
    pub fn new(
        p: Option<ScaleParameter>,
        device: Device,
        path: OpPath,
        rng: SharedCaffeRng,
        name: &str,
    ) -> Self {
        Scale {
            p: p.unwrap_or_default(),
            params: Vec::new(),
            device,
            path,
            rng,
            dims: (0, 0, 0),
            factor_bottom: false,
            batch_outside: false,
            ctx: format!("layer '{name}'"),
        }
    }

    /// The factor: the second bottom, or the first parameter.
    fn factor<'a>(&'a self, bottom: &'a [Tensor]) -> &'a Tensor {
        if self.factor_bottom {
            &bottom[1]
        } else {
            &self.params[0]
        }
    }

    /// The learned shift, if any.
    fn shift(&self) -> Option<&Tensor> {
        self.params.get(usize::from(!self.factor_bottom))
    }

    /// A factor or shift shaped (1, scaled, 1) for broadcasting.
    fn broadcast(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.reshape((1, self.dims.1, 1))?)
    }
}

impl Scale {
    /// The backward pass on the CPU: what the tensor ops compute, the sums
    /// in f64 on all cores.
    fn backward_cpu(&self, a: &BackwardArgs, dy: &Tensor) -> Result<Grads> {
        let (outer, c, inner) = self.dims;
        let factor = self.factor(a.bottom);
        let blob = |sums: Vec<f64>, like: &Tensor| -> Result<Tensor> {
            let v: Vec<f32> = sums.iter().map(|&v| v as f32).collect();
            Ok(Tensor::from_vec(v, like.shape(), &self.device)?)
        };
        with_f32(dy, |d| -> Result<Grads> {
            // The factor's gradient goes to the second bottom or the first parameter.
            let want_factor = if self.factor_bottom {
                a.propagate[1]
            } else {
                a.param_grad[0]
            };
            let dfactor = if want_factor {
                let sums = with_f32(&a.bottom[0], |x| {
                    channel_sums(outer, c, inner, |_, r| {
                        lane_sum(&d[r.clone()], &x[r], |d, x| d * x)
                    })
                })?;
                Some(blob(sums, factor)?)
            } else {
                None
            };
            let shift_at = usize::from(!self.factor_bottom);
            let dshift = match self.shift() {
                Some(b) if a.param_grad[shift_at] => Some(blob(
                    channel_sums(outer, c, inner, |_, r| {
                        lane_sum(&d[r.clone()], &d[r], |d, _| d)
                    }),
                    b,
                )?),
                _ => None,
            };
            let dx = if a.propagate[0] {
                let factor = to_vec(factor)?;
                let mut dx = vec![0f32; d.len()];
                per_channel(&mut dx, c, inner, |ch, at, row| {
                    for (g, &d) in row.iter_mut().zip(&d[at..]) {
                        *g = d * factor[ch];
                    }
                });
                Some(Tensor::from_vec(dx, a.bottom[0].shape(), &self.device)?)
            } else {
                None
            };
            Ok(self.arrange(dx, dfactor, dshift))
        })?
    }

    /// The gradients in the order the net expects: the bottoms', then the
    /// parameters' (the factor is one or the other).
    fn arrange(
        &self,
        dx: Option<Tensor>,
        dfactor: Option<Tensor>,
        dshift: Option<Tensor>,
    ) -> Grads {
        let mut params = Vec::new();
        let mut bottoms = vec![dx];
        if self.factor_bottom {
            bottoms.push(dfactor);
        } else {
            params.push(dfactor);
        }
        if self.shift().is_some() {
            params.push(dshift);
        }
        (bottoms, params)
    }
}

/// Where a per-position blob (Scale's factor, Bias's shift) lies over the
/// first bottom: its axes `axis..axis+num_axes` (`num_axes` -1: to the end),
/// or with a second bottom that bottom's own axes from `axis` on (Caffe
/// then ignores `num_axes`). Returns the first bottom as (outer, positions,
/// inner) and the blob's shape; a second bottom of another shape is an
/// error naming it as `what`.
/// Whether axis `axis` (Caffe's, negative from the end) of a blob of
/// `shape` comes after its first (the batch).
pub(super) fn starts_after_batch(axis: i32, shape: &[usize]) -> bool {
    let rank = shape.len() as i32;
    (if axis < 0 { axis + rank } else { axis }) >= 1
}

/// Refuses a reshaped bottom whose span no longer fits the learned blob.
pub(super) fn same_blob(param: &Tensor, blob: &[usize], ctx: &str) -> Result<()> {
    if param.dims() != blob {
        return Err(Error::model(
            ctx,
            format!(
                "was set up for a blob of shape {:?}, and this bottom asks for {blob:?}",
                param.dims()
            ),
        ));
    }
    Ok(())
}

pub(super) fn span(
    bottom: &[Vec<usize>],
    axis: i32,
    num_axes: i32,
    what: &str,
    ctx: &str,
) -> Result<((usize, usize, usize), Vec<usize>)> {
    let shape = &bottom[0];
    let n = shape.len() as i64;
    let start = i64::from(axis);
    let start = if start < 0 { start + n } else { start };
    let num_axes = match bottom.get(1) {
        Some(b) => b.len() as i64,
        None => i64::from(num_axes),
    };
    let end = if num_axes == -1 { n } else { start + num_axes };
    if !(0..=n).contains(&start) || num_axes < -1 || end > n {
        return Err(Error::model(
            ctx,
            format!(
                "axis {axis} with num_axes {num_axes} does not fit a bottom of shape {shape:?}"
            ),
        ));
    }
    let (start, end) = (start as usize, end as usize);
    let blob: Vec<usize> = shape[start..end].to_vec();
    if let Some(b) = bottom.get(1) {
        if b != &blob {
            return Err(Error::model(
                ctx,
                format!(
                    "its {what} (second bottom) of shape {b:?} does not match axes {start}..{end} of its first bottom {shape:?} (set the layer's axis)"
                ),
            ));
        }
    }
    let dims = (
        shape[..start].iter().product(),
        blob.iter().product(),
        shape[end..].iter().product(),
    );
    Ok((dims, blob))
}

impl Scale {
    /// The bottom as (outer, scaled, inner) and the factor's shape.
    fn span(&self, bottom: &[Vec<usize>]) -> Result<((usize, usize, usize), Vec<usize>)> {
        span(
            bottom,
            self.p.axis(),
            self.p.num_axes(),
            "factor",
            &self.ctx,
        )
    }
}

impl Layer for Scale {
    fn type_name(&self) -> &'static str {
        "Scale"
    }
    fn any_batch(&self) -> bool {
        !self.factor_bottom && self.batch_outside
    }
    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (dims, blob) = self.span(bottom)?;
        same_blob(&self.params[0], &blob, &self.ctx)?;
        self.dims = dims;
        Ok(vec![bottom[0].clone()])
    }
    fn variadic_bottoms(&self) -> bool {
        // Counted here so that two bottoms get this layer's own message.
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        if bottom.len() > 2 {
            return Err(Error::model(
                &self.ctx,
                format!("takes one or two bottoms, got {}", bottom.len()),
            ));
        }
        let shape = &bottom[0];
        self.factor_bottom = bottom.len() == 2;
        let (dims, blob) = self.span(bottom)?;
        self.dims = dims;
        self.batch_outside = starts_after_batch(self.p.axis(), shape);
        self.params.clear();
        if !self.factor_bottom {
            // Caffe's default factor is 1; the shift's default filler is 0.
            let factor = fill_or_constant(
                self.p.filler.as_ref(),
                1.0,
                &blob,
                &mut lock(&self.rng),
                &self.ctx,
            )?;
            self.params
                .push(Tensor::from_vec(factor, blob.clone(), &self.device)?);
        }
        if self.p.bias_term() {
            let shift = fill(
                &self.p.bias_filler.clone().unwrap_or_default(),
                &blob,
                &mut lock(&self.rng),
                &self.ctx,
            )?;
            self.params
                .push(Tensor::from_vec(shift, blob, &self.device)?);
        }
        Ok(vec![shape.clone()])
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let factor = self.factor(bottom);
        if !self.path.tensor_ops() {
            let (_, c, inner) = self.dims;
            let factor = to_vec(factor)?;
            let shift = self.shift().map(to_vec).transpose()?;
            let mut y = vec![0f32; bottom[0].elem_count()];
            with_f32(&bottom[0], |x| {
                per_channel(&mut y, c, inner, |ch, at, row| {
                    let k = factor[ch];
                    match &shift {
                        Some(b) => {
                            for (y, &x) in row.iter_mut().zip(&x[at..]) {
                                *y = x * k + b[ch];
                            }
                        }
                        None => {
                            for (y, &x) in row.iter_mut().zip(&x[at..]) {
                                *y = x * k;
                            }
                        }
                    }
                })
            })?;
            return Ok(vec![Tensor::from_vec(y, bottom[0].shape(), &self.device)?]);
        }
        let x = bottom[0].reshape(self.dims)?;
        let mut y = x.broadcast_mul(&self.broadcast(factor)?)?;
        if let Some(b) = self.shift() {
            y = y.broadcast_add(&self.broadcast(b)?)?;
        }
        Ok(vec![y.reshape(bottom[0].shape())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dy) = &a.top_diff[0] else {
            return Ok(self.arrange(None, None, None));
        };
        if !self.path.tensor_ops() {
            return self.backward_cpu(a, dy);
        }
        let factor = self.factor(a.bottom);
        let dy = dy.reshape(self.dims)?;
        // Sums over the outer and inner axes, shaped as the factor.
        let reduce =
            |t: &Tensor| -> Result<Tensor> { Ok(t.sum(2)?.sum(0)?.reshape(factor.shape())?) };
        let want_factor = if self.factor_bottom {
            a.propagate[1]
        } else {
            a.param_grad[0]
        };
        let dfactor = if want_factor {
            let x = a.bottom[0].reshape(self.dims)?;
            Some(reduce(&(&dy * &x)?)?)
        } else {
            None
        };
        let dshift = if self.shift().is_some() && a.param_grad[usize::from(!self.factor_bottom)] {
            Some(reduce(&dy)?)
        } else {
            None
        };
        let dx = if a.propagate[0] {
            let dx = dy.broadcast_mul(&self.broadcast(factor)?)?;
            Some(dx.reshape(a.bottom[0].shape())?)
        } else {
            None
        };
        Ok(self.arrange(dx, dfactor, dshift))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> SharedCaffeRng {
        crate::caffe::rng::shared(1)
    }

    fn layer(text: &str) -> Scale {
        let p: ScaleParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("s")).unwrap();
        Scale::new(Some(p), Device::Cpu, OpPath::CpuKernels, rng(), "s")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn scales_and_shifts_each_channel_and_sums_the_gradients() {
        let mut l = layer("bias_term: true");
        assert_eq!(
            l.setup(&[vec![2, 2, 1, 2]]).unwrap(),
            vec![vec![2, 2, 1, 2]]
        );
        // Defaults: factor 1, shift 0.
        assert_eq!(values(&l.params[0]), [1.0, 1.0]);
        assert_eq!(values(&l.params[1]), [0.0, 0.0]);
        let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
        l.params = vec![t(&[2.0, -1.0]), t(&[0.5, 1.0])];
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8.])
            .reshape((2, 2, 1, 2))
            .unwrap();
        let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        assert_eq!(values(&y[0]), [2.5, 4.5, -2., -3., 10.5, 12.5, -6., -7.]);
        let dy = t(&[1., 1., 1., 1., 1., 0., 0., 2.])
            .reshape((2, 2, 1, 2))
            .unwrap();
        let (g, p) = l
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &y,
                top_diff: &[Some(dy)],
                propagate: &[true],
                param_grad: &[true, true],
            })
            .unwrap();
        assert_eq!(
            values(g[0].as_ref().unwrap()),
            [2., 2., -1., -1., 2., 0., 0., -2.]
        );
        // dfactor: channel 0 = 1+2+5, channel 1 = 3+4+16; dshift: 3 and 4.
        assert_eq!(values(p[0].as_ref().unwrap()), [8.0, 23.0]);
        assert_eq!(values(p[1].as_ref().unwrap()), [3.0, 4.0]);
    }

    #[test]
    fn a_second_bottom_gates_each_image_and_channel() {
        for path in [OpPath::CpuKernels, OpPath::TensorOps] {
            // Squeeze-and-excitation: N x C factors laid over N x C x H x W.
            let p: ScaleParameter =
                crate::caffe::prototxt::parse("axis: 0 bias_term: true", std::path::Path::new("s"))
                    .unwrap();
            let mut l = Scale::new(Some(p), Device::Cpu, path, rng(), "s");
            assert_eq!(
                l.setup(&[vec![2, 2, 1, 2], vec![2, 2]]).unwrap(),
                vec![vec![2, 2, 1, 2]]
            );
            // Only the shift is learned, shaped as the factor.
            assert_eq!(l.params.len(), 1);
            assert_eq!(l.params[0].dims(), [2, 2]);
            let t =
                |v: &[f32], s: &[usize]| Tensor::new(v, &Device::Cpu).unwrap().reshape(s).unwrap();
            l.params = vec![t(&[0., 1., 0., 0.], &[2, 2])];
            let x = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 1, 2]);
            let f = t(&[2., 0.5, -1., 0.], &[2, 2]);
            let bottom = [x, f];
            let y = l.forward(&bottom, Phase::Train).unwrap();
            assert_eq!(values(&y[0]), [2., 4., 2.5, 3., -5., -6., 0., 0.]);
            let dy = t(&[1., 1., 1., 2., 0., 1., 3., 3.], &[2, 2, 1, 2]);
            let (g, p) = l
                .backward(&BackwardArgs {
                    bottom: &bottom,
                    top: &y,
                    top_diff: &[Some(dy)],
                    propagate: &[true, true],
                    param_grad: &[true],
                })
                .unwrap();
            assert_eq!(
                values(g[0].as_ref().unwrap()),
                [2., 2., 0.5, 1., 0., -1., 0., 0.]
            );
            // dfactor per (image, channel): 1+2, 3+8, 0+6, 21+24.
            assert_eq!(values(g[1].as_ref().unwrap()), [3., 11., 6., 45.]);
            assert_eq!(values(p[0].as_ref().unwrap()), [2., 3., 1., 6.]);
        }
    }

    #[test]
    fn axes_are_checked() {
        let mut l = layer("axis: 0 num_axes: -1");
        l.setup(&[vec![2, 3]]).unwrap();
        assert_eq!(l.params[0].dims(), [2, 3]);
        let e = layer("axis: 1 num_axes: 3")
            .setup(&[vec![2, 3, 4]])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("layer 's'") && e.contains("does not fit"), "{e}");
        let e = layer("")
            .setup(&[vec![2, 3], vec![2]])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("second bottom") && e.contains("[2]"), "{e}");
    }
}
