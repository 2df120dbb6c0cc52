//! Fused single-pass ops for nets on a CUDA GPU: max pooling with argmax,
//! LRN, ReLU backward, col2im and the SGD history update, each one kernel
//! that reads its inputs once (`fused.cu`), where the candle compositions in
//! [`super::tensor_ops`] take several passes and temporaries.
//!
//! Each op is a candle custom op whose CPU forward runs the CPU kernel twin
//! from [`super::kernels`], so CI exercises every wrapper (shapes, offsets,
//! parameters) on the CPU and `check-ops --gpu` compares the CUDA kernels
//! with those twins. Two-output ops (pooling's mask, LRN's scale) return
//! both stacked on the batch axis: the first half is the top, the second
//! stays private to the layer's backward pass.
use super::kernels::{self, Lrn, Window};
use super::sgd::ParamStep;
use crate::error::Result;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;

/// Environment variable that turns the fused kernels off on a GPU (the
/// tensor-op compositions run instead), in case a driver or card misbehaves.
pub const DISABLE_ENV: &str = "FLICKR_STYLE_NO_FUSED";

/// Whether nets on a GPU should use the fused kernels (on unless
/// [`DISABLE_ENV`] is set).
pub fn enabled_by_env() -> bool {
    std::env::var_os(DISABLE_ENV).is_none()
}

/// The contiguous f32 values of a CPU operand.
fn host<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: operand must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// `dx = dy` where `x > 0`, `slope * dy` elsewhere (Caffe's ReLU gradient).
pub fn relu_backward(x: &Tensor, dy: &Tensor, slope: f32) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &ReluBackward { slope })?)
}

struct ReluBackward {
    slope: f32,
}

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "fs_relu_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, dy) = (host(s1, l1, self.name())?, host(s2, l2, self.name())?);
        let dx: Vec<f32> = x
            .par_iter()
            .zip(dy)
            .map(|(&x, &d)| if x > 0.0 { d } else { self.slope * d })
            .collect();
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (x, dy) = (gpu::view(s1, l1)?, gpu::view(s2, l2)?);
        let n = l1.shape().elem_count();
        let out = gpu::alloc(&s1.device, n)?;
        let f = s1
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = n as u32;
        b.arg(&n32).arg(&self.slope).arg(&x).arg(&dy).arg(&out);
        gpu::launch(b, n)?;
        Ok((gpu::wrap(out, &s1.device), l1.shape().clone()))
    }
}

/// Max pooling for one geometry, with Caffe's first-maximum argmax.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool {
    /// The pooling window (dilation unused).
    pub win: Window,
}

