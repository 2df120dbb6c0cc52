//! cuDNN convolutions for nets on a CUDA GPU, in builds with the `cudnn`
//! feature: the forward pass and both backward passes (data and filter),
//! called through cudarc's cuDNN bindings on candle's stream. The bias, the
//! bf16 casts and everything else stay in [`super::tensor_ops`].
//!
//! Two rules keep runs Caffe-faithful and repeatable:
//! - strict fp32 (no `--tf32`, no `--bf16`) admits only FMA arithmetic and
//!   only the direct and GEMM-family algorithms, which differ from Caffe
//!   only in the order of the sums: cuDNN's default math would use TF32
//!   tensor cores for fp32 on Ampere and later, and its FFT and Winograd
//!   transforms add rounding of their own;
//! - only deterministic algorithms, so a resumed run repeats the same sums.
//!
//! Of the algorithms cuDNN's heuristics rank for a shape (the `_v7`
//! queries), the first one these rules allow is taken and cached, with the
//! handle, per thread (cuDNN handles are neither `Send` nor `Sync`).
//! `FLICKR_STYLE_NO_CUDNN=1` switches back to candle's im2col path.
use super::precision::Precision;
use super::tensor_ops::ConvGeom;
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys, CudnnError};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::Arc;

/// Environment variable that keeps a `cudnn` build on candle's im2col
/// convolutions (to compare, or if a cuDNN version misbehaves).
pub const DISABLE_ENV: &str = "FLICKR_STYLE_NO_CUDNN";

/// Whether GPU nets should use cuDNN for convolutions (on unless
/// [`DISABLE_ENV`] is set).
pub fn enabled_by_env() -> bool {
    std::env::var_os(DISABLE_ENV).is_none()
}

/// The most workspace one algorithm may take.
const WORKSPACE_LIMIT: usize = 1 << 30;

/// `y = conv(x, w)` without the bias, in `g`'s precision.
pub fn conv_forward(x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let spec = Spec::new(x.dims4()?, w.dims4()?, g);
    apply(Pass::Forward, spec, x, w, g.precision)
}

/// The input gradient of [`conv_forward`] for an input of `x_dims`.
pub fn conv_backward_data(
    dy: &Tensor,
    w: &Tensor,
    x_dims: (usize, usize, usize, usize),
    g: &ConvGeom,
) -> Result<Tensor> {
    let spec = Spec::new(x_dims, w.dims4()?, g);
    apply(Pass::BackwardData, spec, dy, w, g.precision)
}

/// The weight gradient of [`conv_forward`] for weights of `w_dims`.
pub fn conv_backward_filter(
    x: &Tensor,
    dy: &Tensor,
    w_dims: (usize, usize, usize, usize),
    g: &ConvGeom,
) -> Result<Tensor> {
    let spec = Spec::new(x.dims4()?, w_dims, g);
    apply(Pass::BackwardFilter, spec, x, dy, g.precision)
}

/// Runs `pass` on operands `a`, `b` (see [`Pass`]), in bf16 when asked
/// (inputs and result rounded, fp32 accumulation), returning fp32.
fn apply(pass: Pass, spec: Spec, a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    let operand = |t: &Tensor| -> Result<Tensor> {
        Ok(match precision {
            Precision::F32 => t.contiguous()?,
            Precision::Bf16 => t.to_dtype(DType::BF16)?.contiguous()?,
        })
    };
    let out = operand(a)?.apply_op2_no_bwd(&operand(b)?, &CudnnConv { pass, spec })?;
    Ok(out.to_dtype(DType::F32)?)
}

/// Which of the three convolution computations, and so what the operands are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pass {
    /// `(x, w) -> y`.
    Forward,
    /// `(dy, w) -> dx`.
    BackwardData,
    /// `(x, dy) -> dw`.
    BackwardFilter,
}

/// A convolution's shapes and geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Spec {
    x: [usize; 4],
    w: [usize; 4],
    /// (height, width).
    pad: (usize, usize),
    stride: usize,
    dilation: usize,
    group: usize,
}

impl Spec {
    fn new(x: (usize, usize, usize, usize), w: (usize, usize, usize, usize), g: &ConvGeom) -> Self {
        Spec {
            x: [x.0, x.1, x.2, x.3],
            w: [w.0, w.1, w.2, w.3],
            pad: g.pad,
            stride: g.stride,
            dilation: g.dilation,
            group: g.group,
        }
    }

