//! EuclideanLoss: `sum((a - b)²) / (2 N)` over two bottoms of equal size
//! per item, N the first axis (the batch), for regression targets (read by
//! a second data layer, e.g. an LMDB of `float_data` Datums). As in Caffe,
//! both bottoms can take a gradient: `±(a - b) / N`.
use super::{count, to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct EuclideanLoss {
    ctx: String,
    /// The first axis of the first bottom.
    num: usize,
    /// `a - b` of the last forward pass.
    diff: Vec<f32>,
}

impl EuclideanLoss {
    pub fn new(name: &str) -> Self {
        EuclideanLoss {
            ctx: format!("layer '{name}'"),
            num: 0,
            diff: Vec::new(),
        }
    }
}

impl Layer for EuclideanLoss {
    fn any_batch(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, _i: usize) -> bool {
        // Both sides are values with a gradient, as in Caffe.
        true
    }
    fn type_name(&self) -> &'static str {
        "EuclideanLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let [a, b] = bottom else {
            return Err(Error::model(
                &self.ctx,
                "needs two bottoms: predictions and targets",
            ));
        };
        let per_item = |s: &[usize]| count(s.get(1..).unwrap_or(&[]));
        if a.is_empty() || b.is_empty() || a[0] != b[0] || per_item(a) != per_item(b) {
            return Err(Error::model(
                &self.ctx,
                format!("its bottoms must hold as many items of as many values each, not shapes {a:?} and {b:?}"),
            ));
        }
        self.num = a[0];
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (a, b) = (to_vec(&bottom[0])?, to_vec(&bottom[1])?);
        self.diff = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let dot: f64 = self.diff.iter().map(|&d| f64::from(d) * f64::from(d)).sum();
        let loss = (dot / self.num.max(1) as f64 / 2.0) as f32;
        Ok(vec![Tensor::new(loss, bottom[0].device())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = &a.top_diff[0] else {
            return Ok((vec![None, None], vec![]));
        };
        let scale = dloss.flatten_all()?.to_vec1::<f32>()?[0] / self.num.max(1) as f32;
        let grad = |i: usize, sign: f32| -> Result<Option<Tensor>> {
            if !a.propagate[i] {
                return Ok(None);
            }
            let g: Vec<f32> = self.diff.iter().map(|&d| sign * scale * d).collect();
            Ok(Some(Tensor::from_vec(
                g,
                a.bottom[i].shape(),
                a.bottom[i].device(),
            )?))
        };
        Ok((vec![grad(0, 1.0)?, grad(1, -1.0)?], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn half_the_mean_squared_distance_per_item() {
        let mut l = EuclideanLoss::new("e");
        l.setup(&[vec![2, 2], vec![2, 2, 1, 1]]).unwrap();
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![0.0f32, 2.0, 5.0, 4.0], (2, 2, 1, 1), &Device::Cpu).unwrap();
        let bottom = [a, b];
        let top = l.forward(&bottom, Phase::Train).unwrap();
        // (1 + 0 + 4 + 0) / 2 / 2
        assert_eq!(top[0].to_scalar::<f32>().unwrap(), 1.25);
        let d = [Some(Tensor::new(2.0f32, &Device::Cpu).unwrap())];
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &bottom,
                top: &top,
                top_diff: &d,
                propagate: &[true, true],
                param_grad: &[],
            })
            .unwrap();
        // ±2 (a - b) / 2
        let ga = to_vec(g[0].as_ref().unwrap()).unwrap();
        let gb = to_vec(g[1].as_ref().unwrap()).unwrap();
        assert_eq!(ga, [1.0, 0.0, -2.0, 0.0]);
        assert_eq!(gb, [-1.0, 0.0, 2.0, 0.0]);
        assert_eq!(g[1].as_ref().unwrap().dims(), [2, 2, 1, 1]);
    }

    #[test]
    fn bottoms_of_different_sizes_are_refused() {
        let mut l = EuclideanLoss::new("e");
        let err = l.setup(&[vec![2, 3], vec![2, 4]]).unwrap_err().to_string();
        assert!(err.contains("layer 'e'") && err.contains("[2, 3]"), "{err}");
    }
}