impl MaxPool {
    /// `(y, saved)`: the pooled top, and what [`Self::backward`] needs
    /// (the top stacked with each output's argmax within its plane).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = x.dim(0)?;
        let both = x.contiguous()?.apply_op1_no_bwd(self)?;
        Ok((both.narrow(0, 0, n)?, both))
    }

    /// The input gradient for top gradient `dy`, from `saved` of the forward pass.
    pub fn backward(&self, saved: &Tensor, dy: &Tensor) -> Result<Tensor> {
        Ok(dy
            .contiguous()?
            .apply_op2_no_bwd(saved, &MaxPoolBackward(*self))?)
    }

    #[cfg(feature = "cuda")]
    fn dims(&self) -> [i32; 10] {
        let g = &self.win;
        [g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw].map(|v| v as i32)
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "fs_max_pool_forward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = host(s, l, self.name())?;
        let g = &self.win;
        let n = l.dims()[0];
        let (img, out, plane) = (g.c * g.h * g.w, g.c * g.oh * g.ow, g.h * g.w);
        let mut both = vec![0f32; 2 * n * out];
        let (y, mask) = both.split_at_mut(n * out);
        y.par_chunks_mut(out)
            .zip(mask.par_chunks_mut(out))
            .zip(x.par_chunks(img))
            .for_each(|((yi, mi), xi)| {
                let mut argmax = vec![0u32; out];
                kernels::max_pool(xi, g, yi, &mut argmax);
                for (m, a) in mi.iter_mut().zip(argmax) {
                    *m = (a as usize % plane) as f32;
                }
            });
        Ok((CpuStorage::F32(both), Shape::from((2 * n, g.c, g.oh, g.ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let x = gpu::view(s, l)?;
        let g = &self.win;
        let n = l.dims()[0];
        let count = n * g.c * g.oh * g.ow;
        let both = gpu::alloc(&s.device, 2 * count)?;
        let (y, mask) = (both.slice(..count), both.slice(count..));
        let f = s
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = count as u32;
        b.arg(&n32);
        let d = self.dims();
        for v in &d {
            b.arg(v);
        }
        b.arg(&x).arg(&y).arg(&mask);
        gpu::launch(b, count)?;
        Ok((
            gpu::wrap(both, &s.device),
            Shape::from((2 * n, g.c, g.oh, g.ow)),
        ))
    }
}

struct MaxPoolBackward(MaxPool);

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "fs_max_pool_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0.win;
        let dy = host(s1, l1, self.name())?;
        let mask = &host(s2, l2, self.name())?[dy.len()..];
        let n = l1.dims()[0];
        let (img, out, plane) = (g.c * g.h * g.w, g.c * g.oh * g.ow, g.h * g.w);
        let mut dx = vec![0f32; n * img];
        dx.par_chunks_mut(img)
            .zip(dy.par_chunks(out))
            .zip(mask.par_chunks(out))
            .for_each(|((dxi, dyi), mi)| {
                let argmax: Vec<u32> = mi
                    .iter()
                    .enumerate()
                    .map(|(o, &m)| ((o / (g.oh * g.ow)) * plane + m as usize) as u32)
                    .collect();
                kernels::max_pool_backward(dyi, &argmax, dxi);
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.0.win;
        let dy = gpu::view(s1, l1)?;
        let saved = gpu::view(s2, l2)?;
        let mask = saved.slice(l1.shape().elem_count()..);
        let n = l1.dims()[0];
        let count = n * g.c * g.h * g.w;
        let dx = gpu::alloc(&s1.device, count)?;
        let f = s1
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = count as u32;
        b.arg(&n32);
        let d = self.0.dims();
        for v in &d {
            b.arg(v);
        }
        b.arg(&dy).arg(&mask).arg(&dx);
        gpu::launch(b, count)?;
        Ok((gpu::wrap(dx, &s1.device), Shape::from((n, g.c, g.h, g.w))))
    }
}

/// `(y, saved)` of cross-channel LRN over (N, C, H, W): the top, and the
/// top stacked with the scale `k + alpha/size * window sum of x²`.
pub fn lrn_forward(p: &Lrn, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    let both = x.contiguous()?.apply_op1_no_bwd(&LrnForward(*p))?;
    Ok((both.narrow(0, 0, n)?, both))
}

/// Caffe's LRN input gradient, from `saved` of [`lrn_forward`].
pub fn lrn_backward(p: &Lrn, x: &Tensor, saved: &Tensor, dy: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3_no_bwd(saved, &dy.contiguous()?, &LrnBackward(*p))?)
}

/// (channels, positions per channel) of an (N, C, ...) layout.
fn channels_plane(l: &Layout) -> (usize, usize) {
    let d = l.dims();
    (d[1], d[2..].iter().product())
}

struct LrnForward(Lrn);

impl CustomOp1 for LrnForward {
    fn name(&self) -> &'static str {
        "fs_lrn_forward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = host(s, l, self.name())?;
        let (c, plane) = channels_plane(l);
        let mut both = vec![0f32; 2 * x.len()];
        let (y, scale) = both.split_at_mut(x.len());
        y.par_chunks_mut(c * plane)
            .zip(scale.par_chunks_mut(c * plane))
            .zip(x.par_chunks(c * plane))
            .for_each(|((yi, si), xi)| kernels::lrn_forward(xi, c, plane, &self.0, yi, si));
        Ok((CpuStorage::F32(both), stacked(l)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let x = gpu::view(s, l)?;
        let count = l.shape().elem_count();
        let (c, plane) = channels_plane(l);
        let both = gpu::alloc(&s.device, 2 * count)?;
        let (y, scale) = (both.slice(..count), both.slice(count..));
        let f = s
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let columns = (count / c) as u32;
        let (c32, plane32, size) = (c as i32, plane as i32, self.0.size as i32);
        let a = self.0.alpha / self.0.size as f32;
        b.arg(&columns).arg(&c32).arg(&plane32).arg(&size);
        b.arg(&a).arg(&self.0.beta).arg(&self.0.k);
        b.arg(&x).arg(&y).arg(&scale);
        gpu::launch(b, count / c)?;
        Ok((gpu::wrap(both, &s.device), stacked(l)))
    }
}

/// The shape of two (N, ...) tensors stacked on the batch axis.
fn stacked(l: &Layout) -> Shape {
    let mut d = l.dims().to_vec();
    d[0] *= 2;
    Shape::from(d)
}

struct LrnBackward(Lrn);

#[cfg(feature = "cuda")]
impl LrnBackward {
    fn coeff(&self) -> f32 {
        2.0 * self.0.alpha * self.0.beta / self.0.size as f32
    }
}

impl CustomOp3 for LrnBackward {
    fn name(&self) -> &'static str {
        "fs_lrn_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = host(s1, l1, self.name())?;
        let (y, scale) = host(s2, l2, self.name())?.split_at(x.len());
        let dy = host(s3, l3, self.name())?;
        let (c, plane) = channels_plane(l1);
        let img = c * plane;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(img).enumerate().for_each(|(i, dxi)| {
            let r = i * img..(i + 1) * img;
            kernels::lrn_backward(
                &x[r.clone()],
                &y[r.clone()],
                &scale[r.clone()],
                &dy[r],
                c,
                plane,
                &self.0,
                dxi,
            )
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let count = l1.shape().elem_count();
        let x = gpu::view(s1, l1)?;
        let saved = gpu::view(s2, l2)?;
        let (y, scale) = (saved.slice(..count), saved.slice(count..));
        let dy = gpu::view(s3, l3)?;
        let (c, plane) = channels_plane(l1);
        let dx = gpu::alloc(&s1.device, count)?;
        let f = s1
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let columns = (count / c) as u32;
        let (c32, plane32, size) = (c as i32, plane as i32, self.0.size as i32);
        let coeff = self.coeff();
        b.arg(&columns).arg(&c32).arg(&plane32).arg(&size);
        b.arg(&self.0.beta).arg(&coeff);
        b.arg(&x).arg(&y).arg(&scale).arg(&dy).arg(&dx);
        gpu::launch(b, count / c)?;
        Ok((gpu::wrap(dx, &s1.device), l1.shape().clone()))
    }
}

/// Folds a column-matrix gradient `(N, C*kh*kw, OH*OW)` back onto the
/// input `(N, C, H, W)` of a convolution with geometry `win`.
pub fn col2im(win: &Window, cols: &Tensor) -> Result<Tensor> {
    Ok(cols.contiguous()?.apply_op1_no_bwd(&Col2Im(*win))?)
}

struct Col2Im(Window);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "fs_col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let cols = host(s, l, self.name())?;
        let n = l.dims()[0];
        let per_image = g.c * g.kh * g.kw * g.oh * g.ow;
        if cols.len() != n * per_image {
            bail!(
                "{}: {:?} is not (N, C*kh*kw, OH*OW) for {g:?}",
                self.name(),
                l.dims()
            );
        }
        let mut dx = vec![0f32; n * g.c * g.h * g.w];
        dx.par_chunks_mut(g.h * g.w)
            .enumerate()
            .for_each(|(i, out)| {
                let (img, c) = (i / g.c, i % g.c);
                let block = &cols[img * per_image..(img + 1) * per_image];
                kernels::col2im_plane(block, g, 1, 0, c, out);
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.0;
        let n = l.dims()[0];
        if l.shape().elem_count() != n * g.c * g.kh * g.kw * g.oh * g.ow {
            bail!(
                "{}: {:?} is not (N, C*kh*kw, OH*OW) for {g:?}",
                self.name(),
                l.dims()
            );
        }
        let cols = gpu::view(s, l)?;
        let count = n * g.c * g.h * g.w;
        let dx = gpu::alloc(&s.device, count)?;
        let f = s
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = count as u32;
        b.arg(&n32);
        let d = [
            g.c, g.h, g.w, g.kh, g.kw, g.ph, g.pw, g.sh, g.sw, g.dh, g.dw, g.oh, g.ow,
        ]
        .map(|v| v as i32);
        for v in &d {
            b.arg(v);
        }
        b.arg(&cols).arg(&dx);
        gpu::launch(b, count)?;
        Ok((gpu::wrap(dx, &s.device), Shape::from((n, g.c, g.h, g.w))))
    }
}

/// One parameter's SGD step (see [`ParamStep`]): the new history in one
/// kernel, then `w -= h`. Returns the new `(w, h)`.
pub fn sgd_step(
    w: &Tensor,
    grad: &Tensor,
    hist: &Tensor,
    step: &ParamStep,
) -> Result<(Tensor, Tensor)> {
    let w = w.contiguous()?;
    let h = w.apply_op3_no_bwd(&grad.contiguous()?, &hist.contiguous()?, &SgdHistory(*step))?;
    Ok(((w - &h)?, h))
}

struct SgdHistory(ParamStep);

impl CustomOp3 for SgdHistory {
    fn name(&self) -> &'static str {
        "fs_sgd_history"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, g, h) = (
            host(s1, l1, self.name())?,
            host(s2, l2, self.name())?,
            host(s3, l3, self.name())?,
        );
        let out: Vec<f32> = w
            .par_iter()
            .zip(g)
            .zip(h)
            .map(|((&w, &g), &h)| self.0.history(w, g, h))
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (w, g, h) = (gpu::view(s1, l1)?, gpu::view(s2, l2)?, gpu::view(s3, l3)?);
        let count = l1.shape().elem_count();
        let out = gpu::alloc(&s1.device, count)?;
        let f = s1
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = count as u32;
        let p = &self.0;
        let [(s1v, u1), (s2v, u2)] = p.grad_scale.map(|s| (s.unwrap_or(1.0), s.is_some() as i32));
        let l1flag = p.l1 as i32;
        b.arg(&n32).arg(&s1v).arg(&u1).arg(&s2v).arg(&u2);
        b.arg(&p.decay).arg(&l1flag).arg(&p.rate).arg(&p.momentum);
        b.arg(&w).arg(&g).arg(&h).arg(&out);
        gpu::launch(b, count)?;
        Ok((gpu::wrap(out, &s1.device), l1.shape().clone()))
    }
}

/// The inverted-dropout mask for forward pass `call` of a layer seeded with
/// `seed`, shaped like `like` and on its device: `1/(1-ratio)` where a unit
/// is kept, 0 where it is dropped. Word `e` of rand_chacha's ChaCha8 stream
/// `call` decides element `e`, on the CPU ([`dropout_mask_host`]) and on a
/// GPU (one kernel, nothing copied), so both drop the same units.
pub fn dropout_mask(like: &Tensor, seed: u64, call: u64, ratio: f32) -> Result<Tensor> {
    Ok(like.apply_op1_no_bwd(&DropoutMask { seed, call, ratio })?)
}

/// [`dropout_mask`] on the host: `n` values, drawn in parallel chunks (each
/// chunk jumps to its word position in the stream).
pub fn dropout_mask_host(n: usize, seed: u64, call: u64, ratio: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    const CHUNK: usize = 1 << 16;
    let scale = 1.0 / (1.0 - ratio);
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(call);
        rng.set_word_pos((i * CHUNK) as u128);
        for m in out {
            *m = if rng.random::<f32>() >= ratio {
                scale
            } else {
                0.0
            };
        }
    });
    mask
}

