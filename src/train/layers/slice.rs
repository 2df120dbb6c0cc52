//! Layers that route blobs without computing: Slice (cut one blob along an
//! axis into several, the inverse of Concat), Split (one blob to several
//! consumers; Caffe inserts these itself, some nets name them) and Silence
//! (swallow blobs nothing else reads). The same candle ops on every device.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{Phase, SliceParameter};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Slice {
    p: SliceParameter,
    tops: usize,
    axis: usize,
    /// Each top's first index and length along `axis`.
    parts: Vec<(usize, usize)>,
    ctx: String,
}

impl Slice {
    pub fn new(p: Option<SliceParameter>, tops: usize, name: &str) -> Result<Self> {
        let p = p.unwrap_or_default();
        let ctx = format!("layer '{name}'");
        if p.axis.is_some() && p.slice_dim.is_some() {
            return Err(Error::model(
                &ctx,
                "gives both axis and slice_dim (the older name of axis); keep one",
            ));
        }
        if tops == 0 {
            return Err(Error::model(&ctx, "needs at least one top"));
        }
        Ok(Slice {
            p,
            tops,
            axis: 0,
            parts: Vec::new(),
            ctx,
        })
    }
}

impl Layer for Slice {
    fn type_name(&self) -> &'static str {
        "Slice"
    }
    fn any_batch(&self) -> bool {
        // Cut along an axis after the batch, its parts keep the items.
        self.axis >= 1
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let n = shape.len() as i64;
        let axis = match self.p.slice_dim {
            Some(d) => i64::from(d),
            None => i64::from(self.p.axis()),
        };
        let axis = if axis < 0 { axis + n } else { axis };
        if !(0..n).contains(&axis) {
            return Err(Error::model(
                &self.ctx,
                format!("axis {axis} does not fit a bottom of shape {shape:?}"),
            ));
        }
        self.axis = axis as usize;
        let dim = shape[self.axis];
        let points: Vec<usize> = self.p.slice_point.iter().map(|&v| v as usize).collect();
        let bounds: Vec<usize> = if points.is_empty() {
            if dim % self.tops != 0 {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "cannot cut axis {} of size {dim} into {} equal parts (give slice_point)",
                        self.axis, self.tops
                    ),
                ));
            }
            (0..=self.tops).map(|i| i * dim / self.tops).collect()
        } else {
            if points.len() != self.tops - 1 {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "has {} slice_point values for {} tops (needs one fewer than the tops)",
                        points.len(),
                        self.tops
                    ),
                ));
            }
            let bounds: Vec<usize> = std::iter::once(0).chain(points).chain([dim]).collect();
            if bounds.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "slice_point values {:?} must rise strictly inside axis {} of size {dim}",
                        self.p.slice_point, self.axis
                    ),
                ));
            }
            bounds
        };
        self.parts = bounds.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
        Ok(self
            .parts
            .iter()
            .map(|&(_, len)| {
                let mut s = shape.clone();
                s[self.axis] = len;
                s
            })
            .collect())
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        self.parts
            .iter()
            .map(|&(start, len)| Ok(bottom[0].narrow(self.axis, start, len)?.contiguous()?))
            .collect()
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if !a.propagate[0] || a.top_diff.iter().all(Option::is_none) {
            return Ok((vec![None], vec![]));
        }
        // A top nobody read has no gradient: its part of the bottom's is 0.
        let parts = a
            .top_diff
            .iter()
            .zip(a.top)
            .map(|(d, t)| match d {
                Some(d) => Ok(d.clone()),
                None => Ok(t.zeros_like()?),
            })
            .collect::<Result<Vec<Tensor>>>()?;
        Ok((vec![Some(Tensor::cat(&parts, self.axis)?)], vec![]))
    }
}

/// Caffe's Split: copies of its bottom, whose gradients add up.
pub struct Split {
    tops: usize,
}

impl Split {
    pub fn new(tops: usize) -> Self {
        Split { tops }
    }
}

