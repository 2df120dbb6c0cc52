//! Caffe's recurrent layers, RNN and LSTM, computed as the net Caffe
//! unrolls over the timesteps, written out as loops here.
//!
//! Bottoms: the sequence `x` (T x N x …: T timesteps of N independent
//! streams), the continuation flags `cont` (T x N; 0 starts a new sequence
//! in that stream, so the hidden state is cleared), optionally a static
//! input (N x …) seen at every timestep, and with `expose_hidden` the first
//! timestep's hidden state (h_0 for RNN; h_0 and c_0 for LSTM, 1 x N x H).
//! Tops: the output at every timestep (T x N x H) and with `expose_hidden`
//! the last hidden state (h_T, and c_T for LSTM).
//!
//! Per timestep t, with h̃ = cont_t · h_{t-1}:
//! - RNN: h_t = tanh(W_hh h̃ + W_xh x_t + b_h [+ W_xh_static x_static]),
//!   o_t = tanh(W_ho h_t + b_o).
//! - LSTM: the gate inputs W_hc h̃ + W_xc x_t + b_c [+ W_xc_static x_static]
//!   go through an LSTM cell ([`super::lstm_unit`]); o_t = h_t.
//!
//! The blobs are those of Caffe's unrolled net, in its order: RNN W_xh, b_h,
//! [W_xh_static], W_hh, W_ho, b_o; LSTM W_xc, b_c, [W_xc_static], W_hc. As
//! in Caffe, without `expose_hidden` each forward pass starts from the
//! hidden state the previous one ended with (zeros at first), no gradient
//! crosses from one batch to the next, and with it no gradient flows into
//! h_0 and c_0 or back from h_T and c_T.
use super::lstm_unit::{cell_backward, cell_forward, one_minus_square, Cell};
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{LayerParameter, Phase, RecurrentParameter};
use crate::caffe::rng::SharedCaffeRng;
use crate::error::{Error, Result};
use crate::train::filler::weight_and_bias;
use candle_core::{Device, Tensor};

/// Which recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Caffe's RNN: a tanh hidden state and a tanh output.
    Rnn,
    /// Caffe's LSTM: a cell state and an output gate.
    Lstm,
}

impl Kind {
    /// Hidden-state blobs carried between timesteps (h; h and c).
    fn states(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Lstm => 2,
        }
    }

    /// Rows of the input and recurrent weight matrices per hidden unit.
    fn gates(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Lstm => 4,
        }
    }
}

/// One timestep's values, kept for backpropagation through time.
struct Step {
    /// cont_t · h_{t-1}.
    h_conted: Tensor,
    /// RNN: h_t (the tanh's value); LSTM: the cell's activations.
    state: StepState,
}

enum StepState {
    Rnn { h: Tensor, o: Tensor },
    Lstm(Cell),
}

pub struct Recurrent {
    kind: Kind,
    p: RecurrentParameter,
    device: Device,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    ctx: String,
    params: Vec<Tensor>,
    /// Timesteps, streams and hidden size, and whether a static input is given.
    t: usize,
    n: usize,
    h: usize,
    has_static: bool,
    /// The last timestep's states of the previous forward pass (not exposed).
    carry: Vec<Tensor>,
    steps: Vec<Step>,
    /// cont as T x N x 1.
    cont: Option<Tensor>,
}

impl Recurrent {
    pub fn new(
        param: &LayerParameter,
        kind: Kind,
        device: Device,
        rng: SharedCaffeRng,
    ) -> Result<Self> {
        let ctx = format!("layer '{}'", param.name());
        let p = param.recurrent_param.clone().unwrap_or_default();
        if p.num_output() == 0 {
            return Err(Error::model(&ctx, "recurrent_param needs num_output > 0"));
        }
        if p.debug_info() {
            return Err(Error::model(
                &ctx,
                "recurrent_param.debug_info (Caffe's lines for the unrolled net) is not supported; \
                 remove it (the net's own debug_info prints this layer's lines)",
            ));
        }
        Ok(Recurrent {
            kind,
            p,
            device,
            rng,
            ctx,
            params: Vec::new(),
            t: 0,
            n: 0,
            h: 0,
            has_static: false,
            carry: Vec::new(),
            steps: Vec::new(),
            cont: None,
        })
    }

    fn exposed(&self) -> usize {
        if self.p.expose_hidden() {
            self.kind.states()
        } else {
            0
        }
    }

    /// Index of the first recurrent-weight blob (W_hh, W_hc).
    fn recur_index(&self) -> usize {
        2 + usize::from(self.has_static)
    }

