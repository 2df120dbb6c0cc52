//! Caffe's learning-rate policies (`SGDSolver::GetLearningRate`).
use crate::caffe::proto::SolverParameter;
use crate::error::{Error, Result};

/// The rate for update `iter`; `current_step` is the multistep/step state
/// Caffe keeps in the solverstate (updated here for multistep).
pub fn learning_rate(p: &SolverParameter, iter: usize, current_step: &mut usize) -> Result<f32> {
    let base = p.base_lr() as f64;
    let gamma = p.gamma() as f64;
    let power = p.power() as f64;
    let it = iter as f64;
    let rate = match p.lr_policy() {
        "fixed" => base,
        "step" => {
            if p.stepsize() <= 0 {
                return Err(Error::model(
                    "solver",
                    "lr_policy \"step\" needs stepsize > 0",
                ));
            }
            *current_step = iter / p.stepsize() as usize;
            base * gamma.powi(*current_step as i32)
        }
        "exp" => base * gamma.powf(it),
        "inv" => base * (1.0 + gamma * it).powf(-power),
        "multistep" => {
            while *current_step < p.stepvalue.len() && iter >= p.stepvalue[*current_step] as usize {
                *current_step += 1;
            }
            base * gamma.powi(*current_step as i32)
        }
        "poly" => base * (1.0 - it / p.max_iter().max(1) as f64).powf(power),
        "sigmoid" => base / (1.0 + (-gamma * (it - p.stepsize() as f64)).exp()),
        "" => {
            return Err(Error::model(
                "solver",
                "lr_policy is not set (fixed, step, exp, inv, multistep, poly or sigmoid)",
            ))
        }
        other => {
            return Err(Error::model(
                "solver",
                format!("unknown lr_policy \"{other}\""),
            ))
        }
    };
    Ok(rate as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solver(text: &str) -> SolverParameter {
        crate::caffe::prototxt::parse(text, std::path::Path::new("s")).unwrap()
    }

    #[test]
    fn step_matches_the_flickr_recipe() {
        let p = solver("base_lr: 0.001 lr_policy: \"step\" gamma: 0.1 stepsize: 20000");
        let mut s = 0;
        assert_eq!(learning_rate(&p, 19999, &mut s).unwrap(), 0.001);
        // Caffe multiplies the f32 base_lr by pow(gamma, step) in double,
        // then rounds to f32 (its log prints 0.0001).
        assert_eq!(
            learning_rate(&p, 20000, &mut s).unwrap(),
            (0.001f32 as f64 * 0.1f32 as f64) as f32
        );
        assert_eq!(s, 1);
    }

    #[test]
    fn multistep_poly_inv_and_errors() {
        let p = solver("base_lr: 1 lr_policy: \"multistep\" gamma: 0.5 stepvalue: 2 stepvalue: 4");
        let mut s = 0;
        let rates: Vec<f32> = (0..6)
            .map(|i| learning_rate(&p, i, &mut s).unwrap())
            .collect();
        assert_eq!(rates, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
        let p = solver("base_lr: 1 lr_policy: \"poly\" power: 2 max_iter: 10");
        assert!((learning_rate(&p, 5, &mut 0).unwrap() - 0.25).abs() < 1e-7);
        let p = solver("base_lr: 1 lr_policy: \"inv\" gamma: 1 power: 1");
        assert!((learning_rate(&p, 1, &mut 0).unwrap() - 0.5).abs() < 1e-7);
        assert!(learning_rate(&solver("base_lr: 1 lr_policy: \"cosine\""), 0, &mut 0).is_err());
    }
}