impl Layer for Split {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Split"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(vec![bottom[0].clone(); self.tops])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        Ok(vec![bottom[0].clone(); self.tops])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if !a.propagate[0] {
            return Ok((vec![None], vec![]));
        }
        let mut sum: Option<Tensor> = None;
        for d in a.top_diff.iter().flatten() {
            sum = Some(match sum {
                Some(s) => (s + d)?,
                None => d.clone(),
            });
        }
        Ok((vec![sum], vec![]))
    }
}

/// Caffe's Silence: takes blobs and gives nothing (their gradient is 0).
pub struct Silence;

impl Layer for Silence {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Silence"
    }
    fn variadic_bottoms(&self) -> bool {
        true
    }
    fn setup(&mut self, _bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(Vec::new())
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn slice(text: &str, tops: usize) -> Result<Slice> {
        let p: SliceParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("s")).unwrap();
        Slice::new(Some(p), tops, "s")
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn cuts_at_the_points_and_joins_the_gradients() {
        let mut s = slice("slice_point: 1 slice_point: 3", 3).unwrap();
        assert_eq!(
            s.setup(&[vec![2, 4, 1]]).unwrap(),
            vec![vec![2, 1, 1], vec![2, 2, 1], vec![2, 1, 1]]
        );
        let x = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 1))
            .unwrap();
        let tops = s.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        assert_eq!(values(&tops[0]), [0., 4.]);
        assert_eq!(values(&tops[1]), [1., 2., 5., 6.]);
        assert_eq!(values(&tops[2]), [3., 7.]);
        // The middle top's gradient missing: zeros there.
        let d0 = Tensor::new(&[1f32, 2.], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1))
            .unwrap();
        let d2 = Tensor::new(&[3f32, 4.], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1))
            .unwrap();
        let (g, _) = s
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &tops,
                top_diff: &[Some(d0), None, Some(d2)],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(
            values(g[0].as_ref().unwrap()),
            [1., 0., 0., 3., 2., 0., 0., 4.]
        );
    }

    #[test]
    fn equal_parts_and_errors() {
        let mut s = slice("axis: -1", 2).unwrap();
        assert_eq!(
            s.setup(&[vec![1, 2, 6]]).unwrap(),
            vec![vec![1, 2, 3], vec![1, 2, 3]]
        );
        let mut old = slice("slice_dim: 0", 2).unwrap();
        assert_eq!(
            old.setup(&[vec![4, 3]]).unwrap(),
            vec![vec![2, 3], vec![2, 3]]
        );
        let msg = |r: Result<Vec<Vec<usize>>>| r.err().unwrap().to_string();
        let e = msg(slice("", 3).unwrap().setup(&[vec![2, 4]]));
        assert!(
            e.contains("layer 's'") && e.contains("3 equal parts"),
            "{e}"
        );
        let e = msg(slice("slice_point: 2", 3).unwrap().setup(&[vec![2, 4]]));
        assert!(e.contains("1 slice_point values for 3 tops"), "{e}");
        let e = msg(slice("slice_point: 3 slice_point: 2", 3)
            .unwrap()
            .setup(&[vec![2, 4]]));
        assert!(e.contains("rise strictly"), "{e}");
        let e = msg(slice("slice_point: 4", 2).unwrap().setup(&[vec![2, 4]]));
        assert!(e.contains("rise strictly"), "{e}");
        let e = slice("axis: 1 slice_dim: 1", 2).err().unwrap().to_string();
        assert!(e.contains("both axis and slice_dim"), "{e}");
    }

    #[test]
    fn split_adds_the_gradients_of_its_copies() {
        let mut s = Split::new(3);
        assert_eq!(s.setup(&[vec![2]]).unwrap().len(), 3);
        let x = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        let tops = s.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        let d = |v: [f32; 2]| Some(Tensor::new(&v, &Device::Cpu).unwrap());
        let (g, _) = s
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &tops,
                top_diff: &[d([1., 2.]), None, d([10., 20.])],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(values(g[0].as_ref().unwrap()), [11., 22.]);
    }
}
