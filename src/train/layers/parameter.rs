//! Parameter: a layer without bottoms whose one top is its one learned blob
//! (of `parameter_param.shape`), so a net can learn a free tensor, e.g. a
//! bias added by an Eltwise. Caffe leaves the blob unfilled, hence zeros,
//! until weights are copied in; its gradient is the top's.
use super::{checked_count, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

pub struct Parameter {
    ctx: String,
    shape: Vec<usize>,
    params: Vec<Tensor>,
    device: Device,
}

impl Parameter {
    pub fn new(param: &LayerParameter, device: Device) -> Result<Self> {
        let shape = param
            .parameter_param
            .as_ref()
            .and_then(|p| p.shape.as_ref())
            .ok_or_else(|| {
                Error::model(
                    format!("layer '{}'", param.name()),
                    "needs parameter_param { shape { dim: … } }",
                )
            })?
            .dim
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| {
                    Error::model(
                        format!("layer '{}'", param.name()),
                        format!("parameter_param.shape has a negative dim {d}"),
                    )
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Parameter {
            ctx: format!("layer '{}'", param.name()),
            shape,
            params: Vec::new(),
            device,
        })
    }
}

impl Layer for Parameter {
    fn type_name(&self) -> &'static str {
        "Parameter"
    }
    fn num_bottoms(&self) -> usize {
        0
    }
    fn setup(&mut self, _bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // Checked and reserved first: a typo in the shape is an error, not
        // an allocation abort.
        let n = checked_count(&self.shape, &self.ctx, "parameter blob")?;
        let mut zeros = Vec::new();
        zeros.try_reserve_exact(n).map_err(|_| {
            Error::model(
                &self.ctx,
                format!(
                    "not enough memory for a parameter blob of shape {:?}",
                    self.shape
                ),
            )
        })?;
        zeros.resize(n, 0.0f32);
        self.params = vec![Tensor::from_vec(
            zeros,
            self.shape.as_slice(),
            &self.device,
        )?];
        Ok(vec![self.shape.clone()])
    }
    fn params(&self) -> &[Tensor] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        Ok(vec![self.params[0].clone()])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let g = if a.param_grad[0] {
            a.top_diff[0].clone()
        } else {
            None
        };
        Ok((vec![], vec![g]))
    }
}
