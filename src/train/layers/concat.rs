//! Caffe's Concat layer: its bottoms joined along one axis (the channels of
//! GoogLeNet's inception modules). The same candle ops serve every device;
//! the backward pass hands each bottom its slice of the top's gradient.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{ConcatParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

#[derive(Debug)]
pub struct Concat {
    /// The axis as written (negative counts from the end).
    axis: i64,
    /// The axis counted from the front, and each bottom's size along it.
    resolved: usize,
    sizes: Vec<usize>,
    ctx: String,
}

impl Concat {
    pub fn new(p: Option<ConcatParameter>, name: &str) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        let p = p.unwrap_or_default();
        let axis = match (p.axis, p.concat_dim) {
            (Some(_), Some(_)) => {
                return Err(Error::model(
                    &ctx,
                    "sets both concat_param.axis and the old concat_dim; keep one",
                ))
            }
            // The old field counts from the front only.
            (None, Some(d)) => i64::from(d),
            _ => i64::from(p.axis()),
        };
        Ok(Concat {
            axis,
            resolved: 0,
            sizes: Vec::new(),
            ctx,
        })
    }
}

impl Layer for Concat {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Concat"
    }
    fn variadic_bottoms(&self) -> bool {
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let first = &bottom[0];
        let n = first.len() as i64;
        let axis = if self.axis < 0 {
            self.axis + n
        } else {
            self.axis
        };
        if !(0..n).contains(&axis) {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "axis {} is out of range for a bottom of shape {first:?}",
                    self.axis
                ),
            ));
        }
        self.resolved = axis as usize;
        let mut top = first.clone();
        top[self.resolved] = 0;
        self.sizes.clear();
        for (i, b) in bottom.iter().enumerate() {
            let same_elsewhere = b.len() == first.len()
                && b.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(k, (x, y))| k == self.resolved || x == y);
            if !same_elsewhere {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "bottom {i} has shape {b:?} but bottom 0 has {first:?}; they may differ only along axis {}",
                        self.resolved
                    ),
                ));
            }
            top[self.resolved] += b[self.resolved];
            self.sizes.push(b[self.resolved]);
        }
        Ok(vec![top])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        if let [one] = bottom {
            return Ok(vec![one.clone()]);
        }
        Ok(vec![Tensor::cat(bottom, self.resolved)?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None; a.bottom.len()], vec![]));
        };
        let mut offset = 0;
        let mut grads = Vec::with_capacity(self.sizes.len());
        for (&size, &wanted) in self.sizes.iter().zip(a.propagate) {
            grads.push(if wanted {
                Some(dy.narrow(self.resolved, offset, size)?.contiguous()?)
            } else {
                None
            });
            offset += size;
        }
        Ok((grads, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(text: &str) -> Result<Concat> {
        let p: ConcatParameter = crate::caffe::prototxt::parse(text, std::path::Path::new("c"))?;
        Concat::new(Some(p), "c")
    }

    #[test]
    fn joins_channels_and_splits_the_gradient_back() {
        let mut l = layer("").unwrap();
        let top = l.setup(&[vec![2, 1, 2, 1], vec![2, 2, 2, 1]]).unwrap();
        assert_eq!(top, vec![vec![2, 3, 2, 1]]);
        let a = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 2, 1))
            .unwrap();
        let b = Tensor::arange(10f32, 18.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 2, 1))
            .unwrap();
        let y = l.forward(&[a.clone(), b.clone()], Phase::Train).unwrap();
        // Image 0: a's channel, then b's two; image 1 likewise.
        let want = [0., 1., 10., 11., 12., 13., 2., 3., 14., 15., 16., 17.];
        assert_eq!(y[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let dy = Tensor::new(&want, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 1))
            .unwrap();
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &[a.clone(), b.clone()],
                top: &y,
                top_diff: &[Some(dy)],
                propagate: &[true, false],
                param_grad: &[],
            })
            .unwrap();
        let ga = g[0].as_ref().unwrap();
        assert_eq!(ga.dims(), a.dims());
        assert_eq!(
            ga.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3.]
        );
        assert!(g[1].is_none());
    }

    #[test]
    fn axes_count_from_either_end_and_shapes_are_checked() {
        let mut l = layer("axis: -1").unwrap();
        assert_eq!(
            l.setup(&[vec![2, 3], vec![2, 4]]).unwrap(),
            vec![vec![2, 7]]
        );
        let mut l = layer("concat_dim: 0").unwrap();
        assert_eq!(
            l.setup(&[vec![2, 3], vec![5, 3]]).unwrap(),
            vec![vec![7, 3]]
        );
        assert!(layer("axis: 1 concat_dim: 1")
            .unwrap_err()
            .to_string()
            .contains("keep one"));
        let e = layer("")
            .unwrap()
            .setup(&[vec![2, 3, 4, 4], vec![2, 3, 5, 4]])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer 'c'") && e.contains("only along axis 1"),
            "{e}"
        );
        let e = layer("axis: 4")
            .unwrap()
            .setup(&[vec![2, 3, 4, 4]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("axis 4 is out of range"), "{e}");
    }
}
