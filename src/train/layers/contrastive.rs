//! ContrastiveLoss: the loss of a Siamese net, whose two branches (sharing
//! their weights through `param { name: … }`) embed two images of a pair.
//! With `d` the Euclidean distance between the embeddings `a` and `b` and
//! `y` the pair's label (non-zero: similar), the loss is
//! `sum(y d² + (1 - y) max(margin - d, 0)²) / 2N`; Caffe's `legacy_version`
//! penalises a dissimilar pair by `max(margin - d², 0)` instead. Both
//! embeddings take a gradient (opposite signs); the labels take none.
//! Computed on the host in f32 in Caffe's order, including the 1e-4 its
//! gradient adds to `d` so a dissimilar pair at distance 0 stays finite.
use super::{count, to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct ContrastiveLoss {
    ctx: String,
    margin: f32,
    legacy: bool,
    /// (pairs, values per embedding).
    dims: (usize, usize),
    /// `a - b` of the last forward pass.
    diff: Vec<f32>,
    /// Each pair's squared distance.
    dist_sq: Vec<f32>,
}

impl ContrastiveLoss {
    pub fn new(param: &LayerParameter, name: &str) -> Self {
        let p = param.contrastive_loss_param.unwrap_or_default();
        ContrastiveLoss {
            ctx: format!("layer '{name}'"),
            margin: p.margin(),
            legacy: p.legacy_version(),
            dims: (0, 0),
            diff: Vec::new(),
            dist_sq: Vec::new(),
        }
    }

    /// Whether pair `i` is labelled similar (the label read as an integer, as Caffe does).
    fn similar(labels: &[f32], i: usize) -> bool {
        labels[i] as i32 != 0
    }
}

impl Layer for ContrastiveLoss {
    fn allow_force_backward(&self, i: usize) -> bool {
        // Not the similarity flags (Caffe's rule).
        i != 2
    }
    fn type_name(&self) -> &'static str {
        "ContrastiveLoss"
    }
    fn num_bottoms(&self) -> usize {
        3
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let [a, b, y] = bottom else {
            return Err(Error::model(
                &self.ctx,
                "needs three bottoms: the two embeddings of each pair and the pair's label",
            ));
        };
        // Caffe's checks: N x C (x 1 x 1) embeddings, one label per pair.
        let spatial = |s: &[usize]| count(s.get(2..).unwrap_or(&[]));
        if a.len() < 2 || a != b || spatial(a) != 1 {
            return Err(Error::model(
                &self.ctx,
                format!("its embeddings must be two N x C blobs of one shape, not {a:?} and {b:?}"),
            ));
        }
        if count(y) != a[0] {
            return Err(Error::model(
                &self.ctx,
                format!("needs one label per pair: {} pairs, labels {y:?}", a[0]),
            ));
        }
        self.dims = (a[0], a[1]);
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (n, c) = self.dims;
        let (a, b, y) = (
            to_vec(&bottom[0])?,
            to_vec(&bottom[1])?,
            to_vec(&bottom[2])?,
        );
        self.diff = a.iter().zip(&b).map(|(x, z)| x - z).collect();
        self.dist_sq = self
            .diff
            .chunks(c.max(1))
            .map(|d| d.iter().map(|v| v * v).sum())
            .collect();
        let mut loss = 0.0f32;
        for i in 0..n {
            let d2 = self.dist_sq[i];
            loss += if Self::similar(&y, i) {
                d2
            } else if self.legacy {
                (self.margin - d2).max(0.0)
            } else {
                let m = (self.margin - d2.sqrt()).max(0.0);
                m * m
            };
        }
        loss = loss / n.max(1) as f32 / 2.0;
        Ok(vec![Tensor::new(loss, bottom[0].device())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if a.propagate.get(2).copied().unwrap_or(false) {
            return Err(Error::model(
                &self.ctx,
                "cannot backpropagate to the pair labels",
            ));
        }
        let Some(dloss) = &a.top_diff[0] else {
            return Ok((vec![None, None, None], vec![]));
        };
        let (n, c) = self.dims;
        let top = dloss.flatten_all()?.to_vec1::<f32>()?[0];
        let y = to_vec(&a.bottom[2])?;
        let grad = |i: usize, sign: f32| -> Result<Option<Tensor>> {
            if !a.propagate[i] {
                return Ok(None);
            }
            let alpha = sign * top / n.max(1) as f32;
            let mut g = vec![0.0f32; n * c];
            for j in 0..n {
                let (d, out) = (&self.diff[j * c..(j + 1) * c], &mut g[j * c..(j + 1) * c]);
                let factor = if Self::similar(&y, j) {
                    alpha
                } else {
                    let (mdist, beta) = if self.legacy {
                        (self.margin - self.dist_sq[j], -alpha)
                    } else {
                        let dist = self.dist_sq[j].sqrt();
                        let mdist = self.margin - dist;
                        (mdist, -alpha * mdist / (dist + 1e-4))
                    };
                    if mdist > 0.0 {
                        beta
                    } else {
                        0.0
                    }
                };
                for (o, &v) in out.iter_mut().zip(d) {
                    *o = factor * v;
                }
            }
            let like = &a.bottom[i];
            Ok(Some(Tensor::from_vec(g, like.shape(), like.device())?))
        };
        Ok((vec![grad(0, 1.0)?, grad(1, -1.0)?, None], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(text: &str) -> ContrastiveLoss {
        let p: LayerParameter = crate::caffe::prototxt::parse(
            &format!("name: \"c\" type: \"ContrastiveLoss\" {text}"),
            std::path::Path::new("l.prototxt"),
        )
        .unwrap();
        ContrastiveLoss::new(&p, "c")
    }

    #[test]
    fn similar_pairs_pull_and_dissimilar_ones_push_within_the_margin() {
        let dev = Device::Cpu;
        // Pair 0 similar at distance 0.5; pair 1 dissimilar at 0.6 (inside
        // margin 1); pair 2 dissimilar at 3 (outside: no loss, no gradient).
        let a = Tensor::from_vec(vec![0.3f32, 0.4, 0.0, 0.6, 3.0, 0.0], (3, 2), &dev).unwrap();
        let b = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        let y = Tensor::from_vec(vec![1.0f32, 0.0, 0.0], 3, &dev).unwrap();
        let bottom = [a, b, y];
        for (text, dissimilar) in [
            ("", 0.16f32),
            ("contrastive_loss_param { legacy_version: true }", 0.64),
        ] {
            let mut l = layer(text);
            l.setup(&[vec![3, 2], vec![3, 2], vec![3]]).unwrap();
            let top = l.forward(&bottom, Phase::Train).unwrap();
            // (0.25 + dissimilar + 0) / 3 / 2: 0.4² or 1 - 0.36.
            let want = (0.25 + dissimilar) / 6.0;
            assert!((top[0].to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
            let d = [Some(Tensor::new(1.0f32, &dev).unwrap())];
            let (g, _) = l
                .backward(&BackwardArgs {
                    bottom: &bottom,
                    top: &top,
                    top_diff: &d,
                    propagate: &[true, true, false],
                    param_grad: &[],
                })
                .unwrap();
            let (ga, gb) = (
                to_vec(g[0].as_ref().unwrap()).unwrap(),
                to_vec(g[1].as_ref().unwrap()).unwrap(),
            );
            // Similar: (a - b) / N, pulling a towards b.
            assert!((ga[0] - 0.1).abs() < 1e-6 && (ga[1] - 0.4 / 3.0).abs() < 1e-6);
            // Dissimilar inside the margin: pushed apart (a negative factor).
            assert!(ga[3] < 0.0);
            assert_eq!(&ga[4..], &[0.0, 0.0]);
            for (x, z) in ga.iter().zip(&gb) {
                assert_eq!(*x, -z);
            }
        }
    }

    #[test]
    fn mismatched_bottoms_are_named() {
        let mut l = layer("");
        let e = l
            .setup(&[vec![3, 2], vec![3, 4], vec![3]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 'c'") && e.contains("[3, 4]"), "{e}");
        let e = l
            .setup(&[vec![3, 2], vec![3, 2], vec![2]])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one label per pair"), "{e}");
    }
}
