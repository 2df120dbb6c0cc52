//! Caffe's Eltwise layer: two or more bottoms of one shape combined element
//! by element (ResNet's shortcut sums): SUM with optional coefficients,
//! PROD, or MAX (the gradient goes to the bottom that held the maximum,
//! the later of the first two on a tie and the earlier after that, as in
//! Caffe's loop). The same candle ops serve every device.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{eltwise_parameter::EltwiseOp, EltwiseParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;

pub struct Eltwise {
    op: EltwiseOp,
    coeffs: Vec<f32>,
    stable_prod_grad: bool,
    /// MAX: which bottom each output came from (as f32 indices).
    argmax: Option<Tensor>,
    ctx: String,
}

impl Eltwise {
    pub fn new(p: Option<EltwiseParameter>, name: &str) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        let p = p.unwrap_or_default();
        if !p.coeff.is_empty() && p.operation() != EltwiseOp::Sum {
            return Err(Error::model(
                &ctx,
                "coeff applies to the SUM operation only",
            ));
        }
        Ok(Eltwise {
            op: p.operation(),
            coeffs: p.coeff.clone(),
            stable_prod_grad: p.stable_prod_grad(),
            argmax: None,
            ctx,
        })
    }

    fn coeff(&self, i: usize) -> f32 {
        self.coeffs.get(i).copied().unwrap_or(1.0)
    }
}

impl Layer for Eltwise {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Eltwise"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn variadic_bottoms(&self) -> bool {
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        if !self.coeffs.is_empty() && self.coeffs.len() != bottom.len() {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "has {} coeff values for {} bottoms; give one per bottom",
                    self.coeffs.len(),
                    bottom.len()
                ),
            ));
        }
        for (i, b) in bottom.iter().enumerate().skip(1) {
            if b != &bottom[0] {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "bottom {i} has shape {b:?} but bottom 0 has {:?}; Eltwise needs equal shapes",
                        bottom[0]
                    ),
                ));
            }
        }
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let y = match self.op {
            EltwiseOp::Sum => {
                // A coefficient of 1 (ResNet's plain sum) needs no product.
                let term = |i: usize| -> Result<Tensor> {
                    Ok(match self.coeff(i) {
                        1.0 => bottom[i].clone(),
                        k => bottom[i].affine(f64::from(k), 0.0)?,
                    })
                };
                let mut y = term(0)?;
                for i in 1..bottom.len() {
                    y = (y + term(i)?)?;
                }
                y
            }
            EltwiseOp::Prod => {
                let mut y = bottom[0].clone();
                for b in &bottom[1..] {
                    y = (y * b)?;
                }
                y
            }
            EltwiseOp::Max => {
                // Caffe: bottom 0 only where it beats bottom 1, then each
                // later bottom where it beats the running maximum.
                let (a, b) = (&bottom[0], &bottom[1]);
                let first = a.gt(b)?;
                let mut y = first.where_cond(a, b)?;
                let mut arg = first.where_cond(&a.zeros_like()?, &a.ones_like()?)?;
                for (i, b) in bottom.iter().enumerate().skip(2) {
                    let later = b.gt(&y)?;
                    y = later.where_cond(b, &y)?;
                    arg = later.where_cond(&b.ones_like()?.affine(i as f64, 0.0)?, &arg)?;
                }
                self.argmax = Some(arg);
                y
            }
        };
        Ok(vec![y])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let n = a.bottom.len();
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None; n], vec![]));
        };
        let mut grads = Vec::with_capacity(n);
        for i in 0..n {
            if !a.propagate[i] {
                grads.push(None);
                continue;
            }
            let g = match self.op {
                EltwiseOp::Sum => match self.coeff(i) {
                    1.0 => dy.clone(),
                    k => dy.affine(f64::from(k), 0.0)?,
                },
                EltwiseOp::Prod => {
                    let others = if self.stable_prod_grad {
                        let mut p: Option<Tensor> = None;
                        for (j, b) in a.bottom.iter().enumerate() {
                            if j != i {
                                p = Some(match p {
                                    Some(p) => (p * b)?,
                                    None => b.clone(),
                                });
                            }
                        }
                        p.expect("two or more bottoms")
                    } else {
                        (&a.top[0] / &a.bottom[i])?
                    };
                    (dy * others)?
                }
                EltwiseOp::Max => {
                    let arg = self
                        .argmax
                        .as_ref()
                        .ok_or_else(|| Error::model(&self.ctx, "backward before forward"))?;
                    let mine = arg.eq(i as f32)?;
                    mine.where_cond(dy, &dy.zeros_like()?)?
                }
            };
            grads.push(Some(g));
        }
        Ok((grads, vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(text: &str, xs: &[&[f32]]) -> (Vec<f32>, Vec<Vec<f32>>) {
        let p: EltwiseParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("e")).unwrap();
        let mut l = Eltwise::new(Some(p), "e").unwrap();
        let bottom: Vec<Tensor> = xs
            .iter()
            .map(|v| Tensor::new(*v, &Device::Cpu).unwrap())
            .collect();
        l.setup(&vec![vec![xs[0].len()]; xs.len()]).unwrap();
        let top = l.forward(&bottom, Phase::Train).unwrap();
        let dy = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &bottom,
                top: &top,
                top_diff: &[Some(dy)],
                propagate: &vec![true; xs.len()],
                param_grad: &[],
            })
            .unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        (
            v(&top[0]),
            g.iter().map(|g| v(g.as_ref().unwrap())).collect(),
        )
    }

    #[test]
    fn sum_prod_and_max_with_their_gradients() {
        let (a, b, c): (&[f32], &[f32], &[f32]) = (&[1., 5., 2.], &[3., 5., -1.], &[2., 6., 2.]);
        let (y, g) = run("coeff: 1 coeff: -2", &[a, b]);
        assert_eq!(y, [-5., -5., 4.]);
        assert_eq!(g, [vec![1., 2., 3.], vec![-2., -4., -6.]]);
        let (y, g) = run("operation: PROD", &[a, b, c]);
        assert_eq!(y, [6., 150., -4.]);
        assert_eq!(g[0], [6., 60., -6.]);
        assert_eq!(g[2], [3., 50., -6.]);
        let (_, unstable) = run("operation: PROD stable_prod_grad: false", &[a, b, c]);
        assert_eq!(unstable, g);
        // Ties: 5 vs 5 goes to bottom 1; 2 (bottom 2) does not beat 2 (bottom 0).
        let (y, g) = run("operation: MAX", &[a, b, c]);
        assert_eq!(y, [3., 6., 2.]);
        assert_eq!(g, [vec![0., 0., 3.], vec![1., 0., 0.], vec![0., 2., 0.]]);
    }

    #[test]
    fn settings_and_shapes_are_checked() {
        let p = |t: &str| -> EltwiseParameter {
            crate::caffe::prototxt::parse(t, std::path::Path::new("e")).unwrap()
        };
        let e = Eltwise::new(Some(p("operation: MAX coeff: 2")), "e")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("SUM operation only"), "{e}");
        let mut l = Eltwise::new(Some(p("coeff: 1")), "e").unwrap();
        let e = l.setup(&[vec![3], vec![3]]).unwrap_err().to_string();
        assert!(e.contains("1 coeff values for 2 bottoms"), "{e}");
        let mut l = Eltwise::new(None, "e").unwrap();
        let e = l.setup(&[vec![3], vec![4]]).unwrap_err().to_string();
        assert!(e.contains("layer 'e'") && e.contains("equal shapes"), "{e}");
    }
}
