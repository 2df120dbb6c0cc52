//! SigmoidCrossEntropyLoss: an independent yes/no per output, for
//! multi-label targets (one 0/1, or a probability, per score; read by a
//! second data layer). Caffe 1.0's form: the loss of score x with target t
//! is `-(x (t - [x >= 0]) - log(1 + exp(x - 2x [x >= 0])))`, which never
//! overflows; targets equal to `ignore_label` count for nothing; the sum is
//! divided by the batch size unless `normalization` (or the old `normalize`)
//! says otherwise. The gradient is `sigmoid(x) - t`.
use super::neuron::sigmoid;
use super::{count, to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{loss_parameter::NormalizationMode, LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct SigmoidCrossEntropyLoss {
    ctx: String,
    ignore: Option<i32>,
    mode: NormalizationMode,
    /// (batch, values per item).
    dims: (usize, usize),
    normalizer: f32,
}

impl SigmoidCrossEntropyLoss {
    pub fn new(param: &LayerParameter, name: &str) -> Self {
        let lp = param.loss_param.unwrap_or_default();
        // Unlike SoftmaxWithLoss, Caffe keeps this layer's historical
        // default, the batch size, when neither field is set.
        let mode = match (lp.normalization, lp.normalize) {
            (Some(_), _) => lp.normalization(),
            (None, Some(true)) => NormalizationMode::Valid,
            _ => NormalizationMode::BatchSize,
        };
        SigmoidCrossEntropyLoss {
            ctx: format!("layer '{name}'"),
            ignore: lp.ignore_label,
            mode,
            dims: (0, 0),
            normalizer: 1.0,
        }
    }

    /// Whether target `t` is the ignore label (compared as an integer, as Caffe does).
    fn ignored(&self, t: f32) -> bool {
        self.ignore.is_some_and(|i| t as i32 == i)
    }
}

impl Layer for SigmoidCrossEntropyLoss {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "SigmoidCrossEntropyLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let [x, t] = bottom else {
            return Err(Error::model(
                &self.ctx,
                "needs two bottoms: scores and targets",
            ));
        };
        if x.is_empty() || count(x) != count(t) || t.first() != x.first() {
            return Err(Error::model(
                &self.ctx,
                format!("needs one target per score, not shapes {x:?} and {t:?}"),
            ));
        }
        self.dims = (x[0], count(&x[1..]));
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (x, t) = (to_vec(&bottom[0])?, to_vec(&bottom[1])?);
        let (mut loss, mut valid) = (0.0f32, 0usize);
        for (&x, &t) in x.iter().zip(&t) {
            if self.ignored(t) {
                continue;
            }
            let pos = if x >= 0.0 { 1.0 } else { 0.0 };
            loss -= x * (t - pos) - (1.0 + (x - 2.0 * x * pos).exp()).ln();
            valid += 1;
        }
        let (outer, inner) = self.dims;
        self.normalizer = super::loss::normalizer(self.mode, outer, inner, valid);
        Ok(vec![Tensor::new(
            loss / self.normalizer,
            bottom[0].device(),
        )?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = super::loss::loss_diff(a, &self.ctx)? else {
            return Ok((vec![None, None], vec![]));
        };
        let (x, t) = (to_vec(&a.bottom[0])?, to_vec(&a.bottom[1])?);
        let dx = x
            .iter()
            .zip(&t)
            .map(|(&x, &t)| if self.ignored(t) { 0.0 } else { sigmoid(x) - t })
            .collect();
        super::loss::scores_gradient(dx, dloss, self.normalizer, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::proto::LossParameter;
    use candle_core::Device;

    fn layer(lp: Option<LossParameter>) -> SigmoidCrossEntropyLoss {
        let p = LayerParameter {
            loss_param: lp,
            ..Default::default()
        };
        SigmoidCrossEntropyLoss::new(&p, "s")
    }

    #[test]
    fn logistic_loss_per_output_over_the_batch() {
        let mut l = layer(None);
        l.setup(&[vec![2, 2], vec![2, 2]]).unwrap();
        let x = Tensor::from_vec(vec![0.0f32, 2.0, -1.0, 30.0], (2, 2), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], (2, 2), &Device::Cpu).unwrap();
        let bottom = [x, t];
        let top = l.forward(&bottom, Phase::Train).unwrap();
        // -log σ(0) - log(1-σ(2)) - log(1-σ(-1)) - log σ(30), over batch 2.
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = -(s(0.0).ln() + (1.0 - s(2.0)).ln() + (1.0 - s(-1.0)).ln() + s(30.0).ln()) / 2.0;
        let got = top[0].to_scalar::<f32>().unwrap();
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} {want}");
        let d = [Some(Tensor::new(1.0f32, &Device::Cpu).unwrap())];
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &bottom,
                top: &top,
                top_diff: &d,
                propagate: &[true, false],
                param_grad: &[],
            })
            .unwrap();
        let g = to_vec(g[0].as_ref().unwrap()).unwrap();
        for (got, want) in g.iter().zip([s(0.0) - 1.0, s(2.0), s(-1.0), s(30.0) - 1.0]) {
            assert!((f64::from(*got) - want / 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ignored_targets_count_for_nothing_and_valid_divides_by_the_rest() {
        let lp = LossParameter {
            ignore_label: Some(-1),
            normalization: Some(NormalizationMode::Valid as i32),
            ..Default::default()
        };
        let mut l = layer(Some(lp));
        l.setup(&[vec![1, 3], vec![1, 3]]).unwrap();
        let x = Tensor::from_vec(vec![1.0f32, 5.0, -2.0], (1, 3), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(vec![1.0f32, -1.0, 0.0], (1, 3), &Device::Cpu).unwrap();
        let top = l.forward(&[x, t], Phase::Train).unwrap();
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = -(s(1.0).ln() + (1.0 - s(-2.0)).ln()) / 2.0;
        let got = top[0].to_scalar::<f32>().unwrap();
        assert!((f64::from(got) - want).abs() < 1e-6);
    }

    #[test]
    fn a_target_per_score_is_required() {
        let mut l = layer(None);
        let err = l.setup(&[vec![2, 3], vec![2]]).unwrap_err().to_string();
        assert!(err.contains("one target per score"), "{err}");
    }
}
