//! MVN: mean-variance normalisation of each channel of each item (or of
//! each whole item with `across_channels`): `y = (x - mean) / (std + eps)`,
//! the biased standard deviation, or only `x - mean` without
//! `normalize_variance`. Caffe adds `eps` to the deviation, not the
//! variance. The gradient over the `m` values of a group is
//! `(dy - (sum(dy) + y * sum(y dy)) / m) / (std + eps)`, or `dy - mean(dy)`.
//! Computed as candle tensor ops on every device.
use super::{count, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{MvnParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Mvn {
    p: MvnParameter,
    ctx: String,
    /// (groups, values per group).
    groups: (usize, usize),
    /// `std + eps` per group of the last forward pass.
    deviation: Option<Tensor>,
}

impl Mvn {
    pub fn new(p: MvnParameter, name: &str) -> Self {
        Mvn {
            p,
            ctx: format!("layer '{name}'"),
            groups: (0, 0),
            deviation: None,
        }
    }
}

impl Layer for Mvn {
    fn type_name(&self) -> &'static str {
        "MVN"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let lead = if self.p.across_channels() { 1 } else { 2 };
        if shape.len() < lead {
            return Err(Error::model(
                &self.ctx,
                format!("needs a bottom with at least {lead} axes, not {shape:?}"),
            ));
        }
        let groups = count(&shape[..lead]);
        self.groups = (groups, count(shape) / groups.max(1));
        Ok(vec![shape.clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = bottom[0].reshape(self.groups)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let y = if self.p.normalize_variance() {
            let deviation = centred
                .sqr()?
                .mean_keepdim(1)?
                .sqrt()?
                .affine(1.0, f64::from(self.p.eps()))?;
            let y = centred.broadcast_div(&deviation)?;
            self.deviation = Some(deviation);
            y
        } else {
            centred
        };
        Ok(vec![y.reshape(bottom[0].shape())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let dy = dy.reshape(self.groups)?;
        let dx = match &self.deviation {
            Some(deviation) if self.p.normalize_variance() => {
                let y = a.top[0].reshape(self.groups)?;
                let spread = y
                    .broadcast_mul(&(&y * &dy)?.sum_keepdim(1)?)?
                    .broadcast_add(&dy.sum_keepdim(1)?)?;
                let m = self.groups.1.max(1) as f64;
                (dy - spread.affine(1.0 / m, 0.0)?)?.broadcast_div(deviation)?
            }
            _ => dy.broadcast_sub(&dy.mean_keepdim(1)?)?,
        };
        Ok((vec![Some(dx.reshape(a.bottom[0].shape())?)], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::to_vec;
    use candle_core::Device;

    #[test]
    fn each_channel_gets_zero_mean_and_unit_deviation() {
        let mut l = Mvn::new(MvnParameter::default(), "m");
        l.setup(&[vec![1, 2, 1, 2]]).unwrap();
        let x =
            Tensor::from_vec(vec![1.0f32, 3.0, 10.0, 10.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let y = to_vec(&l.forward(&[x], Phase::Train).unwrap()[0]).unwrap();
        // Channel 0: mean 2, std 1; channel 1: constant, so 0 / eps.
        assert!(
            (y[0] + 1.0).abs() < 1e-6 && (y[1] - 1.0).abs() < 1e-6,
            "{y:?}"
        );
        assert_eq!(&y[2..], [0.0, 0.0]);
    }

    #[test]
    fn without_variance_only_the_mean_goes() {
        let p = MvnParameter {
            normalize_variance: Some(false),
            across_channels: Some(true),
            eps: None,
        };
        let mut l = Mvn::new(p, "m");
        l.setup(&[vec![1, 2, 1, 2]]).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 3.0, 4.0, 4.0], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let y = to_vec(&l.forward(&[x], Phase::Train).unwrap()[0]).unwrap();
        assert_eq!(y, [-2.0, 0.0, 1.0, 1.0]);
    }
}
