//! The learner: Caffe's Net / Layer / Solver split on candle tensors.
//!
//! - [`layers`]: one type per Caffe layer, each with an explicit backward pass.
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
//! - [`evaluate`], [`confusion`]: a trained net's per-class report over its TEST data;
//!   [`tta`]: the flipped, turned and warped views it can average over; [`classify`]: predictions
//!   for new, unlabelled images; [`fusion`]: whether sizes and measurements add to the net's
//!   probabilities (cross-validated late fusion); [`compare`]: reports side by side.

pub mod abstention;
pub mod augment;
pub mod classify;
pub mod commands;
pub mod compare;
pub mod compute;
pub mod confusion;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod cyclic;
pub mod deploy;
pub mod depthwise;
pub mod evaluate;
pub mod explain;
pub mod features;
pub mod filler;
pub mod fused;
pub mod fusion;
pub mod gemm;
pub mod gray;
pub mod heads;
pub mod kernels;
pub mod layers;
pub mod lbfgs;
pub mod log;
pub mod lr_policy;
pub mod memory;
pub mod net;
pub mod op_check;
pub mod plot;
pub mod precision;
pub mod probe;
pub mod sgd;
pub mod solver;
pub mod summary;
pub mod tensor_ops;
pub mod training_log;
pub mod transform;
pub mod tta;
