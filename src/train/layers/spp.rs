//! SPP, spatial pyramid pooling (He et al.): level `l` of `pyramid_height`
//! pools the whole input into `2^l x 2^l` bins, with the kernel, stride and
//! padding Caffe derives from the input's size, and the levels' outputs are
//! flattened and concatenated, so any input size gives a fixed-length
//! vector. With one level the top is the pooled 4-D blob itself, as in
//! Caffe. Each level is a [`Pooling`] layer, so every op path has it.
use super::pool::Pooling;
use super::{nchw, BackwardArgs, Grads, Layer, OpPath};
use crate::caffe::proto::{
    pooling_parameter::PoolMethod, spp_parameter, LayerParameter, Phase, PoolingParameter,
};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

pub struct Spp {
    ctx: String,
    height: u32,
    pool: PoolMethod,
    name: String,
    device: Device,
    path: OpPath,
    levels: Vec<Pooling>,
    /// Each level's top shape, and the last forward's top.
    shapes: Vec<Vec<usize>>,
    tops: Vec<Tensor>,
}

impl Spp {
    pub fn new(param: &LayerParameter, device: &Device, path: OpPath) -> Result<Self> {
        let name = param.name().to_string();
        let ctx = format!("layer '{name}'");
        let p = param.spp_param.unwrap_or_default();
        let pool = match p.pool() {
            spp_parameter::PoolMethod::Max => PoolMethod::Max,
            spp_parameter::PoolMethod::Ave => PoolMethod::Ave,
            spp_parameter::PoolMethod::Stochastic => {
                return Err(Error::model(&ctx, "STOCHASTIC pooling is not supported"))
            }
        };
        if p.pyramid_height() == 0 || p.pyramid_height() > 16 {
            return Err(Error::model(
                &ctx,
                format!(
                    "spp_param.pyramid_height must be 1 to 16, got {}",
                    p.pyramid_height()
                ),
            ));
        }
        Ok(Spp {
            ctx,
            height: p.pyramid_height(),
            pool,
            name,
            device: device.clone(),
            path,
            levels: Vec::new(),
            shapes: Vec::new(),
            tops: Vec::new(),
        })
    }
}

/// Caffe's pooling window for `bins` bins over `size` pixels: the kernel
/// (and stride) `ceil(size / bins)`, and half the overhang as padding
/// (rounded up); `None` where the padding reaches the kernel, which Caffe
/// refuses (an input smaller than the bins).
fn window(size: usize, bins: usize) -> Option<(u32, u32)> {
    let kernel = size.div_ceil(bins);
    let pad = (kernel * bins - size).div_ceil(2);
    (pad < kernel).then_some((kernel as u32, pad as u32))
}

impl Layer for Spp {
    fn type_name(&self) -> &'static str {
        "SPP"
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let [n, _, h, w] = nchw(bottom, &self.ctx)?;
        self.levels.clear();
        self.shapes.clear();
        for level in 0..self.height {
            let bins = 1usize << level;
            let (Some((kh, ph)), Some((kw, pw))) = (window(h, bins), window(w, bins)) else {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "a {h}x{w} input is too small for pyramid level {level} ({bins}x{bins} bins); \
                         lower spp_param.pyramid_height"
                    ),
                ));
            };
            let p = PoolingParameter {
                pool: Some(self.pool as i32),
                kernel_h: Some(kh),
                kernel_w: Some(kw),
                stride_h: Some(kh),
                stride_w: Some(kw),
                pad_h: Some(ph),
                pad_w: Some(pw),
                ..Default::default()
            };
            let mut pool = Pooling::new(p, &self.name, &self.device, self.path)?;
            let shape = pool.setup(bottom)?.remove(0);
            self.levels.push(pool);
            self.shapes.push(shape);
        }
        if self.height == 1 {
            return Ok(self.shapes.clone());
        }
        let width = self
            .shapes
            .iter()
            .map(|s| s[1..].iter().product::<usize>())
            .sum();
        Ok(vec![vec![n, width]])
    }

    fn forward(&mut self, bottom: &[Tensor], phase: Phase) -> Result<Vec<Tensor>> {
        self.tops.clear();
        for l in &mut self.levels {
            self.tops.push(l.forward(bottom, phase)?.remove(0));
        }
        if self.height == 1 {
            return Ok(self.tops.clone());
        }
        let n = bottom[0].dim(0)?;
        let flat = self
            .tops
            .iter()
            .map(|t| t.reshape((n, ())))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(vec![Tensor::cat(&flat, 1)?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let mut dx: Option<Tensor> = None;
        let mut offset = 0;
        for ((l, shape), top) in self.levels.iter_mut().zip(&self.shapes).zip(&self.tops) {
            let len: usize = shape[1..].iter().product();
            let d = if self.height == 1 {
                dy.clone()
            } else {
                dy.narrow(1, offset, len)?.reshape(shape.as_slice())?
            };
            offset += len;
            let (g, _) = l.backward(&BackwardArgs {
                bottom: a.bottom,
                top: std::slice::from_ref(top),
                top_diff: &[Some(d)],
                propagate: &[true],
                param_grad: &[],
            })?;
            let g = g.into_iter().next().flatten().expect("propagated");
            // The levels' gradients add up in level order, as Caffe's
            // split of the bottom sums them.
            dx = Some(match dx {
                Some(sum) => (sum + g)?,
                None => g,
            });
        }
        Ok((vec![dx], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_input_as_caffe_derives_them() {
        // 13 pixels in 4 bins: kernel 4, 3 pixels over, padding 2.
        assert_eq!(window(13, 4), Some((4, 2)));
        assert_eq!(window(13, 1), Some((13, 0)));
        assert_eq!(window(6, 4), Some((2, 1)));
        // Fewer pixels than bins: the padding reaches the kernel.
        assert_eq!(window(5, 4), None);
        assert_eq!(window(1, 2), None);
    }
}
