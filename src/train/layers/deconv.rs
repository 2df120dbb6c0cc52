//! Deconvolution: the transpose of a convolution, Caffe's upsampling layer
//! (FCN's, with the bilinear filler and `group` = channels). Its weights
//! have Caffe's layout, `input channels x num_output/group x kh x kw`: the
//! layout of the convolution it transposes, which maps the top back onto
//! the bottom. So the forward pass is that convolution's input gradient,
//! the input gradient its forward pass, and the weight gradient its weight
//! gradient with the roles of the blobs swapped. Every device runs these
//! as the tensor ops of [`crate::train::tensor_ops`]; the top is
//! `stride (in - 1) + dilation (k - 1) + 1 - 2 pad` per axis.
use super::conv::{check_groups, settings, Settings, Strided};
use super::{checked_count, nchw, BackwardArgs, BuildContext, Grads, Layer};
use crate::caffe::proto::{ConvolutionParameter, Phase};
use crate::caffe::rng::SharedCaffeRng;
use crate::error::{Error, Result};
use crate::train::filler::weight_and_bias;
use crate::train::kernels::Window;
use crate::train::tensor_ops::{self, Col2Im, ConvGeom};
use candle_core::{DType, Device, Tensor};

pub struct Deconvolution {
    p: ConvolutionParameter,
    device: Device,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    name: String,
    params: Vec<Tensor>,
    fused: bool,
    precision: crate::train::precision::Precision,
    /// The transposed convolution's geometry (its input is our top) and its
    /// input-gradient fold, which is our forward pass.
    conv: Option<(ConvGeom, Col2Im)>,
    /// Unequal strides: the bottom spread onto a stride-1 grid.
    strided: Option<Strided>,
    /// Unequal dilations: the kernel spread onto its dilated extent.
    dilated: Option<Strided>,
    num_output: usize,
}

impl Deconvolution {
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
        Ok(Deconvolution {
            num_output: p.num_output() as usize,
            p,
            device: ctx.device.clone(),
            rng,
            name: name.to_string(),
            params: Vec::new(),
            fused: ctx.path().fused(),
            precision: ctx.precision(),
            conv: None,
            strided: None,
            dilated: None,
        })
    }

    /// The transposed convolution's geometry and fold.
    fn conv(&self) -> &(ConvGeom, Col2Im) {
        self.conv.as_ref().expect("setup ran")
    }

    /// The kernel, or with unequal dilations the kernel spread onto its
    /// extent.
    fn weights(&self) -> Result<Tensor> {
        Ok(match &self.dilated {
            Some(d) => d.spread(&self.params[0])?,
            None => self.params[0].clone(),
        })
    }

    /// The bottom as the transposed convolution reads it: itself, or with
    /// unequal strides spread onto every stride's row and column.
    fn spread(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.strided {
            Some(st) => st.spread(x)?,
            None => x.contiguous()?,
        })
    }
}

impl Layer for Deconvolution {
    fn type_name(&self) -> &'static str {
        "Deconvolution"
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
        let g = p.group() as usize;
        check_groups(c, self.num_output, g, &ctx)?;
        let size = |input: usize, k: usize, pad: usize, s: usize, d: usize| {
            (s * (input - 1) + d * (k - 1) + 1)
                .checked_sub(2 * pad)
                .filter(|&s| s > 0)
        };
        let (Some(oh), Some(ow)) = (size(h, kh, ph, sh, dh), size(w, kw, pw, sw, dw)) else {
            return Err(Error::model(
                &ctx,
                format!(
                    "pad {ph}x{pw} leaves no output for a {h}x{w} input and a {kh}x{kw} kernel"
                ),
            ));
        };
        // The convolution from our top (oh x ow) back to our bottom (h x w);
        // with unequal strides (candle's convolution takes one), at stride 1
        // back to the bottom spread onto every stride's row and column.
        let (bh, bw) = if sh == sw {
            self.strided = None;
            (h, w)
        } else {
            let full = ((h - 1) * sh + 1, (w - 1) * sw + 1);
            checked_count(&[n, c, full.0, full.1], &ctx, "the spread input")?;
            self.strided = Some(Strided::new((sh, sw), (h, w), full, &self.device)?);
            full
        };
        let step = if sh == sw { sh } else { 1 };
        // Unequal dilations: the kernel spread onto its extent, undilated.
        let (ext_h, ext_w) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
        self.dilated = if dh == dw {
            None
        } else {
            Some(Strided::new(
                (dh, dw),
                (kh, kw),
                (ext_h, ext_w),
                &self.device,
            )?)
        };
        let (kh_run, kw_run, dilation) = if dh == dw {
            (kh, kw, dh)
        } else {
            (ext_h, ext_w, 1)
        };
        let win = Window {
            c: self.num_output,
            h: oh,
            w: ow,
            kh: kh_run,
            kw: kw_run,
            ph,
            pw,
            sh: step,
            sw: step,
            dh: dilation,
            dw: dilation,
            oh: bh,
            ow: bw,
        };
        let geom = ConvGeom {
            group: g,
            pad: (ph, pw),
            stride: step,
            dilation,
            precision: self.precision,
            cudnn: false,
        };
        // Sizes first: the fold table below is allocated now, before the net
        // checks its blobs.
        checked_count(&[n, self.num_output, oh, ow], &ctx, "top")?;
        checked_count(
            &[self.num_output, oh, ow, kh, kw],
            &ctx,
            "the input-gradient fold table",
        )?;
        let fold = if self.fused {
            Col2Im::fused(&win)
        } else {
            Col2Im::new(&win, &self.device)?
        };
        self.conv = Some((geom, fold));
        self.params = weight_and_bias(
            p.weight_filler.as_ref(),
            &[c, self.num_output / g, kh, kw],
            p.bias_term()
                .then_some((p.bias_filler.as_ref(), self.num_output)),
            &self.rng,
            &ctx,
            &self.device,
        )?;
        Ok(vec![vec![n, self.num_output, oh, ow]])
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (geom, fold) = self.conv();
        let x = self.spread(&bottom[0])?;
        // Only the batch and channel counts of the convolution's input are read.
        let shape = Tensor::zeros((x.dim(0)?, self.num_output, 1, 1), DType::F32, x.device())?;
        let (y, _, _) = tensor_ops::conv_backward(
            &shape,
            &self.weights()?,
            &x,
            geom,
            fold,
            [true, false, false],
        )?;
        let y = y.expect("asked for");
        Ok(vec![match self.params.get(1) {
            Some(b) => y.broadcast_add(&b.reshape((1, self.num_output, 1, 1))?)?,
            None => y,
        }])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None], vec![None; self.params.len()]));
        };
        let (geom, fold) = self.conv();
        let dy = dy.contiguous()?;
        let dx = if a.propagate[0] {
            let full = tensor_ops::conv_forward(&dy, &self.weights()?, None, geom)?;
            Some(match &self.strided {
                Some(st) => st.keep(&full)?,
                None => full,
            })
        } else {
            None
        };
        let mut pg = vec![None; self.params.len()];
        if a.param_grad[0] {
            let (_, dw, _) = tensor_ops::conv_backward(
                &dy,
                &self.weights()?,
                &self.spread(&a.bottom[0])?,
                geom,
                fold,
                [false, true, false],
            )?;
            pg[0] = match (&self.dilated, dw) {
                (Some(d), Some(g)) => Some(d.keep(&g)?),
                (_, g) => g,
            };
        }
        if self.params.len() > 1 && a.param_grad[1] {
            pg[1] = Some(dy.sum((0, 2, 3))?);
        }
        Ok((vec![dx], pg))
    }
}
