//! JPEG through libjpeg-turbo's own code (the mozjpeg fork, built from source
//! by `mozjpeg-sys`; its decoder and, in the `JCP_FASTEST` profile, its
//! encoder are libjpeg-turbo's), the library OpenCV reads and writes JPEGs
//! with. Decoding is therefore bit-identical to `cv::imread`: the accurate
//! integer inverse DCT, triangle-filter ("fancy") chroma upsampling and
//! libjpeg's fixed-point YCbCr→BGR tables. Encoding matches `cv::imencode`
//! byte for byte (baseline, standard Huffman tables, 4:2:0, JFIF header).
//!
//! libjpeg reports errors through a callback that must not return; ours
//! unwinds (the C code is compiled with `-fexceptions` and the callbacks are
//! `C-unwind`) to a `catch_unwind` here, which turns it into an `Err`.
//! `resume_unwind` skips the panic hook, so nothing is printed.
//! Unlike OpenCV, which only warns, data-loss warnings (a truncated file,
//! corrupt entropy data) are errors: a half-grey image is not a training image.
use mozjpeg_sys as ffi;
use std::ffi::{c_int, c_ulong};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Largest decoder working memory. A progressive or multi-scan file keeps
/// every coefficient (3 bytes per pixel at 4:2:0, 6 at 4:4:4), so this admits
/// progressive photos of 180-350 megapixels, while a tiny file claiming a
/// huge progressive image is an error rather than gigabytes zeroed.
pub const MAX_DECODER_MEMORY: usize = 1 << 30;

/// A decoded JPEG as libjpeg delivers it to OpenCV.
#[derive(Debug)]
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    /// 1 (gray), 3 (BGR) or 4 (CMYK as stored, Adobe files inverted).
    pub channels: usize,
    pub pixels: Vec<u8>,
    /// The first APP1 segment's payload after `Exif\0\0`, if any.
    pub exif: Option<Vec<u8>>,
}

/// How to read a file: what OpenCV asks libjpeg for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// One channel: the luma plane of a colour file.
    Gray,
    /// Three channels BGR for colour files, one for gray files.
    Native,
    /// Three channels BGR always (libjpeg replicates a gray plane itself).
    Bgr,
}

/// The payload of our error unwinds.
struct Failure(String);

/// `format_message` writes into the buffer it is given; the binding types it
/// as a shared reference, so call it through a pointer-typed signature.
type FormatMessage = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);

unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let mut buf = [0u8; 80]; // JMSG_LENGTH_MAX
    if let Some(f) = (*cinfo.err).format_message {
        let f: FormatMessage = std::mem::transmute(f);
        f(cinfo, buf.as_mut_ptr());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let code = (*cinfo.err).msg_code;
    let mut msg = message(cinfo);
    if code == ffi::JERR_NO_BACKING_STORE as c_int {
        msg = format!(
            "needs more than {} GiB of decoder memory; downscale it first",
            MAX_DECODER_MEMORY >> 30
        );
    }
    resume_unwind(Box::new(Failure(msg)))
}

/// Warnings that mean pixels were lost or invented.
fn loses_data(code: c_int) -> bool {
    use ffi::*;
    [
        JWRN_JPEG_EOF,
        JWRN_HIT_MARKER,
        JWRN_HUFF_BAD_CODE,
        JWRN_MUST_RESYNC,
        JWRN_NOT_SEQUENTIAL,
        JWRN_BOGUS_PROGRESSION,
    ]
    .iter()
    .any(|&c| c as c_int == code)
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    let err = &mut *cinfo.err;
    err.num_warnings += 1;
    if loses_data(err.msg_code) {
        let msg = message(cinfo);
        let hint = if msg.contains("Premature end") {
            " (the file is truncated)"
        } else {
            ""
        };
        resume_unwind(Box::new(Failure(format!("{msg}{hint}"))))
    }
}

/// Runs `body` with libjpeg errors turned into `Err("JPEG: …")`; errors
/// `body` returns itself pass through unchanged.
fn guarded<T>(body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<Failure>() {
            Ok(f) => Err(format!("JPEG: {}", f.0)),
            Err(other) => resume_unwind(other),
        },
    }
}

