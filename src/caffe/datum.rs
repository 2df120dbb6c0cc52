//! `Datum`, one record of a Caffe LMDB: raw (uint8 CHW, BGR) or encoded
//! (the bytes of an image file, shape absent).
use super::proto::Datum;
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, ColorMode};
use crate::pipeline::mat::Mat8;

impl Datum {
    /// A raw datum as `CVMatToDatum` writes it: c/h/w, CHW bytes, label, and
    /// `encoded = false` written explicitly (field order 1, 2, 3, 4, 5, 7).
    pub fn raw(mat: &Mat8, label: i32) -> Self {
        Datum {
            channels: Some(mat.channels as i32),
            height: Some(mat.height as i32),
            width: Some(mat.width as i32),
            data: Some(mat.to_chw()),
            label: Some(label),
            float_data: Vec::new(),
            encoded: Some(false),
        }
    }

    /// An encoded datum: only `data`, `label` and `encoded = true` are set.
    pub fn encoded_bytes(bytes: Vec<u8>, label: i32) -> Self {
        Datum {
            data: Some(bytes),
            label: Some(label),
            encoded: Some(true),
            ..Default::default()
        }
    }

    /// The pixels as CHW uint8 with their shape `(channels, height, width)`.
    ///
    /// Encoded datums are decoded with their native channel count (Caffe's
    /// `DecodeDatumNative`); `key` names the record in errors.
    pub fn into_pixels(mut self, key: &str) -> Result<(usize, usize, usize, Vec<u8>)> {
        if self.encoded() {
            let mat = decode(self.data(), ColorMode::Native).map_err(|m| {
                Error::invalid(format!("record {key}"), format!("encoded image: {m}"))
            })?;
            return Ok((mat.channels, mat.height, mat.width, mat.to_chw()));
        }
        let (c, h, w) = (self.channels(), self.height(), self.width());
        if c <= 0 || h <= 0 || w <= 0 {
            return Err(Error::invalid(
                format!("record {key}"),
                format!("raw datum has shape {c}x{h}x{w}"),
            ));
        }
        let count = (c * h * w) as usize;
        if !self.float_data.is_empty() && self.data().is_empty() {
            return Err(Error::invalid(
                format!("record {key}"),
                "float_data datums are not supported (expected uint8 data)",
            ));
        }
        if self.data().len() != count {
            return Err(Error::invalid(
                format!("record {key}"),
                format!(
                    "data holds {} bytes but the shape {c}x{h}x{w} needs {count}",
                    self.data().len()
                ),
            ));
        }
        // Raw bytes are already CHW: hand them over without a copy.
        Ok((
            c as usize,
            h as usize,
            w as usize,
            self.data.take().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn raw_datum_bytes_match_caffe_layout() {
        let mat = Mat8::new(1, 1, 3, vec![10, 20, 30]);
        let d = Datum::raw(&mat, 0);
        let bytes = d.encode_to_vec();
        assert_eq!(
            bytes,
            vec![0x08, 3, 0x10, 1, 0x18, 1, 0x22, 3, 10, 20, 30, 0x28, 0, 0x38, 0]
        );
        let back = Datum::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.clone().into_pixels("k").unwrap(),
            (3, 1, 1, vec![10, 20, 30])
        );
    }

    #[test]
    fn encoded_datum_has_no_shape_and_bad_sizes_are_errors() {
        let d = Datum::encoded_bytes(vec![1, 2, 3], 2);
        let back = Datum::decode(d.encode_to_vec().as_slice()).unwrap();
        assert!(back.channels.is_none() && back.encoded());
        assert!(back
            .clone()
            .into_pixels("k")
            .unwrap_err()
            .to_string()
            .contains("record k"));
        let mut raw = Datum::raw(&Mat8::new(2, 2, 1, vec![0; 4]), 1);
        raw.data = Some(vec![0; 3]);
        assert!(raw.clone().into_pixels("x").is_err());
    }
}
