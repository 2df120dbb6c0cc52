//! Filter: keeps the items (first-axis rows) of each bottom whose entry in
//! the last bottom, the selector, is not 0, e.g. the images that have a
//! label for one task of a multi-task net. The tops therefore hold a
//! different number of items from one pass to the next; the layers after
//! it follow that size (see [`Layer::any_batch`]). As in Caffe, the tops
//! have the full batch at set-up, the selector takes no gradient, and an
//! item that was left out gets a zero gradient.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

pub struct Filter {
    ctx: String,
    /// How many bottoms it has (the selector is the last).
    bottoms: usize,
    /// The kept items' indices of the last forward pass (`None` before it).
    kept: Option<Vec<u32>>,
}

impl Filter {
    pub fn new(name: &str) -> Self {
        Filter {
            ctx: format!("layer '{name}'"),
            bottoms: 0,
            kept: None,
        }
    }

    /// The top shapes for these bottoms (Caffe's first Reshape: each
    /// filtered bottom's own shape), after Caffe's checks.
    fn shapes(&self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (selector, data) = bottom
            .split_last()
            .filter(|(_, data)| !data.is_empty())
            .ok_or_else(|| {
                Error::model(
                    &self.ctx,
                    "needs the blobs to filter and then a selector as its last bottom",
                )
            })?;
        if selector.is_empty() || selector[1..].iter().any(|&d| d != 1) {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "its selector (the last bottom) must hold one value per item, shape N x 1 x …, not {selector:?}"
                ),
            ));
        }
        if let Some(s) = data.iter().find(|s| s.first() != Some(&selector[0])) {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "every bottom must have as many items as its selector ({}), not shape {s:?}",
                    selector[0]
                ),
            ));
        }
        Ok(data.to_vec())
    }
}

impl Layer for Filter {
    fn type_name(&self) -> &'static str {
        "Filter"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn variadic_bottoms(&self) -> bool {
        true
    }
    fn any_batch(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, i: usize) -> bool {
        // Everything but the selector (Caffe aborts when that is forced).
        i + 1 < self.bottoms
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        self.bottoms = bottom.len();
        self.shapes(bottom)
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let dims: Vec<Vec<usize>> = bottom.iter().map(|t| t.dims().to_vec()).collect();
        self.shapes(&dims)?;
        let (selector, data) = bottom.split_last().expect("checked by shapes");
        // Any value but 0 keeps its item (NaN too, as in Caffe's `if (x)`).
        let kept: Vec<u32> = selector
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        let tops = data
            .iter()
            .map(|x| keep_rows(x, &kept))
            .collect::<Result<Vec<_>>>()?;
        self.kept = Some(kept);
        Ok(tops)
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let last = a.bottom.len() - 1;
        if a.propagate[last] {
            return Err(Error::model(
                &self.ctx,
                "cannot pass a gradient to its selector (the last bottom); give it propagate_down: false",
            ));
        }
        let kept = self.kept.as_deref().unwrap_or_default();
        let mut grads = Vec::with_capacity(a.bottom.len());
        for (i, x) in a.bottom[..last].iter().enumerate() {
            grads.push(match (&a.top_diff[i], a.propagate[i]) {
                (Some(dy), true) => Some(scatter_rows(x, dy, kept)?),
                _ => None,
            });
        }
        grads.push(None);
        Ok((grads, vec![]))
    }
}

/// The rows `kept` of `x` (an empty first axis when none is kept).
fn keep_rows(x: &Tensor, kept: &[u32]) -> Result<Tensor> {
    if kept.is_empty() {
        let mut dims = x.dims().to_vec();
        dims[0] = 0;
        return Ok(Tensor::zeros(dims, x.dtype(), x.device())?);
    }
    if kept.len() == x.dim(0)? {
        return Ok(x.clone());
    }
    let ids = Tensor::new(kept, x.device())?;
    Ok(x.index_select(&ids, 0)?)
}

