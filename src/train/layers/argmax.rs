//! ArgMax: the indices (and, with `out_max_val`, the values) of each item's
//! `top_k` largest values, as deploy nets end with it. Without `axis` the
//! top is `N x (1 or 2) x top_k` (indices, then values), each item's values
//! flattened; with `axis` that axis shrinks to `top_k` and holds indices, or
//! values with `out_max_val`. Equal values rank the later index first, as
//! Caffe's sort of (value, index) pairs does. No gradient, as in Caffe.
use super::{count, to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{ArgMaxParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct ArgMax {
    p: ArgMaxParameter,
    ctx: String,
    /// (items, values ranked per item, stride between them), and the top shape.
    dims: (usize, usize, usize),
    top: Vec<usize>,
}

impl ArgMax {
    pub fn new(p: ArgMaxParameter, name: &str) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        if p.top_k() < 1 {
            return Err(Error::model(&ctx, "top_k must be at least 1"));
        }
        Ok(ArgMax {
            p,
            ctx,
            dims: (0, 0, 0),
            top: Vec::new(),
        })
    }
}

impl Layer for ArgMax {
    fn allow_force_backward(&self, _i: usize) -> bool {
        // No gradient in Caffe either (it aborts when forced).
        false
    }
    fn type_name(&self) -> &'static str {
        "ArgMax"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let k = self.p.top_k() as usize;
        let (dim, stride) = match self.p.axis {
            Some(a) => {
                let axis = if a < 0 { a + shape.len() as i32 } else { a };
                if axis < 0 || axis as usize >= shape.len() {
                    return Err(Error::model(
                        &self.ctx,
                        format!("axis {a} is out of range for shape {shape:?}"),
                    ));
                }
                let axis = axis as usize;
                self.top = shape.clone();
                self.top[axis] = k;
                (shape[axis], count(&shape[axis + 1..]))
            }
            None => {
                self.top = vec![1; shape.len().max(3)];
                self.top[0] = shape[0];
                self.top[1] = if self.p.out_max_val() { 2 } else { 1 };
                self.top[2] = k;
                (count(&shape[1..]), 1)
            }
        };
        if k > dim {
            return Err(Error::model(
                &self.ctx,
                format!("top_k {k} is more than the {dim} values ranked"),
            ));
        }
        self.dims = (count(shape) / dim.max(1), dim, stride);
        Ok(vec![self.top.clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = to_vec(&bottom[0])?;
        let (items, dim, stride) = self.dims;
        let k = self.p.top_k() as usize;
        let mut y = vec![0.0f32; count(&self.top)];
        let mut ranked: Vec<(f32, usize)> = Vec::with_capacity(dim);
        for i in 0..items {
            let (outer, inner) = (i / stride, i % stride);
            ranked.clear();
            ranked.extend((0..dim).map(|j| (x[(outer * dim + j) * stride + inner], j)));
            // Largest first; among equals, the larger index first.
            let desc = |a: &(f32, usize), b: &(f32, usize)| {
                b.0.partial_cmp(&a.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(b.1.cmp(&a.1))
            };
            ranked.select_nth_unstable_by(k - 1, desc);
            ranked[..k].sort_by(desc);
            for (j, &(v, idx)) in ranked[..k].iter().enumerate() {
                match (self.p.axis.is_some(), self.p.out_max_val()) {
                    (true, true) => y[(outer * k + j) * stride + inner] = v,
                    (true, false) => y[(outer * k + j) * stride + inner] = idx as f32,
                    (false, true) => {
                        y[2 * i * k + j] = idx as f32;
                        y[2 * i * k + k + j] = v;
                    }
                    (false, false) => y[i * k + j] = idx as f32,
                }
            }
        }
        Ok(vec![Tensor::from_vec(
            y,
            self.top.as_slice(),
            bottom[0].device(),
        )?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        no_gradient(a, &self.ctx, "ArgMax")
    }
}

/// The backward pass of a layer without a gradient (Caffe's "not
/// implemented"): nothing when none is asked for, else an error.
pub(super) fn no_gradient(a: &BackwardArgs, ctx: &str, ty: &str) -> Result<Grads> {
    if a.propagate.iter().any(|&p| p) && a.top_diff.iter().any(Option::is_some) {
        return Err(Error::model(
            ctx,
            format!("{ty} has no gradient (nor has Caffe's); keep it off the path to the loss, or set propagate_down: false"),
        ));
    }
    Ok((vec![None; a.bottom.len()], vec![]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(p: ArgMaxParameter, shape: &[usize], x: Vec<f32>) -> (Vec<usize>, Vec<f32>) {
        let mut l = ArgMax::new(p, "a").unwrap();
        let top = l.setup(&[shape.to_vec()]).unwrap().remove(0);
        let t = Tensor::from_vec(x, shape, &Device::Cpu).unwrap();
        let y = l.forward(&[t], Phase::Test).unwrap();
        (top, to_vec(&y[0]).unwrap())
    }

    #[test]
    fn indices_then_values_per_item() {
        let p = ArgMaxParameter {
            out_max_val: Some(true),
            top_k: Some(2),
            axis: None,
        };
        // Ties: the later index ranks first.
        let (shape, y) = run(p, &[2, 3], vec![0.1, 0.7, 0.2, 5.0, 1.0, 5.0]);
        assert_eq!(shape, [2, 2, 2]);
        assert_eq!(y, [1.0, 2.0, 0.7, 0.2, 2.0, 0.0, 5.0, 5.0]);
    }

    #[test]
    fn along_an_axis() {
        let p = ArgMaxParameter {
            out_max_val: None,
            top_k: Some(1),
            axis: Some(1),
        };
        // (1, 3, 2): per column j, the channel of the largest.
        let (shape, y) = run(p, &[1, 3, 2], vec![1.0, 9.0, 4.0, 2.0, 3.0, 8.0]);
        assert_eq!(shape, [1, 1, 2]);
        assert_eq!(y, [1.0, 0.0]);
    }

    #[test]
    fn top_k_beyond_the_values_is_refused() {
        let p = ArgMaxParameter {
            top_k: Some(4),
            ..Default::default()
        };
        let mut l = ArgMax::new(p, "a").unwrap();
        assert!(l.setup(&[vec![2, 3]]).is_err());
    }
}
