//! The learner: Caffe's Net / Layer / Solver split on candle tensors.
//!
//! - [`layers`]: one type per Caffe layer, each with an explicit backward pass; [`net`]: the
//!   layers wired into a net; [`solver`], [`sgd`], [`lr_policy`]: Caffe's training loop and
//!   update rules; [`probe`]: a classifier trained on saved features.
//! - [`kernels`]: CPU kernels for what candle lacks (pooling with argmax, LRN, im2col).
//! - [`tensor_ops`]: the same computations as candle tensor ops, for GPU nets.
//! - [`fused`]: single-kernel versions of the hot ones (CUDA, with CPU twins).
//! - `cudnn` (with the `cudnn` feature): cuDNN convolutions for GPU nets.
//! - [`precision`]: fp32 or bf16 mixed-precision matrix products.
//! - [`filler`], [`transform`]: parameter initialisation and Caffe's data transformer;
//!   [`augment`]: random affine warps of training images (beyond Caffe); [`gray`]: one-channel
//!   nets for gray data with the first filters summed, [`cyclic`]: cyclic pooling over quarter
//!   turns (both beyond Caffe).
//! - [`memory`]: whether a CPU net fits the machine; fallible scratch buffers.
//!
//! What a trained net is used for lives in [`crate::inference`], and the
//! reports and plots made from its outputs in [`crate::analysis`].

pub mod augment;
pub mod commands;
pub mod compute;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod cyclic;
pub mod depthwise;
pub mod filler;
pub mod fused;
pub mod gemm;
pub mod gray;
pub mod heads;
pub mod kernels;
pub mod layers;
pub mod log;
pub mod lr_policy;
pub mod memory;
pub mod net;
pub mod op_check;
pub mod precision;
pub mod probe;
pub mod sgd;
pub mod solver;
pub mod summary;
pub mod tensor_ops;
pub mod transform;
