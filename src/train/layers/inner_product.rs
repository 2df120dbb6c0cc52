//! InnerProduct: `y = x·Wᵀ + b` with x flattened from `axis` on
//! (W is `num_output x K`, Caffe's non-transposed layout).
use super::{with_f32, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{InnerProductParameter, Phase};
use crate::caffe::rng::SharedCaffeRng;
use crate::error::{Error, Result};
use crate::train::filler::weight_and_bias;
use crate::train::gemm::{sgemm, View};
use crate::train::precision::Precision;
use candle_core::{Device, Tensor};

pub struct InnerProduct {
    p: InnerProductParameter,
    device: Device,
    /// The net's Caffe generator, which the fillers draw from.
    rng: SharedCaffeRng,
    name: String,
    params: Vec<Tensor>,
    outer: usize,
    k: usize,
    /// The top's shape: the bottom's axes before `axis`, then num_output.
    top: Vec<usize>,
    /// The matrix products' arithmetic.
    precision: Precision,
}

impl InnerProduct {
    pub fn new(
        p: InnerProductParameter,
        device: Device,
        precision: Precision,
        rng: SharedCaffeRng,
        name: &str,
    ) -> Result<Self> {
        if p.num_output() == 0 {
            return Err(Error::model(
                format!("layer '{name}'"),
                "inner_product_param.num_output must be > 0",
            ));
        }
        if p.transpose() {
            return Err(Error::model(
                format!("layer '{name}'"),
                "transpose: true is not supported",
            ));
        }
        Ok(InnerProduct {
            p,
            device,
            rng,
            name: name.to_string(),
            params: Vec::new(),
            outer: 0,
            k: 0,
            top: Vec::new(),
            precision,
        })
    }
}

impl InnerProduct {
    /// Whether the products go through [`sgemm`] (the CPU in fp32), whose
    /// column split keeps both cores busy on a batch's few rows (fc6's input
    /// gradient at batch 50 takes half the time candle's matmul takes).
    fn on_host(&self) -> bool {
        self.device.is_cpu() && self.precision == Precision::F32
    }
}

/// `a (m x k) * b (k x n)` from tensors' values, as a `rows`-shaped tensor.
fn host_product(
    (m, n, k): (usize, usize, usize),
    a: (&Tensor, bool),
    b: (&Tensor, bool),
    device: &Device,
) -> Result<Tensor> {
    // A transposed `rows x cols` operand is stored `cols x rows`, row-major.
    fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> View<'_> {
        if transposed {
            View::transposed(data, rows)
        } else {
            View::rows(data, cols)
        }
    }
    let mut out = vec![0.0f32; m * n];
    with_f32(a.0, |av| {
        with_f32(b.0, |bv| {
            sgemm(
                m,
                n,
                k,
                view(av, m, k, a.1),
                view(bv, k, n, b.1),
                &mut out,
                false,
            )
        })
    })??;
    Ok(Tensor::from_vec(out, (m, n), device)?)
}

impl Layer for InnerProduct {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "InnerProduct"
    }

    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let ctx = format!("layer '{}'", self.name);
        let shape = bottom
            .first()
            .ok_or_else(|| Error::model(&ctx, "needs a bottom"))?;
        let axis = self.p.axis();
        let axis = if axis < 0 {
            shape.len() as i32 + axis
        } else {
            axis
        } as usize;
        if axis == 0 || axis > shape.len() {
            return Err(Error::model(
                &ctx,
                format!("axis {} is out of range for shape {shape:?}", self.p.axis()),
            ));
        }
        self.outer = shape[..axis].iter().product();
        self.k = shape[axis..].iter().product();
        let out = self.p.num_output() as usize;
        self.params = weight_and_bias(
            self.p.weight_filler.as_ref(),
            &[out, self.k],
            self.p
                .bias_term()
                .then_some((self.p.bias_filler.as_ref(), out)),
            &self.rng,
            &ctx,
            &self.device,
        )?;
        let mut top = shape[..axis].to_vec();
        top.push(out);
        self.top = top.clone();
        Ok(vec![top])
    }

    fn reshape(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        // The weights stay; only the rows change (Caffe checks the rest).
        let shape = &bottom[0];
        let axis = self.top.len() - 1;
        let k: usize = shape.get(axis..).map_or(0, |s| s.iter().product());
        if shape.len() < axis || k != self.k {
            return Err(Error::model(
                format!("layer '{}'", self.name),
                format!(
                    "a bottom of shape {shape:?} has {k} values per row from axis {axis} on, but its weights take {}",
                    self.k
                ),
            ));
        }
        self.outer = shape[..axis].iter().product();
        let mut top = shape[..axis].to_vec();
        top.push(self.p.num_output() as usize);
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
        let x = bottom[0].reshape((self.outer, self.k))?;
        let out = self.p.num_output() as usize;
        let mut y = if self.on_host() {
            host_product(
                (self.outer, out, self.k),
                (&x, false),
                (&self.params[0], true),
                &self.device,
            )?
        } else {
            self.precision.matmul(&x, &self.params[0].t()?)?
        };
        if let Some(b) = self.params.get(1) {
            y = y.broadcast_add(&b.unsqueeze(0)?)?;
        }
        // With `axis` past 1 the leading axes come back (N x T x out).
        Ok(vec![y.reshape(self.top.as_slice())?])
    }

    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let Some(dy) = &a.top_diff[0] else {
            return Ok((vec![None], vec![None; self.params.len()]));
        };
        let dy = dy.reshape((self.outer, self.p.num_output() as usize))?;
        let mut pg = vec![None; self.params.len()];
        let out = self.p.num_output() as usize;
        if a.param_grad[0] {
            let x = a.bottom[0].reshape((self.outer, self.k))?;
            pg[0] = Some(if self.on_host() {
                host_product(
                    (out, self.k, self.outer),
                    (&dy, true),
                    (&x, false),
                    &self.device,
                )?
            } else {
                self.precision.matmul(&dy.t()?, &x)?
            });
        }
        if self.params.len() > 1 && a.param_grad[1] {
            pg[1] = Some(dy.sum(0)?);
        }
        let bg = if a.propagate[0] {
            let dx = if self.on_host() {
                host_product(
                    (self.outer, self.k, out),
                    (&dy, false),
                    (&self.params[0], false),
                    &self.device,
                )?
            } else {
                self.precision.matmul(&dy, &self.params[0])?
            };
            Some(dx.reshape(a.bottom[0].shape())?)
        } else {
            None
        };
        Ok((vec![bg], pg))
    }
}
