//! Parameter initialisation from Caffe's `FillerParameter`, drawn from a
//! seeded ChaCha generator so a run can be repeated. (Caffe's own draws come
//! from boost's generator and cannot be reproduced; what matches is the
//! distribution.)
use crate::caffe::proto::{filler_parameter::VarianceNorm, FillerParameter};
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};

/// Values for a blob of `shape` from the layer's filler, or when it gives
/// none, the constant `default` (Caffe's per-layer default: Scale's factor
/// 1, PReLU's slope 0.25).
pub fn fill_or_constant(
    param: Option<&FillerParameter>,
    default: f32,
    shape: &[usize],
    seed: u64,
    context: &str,
) -> Result<Vec<f32>> {
    let constant = FillerParameter {
        r#type: Some("constant".into()),
        value: Some(default),
        ..Default::default()
    };
    fill(param.unwrap_or(&constant), shape, seed, context)
}

/// Values for a blob of `shape` (`shape[0]` outputs, `shape[1]` inputs).
pub fn fill(
    param: &FillerParameter,
    shape: &[usize],
    seed: u64,
    context: &str,
) -> Result<Vec<f32>> {
    let n = crate::train::layers::checked_count(shape, context, "parameter blob")?;
    // Up to 2^31 floats (8 GiB) pass the count check: fail cleanly when
    // the memory is not there, rather than abort in the draws below.
    let mut values: Vec<f32> = Vec::new();
    values.try_reserve_exact(n).map_err(|_| {
        Error::model(
            context,
            format!(
                "cannot allocate {} for a parameter blob of shape {shape:?}",
                crate::train::memory::gib(n as u64 * 4)
            ),
        )
    })?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bad = |m: String| Error::model(context, m);
    let fan_in = if shape.is_empty() {
        1
    } else {
        n / shape[0].max(1)
    };
    let fan_out = if shape.len() > 1 {
        n / shape[1].max(1)
    } else {
        n
    };
    let fan = match param.variance_norm() {
        VarianceNorm::FanIn => fan_in as f32,
        VarianceNorm::FanOut => fan_out as f32,
        VarianceNorm::Average => (fan_in + fan_out) as f32 / 2.0,
    };
    match param.r#type() {
        "constant" => values.resize(n, param.value()),
        "uniform" => {
            let u = Uniform::new_inclusive(param.min(), param.max())
                .map_err(|e| bad(format!("uniform filler: {e}")))?;
            values.extend((0..n).map(|_| u.sample(&mut rng)))
        }
        "gaussian" => {
            // Caffe's Gaussian draw checks sigma > 0 (rand_distr would
            // accept a negative std and mirror the values).
            if param.std().is_nan() || param.std() <= 0.0 {
                return Err(bad(format!(
                    "gaussian filler: std must be > 0, got {}",
                    param.std()
                )));
            }
            let d = Normal::new(param.mean(), param.std())
                .map_err(|e| bad(format!("gaussian filler: {e}")))?;
            values.extend((0..n).map(|_| d.sample(&mut rng)))
        }
        "xavier" => {
            let scale = (3.0 / fan).sqrt();
            let u = Uniform::new_inclusive(-scale, scale)
                .map_err(|e| bad(format!("xavier filler: {e}")))?;
            values.extend((0..n).map(|_| u.sample(&mut rng)))
        }
        "msra" => {
            let d = Normal::new(0.0, (2.0 / fan).sqrt())
                .map_err(|e| bad(format!("msra filler: {e}")))?;
            values.extend((0..n).map(|_| d.sample(&mut rng)))
        }
        "bilinear" => {
            // Caffe's upsampling kernel for Deconvolution: a tent over each
            // square kh x kw filter, in f32 as Caffe computes it.
            let (h, w) = match shape {
                [_, _, h, w] if h == w => (*h, *w),
                _ => {
                    return Err(bad(format!(
                        "bilinear filler: needs a 4-D blob with square filters, not {shape:?}"
                    )))
                }
            };
            let f = w.div_ceil(2);
            let c = ((2 * f - 1 - f % 2) as f64 / (2.0 * f as f64)) as f32;
            let f = f as f32;
            values.extend((0..n).map(|i| {
                let (x, y) = ((i % w) as f32, ((i / w) % h) as f32);
                (1.0 - (x / f - c).abs()) * (1.0 - (y / f - c).abs())
            }))
        }
        other => {
            return Err(bad(format!(
            "filler type \"{other}\" is not supported (constant, uniform, gaussian, xavier, msra, bilinear)"
        )))
        }
    };
    // Gaussian `sparse`: keep each weight with probability sparse / outputs.
    if param.r#type() == "gaussian" && param.sparse() >= 0 && !shape.is_empty() {
        let keep = param.sparse() as f64 / shape[0].max(1) as f64;
        for v in &mut values {
            if !rng.random_bool(keep.clamp(0.0, 1.0)) {
                *v = 0.0;
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_the_requested_spread_and_is_seeded() {
        let p = FillerParameter {
            r#type: Some("gaussian".into()),
            std: Some(0.01),
            ..Default::default()
        };
        let a = fill(&p, &[100, 50], 7, "t").unwrap();
        assert_eq!(a, fill(&p, &[100, 50], 7, "t").unwrap());
        let var = a.iter().map(|v| (v * v) as f64).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 0.01).abs() < 0.001, "{}", var.sqrt());
        let negative = FillerParameter {
            std: Some(-0.01),
            ..p.clone()
        };
        let e = fill(&negative, &[2], 7, "layer 'fc'")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer 'fc'") && e.contains("std must be > 0"),
            "{e}"
        );
    }

    #[test]
    fn bilinear_is_a_tent_per_square_filter() {
        let b = FillerParameter {
            r#type: Some("bilinear".into()),
            ..Default::default()
        };
        // Kernel 4 (upsampling by 2): f = 2, c = 0.75, weights 0.25, 0.75, 0.75, 0.25 per axis.
        let v = fill(&b, &[1, 1, 4, 4], 0, "t").unwrap();
        let axis = [0.25f32, 0.75, 0.75, 0.25];
        for (i, &got) in v.iter().enumerate() {
            assert_eq!(got, axis[i % 4] * axis[i / 4], "{i}");
        }
        assert!(fill(&b, &[1, 1, 3, 4], 0, "t").is_err());
        assert!(fill(&b, &[9], 0, "t").is_err());
    }

    #[test]
    fn constant_xavier_and_unknown() {
        let c = FillerParameter {
            value: Some(0.1),
            ..Default::default()
        };
        assert!(fill(&c, &[3], 0, "t").unwrap().iter().all(|&v| v == 0.1));
        let x = FillerParameter {
            r#type: Some("xavier".into()),
            ..Default::default()
        };
        let v = fill(&x, &[4, 3, 2, 2], 0, "t").unwrap();
        assert!(v.iter().all(|&v| v.abs() <= (3.0f32 / 12.0).sqrt()));
        let u = FillerParameter {
            r#type: Some("unknown".into()),
            ..Default::default()
        };
        assert!(fill(&u, &[1], 0, "layer 'up'")
            .unwrap_err()
            .to_string()
            .contains("\"unknown\" is not supported"));
    }
}
