//! Caffe's other solver types (`Nesterov`, `AdaGrad`, `RMSProp`,
//! `AdaDelta`, `Adam`), all subclasses of its SGD solver: clipping,
//! normalisation and weight decay prepare the gradient as for SGD, and only
//! the step that turns it into the value subtracted from the weights
//! differs. Each rule here runs Caffe's element operations in Caffe's order,
//! so the roundings agree: once per element on the CPU
//! ([`AdaptiveStep::element`]) and as tensor ops on a GPU
//! ([`AdaptiveStep::tensors`]), twins tested against each other.
//!
//! AdaDelta and Adam keep two histories per parameter. Caffe appends the
//! second set after the first (history `n + i` belongs to parameter `i`),
//! and its `.solverstate` stores them in that order, as ours does.
use crate::caffe::proto::SolverParameter;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// How a solver turns a prepared gradient into a weight change
/// (`SolverParameter.type`, or the legacy `solver_type` enum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `h = lr*d + momentum*h; w -= h`.
    Sgd,
    /// Nesterov's accelerated gradient: the SGD history, then a step back
    /// and an over-step: `w -= (1+momentum)*h_new - momentum*h_old`.
    Nesterov,
    /// `h += d²; w -= lr * d / (sqrt(h) + delta)`.
    AdaGrad {
        /// Added to the root for stability (`delta`).
        delta: f32,
    },
    /// `h = decay*h + (1-decay)*d²; w -= lr * d / (sqrt(h) + delta)`.
    RmsProp {
        /// The history's decay (`rms_decay`).
        decay: f32,
        /// Added to the root for stability (`delta`).
        delta: f32,
    },
    /// Zeiler's AdaDelta with `momentum` as its decay: the update is the
    /// gradient times `sqrt((u + delta) / (g + delta))` for the running
    /// means of squared updates `u` and squared gradients `g`.
    AdaDelta {
        /// Added to both running means (`delta`).
        delta: f32,
    },
    /// Kingma and Ba's Adam with `momentum` as beta1: running means of the
    /// gradient and its square, and the bias correction folded into the rate.
    Adam {
        /// The squared gradient's decay (`momentum2`).
        beta2: f32,
        /// Added to the root for stability (`delta`).
        delta: f32,
    },
}

/// Caffe's names for its solver types, in its registry's (sorted) order.
const KNOWN: &str = "AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, SGD";

