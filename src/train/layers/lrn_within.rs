//! LRN with `norm_region: WITHIN_CHANNEL` (cifar10_full's normalisation):
//! each value is divided by its spatial neighbourhood's energy,
//!
//! `scale = 1 + alpha * avg(x²)` over the `n x n` window centred on it,
//! `y = x * scale^-beta`.
//!
//! Caffe builds it from other layers (square, average pooling with padding
//! `(n-1)/2`, a Power layer with shift 1, a product), so `k` plays no part
//! and the average always divides by `n²`: padded positions count as zeros.
//! The gradient is that of [`super::lrn`] with a square window:
//! `dx = dy * scale^-beta - 2*alpha*beta/n² * x * window sum of (dy * y / scale)`.
use super::{nchw, with_f32, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{LrnParameter, Phase};
use crate::error::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub struct LrnWithin {
    size: usize,
    alpha: f32,
    beta: f32,
    name: String,
    path: OpPath,
    /// CPU path: the last forward's scale.
    scale: Vec<f32>,
}

impl LrnWithin {
    pub fn new(p: &LrnParameter, name: &str, path: OpPath) -> Result<Self> {
        Ok(LrnWithin {
            size: super::lrn::window(p, &format!("layer '{name}'"))?,
            alpha: p.alpha(),
            beta: p.beta(),
            name: name.to_string(),
            path,
            scale: Vec::new(),
        })
    }

    /// `alpha / n²`: Caffe's average, then its Power layer's scale.
    fn per_square(&self) -> f32 {
        self.alpha / (self.size * self.size) as f32
    }
}

/// Sums of `v` (an `h x w` plane) over the `size x size` window centred on
/// each position, zero outside: rows first, then columns.
pub(crate) fn box_sums(v: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    let half = size / 2;
    let mut rows = vec![0.0f32; h * w];
    for y in 0..h {
        let line = &v[y * w..(y + 1) * w];
        for x in 0..w {
            let (a, b) = (x.saturating_sub(half), (x + half + 1).min(w));
            rows[y * w + x] = line[a..b].iter().sum();
        }
    }
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(half), (y + half + 1).min(h));
        for r in a..b {
            for (o, &s) in out[y * w..(y + 1) * w]
                .iter_mut()
                .zip(&rows[r * w..(r + 1) * w])
            {
                *o += s;
            }
        }
    }
    out
}

/// [`box_sums`] of every plane of an `(N, C, H, W)` tensor, as a
/// convolution of each plane with an all-ones window (any device).
fn box_sums_tensor(v: &Tensor, size: usize) -> Result<Tensor> {
    let (n, c, h, w) = v.dims4()?;
    let ones = Tensor::ones((1, 1, size, size), v.dtype(), v.device())?;
    let planes = v.contiguous()?.reshape((n * c, 1, h, w))?;
    Ok(planes
        .conv2d(&ones, size / 2, 1, 1, 1)?
        .reshape((n, c, h, w))?)
}

