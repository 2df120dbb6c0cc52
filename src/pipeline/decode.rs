//! Image decoding that behaves like OpenCV's `cv::imread` / `cv::imdecode`,
//! Caffe's readers: BGR output, gray images replicated to three channels in
//! colour mode, alpha dropped, EXIF orientation applied, and for `--gray`
//! the JPEG luma plane itself.
//!
//! JPEGs go through libjpeg-turbo's decoder (see `jpeg`), as in OpenCV, so
//! their pixels are OpenCV's exactly; a truncated or corrupt file is an error
//! rather than a silently grey-filled image (libjpeg only warns). CMYK and
//! YCCK JPEGs are converted with OpenCV's formula.
//! Other formats go through the `image` crate.
use super::jpeg;
use super::mat::Mat8;
use super::png_gray::PngGray;
use crate::error::{Error, IoContext, Result};
use image::metadata::Orientation;
use std::path::Path;

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

/// Largest width or height decoded (JPEG's own limit is 65,535).
pub const MAX_SIDE: usize = 1 << 16;
/// Largest pixel count decoded: OpenCV's default `CV_IO_MAX_IMAGE_PIXELS`.
/// Checked from the header before any pixel buffer is allocated, so a file
/// that merely claims huge dimensions is an error, not an allocation abort.
pub const MAX_PIXELS: usize = 1 << 30;

