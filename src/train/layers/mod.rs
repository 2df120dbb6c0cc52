//! Layers, Caffe's way: each has a setup that infers top shapes from bottom
//! shapes, a forward pass, and an explicit backward pass that computes only
//! the gradients the net asks for (no gradient for a frozen parameter, none
//! for a bottom that does not need one).

mod argmax;
mod batch_norm;
mod batch_reindex;
mod bias;
mod concat;
mod contrastive;
mod conv;
mod crop;
mod cyclic;
mod data;
mod deconv;
mod eltwise;
mod embed;
mod euclidean;
mod filter;
mod hdf5_data;
pub use hdf5_data::row_shape as hdf5_row_shape;
mod hdf5_output;
mod hinge;
mod im2col;
mod infogain;
mod inner_product;
mod loss;
mod lrn;
mod lrn_within;
mod lstm_unit;
mod multinomial_logistic;
mod mvn;
mod neuron;
mod parameter;
mod pool;
mod prelu;
mod recurrent;
mod reduction;
mod reshape;
mod scale;
mod sigmoid_loss;
mod simple;
mod slice;
mod spp;
mod staging;
mod window_data;

use crate::caffe::proto::{lrn_parameter::NormRegion, LayerParameter, Phase};
use crate::error::{Error, Result};
use crate::train::precision::Precision;
use candle_core::{Device, Tensor};

/// What a layer's backward pass is given and asked for.
pub struct BackwardArgs<'a> {
    /// Inputs of the forward pass.
    pub bottom: &'a [Tensor],
    /// Outputs of the forward pass.
    pub top: &'a [Tensor],
    /// Gradient of the loss with respect to each top (`None` = zero).
    pub top_diff: &'a [Option<Tensor>],
    /// Which bottoms need a gradient.
    pub propagate: &'a [bool],
    /// Which parameters need a gradient (false for `lr_mult: 0`).
    pub param_grad: &'a [bool],
}

/// Gradients for the bottoms and the parameters (`None` where not asked).
pub type Grads = (Vec<Option<Tensor>>, Vec<Option<Tensor>>);

