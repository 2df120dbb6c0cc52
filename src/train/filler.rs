//! Parameter initialisation from Caffe's `FillerParameter`, drawn as Caffe
//! draws it ([`crate::caffe::rng`]): from the net's Caffe generator, value
//! after value and layer after layer, so a net built from the same
//! `random_seed` starts from Caffe's very weights.
use crate::caffe::proto::{filler_parameter::VarianceNorm, FillerParameter};
use crate::caffe::rng::CaffeRng;
use crate::error::{Error, Result};

/// A layer's weight blob of `shape` and, when `bias` gives its filler and
/// length, its bias, drawn in Caffe's order (the weights first) from the
/// net's generator; an unset filler is Caffe's default, constant 0.
pub fn weight_and_bias(
    weight: Option<&FillerParameter>,
    shape: &[usize],
    bias: Option<(Option<&FillerParameter>, usize)>,
    rng: &crate::caffe::rng::SharedCaffeRng,
    context: &str,
    device: &candle_core::Device,
) -> Result<Vec<candle_core::Tensor>> {
    let default = FillerParameter::default();
    let w = fill(
        weight.unwrap_or(&default),
        shape,
        &mut crate::caffe::rng::lock(rng),
        context,
    )?;
    let mut blobs = vec![candle_core::Tensor::from_vec(w, shape, device)?];
    if let Some((filler, n)) = bias {
        let b = fill(
            filler.unwrap_or(&default),
            &[n],
            &mut crate::caffe::rng::lock(rng),
            context,
        )?;
        blobs.push(candle_core::Tensor::from_vec(b, n, device)?);
    }
    Ok(blobs)
}

/// Values for a blob of `shape` from the layer's filler, or when it gives
/// none, the constant `default` (Caffe's per-layer default: Scale's factor
/// 1, PReLU's slope 0.25).
pub fn fill_or_constant(
    param: Option<&FillerParameter>,
    default: f32,
    shape: &[usize],
    rng: &mut CaffeRng,
    context: &str,
) -> Result<Vec<f32>> {
    let constant = FillerParameter {
        r#type: Some("constant".into()),
        value: Some(default),
        ..Default::default()
    };
    fill(param.unwrap_or(&constant), shape, rng, context)
}

/// Values for a blob of `shape` (`shape[0]` outputs, `shape[1]` inputs),
/// drawn from `rng`.
pub fn fill(
    param: &FillerParameter,
    shape: &[usize],
    rng: &mut CaffeRng,
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
    // Caffe converts each fan to float before averaging.
    let fan = match param.variance_norm() {
        VarianceNorm::FanIn => fan_in as f32,
        VarianceNorm::FanOut => fan_out as f32,
        VarianceNorm::Average => (fan_in as f32 + fan_out as f32) / 2.0,
    };
    // Caffe checks a <= b for uniform draws and sigma > 0 for Gaussian ones.
    let uniform = |rng: &mut CaffeRng, values: &mut Vec<f32>, a: f32, b: f32, what: &str| {
        if a > b || !a.is_finite() || !b.is_finite() {
            return Err(bad(format!(
                "{what} filler: needs min <= max, got {a} and {b}"
            )));
        }
        values.extend((0..n).map(|_| rng.uniform_f32(a, b)));
        Ok(())
    };
    let gaussian = |rng: &mut CaffeRng, values: &mut Vec<f32>, mean: f32, std: f32, what: &str| {
        if !std.is_finite() || std <= 0.0 || !mean.is_finite() {
            return Err(bad(format!("{what} filler: std must be > 0, got {std}")));
        }
        values.extend((0..n).map(|_| rng.gaussian_f32(mean, std)));
        Ok(())
    };
    match param.r#type() {
        "constant" => values.resize(n, param.value()),
        "uniform" => uniform(rng, &mut values, param.min(), param.max(), "uniform")?,
        "gaussian" => gaussian(rng, &mut values, param.mean(), param.std(), "gaussian")?,
        "xavier" => {
            let scale = (3.0 / fan).sqrt();
            uniform(rng, &mut values, -scale, scale, "xavier")?
        }
        "msra" => gaussian(rng, &mut values, 0.0, (2.0 / fan).sqrt(), "msra")?,
        "positive_unitball" => {
            // Uniform on [0, 1], then each output's row divided by its sum.
            uniform(rng, &mut values, 0.0, 1.0, "positive_unitball")?;
            let rows = shape.first().copied().unwrap_or(1).max(1);
            for row in values.chunks_mut((n / rows).max(1)) {
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
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
            "filler type \"{other}\" is not supported (constant, uniform, gaussian, xavier, msra, positive_unitball, bilinear)"
        )))
        }
    };
    // Gaussian `sparse`: keep each weight with probability sparse / outputs
    // (a Bernoulli draw per weight, after all the Gaussian ones).
    if param.r#type() == "gaussian" && param.sparse() >= 0 && !shape.is_empty() {
        let keep = param.sparse() as f32 / shape[0].max(1) as f32;
        if keep > 1.0 {
            return Err(bad(format!(
                "gaussian filler: sparse {} is more than the {} outputs",
                param.sparse(),
                shape[0]
            )));
        }
        // Caffe multiplies by the 0/1 mask, so a dropped negative weight is -0.
        for v in &mut values {
            *v *= if rng.bernoulli_f32(keep) { 1.0 } else { 0.0 };
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
        let a = fill(&p, &[100, 50], &mut CaffeRng::new(7), "t").unwrap();
        assert_eq!(a, fill(&p, &[100, 50], &mut CaffeRng::new(7), "t").unwrap());
        let var = a.iter().map(|v| (v * v) as f64).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 0.01).abs() < 0.001, "{}", var.sqrt());
        let negative = FillerParameter {
            std: Some(-0.01),
            ..p.clone()
        };
        let e = fill(&negative, &[2], &mut CaffeRng::new(7), "layer 'fc'")
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
        let v = fill(&b, &[1, 1, 4, 4], &mut CaffeRng::new(0), "t").unwrap();
        let axis = [0.25f32, 0.75, 0.75, 0.25];
        for (i, &got) in v.iter().enumerate() {
            assert_eq!(got, axis[i % 4] * axis[i / 4], "{i}");
        }
        assert!(fill(&b, &[1, 1, 3, 4], &mut CaffeRng::new(0), "t").is_err());
        assert!(fill(&b, &[9], &mut CaffeRng::new(0), "t").is_err());
    }

    #[test]
    fn constant_xavier_and_unknown() {
        let c = FillerParameter {
            value: Some(0.1),
            ..Default::default()
        };
        assert!(fill(&c, &[3], &mut CaffeRng::new(0), "t")
            .unwrap()
            .iter()
            .all(|&v| v == 0.1));
        let x = FillerParameter {
            r#type: Some("xavier".into()),
            ..Default::default()
        };
        let v = fill(&x, &[4, 3, 2, 2], &mut CaffeRng::new(0), "t").unwrap();
        assert!(v.iter().all(|&v| v.abs() <= (3.0f32 / 12.0).sqrt()));
        let u = FillerParameter {
            r#type: Some("unknown".into()),
            ..Default::default()
        };
        assert!(fill(&u, &[1], &mut CaffeRng::new(0), "layer 'up'")
            .unwrap_err()
            .to_string()
            .contains("\"unknown\" is not supported"));
    }
}