    /// Draws the blobs in the order Caffe's unrolled net sets up its layers:
    /// the input transform (weights, bias), the static transform, then every
    /// timestep's recurrent layers, each drawing its own copy of the shared
    /// blobs (only the first copy is kept, as sharing keeps the owner's).
    fn fill(&mut self, d: usize, ds: Option<usize>) -> Result<()> {
        let rows = self.kind.gates() * self.h;
        let (wf, bf) = (self.p.weight_filler.as_ref(), self.p.bias_filler.as_ref());
        let draw = |shape: &[usize], bias: bool| {
            weight_and_bias(
                wf,
                shape,
                bias.then_some((bf, shape[0])),
                &self.rng,
                &self.ctx,
                &self.device,
            )
        };
        let mut params = draw(&[rows, d], true)?;
        if let Some(ds) = ds {
            params.extend(draw(&[rows, ds], false)?);
        }
        let h = self.h;
        let mut recurrent: Vec<Tensor> = Vec::new();
        for _ in 0..self.t {
            let mut step = draw(&[rows, h], false)?;
            if self.kind == Kind::Rnn {
                step.extend(draw(&[h, h], true)?);
            }
            if recurrent.is_empty() {
                recurrent = step;
            }
        }
        params.extend(recurrent);
        self.params = params;
        Ok(())
    }
}

/// The product of two 2-D tensors, each read transposed when asked. On the
/// CPU it runs through [`crate::train::gemm`], which keeps the many small
/// per-timestep products on one thread (candle would hand each to the
/// thread pool, costing more than the product).
fn product(a: &Tensor, ta: bool, b: &Tensor, tb: bool) -> Result<Tensor> {
    if !a.device().is_cpu() {
        let a = if ta { a.t()? } else { a.clone() };
        let b = if tb { b.t()? } else { b.clone() };
        return Ok(a.matmul(&b)?);
    }
    use crate::train::gemm::{sgemm, View};
    let ((ar, ac), (br, bc)) = (a.dims2()?, b.dims2()?);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(crate::error::Error::model(
            "recurrent layer",
            format!("product of {m}x{k} and {k2}x{n} matrices"),
        ));
    }
    fn view(data: &[f32], cols: usize, t: bool) -> View<'_> {
        if t {
            View::transposed(data, cols)
        } else {
            View::rows(data, cols)
        }
    }
    let mut dst = vec![0f32; m * n];
    super::with_f32(a, |av| {
        super::with_f32(b, |bv| {
            sgemm(m, n, k, view(av, ac, ta), view(bv, bc, tb), &mut dst, false)
        })
    })??;
    Ok(Tensor::from_vec(dst, (m, n), a.device())?)
}

/// `a` (rows x k) times `w` (m x k) transposed: an InnerProduct's product.
fn times_t(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    product(a, false, w, true)
}