struct DropoutMask {
    seed: u64,
    call: u64,
    ratio: f32,
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "fs_dropout_mask"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().elem_count();
        let mask = dropout_mask_host(n, self.seed, self.call, self.ratio);
        Ok((CpuStorage::F32(mask), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use rand::SeedableRng;
        let n = l.shape().elem_count();
        let seed = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed).get_seed();
        let key: Vec<u32> = seed
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mask = gpu::alloc(&s.device, n)?;
        let f = s
            .device
            .get_or_load_custom_func(self.name(), gpu::MODULE, gpu::PTX)?;
        let mut b = f.builder();
        let n32 = n as u32;
        let (lo, hi) = (self.call as u32, (self.call >> 32) as u32);
        let scale = 1.0 / (1.0 - self.ratio);
        b.arg(&n32);
        for k in &key {
            b.arg(k);
        }
        b.arg(&lo).arg(&hi).arg(&self.ratio).arg(&scale).arg(&mask);
        gpu::launch(b, n.div_ceil(16))?;
        Ok((gpu::wrap(mask, &s.device), l.shape().clone()))
    }
}

/// Loading and launching the PTX that build.rs compiles from `fused.cu`.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, LaunchArgs, LaunchConfig,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
    use candle_core::{bail, Layout};

    /// The kernels of `fused.cu`, compiled by build.rs.
    pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    /// Module name under which the device caches them.
    pub const MODULE: &str = "flickr_style_fused";

    /// The contiguous f32 view of an operand.
    pub fn view<'a>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, f32>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("fused op: operand must be contiguous")
        };
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    /// An output buffer; every kernel writes all of it.
    pub fn alloc(dev: &CudaDevice, n: usize) -> candle_core::Result<CudaSlice<f32>> {
        // SAFETY: each kernel writes every element before anything reads it.
        unsafe { dev.alloc::<f32>(n) }
    }

    /// Launches over `n` elements (the kernels loop grid-stride).
    pub fn launch(mut b: LaunchArgs<'_>, n: usize) -> candle_core::Result<()> {
        if n == 0 {
            return Ok(());
        }
        const THREADS: u32 = 256;
        const MAX_BLOCKS: u32 = 65_535 * 8;
        // The kernels' grid-stride loops step a 32-bit index: it must not
        // wrap past 2^32 on its last step.
        if n as u64 + u64::from(THREADS * MAX_BLOCKS) > u64::from(u32::MAX) {
            bail!("fused op: {n} elements exceed the kernels' 32-bit indices");
        }
        let blocks = (n as u32).div_ceil(THREADS).min(MAX_BLOCKS);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument lists match fused.cu's signatures.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    pub fn wrap(s: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(s, dev.clone())
    }
}

