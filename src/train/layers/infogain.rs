//! InfogainLoss as Caffe 1.0 computes it: a softmax over the class axis of
//! the logits, then a loss that weighs the log-probability of every class k
//! by H[label, k], for a matrix H read from a `.binaryproto`. With H the
//! identity it is SoftmaxWithLoss; with a diagonal of per-class weights it is
//! a class-weighted loss, the usual answer to heavy imbalance (zooplankton).
//!
//! For one prediction with label y and probabilities p:
//! loss = -sum_k H[y,k] ln(max(p_k, 1e-20)), and the gradient with respect
//! to logit k is p_k * sum_j H[y,j] - H[y,k]; both are divided by the
//! normaliser of `loss_param` (VALID by default; `ignore_label` skips a
//! prediction and zeroes its gradient).
use super::loss::{
    labelled, loss_diff, loss_top_shapes, loss_tops, normalizer, scores_and_labels,
    scores_gradient, softmax,
};
use super::{to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{loss_parameter::NormalizationMode, BlobProto, LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::path::Path;

/// Caffe's floor on a probability before its logarithm (kLOG_THRESHOLD).
const LOG_THRESHOLD: f32 = 1e-20;

pub struct InfogainLoss {
    ctx: String,
    axis: i32,
    ignore: Option<i32>,
    mode: NormalizationMode,
    /// H, row-major: row = true class, column = class whose probability is weighed.
    h: Vec<f32>,
    /// Where H came from, for messages.
    source: String,
    dims: (usize, usize, usize),
    prob: Vec<f32>,
    normalizer: f32,
    tops: usize,
}

impl InfogainLoss {
    /// Reads H from `infogain_loss_param.source`, resolved by `resolve`.
    pub fn new(
        param: &LayerParameter,
        name: &str,
        resolve: impl Fn(&str) -> std::path::PathBuf,
    ) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        if param.bottom.len() > 2 {
            return Err(Error::model(
                &ctx,
                "takes H from infogain_loss_param.source; a third bottom holding H is not supported",
            ));
        }
        let p = param.infogain_loss_param.clone().unwrap_or_default();
        let source = p.source.as_deref().ok_or_else(|| {
            Error::model(
                &ctx,
                "needs infogain_loss_param { source: \"H.binaryproto\" } (the class-pair weight matrix)",
            )
        })?;
        let path = resolve(source);
        let blob: BlobProto = crate::caffe::read_binary(&path, "BlobProto (infogain matrix)")?;
        let lp = param.loss_param.unwrap_or_default();
        if lp.normalize.is_some() {
            // Caffe's InfogainLoss refuses the flag SoftmaxWithLoss still honours.
            return Err(Error::model(
                &ctx,
                "loss_param.normalize is deprecated and InfogainLoss refuses it (as Caffe does); use normalization: VALID, BATCH_SIZE, FULL or NONE",
            ));
        }
        Ok(InfogainLoss {
            ctx,
            axis: p.axis(),
            ignore: lp.ignore_label,
            mode: lp.normalization(),
            h: check_matrix(&blob, &path)?,
            source: path.display().to_string(),
            dims: (0, 0, 0),
            prob: Vec::new(),
            normalizer: 1.0,
            tops: param.top.len().max(1),
        })
    }
}

/// H's values, which must be finite and form a square matrix (Caffe checks
/// the count against the classes at setup).
fn check_matrix(blob: &BlobProto, path: &Path) -> Result<Vec<f32>> {
    let h = blob.values();
    if h.len() != blob.count() {
        return Err(Error::invalid(
            path.display(),
            format!(
                "holds {} values for a blob of shape {:?}",
                h.len(),
                blob.dims()
            ),
        ));
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            path.display(),
            format!("value {i} of the infogain matrix is {}", h[i]),
        ));
    }
    Ok(h)
}