    fn y(&self) -> [usize; 4] {
        let out = |size: usize, pad: usize, k: usize| {
            (size + 2 * pad).saturating_sub(self.dilation * (k - 1) + 1) / self.stride + 1
        };
        [
            self.x[0],
            self.w[0],
            out(self.x[2], self.pad.0, self.w[2]),
            out(self.x[3], self.pad.1, self.w[3]),
        ]
    }

    /// The dims of a pass's operands and result.
    fn dims(&self, pass: Pass) -> [[usize; 4]; 3] {
        match pass {
            Pass::Forward => [self.x, self.w, self.y()],
            Pass::BackwardData => [self.y(), self.w, self.x],
            Pass::BackwardFilter => [self.x, self.y(), self.w],
        }
    }
}

struct CudnnConv {
    pass: Pass,
    spec: Spec,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "cudnn_conv_forward",
            Pass::BackwardData => "cudnn_conv_backward_data",
            Pass::BackwardFilter => "cudnn_conv_backward_filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("{}: cuDNN runs only on a CUDA device", self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let [da, db, dout] = self.spec.dims(self.pass);
        if la.dims() != da || lb.dims() != db {
            bail!(
                "{}: operands {:?} and {:?}, expected {da:?} and {db:?}",
                self.name(),
                la.dims(),
                lb.dims()
            );
        }
        let out = match (a.dtype(), b.dtype()) {
            (DType::F32, DType::F32) => self.run::<f32>(a, la, b, lb)?,
            (DType::BF16, DType::BF16) => self.run::<half::bf16>(a, la, b, lb)?,
            (x, y) => bail!("{}: unsupported dtypes {x:?}, {y:?}", self.name()),
        };
        Ok((out, Shape::from(dout.to_vec())))
    }
}

/// One thread's cuDNN handle for one stream, with the algorithms chosen
/// so far.
struct Handle {
    raw: sys::cudnnHandle_t,
    chosen: HashMap<(Pass, Spec, DType, bool), Choice>,
    /// Held so the stream, whose address is the key, outlives the handle.
    _stream: Arc<CudaStream>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Errors here (a context already gone at exit) cannot be acted on.
        let _ = unsafe { result::destroy_handle(self.raw) };
    }
}

thread_local! {
    /// Keyed by the CUDA stream's address.
    static HANDLES: RefCell<HashMap<usize, Handle>> = RefCell::new(HashMap::new());
}

#[derive(Clone, Copy, Debug)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

