//! Convolution as Caffe computes it: im2col, then one matrix product per
//! group; the backward pass reuses the columns for the weight gradient and
//! folds `Wᵀ·dy` back with col2im for the input gradient. On the CPU, groups
//! of one input channel each (depthwise, MobileNet's) take the direct
//! kernels of [`crate::train::depthwise`] instead.
use super::{
    checked_count, nchw, to_vec, with_f32, BackwardArgs, BuildContext, Grads, Layer, OpPath,
};
use crate::caffe::proto::{convolution_parameter::Engine, ConvolutionParameter, Phase};
use crate::caffe::rng::SharedCaffeRng;
use crate::error::{Error, Result};
use crate::train::depthwise;
use crate::train::filler::weight_and_bias;
use crate::train::gemm::{sgemm, sgemm_rows, View};
use crate::train::kernels::{col2im_batch, im2col_row, im2row_line, Window};
use crate::train::memory::try_resize;
use crate::train::precision::Precision;
use crate::train::tensor_ops::{self, Col2Im, ConvGeom};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Scratch shared by the convolutions a thread runs (one at a time): the
    /// buffers needed only within one forward or backward call (a test
    /// forward's column matrix, the GEMM results, dy and dx columns) are not
    /// kept per layer, which saves each layer their size.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The longest window (inputs per output value) whose forward product reads
/// the unfolding position by position ([`im2row_line`]) rather than the
/// column matrix, when no column matrix is kept for the weight gradient.
/// Measured on CaffeNet at batch 50, two cores: conv1 (363 inputs) takes
/// 165-185 ms instead of 295-335 in a test forward; conv2 to conv5
/// (1200-2304 inputs, 3- and 5-wide kernel rows) got 30-40% slower, the
/// unfolding's short runs and the gemm crate's copies of its column-major
/// operand costing more than its product saves. Training, which builds the
/// column matrix anyway, multiplies that: conv1's training forward took
/// 197-216 ms instead of 208-270 with the unfolding made as well.
const ROW_UNFOLD_MAX_K: usize = 512;

/// Values of the transposed unfolding made and multiplied at a time (16 MB):
/// a test forward's scratch stays small (CaffeNet's conv1 at batch 50 would
/// take 220 MB at once), at no measurable cost in speed.
const ROW_UNFOLD_BLOCK: usize = 1 << 22;

/// Values of the input gradient's column matrix made and folded back at a
/// time (16 MB): CaffeNet's conv2 at batch 50 would take 350 MB at once
/// (peak memory of its training step: 2.29 GB instead of 2.58). No slower:
/// a 3x3 convolution of 96x27x27 images to 384 channels at batch 50 took
/// 1290-1300 ms backward instead of 1365-1460 on two cores.
const DCOLS_BLOCK: usize = 1 << 22;

/// How many images' `rows x plane` blocks fit in `budget` values (at least
/// one, at most the batch `n`).
fn block_images(budget: usize, rows: usize, plane: usize, n: usize) -> usize {
    (budget / rows.saturating_mul(plane).max(1)).clamp(1, n.max(1))
}

pub struct Convolution {
    p: ConvolutionParameter,
    device: Device,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    name: String,
    params: Vec<Tensor>,
    /// Per-image geometry (input channels = all groups).
    win: Option<Window>,
    group: usize,
    num_output: usize,
    /// The CPU path's buffer sizes, for `workspace_len`.
    sizes: Sizes,
    /// Columns of the last training forward: (group, K, N*P), kept for the
    /// backward pass and reused so the hundreds of MB are not reallocated
    /// each step.
    cols: Vec<f32>,
    /// Whether the net trains or only tests.
    training: bool,
    /// Whether the net's backward pass runs this layer's.
    backward_runs: bool,
    /// Whether a training forward keeps `cols`: the weights get a gradient.
    keep_cols: bool,
    /// Batch size of the last forward.
    batch: usize,
    /// Set when the net computes with tensor ops (GPU): the geometry (equal strides and dilations)
    /// and the input-gradient fold table.
    tensor: Option<(ConvGeom, Col2Im)>,
    /// Tensor ops with unequal strides: the convolution runs at stride 1
    /// and these rows and columns of its output are kept (the gradient is
    /// spread back onto them).
    strided: Option<Strided>,
    /// Tensor ops with unequal dilations: the kernel spread onto its
    /// dilated extent (zeros between its taps), convolved undilated.
    dilated: Option<Strided>,
    path: OpPath,
    /// The tensor-op path's matrix-product arithmetic.
    precision: Precision,
    /// Whether the tensor-op path convolves with cuDNN.
    cudnn: bool,
    /// CPU path, one input channel per group: the direct depthwise kernels.
    depthwise: bool,
    /// Values of the input gradient's columns made at a time ([`DCOLS_BLOCK`];
    /// tests lower it to check the blocking).
    dcols_budget: usize,
}