#[cfg(test)]
mod tests {
    //! The CUDA kernels, compiled as host C++ by build.rs (one thread
    //! sweeping all elements), against the CPU twins the ops run on the CPU.
    //! The argument lists mirror the `cuda_fwd` launches above.
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    extern "C" {
        fn fs_relu_backward(n: u32, slope: f32, x: *const f32, dy: *const f32, dx: *mut f32);
        fn fs_max_pool_forward(
            n: u32,
            h: i32,
            w: i32,
            oh: i32,
            ow: i32,
            kh: i32,
            kw: i32,
            sh: i32,
            sw: i32,
            ph: i32,
            pw: i32,
            x: *const f32,
            y: *mut f32,
            mask: *mut f32,
        );
        fn fs_max_pool_backward(
            n: u32,
            h: i32,
            w: i32,
            oh: i32,
            ow: i32,
            kh: i32,
            kw: i32,
            sh: i32,
            sw: i32,
            ph: i32,
            pw: i32,
            dy: *const f32,
            mask: *const f32,
            dx: *mut f32,
        );
        fn fs_lrn_forward(
            n: u32,
            c: i32,
            plane: i32,
            size: i32,
            alpha_over_size: f32,
            beta: f32,
            k: f32,
            x: *const f32,
            y: *mut f32,
            scale: *mut f32,
        );
        fn fs_lrn_backward(
            n: u32,
            c: i32,
            plane: i32,
            size: i32,
            beta: f32,
            coeff: f32,
            x: *const f32,
            y: *const f32,
            scale: *const f32,
            dy: *const f32,
            dx: *mut f32,
        );
        fn fs_col2im(
            n: u32,
            c: i32,
            h: i32,
            w: i32,
            kh: i32,
            kw: i32,
            ph: i32,
            pw: i32,
            sh: i32,
            sw: i32,
            dh: i32,
            dw: i32,
            oh: i32,
            ow: i32,
            cols: *const f32,
            dx: *mut f32,
        );
        fn fs_dropout_mask(
            n: u32,
            k0: u32,
            k1: u32,
            k2: u32,
            k3: u32,
            k4: u32,
            k5: u32,
            k6: u32,
            k7: u32,
            stream_lo: u32,
            stream_hi: u32,
            ratio: f32,
            scale: f32,
            mask: *mut f32,
        );
        fn fs_sgd_history(
            n: u32,
            s1: f32,
            use_s1: i32,
            s2: f32,
            use_s2: i32,
            decay: f32,
            l1: i32,
            rate: f32,
            momentum: f32,
            w: *const f32,
            g: *const f32,
            h_in: *const f32,
            h_out: *mut f32,
        );
    }

