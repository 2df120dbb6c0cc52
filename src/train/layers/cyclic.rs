//! Cyclic slicing and pooling (beyond Caffe; Dieleman et al., "Exploiting
//! cyclic symmetry in convolutional neural networks", 2016, and the Kaggle
//! plankton winners' nets). `CyclicSlice` stacks each image's four quarter
//! turns along the batch axis, so the layers after it see every image at
//! 0°, 90°, 180° and 270°; `CyclicPool` averages each image's four results
//! back into one. A net with both is exactly invariant to quarter turns of
//! its input, since turning the input only reorders the four copies. Quarter
//! turns move pixels without interpolating, so nothing is blurred.
use super::{nchw, BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use crate::inference::tta::View;
use candle_core::Tensor;
use rayon::prelude::*;

/// The `k`-th quarter turn (counter-clockwise) of a batch (N, C, H, W) of
/// square images: plane by plane on all cores on the CPU (a gather in
/// candle is several times slower), as tensor ops elsewhere.
fn turn(x: &Tensor, k: u8) -> Result<Tensor> {
    let dims = x.dims();
    if x.device().is_cpu() && dims.len() == 4 && dims[2] == dims[3] && dims[2] > 0 {
        let n = dims[2];
        let mut v = super::to_vec(x)?;
        v.par_chunks_mut(n * n)
            .for_each(|plane| crate::train::transform::rotate_square(plane, n, k));
        return Ok(Tensor::from_vec(v, dims, x.device())?);
    }
    View {
        mirror: false,
        turns: k % 4,
        warp: None,
    }
    .apply(x)
}

/// (N, C, H, W) square images → (4N, C, H, W): the batch, then its quarter
/// turns by 90°, 180° and 270°.
pub struct CyclicSlice {
    name: String,
}

impl CyclicSlice {
    pub fn new(name: &str) -> Self {
        CyclicSlice { name: name.into() }
    }
}

impl Layer for CyclicSlice {
    fn type_name(&self) -> &'static str {
        "CyclicSlice"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        let [n, c, h, w] = nchw(bottom, &ctx)?;
        if h != w {
            return Err(Error::model(
                ctx,
                format!("turns its images by quarter turns, so they must be square, not {h}x{w} (use crop_size)"),
            ));
        }
        Ok(vec![vec![4 * n, c, h, w]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        let turns = (0..4).map(|k| turn(x, k)).collect::<Result<Vec<_>>>()?;
        Ok(vec![Tensor::cat(&turns, 0)?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        // Each copy's gradient turned back, summed.
        let n = a.bottom[0].dim(0)?;
        let mut dx = dy.narrow(0, 0, n)?.contiguous()?;
        for k in 1..4u8 {
            let back = turn(&dy.narrow(0, k as usize * n, n)?.contiguous()?, 4 - k)?;
            dx = (dx + back)?;
        }
        Ok((vec![Some(dx)], vec![]))
    }
}

/// (4N, …) → (N, …): the mean of each image's four copies.
pub struct CyclicPool {
    name: String,
}

impl CyclicPool {
    pub fn new(name: &str) -> Self {
        CyclicPool { name: name.into() }
    }
}

impl Layer for CyclicPool {
    fn type_name(&self) -> &'static str {
        "CyclicPool"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        match bottom {
            [s] if !s.is_empty() && s[0] % 4 == 0 && s[0] > 0 => {
                let mut top = s.clone();
                top[0] /= 4;
                Ok(vec![top])
            }
            _ => Err(Error::model(
                ctx,
                format!(
                    "needs one bottom whose batch holds four turns of each image (a CyclicSlice before it), got {bottom:?}"
                ),
            )),
        }
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        let n = x.dim(0)? / 4;
        let mut sum = x.narrow(0, 0, n)?;
        for k in 1..4 {
            sum = (sum + x.narrow(0, k * n, n)?)?;
        }
        Ok(vec![(sum * 0.25)?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let quarter = (dy * 0.25)?;
        let dx = Tensor::cat(&[&quarter, &quarter, &quarter, &quarter], 0)?;
        Ok((vec![Some(dx)], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn slice_stacks_the_four_turns_and_its_gradient_turns_them_back() {
        // Two 1-channel 3x3 images.
        let x = Tensor::from_vec(
            (0..18).map(|v| v as f32).collect::<Vec<_>>(),
            (2, 1, 3, 3),
            &Device::Cpu,
        )
        .unwrap();
        let mut s = CyclicSlice::new("s");
        assert_eq!(
            s.setup(&[vec![2, 1, 3, 3]]).unwrap(),
            vec![vec![8, 1, 3, 3]]
        );
        let y = s
            .forward(std::slice::from_ref(&x), Phase::Train)
            .unwrap()
            .remove(0);
        // Copy 1 of image 0: one counter-clockwise turn (2 5 8 / 1 4 7 / 0 3 6).
        assert_eq!(
            values(&y.narrow(0, 2, 1).unwrap()),
            [2., 5., 8., 1., 4., 7., 0., 3., 6.]
        );
        assert_eq!(values(&y.narrow(0, 0, 2).unwrap()), values(&x));
        // <dy, slice(x)> = <slice^T(dy), x> for a random dy: the adjoint.
        let dy_vals: Vec<f32> = (0..72).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let dy = Tensor::from_vec(dy_vals.clone(), (8, 1, 3, 3), &Device::Cpu).unwrap();
        let (dx, _) = s
            .backward(&BackwardArgs {
                bottom: std::slice::from_ref(&x),
                top: std::slice::from_ref(&y),
                top_diff: &[Some(dy)],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        let lhs: f32 = values(&y).iter().zip(&dy_vals).map(|(a, b)| a * b).sum();
        let rhs: f32 = values(dx[0].as_ref().unwrap())
            .iter()
            .zip(values(&x))
            .map(|(a, b)| a * b)
            .sum();
        assert_eq!(lhs, rhs);
        assert!(s
            .setup(&[vec![1, 1, 3, 4]])
            .unwrap_err()
            .to_string()
            .contains("square"));
    }

    #[test]
    fn pool_averages_the_four_copies_and_spreads_its_gradient() {
        let x = Tensor::from_vec(
            (0..8).map(|v| v as f32).collect::<Vec<_>>(),
            (8, 1),
            &Device::Cpu,
        )
        .unwrap();
        let mut p = CyclicPool::new("p");
        assert_eq!(p.setup(&[vec![8, 1]]).unwrap(), vec![vec![2, 1]]);
        let y = p
            .forward(std::slice::from_ref(&x), Phase::Train)
            .unwrap()
            .remove(0);
        // Image 0: rows 0, 2, 4, 6; image 1: rows 1, 3, 5, 7.
        assert_eq!(values(&y), [3.0, 4.0]);
        let dy = Tensor::from_vec(vec![4.0f32, 8.0], (2, 1), &Device::Cpu).unwrap();
        let (dx, _) = p
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &[y],
                top_diff: &[Some(dy)],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(
            values(dx[0].as_ref().unwrap()),
            [1., 2., 1., 2., 1., 2., 1., 2.]
        );
        assert!(p
            .setup(&[vec![6, 1]])
            .unwrap_err()
            .to_string()
            .contains("CyclicSlice"));
    }
}