#[derive(Clone, Copy, Debug)]
struct Choice {
    algo: Algo,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

/// The four descriptors of one convolution, destroyed on drop.
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        unsafe {
            if !self.x.is_null() {
                let _ = result::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = result::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

fn dims_i32(d: [usize; 4]) -> [i32; 4] {
    d.map(|v| v as i32)
}

impl Descriptors {
    fn new(
        spec: &Spec,
        dtype: sys::cudnnDataType_t,
        math: sys::cudnnMathType_t,
    ) -> std::result::Result<Self, CudnnError> {
        use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // Null until created, so a failure half-way frees what exists.
        let mut d = Descriptors {
            x: null_mut(),
            y: null_mut(),
            w: null_mut(),
            conv: null_mut(),
        };
        let (ph, pw) = (spec.pad.0 as i32, spec.pad.1 as i32);
        let (s, dl) = (spec.stride as i32, spec.dilation as i32);
        unsafe {
            d.x = result::create_tensor_descriptor()?;
            result::set_tensor4d_descriptor(d.x, CUDNN_TENSOR_NCHW, dtype, dims_i32(spec.x))?;
            d.y = result::create_tensor_descriptor()?;
            result::set_tensor4d_descriptor(d.y, CUDNN_TENSOR_NCHW, dtype, dims_i32(spec.y()))?;
            d.w = result::create_filter_descriptor()?;
            result::set_filter4d_descriptor(d.w, dtype, CUDNN_TENSOR_NCHW, dims_i32(spec.w))?;
            d.conv = result::create_convolution_descriptor()?;
            // Products accumulate in fp32 for every input type.
            result::set_convolution2d_descriptor(
                d.conv,
                ph,
                pw,
                s,
                s,
                dl,
                dl,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )?;
            result::set_convolution_group_count(d.conv, spec.group as i32)?;
            result::set_convolution_math_type(d.conv, math)?;
        }
        Ok(d)
    }
}

impl Algo {
    /// Whether the algorithm computes through an FFT or Winograd transform
    /// (extra rounding) rather than directly or as a matrix product.
    fn transforms(self) -> bool {
        use sys::cudnnConvolutionBwdDataAlgo_t as D;
        use sys::cudnnConvolutionBwdFilterAlgo_t as W;
        use sys::cudnnConvolutionFwdAlgo_t as F;
        match self {
            Algo::Forward(a) => !matches!(
                a,
                F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM
                    | F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
                    | F::CUDNN_CONVOLUTION_FWD_ALGO_GEMM
                    | F::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT
            ),
            Algo::BackwardData(a) => !matches!(
                a,
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 | D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1
            ),
            Algo::BackwardFilter(a) => !matches!(
                a,
                W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
                    | W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1
                    | W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
            ),
        }
    }
}

/// Whether a ranked algorithm may run: it works, is deterministic, and in
/// strict fp32 is no tensor-core kernel and no transform. (Strict runs
/// set `CUDNN_FMA_MATH` whatever math type the ranking reports, so an
/// algorithm reported with the default math still computes in FMA.)
fn allowed(
    algo: Algo,
    status: sys::cudnnStatus_t,
    determinism: sys::cudnnDeterminism_t,
    math: sys::cudnnMathType_t,
    strict: bool,
) -> bool {
    status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        && determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
        && (!strict || (!tensor_cores(math) && !algo.transforms()))
}

/// Whether a math type is one of the tensor-core ones.
fn tensor_cores(math: sys::cudnnMathType_t) -> bool {
    matches!(
        math,
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
    )
}

/// cuDNN's ranked algorithms for `pass`, as (algorithm, math type) in
/// rank order, keeping only the [`allowed`] ones.
fn ranked(
    h: sys::cudnnHandle_t,
    d: &Descriptors,
    pass: Pass,
    strict: bool,
) -> std::result::Result<Vec<(Algo, sys::cudnnMathType_t)>, CudnnError> {
    const MAX: usize = 16;
    let mut count = 0i32;
    // The three queries differ only in their types and descriptor order.
    macro_rules! query {
        ($perf:ty, $get:path, $variant:path, $($desc:expr),+) => {{
            let mut perf: [$perf; MAX] = std::mem::zeroed();
            $get(h, $($desc),+, MAX as i32, &mut count, perf.as_mut_ptr())?;
            perf[..count.clamp(0, MAX as i32) as usize]
                .iter()
                .map(|p| ($variant(p.algo), p.mathType, p.status, p.determinism))
                .filter(|&(algo, math, status, det)| allowed(algo, status, det, math, strict))
                .map(|(algo, math, _, _)| (algo, math))
                .collect()
        }};
    }
    // SAFETY: the descriptors are live and the arrays hold MAX results.
    Ok(unsafe {
        match pass {
            Pass::Forward => query!(
                sys::cudnnConvolutionFwdAlgoPerf_t,
                result::get_convolution_forward_algorithm,
                Algo::Forward,
                d.x,
                d.w,
                d.conv,
                d.y
            ),
            Pass::BackwardData => query!(
                sys::cudnnConvolutionBwdDataAlgoPerf_t,
                result::get_convolution_backward_data_algorithm,
                Algo::BackwardData,
                d.w,
                d.y,
                d.conv,
                d.x
            ),
            Pass::BackwardFilter => query!(
                sys::cudnnConvolutionBwdFilterAlgoPerf_t,
                result::get_convolution_backward_filter_algorithm,
                Algo::BackwardFilter,
                d.x,
                d.y,
                d.conv,
                d.w
            ),
        }
    })
}

/// The workspace `algo` needs with the descriptor's current math type.
fn workspace(
    h: sys::cudnnHandle_t,
    d: &Descriptors,
    algo: Algo,
) -> std::result::Result<usize, CudnnError> {
    unsafe {
        match algo {
            Algo::Forward(a) => {
                result::get_convolution_forward_workspace_size(h, d.x, d.w, d.conv, d.y, a)
            }
            Algo::BackwardData(a) => {
                result::get_convolution_backward_data_workspace_size(h, d.w, d.y, d.conv, d.x, a)
            }
            Algo::BackwardFilter(a) => {
                result::get_convolution_backward_filter_workspace_size(h, d.x, d.y, d.conv, d.w, a)
            }
        }
    }
}

/// The first allowed algorithm that accepts its math type and whose
/// workspace fits [`WORKSPACE_LIMIT`].
fn choose(
    h: sys::cudnnHandle_t,
    d: &Descriptors,
    pass: Pass,
    strict: bool,
) -> std::result::Result<Option<Choice>, CudnnError> {
    for (algo, reported) in ranked(h, d, pass, strict)? {
        let math = if strict {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            reported
        };
        // The math type is part of the algorithm: set it before asking
        // for the workspace, as before running. An algorithm that refuses
        // the pair is passed over.
        unsafe { result::set_convolution_math_type(d.conv, math)? };
        let Ok(bytes) = workspace(h, d, algo) else {
            continue;
        };
        if bytes <= WORKSPACE_LIMIT {
            return Ok(Some(Choice {
                algo,
                math,
                workspace: bytes,
            }));
        }
    }
    Ok(None)
}

fn cudnn_err(op: &str, e: CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: cuDNN error {e}"))
}

/// The contiguous values of an operand.
fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let Some((from, to)) = l.contiguous_offsets() else {
        bail!("{op}: operand must be contiguous")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(from..to))
}

/// A device pointer as cuDNN takes it.
fn raw(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

impl CudnnConv {
    fn run<T: WithDType + CudaDType + DeviceRepr>(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let op = self.name();
        let (av, bv) = (view::<T>(a, la, op)?, view::<T>(b, lb, op)?);
        let dev = &a.device;
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().w()?;
        let is_f32 = T::DTYPE == DType::F32;
        let dtype = if is_f32 {
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT
        } else {
            sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16
        };
        // TF32 only when the user allowed it for fp32; bf16 inputs use tensor cores.
        let strict = is_f32 && !candle_core::cuda::gemm_reduced_precision_f32();
        let math = if strict {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        };
        let d = Descriptors::new(&self.spec, dtype, math).map_err(|e| cudnn_err(op, e))?;
        let count: usize = self.spec.dims(self.pass)[2].iter().product();
        // SAFETY: with beta = 0 cuDNN writes every element of the result
        // without reading it, and never reads workspace it did not write.
        let mut out: CudaSlice<T> = unsafe { stream.alloc::<T>(count) }.w()?;
        with_handle(&stream, op, |h| {
            let key = (self.pass, self.spec, T::DTYPE, strict);
            let choice = match h.chosen.get(&key) {
                Some(c) => *c,
                None => {
                    let c = choose(h.raw, &d, self.pass, strict)
                        .map_err(|e| cudnn_err(op, e))?
                        .ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "{op}: cuDNN offers no deterministic{} algorithm within {} MiB of workspace for {:?}; set {DISABLE_ENV}=1 to use the im2col convolution",
                                if strict { " exact fp32 (FMA, no FFT/Winograd)" } else { "" },
                                WORKSPACE_LIMIT >> 20,
                                self.spec
                            ))
                        })?;
                    h.chosen.insert(key, c);
                    c
                }
            };
            unsafe { result::set_convolution_math_type(d.conv, choice.math) }
                .map_err(|e| cudnn_err(op, e))?;
            let mut ws: Option<CudaSlice<u8>> = if choice.workspace > 0 {
                Some(unsafe { stream.alloc::<u8>(choice.workspace) }.w()?)
            } else {
                None
            };
            // Scaling factors are f32 for f32 and bf16 data alike.
            let (one, zero) = (1f32, 0f32);
            let alpha = &one as *const f32 as *const c_void;
            let beta = &zero as *const f32 as *const c_void;
            let (pa, _ga) = av.device_ptr(&stream);
            let (pb, _gb) = bv.device_ptr(&stream);
            let (po, _go) = out.device_ptr_mut(&stream);
            let (pw, _gw) = match ws.as_mut() {
                Some(w) => {
                    let (p, g) = w.device_ptr_mut(&stream);
                    (raw(p), Some(g))
                }
                None => (null_mut(), None),
            };
            let bytes = choice.workspace;
            // SAFETY: the descriptors describe exactly these contiguous
            // buffers (checked against the spec above), all on `stream`.
            unsafe {
                match choice.algo {
                    Algo::Forward(algo) => result::convolution_forward(
                        h.raw,
                        alpha,
                        d.x,
                        raw(pa),
                        d.w,
                        raw(pb),
                        d.conv,
                        algo,
                        pw,
                        bytes,
                        beta,
                        d.y,
                        raw(po),
                    ),
                    Algo::BackwardData(algo) => result::convolution_backward_data(
                        h.raw,
                        alpha,
                        d.w,
                        raw(pb),
                        d.y,
                        raw(pa),
                        d.conv,
                        algo,
                        pw,
                        bytes,
                        beta,
                        d.x,
                        raw(po),
                    ),
                    Algo::BackwardFilter(algo) => result::convolution_backward_filter(
                        h.raw,
                        alpha,
                        d.x,
                        raw(pa),
                        d.y,
                        raw(pb),
                        d.conv,
                        algo,
                        pw,
                        bytes,
                        beta,
                        d.w,
                        raw(po),
                    ),
                }
            }
            .map_err(|e| cudnn_err(op, e))
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// Calls `f` with this thread's handle for `stream`, creating it first.
fn with_handle<R>(
    stream: &Arc<CudaStream>,
    op: &str,
    f: impl FnOnce(&mut Handle) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let handle = match handles.entry(stream.cu_stream() as usize) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let handle = Handle {
                    raw: result::create_handle().map_err(|e| cudnn_err(op, e))?,
                    chosen: HashMap::new(),
                    _stream: stream.clone(),
                };
                unsafe { result::set_stream(handle.raw, stream.cu_stream() as *mut _) }
                    .map_err(|e| cudnn_err(op, e))?;
                e.insert(handle)
            }
        };
        f(handle)
    })
}