fn check_dimensions(width: usize, height: usize) -> std::result::Result<(), String> {
    if width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_PIXELS {
        return Err(format!(
            "image claims {width}x{height} pixels, more than the {MAX_SIDE}-pixel side and \
             {MAX_PIXELS}-pixel area decoded (OpenCV's limit); downscale it first"
        ));
    }
    Ok(())
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
    let want = match mode {
        ColorMode::Gray => jpeg::Want::Gray,
        ColorMode::Native => jpeg::Want::Native,
        ColorMode::Color => jpeg::Want::Bgr,
    };
    let img = jpeg::decode(bytes, want, check_dimensions)?;
    let (w, h) = (img.width, img.height);
    let mat = if img.channels == 4 {
        cmyk_to(&img.pixels, w, h, mode)
    } else {
        Mat8::new(w, h, img.channels, img.pixels)
    };
    let orientation = img
        .exif
        .and_then(|exif| Orientation::from_exif_chunk(&exif))
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
    let (width, height) = decoder.dimensions();
    check_dimensions(width as usize, height as usize)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let is_png = format == image::ImageFormat::Png;
    let has_color = img.color().has_color();
    let has_alpha = img.color().has_alpha();
    let sixteen = matches!(
        img,
        DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_)
    );
    if mode == ColorMode::Gray && has_color && is_png {
        // OpenCV has libpng convert colour PNGs to gray (gamma-aware).
        let png = PngGray::for_file(bytes);
        let gray = if sixteen {
            png.gray16(&img.to_rgba16().into_raw())
        } else {
            png.gray8(&img.to_rgba8().into_raw())
        };
        return Ok(orient(Mat8::new(w, h, 1, gray), orientation));
    }
    // OpenCV keeps the high byte of 16-bit samples.
    let rgba: Vec<u8> = if sixteen {
        img.to_rgba16()
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect()
    } else {
        img.to_rgba8().into_raw()
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
                .map(|p| rgb_to_gray(p[0], p[1], p[2]))
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

/// OpenCV's reading of a CMYK JPEG's stored samples (Adobe files store them
/// inverted, which this formula assumes): each colour channel becomes
/// `k - ((255 - c) * k >> 8)`, giving R, G, B from C, M, Y; gray mode then
/// applies `cvtColor`'s weights. Colour and unchanged modes give BGR.
fn cmyk_to(cmyk: &[u8], width: usize, height: usize, mode: ColorMode) -> Mat8 {
    let rgb = |p: &[u8]| {
        let k = p[3] as u32;
        let ch = |c: u8| (k - (((255 - c as u32) * k) >> 8)) as u8;
        (ch(p[0]), ch(p[1]), ch(p[2]))
    };
    let pixels = cmyk.chunks_exact(4).map(rgb);
    match mode {
        ColorMode::Gray => Mat8::new(
            width,
            height,
            1,
            pixels.map(|(r, g, b)| rgb_to_gray(r, g, b)).collect(),
        ),
        ColorMode::Color | ColorMode::Native => Mat8::new(
            width,
            height,
            3,
            pixels.flat_map(|(r, g, b)| [b, g, r]).collect(),
        ),
    }
}

/// Luma as `cvtColor` (and OpenCV's JPEG reader) computes it: 14-bit
/// fixed-point BT.601 weights, rounded.
pub fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    let (r, g, b) = (r as u32, g as u32, b as u32);
    ((r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14) as u8
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

    /// An encoded 8x8 image in `format`.
    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        if format == image::ImageFormat::Jpeg {
            return jpeg::encode(&[30, 20, 10].repeat(64), 8, 8, 3, 95).unwrap();
        }
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// CRC-32 (IEEE), as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn huge_claimed_dimensions_are_refused_before_allocating() {
        // A PNG whose header claims 100,000 x 100,000 (30 GB of RGB): it used
        // to abort the process on the allocation.
        let mut png = encoded(image::ImageFormat::Png);
        let ihdr = 8 + 4; // signature, then the IHDR chunk's length field
        png[ihdr + 4..ihdr + 8].copy_from_slice(&100_000u32.to_be_bytes());
        png[ihdr + 8..ihdr + 12].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[ihdr..ihdr + 4 + 13]);
        png[ihdr + 17..ihdr + 21].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&png, ColorMode::Color).unwrap_err();
        assert!(e.contains("claims 100000x100000"), "{e}");
        // A JPEG whose frame header claims 60,000 x 60,000.
        let mut jpg = encoded(image::ImageFormat::Jpeg);
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let e = decode(&jpg, ColorMode::Color).unwrap_err();
        assert!(e.contains("claims 60000x60000"), "{e}");
        // The untouched files decode.
        assert!(decode(&encoded(image::ImageFormat::Png), ColorMode::Color).is_ok());
        assert!(decode(&encoded(image::ImageFormat::Jpeg), ColorMode::Color).is_ok());
    }

    /// A file of `tests/data`.
    fn test_data(name: &str) -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/").to_string() + name)
            .unwrap()
    }

    fn golden_u32(file: &str, key: &str) -> u32 {
        let json: serde_json::Value = serde_json::from_slice(&test_data(file)).unwrap();
        json[key].as_u64().unwrap() as u32
    }

    /// The nested rows under `key` of a golden-values JSON file, flattened.
    fn golden(file: &str, key: &str) -> Vec<u8> {
        fn walk(v: &serde_json::Value, out: &mut Vec<u8>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                n => out.push(n.as_u64().unwrap() as u8),
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&test_data(file)).unwrap();
        let mut out = Vec::new();
        walk(&json[key], &mut out);
        out
    }

    #[test]
    fn color_png_reads_as_gray_exactly_as_opencv_reads_it() {
        // OpenCV asks libpng for the conversion: truncated 15-bit weights,
        // in linear light when the file states its gamma (sRGB, gAMA), and
        // for 16-bit files before the strip to 8 bits (sBIT sets the
        // precision of libpng's gamma tables there).
        for file in [
            "rgb8_12x10.png",
            "rgb16_12x10.png",
            "rgb8_srgb_12x10.png",
            "rgb16_gama_sbit_12x10.png",
        ] {
            let m = decode(&test_data(file), ColorMode::Gray).unwrap();
            assert_eq!((m.width, m.height, m.channels), (12, 10, 1));
            assert_eq!(m.data, golden("png_gray_opencv.json", file), "{file}");
        }
    }

    #[test]
    fn cmyk_and_ycck_jpegs_read_as_opencv_reads_them() {
        // Golden values from OpenCV itself (provenance in the JSON files):
        // libjpeg hands over CMYK (converting YCCK), then OpenCV's formula.
        for (file, golden_file) in [
            ("cmyk_16x16.jpg", "cmyk_16x16_opencv.json"),
            ("ycck_16x16.jpg", "ycck_16x16_opencv.json"),
        ] {
            let bytes = test_data(file);
            assert!(is_valid_image(&bytes), "assemble keeps {file}");
            for (mode, key, channels) in [
                (ColorMode::Color, "bgr", 3),
                (ColorMode::Native, "bgr", 3),
                (ColorMode::Gray, "gray", 1),
            ] {
                let m = decode(&bytes, mode).unwrap();
                assert_eq!((m.width, m.height, m.channels), (16, 16, channels));
                assert_eq!(m.data, golden(golden_file, key), "{file} {mode:?}");
            }
        }
    }

    #[test]
    fn jpeg_pixels_are_libjpeg_turbos() {
        // A 4:2:0 JPEG of a smooth colour ramp: the inverse DCT, the fancy
        // upsampling and the YCbCr tables each round their own way. Golden
        // values from cv2.imread (opencv-python-headless 5.0.0).
        let (w, h) = (20, 12);
        let bgr: Vec<u8> = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| [(x * 12) as u8, (y * 20) as u8, ((x + y) * 7) as u8])
            })
            .collect();
        let jpg = jpeg::encode(&bgr, w, h, 3, 75).unwrap();
        let m = decode(&jpg, ColorMode::Color).unwrap();
        assert_eq!(m.data, golden("ramp_20x12_opencv.json", "bgr"));
        let m = decode(&jpg, ColorMode::Gray).unwrap();
        assert_eq!(m.data, golden("ramp_20x12_opencv.json", "gray"));
        // Arithmetic-coded files (SOF9) decode too, as with Debian's libjpeg.
        let arith = test_data("arith_24x16.jpg");
        assert_eq!(
            decode(&arith, ColorMode::Color).unwrap().data,
            golden("arith_24x16_opencv.json", "bgr")
        );
        assert_eq!(
            decode(&arith, ColorMode::Gray).unwrap().data,
            golden("arith_24x16_opencv.json", "gray")
        );
        // And the encoder is cv2.imencode's, byte for byte.
        assert_eq!(
            crc32(&jpg),
            golden_u32("ramp_20x12_opencv.json", "imencode_q75_crc32")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not an image at all", ColorMode::Color).is_err());
        assert!(decode(&[], ColorMode::Color).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16], ColorMode::Color).is_err());
    }
}
