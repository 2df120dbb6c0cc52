//! Caffe's element-wise neuron layers other than ReLU: Sigmoid, TanH,
//! AbsVal, BNLL, ELU, Power, Exp, Log, Swish and Clip. Each is a function of
//! one value and its derivative, written out as Caffe computes them (the
//! same special cases, in the same order), so a net of them trains as it
//! would in Caffe. On the CPU one parallel pass over the values; elsewhere
//! a composition of candle ops, its twin (`check-ops` compares the two).
use super::{with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;
use rayon::prelude::*;

/// Caffe's BNLL layer clamps its input at this before `exp` in backward.
const BNLL_THRESHOLD: f32 = 50.0;

/// One element-wise function with its settings (already turned into the
/// factors Caffe precomputes in `LayerSetUp`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Neuron {
    /// `0.5 tanh(0.5 x) + 0.5` (Caffe's form of the logistic function).
    Sigmoid,
    /// `tanh x`.
    TanH,
    /// `|x|`.
    AbsVal,
    /// `log(1 + e^x)`, computed without overflow.
    Bnll,
    /// `x` for `x > 0`, else `alpha (e^x - 1)`.
    Elu { alpha: f32 },
    /// `(shift + scale x)^power`.
    Power { power: f32, scale: f32, shift: f32 },
    /// `outer * e^(inner x)`, i.e. `base^(shift + scale x)`.
    Exp { inner: f32, outer: f32 },
    /// `log(shift + scale x) * base_scale`, i.e. `log_base(shift + scale x)`.
    Log {
        scale: f32,
        shift: f32,
        base_scale: f32,
        /// `scale / ln(base)`: the derivative's numerator.
        backward_scale: f32,
    },
    /// `x * sigmoid(beta x)`.
    Swish { beta: f32 },
    /// `x` limited to `[min, max]`.
    Clip { min: f32, max: f32 },
}

/// Caffe's `0.5 tanh(0.5 x) + 0.5`.
pub(super) fn sigmoid(x: f32) -> f32 {
    0.5 * (0.5 * x).tanh() + 0.5
}

/// [`sigmoid`] of every value, as candle ops (the same steps).
fn sigmoid_tensor(t: &Tensor) -> Result<Tensor> {
    Ok(t.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)?)
}

/// `ln(base)` for Exp and Log, whose base -1 stands for e; Caffe refuses
/// other bases that are not positive.
fn log_base(base: f32, ctx: &str, field: &str) -> Result<f32> {
    if base == -1.0 {
        Ok(1.0)
    } else if base > 0.0 {
        Ok(base.ln())
    } else {
        Err(Error::model(
            ctx,
            format!("{field} base {base} must be positive, or -1 for e"),
        ))
    }
}

impl Neuron {
    /// The neuron a layer of Caffe type `ty` describes, or `None` when `ty`
    /// is not one of these.
    pub fn from_param(ty: &str, p: &LayerParameter, ctx: &str) -> Result<Option<Neuron>> {
        Ok(Some(match ty {
            "Sigmoid" => Neuron::Sigmoid,
            "TanH" => Neuron::TanH,
            "AbsVal" => Neuron::AbsVal,
            "BNLL" => Neuron::Bnll,
            "ELU" => Neuron::Elu {
                alpha: p.elu_param.map_or(1.0, |e| e.alpha()),
            },
            "Power" => {
                let q = p.power_param.unwrap_or_default();
                Neuron::Power {
                    power: q.power(),
                    scale: q.scale(),
                    shift: q.shift(),
                }
            }
            "Exp" => {
                let q = p.exp_param.unwrap_or_default();
                let inner = log_base(q.base(), ctx, "exp_param")? * q.scale();
                let outer = if q.shift() == 0.0 {
                    1.0
                } else if q.base() == -1.0 {
                    q.shift().exp()
                } else {
                    q.base().powf(q.shift())
                };
                Neuron::Exp { inner, outer }
            }
            "Log" => {
                let q = p.log_param.unwrap_or_default();
                let ln_base = log_base(q.base(), ctx, "log_param")?;
                Neuron::Log {
                    scale: q.scale(),
                    shift: q.shift(),
                    base_scale: if q.base() == -1.0 { 1.0 } else { 1.0 / ln_base },
                    backward_scale: q.scale() / ln_base,
                }
            }
            "Swish" => Neuron::Swish {
                beta: p.swish_param.map_or(1.0, |s| s.beta()),
            },
            "Clip" => {
                let q = p.clip_param.unwrap_or_default();
                let (Some(min), Some(max)) = (q.min, q.max) else {
                    return Err(Error::model(ctx, "clip_param needs both min and max"));
                };
                if min > max {
                    return Err(Error::model(
                        ctx,
                        format!("clip_param min {min} is above max {max}"),
                    ));
                }
                Neuron::Clip { min, max }
            }
            _ => return Ok(None),
        }))
    }