/// Elements of the CPU path's buffers for the whole batch.
#[derive(Clone, Copy, Default)]
struct Sizes {
    /// The column matrix.
    cols: usize,
    /// The product (the top, in the column matrix's order).
    out: usize,
    /// One block of the position-by-position unfolding, for short windows.
    unfolded: Option<usize>,
    /// One block of the input gradient's column matrix.
    dcols: usize,
}

/// A convolution's window: kernel, pad, stride and dilation per axis
/// (height, width).
#[derive(Clone, Copy)]
pub(super) struct Settings {
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) dh: usize,
    pub(super) dw: usize,
}

/// Unequal strides on the tensor-op path: which rows and columns of the
/// stride-1 output a strided convolution keeps (and a strided
/// Deconvolution spreads its input onto).
pub(super) struct Strided {
    rows: Tensor,
    cols: Tensor,
    /// The stride-1 output's (height, width).
    full: (usize, usize),
}

impl Strided {
    pub(super) fn new(
        (sh, sw): (usize, usize),
        (oh, ow): (usize, usize),
        full: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let pick = |n: usize, s: usize| {
            let idx: Vec<u32> = (0..n).map(|i| (i * s) as u32).collect();
            Tensor::from_vec(idx, n, device)
        };
        Ok(Strided {
            rows: pick(oh, sh)?,
            cols: pick(ow, sw)?,
            full,
        })
    }

    /// The strided output from the stride-1 one.
    pub(super) fn keep(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.index_select(&self.rows, 2)?.index_select(&self.cols, 3)?)
    }

    /// The stride-1 output's gradient: `dy` at the kept places, 0 elsewhere.
    pub(super) fn spread(&self, dy: &Tensor) -> Result<Tensor> {
        let (n, c, oh, _) = dy.dims4()?;
        let (h, w) = self.full;
        let wide = Tensor::zeros((n, c, oh, w), dy.dtype(), dy.device())?.index_add(
            &self.cols,
            &dy.contiguous()?,
            3,
        )?;
        Ok(
            Tensor::zeros((n, c, h, w), dy.dtype(), dy.device())?
                .index_add(&self.rows, &wide, 2)?,
        )
    }
}

/// The batch size of `bottom`, a single N x C x H x W blob whose images
/// must keep the shape `win` was set up for (a layer behind a Filter sees
/// other batch sizes, never other images).
pub(super) fn same_image_shape(bottom: &[Vec<usize>], win: &Window, name: &str) -> Result<usize> {
    let ctx = format!("layer '{name}'");
    let [n, c, h, w] = nchw(bottom, &ctx)?;
    if (c, h, w) != (win.c, win.h, win.w) {
        return Err(Error::model(
            &ctx,
            format!(
                "was set up for {}x{}x{} images, not {c}x{h}x{w}",
                win.c, win.h, win.w
            ),
        ));
    }
    Ok(n)
}

/// Refuses a `group` that does not divide both channel counts.
pub(super) fn check_groups(
    channels: usize,
    num_output: usize,
    group: usize,
    ctx: &str,
) -> Result<()> {
    if group == 0 || channels % group != 0 || num_output % group != 0 {
        return Err(Error::model(
            ctx,
            format!(
                "group {group} must divide input channels {channels} and num_output {num_output}"
            ),
        ));
    }
    Ok(())
}

/// The window `p` gives (Convolution's and Deconvolution's parameters),
/// kernel and stride checked to be positive.
pub(super) fn settings(p: &ConvolutionParameter, name: &str) -> Result<Settings> {
    let (kh, kw) = pick(&p.kernel_size, p.kernel_h, p.kernel_w, 0, "kernel", name)?;
    let (ph, pw) = pick(&p.pad, p.pad_h, p.pad_w, 0, "pad", name)?;
    let (sh, sw) = pick(&p.stride, p.stride_h, p.stride_w, 1, "stride", name)?;
    let (dh, dw) = pick(&p.dilation, None, None, 1, "dilation", name)?;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(Error::model(
            format!("layer '{name}'"),
            format!(
                "kernel size and stride must be > 0, got kernel {kh}x{kw}, stride {sh}x{sw} \
                 (kernel_h and kernel_w, or stride_h and stride_w, go together)"
            ),
        ));
    }
    Ok(Settings {
        kh,
        kw,
        ph,
        pw,
        sh,
        sw,
        dh,
        dw,
    })
}

