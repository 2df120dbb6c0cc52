//! Layers that only reshape, on every device: Caffe's Flatten (the axes
//! `axis..=end_axis` merged into one, by default everything after the
//! batch) and Reshape (a run of axes replaced by a given shape, with 0 for
//! "as the bottom" and one -1 inferred).
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{FlattenParameter, Phase, ReshapeParameter};
use crate::error::{Error, Result};
use candle_core::Tensor;

#[derive(Debug)]
pub struct Flatten {
    axis: i64,
    end_axis: i64,
    top: Vec<usize>,
    ctx: String,
}

impl Flatten {
    pub fn new(p: Option<FlattenParameter>, name: &str) -> Self {
        let p = p.unwrap_or_default();
        Flatten {
            axis: i64::from(p.axis()),
            end_axis: i64::from(p.end_axis()),
            top: Vec::new(),
            ctx: format!("layer '{name}'"),
        }
    }
}

impl Layer for Flatten {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Flatten"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let n = shape.len() as i64;
        let canonical = |a: i64| if a < 0 { a + n } else { a };
        let (start, end) = (canonical(self.axis), canonical(self.end_axis));
        if !(0..n).contains(&start) || !(0..n).contains(&end) || end < start {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "axis {} to end_axis {} do not fit a bottom of shape {shape:?}",
                    self.axis, self.end_axis
                ),
            ));
        }
        let (start, end) = (start as usize, end as usize);
        let mut top = shape[..start].to_vec();
        top.push(shape[start..=end].iter().product());
        top.extend_from_slice(&shape[end + 1..]);
        self.top = top.clone();
        Ok(vec![top])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        Ok(vec![bottom[0].reshape(self.top.as_slice())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        reshaped_back(a)
    }
}

/// The gradient of a reshape: the top's, shaped as the bottom.
fn reshaped_back(a: &BackwardArgs) -> Result<Grads> {
    let dx = match (&a.top_diff[0], a.propagate[0]) {
        (Some(dy), true) => Some(dy.reshape(a.bottom[0].shape())?),
        _ => None,
    };
    Ok((vec![dx], vec![]))
}

#[derive(Debug)]
pub struct Reshape {
    p: ReshapeParameter,
    top: Vec<usize>,
    ctx: String,
}

impl Reshape {
    pub fn new(p: Option<ReshapeParameter>, name: &str) -> Result<Self> {
        let p = p.unwrap_or_default();
        let ctx = format!("layer '{name}'");
        let dims = p.shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
        if dims.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(Error::model(
                &ctx,
                format!("reshape_param's shape {dims:?} has more than one -1 (only one dimension can be inferred)"),
            ));
        }
        if let Some(d) = dims.iter().find(|&&d| d < -1) {
            return Err(Error::model(
                &ctx,
                format!("reshape_param's shape {dims:?} has {d}; dims are positive, 0 (copy) or -1 (infer)"),
            ));
        }
        Ok(Reshape {
            p,
            top: Vec::new(),
            ctx,
        })
    }
}

