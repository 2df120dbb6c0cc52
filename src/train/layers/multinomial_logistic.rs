//! MultinomialLogisticLoss: `-log(p[label])` averaged over the batch, for
//! nets whose last layer already gives probabilities (a Softmax layer); a
//! probability is taken as at least 1e-20, as in Caffe. All values of an
//! item after the first axis are its classes.
use super::loss::{item_class, items_and_classes, scores_grads};
use super::{to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::Result;
use candle_core::Tensor;

/// Caffe's floor on a probability before its log (kLOG_THRESHOLD).
const LOG_THRESHOLD: f32 = 1e-20;

pub struct MultinomialLogisticLoss {
    ctx: String,
    /// (items, classes).
    dims: (usize, usize),
}

impl MultinomialLogisticLoss {
    pub fn new(name: &str) -> Self {
        MultinomialLogisticLoss {
            ctx: format!("layer '{name}'"),
            dims: (0, 0),
        }
    }
}

impl Layer for MultinomialLogisticLoss {
    fn type_name(&self) -> &'static str {
        "MultinomialLogisticLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = items_and_classes(bottom, &self.ctx, "probabilities")?;
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (n, c) = self.dims;
        let (p, labels) = (to_vec(&bottom[0])?, to_vec(&bottom[1])?);
        let mut loss = 0.0f32;
        for i in 0..n {
            loss -= p[i * c + item_class(&labels, i, c, &self.ctx)?]
                .max(LOG_THRESHOLD)
                .ln();
        }
        Ok(vec![Tensor::new(loss / n as f32, bottom[0].device())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = super::loss::loss_diff(a, &self.ctx)? else {
            return Ok((vec![None, None], vec![]));
        };
        let (n, c) = self.dims;
        let (p, labels) = (to_vec(&a.bottom[0])?, to_vec(&a.bottom[1])?);
        let scale = -dloss.flatten_all()?.to_vec1::<f32>()?[0] / n as f32;
        let mut g = vec![0.0f32; p.len()];
        for i in 0..n {
            let at = i * c + item_class(&labels, i, c, &self.ctx)?;
            g[at] = scale / p[at].max(LOG_THRESHOLD);
        }
        scores_grads(g, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::loss_and_gradient;
    use candle_core::Device;

    #[test]
    fn multinomial_logistic_loss_reads_probabilities() {
        let (loss, g) = loss_and_gradient(
            &mut MultinomialLogisticLoss::new("m"),
            &[0.2, 0.8, 0.5, 0.0],
            &[1.0, 1.0],
            2,
        );
        // -(ln 0.8 + ln 1e-20) / 2: a zero probability is floored.
        assert!((loss - (-(0.8f32.ln()) + 20.0 * 10f32.ln()) / 2.0).abs() < 1e-4);
        assert_eq!(g[0], 0.0);
        assert!((g[1] + 0.5 / 0.8).abs() < 1e-6);
        assert!((g[3] + 0.5e20).abs() < 1e14);
    }

    #[test]
    fn labels_must_be_classes() {
        let mut l = MultinomialLogisticLoss::new("m");
        l.setup(&[vec![1, 2], vec![1]]).unwrap();
        let dev = Device::Cpu;
        let bottom = [
            Tensor::from_vec(vec![0.5f32, 0.5], (1, 2), &dev).unwrap(),
            Tensor::from_vec(vec![2.0f32], 1, &dev).unwrap(),
        ];
        let e = l.forward(&bottom, Phase::Train).unwrap_err().to_string();
        assert!(
            e.contains("layer 'm'") && e.contains("label 2 is outside 0..2"),
            "{e}"
        );
        let e = l.setup(&[vec![2, 3], vec![3]]).unwrap_err().to_string();
        assert!(e.contains("one label per item"), "{e}");
    }
}