/// One layer of a net.
pub trait Layer: Send {
    /// Caffe's type string.
    fn type_name(&self) -> &'static str;
    /// Top shapes for these bottom shapes; called once when the net is built.
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>>;
    /// Whether the layer can follow a Filter: take bottoms whose first axis
    /// (the items) changes from one pass to the next, as every Caffe layer
    /// reshapes before each pass. Only layers whose shapes, bookkeeping and
    /// kernels have been checked for that say yes.
    fn any_batch(&self) -> bool {
        false
    }
    /// For a layer that says [`Layer::any_batch`]: updates what it derived
    /// from its bottoms' shapes before a pass whose bottoms differ from the
    /// last pass's, and returns the new top shapes. The default runs
    /// `setup` again, right for layers without learnable blobs.
    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.setup(bottom)
    }
    /// Learnable blobs (weights, biases), created by `setup`.
    fn params(&self) -> &[Tensor] {
        &[]
    }
    /// Mutable access for loading weights and solver updates.
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut []
    }
    /// Computes the tops.
    fn forward(&mut self, bottom: &[Tensor], phase: Phase) -> Result<Vec<Tensor>>;
    /// Computes the requested gradients.
    fn backward(&mut self, args: &BackwardArgs) -> Result<Grads> {
        Ok((
            vec![None; args.bottom.len()],
            vec![None; args.param_grad.len()],
        ))
    }
    /// Whether this layer produces data (no bottoms, no backward).
    fn is_data(&self) -> bool {
        false
    }
    /// How many bottoms the layer takes (Caffe's ExactNumBottomBlobs): none
    /// for data layers, two for scores-and-labels layers, else one.
    fn num_bottoms(&self) -> usize {
        if self.is_data() {
            0
        } else {
            1
        }
    }
    /// Whether the solver must leave the layer's blobs alone whatever the
    /// net says (BatchNorm's running statistics: Caffe forces lr_mult 0).
    fn fixed_params(&self) -> bool {
        false
    }
    /// Whether the layer takes [`Layer::num_bottoms`] or more bottoms
    /// (Caffe's MinBottomBlobs), as Concat does.
    fn variadic_bottoms(&self) -> bool {
        false
    }
    /// Told once, after set-up, what the net's backward pass will ask of
    /// the layer: whether it runs at all, and which parameters get a
    /// gradient. A layer that keeps forward state only for a gradient
    /// stops keeping it when that gradient is never asked for.
    fn plan_backward(&mut self, _runs: bool, _param_grads: &[bool]) {}
    /// f32 elements of scratch memory the layer keeps, and the most it
    /// borrows from scratch shared with the thread's other layers (the floor
    /// of the net's memory check).
    fn workspace_len(&self) -> (usize, usize) {
        (0, 0)
    }
    /// The layer's resumable state (a data position, a dropout draw count).
    fn state(&self) -> Option<u64> {
        None
    }
    /// Images in the layer's data source (data layers reading a list or an
    /// LMDB), so a pass over the whole set can be sized.
    fn source_len(&self) -> Option<usize> {
        None
    }
    /// Where each image of the batch most recently produced came from (list
    /// paths or LMDB keys), for data layers that know.
    fn last_batch_sources(&self) -> Option<Vec<String>> {
        None
    }
    /// Restores what [`Layer::state`] returned.
    fn restore_state(&mut self, _state: u64) {}
    /// Values the layer carries from one forward pass into the next (a
    /// recurrent layer's last hidden state), saved beside snapshots so that
    /// a resume repeats the uninterrupted run.
    fn carried(&self) -> Result<Vec<Vec<f32>>> {
        Ok(Vec::new())
    }
    /// Restores what [`Layer::carried`] returned.
    fn restore_carried(&mut self, _values: &[Vec<f32>]) -> Result<()> {
        Ok(())
    }
    /// Default loss weight of top `i` (1 for the first top of a loss layer).
    fn default_loss_weight(&self, _i: usize) -> f32 {
        0.0
    }
    /// Whether the net's `force_backward` may ask for a gradient of bottom
    /// `i` (Caffe's AllowForceBackward): not for a loss layer's labels.
    /// Layers that compute no gradient for a bottom (Accuracy, ArgMax, an
    /// Embed's indices) say no too, where Caffe would abort.
    fn allow_force_backward(&self, i: usize) -> bool {
        !(i == 1 && self.default_loss_weight(0) != 0.0)
    }
}

/// The layer types that can follow a Filter (those whose
/// [`Layer::any_batch`] says yes), for error messages.
pub const FOLLOW_FILTER: &str = "InnerProduct (axis 1 or later), Convolution, Pooling, LRN, BatchNorm, Scale (one bottom; axis 1 or later), Bias (one bottom; axis 1 or later), PReLU, ReLU, Dropout, Threshold, Sigmoid, TanH, AbsVal, BNLL, ELU, Power, Exp, Log, Swish, Clip, Softmax, SoftmaxWithLoss, InfogainLoss, Accuracy, EuclideanLoss, SigmoidCrossEntropyLoss, Split, Slice (axis 1 or later), Silence, Flatten, Reshape, Concat, Eltwise, Filter";