fn pick(
    list: &[u32],
    h: Option<u32>,
    w: Option<u32>,
    default: u32,
    what: &str,
    name: &str,
) -> Result<(usize, usize)> {
    match (h, w) {
        // Caffe's rule: either given, the other is its field's default (0;
        // a zero kernel or stride is refused below).
        (Some(_), _) | (_, Some(_)) if !list.is_empty() => Err(Error::model(
            format!("layer '{name}'"),
            format!("give {what} or {what}_h and {what}_w, not both"),
        )),
        (Some(_), _) | (_, Some(_)) => Ok((h.unwrap_or(0) as usize, w.unwrap_or(0) as usize)),
        (None, None) => match list {
            [] => Ok((default as usize, default as usize)),
            [v] => Ok((*v as usize, *v as usize)),
            [a, b] => Ok((*a as usize, *b as usize)),
            _ => Err(Error::model(
                format!("layer '{name}'"),
                format!(
                    "only 2-D convolution is supported ({what} has {} values)",
                    list.len()
                ),
            )),
        },
    }
}

impl Convolution {
    /// The weights the tensor ops convolve with: the kernel, or with
    /// unequal dilations the kernel spread onto its extent.
    fn tensor_weights(&self) -> Result<Tensor> {
        Ok(match &self.dilated {
            Some(d) => d.spread(&self.params[0])?,
            None => self.params[0].clone(),
        })
    }

    pub fn new(
        p: ConvolutionParameter,
        ctx: &BuildContext,
        rng: SharedCaffeRng,
        name: &str,
    ) -> Result<Self> {
        if p.num_output() == 0 {
            return Err(Error::model(
                format!("layer '{name}'"),
                "convolution_param.num_output must be > 0",
            ));
        }
        // Caffe's per-layer choice: `engine: CAFFE` keeps a layer on im2col;
        // DEFAULT and CUDNN take cuDNN where the build has it.
        let cudnn = ctx.cudnn() && p.engine() != Engine::Caffe;
        Ok(Convolution {
            group: p.group().max(1) as usize,
            num_output: p.num_output() as usize,
            p,
            rng,
            name: name.to_string(),
            params: Vec::new(),
            win: None,
            sizes: Sizes::default(),
            cols: Vec::new(),
            training: ctx.phase == Phase::Train,
            // Until the net plans its backward pass: everything a gradient may need.
            backward_runs: ctx.phase == Phase::Train,
            keep_cols: ctx.phase == Phase::Train,
            batch: 0,
            tensor: None,
            strided: None,
            dilated: None,
            path: ctx.path(),
            precision: ctx.precision(),
            cudnn,
            depthwise: false,
            dcols_budget: DCOLS_BLOCK,
            device: ctx.device.clone(),
        })
    }
}

impl Convolution {
    /// The forward pass of a depthwise convolution on the CPU: each output
    /// plane from its one input plane, planes in parallel.
    fn forward_depthwise(&self, x: &Tensor, win: &Window) -> Result<Tensor> {
        let n = x.dim(0)?;
        let cout = self.num_output;
        let per_input = cout / self.group;
        let (hw, plane, taps) = (win.h * win.w, win.oh * win.ow, win.kh * win.kw);
        let weights = to_vec(&self.params[0])?;
        let bias = self.params.get(1).map(to_vec).transpose()?;
        let mut out = vec![0f32; n * cout * plane];
        with_f32(x, |xs| {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, y)| {
                let (img, o) = (i / cout, i % cout);
                let at = (img * win.c + o / per_input) * hw;
                let b = bias.as_ref().map_or(0.0, |b| b[o]);
                depthwise::forward_plane(
                    &xs[at..at + hw],
                    &weights[o * taps..(o + 1) * taps],
                    b,
                    win,
                    y,
                );
            })
        })?;
        Ok(Tensor::from_vec(
            out,
            (n, cout, win.oh, win.ow),
            &self.device,
        )?)
    }

    /// The backward pass of a depthwise convolution on the CPU: weight and
    /// bias gradients summed over the batch in f64 per output channel, the
    /// input gradient per input plane from the outputs it feeds.
    fn backward_depthwise(&self, a: &BackwardArgs, dy: &Tensor, win: &Window) -> Result<Grads> {
        let x = &a.bottom[0];
        let n = x.dim(0)?;
        let cout = self.num_output;
        let per_input = cout / self.group;
        let (hw, plane, taps) = (win.h * win.w, win.oh * win.ow, win.kh * win.kw);
        let weights = to_vec(&self.params[0])?;
        let mut pgrads = vec![None; self.params.len()];
        let dx = with_f32(dy, |ds| {
            with_f32(x, |xs| -> Result<Option<Tensor>> {
                let dy_plane = |img: usize, o: usize| {
                    &ds[(img * cout + o) * plane..(img * cout + o + 1) * plane]
                };
                if self.params.len() > 1 && a.param_grad[1] {
                    let db: Vec<f32> = (0..cout)
                        .into_par_iter()
                        .map(|o| {
                            (0..n)
                                .map(|img| f64::from(dy_plane(img, o).iter().sum::<f32>()))
                                .sum::<f64>() as f32
                        })
                        .collect();
                    pgrads[1] = Some(Tensor::from_vec(db, cout, &self.device)?);
                }
                if a.param_grad[0] {
                    let mut dw = vec![0f32; cout * taps];
                    dw.par_chunks_mut(taps).enumerate().for_each(|(o, out)| {
                        let mut acc = vec![0f64; taps];
                        for img in 0..n {
                            let at = (img * win.c + o / per_input) * hw;
                            depthwise::weight_grad_plane(
                                &xs[at..at + hw],
                                dy_plane(img, o),
                                win,
                                &mut acc,
                            );
                        }
                        for (d, v) in out.iter_mut().zip(acc) {
                            *d = v as f32;
                        }
                    });
                    pgrads[0] = Some(Tensor::from_vec(dw, self.params[0].shape(), &self.device)?);
                }
                if !a.propagate[0] {
                    return Ok(None);
                }
                let mut dx = vec![0f32; n * win.c * hw];
                dx.par_chunks_mut(hw).enumerate().for_each(|(i, out)| {
                    let (img, c) = (i / win.c, i % win.c);
                    for o in c * per_input..(c + 1) * per_input {
                        depthwise::input_grad_plane(
                            dy_plane(img, o),
                            &weights[o * taps..(o + 1) * taps],
                            win,
                            out,
                        );
                    }
                });
                Ok(Some(Tensor::from_vec(dx, x.shape(), &self.device)?))
            })
        })???;
        Ok((vec![dx], pgrads))
    }
}

