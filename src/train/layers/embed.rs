//! Embed: each input value is an index into a learned `input_dim x
//! num_output` table, and the top holds that row (plus the bias) in place of
//! the index, so the top's shape is the bottom's with `num_output` appended
//! (word vectors; Caffe's one-hot InnerProduct without the one-hot blob).
//! The gradient of a row is the sum of the top gradients of the items that
//! read it; the indices get none (Caffe refuses to backpropagate to them).
use super::{to_vec, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{EmbedParameter, LayerParameter, Phase};
use crate::caffe::rng::SharedCaffeRng;
use crate::error::{Error, Result};
use crate::train::filler::weight_and_bias;
use candle_core::{DType, Device, Tensor};

pub struct Embed {
    p: EmbedParameter,
    device: Device,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    ctx: String,
    params: Vec<Tensor>,
    top: Vec<usize>,
    /// The last forward's indices, for the backward pass.
    ids: Option<Tensor>,
}

impl Embed {
    pub fn new(param: &LayerParameter, device: Device, rng: SharedCaffeRng) -> Result<Self> {
        let ctx = format!("layer '{}'", param.name());
        let p = param.embed_param.clone().unwrap_or_default();
        if p.num_output() == 0 || p.input_dim() == 0 {
            return Err(Error::model(
                &ctx,
                "embed_param needs num_output and input_dim, both > 0",
            ));
        }
        Ok(Embed {
            p,
            device,
            rng,
            ctx,
            params: Vec::new(),
            top: Vec::new(),
            ids: None,
        })
    }
}

/// The values of `t` as row indices below `rows`: Caffe casts each to an
/// int; a value that is negative, too large or not whole is an error here
/// (Caffe checks only in debug builds and reads outside its table).
pub(super) fn indices(t: &Tensor, rows: usize, ctx: &str, what: &str) -> Result<Tensor> {
    let ids = to_vec(t)?
        .into_iter()
        .map(|v| {
            if v >= 0.0 && v < rows as f32 && v.fract() == 0.0 {
                Ok(v as u32)
            } else {
                Err(Error::model(
                    ctx,
                    format!("{what} {v} is not a whole number in 0..{rows}"),
                ))
            }
        })
        .collect::<Result<Vec<u32>>>()?;
    let n = ids.len();
    Ok(Tensor::from_vec(ids, n, t.device())?)
}

impl Layer for Embed {
    fn allow_force_backward(&self, _i: usize) -> bool {
        // The indices take no gradient (Caffe aborts when forced).
        false
    }
    fn type_name(&self) -> &'static str {
        "Embed"
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (k, n) = (self.p.input_dim() as usize, self.p.num_output() as usize);
        self.params = weight_and_bias(
            self.p.weight_filler.as_ref(),
            &[k, n],
            self.p
                .bias_term()
                .then_some((self.p.bias_filler.as_ref(), n)),
            &self.rng,
            &self.ctx,
            &self.device,
        )?;
        let mut top = bottom[0].clone();
        top.push(n);
        self.top = top.clone();
        Ok(vec![top])
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let ids = indices(&bottom[0], self.p.input_dim() as usize, &self.ctx, "index")?;
        let mut y = self.params[0].index_select(&ids, 0)?;
        if let Some(b) = self.params.get(1) {
            y = y.broadcast_add(b)?;
        }
        self.ids = Some(ids);
        Ok(vec![y.reshape(self.top.as_slice())?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if a.propagate[0] {
            return Err(Error::model(
                &self.ctx,
                "cannot pass a gradient to its input (the indices); give it propagate_down: false",
            ));
        }
        let mut pg = vec![None; self.params.len()];
        let (Some(dy), Some(ids)) = (&a.top_diff[0], &self.ids) else {
            return Ok((vec![None], pg));
        };
        let n = self.p.num_output() as usize;
        let dy = dy.reshape((ids.dim(0)?, n))?;
        if a.param_grad[0] {
            let zeros = Tensor::zeros(self.params[0].shape(), DType::F32, &self.device)?;
            // index_add sums the rows in item order, as Caffe's loop does.
            pg[0] = Some(zeros.index_add(ids, &dy, 0)?);
        }
        if self.params.len() > 1 && a.param_grad[1] {
            pg[1] = Some(dy.sum(0)?);
        }
        Ok((vec![None], pg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str) -> Embed {
        let p = crate::caffe::prototxt::parse(text, std::path::Path::new("e.prototxt")).unwrap();
        Embed::new(&p, Device::Cpu, crate::caffe::rng::shared(1)).unwrap()
    }

    #[test]
    fn rows_are_looked_up_and_their_gradients_summed() {
        let mut l =
            layer("name: \"e\" embed_param { num_output: 2 input_dim: 3 bias_term: false }");
        assert_eq!(l.setup(&[vec![2, 2]]).unwrap(), [vec![2, 2, 2]]);
        l.params[0] = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[2f32, 0.], [2., 1.]], &Device::Cpu).unwrap();
        let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        assert_eq!(to_vec(&y[0]).unwrap(), [5., 6., 1., 2., 5., 6., 3., 4.]);
        let dy = Tensor::arange(0f32, 8., &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 2));
        let (g, pg) = l
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &y,
                top_diff: &[Some(dy.unwrap())],
                propagate: &[false],
                param_grad: &[true],
            })
            .unwrap();
        assert!(g[0].is_none());
        // Row 2 is read by items 0 and 2: (0,1) + (4,5).
        assert_eq!(
            to_vec(pg[0].as_ref().unwrap()).unwrap(),
            [2., 3., 6., 7., 4., 6.]
        );
    }

    #[test]
    fn an_index_outside_the_table_is_named() {
        let mut l = layer("name: \"words\" embed_param { num_output: 2 input_dim: 3 }");
        l.setup(&[vec![3]]).unwrap();
        for bad in [3f32, -1., 0.5] {
            let x = Tensor::new(&[0f32, bad, 1.], &Device::Cpu).unwrap();
            let e = l.forward(&[x], Phase::Train).err().unwrap().to_string();
            assert!(
                e.contains("layer 'words'") && e.contains(&format!("index {bad}")),
                "{e}"
            );
        }
        let p = crate::caffe::prototxt::parse(
            "name: \"w\" embed_param { num_output: 2 }",
            std::path::Path::new("e"),
        )
        .unwrap();
        assert!(Embed::new(&p, Device::Cpu, crate::caffe::rng::shared(1)).is_err());
    }
}
