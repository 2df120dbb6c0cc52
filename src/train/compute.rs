//! Where a net computes: the CPU (hand-written kernels) or a CUDA GPU
//! (candle tensor ops), chosen by `--gpu N` or the solver's `solver_mode`.
use crate::caffe::proto::{solver_parameter::SolverMode, SolverParameter};
use crate::error::{Error, Result};
use candle_core::Device;

/// What a training run asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU, whatever the solver says.
    Cpu,
    /// This GPU (`--gpu N`).
    Gpu(usize),
    /// The solver's `solver_mode` and `device_id`, as `caffe train` does.
    FromSolver,
}

/// A device plus the way layers compute on it.
#[derive(Clone, Debug)]
pub struct Compute {
    /// Where tensors live.
    pub device: Device,
    /// Use the device-generic tensor ops even on the CPU (a GPU always
    /// does); this runs the GPU code path on the CPU, for tests and checks.
    pub tensor_ops: bool,
    /// With tensor ops, use the fused kernels ([`crate::train::fused`])
    /// where a layer has one: on a GPU unless `FLICKR_STYLE_NO_FUSED` is
    /// set; on the CPU it runs their CPU twins (for tests).
    pub fused: bool,
    /// With tensor ops, convolutions and inner products compute in bf16
    /// mixed precision ([`crate::train::precision`]); off by default, so
    /// the fp32 path stays Caffe-faithful.
    pub bf16: bool,
    /// On a GPU, convolutions run on cuDNN: in builds with the `cudnn`
    /// feature, unless `FLICKR_STYLE_NO_CUDNN` is set.
    pub cudnn: bool,
}

impl Compute {
    /// The CPU with its kernels.
    pub fn cpu() -> Self {
        Compute {
            device: Device::Cpu,
            tensor_ops: false,
            fused: false,
            bf16: false,
            cudnn: false,
        }
    }

    /// GPU `ordinal`; an error in a build without the `cuda` feature or when
    /// no such device can be opened.
    pub fn gpu(ordinal: usize) -> Result<Self> {
        Ok(Compute {
            device: open_gpu(ordinal)?,
            tensor_ops: true,
            fused: crate::train::fused::enabled_by_env(),
            bf16: false,
            cudnn: cudnn_by_env(),
        })
    }

    /// Switches bf16 mixed precision on or off. An error on the CPU
    /// kernels, which compute in fp32 (and where bf16 would only be
    /// slower); the tensor-op path on the CPU accepts it, for tests.
    pub fn with_bf16(mut self, on: bool) -> Result<Self> {
        if on && !self.tensor_ops && self.device.is_cpu() {
            return Err(Error::invalid(
                "--bf16",
                "bf16 mixed precision is a GPU mode: train on a GPU (--gpu N, in a build with --features cuda); the CPU kernels compute in fp32",
            ));
        }
        self.bf16 = on;
        Ok(self)
    }

    /// The device `choice` names. `FromSolver` does what `caffe train`
    /// does: GPU `device_id` when `solver_mode` is GPU (its default); a
    /// build without CUDA runs such a solver on the CPU (the caller logs it).
    pub fn for_solver(choice: DeviceChoice, param: &SolverParameter) -> Result<Self> {
        match choice {
            DeviceChoice::Gpu(n) => Self::gpu(n),
            DeviceChoice::FromSolver if cuda_built() && param.solver_mode() == SolverMode::Gpu => {
                Self::gpu(param.device_id().max(0) as usize)
            }
            _ => Ok(Self::cpu()),
        }
    }

    /// "CPU", "CPU (tensor ops)" or "GPU 0".
    pub fn describe(&self) -> String {
        let bf16 = if self.bf16 {
            ", bf16 mixed precision"
        } else {
            ""
        };
        match (&self.device, self.tensor_ops, self.fused) {
            (Device::Cpu, false, _) => "CPU".into(),
            (Device::Cpu, true, false) => format!("CPU (tensor ops, the GPU code path{bf16})"),
            (Device::Cpu, true, true) => {
                format!("CPU (tensor ops with the fused ops' CPU twins, the GPU code path{bf16})")
            }
            (d, _, fused) => match d.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => {
                    let tf32 = candle_core::cuda::gemm_reduced_precision_f32();
                    let mut notes = Vec::new();
                    if self.bf16 {
                        notes.push("bf16 mixed precision");
                    }
                    if tf32 {
                        notes.push("TF32 matrix products");
                    }
                    if !fused {
                        notes.push("fused kernels off");
                    }
                    if self.cudnn {
                        notes.push("cuDNN convolutions");
                    }
                    if notes.is_empty() {
                        format!("GPU {gpu_id}")
                    } else {
                        format!("GPU {gpu_id} ({})", notes.join(", "))
                    }
                }
                other => format!("{other:?}"),
            },
        }
    }
}

/// Lets cuBLAS use TF32 for f32 matrix products (about twice as fast on
/// Ampere and later, ~1e-3 relative error) — off by default, so the fp32
/// path stays Caffe-faithful. Affects GPU runs only.
pub fn set_tf32(enabled: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(enabled);
}

/// Whether GPU nets convolve with cuDNN: builds with the `cudnn` feature,
/// unless `FLICKR_STYLE_NO_CUDNN` is set.
fn cudnn_by_env() -> bool {
    #[cfg(feature = "cudnn")]
    return crate::train::cudnn::enabled_by_env();
    #[cfg(not(feature = "cudnn"))]
    false
}

/// Whether this binary was built with the `cuda` feature.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(feature = "cuda")]
fn open_gpu(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // The driver's answer is the message; a backtrace would bury it.
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        Error::invalid(
            format!("GPU {ordinal}"),
            format!("cannot open the CUDA device ({e}); check the driver and CUDA_VISIBLE_DEVICES, or train on the CPU (no --gpu; --cpu for a solver_mode: GPU solver)"),
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn open_gpu(ordinal: usize) -> Result<Device> {
    Err(Error::invalid(
        format!("GPU {ordinal}"),
        "this binary was built without CUDA support; rebuild with `cargo build --release --features cuda` (see the GPU section of README.md), or run without --gpu to use the CPU",
    ))
}
