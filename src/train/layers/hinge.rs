//! HingeLoss, the one-vs-all SVM loss: with the true class's score negated,
//! each score `s` of an item costs `max(0, 1 + s)`, so the true class
//! should score above 1 and every other below -1. `norm: L1` sums those
//! costs, `L2` their squares; divided by the batch size, as Caffe does. All
//! values of an item after the first axis are its classes.
use super::loss::{item_class, items_and_classes, scores_grads};
use super::{to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{hinge_loss_parameter::Norm, LayerParameter, Phase};
use crate::error::Result;
use candle_core::Tensor;

pub struct HingeLoss {
    ctx: String,
    norm: Norm,
    /// (items, classes).
    dims: (usize, usize),
    /// Each cost `max(0, 1 + s)`, the true class's score negated.
    margins: Vec<f32>,
}

impl HingeLoss {
    pub fn new(param: &LayerParameter, name: &str) -> Self {
        HingeLoss {
            ctx: format!("layer '{name}'"),
            norm: param.hinge_loss_param.unwrap_or_default().norm(),
            dims: (0, 0),
            margins: Vec::new(),
        }
    }
}

impl Layer for HingeLoss {
    fn type_name(&self) -> &'static str {
        "HingeLoss"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn default_loss_weight(&self, i: usize) -> f32 {
        super::loss::first_top_weight(i)
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.dims = items_and_classes(bottom, &self.ctx, "scores")?;
        Ok(vec![vec![]])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (n, c) = self.dims;
        let labels = to_vec(&bottom[1])?;
        let mut m = to_vec(&bottom[0])?;
        for i in 0..n {
            m[i * c + item_class(&labels, i, c, &self.ctx)?] *= -1.0;
        }
        for v in &mut m {
            *v = (1.0 + *v).max(0.0);
        }
        let sum: f32 = match self.norm {
            Norm::L1 => m.iter().map(|v| v.abs()).sum(),
            Norm::L2 => m.iter().map(|v| v * v).sum(),
        };
        self.margins = m;
        Ok(vec![Tensor::new(sum / n as f32, bottom[0].device())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dloss) = super::loss::loss_diff(a, &self.ctx)? else {
            return Ok((vec![None, None], vec![]));
        };
        let (n, c) = self.dims;
        let labels = to_vec(&a.bottom[1])?;
        let mut g = self.margins.clone();
        for i in 0..n {
            g[i * c + item_class(&labels, i, c, &self.ctx)?] *= -1.0;
        }
        let top = dloss.flatten_all()?.to_vec1::<f32>()?[0];
        match self.norm {
            Norm::L1 => {
                let s = top / n as f32;
                for v in &mut g {
                    // Caffe's sign: 0 at 0.
                    let sign = f32::from(u8::from(*v > 0.0)) - f32::from(u8::from(*v < 0.0));
                    *v = sign * s;
                }
            }
            Norm::L2 => {
                let s = top * 2.0 / n as f32;
                for v in &mut g {
                    *v *= s;
                }
            }
        }
        scores_grads(g, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::loss_and_gradient;

    #[test]
    fn hinge_costs_scores_on_the_wrong_side_of_the_margin() {
        let p = |text: &str| -> LayerParameter {
            crate::caffe::prototxt::parse(text, std::path::Path::new("l.prototxt")).unwrap()
        };
        // Item 0 (class 1): scores 0.5 (cost 1.5), 2 (true, beyond 1: 0),
        // -3 (0). Item 1 (class 0): 0.25 (true: cost 0.75), -0.5 (0.5), -1 (0).
        let x = [0.5, 2.0, -3.0, 0.25, -0.5, -1.0];
        let (loss, g) = loss_and_gradient(&mut HingeLoss::new(&p(""), "h"), &x, &[1.0, 0.0], 3);
        assert_eq!(loss, (1.5 + 0.75 + 0.5) / 2.0);
        assert_eq!(g, [0.5, 0.0, 0.0, -0.5, 0.5, 0.0]);
        let l2 = p("hinge_loss_param { norm: L2 }");
        let (loss, g) = loss_and_gradient(&mut HingeLoss::new(&l2, "h"), &x, &[1.0, 0.0], 3);
        assert_eq!(loss, (2.25 + 0.5625 + 0.25) / 2.0);
        assert_eq!(g, [1.5, 0.0, 0.0, -0.75, 0.5, 0.0]);
    }
}