impl Rule {
    /// The rule a solver prototxt asks for, with Caffe's checks of its
    /// settings; `ctx` names the file in errors.
    pub fn from_param(p: &SolverParameter, ctx: &str) -> Result<Rule> {
        if p.solver_type.is_some() && p.r#type.is_some() {
            return Err(Error::model(
                ctx,
                "sets both the old `solver_type` and the new `type`; keep one (Caffe refuses both)",
            ));
        }
        let name = match p.solver_type {
            // Caffe's UpgradeSolverType: the old enum names the same rules.
            Some(_) => legacy_name(p.solver_type()),
            None => p.r#type(),
        };
        let momentum = p.momentum();
        let rule = match name {
            "SGD" => Rule::Sgd,
            "Nesterov" => Rule::Nesterov,
            "AdaGrad" => Rule::AdaGrad { delta: p.delta() },
            "RMSProp" => Rule::RmsProp {
                decay: p.rms_decay(),
                delta: p.delta(),
            },
            "AdaDelta" => Rule::AdaDelta { delta: p.delta() },
            "Adam" => Rule::Adam {
                beta2: p.momentum2(),
                delta: p.delta(),
            },
            other => {
                return Err(Error::model(
                    ctx,
                    format!("unknown solver type \"{other}\" (known types: {KNOWN})"),
                ))
            }
        };
        match rule {
            Rule::AdaGrad { .. } | Rule::RmsProp { .. } if momentum != 0.0 => {
                return Err(Error::model(
                    ctx,
                    format!("momentum cannot be used with {name} (it is {momentum}; remove it or set it to 0)"),
                ));
            }
            Rule::RmsProp { decay, .. } if !(0.0..=1.0).contains(&decay) => {
                return Err(Error::model(
                    ctx,
                    format!("rms_decay must lie in [0, 1], not {decay}"),
                ));
            }
            _ => {}
        }
        Ok(rule)
    }

    /// Caffe's name of the rule (`type: "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Sgd => "SGD",
            Rule::Nesterov => "Nesterov",
            Rule::AdaGrad { .. } => "AdaGrad",
            Rule::RmsProp { .. } => "RMSProp",
            Rule::AdaDelta { .. } => "AdaDelta",
            Rule::Adam { .. } => "Adam",
        }
    }

    /// History blobs kept per learnable parameter (and stored in a
    /// `.solverstate`): two for AdaDelta and Adam, one otherwise.
    pub fn histories(&self) -> usize {
        match self {
            Rule::AdaDelta { .. } | Rule::Adam { .. } => 2,
            _ => 1,
        }
    }

    /// Adam's bias correction `sqrt(1 - beta2^t) / (1 - beta1^t)` at
    /// iteration `iter` (t = iter + 1); 1 for the other rules. Caffe's
    /// `pow(float, int)` promotes to double, so this is computed in double
    /// and rounded once.
    pub fn correction(&self, momentum: f32, iter: usize) -> f32 {
        match self {
            Rule::Adam { beta2, .. } => {
                let t = (iter + 1) as f64;
                let num = (1.0 - f64::from(*beta2).powf(t)).sqrt();
                (num / (1.0 - f64::from(momentum).powf(t))) as f32
            }
            _ => 1.0,
        }
    }
}

fn legacy_name(t: crate::caffe::proto::solver_parameter::SolverType) -> &'static str {
    use crate::caffe::proto::solver_parameter::SolverType as T;
    match t {
        T::Sgd => "SGD",
        T::Nesterov => "Nesterov",
        T::Adagrad => "AdaGrad",
        T::Rmsprop => "RMSProp",
        T::Adadelta => "AdaDelta",
        T::Adam => "Adam",
    }
}

/// One parameter's step under a [`Rule`]: the rule, the solver's momentum,
/// this parameter's rate and Adam's correction at this iteration.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveStep {
    /// The update rule.
    pub rule: Rule,
    /// The solver's `momentum` (beta1 for Adam, the decay for AdaDelta).
    pub momentum: f32,
    /// Learning rate times the parameter's lr_mult.
    pub rate: f32,
    /// [`Rule::correction`] at this iteration.
    pub correction: f32,
}

impl AdaptiveStep {
    /// The value subtracted from a weight whose prepared gradient is `d`,
    /// updating its histories `h1` and `h2` (`h2` only for AdaDelta and
    /// Adam). Each line is one of Caffe's vector operations, in its order;
    /// `axpby(a, x, b, y)` rounds as `a*x + b*y`.
    #[inline]
    pub fn element(&self, d: f32, h1: &mut f32, h2: &mut f32) -> f32 {
        let m = self.momentum;
        match self.rule {
            Rule::Sgd => {
                *h1 = self.rate * d + m * *h1;
                *h1
            }
            Rule::Nesterov => {
                let old = *h1;
                *h1 = self.rate * d + m * old;
                (1.0 + m) * *h1 + -m * old
            }
            Rule::AdaGrad { delta } => {
                *h1 += d * d;
                self.rate * (d / (h1.sqrt() + delta))
            }
            Rule::RmsProp { decay, delta } => {
                *h1 = (1.0 - decay) * (d * d) + decay * *h1;
                self.rate * (d / (h1.sqrt() + delta))
            }
            Rule::AdaDelta { delta } => {
                *h1 = (1.0 - m) * (d * d) + m * *h1;
                let u = d * ((delta + *h2) / (delta + *h1)).sqrt();
                *h2 = (1.0 - m) * (u * u) + m * *h2;
                self.rate * u
            }
            Rule::Adam { beta2, delta } => {
                *h1 = (1.0 - m) * d + m * *h1;
                *h2 = (1.0 - beta2) * (d * d) + beta2 * *h2;
                (self.rate * self.correction) * (*h1 / (h2.sqrt() + delta))
            }
        }
    }