impl Layer for InfogainLoss {
    fn any_batch(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, i: usize) -> bool {
        // Neither the labels nor an H given as a bottom.
        i == 0
    }
    fn type_name(&self) -> &'static str {
        "InfogainLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = scores_and_labels(bottom, self.axis, &self.ctx)?;
        let c = self.dims.1;
        if self.h.len() != c * c {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "the infogain matrix {} holds {} values; {c} classes need {c}x{c} = {}",
                    self.source,
                    self.h.len(),
                    c * c
                ),
            ));
        }
        Ok(loss_top_shapes(self.tops, &bottom[0]))
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (o, c, inner) = self.dims;
        self.prob = softmax(&to_vec(&bottom[0])?, o, c, inner);
        let counted = labelled(&to_vec(&bottom[1])?, self.dims, self.ignore, &self.ctx)?;
        let mut loss = 0.0f32;
        for &(at, label) in &counted {
            for (k, &w) in self.h[label * c..][..c].iter().enumerate() {
                let p = self.prob[at + k * inner];
                // max() as Caffe's std::max: a NaN probability stays NaN.
                let p = if p < LOG_THRESHOLD { LOG_THRESHOLD } else { p };
                loss -= w * p.ln();
            }
        }
        let valid = counted.len();
        self.normalizer = normalizer(self.mode, o, inner, valid);
        loss_tops(loss / self.normalizer, &self.prob, self.tops, &bottom[0])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = loss_diff(a, &self.ctx)? else {
            return Ok((vec![None, None], vec![]));
        };
        let (_, c, inner) = self.dims;
        let counted = labelled(&to_vec(&a.bottom[1])?, self.dims, self.ignore, &self.ctx)?;
        let row_sums: Vec<f32> = self.h.chunks(c).map(|r| r.iter().sum()).collect();
        // Ignored predictions get no gradient.
        let mut dx = vec![0.0f32; self.prob.len()];
        for &(at, l) in &counted {
            for k in 0..c {
                let i = at + k * inner;
                dx[i] = self.prob[i] * row_sums[l] - self.h[l * c + k];
            }
        }
        scores_gradient(dx, dloss, self.normalizer, a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::loss::{normalization, SoftmaxWithLoss};
    use super::*;
    use crate::caffe::proto::{InfogainLossParameter, LossParameter};
    use crate::train::layers::loss_and_gradient;
    use candle_core::Device;

    /// An InfogainLoss layer over (n, c) logits with H written to a file.
    fn layer(dir: &Path, h: &[f32], c: usize, loss: LossParameter) -> Result<InfogainLoss> {
        let path = dir.join("h.binaryproto");
        crate::caffe::write_binary(&path, &BlobProto::with_shape(&[1, 1, c, c], h.to_vec()))?;
        let param = LayerParameter {
            name: Some("loss".into()),
            r#type: Some("InfogainLoss".into()),
            bottom: vec!["fc".into(), "label".into()],
            top: vec!["loss".into()],
            infogain_loss_param: Some(InfogainLossParameter {
                source: Some("h.binaryproto".into()),
                axis: None,
            }),
            loss_param: Some(loss),
            ..Default::default()
        };
        InfogainLoss::new(&param, "loss", |p| dir.join(p))
    }

    #[test]
    fn by_hand() {
        // Logits (0, ln 3): p = (1/4, 3/4); label 0 with H row (2, 1):
        // loss = -(2 ln 1/4 + ln 3/4), gradient = p * 3 - (2, 1).
        let t = tempfile::tempdir().unwrap();
        let mut l = layer(t.path(), &[2., 1., 0., 1.], 2, LossParameter::default()).unwrap();
        let (loss, g) = loss_and_gradient(&mut l, &[0.0, 3f32.ln()], &[0.0], 2);
        let want = -(2.0 * 0.25f32.ln() + 0.75f32.ln());
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        assert!(
            (g[0] + 1.25).abs() < 1e-6 && (g[1] - 1.25).abs() < 1e-6,
            "{g:?}"
        );
    }

    #[test]
    fn the_identity_is_softmax_with_loss_to_the_bit() {
        let t = tempfile::tempdir().unwrap();
        let c = 5;
        let mut eye = vec![0.0f32; c * c];
        for k in 0..c {
            eye[k * c + k] = 1.0;
        }
        let x: Vec<f32> = (0..6 * c)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let labels = [0.0, 4.0, 2.0, 9.0, 1.0, 3.0];
        // 9 is the ignore label; each normalisation mode must agree too.
        for mode in [
            NormalizationMode::Valid,
            NormalizationMode::Full,
            NormalizationMode::BatchSize,
            NormalizationMode::None,
        ] {
            let lp = LossParameter {
                ignore_label: Some(9),
                normalization: Some(mode as i32),
                ..Default::default()
            };
            let mut info = layer(t.path(), &eye, c, lp).unwrap();
            let param = LayerParameter {
                top: vec!["loss".into()],
                loss_param: Some(lp),
                ..Default::default()
            };
            let mut soft = SoftmaxWithLoss::new(&param, "soft").unwrap();
            let a = loss_and_gradient(&mut info, &x, &labels, c);
            let b = loss_and_gradient(&mut soft, &x, &labels, c);
            assert_eq!(a, b, "{mode:?}");
            assert!(a.1[3 * c..4 * c].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let t = tempfile::tempdir().unwrap();
        let h = [1.5, 0.2, 0.0, 0.1, 0.7, 0.3, 0.0, 0.4, 2.0];
        let x = [0.3f32, -1.2, 0.8, 1.1, 0.4, -0.5];
        let labels = [2.0, 0.0];
        let mut l = layer(t.path(), &h, 3, LossParameter::default()).unwrap();
        let (_, g) = loss_and_gradient(&mut l, &x, &labels, 3);
        let eps = 1e-2f32;
        for i in 0..x.len() {
            let mut up = x;
            up[i] += eps;
            let mut down = x;
            down[i] -= eps;
            let mut f = |v: &[f32]| loss_and_gradient(&mut l, v, &labels, 3).0;
            let numeric = (f(&up) - f(&down)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() < 2e-3,
                "logit {i}: {numeric} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn the_deprecated_normalize_flag_is_refused_as_caffe_does() {
        let t = tempfile::tempdir().unwrap();
        let lp = LossParameter {
            normalize: Some(true),
            ..Default::default()
        };
        let e = layer(t.path(), &[1., 0., 0., 1.], 2, lp)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("normalize is deprecated"), "{e}");
    }

    #[test]
    fn the_deprecated_normalize_flag_yields_to_normalization() {
        let lp = |normalization: Option<NormalizationMode>, normalize| LossParameter {
            normalization: normalization.map(|m| m as i32),
            normalize,
            ..Default::default()
        };
        assert_eq!(normalization(&lp(None, None)), NormalizationMode::Valid);
        assert_eq!(
            normalization(&lp(None, Some(false))),
            NormalizationMode::BatchSize
        );
        assert_eq!(
            normalization(&lp(Some(NormalizationMode::Full), Some(false))),
            NormalizationMode::Full
        );
    }

    #[test]
    fn bad_matrices_and_definitions_are_named() {
        let t = tempfile::tempdir().unwrap();
        // 2x2 H for 3 classes.
        let mut l = layer(t.path(), &[1., 0., 0., 1.], 2, LossParameter::default()).unwrap();
        let e = l.setup(&[vec![4, 3], vec![4]]).unwrap_err().to_string();
        assert!(e.contains("h.binaryproto") && e.contains("3x3"), "{e}");
        let e = layer(
            t.path(),
            &[1., f32::NAN, 0., 1.],
            2,
            LossParameter::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("NaN"), "{e}");
        // No source; a source that is not there.
        let param = LayerParameter::default();
        let e = InfogainLoss::new(&param, "l", |p| t.path().join(p))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("infogain_loss_param"), "{e}");
        let param = LayerParameter {
            infogain_loss_param: Some(InfogainLossParameter {
                source: Some("missing.binaryproto".into()),
                axis: None,
            }),
            ..Default::default()
        };
        let e = InfogainLoss::new(&param, "l", |p| t.path().join(p))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.binaryproto"), "{e}");
        // A label the net cannot score.
        let mut l = layer(t.path(), &[1., 0., 0., 1.], 2, LossParameter::default()).unwrap();
        l.setup(&[vec![1, 2], vec![1]]).unwrap();
        let bottom = [
            Tensor::new(&[[0.0f32, 1.0]], &Device::Cpu).unwrap(),
            Tensor::new(&[2.0f32], &Device::Cpu).unwrap(),
        ];
        let e = l.forward(&bottom, Phase::Train).unwrap_err().to_string();
        assert!(e.contains("label 2"), "{e}");
    }
}
