//! BatchReindex: a new batch made of the bottom's items in the order (and
//! with the repeats) a second bottom of indices gives; item `i` of the top
//! is item `index[i]` of the bottom. An item's gradient is the sum of the
//! gradients of the top items copied from it; the indices get none.
use super::embed::indices;
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

pub struct BatchReindex {
    ctx: String,
    /// The bottom's batch size.
    items: usize,
    /// The last forward's indices, for the backward pass.
    ids: Option<Tensor>,
}

impl BatchReindex {
    pub fn new(name: &str) -> Self {
        BatchReindex {
            ctx: format!("layer '{name}'"),
            items: 0,
            ids: None,
        }
    }
}

impl Layer for BatchReindex {
    fn allow_force_backward(&self, i: usize) -> bool {
        // The indices take no gradient (Caffe aborts when forced).
        i == 0
    }
    fn type_name(&self) -> &'static str {
        "BatchReindex"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (data, index) = (&bottom[0], &bottom[1]);
        if data.is_empty() || index.len() != 1 {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "needs a batch and a 1-D blob of indices, got shapes {data:?} and {index:?}"
                ),
            ));
        }
        self.items = data[0];
        let mut top = data.clone();
        top[0] = index[0];
        Ok(vec![top])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let ids = indices(&bottom[1], self.items, &self.ctx, "index")?;
        let y = bottom[0].index_select(&ids, 0)?;
        self.ids = Some(ids);
        Ok(vec![y])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if a.propagate[1] {
            return Err(Error::model(
                &self.ctx,
                "cannot pass a gradient to its indices; give it propagate_down: true propagate_down: false",
            ));
        }
        let (Some(dy), Some(ids), true) = (&a.top_diff[0], &self.ids, a.propagate[0]) else {
            return Ok((vec![None, None], vec![]));
        };
        let zeros = Tensor::zeros(a.bottom[0].shape(), DType::F32, a.bottom[0].device())?;
        Ok((vec![Some(zeros.index_add(ids, dy, 0)?), None], vec![]))
    }
}
