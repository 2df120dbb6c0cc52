//! Mean images: Caffe's `mean.binaryproto` (a legacy 4-D `BlobProto`, CHW,
//! BGR) and NumPy `.npy` files, converted losslessly both ways.
use super::proto::BlobProto;
use crate::error::{Error, IoContext, Result};
use npyz::WriterBuilder;
use std::path::Path;

/// A mean image: C x H x W values in the datum's channel order (BGR).
#[derive(Clone, Debug, PartialEq)]
pub struct MeanImage {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// CHW values. Kept in f64 so a float64 `.npy` survives a round trip.
    pub values: Vec<f64>,
}

/// Element type of a written `.npy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NpyDtype {
    /// `<f4`, what pycaffe's mean arrays are.
    F4,
    /// `<f8`, what `ilsvrc_2012_mean.npy` is.
    F8,
}

impl MeanImage {
    /// Per-channel averages of the mean image (what Caffe prints as `mean_value`).
    pub fn channel_means(&self) -> Vec<f64> {
        let plane = self.height * self.width;
        self.values
            .chunks_exact(plane)
            .map(|c| c.iter().sum::<f64>() / plane as f64)
            .collect()
    }

    /// The values rounded to f32 (what a Caffe net subtracts).
    pub fn values_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }

    /// Whether every value is exactly representable as f32.
    fn fits_f32(&self) -> bool {
        self.values.iter().all(|&v| (v as f32) as f64 == v)
    }

    /// The blob `compute_image_mean` writes: legacy num=1, c, h, w plus
    /// packed float data (double_data only if f32 would lose precision).
    pub fn to_blob(&self) -> BlobProto {
        let (c, h, w) = (self.channels as i32, self.height as i32, self.width as i32);
        if self.fits_f32() {
            BlobProto::legacy_4d(1, c, h, w, self.values_f32())
        } else {
            let mut b = BlobProto::legacy_4d(1, c, h, w, Vec::new());
            b.double_data = self.values.clone();
            b
        }
    }

    /// Reads a mean from a blob of shape (C,H,W), (1,C,H,W) or (H,W); `context` names it in errors.
    pub fn from_blob(blob: &BlobProto, context: &str) -> Result<Self> {
        let dims: Vec<usize> = blob.dims().iter().map(|&d| d.max(0) as usize).collect();
        let (c, h, w) = chw_of(&dims).ok_or_else(|| {
            Error::invalid(
                context,
                format!("a mean must be CxHxW or 1xCxHxW, found shape {dims:?}"),
            )
        })?;
        if blob.value_len() != c * h * w {
            return Err(Error::invalid(
                context,
                format!(
                    "shape {c}x{h}x{w} needs {} values, found {}",
                    c * h * w,
                    blob.value_len()
                ),
            ));
        }
        let values = if blob.double_data.is_empty() {
            blob.data.iter().map(|&v| v as f64).collect()
        } else {
            blob.double_data.clone()
        };
        Ok(MeanImage {
            channels: c,
            height: h,
            width: w,
            values,
        })
    }

    /// Reads a `.binaryproto` mean file.
    pub fn read_binaryproto(path: &Path) -> Result<Self> {
        let blob: BlobProto = super::read_binary(path, "BlobProto (mean)")?;
        Self::from_blob(&blob, &path.display().to_string())
    }

    /// Writes a `.binaryproto` mean file atomically.
    pub fn write_binaryproto(&self, path: &Path) -> Result<()> {
        super::write_binary(path, &self.to_blob())
    }

    /// Reads a `.npy` mean (float32 or float64, C order).
    pub fn read_npy(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).at(path)?;
        let bad = |m: String| Error::invalid(path.display(), m);
        let npy = npyz::NpyFile::new(bytes.as_slice())
            .map_err(|e| bad(format!("not a .npy file: {e}")))?;
        if npy.order() != npyz::Order::C {
            return Err(bad("Fortran-ordered arrays are not supported".into()));
        }
        let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let (c, h, w) = chw_of(&dims).ok_or_else(|| {
            bad(format!(
                "a mean must be CxHxW or 1xCxHxW, found shape {dims:?}"
            ))
        })?;
        let descr = npy.dtype().descr().trim_matches('\'').to_string();
        let values: Vec<f64> = match descr.as_str() {
            "<f8" => npy.into_vec::<f64>(),
            "<f4" => npy
                .into_vec::<f32>()
                .map(|v| v.into_iter().map(f64::from).collect()),
            other => {
                return Err(bad(format!(
                    "dtype {other} is not supported (use float32 or float64)"
                )))
            }
        }
        .map_err(|e| bad(format!("truncated data: {e}")))?;
        Ok(MeanImage {
            channels: c,
            height: h,
            width: w,
            values,
        })
    }

    /// Writes a `.npy` of shape (1, C, H, W) like pycaffe's `blobproto_to_array`.
    pub fn write_npy(&self, path: &Path, dtype: NpyDtype) -> Result<()> {
        let shape = [
            1u64,
            self.channels as u64,
            self.height as u64,
            self.width as u64,
        ];
        let mut buf = Vec::new();
        let io = |e: std::io::Error| Error::io(path, e);
        match dtype {
            NpyDtype::F4 => {
                let mut w = npyz::WriteOptions::<f32>::new()
                    .default_dtype()
                    .shape(&shape)
                    .writer(&mut buf)
                    .begin_nd()
                    .map_err(io)?;
                w.extend(self.values.iter().map(|&v| v as f32))
                    .map_err(io)?;
                w.finish().map_err(io)?;
            }
            NpyDtype::F8 => {
                let mut w = npyz::WriteOptions::<f64>::new()
                    .default_dtype()
                    .shape(&shape)
                    .writer(&mut buf)
                    .begin_nd()
                    .map_err(io)?;
                w.extend(self.values.iter().copied()).map_err(io)?;
                w.finish().map_err(io)?;
            }
        }
        crate::fsutil::write_atomic(path, &buf)
    }
}

fn chw_of(dims: &[usize]) -> Option<(usize, usize, usize)> {
    match *dims {
        [1, c, h, w] | [c, h, w] => Some((c, h, w)),
        [h, w] => Some((1, h, w)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float64_values_survive_binaryproto_and_npy() {
        let m = MeanImage {
            channels: 1,
            height: 1,
            width: 2,
            values: vec![0.1, 2.5],
        };
        let b = m.to_blob();
        assert!(!b.double_data.is_empty(), "0.1 is not an f32");
        assert_eq!(MeanImage::from_blob(&b, "t").unwrap(), m);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        m.write_npy(&p, NpyDtype::F8).unwrap();
        assert_eq!(MeanImage::read_npy(&p).unwrap(), m);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let b = BlobProto::with_shape(&[2, 2, 2, 2, 2], vec![0.0; 32]);
        assert!(MeanImage::from_blob(&b, "x").is_err());
        let b = BlobProto::legacy_4d(1, 3, 2, 2, vec![0.0; 5]);
        assert!(MeanImage::from_blob(&b, "x")
            .unwrap_err()
            .to_string()
            .contains("needs 12"));
    }
}