    fn random(n: usize, seed: u64, quantise: bool) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let v: f32 = rng.random_range(-1.0..1.0);
                if quantise {
                    (v * 2.0).round().max(0.0)
                } else {
                    v
                }
            })
            .collect()
    }

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{what}[{i}]: kernel {a}, CPU twin {b}"
            );
        }
    }

    fn pool_window(c: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> Window {
        let out = |i: usize| kernels::pooled_size(i, k, p, s, true);
        Window::square(c, h, w, k, s, p, 1, (out(h), out(w)))
    }

    #[test]
    fn relu_backward_kernel_matches_its_twin() {
        for slope in [0.0f32, 0.1] {
            let (x, dy) = (random(500, 1, true), random(500, 2, false));
            let want = values(&relu_backward(&t(&x, &[500]), &t(&dy, &[500]), slope).unwrap());
            let mut got = vec![f32::NAN; 500];
            unsafe { fs_relu_backward(500, slope, x.as_ptr(), dy.as_ptr(), got.as_mut_ptr()) };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn max_pool_kernels_match_their_twins() {
        // CaffeNet pool1-like, a ceil overhang, padding with exact ties.
        for (win, ties) in [
            (pool_window(3, 13, 13, 3, 2, 0), false),
            (pool_window(2, 8, 9, 3, 2, 0), false),
            (pool_window(2, 9, 9, 3, 2, 1), true),
        ] {
            let n = 2;
            let x = random(n * win.c * win.h * win.w, 3, ties);
            let xt = t(&x, &[n, win.c, win.h, win.w]);
            let op = MaxPool { win };
            let (y, saved) = op.forward(&xt).unwrap();
            let saved_v = values(&saved);
            let count = n * win.c * win.oh * win.ow;
            let d = [
                win.h, win.w, win.oh, win.ow, win.kh, win.kw, win.sh, win.sw, win.ph, win.pw,
            ]
            .map(|v| v as i32);
            let (mut ky, mut kmask) = (vec![f32::NAN; count], vec![f32::NAN; count]);
            unsafe {
                fs_max_pool_forward(
                    count as u32,
                    d[0],
                    d[1],
                    d[2],
                    d[3],
                    d[4],
                    d[5],
                    d[6],
                    d[7],
                    d[8],
                    d[9],
                    x.as_ptr(),
                    ky.as_mut_ptr(),
                    kmask.as_mut_ptr(),
                )
            };
            assert_eq!(ky, values(&y), "{win:?} forward");
            assert_eq!(kmask, saved_v[count..].to_vec(), "{win:?} argmax");

            let dy = random(count, 4, false);
            let want = values(&op.backward(&saved, &t(&dy, y.dims())).unwrap());
            let mut dx = vec![f32::NAN; x.len()];
            unsafe {
                fs_max_pool_backward(
                    x.len() as u32,
                    d[0],
                    d[1],
                    d[2],
                    d[3],
                    d[4],
                    d[5],
                    d[6],
                    d[7],
                    d[8],
                    d[9],
                    dy.as_ptr(),
                    kmask.as_ptr(),
                    dx.as_mut_ptr(),
                )
            };
            assert_eq!(dx, want, "{win:?} backward");
        }
    }

    #[test]
    fn lrn_kernels_match_their_twins() {
        for (p, c) in [
            (
                Lrn {
                    size: 5,
                    alpha: 1e-4,
                    beta: 0.75,
                    k: 1.0,
                },
                7,
            ),
            (
                Lrn {
                    size: 3,
                    alpha: 1.0,
                    beta: 0.75,
                    k: 2.0,
                },
                4,
            ),
            (
                Lrn {
                    size: 5,
                    alpha: 0.5,
                    beta: 0.6,
                    k: 1.0,
                },
                2,
            ), // window wider than the channels
        ] {
            let (n, plane) = (2, 6);
            let x = random(n * c * plane, 5, false);
            let xt = t(&x, &[n, c, 2, 3]);
            let (y, saved) = lrn_forward(&p, &xt).unwrap();
            let saved_v = values(&saved);
            let count = x.len();
            let (mut ky, mut ks) = (vec![f32::NAN; count], vec![f32::NAN; count]);
            unsafe {
                fs_lrn_forward(
                    (count / c) as u32,
                    c as i32,
                    plane as i32,
                    p.size as i32,
                    p.alpha / p.size as f32,
                    p.beta,
                    p.k,
                    x.as_ptr(),
                    ky.as_mut_ptr(),
                    ks.as_mut_ptr(),
                )
            };
            assert_close(&ky, &values(&y), 1e-6, "LRN y");
            assert_eq!(ks, saved_v[count..].to_vec(), "LRN scale");

            let dy = random(count, 6, false);
            let want = values(&lrn_backward(&p, &xt, &saved, &t(&dy, xt.dims())).unwrap());
            let mut dx = vec![f32::NAN; count];
            let coeff = 2.0 * p.alpha * p.beta / p.size as f32;
            unsafe {
                fs_lrn_backward(
                    (count / c) as u32,
                    c as i32,
                    plane as i32,
                    p.size as i32,
                    p.beta,
                    coeff,
                    x.as_ptr(),
                    saved_v.as_ptr(),
                    saved_v[count..].as_ptr(),
                    dy.as_ptr(),
                    dx.as_mut_ptr(),
                )
            };
            assert_close(&dx, &want, 1e-6, "LRN dx");
        }
    }

    #[test]
    fn col2im_kernel_matches_its_twin() {
        let conv = |c, h, w, k, s, p, d| {
            let out = |i: usize| (i + 2 * p - (d * (k - 1) + 1)) / s + 1;
            Window::square(c, h, w, k, s, p, d, (out(h), out(w)))
        };
        for win in [
            conv(3, 15, 15, 5, 2, 1, 1),
            conv(3, 11, 10, 3, 2, 2, 2),
            conv(2, 11, 10, 3, 3, 0, 1),
        ] {
            let n = 2;
            let cols = random(n * win.c * win.kh * win.kw * win.oh * win.ow, 7, false);
            let ct = t(&cols, &[n, win.c * win.kh * win.kw, win.oh * win.ow]);
            let want = values(&col2im(&win, &ct).unwrap());
            let mut dx = vec![f32::NAN; n * win.c * win.h * win.w];
            let g = [
                win.c, win.h, win.w, win.kh, win.kw, win.ph, win.pw, win.sh, win.sw, win.dh,
                win.dw, win.oh, win.ow,
            ]
            .map(|v| v as i32);
            unsafe {
                fs_col2im(
                    dx.len() as u32,
                    g[0],
                    g[1],
                    g[2],
                    g[3],
                    g[4],
                    g[5],
                    g[6],
                    g[7],
                    g[8],
                    g[9],
                    g[10],
                    g[11],
                    g[12],
                    cols.as_ptr(),
                    dx.as_mut_ptr(),
                )
            };
            assert_close(&dx, &want, 1e-6, &format!("col2im {win:?}"));
        }
    }

    /// The kernel's ChaCha8 and the parallel host twin both reproduce
    /// rand_chacha's sequential stream, which is what the CPU path drew
    /// before either existed.
    #[test]
    fn dropout_mask_kernel_matches_rand_chacha() {
        for (n, seed, call, ratio) in [
            (1000usize, 7u64, 0u64, 0.5f32),
            (200_003, 11, 5, 0.3),
            (17, 1, 1 << 33, 0.9),
        ] {
            let scale = 1.0 / (1.0 - ratio);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(call);
            let sequential: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random::<f32>() >= ratio {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(dropout_mask_host(n, seed, call, ratio), sequential);
            let like = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
            assert_eq!(
                values(&dropout_mask(&like, seed, call, ratio).unwrap()),
                sequential
            );
            let key: Vec<u32> = rand_chacha::ChaCha8Rng::seed_from_u64(seed)
                .get_seed()
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let mut got = vec![f32::NAN; n];
            unsafe {
                fs_dropout_mask(
                    n as u32,
                    key[0],
                    key[1],
                    key[2],
                    key[3],
                    key[4],
                    key[5],
                    key[6],
                    key[7],
                    call as u32,
                    (call >> 32) as u32,
                    ratio,
                    scale,
                    got.as_mut_ptr(),
                )
            };
            assert_eq!(got, sequential, "n {n}, seed {seed}, call {call}");
            let kept = got.iter().filter(|&&m| m != 0.0).count() as f32 / n as f32;
            assert!((kept - (1.0 - ratio)).abs() < 0.1, "kept {kept}");
        }
    }

    #[test]
    fn sgd_history_kernel_matches_its_twin() {
        for (scales, l1, decay) in [
            (vec![], false, 5e-4f32),
            (vec![0.5f32, 0.25], true, 1e-3),
            (vec![0.7], false, 0.0),
        ] {
            let (w, g, h) = (
                random(300, 8, false),
                random(300, 9, false),
                random(300, 10, false),
            );
            let step = ParamStep {
                grad_scale: [scales.first().copied(), scales.get(1).copied()],
                decay,
                l1,
                rate: 0.01,
                momentum: 0.9,
            };
            let (nw, nh) = sgd_step(&t(&w, &[300]), &t(&g, &[300]), &t(&h, &[300]), &step).unwrap();
            let mut out = vec![f32::NAN; 300];
            let s = |i: usize| scales.get(i).map_or((1.0, 0), |&v| (v, 1));
            let ((s1, u1), (s2, u2)) = (s(0), s(1));
            unsafe {
                fs_sgd_history(
                    300,
                    s1,
                    u1,
                    s2,
                    u2,
                    decay,
                    l1 as i32,
                    0.01,
                    0.9,
                    w.as_ptr(),
                    g.as_ptr(),
                    h.as_ptr(),
                    out.as_mut_ptr(),
                )
            };
            assert_eq!(out, values(&nh));
            let w_new: Vec<f32> = w.iter().zip(&out).map(|(a, b)| a - b).collect();
            assert_eq!(w_new, values(&nw));
        }
    }
}
