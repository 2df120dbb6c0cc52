//! Crop: the first bottom cut to the second's size on every axis from
//! `axis` on, starting at `offset` (one for all those axes, or one each),
//! as FCN crops its upsampled scores to the image. The gradient goes back
//! into the cut-out window (zeros around it); the reference bottom only
//! gives its shape and takes none. Candle ops on every device.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{CropParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Crop {
    p: CropParameter,
    ctx: String,
    /// Per axis of the first bottom: (start, length) of the window.
    window: Vec<(usize, usize)>,
}

impl Crop {
    pub fn new(p: CropParameter, name: &str) -> Self {
        Crop {
            p,
            ctx: format!("layer '{name}'"),
            window: Vec::new(),
        }
    }
}

impl Layer for Crop {
    fn type_name(&self) -> &'static str {
        "Crop"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (a, reference) = (&bottom[0], &bottom[1]);
        let n = a.len() as i32;
        let axis = if self.p.axis() < 0 {
            self.p.axis() + n
        } else {
            self.p.axis()
        };
        if axis < 0 || axis >= n || reference.len() != a.len() {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "axis {} does not fit bottoms of shapes {a:?} and {reference:?} (they need as many axes)",
                    self.p.axis()
                ),
            ));
        }
        let axis = axis as usize;
        let cropped = a.len() - axis;
        let offsets: Vec<usize> = match self.p.offset.as_slice() {
            [] => vec![0; cropped],
            [o] => vec![*o as usize; cropped],
            many if many.len() == cropped => many.iter().map(|&o| o as usize).collect(),
            many => {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "{} offsets for {cropped} cropped axes (give one, or one per axis)",
                        many.len()
                    ),
                ))
            }
        };
        self.window = a.iter().map(|&d| (0, d)).collect();
        for (k, &off) in offsets.iter().enumerate() {
            let i = axis + k;
            if off + reference[i] > a[i] {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "axis {i}: offset {off} plus the reference's {} passes the bottom's {}",
                        reference[i], a[i]
                    ),
                ));
            }
            self.window[i] = (off, reference[i]);
        }
        Ok(vec![self.window.iter().map(|&(_, len)| len).collect()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let mut y = bottom[0].clone();
        for (axis, &(start, len)) in self.window.iter().enumerate() {
            if len != y.dim(axis)? {
                y = y.narrow(axis, start, len)?;
            }
        }
        Ok(vec![y.contiguous()?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None, None], vec![]));
        };
        let shape = a.bottom[0].dims();
        let mut dx = dy.clone();
        for (axis, &(start, len)) in self.window.iter().enumerate() {
            let after = shape[axis] - start - len;
            if start + after > 0 {
                dx = dx.pad_with_zeros(axis, start, after)?;
            }
        }
        Ok((vec![Some(dx), None], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::to_vec;
    use candle_core::Device;

    #[test]
    fn crops_to_the_reference_and_pads_the_gradient_back() {
        let p = CropParameter {
            axis: Some(2),
            offset: vec![1],
        };
        let mut l = Crop::new(p, "c");
        assert_eq!(
            l.setup(&[vec![1, 1, 3, 4], vec![1, 1, 2, 2]]).unwrap(),
            vec![vec![1, 1, 2, 2]]
        );
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let r = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = l.forward(&[x.clone(), r.clone()], Phase::Train).unwrap();
        assert_eq!(to_vec(&y[0]).unwrap(), [5.0, 6.0, 9.0, 10.0]);
        let dy = Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &[x, r],
                top: &y,
                top_diff: &[Some(dy)],
                propagate: &[true, false],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(
            to_vec(g[0].as_ref().unwrap()).unwrap(),
            [0., 0., 0., 0., 0., 1., 1., 0., 0., 1., 1., 0.]
        );
    }

    #[test]
    fn a_window_past_the_bottom_is_refused() {
        let p = CropParameter {
            axis: Some(2),
            offset: vec![2],
        };
        let e = Crop::new(p, "c")
            .setup(&[vec![1, 1, 3, 4], vec![1, 1, 2, 2]])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("axis 2: offset 2 plus the reference's 2 passes the bottom's 3"),
            "{e}"
        );
    }
}