impl Layer for Recurrent {
    fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Rnn => "RNN",
            Kind::Lstm => "LSTM",
        }
    }

    fn num_bottoms(&self) -> usize {
        2 + self.exposed()
    }

    fn variadic_bottoms(&self) -> bool {
        true
    }

    fn allow_force_backward(&self, i: usize) -> bool {
        // No gradient for the flags, nor (as in Caffe) for h_0/c_0.
        i != 1 && i < 2 + usize::from(self.has_static)
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let exposed = self.exposed();
        if bottom.len() > 3 + exposed {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "takes x, cont, an optional static input{} ({} or {} bottoms); got {}",
                    if exposed > 0 {
                        " and the exposed hidden state"
                    } else {
                        ""
                    },
                    2 + exposed,
                    3 + exposed,
                    bottom.len()
                ),
            ));
        }
        let x = &bottom[0];
        if x.len() < 2 {
            return Err(Error::model(
                &self.ctx,
                format!("bottom 1 must have at least 2 axes (timesteps, streams, …); got {x:?}"),
            ));
        }
        let (t, n) = (x[0], x[1]);
        if bottom[1] != [t, n] {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "bottom 2 (cont) must be timesteps x streams, {t} x {n}; got {:?}",
                    bottom[1]
                ),
            ));
        }
        self.has_static = bottom.len() > 2 + exposed;
        let statics = if self.has_static {
            let s = &bottom[2];
            if s.is_empty() || s[0] != n {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "the static input (bottom 3) must have {n} rows, one per stream; got {s:?}"
                    ),
                ));
            }
            Some(s[1..].iter().product::<usize>())
        } else {
            None
        };
        self.t = t;
        self.n = n;
        self.h = self.p.num_output() as usize;
        let state_shape = vec![1, n, self.h];
        for (k, s) in bottom[2 + usize::from(self.has_static)..]
            .iter()
            .enumerate()
        {
            if *s != state_shape {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "the exposed hidden state bottom {} must be {state_shape:?}; got {s:?}",
                        3 + usize::from(self.has_static) + k
                    ),
                ));
            }
        }
        let d: usize = x[2..].iter().product();
        self.fill(d, statics)?;
        self.carry = Vec::new();
        let mut tops = vec![vec![t, n, self.h]];
        tops.extend(std::iter::repeat_n(state_shape, exposed));
        Ok(tops)
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn carried(&self) -> Result<Vec<Vec<f32>>> {
        self.carry.iter().map(super::to_vec).collect()
    }

    fn restore_carried(&mut self, values: &[Vec<f32>]) -> Result<()> {
        let (n, h) = (self.n, self.h);
        if self.p.expose_hidden()
            || values.len() != self.kind.states()
            || values.iter().any(|v| v.len() != n * h)
        {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "the saved hidden state does not fit this layer ({} blobs of {n} x {h})",
                    self.kind.states()
                ),
            ));
        }
        self.carry = values
            .iter()
            .map(|v| Ok(Tensor::from_vec(v.clone(), (n, h), &self.device)?))
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (t_len, n, h) = (self.t, self.n, self.h);
        let x = bottom[0].reshape((t_len * n, ()))?;
        // The input transform of every timestep at once, then per timestep.
        let wx = times_t(&x, &self.params[0])?
            .broadcast_add(&self.params[1])?
            .reshape((t_len, n, ()))?;
        let stat = if self.has_static {
            let s = bottom[2].reshape((n, ()))?;
            Some(times_t(&s, &self.params[2])?)
        } else {
            None
        };
        let cont = bottom[1].reshape((t_len, n, 1))?;
        let first_state = 2 + usize::from(self.has_static);
        let zeros = || Tensor::zeros((n, h), candle_core::DType::F32, &self.device);
        let mut states: Vec<Tensor> = if self.p.expose_hidden() {
            bottom[first_state..]
                .iter()
                .map(|b| Ok(b.reshape((n, h))?))
                .collect::<Result<_>>()?
        } else if self.carry.len() == self.kind.states() {
            self.carry.clone()
        } else {
            (0..self.kind.states())
                .map(|_| Ok(zeros()?))
                .collect::<Result<_>>()?
        };
        let r = self.recur_index();
        let mut outputs = Vec::with_capacity(t_len);
        self.steps.clear();
        for t in 0..t_len {
            let cont_t = cont.get(t)?;
            let h_conted = states[0].broadcast_mul(&cont_t)?;
            // Caffe's Eltwise SUM adds its bottoms in order.
            let mut pre = times_t(&h_conted, &self.params[r])?.add(&wx.get(t)?)?;
            if let Some(s) = &stat {
                pre = pre.add(s)?;
            }
            let state = match self.kind {
                Kind::Rnn => {
                    let h_t = pre.tanh()?;
                    let o = times_t(&h_t, &self.params[r + 1])?
                        .broadcast_add(&self.params[r + 2])?
                        .tanh()?;
                    outputs.push(o.clone());
                    states = vec![h_t.clone()];
                    StepState::Rnn { h: h_t, o }
                }
                Kind::Lstm => {
                    let (c, h_t, cell) = cell_forward(&states[1], &pre, &cont_t)?;
                    outputs.push(h_t.clone());
                    states = vec![h_t, c];
                    StepState::Lstm(cell)
                }
            };
            self.steps.push(Step { h_conted, state });
        }
        self.cont = Some(cont);
        let mut tops = vec![Tensor::stack(&outputs, 0)?];
        if self.p.expose_hidden() {
            for s in &states {
                tops.push(s.unsqueeze(0)?);
            }
        } else {
            self.carry = states;
        }
        Ok(tops)
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        if a.propagate.get(1).copied().unwrap_or(false) {
            return Err(Error::model(
                &self.ctx,
                "cannot pass a gradient to the continuation flags (bottom 2); give it propagate_down: false",
            ));
        }
        let n_bottoms = a.bottom.len();
        let mut pg: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let Some(dtop) = &a.top_diff[0] else {
            return Ok((vec![None; n_bottoms], pg));
        };
        let (t_len, n) = (self.t, self.n);
        let cont = self.cont.as_ref().expect("forward ran before backward");
        let r = self.recur_index();
        let mut d_pre: Vec<Tensor> = Vec::with_capacity(t_len);
        let (mut dh_next, mut dc_next): (Option<Tensor>, Option<Tensor>) = (None, None);
        // RNN: each timestep's gradient of W_ho h_t + b_o, with its h_t.
        let mut d_out: Vec<(Tensor, Tensor)> = Vec::new();
        for t in (0..t_len).rev() {
            let step = &self.steps[t];
            let dout = dtop.get(t)?;
            let dpre = match &step.state {
                StepState::Rnn { h: h_t, o } => {
                    // o_t = tanh(W_ho h_t + b_o).
                    let da = dout.mul(&one_minus_square(o)?)?;
                    let mut dh = product(&da, false, &self.params[r + 1], false)?;
                    if let Some(next) = &dh_next {
                        dh = dh.add(next)?;
                    }
                    d_out.push((da, h_t.clone()));
                    dh.mul(&one_minus_square(h_t)?)?
                }
                StepState::Lstm(cell) => {
                    let dh = match &dh_next {
                        Some(next) => dout.add(next)?,
                        None => dout,
                    };
                    let (dc_prev, dgates) = cell_backward(cell, dc_next.as_ref(), Some(&dh))?;
                    dc_next = Some(dc_prev);
                    dgates
                }
            };
            // Through W_hh/W_hc to h̃, then the flags' scaling to h_{t-1}.
            let dh_conted = product(&dpre, false, &self.params[r], false)?;
            dh_next = Some(dh_conted.broadcast_mul(&cont.get(t)?)?);
            d_pre.push(dpre);
        }
        d_pre.reverse();
        let d_pre = Tensor::cat(&d_pre, 0)?; // (T·N) x rows
        let h_conted = Tensor::cat(
            &self
                .steps
                .iter()
                .map(|s| s.h_conted.clone())
                .collect::<Vec<_>>(),
            0,
        )?;
        let x = a.bottom[0].reshape((t_len * n, ()))?;
        if a.param_grad[0] {
            pg[0] = Some(product(&d_pre, true, &x, false)?);
        }
        if a.param_grad[1] {
            pg[1] = Some(d_pre.sum(0)?);
        }
        let mut grads = vec![None; n_bottoms];
        if a.propagate[0] {
            grads[0] =
                Some(product(&d_pre, false, &self.params[0], false)?.reshape(a.bottom[0].shape())?);
        }
        if self.has_static && (a.param_grad[2] || a.propagate[2]) {
            let d_stat = d_pre.reshape((t_len, n, ()))?.sum(0)?;
            let s = a.bottom[2].reshape((n, ()))?;
            if a.param_grad[2] {
                pg[2] = Some(product(&d_stat, true, &s, false)?);
            }
            if a.propagate[2] {
                grads[2] = Some(
                    product(&d_stat, false, &self.params[2], false)?
                        .reshape(a.bottom[2].shape())?,
                );
            }
        }
        if a.param_grad[r] {
            pg[r] = Some(product(&d_pre, true, &h_conted, false)?);
        }
        if !d_out.is_empty() {
            // Every timestep's share of W_ho and b_o in one product.
            let (da, h): (Vec<Tensor>, Vec<Tensor>) = d_out.into_iter().unzip();
            let da = Tensor::cat(&da, 0)?;
            if a.param_grad[r + 1] {
                pg[r + 1] = Some(product(&da, true, &Tensor::cat(&h, 0)?, false)?);
            }
            if a.param_grad[r + 2] {
                pg[r + 2] = Some(da.sum(0)?);
            }
        }
        // h_0 and c_0 get none (Caffe shares only their data).
        Ok((grads, pg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_read_either_side_transposed_as_candle_does() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = (Tensor::arange(0f32, 12.0, &dev).unwrap() * 0.5)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        let want = a.matmul(&b).unwrap().to_vec2::<f32>().unwrap();
        let at = a.t().unwrap().contiguous().unwrap();
        let bt = b.t().unwrap().contiguous().unwrap();
        for (x, ta, y, tb) in [
            (&a, false, &b, false),
            (&at, true, &b, false),
            (&a, false, &bt, true),
            (&at, true, &bt, true),
        ] {
            let got = product(x, ta, y, tb).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got, want, "transposed: {ta} {tb}");
        }
        assert!(product(&a, false, &a, false).is_err());
    }
}