/// Where relative paths in a net (sources, mean files) are resolved from, and
/// how randomness is seeded.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Folder relative paths are resolved against (Caffe uses the CWD).
    pub base_dir: std::path::PathBuf,
    /// Seed for fillers, dropout masks and data augmentation.
    pub seed: u64,
    /// Caffe's global generator, seeded with `seed` as `random_seed` seeds
    /// Caffe's: data layers draw their own seeds and skips from it in
    /// Caffe's order, so their crops, mirrors and list orders are Caffe's.
    pub caffe_rng: crate::caffe::rng::SharedCaffeRng,
    /// The C library's `rand()` of the process, which Caffe's HDF5Data
    /// layers shuffle with: shared by the nets of a solver, as the layers
    /// of Caffe's nets share one.
    pub libc_rand: crate::caffe::libc_rand::SharedLibcRand,
    /// On the CPU, Dropout draws Caffe's masks from `caffe_rng` (on a GPU,
    /// and with this off, from its own per-pass streams, which the fused
    /// kernel and its CPU twin share).
    pub caffe_dropout: bool,
    /// The phase being built.
    pub phase: Phase,
    /// The device tensors live on.
    pub device: Device,
    /// Compute with candle tensor ops (see [`crate::train::tensor_ops`])
    /// even on the CPU; a GPU device always does. Used to test the GPU
    /// code path on the CPU.
    pub tensor_ops: bool,
    /// With tensor ops, use the fused kernels of [`crate::train::fused`]
    /// where a layer has one.
    pub fused: bool,
    /// With tensor ops, compute convolutions and inner products in bf16
    /// mixed precision ([`crate::train::precision`]).
    pub bf16: bool,
    /// On a GPU, convolve with cuDNN (builds with the `cudnn` feature).
    pub cudnn: bool,
    /// Data layers turn TRAIN images by random multiples of 90° (beyond
    /// Caffe; see [`crate::train::transform`]).
    pub rotate90: bool,
    /// Data layers warp TRAIN images by random affine maps drawn from these
    /// ranges (beyond Caffe; see [`crate::train::augment`]).
    pub augment: Option<crate::train::augment::Augment>,
}

/// How a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpPath {
    /// The hand-written CPU kernels over host buffers.
    CpuKernels,
    /// candle tensor-op compositions, on any device.
    TensorOps,
    /// Tensor ops, with the fused kernels where a layer has one (CUDA
    /// kernels on a GPU, their CPU twins on the CPU).
    Fused,
}

impl OpPath {
    /// Whether this path computes with device tensors (not the CPU kernels).
    pub fn tensor_ops(self) -> bool {
        self != OpPath::CpuKernels
    }

    /// Whether fused kernels are used where they exist.
    pub fn fused(self) -> bool {
        self == OpPath::Fused
    }
}

impl BuildContext {
    /// A context computing on `compute`'s device and path.
    pub fn new(
        base_dir: impl Into<std::path::PathBuf>,
        seed: u64,
        phase: Phase,
        compute: &crate::train::compute::Compute,
    ) -> Self {
        BuildContext {
            base_dir: base_dir.into(),
            seed,
            // Caffe converts random_seed to its 32-bit unsigned seed.
            caffe_rng: crate::caffe::rng::shared(seed as u32),
            libc_rand: crate::caffe::libc_rand::shared(),
            caffe_dropout: true,
            phase,
            device: compute.device.clone(),
            tensor_ops: compute.tensor_ops,
            fused: compute.fused,
            bf16: compute.bf16,
            cudnn: compute.cudnn,
            rotate90: false,
            augment: None,
        }
    }

    /// The next output of Caffe's global generator (`caffe_rng_rand()`).
    pub fn caffe_rng_rand(&self) -> u32 {
        crate::caffe::rng::lock(&self.caffe_rng).next_u32()
    }

    /// A context for the CPU kernels.
    pub fn cpu(base_dir: impl Into<std::path::PathBuf>, seed: u64, phase: Phase) -> Self {
        Self::new(
            base_dir,
            seed,
            phase,
            &crate::train::compute::Compute::cpu(),
        )
    }

    /// Whether layers use the device-generic tensor ops rather than the CPU kernels.
    pub fn uses_tensor_ops(&self) -> bool {
        self.tensor_ops || !self.device.is_cpu()
    }

    /// The path layers built in this context compute on.
    pub fn path(&self) -> OpPath {
        match (self.uses_tensor_ops(), self.fused) {
            (false, _) => OpPath::CpuKernels,
            (true, false) => OpPath::TensorOps,
            (true, true) => OpPath::Fused,
        }
    }