fn error_manager() -> Box<ffi::jpeg_error_mgr> {
    // SAFETY: all-zero is a valid jpeg_error_mgr (null pointers, None
    // callbacks); jpeg_std_error then fills in every field.
    let mut err: Box<ffi::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    unsafe { ffi::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Decodes `bytes`. `check` sees the header's width and height before
/// anything the size of the image is allocated.
pub fn decode(
    bytes: &[u8],
    want: Want,
    check: impl FnOnce(usize, usize) -> Result<(), String>,
) -> Result<Decoded, String> {
    let mut err = error_manager();
    // SAFETY: zeroed is the state jpeg_CreateDecompress expects to fill.
    let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    cinfo.common.err = &mut *err;
    guarded(|| {
        unsafe { ffi::jpeg_create_decompress(&mut *cinfo) };
        Ok(())
    })?;
    let result = guarded(|| unsafe { decode_with(&mut cinfo, bytes, want, check) });
    // SAFETY: destroy is libjpeg's documented cleanup after an error too.
    unsafe { ffi::jpeg_destroy_decompress(&mut cinfo) };
    drop(err);
    result
}

unsafe fn decode_with(
    cinfo: &mut ffi::jpeg_decompress_struct,
    bytes: &[u8],
    want: Want,
    check: impl FnOnce(usize, usize) -> Result<(), String>,
) -> Result<Decoded, String> {
    (*cinfo.common.mem).max_memory_to_use = MAX_DECODER_MEMORY as _;
    ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
    ffi::jpeg_save_markers(cinfo, 0xE1, 0xFFFF);
    ffi::jpeg_read_header(cinfo, 1);
    check(cinfo.image_width as usize, cinfo.image_height as usize)?;
    let exif = exif_payload(cinfo);
    // OpenCV's choices: four components come out as CMYK (libjpeg turns
    // YCCK into CMYK); otherwise gray or BGR.
    cinfo.out_color_space = if cinfo.num_components == 4 {
        ffi::J_COLOR_SPACE::JCS_CMYK
    } else if want == Want::Gray || (want == Want::Native && cinfo.num_components == 1) {
        ffi::J_COLOR_SPACE::JCS_GRAYSCALE
    } else {
        ffi::J_COLOR_SPACE::JCS_EXT_BGR
    };
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    ffi::jpeg_start_decompress(cinfo);
    let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
    let cn = cinfo.output_components as usize;
    let stride = w * cn;
    let mut pixels = Vec::new();
    pixels
        .try_reserve_exact(stride * h)
        .map_err(|_| format!("JPEG: image {w}x{h}x{cn} does not fit in memory"))?;
    pixels.resize(stride * h, 0);
    while (cinfo.output_scanline as usize) < h {
        let row = cinfo.output_scanline as usize;
        let mut ptr = pixels[row * stride..].as_mut_ptr();
        if ffi::jpeg_read_scanlines(cinfo, &mut ptr, 1) != 1 {
            return Err("JPEG: decoder returned no scanline".into());
        }
    }
    ffi::jpeg_finish_decompress(cinfo);
    Ok(Decoded {
        width: w,
        height: h,
        channels: cn,
        pixels,
        exif,
    })
}

/// The saved APP1 segments' first EXIF payload (the list lives in the
/// decoder's image pool: copy it before `finish`).
unsafe fn exif_payload(cinfo: &ffi::jpeg_decompress_struct) -> Option<Vec<u8>> {
    let mut marker = cinfo.marker_list;
    while let Some(m) = marker.as_ref() {
        if m.marker == 0xE1 && !m.data.is_null() {
            let data = std::slice::from_raw_parts(m.data, m.data_length as usize);
            if let Some(rest) = data.strip_prefix(b"Exif\0\0") {
                return Some(rest.to_vec());
            }
        }
        marker = m.next;
    }
    None
}

/// Encodes interleaved BGR (3 channels) or gray (1) pixels as
/// `cv::imencode(".jpg", …)` does at `quality`: libjpeg-turbo's defaults
/// (baseline, standard Huffman tables, 4:2:0 chroma, JFIF APP0), accurate
/// integer DCT.
pub fn encode(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    quality: i32,
) -> Result<Vec<u8>, String> {
    if !(channels == 1 || channels == 3) || pixels.len() != width * height * channels {
        return Err(format!(
            "JPEG: cannot encode {width}x{height}x{channels} from {} bytes",
            pixels.len()
        ));
    }
    if width == 0 || height == 0 || width > 65_500 || height > 65_500 {
        return Err(format!(
            "JPEG: {width}x{height} is outside JPEG's size limits"
        ));
    }
    let mut err = error_manager();
    // SAFETY: as for decoding.
    let mut cinfo: Box<ffi::jpeg_compress_struct> = Box::new(unsafe { std::mem::zeroed() });
    cinfo.common.err = &mut *err;
    let mut out: *mut u8 = std::ptr::null_mut();
    let mut out_len: c_ulong = 0;
    guarded(|| {
        unsafe { ffi::jpeg_create_compress(&mut *cinfo) };
        Ok(())
    })?;
    let result = guarded(|| unsafe {
        ffi::jpeg_mem_dest(&mut cinfo, &mut out, &mut out_len);
        cinfo.image_width = width as _;
        cinfo.image_height = height as _;
        cinfo.input_components = channels as c_int;
        cinfo.in_color_space = if channels == 3 {
            ffi::J_COLOR_SPACE::JCS_EXT_BGR
        } else {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE
        };
        // libjpeg-turbo's behaviour instead of mozjpeg's size-optimising one.
        ffi::jpeg_c_set_int_param(
            &mut cinfo,
            ffi::J_INT_PARAM::JINT_COMPRESS_PROFILE,
            ffi::JINT_COMPRESS_PROFILE_VALUE::JCP_FASTEST as c_int,
        );
        ffi::jpeg_set_defaults(&mut cinfo);
        ffi::jpeg_set_quality(&mut cinfo, quality, 1);
        cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
        ffi::jpeg_start_compress(&mut cinfo, 1);
        let stride = width * channels;
        while (cinfo.next_scanline as usize) < height {
            let row = pixels[cinfo.next_scanline as usize * stride..].as_ptr();
            let rows = [row];
            ffi::jpeg_write_scanlines(&mut cinfo, rows.as_ptr(), 1);
        }
        ffi::jpeg_finish_compress(&mut cinfo);
        Ok(std::slice::from_raw_parts(out, out_len as usize).to_vec())
    });
    // SAFETY: destroy is valid in any state; the output buffer was malloc'd
    // by jpeg_mem_dest and is ours to free.
    unsafe {
        ffi::jpeg_destroy_compress(&mut cinfo);
        if !out.is_null() {
            libc::free(out.cast());
        }
    }
    drop(err);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: usize, _: usize) -> Result<(), String> {
        Ok(())
    }

    fn sample() -> Vec<u8> {
        let bgr: Vec<u8> = (0..48 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
        encode(&bgr, 48, 32, 3, 90).unwrap()
    }

    #[test]
    fn round_trip_and_channel_choices() {
        let jpg = sample();
        let color = decode(&jpg, Want::Native, ok).unwrap();
        assert_eq!((color.width, color.height, color.channels), (48, 32, 3));
        let gray = decode(&jpg, Want::Gray, ok).unwrap();
        assert_eq!((gray.channels, gray.pixels.len()), (1, 48 * 32));
        let gray_file = encode(&gray.pixels, 48, 32, 1, 90).unwrap();
        assert_eq!(decode(&gray_file, Want::Native, ok).unwrap().channels, 1);
        let bgr = decode(&gray_file, Want::Bgr, ok).unwrap();
        assert_eq!(bgr.channels, 3);
        assert!(bgr
            .pixels
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(color.exif.is_none());
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors_not_grey_images() {
        let jpg = sample();
        let e = decode(&jpg[..jpg.len() / 2], Want::Native, ok).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // Garbage in the entropy-coded data after the last header.
        let sos = jpg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let mut bad = jpg.clone();
        for b in &mut bad[sos + 20..sos + 60] {
            *b = 0xFF;
        }
        assert!(decode(&bad, Want::Native, ok).is_err());
        let e = decode(b"\xFF\xD8\xFF\xC0 nonsense", Want::Native, ok).unwrap_err();
        assert!(e.starts_with("JPEG: "), "{e}");
    }

    #[test]
    fn the_size_check_runs_before_decoding() {
        let e = decode(&sample(), Want::Native, |w, h| {
            Err(format!("{w}x{h} too big"))
        })
        .unwrap_err();
        assert_eq!(e, "48x32 too big");
    }

    #[test]
    fn a_tiny_file_claiming_a_huge_progressive_image_is_refused() {
        // Mark the frame progressive and claim 30000x30000: the coefficient
        // buffer would be 2.7 GB.
        let mut jpg = sample();
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 1] = 0xC2;
        jpg[sof + 5..sof + 7].copy_from_slice(&30000u16.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&30000u16.to_be_bytes());
        let e = decode(&jpg, Want::Native, ok).unwrap_err();
        assert!(e.contains("GiB of decoder memory"), "{e}");
    }

    #[test]
    fn exif_payload_is_found() {
        // An APP1 "Exif" segment inserted after SOI (big-endian TIFF header,
        // one IFD entry: orientation = 6).
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        tiff.extend([0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut app1 = vec![0xFF, 0xE1];
        let payload = [b"Exif\0\0".as_slice(), &tiff].concat();
        app1.extend(((payload.len() + 2) as u16).to_be_bytes());
        app1.extend(&payload);
        let jpg = sample();
        let with_exif = [&jpg[..2], &app1, &jpg[2..]].concat();
        let d = decode(&with_exif, Want::Native, ok).unwrap();
        assert_eq!(d.exif.as_deref(), Some(tiff.as_slice()));
    }

    #[test]
    fn encode_rejects_bad_shapes() {
        assert!(encode(&[0; 12], 2, 2, 2, 90).is_err());
        assert!(encode(&[0; 11], 2, 2, 3, 90).is_err());
        assert!(encode(&[], 0, 0, 3, 90).is_err());
    }
}
