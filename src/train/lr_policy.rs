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
    let policy = p.lr_policy();
    // Caffe CHECKs these before computing the rate.
    if matches!(policy, "step" | "exp" | "inv" | "multistep" | "sigmoid") && gamma < 0.0 {
        return Err(Error::model(
            "solver",
            format!("lr_policy \"{policy}\" needs gamma >= 0, not {gamma} (Caffe refuses a negative gamma)"),
        ));
    }
    if matches!(policy, "step" | "sigmoid") && p.stepsize() <= 0 {
        return Err(Error::model(
            "solver",
            format!("lr_policy \"{policy}\" needs stepsize > 0"),
        ));
    }
    let rate = match policy {
        "fixed" => base,
        "step" => {
            *current_step = iter / p.stepsize() as usize;
            base * gamma.powi(*current_step as i32)
        }
        "exp" => base * gamma.powf(it),
        "inv" => base * (1.0 + gamma * it).powf(-power),
        "multistep" => {
            // At most one step per iteration, as in Caffe: stepvalues out
            // of order, or a resume past several, catch up one at a time.
            if *current_step < p.stepvalue.len() && iter >= p.stepvalue[*current_step] as usize {
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

    #[test]
    fn multistep_takes_one_step_an_iteration_as_caffe_does() {
        let p = solver("base_lr: 1 lr_policy: \"multistep\" gamma: 0.5 stepvalue: 5 stepvalue: 3");
        let mut s = 0;
        let rates: Vec<f32> = (4..8)
            .map(|i| learning_rate(&p, i, &mut s).unwrap())
            .collect();
        assert_eq!(rates, [1.0, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn caffes_checks_on_gamma_and_stepsize() {
        for policy in ["step", "exp", "inv", "multistep", "sigmoid"] {
            let p = solver(&format!(
                "base_lr: 1 lr_policy: \"{policy}\" gamma: -0.5 stepsize: 3"
            ));
            let e = learning_rate(&p, 0, &mut 0).unwrap_err().to_string();
            assert!(e.contains("needs gamma >= 0"), "{e}");
        }
        // Policies that ignore gamma ignore its sign too.
        let p = solver("base_lr: 1 lr_policy: \"poly\" power: 1 max_iter: 4 gamma: -1");
        assert!(learning_rate(&p, 0, &mut 0).is_ok());
        let p = solver("base_lr: 1 lr_policy: \"sigmoid\" gamma: 0.5");
        let e = learning_rate(&p, 0, &mut 0).unwrap_err().to_string();
        assert!(e.contains("sigmoid\" needs stepsize > 0"), "{e}");
    }
}