    /// Caffe's type string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Neuron::Sigmoid => "Sigmoid",
            Neuron::TanH => "TanH",
            Neuron::AbsVal => "AbsVal",
            Neuron::Bnll => "BNLL",
            Neuron::Elu { .. } => "ELU",
            Neuron::Power { .. } => "Power",
            Neuron::Exp { .. } => "Exp",
            Neuron::Log { .. } => "Log",
            Neuron::Swish { .. } => "Swish",
            Neuron::Clip { .. } => "Clip",
        }
    }

    /// `y = f(x)` for one value.
    pub fn y(&self, x: f32) -> f32 {
        match *self {
            Neuron::Sigmoid => sigmoid(x),
            Neuron::TanH => x.tanh(),
            Neuron::AbsVal => x.abs(),
            Neuron::Bnll => {
                // Caffe adds float exp() to the double 1., so the log is in double.
                if x > 0.0 {
                    (f64::from(x) + (1.0 + f64::from((-x).exp())).ln()) as f32
                } else {
                    (1.0 + f64::from(x.exp())).ln() as f32
                }
            }
            Neuron::Elu { alpha } => x.max(0.0) + alpha * (x.min(0.0).exp() - 1.0),
            Neuron::Power {
                power,
                scale,
                shift,
            } => {
                if power * scale == 0.0 {
                    // Caffe fills the constant without reading x.
                    return if power == 0.0 { 1.0 } else { shift.powf(power) };
                }
                let v = Self::shifted(x, scale, shift);
                if power != 1.0 {
                    v.powf(power)
                } else {
                    v
                }
            }
            Neuron::Exp { inner, outer } => {
                let e = if inner == 1.0 {
                    x.exp()
                } else {
                    (inner * x).exp()
                };
                if outer == 1.0 {
                    e
                } else {
                    e * outer
                }
            }
            Neuron::Log {
                scale,
                shift,
                base_scale,
                ..
            } => {
                let l = Self::shifted(x, scale, shift).ln();
                if base_scale == 1.0 {
                    l
                } else {
                    l * base_scale
                }
            }
            Neuron::Swish { beta } => x * sigmoid(beta * x),
            Neuron::Clip { min, max } => x.min(max).max(min),
        }
    }

    /// `scale x + shift`, each step only when it changes the value (as Caffe skips them).
    fn shifted(x: f32, scale: f32, shift: f32) -> f32 {
        let mut v = x;
        if scale != 1.0 {
            v *= scale;
        }
        if shift != 0.0 {
            v += shift;
        }
        v
    }

    /// `dL/dx` from the input `x`, the output `y` and `dL/dy`.
    pub fn dx(&self, x: f32, y: f32, dy: f32) -> f32 {
        match *self {
            Neuron::Sigmoid => dy * y * (1.0 - y),
            Neuron::TanH => dy * (1.0 - y * y),
            Neuron::AbsVal => {
                let sign = f32::from(u8::from(x > 0.0)) - f32::from(u8::from(x < 0.0));
                dy * sign
            }
            Neuron::Bnll => {
                let e = x.min(BNLL_THRESHOLD).exp();
                (f64::from(dy * e) / (f64::from(e) + 1.0)) as f32
            }
            Neuron::Elu { alpha } => {
                if x > 0.0 {
                    dy
                } else {
                    dy * (alpha + y)
                }
            }
            Neuron::Power {
                power,
                scale,
                shift,
            } => {
                let diff_scale = power * scale;
                let d = if diff_scale == 0.0 || power == 1.0 {
                    diff_scale
                } else if power == 2.0 {
                    // 2 scale (shift + scale x), as Caffe expands it.
                    let d = diff_scale * scale * x;
                    if shift != 0.0 {
                        d + diff_scale * shift
                    } else {
                        d
                    }
                } else if shift == 0.0 {
                    // power * y / x (Caffe's shortcut; infinite at x = 0, as there).
                    y / x * power
                } else {
                    let d = y / Self::shifted(x, scale, shift);
                    if diff_scale != 1.0 {
                        d * diff_scale
                    } else {
                        d
                    }
                };
                dy * d
            }
            Neuron::Exp { inner, .. } => {
                let d = dy * y;
                if inner == 1.0 {
                    d
                } else {
                    d * inner
                }
            }
            Neuron::Log {
                scale,
                shift,
                backward_scale,
                ..
            } => {
                let r = Self::shifted(x, scale, shift).powi(-1);
                let r = if backward_scale == 1.0 {
                    r
                } else {
                    r * backward_scale
                };
                dy * r
            }
            Neuron::Swish { beta } => {
                let s = sigmoid(beta * x);
                dy * (beta * y + s * (1.0 - beta * y))
            }
            Neuron::Clip { min, max } => {
                if x >= min && x <= max {
                    dy
                } else {
                    0.0
                }
            }
        }
    }

    /// [`Neuron::y`] of every value, as candle ops.
    pub fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match *self {
            Neuron::Sigmoid => sigmoid_tensor(x)?,
            Neuron::TanH => x.tanh()?,
            Neuron::AbsVal => x.abs()?,
            // relu(x) + log(1 + e^-|x|): both of Caffe's branches at once.
            Neuron::Bnll => (x.relu()? + x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?,
            Neuron::Elu { alpha } => {
                let neg = (x.minimum(0f32)?.exp()?.affine(1.0, -1.0)? * f64::from(alpha))?;
                (x.maximum(0f32)? + neg)?
            }
            Neuron::Power {
                power,
                scale,
                shift,
            } => {
                if power * scale == 0.0 {
                    let v = if power == 0.0 { 1.0 } else { shift.powf(power) };
                    return Ok(Tensor::full(v, x.shape(), x.device())?);
                }
                let v = x.affine(f64::from(scale), f64::from(shift))?;
                if power == 1.0 {
                    v
                } else {
                    v.powf(f64::from(power))?
                }
            }
            Neuron::Exp { inner, outer } => x
                .affine(f64::from(inner), 0.0)?
                .exp()?
                .affine(f64::from(outer), 0.0)?,
            Neuron::Log {
                scale,
                shift,
                base_scale,
                ..
            } => x
                .affine(f64::from(scale), f64::from(shift))?
                .log()?
                .affine(f64::from(base_scale), 0.0)?,
            Neuron::Swish { beta } => (x * sigmoid_tensor(&x.affine(f64::from(beta), 0.0)?)?)?,
            Neuron::Clip { min, max } => x.clamp(min, max)?,
        })
    }

    /// [`Neuron::dx`] of every value, as candle ops.
    pub fn backward_tensor(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let f = f64::from;
        Ok(match *self {
            Neuron::Sigmoid => ((dy * y)? * y.affine(-1.0, 1.0)?)?,
            Neuron::TanH => (dy * y.sqr()?.affine(-1.0, 1.0)?)?,
            Neuron::AbsVal => (dy * x.sign()?)?,
            Neuron::Bnll => {
                let e = x.minimum(BNLL_THRESHOLD)?.exp()?;
                ((dy * &e)? / e.affine(1.0, 1.0)?)?
            }
            Neuron::Elu { alpha } => {
                let neg = (dy * y.affine(1.0, f(alpha))?)?;
                x.gt(0f32)?.where_cond(dy, &neg)?
            }
            Neuron::Power {
                power,
                scale,
                shift,
            } => {
                let diff_scale = power * scale;
                let d = if diff_scale == 0.0 || power == 1.0 {
                    return Ok(dy.affine(f(diff_scale), 0.0)?);
                } else if power == 2.0 {
                    x.affine(f(diff_scale * scale), f(diff_scale * shift))?
                } else if shift == 0.0 {
                    (y / x)?.affine(f(power), 0.0)?
                } else {
                    (y / x.affine(f(scale), f(shift))?)?.affine(f(diff_scale), 0.0)?
                };
                (dy * d)?
            }
            Neuron::Exp { inner, .. } => (dy * y)?.affine(f(inner), 0.0)?,
            Neuron::Log {
                scale,
                shift,
                backward_scale,
                ..
            } => {
                let r = x.affine(f(scale), f(shift))?.recip()?;
                (dy * r.affine(f(backward_scale), 0.0)?)?
            }
            Neuron::Swish { beta } => {
                let s = sigmoid_tensor(&x.affine(f(beta), 0.0)?)?;
                let by = y.affine(f(beta), 0.0)?;
                (dy * (&by + (s * by.affine(-1.0, 1.0)?)?)?)?
            }
            Neuron::Clip { min, max } => {
                let inside = (x.ge(min)? * x.le(max)?)?;
                inside.where_cond(dy, &dy.zeros_like()?)?
            }
        })
    }
}