#[cfg(test)]
mod tests {
    //! What can be checked without a GPU: shapes, the algorithm rules and
    //! the CPU refusal. `check-ops --gpu N` compares the cuDNN passes with
    //! the CPU kernels on a GPU.
    use super::*;
    use sys::cudnnConvolutionBwdFilterAlgo_t as W;
    use sys::cudnnConvolutionFwdAlgo_t as F;
    use sys::cudnnDeterminism_t::{CUDNN_DETERMINISTIC, CUDNN_NON_DETERMINISTIC};
    use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
    use sys::cudnnStatus_t::{CUDNN_STATUS_NOT_SUPPORTED, CUDNN_STATUS_SUCCESS};

    fn geom(pad: usize, stride: usize, dilation: usize, group: usize) -> ConvGeom {
        ConvGeom {
            group,
            pad: (pad, pad),
            stride,
            dilation,
            precision: Precision::F32,
            cudnn: true,
        }
    }

    #[test]
    fn output_shapes_follow_caffe_rounding() {
        // CaffeNet conv1: 227 -> 55.
        let conv1 = Spec::new((2, 3, 227, 227), (96, 3, 11, 11), &geom(0, 4, 1, 1));
        assert_eq!(conv1.y(), [2, 96, 55, 55]);
        // Padded, strided, dilated (extent 5), floor rounding: 11 -> 6, 10 -> 5.
        let dilated = Spec::new((1, 4, 11, 10), (6, 2, 3, 3), &geom(2, 2, 2, 2));
        assert_eq!(dilated.y(), [1, 6, 6, 5]);
        // Each pass's operands and result.
        let [a, b, out] = dilated.dims(Pass::BackwardFilter);
        assert_eq!((a, b, out), ([1, 4, 11, 10], [1, 6, 6, 5], [6, 2, 3, 3]));
        let [a, b, out] = dilated.dims(Pass::BackwardData);
        assert_eq!((a, b, out), ([1, 6, 6, 5], [6, 2, 3, 3], [1, 4, 11, 10]));
    }

