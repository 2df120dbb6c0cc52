//! HDF5Output: writes its two bottoms to `hdf5_output_param.file_name` as
//! the float32 datasets `data` and `label`, each in Caffe's legacy 4-D
//! shape (num, channels, height, width; a missing axis counts 1, so an
//! N x 10 blob is stored N x 10 x 1 x 1), as Caffe 1.0 writes them. Caffe
//! writes one batch: its second forward pass fails, because the datasets
//! exist; here the second pass is an error that says so, and the file is
//! written whole (atomically) at the first. Saving blobs for many images
//! is what `features` is for.
use super::{BackwardArgs, BuildContext, Grads, Layer};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::path::PathBuf;

pub struct Hdf5Output {
    ctx: String,
    path: PathBuf,
    written: bool,
}

impl Hdf5Output {
    pub fn new(param: &LayerParameter, ctx: &BuildContext) -> Result<Self> {
        let lctx = format!("layer '{}'", param.name());
        let file = param
            .hdf5_output_param
            .as_ref()
            .and_then(|p| p.file_name.as_deref())
            .filter(|f| !f.is_empty())
            .ok_or_else(|| Error::model(&lctx, "needs hdf5_output_param { file_name: \"…\" }"))?;
        Ok(Hdf5Output {
            ctx: lctx,
            path: ctx.resolve(file),
            written: false,
        })
    }
}

/// Caffe's legacy (num, channels, height, width) of a blob of `dims`.
fn legacy_shape(dims: &[usize], ctx: &str) -> Result<[u64; 4]> {
    if dims.len() > 4 {
        return Err(Error::model(
            ctx,
            format!("writes blobs of at most 4 axes (Caffe's legacy shape), not {dims:?}"),
        ));
    }
    let mut shape = [1u64; 4];
    for (s, &d) in shape.iter_mut().zip(dims) {
        *s = d as u64;
    }
    Ok(shape)
}

impl Layer for Hdf5Output {
    fn type_name(&self) -> &'static str {
        "HDF5Output"
    }
    fn num_bottoms(&self) -> usize {
        2
    }
    fn allow_force_backward(&self, _i: usize) -> bool {
        false
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        for b in bottom {
            legacy_shape(b, &self.ctx)?;
        }
        if bottom[0].first() != bottom[1].first() {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "its data and label bottoms must hold as many items, not shapes {:?} and {:?}",
                    bottom[0], bottom[1]
                ),
            ));
        }
        Ok(Vec::new())
    }
    fn forward(&mut self, bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        if self.written {
            return Err(Error::model(
                &self.ctx,
                format!(
                    "wrote {} at the first forward pass; like Caffe 1.0's, it writes one batch (Caffe fails at the second pass too). To save blobs for many images use `flickr-style features`",
                    self.path.display()
                ),
            ));
        }
        let mut b = hdf5_pure::FileBuilder::new();
        for (name, t) in ["data", "label"].iter().zip(bottom) {
            let shape = legacy_shape(t.dims(), &self.ctx)?;
            let values = super::to_vec(t)?;
            b.create_dataset(name)
                .with_f32_data(&values)
                .with_shape(&shape);
        }
        let bytes = b
            .finish()
            .map_err(|e| Error::model(&self.ctx, format!("cannot encode HDF5: {e}")))?;
        crate::fsutil::write_atomic(&self.path, &bytes)?;
        self.written = true;
        Ok(Vec::new())
    }
    fn backward(&mut self, a: &BackwardArgs) -> Result<Grads> {
        // Caffe's backward does nothing either.
        Ok((vec![None; a.bottom.len()], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The layout Debian bullseye's Caffe 1.0 wrote for bottoms of shapes
    /// 3 x 4 and 3: `data` 3x4x1x1 and `label` 3x1x1x1, float32.
    #[test]
    fn writes_caffes_datasets_once() {
        let dir = tempfile::tempdir().unwrap();
        let param: LayerParameter = crate::caffe::prototxt::parse(
            r#"name: "out" type: "HDF5Output" hdf5_output_param { file_name: "o.h5" }"#,
            std::path::Path::new("l"),
        )
        .unwrap();
        let ctx = BuildContext::cpu(dir.path(), 1, Phase::Test);
        let mut l = Hdf5Output::new(&param, &ctx).unwrap();
        assert!(l.setup(&[vec![3, 4], vec![3]]).unwrap().is_empty());
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let label = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        l.forward(&[x.clone(), label.clone()], Phase::Test).unwrap();
        let f =
            hdf5_pure::File::from_bytes(std::fs::read(dir.path().join("o.h5")).unwrap()).unwrap();
        let data = f.dataset("data").unwrap();
        assert_eq!(data.shape().unwrap(), [3, 4, 1, 1]);
        assert_eq!(
            data.read_f32().unwrap(),
            (0..12).map(|v| v as f32).collect::<Vec<_>>()
        );
        let labels = f.dataset("label").unwrap();
        assert_eq!(labels.shape().unwrap(), [3, 1, 1, 1]);
        assert_eq!(labels.read_f32().unwrap(), [1.0, 2.0, 3.0]);
        let err = l.forward(&[x, label], Phase::Test).unwrap_err().to_string();
        assert!(
            err.contains("one batch") && err.contains("features"),
            "{err}"
        );
        let err = l.setup(&[vec![3, 4], vec![2]]).unwrap_err().to_string();
        assert!(err.contains("as many items"), "{err}");
        let err = l
            .setup(&[vec![3, 1, 1, 1, 2], vec![3]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 4 axes"), "{err}");
    }
}