impl Layer for LrnWithin {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "LRN"
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        nchw(bottom, &format!("layer '{}'", self.name))?;
        Ok(vec![bottom[0].clone()])
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = &bottom[0];
        let a = self.per_square();
        if self.path.tensor_ops() {
            let scale = box_sums_tensor(&x.sqr()?, self.size)?.affine(f64::from(a), 1.0)?;
            return Ok(vec![(x * scale.powf(-f64::from(self.beta))?)?]);
        }
        let (_, _, h, w) = x.dims4()?;
        let plane = h * w;
        let (size, beta) = (self.size, self.beta);
        let mut y = vec![0.0f32; x.elem_count()];
        self.scale.resize(y.len(), 0.0);
        with_f32(x, |xs| {
            y.par_chunks_mut(plane)
                .zip(self.scale.par_chunks_mut(plane))
                .zip(xs.par_chunks(plane))
                .for_each(|((yp, sp), xp)| {
                    let squares: Vec<f32> = xp.iter().map(|v| v * v).collect();
                    let sums = box_sums(&squares, h, w, size);
                    for (((o, s), &v), &sum) in yp.iter_mut().zip(sp.iter_mut()).zip(xp).zip(&sums)
                    {
                        *s = 1.0 + a * sum;
                        *o = v * s.powf(-beta);
                    }
                })
        })?;
        Ok(vec![Tensor::from_vec(y, x.shape(), &Device::Cpu)?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let (x, y) = (&a.bottom[0], &a.top[0]);
        let coeff = 2.0 * self.alpha * self.beta / (self.size * self.size) as f32;
        if self.path.tensor_ops() {
            let scale =
                box_sums_tensor(&x.sqr()?, self.size)?.affine(f64::from(self.per_square()), 1.0)?;
            let ratio = ((dy * y)? / &scale)?;
            let acc = box_sums_tensor(&ratio, self.size)?;
            let first = (dy * scale.powf(-f64::from(self.beta))?)?;
            let dx = (first - (x * acc)?.affine(f64::from(coeff), 0.0)?)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        let (_, _, h, w) = x.dims4()?;
        let plane = h * w;
        let (size, beta) = (self.size, self.beta);
        let mut dx = vec![0.0f32; x.elem_count()];
        let scale = &self.scale;
        with_f32(x, |xs| {
            with_f32(y, |ys| {
                with_f32(dy, |dys| {
                    dx.par_chunks_mut(plane).enumerate().for_each(|(i, dxp)| {
                        let r = i * plane..(i + 1) * plane;
                        let (xp, yp, gp, sp) =
                            (&xs[r.clone()], &ys[r.clone()], &dys[r.clone()], &scale[r]);
                        let ratio: Vec<f32> = gp
                            .iter()
                            .zip(yp)
                            .zip(sp)
                            .map(|((&g, &o), &s)| g * o / s)
                            .collect();
                        let acc = box_sums(&ratio, h, w, size);
                        for ((((o, &g), &s), &v), &sum) in
                            dxp.iter_mut().zip(gp).zip(sp).zip(xp).zip(&acc)
                        {
                            *o = g * s.powf(-beta) - coeff * v * sum;
                        }
                    })
                })
            })
        })???;
        Ok((
            vec![Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?)],
            vec![],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::to_vec;

    #[test]
    fn box_sums_count_padding_as_zero() {
        // 3x4 plane 1..12, 3x3 windows.
        let v: Vec<f32> = (1..=12).map(|i| i as f32).collect();
        let s = box_sums(&v, 3, 4, 3);
        // Corner (0,0): 1+2+5+6; centre (1,1): 1+2+3+5+6+7+9+10+11.
        assert_eq!(s[0], 14.0);
        assert_eq!(s[5], 54.0);
        // Right edge (1,3): 3+4+7+8+11+12.
        assert_eq!(s[7], 45.0);
        let t = Tensor::from_vec(v, (1, 1, 3, 4), &Device::Cpu).unwrap();
        let st = box_sums_tensor(&t, 3).unwrap();
        assert_eq!(to_vec(&st).unwrap(), s);
    }

    #[test]
    fn one_value_alone_is_scaled_by_its_own_energy() {
        // A single 1x1 plane with n = 3: avg = x²/9, y = x (1 + alpha x²/9)^-beta.
        let p = LrnParameter {
            local_size: Some(3),
            alpha: Some(0.9),
            beta: Some(0.5),
            ..Default::default()
        };
        for path in [OpPath::CpuKernels, OpPath::TensorOps] {
            let mut l = LrnWithin::new(&p, "n", path).unwrap();
            l.setup(&[vec![1, 1, 1, 1]]).unwrap();
            let x = Tensor::from_vec(vec![3.0f32], (1, 1, 1, 1), &Device::Cpu).unwrap();
            let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
            let want = 3.0 * (1.0f32 + 0.1 * 9.0).powf(-0.5);
            assert!((to_vec(&y[0]).unwrap()[0] - want).abs() < 1e-6);
        }
    }
}
