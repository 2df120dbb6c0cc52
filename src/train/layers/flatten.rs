//! Caffe's Flatten layer: the axes `axis..=end_axis` merged into one (by
//! default everything after the batch), a reshape on every device.
use super::{BackwardArgs, Grads, Layer};
use crate::caffe::proto::{FlattenParameter, Phase};
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
        let dx = match (&a.top_diff[0], a.propagate[0]) {
            (Some(dy), true) => Some(dy.reshape(a.bottom[0].shape())?),
            _ => None,
        };
        Ok((vec![dx], vec![]))
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
}