/// A neuron layer: one bottom, one top of its shape.
pub struct NeuronLayer {
    neuron: Neuron,
    path: OpPath,
}

impl NeuronLayer {
    pub fn new(neuron: Neuron, path: OpPath) -> Self {
        NeuronLayer { neuron, path }
    }
}

/// `f(index, value)` of each value of `x`, on all cores.
fn map_host(x: &Tensor, f: impl Fn(usize, f32) -> f32 + Sync) -> Result<Tensor> {
    let out = with_f32(x, |xs| {
        xs.par_iter()
            .enumerate()
            .with_min_len(1 << 14)
            .map(|(i, &v)| f(i, v))
            .collect::<Vec<f32>>()
    })?;
    Ok(Tensor::from_vec(out, x.shape(), x.device())?)
}

impl Layer for NeuronLayer {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        self.neuron.type_name()
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(vec![bottom[0].clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        let y = if self.path.tensor_ops() {
            self.neuron.forward_tensor(x)?
        } else {
            let n = self.neuron;
            map_host(x, |_, v| n.y(v))?
        };
        Ok(vec![y])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let (x, y) = (&a.bottom[0], &a.top[0]);
        let dx = if self.path.tensor_ops() {
            self.neuron.backward_tensor(x, y, dy)?
        } else {
            let n = self.neuron;
            with_f32(y, |ys| {
                with_f32(dy, |ds| map_host(x, |i, v| n.dx(v, ys[i], ds[i])))
            })???
        };
        Ok((vec![Some(dx)], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neuron(ty: &str, params: &str) -> Neuron {
        let text = format!("name: \"n\" type: \"{ty}\" {params}");
        let p: LayerParameter =
            crate::caffe::prototxt::parse(&text, std::path::Path::new("n")).unwrap();
        Neuron::from_param(ty, &p, "layer 'n'").unwrap().unwrap()
    }

    const XS: [f32; 7] = [-3.0, -1.0, -0.25, 0.0, 0.5, 2.0, 60.0];

    /// The host functions and the tensor ops give the same values, and the
    /// derivative matches a central difference of the function.
    fn check(n: Neuron, xs: &[f32]) {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(xs, &dev).unwrap();
        let y_t: Vec<f32> = n.forward_tensor(&x).unwrap().to_vec1().unwrap();
        let y: Vec<f32> = xs.iter().map(|&v| n.y(v)).collect();
        let dy: Vec<f32> = (0..xs.len()).map(|i| 0.5 + i as f32 * 0.25).collect();
        let dx: Vec<f32> = xs
            .iter()
            .zip(&y)
            .zip(&dy)
            .map(|((&x, &y), &d)| n.dx(x, y, d))
            .collect();
        let dx_t: Vec<f32> = n
            .backward_tensor(
                &x,
                &Tensor::new(y.as_slice(), &dev).unwrap(),
                &Tensor::new(dy.as_slice(), &dev).unwrap(),
            )
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..xs.len() {
            let close = |a: f32, b: f32| {
                (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0) || (a.is_nan() && b.is_nan())
            };
            assert!(
                close(y[i], y_t[i]),
                "{n:?} y({}) {} vs {}",
                xs[i],
                y[i],
                y_t[i]
            );
            assert!(
                close(dx[i], dx_t[i]),
                "{n:?} dx({}) {} vs {}",
                xs[i],
                dx[i],
                dx_t[i]
            );
            // Central difference in f64 of the f32 function, away from kinks.
            let h = 1e-3f32;
            let (up, down) = (n.y(xs[i] + h), n.y(xs[i] - h));
            let numeric =
                (f64::from(up) - f64::from(down)) / (2.0 * f64::from(h)) * f64::from(dy[i]);
            if xs[i] != 0.0 && numeric.is_finite() && xs[i].abs() < 10.0 {
                let err = (numeric - f64::from(dx[i])).abs() / numeric.abs().max(1.0);
                assert!(
                    err < 2e-2,
                    "{n:?} dx({}) {} vs numeric {numeric}",
                    xs[i],
                    dx[i]
                );
            }
        }
    }

    #[test]
    fn each_neuron_matches_its_tensor_twin_and_its_derivative() {
        for (ty, params) in [
            ("Sigmoid", ""),
            ("TanH", ""),
            ("AbsVal", ""),
            ("BNLL", ""),
            ("ELU", ""),
            ("ELU", "elu_param { alpha: 0.5 }"),
            ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }"),
            ("Power", "power_param { power: 3 scale: 2 }"),
            ("Power", "power_param { power: 1 scale: -2 shift: 3 }"),
            ("Power", "power_param { power: 0.5 scale: 1 shift: 4 }"),
            ("Exp", ""),
            ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"),
            ("Log", "log_param { shift: 4 }"),
            ("Log", "log_param { base: 10 scale: 2 shift: 7 }"),
            ("Swish", ""),
            ("Swish", "swish_param { beta: 2 }"),
            ("Clip", "clip_param { min: -2 max: 1.5 }"),
        ] {
            let n = neuron(ty, params);
            let xs: Vec<f32> = if ty == "Exp" {
                XS.iter().map(|&v| v.min(10.0)).collect()
            } else {
                XS.to_vec()
            };
            check(n, &xs);
        }
    }

    #[test]
    fn values_are_caffes() {
        assert_eq!(neuron("Sigmoid", "").y(0.0), 0.5);
        assert!((neuron("Sigmoid", "").y(2.0) - 0.880_797_1).abs() < 1e-7);
        // BNLL does not overflow where e^x would.
        assert_eq!(neuron("BNLL", "").y(100.0), 100.0);
        assert!((neuron("BNLL", "").y(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(neuron("AbsVal", "").dx(0.0, 0.0, 3.0), 0.0);
        let elu = neuron("ELU", "elu_param { alpha: 2 }");
        assert!((elu.y(-1.0) - 2.0 * ((-1f32).exp() - 1.0)).abs() < 1e-7);
        // (1 + 0.5 * 2)^2 = 4, d/dx = 2 * 0.5 * 2 = 2.
        let p = neuron("Power", "power_param { power: 2 scale: 0.5 shift: 1 }");
        assert_eq!(p.y(2.0), 4.0);
        assert_eq!(p.dx(2.0, 4.0, 1.0), 2.0);
        // A zero power is the constant 1, and its gradient 0.
        let p0 = neuron("Power", "power_param { power: 0 shift: 3 }");
        assert_eq!((p0.y(5.0), p0.dx(5.0, 1.0, 1.0)), (1.0, 0.0));
        // 2^(1 + 0.5 * 2) = 4.
        assert!(
            (neuron("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }").y(2.0) - 4.0).abs() < 1e-6
        );
        // log10(7 + 2 * 1.5) = 1.
        assert!(
            (neuron("Log", "log_param { base: 10 scale: 2 shift: 7 }").y(1.5) - 1.0).abs() < 1e-6
        );
        let clip = neuron("Clip", "clip_param { min: -1 max: 1 }");
        assert_eq!((clip.y(3.0), clip.y(-3.0), clip.y(0.5)), (1.0, -1.0, 0.5));
        assert_eq!((clip.dx(3.0, 1.0, 2.0), clip.dx(1.0, 1.0, 2.0)), (0.0, 2.0));
    }

    #[test]
    fn bad_settings_are_named() {
        let parse = |text: &str| -> LayerParameter {
            crate::caffe::prototxt::parse(text, std::path::Path::new("n")).unwrap()
        };
        let err = |ty: &str, text: &str| {
            Neuron::from_param(ty, &parse(text), "layer 'n'")
                .err()
                .unwrap()
                .to_string()
        };
        let e = err("Exp", "exp_param { base: -2 }");
        assert!(e.contains("layer 'n'") && e.contains("base -2"), "{e}");
        let e = err("Log", "log_param { base: 0 }");
        assert!(e.contains("base 0"), "{e}");
        let e = err("Clip", "clip_param { min: 1 }");
        assert!(e.contains("min and max"), "{e}");
        let e = err("Clip", "clip_param { min: 1 max: 0 }");
        assert!(e.contains("above max"), "{e}");
        assert_eq!(Neuron::from_param("ReLU", &parse(""), "n").unwrap(), None);
    }
}
