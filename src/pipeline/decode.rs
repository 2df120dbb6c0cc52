//! Image decoding that behaves like OpenCV's `cv::imread` / `cv::imdecode`,
//! Caffe's readers: BGR output, gray images replicated to three channels in
//! colour mode, alpha dropped, EXIF orientation applied, and for `--gray`
//! the JPEG luma plane itself.
//!
//! JPEGs go through zune-jpeg in strict mode, so a truncated or corrupt file
//! is an error rather than a silently grey-filled image (libjpeg only warns).
//! Other formats go through the `image` crate.
use super::mat::Mat8;
use crate::error::{Error, IoContext, Result};
use image::metadata::Orientation;
use std::path::Path;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Which channels to produce, as OpenCV's `IMREAD_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// `IMREAD_COLOR`: always 3 channels, BGR.
    Color,
    /// `IMREAD_GRAYSCALE`: always 1 channel.
    Gray,
    /// `IMREAD_UNCHANGED`: the file's own channel count (1, 3 or 4; BGR(A)).
    Native,
}

/// Decodes the image file at `path`.
pub fn read_image(path: &Path, mode: ColorMode) -> Result<Mat8> {
    let bytes = std::fs::read(path).at(path)?;
    decode(&bytes, mode).map_err(|m| Error::image(path, m))
}

/// Decodes an in-memory image; the error is a human-readable reason.
pub fn decode(bytes: &[u8], mode: ColorMode) -> std::result::Result<Mat8, String> {
    if bytes.is_empty() {
        return Err("file is empty".into());
    }
    let mat = if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, mode)?
    } else {
        decode_other(bytes, mode)?
    };
    if mat.width == 0 || mat.height == 0 {
        return Err("image has zero width or height".into());
    }
    Ok(mat)
}

/// Whether `bytes` decode completely as an image (any supported format).
///
/// Decodes to one channel: every entropy-coded block is still read (so a
/// truncated or corrupt file fails) but colour conversion is skipped.
pub fn is_valid_image(bytes: &[u8]) -> bool {
    decode(bytes, ColorMode::Gray).is_ok()
}

fn decode_jpeg(bytes: &[u8], mode: ColorMode) -> std::result::Result<Mat8, String> {
    let mut probe = JpegDecoder::new(ZCursor::new(bytes));
    probe.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let input = probe.input_colorspace().unwrap_or(ColorSpace::YCbCr);
    let gray_input = matches!(input, ColorSpace::Luma | ColorSpace::LumaA);
    let out_space = match mode {
        ColorMode::Gray => ColorSpace::Luma,
        ColorMode::Native if gray_input => ColorSpace::Luma,
        // A gray JPEG read in colour: decode the plane once, replicate below.
        ColorMode::Color if gray_input => ColorSpace::Luma,
        _ => ColorSpace::BGR,
    };
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .jpeg_set_out_colorspace(out_space);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = dec.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    let info = dec.info().ok_or("JPEG: no image information")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let cn = if out_space == ColorSpace::Luma { 1 } else { 3 };
    if pixels.len() != w * h * cn {
        return Err(format!(
            "JPEG: decoder returned {} bytes for {w}x{h}x{cn}",
            pixels.len()
        ));
    }
    let mut mat = Mat8::new(w, h, cn, pixels);
    if mode == ColorMode::Color && cn == 1 {
        mat = gray_to_bgr(&mat);
    }
    let orientation = dec
        .exif()
        .and_then(|exif| {
            Orientation::from_exif_chunk(exif.strip_prefix(b"Exif\0\0").unwrap_or(exif))
        })
        .unwrap_or(Orientation::NoTransforms);
    Ok(orient(mat, orientation))
}

fn decode_other(bytes: &[u8], mode: ColorMode) -> std::result::Result<Mat8, String> {
    use image::{DynamicImage, ImageDecoder, ImageReader};
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("unrecognised image format")?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let is_png = format == image::ImageFormat::Png;
    let has_color = img.color().has_color();
    let has_alpha = img.color().has_alpha();
    // OpenCV keeps the high byte of 16-bit samples.
    let rgba: Vec<u8> = match &img {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => img
            .to_rgba16()
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect(),
        _ => img.to_rgba8().into_raw(),
    };
    let mat = match (mode, has_color) {
        (ColorMode::Gray, false) | (ColorMode::Native, false) => {
            Mat8::new(w, h, 1, rgba.chunks_exact(4).map(|p| p[0]).collect())
        }
        (ColorMode::Gray, true) => Mat8::new(
            w,
            h,
            1,
            rgba.chunks_exact(4)
                .map(|p| rgb_to_gray(p[0], p[1], p[2], is_png))
                .collect(),
        ),
        (ColorMode::Native, true) if has_alpha => Mat8::new(
            w,
            h,
            4,
            rgba.chunks_exact(4)
                .flat_map(|p| [p[2], p[1], p[0], p[3]])
                .collect(),
        ),
        _ => Mat8::new(
            w,
            h,
            3,
            rgba.chunks_exact(4)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect(),
        ),
    };
    Ok(orient(mat, orientation))
}

/// Luma as the decoders OpenCV uses compute it: libpng's fixed-point
/// 0.299/0.587 weights for PNG, `cvtColor`'s 14-bit weights otherwise.
fn rgb_to_gray(r: u8, g: u8, b: u8, png: bool) -> u8 {
    let (r, g, b) = (r as u32, g as u32, b as u32);
    if png {
        ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15) as u8
    } else {
        ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14) as u8
    }
}

fn gray_to_bgr(m: &Mat8) -> Mat8 {
    let data = m.data.iter().flat_map(|&v| [v, v, v]).collect();
    Mat8::new(m.width, m.height, 3, data)
}

/// Applies an EXIF orientation by remapping pixels.
fn orient(m: Mat8, o: Orientation) -> Mat8 {
    if o == Orientation::NoTransforms {
        return m;
    }
    let (w, h, cn) = (m.width, m.height, m.channels);
    let transposed = matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (ow, oh) = if transposed { (h, w) } else { (w, h) };
    let mut out = vec![0u8; m.data.len()];
    for y in 0..oh {
        for x in 0..ow {
            // Source pixel for output (x, y).
            let (sx, sy) = match o {
                Orientation::NoTransforms => (x, y),
                Orientation::FlipHorizontal => (w - 1 - x, y),
                Orientation::Rotate180 => (w - 1 - x, h - 1 - y),
                Orientation::FlipVertical => (x, h - 1 - y),
                Orientation::Rotate90 => (y, h - 1 - x),
                Orientation::Rotate270 => (w - 1 - y, x),
                Orientation::Rotate90FlipH => (y, x),
                Orientation::Rotate270FlipH => (w - 1 - y, h - 1 - x),
            };
            let s = (sy * w + sx) * cn;
            let d = (y * ow + x) * cn;
            out[d..d + cn].copy_from_slice(&m.data[s..s + cn]);
        }
    }
    Mat8::new(ow, oh, cn, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate90_moves_bottom_left_to_top_left() {
        // 2x1 image [a b] rotated 90 degrees clockwise becomes a column [a; b]... with
        // the left pixel on top.
        let m = Mat8::new(2, 1, 1, vec![1, 2]);
        let r = orient(m.clone(), Orientation::Rotate90);
        assert_eq!((r.width, r.height, r.data.clone()), (1, 2, vec![1, 2]));
        let r = orient(m, Orientation::Rotate270);
        assert_eq!(r.data, vec![2, 1]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not an image at all", ColorMode::Color).is_err());
        assert!(decode(&[], ColorMode::Color).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16], ColorMode::Color).is_err());
    }
}
