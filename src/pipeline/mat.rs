//! [`Mat8`]: an 8-bit image laid out like an OpenCV `Mat` (rows of
//! interleaved pixels, BGR order for colour), the currency between decoding,
//! resizing and Caffe's CHW datums.

/// An 8-bit image, row-major, channels interleaved (HWC); colour is BGR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mat8 {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// 1 (gray), 3 (BGR) or 4 (BGRA).
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

impl Mat8 {
    /// Wraps an HWC buffer; `data.len()` must equal `height * width * channels`.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * channels, "Mat8 buffer size");
        Mat8 {
            width,
            height,
            channels,
            data,
        }
    }

    /// Caffe's datum layout: planar CHW (`out[(c*H + h)*W + w]`).
    pub fn to_chw(&self) -> Vec<u8> {
        let (w, h, c) = (self.width, self.height, self.channels);
        let plane = w * h;
        let mut out = vec![0u8; plane * c];
        if c == 1 {
            out.copy_from_slice(&self.data);
            return out;
        }
        if c == 3 {
            // The common case, with the planes split up front so the loop
            // has no bounds checks.
            let (b, rest) = out.split_at_mut(plane);
            let (g, r) = rest.split_at_mut(plane);
            for (((px, b), g), r) in self.data.chunks_exact(3).zip(b).zip(g).zip(r) {
                (*b, *g, *r) = (px[0], px[1], px[2]);
            }
            return out;
        }
        for (i, px) in self.data.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * plane + i] = v;
            }
        }
        out
    }

    /// The inverse of [`Mat8::to_chw`].
    pub fn from_chw(width: usize, height: usize, channels: usize, chw: &[u8]) -> Self {
        let plane = width * height;
        let mut data = vec![0u8; plane * channels];
        for ch in 0..channels {
            for (i, &v) in chw[ch * plane..(ch + 1) * plane].iter().enumerate() {
                data[i * channels + ch] = v;
            }
        }
        Mat8::new(width, height, channels, data)
    }
}

/// An image's values: bytes (images, raw Datums) or floats (a Datum's
/// `float_data`, as `features --lmdb` and Caffe's `extract_features` write).
#[derive(Clone, Copy, Debug)]
pub enum Pixels<'a> {
    /// One byte per value.
    U8(&'a [u8]),
    /// One float per value.
    F32(&'a [f32]),
}

impl Pixels<'_> {
    /// How many values there are.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(d) => d.len(),
            Pixels::F32(d) => d.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [u8]> for Pixels<'a> {
    fn from(d: &'a [u8]) -> Self {
        Pixels::U8(d)
    }
}

impl<'a> From<&'a Vec<u8>> for Pixels<'a> {
    fn from(d: &'a Vec<u8>) -> Self {
        Pixels::U8(d)
    }
}

impl<'a> From<&'a [f32]> for Pixels<'a> {
    fn from(d: &'a [f32]) -> Self {
        Pixels::F32(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_round_trip() {
        let m = Mat8::new(2, 1, 3, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(m.to_chw(), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(Mat8::from_chw(2, 1, 3, &m.to_chw()), m);
        let m = Mat8::new(1, 2, 4, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(m.to_chw(), vec![1, 5, 2, 6, 3, 7, 4, 8]);
        assert_eq!(Mat8::from_chw(1, 2, 4, &m.to_chw()), m);
    }
}