impl Layer for Convolution {
    fn type_name(&self) -> &'static str {
        "Convolution"
    }

    fn any_batch(&self) -> bool {
        true
    }

    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // Only the batch changes (behind a Filter); the weights stay.
        let win = self.win.expect("setup ran");
        let n = same_image_shape(bottom, &win, &self.name)?;
        Ok(vec![vec![n, self.num_output, win.oh, win.ow]])
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        let [n, c, h, w] = nchw(bottom, &ctx)?;
        let p = &self.p;
        let window = settings(p, &self.name)?;
        let Settings {
            kh,
            kw,
            ph,
            pw,
            sh,
            sw,
            dh,
            dw,
        } = window;
        let g = self.group;
        check_groups(c, self.num_output, g, &ctx)?;
        let ext_h = dh * (kh - 1) + 1;
        let ext_w = dw * (kw - 1) + 1;
        if h + 2 * ph < ext_h || w + 2 * pw < ext_w {
            return Err(Error::model(
                &ctx,
                format!("kernel {kh}x{kw} is larger than the padded input {h}x{w}"),
            ));
        }
        let oh = (h + 2 * ph - ext_h) / sh + 1;
        let ow = (w + 2 * pw - ext_w) / sw + 1;
        let win = Window {
            c,
            h,
            w,
            kh,
            kw,
            ph,
            pw,
            sh,
            sw,
            dh,
            dw,
            oh,
            ow,
        };
        self.win = Some(win);
        self.depthwise = !self.path.tensor_ops() && c == g;
        if !self.path.tensor_ops() && !self.depthwise {
            // The column matrix, the product and the backward's dy and dx
            // columns, for the whole batch (saturating: the net refuses
            // oversized blobs only after setup).
            let per_image = (oh).saturating_mul(ow).saturating_mul(n);
            let cols = (c / g * kh * kw * g).saturating_mul(per_image);
            let out = self.num_output.saturating_mul(per_image);
            // A short window's forward unfolds a block of images at a time.
            let rows = c / g * kh * kw * g;
            let plane = oh.saturating_mul(ow).max(1);
            let block = |budget| {
                let images = block_images(budget, rows, plane, n);
                cols.min(rows.saturating_mul(plane).saturating_mul(images))
            };
            let unfolded = (c / g * kh * kw <= ROW_UNFOLD_MAX_K).then(|| block(ROW_UNFOLD_BLOCK));
            self.sizes = Sizes {
                cols,
                out,
                unfolded,
                dcols: block(self.dcols_budget),
            };
        }
        if self.path.tensor_ops() {
            // The fold table is allocated now, before the net checks its blobs.
            checked_count(&[n, self.num_output, oh, ow], &ctx, "top")?;
            checked_count(&[c, h, w, kh, kw], &ctx, "the input-gradient fold table")?;
            // candle's (and this path's cuDNN) convolution takes one stride:
            // unequal ones run at stride 1 and keep every sh-th row and
            // sw-th column (sh x sw times the work, for the rare nets that
            // need it).
            // Unequal dilations: the kernel spread onto its extent, undilated.
            let (win, dilation) = if dh == dw {
                self.dilated = None;
                (win, dh)
            } else {
                self.dilated = Some(Strided::new(
                    (dh, dw),
                    (kh, kw),
                    (ext_h, ext_w),
                    &self.device,
                )?);
                let spread = Window {
                    kh: ext_h,
                    kw: ext_w,
                    dh: 1,
                    dw: 1,
                    ..win
                };
                (spread, 1)
            };
            let run = if sh == sw {
                self.strided = None;
                win
            } else {
                let (oh1, ow1) = (h + 2 * ph - ext_h + 1, w + 2 * pw - ext_w + 1);
                checked_count(&[n, self.num_output, oh1, ow1], &ctx, "the stride-1 output")?;
                self.strided = Some(Strided::new((sh, sw), (oh, ow), (oh1, ow1), &self.device)?);
                Window {
                    sh: 1,
                    sw: 1,
                    oh: oh1,
                    ow: ow1,
                    ..win
                }
            };
            let geom = ConvGeom {
                group: g,
                pad: (ph, pw),
                stride: run.sh,
                dilation,
                precision: self.precision,
                cudnn: self.cudnn,
            };
            let fold = if self.path.fused() {
                Col2Im::fused(&run)
            } else {
                Col2Im::new(&run, &self.device)?
            };
            self.tensor = Some((geom, fold));
        }
        self.params = weight_and_bias(
            p.weight_filler.as_ref(),
            &[self.num_output, c / g, kh, kw],
            p.bias_term()
                .then_some((p.bias_filler.as_ref(), self.num_output)),
            &self.rng,
            &ctx,
            &self.device,
        )?;
        Ok(vec![vec![n, self.num_output, oh, ow]])
    }

    fn plan_backward(&mut self, runs: bool, param_grads: &[bool]) {
        self.backward_runs = self.training && runs;
        // Only the weight gradient reads the forward's columns.
        self.keep_cols = self.backward_runs && param_grads.first() == Some(&true);
    }

    fn workspace_len(&self) -> (usize, usize) {
        let Sizes {
            cols,
            out,
            unfolded,
            dcols,
        } = self.sizes;
        let kept = if self.keep_cols { cols } else { 0 };
        // The shared pair: the forward's unfolding (none when it multiplies
        // the kept columns) and product; the backward's dy and dx columns.
        let unfolding = if self.keep_cols {
            0
        } else {
            unfolded.unwrap_or(cols)
        };
        let (dy, dcols) = if self.backward_runs {
            (out, dcols)
        } else {
            (0, 0)
        };
        (kept, unfolding.max(dy).saturating_add(out.max(dcols)))
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&mut self, bottom: &[Tensor], phase: Phase) -> Result<Vec<Tensor>> {
        if let Some((geom, _)) = &self.tensor {
            let w = self.tensor_weights()?;
            let y = tensor_ops::conv_forward(&bottom[0], &w, self.params.get(1), geom)?;
            return Ok(vec![match &self.strided {
                Some(st) => st.keep(&y)?,
                None => y,
            }]);
        }
        let win = self.win.expect("setup ran");
        let x = &bottom[0];
        let n = x.dim(0)?;
        if self.depthwise {
            self.batch = n;
            return Ok(vec![self.forward_depthwise(x, &win)?]);
        }
        let g = self.group;
        let og = self.num_output / g;
        let k = win.c / g * win.kh * win.kw;
        let plane = win.oh * win.ow;
        let np = n * plane;
        let ctx = format!("layer '{}'", self.name);
        let weights = to_vec(&self.params[0])?;
        SCRATCH.with(|scratch| -> Result<()> {
            let (shared_cols, ybuf) = &mut *scratch.borrow_mut();
            // One (rows) x (images * positions) column matrix, or its
            // transpose for short windows: a single GEMM per group.
            try_resize(ybuf, g * og * np, &ctx)?;
            let keep = phase == Phase::Train && self.keep_cols;
            if keep {
                // Training keeps the column matrix for the weight gradient.
                try_resize(&mut self.cols, g * k * np, &ctx)?;
                let cols = &mut self.cols;
                with_f32(x, |xs| {
                    cols.par_chunks_mut(np)
                        .enumerate()
                        .for_each(|(r, row)| im2col_row(xs, &win, n, r, row))
                })?;
            }
            let rows = g * k;
            let wg = |gi: usize| View::rows(&weights[gi * og * k..(gi + 1) * og * k], k);
            if k <= ROW_UNFOLD_MAX_K && !keep {
                // No kept columns, a short window: the transposed unfolding
                // (a row of all groups' inputs per output position), a few
                // images at a time; each group's operand is a column-major
                // view of its slice of the rows.
                let images = block_images(ROW_UNFOLD_BLOCK, rows, plane, n);
                try_resize(shared_cols, images * plane * rows, &ctx)?;
                with_f32(x, |xs| {
                    for first in (0..n).step_by(images) {
                        let count = images.min(n - first);
                        let block = &mut shared_cols[..count * plane * rows];
                        block
                            .par_chunks_mut(win.ow * rows)
                            .enumerate()
                            .for_each(|(line, out)| {
                                let (img, oy) = (first + line / win.oh, line % win.oh);
                                im2row_line(xs, &win, img, oy, out)
                            });
                        for gi in 0..g {
                            let b = View {
                                data: &block[gi * k..],
                                row_stride: 1,
                                col_stride: rows,
                            };
                            let y0 = gi * og * np + first * plane;
                            sgemm_rows(og, count * plane, k, wg(gi), b, &mut ybuf[y0..], np, false);
                        }
                    }
                })?;
                return Ok(());
            }
            let cols: &[f32] = if keep {
                &self.cols
            } else {
                try_resize(shared_cols, rows * np, &ctx)?;
                with_f32(x, |xs| {
                    shared_cols
                        .par_chunks_mut(np)
                        .enumerate()
                        .for_each(|(r, row)| im2col_row(xs, &win, n, r, row))
                })?;
                shared_cols
            };
            for gi in 0..g {
                sgemm(
                    og,
                    np,
                    k,
                    wg(gi),
                    View::rows(&cols[gi * k * np..(gi + 1) * k * np], np),
                    &mut ybuf[gi * og * np..(gi + 1) * og * np],
                    false,
                );
            }
            Ok(())
        })?;
        // Reorder (channel, image, position) to (image, channel, position) and add the bias.
        let bias = match self.params.get(1) {
            Some(b) => to_vec(b)?,
            None => vec![0.0; self.num_output],
        };
        let cout = self.num_output;
        let mut out = vec![0.0f32; n * cout * plane];
        SCRATCH.with(|scratch| {
            let ys = &scratch.borrow().1;
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let (img, ch) = (i / cout, i % cout);
                let src = &ys[(ch * n + img) * plane..(ch * n + img + 1) * plane];
                let b = bias[ch];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s + b;
                }
            })
        });
        self.batch = n;
        Ok(vec![Tensor::from_vec(
            out,
            (n, cout, win.oh, win.ow),
            &self.device,
        )?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let win = self.win.expect("setup ran");
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None], vec![None; self.params.len()]));
        };
        if let Some((geom, col2im)) = &self.tensor {
            let want_db = self.params.len() > 1 && a.param_grad[1];
            let spread;
            let dy = match &self.strided {
                Some(st) => {
                    spread = st.spread(dy)?;
                    &spread
                }
                None => dy,
            };
            let (dx, dw, db) = tensor_ops::conv_backward(
                &a.bottom[0],
                &self.tensor_weights()?,
                dy,
                geom,
                col2im,
                [a.propagate[0], a.param_grad[0], want_db],
            )?;
            // With a spread kernel only its taps' gradients count.
            let dw = match (&self.dilated, dw) {
                (Some(d), Some(g)) => Some(d.keep(&g)?),
                (_, g) => g,
            };
            let mut pgrads = vec![dw];
            if self.params.len() > 1 {
                pgrads.push(db);
            }
            return Ok((vec![dx], pgrads));
        }
        if self.depthwise {
            return self.backward_depthwise(a, dy, &win);
        }
        let n = self.batch;
        let g = self.group;
        let og = self.num_output / g;
        let cout = self.num_output;
        let k = win.c / g * win.kh * win.kw;
        let plane = win.oh * win.ow;
        let np = n * plane;
        let ctx = format!("layer '{}'", self.name);
        if a.param_grad[0] && (!self.keep_cols || self.cols.len() != g * k * np) {
            return Err(Error::model(
                &ctx,
                "the weight gradient needs the column matrix of a training-phase forward",
            ));
        }
        let weights = to_vec(&self.params[0])?;
        let mut pgrads = vec![None; self.params.len()];
        let mut dx = None;
        SCRATCH.with(|scratch| -> Result<()> {
            let (dybuf, dcols) = &mut *scratch.borrow_mut();
            // dy as (channel, image, position), the column matrix's layout.
            try_resize(dybuf, cout * np, &ctx)?;
            with_f32(dy, |ds| {
                dybuf
                    .par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(i, dst)| {
                        let (ch, img) = (i / n, i % n);
                        dst.copy_from_slice(
                            &ds[(img * cout + ch) * plane..(img * cout + ch + 1) * plane],
                        );
                    })
            })?;
            if self.params.len() > 1 && a.param_grad[1] {
                let db: Vec<f32> = dybuf.par_chunks(np).map(|row| row.iter().sum()).collect();
                pgrads[1] = Some(Tensor::from_vec(db, cout, &self.device)?);
            }
            if a.param_grad[0] {
                let mut dw = vec![0.0f32; cout * k];
                for gi in 0..g {
                    sgemm(
                        og,
                        k,
                        np,
                        View::rows(&dybuf[gi * og * np..(gi + 1) * og * np], np),
                        View::transposed(&self.cols[gi * k * np..(gi + 1) * k * np], np),
                        &mut dw[gi * og * k..(gi + 1) * og * k],
                        false,
                    );
                }
                pgrads[0] = Some(Tensor::from_vec(dw, self.params[0].shape(), &self.device)?);
            }
            if a.propagate[0] {
                // A few images at a time, to bound the scratch.
                let rows = g * k;
                let images = block_images(self.dcols_budget, rows, plane, n);
                try_resize(dcols, rows * images * plane, &ctx)?;
                let hw = win.h * win.w;
                let mut grad = vec![0.0f32; n * win.c * hw];
                for first in (0..n).step_by(images) {
                    let count = images.min(n - first);
                    let len = count * plane;
                    for gi in 0..g {
                        let dy_block = View {
                            data: &dybuf[gi * og * np + first * plane..],
                            row_stride: np,
                            col_stride: 1,
                        };
                        sgemm(
                            k,
                            len,
                            og,
                            View::transposed(&weights[gi * og * k..(gi + 1) * og * k], k),
                            dy_block,
                            &mut dcols[gi * k * len..(gi + 1) * k * len],
                            false,
                        );
                    }
                    col2im_batch(
                        &dcols[..rows * len],
                        &win,
                        count,
                        &mut grad[first * win.c * hw..(first + count) * win.c * hw],
                    );
                }
                dx = Some(Tensor::from_vec(grad, a.bottom[0].shape(), &self.device)?);
            }
            Ok(())
        })?;
        Ok((vec![dx], pgrads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::prototxt;

    /// Caffe's rules for the geometry fields of convolutions and pooling:
    /// a convolution's pad_h alone leaves pad_w 0, a stride_h alone leaves
    /// stride_w 0 (refused), and `pad` with pad_h is refused; pooling wants
    /// `pad` alone or both pad_h and pad_w, the kernel one way, none with
    /// global_pooling.
    #[test]
    fn geometry_fields_follow_caffes_rules() {
        let conv = |text: &str| {
            let p: ConvolutionParameter = prototxt::parse(text, std::path::Path::new("c")).unwrap();
            settings(&p, "c").map(|s| (s.ph, s.pw, s.sh, s.sw))
        };
        assert_eq!(conv("kernel_size: 3 pad_h: 2").unwrap(), (2, 0, 1, 1));
        assert_eq!(
            conv("kernel_size: 3 pad_w: 1 stride: 2").unwrap(),
            (0, 1, 2, 2)
        );
        let e = conv("kernel_size: 3 stride_h: 2").unwrap_err().to_string();
        assert!(e.contains("stride 2x0"), "{e}");
        let e = conv("kernel_size: 3 pad: 1 pad_h: 2 pad_w: 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("give pad or pad_h and pad_w, not both"), "{e}");
        let pool = |text: &str| {
            let p: crate::caffe::proto::PoolingParameter =
                prototxt::parse(text, std::path::Path::new("p")).unwrap();
            super::super::pool::Pooling::new(p, "p", &Device::Cpu, OpPath::CpuKernels)
                .unwrap()
                .setup(&[vec![1, 1, 6, 6]])
                .map(|t| t[0].clone())
        };
        assert_eq!(
            pool("kernel_size: 2 stride: 2 pad: 1").unwrap(),
            [1, 1, 4, 4]
        );
        assert_eq!(
            pool("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1").unwrap(),
            [1, 1, 3, 4]
        );
        for bad in [
            "kernel_size: 2 pad_h: 1",
            "kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1",
            "kernel_size: 2 stride_w: 2",
            "kernel_size: 2 kernel_h: 2 kernel_w: 2",
            "kernel_h: 2",
            "global_pooling: true kernel_size: 2",
        ] {
            assert!(pool(bad).is_err(), "{bad}");
        }
    }

    /// The input gradient made a block of images at a time (2, 2 and a
    /// ragged 1 of 5) equals the one made in one go, and so do the top
    /// and the weight gradient, for groups, stride and padding.
    #[test]
    fn input_gradient_blocks_equal_the_whole_batch() {
        let text = "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 \
                    weight_filler { type: \"gaussian\" std: 0.3 } \
                    bias_filler { type: \"constant\" value: 0.1 }";
        let p: ConvolutionParameter = prototxt::parse(text, std::path::Path::new("c")).unwrap();
        let shape = [5usize, 4, 7, 6];
        let count: usize = shape.iter().product();
        let x = Tensor::from_vec(
            (0..count)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect(),
            &shape,
            &Device::Cpu,
        )
        .unwrap();
        let run = |budget: usize| {
            let ctx = BuildContext::cpu(".", 3, Phase::Train);
            let mut l = Convolution::new(p.clone(), &ctx, ctx.caffe_rng.clone(), "c").unwrap();
            l.dcols_budget = budget;
            l.setup(&[shape.to_vec()]).unwrap();
            let top = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
            let dy = (top[0].clone() * 0.5).unwrap().sin().unwrap();
            let (dx, dp) = l
                .backward(&BackwardArgs {
                    bottom: std::slice::from_ref(&x),
                    top: &top,
                    top_diff: &[Some(dy)],
                    propagate: &[true],
                    param_grad: &[true, true],
                })
                .unwrap();
            let v = |t: &Option<Tensor>| to_vec(t.as_ref().unwrap()).unwrap();
            (to_vec(&top[0]).unwrap(), v(&dx[0]), v(&dp[0]), v(&dp[1]))
        };
        // 18 rows of 4x3 positions: 216 values an image.
        let (rows, plane) = (18, 12);
        assert_eq!(block_images(2 * rows * plane + 5, rows, plane, 5), 2);
        let blocked = run(2 * rows * plane + 5);
        let whole = run(DCOLS_BLOCK);
        assert_eq!(blocked.0, whole.0);
        assert!(whole.1.iter().any(|&v| v != 0.0));
        for (a, b) in blocked.1.iter().zip(&whole.1) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!((blocked.2, blocked.3), (whole.2, whole.3));
    }
}

/// Behind a Filter a convolution sees fewer images than it was set up for.
#[cfg(test)]
mod batch_change {
    use super::super::{create, BackwardArgs, BuildContext, Layer};
    use crate::caffe::proto::{LayerParameter, Phase};
    use candle_core::{Device, Tensor};

    /// Forward and backward of `l` on `x` with top gradient `dy`: the top,
    /// the input gradient and the parameter gradients, as values.
    fn pass(l: &mut dyn Layer, x: &Tensor, dy: &Tensor) -> Vec<Vec<f32>> {
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let top = l.forward(std::slice::from_ref(x), Phase::Train).unwrap();
        let (dx, dp) = l
            .backward(&BackwardArgs {
                bottom: std::slice::from_ref(x),
                top: &top,
                top_diff: &[Some(dy.clone())],
                propagate: &[true],
                param_grad: &[true, true],
            })
            .unwrap();
        let mut out = vec![v(&top[0]), v(dx[0].as_ref().unwrap())];
        out.extend(dp.iter().map(|g| v(g.as_ref().unwrap())));
        out
    }

    #[test]
    fn reshaped_to_fewer_images_it_computes_as_one_set_up_for_them() {
        let p: LayerParameter = crate::caffe::prototxt::parse(
            r#"name: "c" type: "Convolution" convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }"#,
            std::path::Path::new("c"),
        )
        .unwrap();
        let ctx = BuildContext::cpu(".", 1, Phase::Train);
        let (mut eight, mut two) = (create(&p, &ctx, 0).unwrap(), create(&p, &ctx, 0).unwrap());
        eight.setup(&[vec![8, 8, 7, 7]]).unwrap();
        two.setup(&[vec![2, 8, 7, 7]]).unwrap();
        for (i, w) in eight.params().to_vec().into_iter().enumerate() {
            two.params_mut()[i] = w;
        }
        let top = eight.reshape(&[vec![2, 8, 7, 7]]).unwrap();
        assert_eq!(top, [vec![2, 16, 7, 7]]);
        let x = Tensor::randn(0f32, 1.0, (2, 8, 7, 7), &Device::Cpu).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (2, 16, 7, 7), &Device::Cpu).unwrap();
        assert_eq!(pass(eight.as_mut(), &x, &dy), pass(two.as_mut(), &x, &dy));
        let err = eight.reshape(&[vec![2, 8, 6, 7]]).unwrap_err().to_string();
        assert!(err.contains("set up for 8x7x7 images"), "{err}");
    }
}
