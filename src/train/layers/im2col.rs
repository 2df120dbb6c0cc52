//! Im2col: each image unfolded into its column matrix, as a convolution
//! with `convolution_param`'s kernel, pad, stride and dilation sees it (a
//! layer Caffe has for building one's own convolutions): the top is
//! `N x (C kh kw) x OH x OW`, the value at (row `(c, ki, kj)`, position)
//! the input pixel that kernel tap reads there, 0 in the padding. The
//! gradient folds back (col2im), summing where windows overlap. The CPU
//! runs the convolution's own im2col/col2im kernels; other devices gather
//! through an index table, and fold with the convolution's fold.
use super::conv::settings;
use super::{checked_count, nchw, BackwardArgs, BuildContext, Grads, Layer, OpPath};
use crate::caffe::proto::{ConvolutionParameter, Phase};
use crate::error::{Error, Result};
use crate::train::kernels::{col2im_plane, im2col_row, Window};
use crate::train::tensor_ops::Col2Im;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub struct Im2col {
    p: ConvolutionParameter,
    name: String,
    device: Device,
    path: OpPath,
    win: Option<Window>,
    /// Off the CPU kernels: where each top value comes from in an image
    /// (an index past the image for the padding's zeros), and the fold.
    tables: Option<(Tensor, Col2Im)>,
}

impl Im2col {
    pub fn new(p: Option<ConvolutionParameter>, ctx: &BuildContext, name: &str) -> Result<Self> {
        let p = p.ok_or_else(|| {
            Error::model(
                format!("layer '{name}'"),
                "needs convolution_param (its kernel, pad, stride and dilation)",
            )
        })?;
        Ok(Im2col {
            p,
            name: name.to_string(),
            device: ctx.device.clone(),
            path: ctx.path(),
            win: None,
            tables: None,
        })
    }
}

/// For each (row, position) of one image's column matrix, the index of the
/// input value it copies, or `c h w` (a zero appended) in the padding.
fn gather_index(win: &Window) -> Vec<u32> {
    let (k, plane) = (win.kh * win.kw, win.oh * win.ow);
    let zero = (win.c * win.h * win.w) as u32;
    let mut index = Vec::with_capacity(win.c * k * plane);
    for c in 0..win.c {
        for ki in 0..win.kh {
            for kj in 0..win.kw {
                for oy in 0..win.oh {
                    let iy = (oy * win.sh + ki * win.dh) as isize - win.ph as isize;
                    for ox in 0..win.ow {
                        let ix = (ox * win.sw + kj * win.dw) as isize - win.pw as isize;
                        let inside =
                            (0..win.h as isize).contains(&iy) && (0..win.w as isize).contains(&ix);
                        index.push(if inside {
                            ((c * win.h + iy as usize) * win.w + ix as usize) as u32
                        } else {
                            zero
                        });
                    }
                }
            }
        }
    }
    index
}

impl Layer for Im2col {
    fn type_name(&self) -> &'static str {
        "Im2col"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        if self.p.axis() != 1 || self.p.force_nd_im2col() {
            return Err(Error::model(
                &ctx,
                "unfolds N x C x H x W blobs (axis 1, two spatial axes); other axes and force_nd_im2col are not supported",
            ));
        }
        let [n, c, h, w] = nchw(bottom, &ctx)?;
        let s = settings(&self.p, &self.name)?;
        let (ext_h, ext_w) = (s.dh * (s.kh - 1) + 1, s.dw * (s.kw - 1) + 1);
        if h + 2 * s.ph < ext_h || w + 2 * s.pw < ext_w {
            return Err(Error::model(
                &ctx,
                format!(
                    "kernel {}x{} is larger than the padded input {h}x{w}",
                    s.kh, s.kw
                ),
            ));
        }
        let win = Window {
            c,
            h,
            w,
            kh: s.kh,
            kw: s.kw,
            ph: s.ph,
            pw: s.pw,
            sh: s.sh,
            sw: s.sw,
            dh: s.dh,
            dw: s.dw,
            oh: (h + 2 * s.ph - ext_h) / s.sh + 1,
            ow: (w + 2 * s.pw - ext_w) / s.sw + 1,
        };
        let top = vec![n, c * s.kh * s.kw, win.oh, win.ow];
        checked_count(&top, &ctx, "top")?;
        if self.path.tensor_ops() {
            let index = gather_index(&win);
            let len = index.len();
            let fold = if self.path.fused() {
                Col2Im::fused(&win)
            } else {
                Col2Im::new(&win, &self.device)?
            };
            self.tables = Some((Tensor::from_vec(index, len, &self.device)?, fold));
        }
        self.win = Some(win);
        Ok(vec![top])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let win = self.win.expect("setup ran");
        let x = &bottom[0];
        let n = x.dim(0)?;
        let (rows, plane) = (win.c * win.kh * win.kw, win.oh * win.ow);
        if let Some((index, _)) = &self.tables {
            let flat = x.reshape((n, win.c * win.h * win.w))?;
            let zero = Tensor::zeros((n, 1), x.dtype(), x.device())?;
            let cols = Tensor::cat(&[flat, zero], 1)?.index_select(index, 1)?;
            return Ok(vec![cols.reshape((n, rows, win.oh, win.ow))?]);
        }
        let img = win.c * win.h * win.w;
        let mut out = vec![0f32; n * rows * plane];
        super::with_f32(x, |xs| {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let (image, r) = (i / rows, i % rows);
                im2col_row(&xs[image * img..(image + 1) * img], &win, 1, r, dst);
            })
        })?;
        Ok(vec![Tensor::from_vec(
            out,
            (n, rows, win.oh, win.ow),
            &self.device,
        )?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let win = self.win.expect("setup ran");
        let n = dy.dim(0)?;
        let (rows, plane) = (win.c * win.kh * win.kw, win.oh * win.ow);
        if let Some((_, fold)) = &self.tables {
            let dx = fold.apply(&dy.reshape((n, rows, plane))?)?;
            return Ok((vec![Some(dx)], vec![]));
        }
        let hw = win.h * win.w;
        let mut dx = vec![0f32; n * win.c * hw];
        super::with_f32(dy, |ds| {
            dx.par_chunks_mut(hw).enumerate().for_each(|(i, out)| {
                let (image, c) = (i / win.c, i % win.c);
                let cols = &ds[image * rows * plane..(image + 1) * rows * plane];
                col2im_plane(cols, &win, 1, 0, c, out);
            })
        })?;
        Ok((
            vec![Some(Tensor::from_vec(
                dx,
                a.bottom[0].shape(),
                &self.device,
            )?)],
            vec![],
        ))
    }
}