    /// The arithmetic of matrix products: bf16 only on the tensor-op path
    /// (the CPU kernels are fp32).
    pub fn precision(&self) -> Precision {
        if self.bf16 && self.uses_tensor_ops() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// Whether convolutions use cuDNN: only on a CUDA device.
    pub fn cudnn(&self) -> bool {
        self.cudnn && self.device.is_cuda()
    }

    /// `path` resolved against the base folder.
    pub fn resolve(&self, path: &str) -> std::path::PathBuf {
        // Path::join keeps an absolute path as it is.
        self.base_dir.join(path)
    }
}

/// Creates the layer a `LayerParameter` describes; `index` seeds its randomness.
pub fn create(param: &LayerParameter, ctx: &BuildContext, index: usize) -> Result<Box<dyn Layer>> {
    let name = param.name();
    let seed = ctx.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let missing = |what: &str| Error::model(format!("layer '{name}'"), format!("needs {what}"));
    let path = ctx.path();
    let lctx = format!("layer '{name}'");
    if let Some(n) = neuron::Neuron::from_param(param.r#type(), param, &lctx)? {
        return Ok(Box::new(neuron::NeuronLayer::new(n, path)));
    }
    Ok(match param.r#type() {
        "Convolution" => Box::new(conv::Convolution::new(
            param.convolution_param.clone().ok_or_else(|| missing("convolution_param"))?,
            ctx,
            ctx.caffe_rng.clone(),
            name,
        )?),
        "Deconvolution" => Box::new(deconv::Deconvolution::new(
            param.convolution_param.clone().ok_or_else(|| missing("convolution_param"))?,
            ctx,
            ctx.caffe_rng.clone(),
            name,
        )?),
        "InnerProduct" => Box::new(inner_product::InnerProduct::new(
            param.inner_product_param.clone().ok_or_else(|| missing("inner_product_param"))?,
            ctx.device.clone(),
            ctx.precision(),
            ctx.caffe_rng.clone(),
            name,
        )?),
        "SPP" => Box::new(spp::Spp::new(param, &ctx.device, path)?),
        "Im2col" => Box::new(im2col::Im2col::new(param.convolution_param.clone(), ctx, name)?),
        "Pooling" => Box::new(pool::Pooling::new(param.pooling_param.unwrap_or_default(), name, &ctx.device, path)?),
        "LRN" => {
            let p = param.lrn_param.unwrap_or_default();
            match p.norm_region() {
                NormRegion::AcrossChannels => Box::new(lrn::LocalResponseNorm::new(p, name, path)?),
                NormRegion::WithinChannel => Box::new(lrn_within::LrnWithin::new(&p, name, path)?),
            }
        }
        "ReLU" => Box::new(simple::Relu::new(
            param.relu_param.as_ref().map_or(0.0, |p| p.negative_slope()),
            path,
        )),
        "Dropout" => Box::new(simple::Dropout::new(
            param.dropout_param.as_ref().map_or(0.5, |p| p.dropout_ratio()),
            seed,
            (ctx.caffe_dropout && ctx.device.is_cpu()).then(|| ctx.caffe_rng.clone()),
            name,
            path,
        )?),
        "Softmax" => Box::new(loss::Softmax::new(param.softmax_param.as_ref().map_or(1, |p| p.axis()))),
        "SoftmaxWithLoss" => Box::new(loss::SoftmaxWithLoss::new(param, name)?),
        "InfogainLoss" => Box::new(infogain::InfogainLoss::new(param, name, |p| ctx.resolve(p))?),
        "Accuracy" => Box::new(loss::Accuracy::new(param.accuracy_param.unwrap_or_default(), name)),
        "ArgMax" => Box::new(argmax::ArgMax::new(param.argmax_param.unwrap_or_default(), name)?),
        "MVN" => Box::new(mvn::Mvn::new(param.mvn_param.unwrap_or_default(), name)),
        "Reduction" => Box::new(reduction::Reduction::new(param.reduction_param.unwrap_or_default(), name)),
        "Tile" => Box::new(reduction::Tile::new(param.tile_param.unwrap_or_default(), name)?),
        "Threshold" => Box::new(simple::Threshold::new(
            param.threshold_param.as_ref().map_or(0.0, |p| p.threshold()),
            name,
        )),
        "EuclideanLoss" => Box::new(euclidean::EuclideanLoss::new(name)),
        "ContrastiveLoss" => Box::new(contrastive::ContrastiveLoss::new(param, name)),
        "HingeLoss" => Box::new(hinge::HingeLoss::new(param, name)),
        "MultinomialLogisticLoss" => Box::new(multinomial_logistic::MultinomialLogisticLoss::new(name)),
        "SigmoidCrossEntropyLoss" => Box::new(sigmoid_loss::SigmoidCrossEntropyLoss::new(param, name)),
        "Data" | "ImageData" => Box::new(data::DataLayer::new(param, ctx, seed)?),
        "Input" => Box::new(data::Input::new(param, ctx.device.clone())?),
        "HDF5Data" => Box::new(hdf5_data::Hdf5Data::new(param, ctx)?),
        "HDF5Output" => Box::new(hdf5_output::Hdf5Output::new(param, ctx)?),
        "DummyData" => Box::new(data::DummyData::new(param, ctx.device.clone(), seed)?),
        "WindowData" => Box::new(window_data::WindowData::new(param, ctx)?),
        "Embed" => Box::new(embed::Embed::new(param, ctx.device.clone(), ctx.caffe_rng.clone())?),
        "RNN" => Box::new(recurrent::Recurrent::new(param, recurrent::Kind::Rnn, ctx.device.clone(), ctx.caffe_rng.clone())?),
        "LSTM" => Box::new(recurrent::Recurrent::new(param, recurrent::Kind::Lstm, ctx.device.clone(), ctx.caffe_rng.clone())?),
        "LSTMUnit" => Box::new(lstm_unit::LstmUnit::new(name)),
        "Parameter" => Box::new(parameter::Parameter::new(param, ctx.device.clone())?),
        "BatchReindex" => Box::new(batch_reindex::BatchReindex::new(name)),
        "Filter" => Box::new(filter::Filter::new(name)),
        "Concat" => Box::new(concat::Concat::new(param.concat_param, name)?),
        "Crop" => Box::new(crop::Crop::new(param.crop_param.clone().unwrap_or_default(), name)),
        "Eltwise" => Box::new(eltwise::Eltwise::new(param.eltwise_param.clone(), name)?),
        "Flatten" => Box::new(reshape::Flatten::new(param.flatten_param, name)),
        "Reshape" => Box::new(reshape::Reshape::new(param.reshape_param.clone(), name)?),
        "BatchNorm" => Box::new(batch_norm::BatchNorm::new(param.batch_norm_param, ctx.phase, ctx.device.clone(), path, name)),
        "Scale" => Box::new(scale::Scale::new(param.scale_param.clone(), ctx.device.clone(), path, ctx.caffe_rng.clone(), name)),
        "Bias" => Box::new(bias::Bias::new(param.bias_param.clone(), ctx.device.clone(), path, ctx.caffe_rng.clone(), name)),
        "PReLU" => Box::new(prelu::PRelu::new(param.prelu_param.clone(), ctx.device.clone(), path, ctx.caffe_rng.clone(), name)),
        "Slice" => Box::new(slice::Slice::new(param.slice_param.clone(), param.top.len(), name)?),
        "Split" => Box::new(slice::Split::new(param.top.len())),
        "Silence" => Box::new(slice::Silence),
        "CyclicSlice" => Box::new(cyclic::CyclicSlice::new(name)),
        "CyclicPool" => Box::new(cyclic::CyclicPool::new(name)),
        "" => return Err(Error::model(format!("layer '{name}'"), "has no type")),
        other => {
            return Err(Error::model(
                format!("layer '{name}'"),
                format!(
                    "type \"{other}\" is not supported (supported: Data, ImageData, WindowData, HDF5Data, HDF5Output, Input, DummyData, Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, ReLU, Dropout, InnerProduct, Embed, Parameter, RNN, LSTM, LSTMUnit, Concat, Crop, Slice, Split, Silence, BatchReindex, Filter, Eltwise, BatchNorm, Scale, Bias, Flatten, Reshape, Reduction, Tile, MVN, PReLU, Sigmoid, TanH, AbsVal, BNLL, ELU, Power, Exp, Log, Swish, Clip, Threshold, ArgMax, Softmax, SoftmaxWithLoss, InfogainLoss, EuclideanLoss, SigmoidCrossEntropyLoss, ContrastiveLoss, HingeLoss, MultinomialLogisticLoss, Accuracy; beyond Caffe: CyclicSlice, CyclicPool)"
                ),
            ))
        }
    })
}

