//! `Datum`, one record of a Caffe LMDB: raw (uint8 CHW, BGR) or encoded
//! (the bytes of an image file, shape absent).
use super::proto::Datum;
use crate::error::{Error, Result};
use crate::pipeline::decode::{decode, ColorMode};
use crate::pipeline::mat::Mat8;
use crate::pipeline::mat::Pixels;

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
        let count = value_count(c, h, w);
        if !self.float_data.is_empty() && self.data().is_empty() {
            return Err(Error::invalid(
                format!("record {key}"),
                "holds float_data (features), not image bytes",
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

/// A Datum read in place from its encoded bytes (an LMDB value), so the
/// training feed transforms pixels straight out of the memory map instead
/// of copying them twice (out of LMDB, then into a `Datum`).
#[derive(Clone, Debug, PartialEq)]
pub struct DatumRef<'a> {
    /// Channels, height, width (0 when unset, as in encoded datums).
    pub channels: i32,
    pub height: i32,
    pub width: i32,
    /// The `data` field: CHW pixels, or the encoded image file.
    pub data: &'a [u8],
    /// The label.
    pub label: i32,
    /// Whether `data` is an encoded image file.
    pub encoded: bool,
    /// The `float_data` values (feature records, as `features --lmdb` and
    /// Caffe's `extract_features` write them); empty for image records.
    pub float_data: Vec<f32>,
}

/// Reads a protobuf varint at `*at`.
fn varint(bytes: &[u8], at: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> DatumRef<'a> {
    /// Parses the wire format (Datum's field numbers 1-7; unknown fields
    /// are skipped, a repeated scalar's last value wins, as in protobuf).
    pub fn parse(bytes: &'a [u8]) -> std::result::Result<Self, String> {
        let mut d = DatumRef {
            channels: 0,
            height: 0,
            width: 0,
            data: &[],
            label: 0,
            encoded: false,
            float_data: Vec::new(),
        };
        let mut at = 0;
        while at < bytes.len() {
            let tag = varint(bytes, &mut at)?;
            let (field, wire) = (tag >> 3, tag & 7);
            match wire {
                0 => {
                    // int32 fields are sign-extended 64-bit varints.
                    let v = varint(bytes, &mut at)? as i64 as i32;
                    match field {
                        1 => d.channels = v,
                        2 => d.height = v,
                        3 => d.width = v,
                        5 => d.label = v,
                        7 => d.encoded = v != 0,
                        _ => {}
                    }
                }
                2 => {
                    let len = usize::try_from(varint(bytes, &mut at)?).map_err(|_| "bad length")?;
                    let end = at.checked_add(len).filter(|&e| e <= bytes.len());
                    let end = end
                        .ok_or_else(|| format!("field {field} runs past the end of the record"))?;
                    match field {
                        4 => d.data = &bytes[at..end],
                        // Packed floats (Caffe writes them unpacked; a parser takes both).
                        6 => {
                            if len % 4 != 0 {
                                return Err(format!(
                                    "packed float_data of {len} bytes is not whole floats"
                                ));
                            }
                            d.float_data
                                .extend(bytes[at..end].chunks_exact(4).map(le_f32));
                        }
                        _ => {}
                    }
                    at = end;
                }
                1 | 5 => {
                    let size = if wire == 1 { 8 } else { 4 };
                    let mut end = at
                        .checked_add(size)
                        .filter(|&e| e <= bytes.len())
                        .ok_or("truncated fixed-width field")?;
                    if field == 6 {
                        if wire == 1 {
                            return Err("float_data holds a 64-bit value".into());
                        }
                        d.float_data.push(le_f32(&bytes[at..end]));
                        // Caffe writes each float with its own tag byte (0x35): read
                        // the run in one loop rather than a varint per value.
                        let mut at = end;
                        let run = bytes[at..].chunks_exact(5).take_while(|c| c[0] == 0x35);
                        let before = d.float_data.len();
                        d.float_data.extend(run.map(|c| le_f32(&c[1..])));
                        at += 5 * (d.float_data.len() - before);
                        end = at;
                    }
                    at = end;
                }
                w => return Err(format!("unsupported wire type {w} for field {field}")),
            }
        }
        Ok(d)
    }

    /// The raw CHW pixels and their shape, or an error naming `key` when the
    /// record is encoded, float, or the wrong size.
    pub fn raw_pixels(&self, key: &str) -> Result<(usize, usize, usize, &'a [u8])> {
        if !self.float_data.is_empty() && self.data.is_empty() {
            return Err(Error::invalid(
                format!("record {key}"),
                "holds float_data (features), not image bytes",
            ));
        }
        let (c, h, w) = self.shape(key, self.data.len())?;
        Ok((c, h, w, self.data))
    }

    /// The values of a raw record, bytes or (when it has no bytes, as in
    /// Caffe's DataTransformer) floats, with their shape `(c, h, w)`.
    pub fn values(&self, key: &str) -> Result<(usize, usize, usize, Pixels<'_>)> {
        if self.data.is_empty() && !self.float_data.is_empty() {
            let (c, h, w) = self.shape(key, self.float_data.len())?;
            return Ok((c, h, w, Pixels::F32(&self.float_data)));
        }
        let (c, h, w, px) = self.raw_pixels(key)?;
        Ok((c, h, w, Pixels::U8(px)))
    }

    /// The shape, checked to be positive and to hold `len` values.
    fn shape(&self, key: &str, len: usize) -> Result<(usize, usize, usize)> {
        let bad = |m: String| Error::invalid(format!("record {key}"), m);
        let (c, h, w) = (self.channels, self.height, self.width);
        if c <= 0 || h <= 0 || w <= 0 {
            return Err(bad(format!("raw datum has shape {c}x{h}x{w}")));
        }
        let count = value_count(c, h, w);
        if len != count {
            let what = if self.data.is_empty() {
                "float_data"
            } else {
                "data"
            };
            return Err(bad(format!(
                "{what} holds {len} values but the shape {c}x{h}x{w} needs {count}"
            )));
        }
        Ok((c as usize, h as usize, w as usize))
    }
}

/// The values a positive c x h x w shape holds (`usize::MAX` when that
/// does not fit, which no record's data can match).
fn value_count(c: i32, h: i32, w: i32) -> usize {
    (c as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(w as usize))
        .unwrap_or(usize::MAX)
}

/// A little-endian f32 from 4 bytes.
fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
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
    fn datum_ref_reads_what_prost_writes_and_refuses_truncation() {
        let mut d = Datum::raw(&Mat8::new(2, 3, 3, (0..18).collect()), -7);
        d.float_data = vec![];
        let bytes = d.encode_to_vec();
        let r = DatumRef::parse(&bytes).unwrap();
        assert_eq!(
            (r.channels, r.height, r.width, r.label),
            (d.channels(), d.height(), d.width(), -7)
        );
        assert!(!r.encoded && r.float_data.is_empty());
        let (c, h, w) = (
            d.channels() as usize,
            d.height() as usize,
            d.width() as usize,
        );
        assert_eq!(r.raw_pixels("k").unwrap(), (c, h, w, d.data()));
        let e = Datum::encoded_bytes(vec![9, 8, 7], 4).encode_to_vec();
        let r = DatumRef::parse(&e).unwrap();
        assert!(r.encoded);
        assert_eq!((r.data, r.label), (&[9u8, 8, 7][..], 4));
        assert!(r.raw_pixels("e").is_err());
        let f = Datum {
            float_data: vec![1.0, 2.0],
            channels: Some(1),
            height: Some(1),
            width: Some(2),
            ..Default::default()
        }
        .encode_to_vec();
        let err = DatumRef::parse(&f).unwrap().raw_pixels("f").unwrap_err();
        assert!(err.to_string().contains("float_data"), "{err}");
        let r = DatumRef::parse(&f).unwrap();
        let (c, h, w, v) = r.values("f").unwrap();
        assert!(matches!(v, Pixels::F32(&[1.0, 2.0])) && (c, h, w) == (1, 1, 2));
        // A record cut anywhere before the end of its pixels is an error, never a panic.
        let full = DatumRef::parse(&bytes).unwrap();
        let data_end = full.data.as_ptr() as usize - bytes.as_ptr() as usize + full.data.len();
        for cut in 0..data_end {
            let ok = DatumRef::parse(&bytes[..cut])
                .and_then(|r| r.raw_pixels("t").map(|_| ()).map_err(|e| e.to_string()));
            assert!(ok.is_err(), "prefix of {cut} bytes accepted");
        }
    }

    /// Feature records: Caffe's unpacked floats and packed ones read alike;
    /// every truncation is an error, never a short or garbled row.
    #[test]
    fn float_datums_read_packed_or_not_and_refuse_truncation() {
        let d = Datum {
            channels: Some(3),
            height: Some(1),
            width: Some(1),
            float_data: vec![0.5, -2.0, 7.25],
            label: Some(2),
            ..Default::default()
        };
        let bytes = d.encode_to_vec();
        let r = DatumRef::parse(&bytes).unwrap();
        assert_eq!(
            (r.float_data.as_slice(), r.label),
            (&[0.5, -2.0, 7.25][..], 2)
        );
        // The same values packed (tag 6, wire type 2).
        let mut packed = bytes[..8].to_vec();
        packed.extend([0x32, 12]);
        for v in &d.float_data {
            packed.extend(v.to_le_bytes());
        }
        assert_eq!(DatumRef::parse(&packed).unwrap().float_data, r.float_data);
        for cut in 0..bytes.len() {
            let ok = DatumRef::parse(&bytes[..cut])
                .and_then(|r| r.values("t").map(|_| ()).map_err(|e| e.to_string()));
            assert!(ok.is_err(), "prefix of {cut} bytes accepted");
        }
        let mut odd = packed.clone();
        odd[9] = 11;
        odd.truncate(odd.len() - 1);
        assert!(DatumRef::parse(&odd).unwrap_err().contains("whole floats"));
        // A shape too large to count is refused, not an overflow.
        let huge = Datum {
            channels: Some(i32::MAX),
            height: Some(i32::MAX),
            width: Some(i32::MAX),
            float_data: vec![1.0],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(DatumRef::parse(&huge).unwrap().values("h").is_err());
        // Damaged records (random bytes changed) are read or refused, never
        // a panic, and what is read holds as many values as its shape says.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for _ in 0..5000 {
            let mut b = if rng.random_bool(0.5) {
                bytes.clone()
            } else {
                packed.clone()
            };
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            if let Ok(r) = DatumRef::parse(&b) {
                if let Ok((c, h, w, v)) = r.values("m") {
                    assert_eq!(v.len(), c * h * w);
                }
            }
        }
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