impl Layer for Reshape {
    fn any_batch(&self) -> bool {
        true
    }
    fn type_name(&self) -> &'static str {
        "Reshape"
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        let shape = &bottom[0];
        let n = shape.len() as i64;
        let dims = self.p.shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
        // Caffe counts a negative axis from past the last (-1: after the end).
        let axis = i64::from(self.p.axis());
        let start = if axis >= 0 { axis } else { n + axis + 1 };
        let num_axes = i64::from(self.p.num_axes());
        let end = if num_axes == -1 { n } else { start + num_axes };
        if !(0..=n).contains(&start) || num_axes < -1 || end > n {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "axis {axis} with num_axes {num_axes} does not fit a bottom of shape {shape:?}"
                ),
            ));
        }
        let (start, end) = (start as usize, end as usize);
        let mut top = shape[..start].to_vec();
        let mut inferred = None;
        for (i, &d) in dims.iter().enumerate() {
            top.push(match d {
                0 => *shape.get(start + i).ok_or_else(|| {
                    Error::model(
                        &self.ctx,
                        format!(
                            "dim {i} of its shape is 0 (copy), but the bottom {shape:?} has no axis {}",
                            start + i
                        ),
                    )
                })?,
                -1 => {
                    inferred = Some(start + i);
                    1
                }
                d => d as usize,
            });
        }
        top.extend_from_slice(&shape[end..]);
        let count: usize = shape.iter().product();
        if let Some(at) = inferred {
            let known: usize = top.iter().product();
            if known == 0 || count % known != 0 {
                return Err(Error::model(
                    &self.ctx,
                    format!(
                        "cannot infer the -1 of shape {dims:?}: the bottom's {count} values are not a multiple of {known}"
                    ),
                ));
            }
            top[at] = count / known;
        }
        if top.iter().product::<usize>() != count {
            return Err(Error::model(
                &self.ctx,
                format!("turns a bottom of shape {shape:?} ({count} values) into {top:?}, another count"),
            ));
        }
        self.top = top.clone();
        Ok(vec![top])
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        Ok(vec![bottom[0].reshape(self.top.as_slice())?])
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        reshaped_back(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(text: &str, shape: &[usize]) -> Result<Vec<usize>> {
        let p: FlattenParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("f")).unwrap();
        Ok(Flatten::new(Some(p), "f")
            .setup(&[shape.to_vec()])?
            .remove(0))
    }

    #[test]
    fn merges_the_axes_caffe_merges() {
        assert_eq!(setup("", &[2, 3, 4, 5]).unwrap(), [2, 60]);
        assert_eq!(
            setup("axis: 1 end_axis: 2", &[2, 3, 4, 5]).unwrap(),
            [2, 12, 5]
        );
        assert_eq!(setup("axis: 0", &[2, 3]).unwrap(), [6]);
        assert_eq!(setup("axis: -2", &[2, 3, 4]).unwrap(), [2, 12]);
        let e = setup("axis: 2 end_axis: 1", &[2, 3, 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 'f'") && e.contains("do not fit"), "{e}");
    }

    fn reshape(text: &str) -> Result<Reshape> {
        let p: ReshapeParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("r")).unwrap();
        Reshape::new(Some(p), "r")
    }

    #[test]
    fn reshape_copies_infers_and_replaces_a_run_of_axes() {
        let top = |text: &str, bottom: &[usize]| reshape(text).unwrap().setup(&[bottom.to_vec()]);
        // 0 copies, -1 takes what is left.
        assert_eq!(
            top("shape { dim: 0 dim: -1 }", &[2, 3, 4, 5]).unwrap(),
            [vec![2, 60]]
        );
        assert_eq!(
            top("shape { dim: 0 dim: 2 dim: -1 dim: 0 }", &[2, 6, 1, 5]).unwrap(),
            [vec![2, 2, 3, 5]]
        );
        // Only axes 1..3 replaced.
        assert_eq!(
            top("axis: 1 num_axes: 2 shape { dim: 12 }", &[2, 3, 4, 5]).unwrap(),
            [vec![2, 12, 5]]
        );
        // axis -1 is after the last axis: a trailing 1 added.
        assert_eq!(
            top("axis: -1 num_axes: 0 shape { dim: 1 }", &[2, 3]).unwrap(),
            [vec![2, 3, 1]]
        );
        let mut l = reshape("shape { dim: -1 dim: 3 }").unwrap();
        l.setup(&[vec![2, 3, 1]]).unwrap();
        let x = Tensor::arange(0f32, 6., &candle_core::Device::Cpu)
            .unwrap()
            .reshape((2, 3, 1))
            .unwrap();
        let y = l.forward(std::slice::from_ref(&x), Phase::Train).unwrap();
        assert_eq!(y[0].dims(), [2, 3]);
        let (g, _) = l
            .backward(&BackwardArgs {
                bottom: &[x],
                top: &y,
                top_diff: &[Some(y[0].clone())],
                propagate: &[true],
                param_grad: &[],
            })
            .unwrap();
        assert_eq!(g[0].as_ref().unwrap().dims(), [2, 3, 1]);

        let msg = |r: Result<Vec<Vec<usize>>>| r.err().unwrap().to_string();
        let e = msg(top("shape { dim: -1 dim: 7 }", &[2, 3]));
        assert!(e.contains("layer 'r'") && e.contains("cannot infer"), "{e}");
        let e = msg(top("shape { dim: 4 dim: 2 }", &[2, 3]));
        assert!(e.contains("another count"), "{e}");
        let e = msg(top("shape { dim: 0 dim: 0 dim: 0 }", &[6, 1]));
        assert!(e.contains("no axis 2"), "{e}");
        let e = reshape("shape { dim: -1 dim: -1 }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("more than one -1"), "{e}");
    }
}