/// A gradient shaped like `x`: the rows of `dy` back in the places `kept`
/// took them from, zero elsewhere.
fn scatter_rows(x: &Tensor, dy: &Tensor, kept: &[u32]) -> Result<Tensor> {
    if kept.len() == x.dim(0)? {
        return Ok(dy.clone());
    }
    let zeros = Tensor::zeros(x.shape(), dy.dtype(), x.device())?;
    if kept.is_empty() {
        return Ok(zeros);
    }
    let ids = Tensor::new(kept, x.device())?;
    Ok(zeros.index_add(&ids, dy, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn backward(f: &mut Filter, bottom: &[Tensor], top: &[Tensor], dy: Tensor) -> Tensor {
        let (grads, _) = f
            .backward(&BackwardArgs {
                bottom,
                top,
                top_diff: &[Some(dy), None],
                propagate: &[true, false, false],
                param_grad: &[],
            })
            .unwrap();
        assert!(grads[1].is_none() && grads[2].is_none());
        grads[0].clone().unwrap()
    }

    #[test]
    fn keeps_the_selected_items_and_routes_their_gradients_back() {
        let mut f = Filter::new("f");
        let x = t(&(0..8).map(|v| v as f32).collect::<Vec<_>>(), &[4, 2]);
        let labels = t(&[10.0, 11.0, 12.0, 13.0], &[4]);
        let sel = t(&[0.0, 2.0, 0.0, -1.0], &[4, 1, 1]);
        let shapes = f.setup(&[vec![4, 2], vec![4], vec![4, 1, 1]]).unwrap();
        assert_eq!(shapes, vec![vec![4, 2], vec![4]], "full batch at set-up");
        let bottom = [x, labels, sel];
        let tops = f.forward(&bottom, Phase::Train).unwrap();
        assert_eq!(tops[0].to_vec2::<f32>().unwrap(), [[2.0, 3.0], [6.0, 7.0]]);
        assert_eq!(tops[1].to_vec1::<f32>().unwrap(), [11.0, 13.0]);
        let dx = backward(&mut f, &bottom, &tops, t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
        assert_eq!(
            dx.to_vec2::<f32>().unwrap(),
            [[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [3.0, 4.0]]
        );
    }

    #[test]
    fn a_selector_of_zeros_gives_empty_tops_and_zero_gradients() {
        let mut f = Filter::new("f");
        let x = t(&[1.0; 6], &[3, 2]);
        let bottom = [x, t(&[0.0; 3], &[3]), t(&[0.0; 3], &[3])];
        let tops = f.forward(&bottom, Phase::Train).unwrap();
        assert_eq!(tops[0].dims(), [0, 2]);
        assert_eq!(tops[1].dims(), [0]);
        let dx = backward(&mut f, &bottom, &tops, t(&[], &[0, 2]));
        assert_eq!(dx.to_vec2::<f32>().unwrap(), [[0.0; 2]; 3]);
    }

    #[test]
    fn refuses_a_selector_of_the_wrong_shape_and_a_gradient_for_it() {
        let mut f = Filter::new("f");
        let err = f.setup(&[vec![4, 2], vec![4, 2]]).unwrap_err().to_string();
        assert!(err.contains("one value per item"), "{err}");
        let err = f.setup(&[vec![3, 2], vec![4]]).unwrap_err().to_string();
        assert!(err.contains("as many items as its selector (4)"), "{err}");
        let err = f.setup(&[vec![4]]).unwrap_err().to_string();
        assert!(err.contains("blobs to filter"), "{err}");
        let bottom = [t(&[1.0; 2], &[2]), t(&[1.0, 0.0], &[2])];
        let tops = f.forward(&bottom, Phase::Train).unwrap();
        let err = f
            .backward(&BackwardArgs {
                bottom: &bottom,
                top: &tops,
                top_diff: &[None],
                propagate: &[false, true],
                param_grad: &[],
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("selector"), "{err}");
    }
}