    /// [`AdaptiveStep::element`] as tensor ops (for parameters on a GPU):
    /// returns the update and the new histories (`h2` as given when the
    /// rule keeps one history).
    pub fn tensors(&self, d: &Tensor, h1: &Tensor, h2: &Tensor) -> Result<[Tensor; 3]> {
        let m = self.momentum;
        // `x * a` without an add, so every product rounds once, as above.
        let scale = |x: &Tensor, a: f32| x.affine(f64::from(a), 0.0);
        let root_plus = |x: &Tensor, delta: f32| x.sqrt()?.affine(1.0, f64::from(delta));
        let out = match self.rule {
            Rule::Sgd => {
                let h = (scale(d, self.rate)? + scale(h1, m)?)?;
                [h.clone(), h, h2.clone()]
            }
            Rule::Nesterov => {
                let h = (scale(d, self.rate)? + scale(h1, m)?)?;
                let u = (scale(&h, 1.0 + m)? + scale(h1, -m)?)?;
                [u, h, h2.clone()]
            }
            Rule::AdaGrad { delta } => {
                let h = (d.sqr()? + h1)?;
                let u = scale(&(d / root_plus(&h, delta)?)?, self.rate)?;
                [u, h, h2.clone()]
            }
            Rule::RmsProp { decay, delta } => {
                let h = (scale(&d.sqr()?, 1.0 - decay)? + scale(h1, decay)?)?;
                let u = scale(&(d / root_plus(&h, delta)?)?, self.rate)?;
                [u, h, h2.clone()]
            }
            Rule::AdaDelta { delta } => {
                let g = (scale(&d.sqr()?, 1.0 - m)? + scale(h1, m)?)?;
                let plus = |x: &Tensor| x.affine(1.0, f64::from(delta));
                let u = (d * (plus(h2)? / plus(&g)?)?.sqrt()?)?;
                let h = (scale(&u.sqr()?, 1.0 - m)? + scale(h2, m)?)?;
                [scale(&u, self.rate)?, g, h]
            }
            Rule::Adam { beta2, delta } => {
                let mean = (scale(d, 1.0 - m)? + scale(h1, m)?)?;
                let var = (scale(&d.sqr()?, 1.0 - beta2)? + scale(h2, beta2)?)?;
                let u = scale(
                    &(&mean / root_plus(&var, delta)?)?,
                    self.rate * self.correction,
                )?;
                [u, mean, var]
            }
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn step(rule: Rule, momentum: f32, iter: usize) -> AdaptiveStep {
        AdaptiveStep {
            rule,
            momentum,
            rate: 0.01,
            correction: rule.correction(momentum, iter),
        }
    }

    /// Runs `steps` updates of one weight with the gradients `grads`.
    fn run(rule: Rule, momentum: f32, grads: &[f32]) -> (Vec<f32>, f32, f32) {
        let (mut h1, mut h2) = (0.0, 0.0);
        let updates = grads
            .iter()
            .enumerate()
            .map(|(t, &d)| step(rule, momentum, t).element(d, &mut h1, &mut h2))
            .collect();
        (updates, h1, h2)
    }

    fn close(a: f32, b: f64, tol: f64) -> bool {
        ((a as f64) - b).abs() <= tol * b.abs().max(1e-12)
    }

    // The expected numbers below are the rules' formulas worked by hand
    // (in f64) for lr 0.01 and gradients 0.5 then -0.25.

    #[test]
    fn nesterov_steps_back_and_over() {
        let (u, h, _) = run(Rule::Nesterov, 0.9, &[0.5, -0.25]);
        // h1 = 0.005; u1 = 1.9*0.005 = 0.0095
        // h2 = -0.0025 + 0.0045 = 0.002; u2 = 1.9*0.002 - 0.9*0.005 = -0.0007
        assert!(close(u[0], 0.0095, 1e-6), "{u:?}");
        assert!(close(u[1], -0.0007, 1e-5), "{u:?}");
        assert!(close(h, 0.002, 1e-6));
        // Without momentum it is plain SGD.
        let sgd = run(Rule::Sgd, 0.0, &[0.5, -0.25]).0;
        assert_eq!(run(Rule::Nesterov, 0.0, &[0.5, -0.25]).0, sgd);
    }

    #[test]
    fn adagrad_divides_by_the_root_of_the_summed_squares() {
        let delta = 1e-8;
        let (u, h, _) = run(Rule::AdaGrad { delta }, 0.0, &[0.5, -0.25]);
        // h = 0.25: u1 = 0.01*0.5/0.5; h = 0.3125: u2 = -0.0025/sqrt(0.3125)
        assert!(close(u[0], 0.01, 1e-6));
        assert!(close(u[1], -0.0025 / 0.3125f64.sqrt(), 1e-6), "{u:?}");
        assert!(close(h, 0.3125, 1e-7));
    }

    #[test]
    fn rmsprop_decays_its_history() {
        let rule = Rule::RmsProp {
            decay: 0.9,
            delta: 1e-8,
        };
        let (u, h, _) = run(rule, 0.0, &[0.5, -0.25]);
        // h = 0.025: u1 = 0.005/sqrt(0.025); h = 0.0225 + 0.00625 = 0.02875
        assert!(close(u[0], 0.005 / 0.025f64.sqrt(), 1e-6), "{u:?}");
        assert!(close(u[1], -0.0025 / 0.02875f64.sqrt(), 1e-6), "{u:?}");
        assert!(close(h, 0.02875, 1e-6));
    }

    #[test]
    fn adadelta_scales_by_the_ratio_of_running_means() {
        let delta = 1e-6f64;
        let (u, g, x) = run(
            Rule::AdaDelta {
                delta: delta as f32,
            },
            0.95,
            &[0.5, -0.25],
        );
        let g1 = 0.05 * 0.25;
        let v1 = 0.5 * (delta / (g1 + delta)).sqrt();
        let x1 = 0.05 * v1 * v1;
        let g2 = 0.05 * 0.0625 + 0.95 * g1;
        let v2 = -0.25 * ((x1 + delta) / (g2 + delta)).sqrt();
        assert!(close(u[0], 0.01 * v1, 1e-5), "{u:?}");
        assert!(close(u[1], 0.01 * v2, 1e-5), "{u:?}");
        assert!(close(g, g2, 1e-6));
        assert!(close(x, 0.05 * v2 * v2 + 0.95 * x1, 1e-5));
    }

    #[test]
    fn adam_corrects_its_bias() {
        let rule = Rule::Adam {
            beta2: 0.999,
            delta: 1e-8,
        };
        // Caffe's betas are floats: work with their exact values.
        let (b1, b2) = (f64::from(0.9f32), f64::from(0.999f32));
        // t = 1: the corrected step is lr * sign(d) (up to delta).
        let c1 = (1.0 - b2).sqrt() / (1.0 - b1);
        assert!(close(rule.correction(0.9, 0), c1, 1e-7));
        let (u, m, v) = run(rule, 0.9, &[0.5, -0.25]);
        assert!(close(u[0], 0.01, 1e-6), "{u:?}");
        // t = 2: m = 0.1*-0.25 + 0.9*0.05, v = (1-b2)*0.0625 + b2*(1-b2)*0.25
        let m2 = (1.0 - b1) * -0.25 + b1 * (1.0 - b1) * 0.5;
        let v2 = (1.0 - b2) * 0.0625 + b2 * (1.0 - b2) * 0.25;
        let c2 = (1.0 - b2 * b2).sqrt() / (1.0 - b1 * b1);
        assert!(close(m, m2, 1e-6) && close(v, v2, 1e-5), "{m} {v}");
        assert!(
            close(u[1], 0.01 * c2 * m2 / (v2.sqrt() + 1e-8), 1e-5),
            "{u:?}"
        );
        assert_eq!(Rule::Sgd.correction(0.9, 3), 1.0);
    }

    #[test]
    fn tensor_ops_equal_the_element_loop() {
        let rules = [
            (Rule::Sgd, 0.9),
            (Rule::Nesterov, 0.9),
            (Rule::AdaGrad { delta: 1e-8 }, 0.0),
            (
                Rule::RmsProp {
                    decay: 0.98,
                    delta: 1e-8,
                },
                0.0,
            ),
            (Rule::AdaDelta { delta: 1e-6 }, 0.95),
            (
                Rule::Adam {
                    beta2: 0.999,
                    delta: 1e-8,
                },
                0.9,
            ),
        ];
        let n = 257;
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                (0..n)
                    .map(|i| ((i * 7919 + s * 104729) % 1000) as f32 / 500.0 - 1.0)
                    .collect()
            })
            .collect();
        for (rule, momentum) in rules {
            let (mut h1, mut h2) = (vec![0f32; n], vec![0f32; n]);
            let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, &Device::Cpu).unwrap();
            let (mut th1, mut th2) = (t(&h1), t(&h2));
            for (it, g) in grads.iter().enumerate() {
                let s = step(rule, momentum, it);
                let want: Vec<f32> = (0..n)
                    .map(|i| s.element(g[i], &mut h1[i], &mut h2[i]))
                    .collect();
                let [u, a, b] = s.tensors(&t(g), &th1, &th2).unwrap();
                assert_eq!(u.to_vec1::<f32>().unwrap(), want, "{rule:?} step {it}");
                (th1, th2) = (a, b);
                assert_eq!(th1.to_vec1::<f32>().unwrap(), h1, "{rule:?} h1");
                assert_eq!(th2.to_vec1::<f32>().unwrap(), h2, "{rule:?} h2");
            }
        }
    }

    #[test]
    fn solver_prototxt_settings_are_checked_as_caffe_checks_them() {
        let parse = |text: &str| -> Result<Rule> {
            let p: SolverParameter =
                crate::caffe::prototxt::parse(text, std::path::Path::new("s.prototxt"))?;
            Rule::from_param(&p, "solver s.prototxt")
        };
        assert_eq!(parse("").unwrap(), Rule::Sgd);
        assert_eq!(
            parse("type: \"Adam\" momentum: 0.9").unwrap(),
            Rule::Adam {
                beta2: 0.999,
                delta: 1e-8
            }
        );
        assert_eq!(
            parse("solver_type: ADAM").unwrap(),
            parse("type: \"Adam\"").unwrap()
        );
        assert_eq!(
            parse("solver_type: RMSPROP rms_decay: 0.95").unwrap(),
            Rule::RmsProp {
                decay: 0.95,
                delta: 1e-8
            }
        );
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("type: \"adam\"").contains("known types: AdaDelta"));
        assert!(
            err("type: \"AdaGrad\" momentum: 0.9").contains("momentum cannot be used with AdaGrad")
        );
        assert!(err("type: \"RMSProp\" rms_decay: 1.5").contains("rms_decay"));
        assert!(err("type: \"Adam\" solver_type: ADAM").contains("keep one"));
        for (rule, n) in [
            (parse("type: \"AdaDelta\"").unwrap(), 2),
            (Rule::Nesterov, 1),
        ] {
            assert_eq!(rule.histories(), n);
        }
    }
}
