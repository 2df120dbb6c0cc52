//! Reduction and Tile, two shape-changing layers as candle tensor ops.
//!
//! Reduction sums (SUM), sums magnitudes (ASUM), sums squares (SUMSQ) or
//! averages (MEAN) all axes from `axis` on, times `coeff`: the top keeps the
//! axes before `axis` (a scalar for axis 0). Tile repeats the axes from
//! `axis` on `tiles` times along `axis`; its gradient sums the copies.
use super::{count, BackwardArgs, Grads, Layer};
use crate::caffe::proto::{
    reduction_parameter::ReductionOp, Phase, ReductionParameter, TileParameter,
};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// `axis` (negative counts from the end) as an index into `shape`, where
/// `shape.len()` itself is allowed when `end_ok`.
fn axis_index(axis: i32, shape: &[usize], end_ok: bool, ctx: &str) -> Result<usize> {
    let n = shape.len() as i32;
    let a = if axis < 0 { axis + n } else { axis };
    if a < 0 || a > n || (a == n && !end_ok) {
        return Err(Error::model(
            ctx,
            format!("axis {axis} is out of range for shape {shape:?}"),
        ));
    }
    Ok(a as usize)
}

pub struct Reduction {
    op: ReductionOp,
    coeff: f32,
    axis: i32,
    ctx: String,
    /// (rows kept, values reduced per row), and the top shape.
    rows: (usize, usize),
    top: Vec<usize>,
}

impl Reduction {
    pub fn new(p: ReductionParameter, name: &str) -> Self {
        Reduction {
            op: p.operation(),
            coeff: p.coeff(),
            axis: p.axis(),
            ctx: format!("layer '{name}'"),
            rows: (0, 0),
            top: Vec::new(),
        }
    }

    /// What each row's reduction is multiplied by.
    fn factor(&self) -> f64 {
        let c = f64::from(self.coeff);
        match self.op {
            ReductionOp::Mean => c / self.rows.1.max(1) as f64,
            _ => c,
        }
    }
}

impl Layer for Reduction {
    fn type_name(&self) -> &'static str {
        "Reduction"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let axis = axis_index(self.axis, shape, false, &self.ctx)?;
        self.top = shape[..axis].to_vec();
        self.rows = (count(&self.top), count(&shape[axis..]));
        Ok(vec![self.top.clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let x = bottom[0].reshape(self.rows)?;
        let values = match self.op {
            ReductionOp::Sum | ReductionOp::Mean => x,
            ReductionOp::Asum => x.abs()?,
            ReductionOp::Sumsq => x.sqr()?,
        };
        let y = values.sum(1)?.affine(self.factor(), 0.0)?;
        Ok(vec![y.reshape(self.top.as_slice())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let dy = dy
            .reshape((self.rows.0, 1))?
            .affine(self.factor(), 0.0)?
            .broadcast_as(self.rows)?;
        let x = a.bottom[0].reshape(self.rows)?;
        let dx = match self.op {
            ReductionOp::Sum | ReductionOp::Mean => dy.contiguous()?,
            ReductionOp::Asum => (dy * x.sign()?)?,
            ReductionOp::Sumsq => (dy * x.affine(2.0, 0.0)?)?,
        };
        Ok((vec![Some(dx.reshape(a.bottom[0].shape())?)], vec![]))
    }
}

pub struct Tile {
    axis: i32,
    tiles: usize,
    ctx: String,
    /// (outer, inner) around the repeated block, and the top shape.
    dims: (usize, usize),
    top: Vec<usize>,
}

impl Tile {
    pub fn new(p: TileParameter, name: &str) -> Result<Self> {
        let ctx = format!("layer '{name}'");
        let tiles = match p.tiles {
            Some(t) if t >= 1 => t as usize,
            Some(t) => {
                return Err(Error::model(
                    &ctx,
                    format!("tiles must be at least 1, not {t}"),
                ))
            }
            None => return Err(Error::model(&ctx, "needs tile_param { tiles: N }")),
        };
        Ok(Tile {
            axis: p.axis(),
            tiles,
            ctx,
            dims: (0, 0),
            top: Vec::new(),
        })
    }
}

impl Layer for Tile {
    fn type_name(&self) -> &'static str {
        "Tile"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let axis = axis_index(self.axis, shape, false, &self.ctx)?;
        self.dims = (count(&shape[..axis]), count(&shape[axis..]));
        self.top = shape.clone();
        self.top[axis] *= self.tiles;
        Ok(vec![self.top.clone()])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (outer, inner) = self.dims;
        let y = bottom[0]
            .reshape((outer, 1, inner))?
            .broadcast_as((outer, self.tiles, inner))?
            .contiguous()?;
        Ok(vec![y.reshape(self.top.as_slice())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        let (Some(dy), true) = (&a.top_diff[0], a.propagate[0]) else {
            return Ok((vec![None], vec![]));
        };
        let (outer, inner) = self.dims;
        let dx = dy.reshape((outer, self.tiles, inner))?.sum(1)?;
        Ok((vec![Some(dx.reshape(a.bottom[0].shape())?)], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::to_vec;
    use candle_core::Device;

    #[test]
    fn reductions_over_trailing_axes() {
        let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, -4.0], (2, 2), &Device::Cpu).unwrap();
        let run = |op: ReductionOp, axis: i32, coeff: f32| {
            let p = ReductionParameter {
                operation: Some(op as i32),
                axis: Some(axis),
                coeff: Some(coeff),
            };
            let mut l = Reduction::new(p, "r");
            let shape = l.setup(&[vec![2, 2]]).unwrap().remove(0);
            (
                shape,
                to_vec(&l.forward(std::slice::from_ref(&x), Phase::Train).unwrap()[0]).unwrap(),
            )
        };
        assert_eq!(run(ReductionOp::Sum, 0, 1.0), (vec![], vec![-2.0]));
        assert_eq!(run(ReductionOp::Asum, 1, 1.0), (vec![2], vec![3.0, 7.0]));
        assert_eq!(run(ReductionOp::Sumsq, -1, 0.5), (vec![2], vec![2.5, 12.5]));
        assert_eq!(run(ReductionOp::Mean, 1, 2.0), (vec![2], vec![-1.0, -1.0]));
    }

    #[test]
    fn tile_repeats_and_its_gradient_sums() {
        let p = TileParameter {
            axis: Some(1),
            tiles: Some(3),
        };
        let mut l = Tile::new(p, "t").unwrap();
        assert_eq!(l.setup(&[vec![2, 1, 2]]).unwrap(), vec![vec![2, 3, 2]]);
        let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 1, 2), &Device::Cpu).unwrap();
        let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        assert_eq!(
            to_vec(&y[0]).unwrap(),
            [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0]
        );
        let dy = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &y,
                top_diff: &[Some(dy)],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(
            to_vec(g[0].as_ref().unwrap()).unwrap(),
            [6.0, 9.0, 24.0, 27.0]
        );
    }

    #[test]
    fn tile_needs_its_count() {
        let err = Tile::new(TileParameter::default(), "t")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tiles"), "{err}");
    }
}