/// Flattens a tensor into a `Vec<f32>`.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `f` on the tensor's values in row-major order, borrowing the CPU
/// buffer when the tensor is contiguous (no copy) and copying otherwise.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[start..end]));
        }
    }
    Ok(f(&to_vec(t)?))
}

/// The (n, c, h, w) of a layer's single 4-D bottom, or an error naming the layer.
pub(crate) fn nchw(bottom: &[Vec<usize>], ctx: &str) -> Result<[usize; 4]> {
    match bottom {
        [s] if s.len() == 4 => Ok([s[0], s[1], s[2], s[3]]),
        _ => Err(Error::model(
            ctx,
            format!("needs one 4-D bottom, got {bottom:?}"),
        )),
    }
}

/// Number of elements of a shape.
pub(crate) fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Caffe's limit on a blob's element count (`Blob::Reshape` checks INT_MAX).
pub(crate) const MAX_BLOB_COUNT: usize = i32::MAX as usize;

/// Element count of the blob `what` of `shape`, or an error naming it when
/// the count passes Caffe's INT_MAX limit. Checked before anything is
/// allocated, so a typo such as `pad: 100000` or a huge `batch_size` is a
/// clear error instead of an allocation abort.
pub(crate) fn checked_count(shape: &[usize], ctx: &str, what: &str) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_BLOB_COUNT)
        .ok_or_else(|| {
            Error::model(
                ctx,
                format!(
                    "{what} of shape {shape:?} would pass Caffe's limit of {MAX_BLOB_COUNT} \
                     elements per blob (check batch_size, pad, kernel and num_output)"
                ),
            )
        })
}

/// The loss and score gradient of a scores-and-labels loss layer `l` for
/// `n = labels.len()` items of `c` scores each (tests of the loss layers).
#[cfg(test)]
pub(crate) fn loss_and_gradient(
    l: &mut dyn Layer,
    x: &[f32],
    labels: &[f32],
    c: usize,
) -> (f32, Vec<f32>) {
    let dev = Device::Cpu;
    let n = labels.len();
    l.setup(&[vec![n, c], vec![n]]).unwrap();
    let bottom = [
        Tensor::from_vec(x.to_vec(), (n, c), &dev).unwrap(),
        Tensor::from_vec(labels.to_vec(), n, &dev).unwrap(),
    ];
    let top = l.forward(&bottom, Phase::Train).unwrap();
    let d = [Some(Tensor::new(1.0f32, &dev).unwrap())];
    let (g, _) = l
        .backward(&BackwardArgs {
            bottom: &bottom,
            top: &top,
            top_diff: &d,
            propagate: &[true, false],
            param_grad: &[],
        })
        .unwrap();
    (
        top[0].to_scalar().unwrap(),
        to_vec(g[0].as_ref().unwrap()).unwrap(),
    )
}
