//! LSTMUnit: one timestep of an LSTM cell, as Caffe's layer computes it
//! and as the LSTM layer runs it at every timestep. From the previous cell
//! state `c_prev` (1 x N x H), the gate inputs (1 x N x 4H, the blocks
//! i, f, o, g in that order) and the sequence-continuation flags `cont`
//! (1 x N):
//!
//! ```text
//! i = σ(i'), f = cont · σ(f'), o = σ(o'), g = tanh(g')
//! c = f ⊙ c_prev + i ⊙ g,   h = o ⊙ tanh(c)
//! ```
//!
//! so a `cont` of 0 starts a new sequence (the old cell is forgotten).
//! The flags take no gradient, as in Caffe.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use candle_core::{Tensor, D};

/// A cell step's activations, kept for its backward pass.
pub(super) struct Cell {
    i: Tensor,
    f: Tensor,
    o: Tensor,
    g: Tensor,
    tanh_c: Tensor,
    c_prev: Tensor,
}

/// σ(x) = 1 / (1 + e^-x).
pub(super) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.neg()?.exp()?.affine(1.0, 1.0)?.recip()?)
}

/// 1 - x², the derivative of tanh given its value x.
pub(super) fn one_minus_square(x: &Tensor) -> Result<Tensor> {
    Ok(x.sqr()?.affine(-1.0, 1.0)?)
}

/// x (1 - x), the derivative of σ given its value x.
fn sigmoid_slope(x: &Tensor) -> Result<Tensor> {
    Ok(x.mul(&x.affine(-1.0, 1.0)?)?)
}

/// One step: `c_prev` and the result N x H, `gates` N x 4H, `cont` N x 1.
/// Returns (c, h) and the activations for [`cell_backward`].
pub(super) fn cell_forward(
    c_prev: &Tensor,
    gates: &Tensor,
    cont: &Tensor,
) -> Result<(Tensor, Tensor, Cell)> {
    let h = c_prev.dim(D::Minus1)?;
    let block = |k: usize| gates.narrow(D::Minus1, k * h, h);
    let i = sigmoid(&block(0)?)?;
    let f = sigmoid(&block(1)?)?.broadcast_mul(cont)?;
    let o = sigmoid(&block(2)?)?;
    let g = block(3)?.tanh()?;
    let c = f.mul(c_prev)?.add(&i.mul(&g)?)?;
    let tanh_c = c.tanh()?;
    let hidden = o.mul(&tanh_c)?;
    let cell = Cell {
        i,
        f,
        o,
        g,
        tanh_c,
        c_prev: c_prev.clone(),
    };
    Ok((c, hidden, cell))
}

/// The gradients of a step's inputs from those of its outputs (`None` =
/// zero): (c_prev's, the gate inputs'). Caffe's arithmetic, including its
/// gate slope f (1 - f) taken on the cont-scaled forget gate.
pub(super) fn cell_backward(
    cell: &Cell,
    dc: Option<&Tensor>,
    dh: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let zeros = || cell.c_prev.zeros_like();
    let dh = match dh {
        Some(d) => d.clone(),
        None => zeros()?,
    };
    let through_h = dh.mul(&cell.o)?.mul(&one_minus_square(&cell.tanh_c)?)?;
    let c_term = match dc {
        Some(d) => d.add(&through_h)?,
        None => through_h,
    };
    let dc_prev = c_term.mul(&cell.f)?;
    let di = c_term.mul(&cell.g)?.mul(&sigmoid_slope(&cell.i)?)?;
    let df = c_term.mul(&cell.c_prev)?.mul(&sigmoid_slope(&cell.f)?)?;
    let do_ = dh.mul(&cell.tanh_c)?.mul(&sigmoid_slope(&cell.o)?)?;
    let dg = c_term.mul(&cell.i)?.mul(&one_minus_square(&cell.g)?)?;
    let dgates = Tensor::cat(&[di, df, do_, dg], D::Minus1)?;
    Ok((dc_prev, dgates))
}

/// Caffe's LSTMUnit layer: bottoms c_prev (1 x N x H), gate inputs
/// (1 x N x 4H), cont (1 x N); tops c and h (1 x N x H).
pub struct LstmUnit {
    ctx: String,
    cell: Option<Cell>,
}

impl LstmUnit {
    pub fn new(name: &str) -> Self {
        LstmUnit {
            ctx: format!("layer '{name}'"),
            cell: None,
        }
    }
}

impl Layer for LstmUnit {
    fn type_name(&self) -> &'static str {
        "LSTMUnit"
    }

    fn num_bottoms(&self) -> usize {
        3
    }

    fn allow_force_backward(&self, i: usize) -> bool {
        i != 2
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let (c, x, cont) = (&bottom[0], &bottom[1], &bottom[2]);
        let ok = c.len() == 3
            && x.len() == 3
            && cont.len() == 2
            && c[0] == 1
            && x[0] == 1
            && cont[0] == 1
            && x[1] == c[1]
            && cont[1] == c[1]
            && x[2] == 4 * c[2];
        if !ok {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "takes the previous cell (1 x N x H), the gate inputs (1 x N x 4H) and the \
                     continuation flags (1 x N); got {c:?}, {x:?} and {cont:?}"
                ),
            ));
        }
        Ok(vec![c.clone(), c.clone()])
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let n = bottom[0].dim(1)?;
        let c_prev = bottom[0].squeeze(0)?;
        let gates = bottom[1].squeeze(0)?;
        let cont = bottom[2].reshape((n, 1))?;
        let (c, h, cell) = cell_forward(&c_prev, &gates, &cont)?;
        self.cell = Some(cell);
        Ok(vec![c.unsqueeze(0)?, h.unsqueeze(0)?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if a.propagate[2] {
            return Err(Error::model(
                &self.ctx,
                "cannot pass a gradient to the continuation flags (bottom 3); give it propagate_down: false",
            ));
        }
        let Some(cell) = &self.cell else {
            return Ok((vec![None; 3], Vec::new()));
        };
        let squeeze = |t: &Option<Tensor>| t.as_ref().map(|t| t.squeeze(0)).transpose();
        let (dc, dh) = (squeeze(&a.top_diff[0])?, squeeze(&a.top_diff[1])?);
        let (dc_prev, dgates) = cell_backward(cell, dc.as_ref(), dh.as_ref())?;
        let keep = |i: usize, t: Tensor| -> Result<Option<Tensor>> {
            Ok(if a.propagate[i] {
                Some(t.unsqueeze(0)?)
            } else {
                None
            })
        };
        Ok((vec![keep(0, dc_prev)?, keep(1, dgates)?, None], Vec::new()))
    }
}