    #[test]
    fn strict_fp32_takes_only_deterministic_fma_algorithms_without_transforms() {
        let gemm = Algo::Forward(F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
        let winograd = Algo::Forward(F::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED);
        let filter0 = Algo::BackwardFilter(W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
        let ok = CUDNN_STATUS_SUCCESS;
        assert!(allowed(gemm, ok, CUDNN_DETERMINISTIC, CUDNN_FMA_MATH, true));
        // Reported with the default math, it still runs under FMA math.
        assert!(allowed(
            gemm,
            ok,
            CUDNN_DETERMINISTIC,
            CUDNN_DEFAULT_MATH,
            true
        ));
        assert!(!allowed(
            gemm,
            ok,
            CUDNN_DETERMINISTIC,
            CUDNN_TENSOR_OP_MATH,
            true
        ));
        assert!(!allowed(
            winograd,
            ok,
            CUDNN_DETERMINISTIC,
            CUDNN_FMA_MATH,
            true
        ));
        assert!(!allowed(
            filter0,
            ok,
            CUDNN_NON_DETERMINISTIC,
            CUDNN_FMA_MATH,
            false
        ));
        let failed = CUDNN_STATUS_NOT_SUPPORTED;
        assert!(!allowed(
            gemm,
            failed,
            CUDNN_DETERMINISTIC,
            CUDNN_FMA_MATH,
            false
        ));
        // TF32 or bf16: tensor cores and transforms are fine, determinism is still required.
        assert!(allowed(
            winograd,
            ok,
            CUDNN_DETERMINISTIC,
            CUDNN_TENSOR_OP_MATH,
            false
        ));
    }

    #[test]
    fn cpu_tensors_are_refused_with_a_clear_error() {
        let x = Tensor::zeros((1, 1, 5, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((1, 1, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = conv_forward(&x, &w, &geom(0, 1, 1, 1)).unwrap_err();
        assert!(
            err.to_string().contains("cuDNN runs only on a CUDA device"),
            "{err}"
        );
    }
}
