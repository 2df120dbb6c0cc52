//! `to-lmdb`: an image list to an LMDB of Caffe `Datum`s, as
//! `convert_imageset` does, but decoding and resizing on every core.
//!
//! Keys are `%08d_<path as listed>` where the index is the position in the
//! (optionally shuffled) list and counts images that were skipped, so the
//! database is byte-compatible with Caffe's.
use super::decode::{decode, ColorMode};
use super::image_list::{read_list, ListEntry};
use super::lmdb_store::LmdbWriter;
use super::mat::Mat8;
use super::pad::{fit, Pad};
use crate::caffe::Datum;
use crate::error::{Error, IoContext, Result};
use prost::Message;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `to-lmdb` (convert_imageset's flags).
#[derive(Clone, Debug)]
pub struct ToLmdbOptions {
    /// Folder prepended to every listed path.
    pub root: PathBuf,
    /// The `path label` list.
    pub list: PathBuf,
    /// The LMDB folder to create.
    pub db: PathBuf,
    /// Resize to (height, width) when both are > 0.
    pub resize: Option<(usize, usize)>,
    /// Pad to a square first, keeping the aspect ratio (beyond Caffe).
    pub pad: Option<Pad>,
    /// One-channel datums (`--gray`).
    pub gray: bool,
    /// Shuffle the list first, seeded by `seed`.
    pub shuffle: bool,
    /// Seed for `shuffle`.
    pub seed: u64,
    /// Store encoded images instead of raw pixels.
    pub encoded: bool,
    /// Encoding for `encoded` ("jpg", "png", …); empty = from each file's extension.
    pub encode_type: String,
    /// Require every datum to have the same size as the first.
    pub check_size: bool,
    /// Make an unreadable image fatal instead of skipping it.
    pub strict: bool,
    /// Replace an existing database.
    pub force: bool,
}

/// One image that was skipped.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// Line in the list file.
    pub line: usize,
    /// The listed path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What `to_lmdb` did.
#[derive(Clone, Debug)]
pub struct ToLmdbSummary {
    /// Records written.
    pub written: usize,
    /// Images skipped with the reason.
    pub skipped: Vec<Skipped>,
    /// Wall time in seconds.
    pub seconds: f64,
}

const CHUNK: usize = 256;

/// Runs the conversion; see [`ToLmdbOptions`].
pub fn to_lmdb(opts: &ToLmdbOptions) -> Result<ToLmdbSummary> {
    let start = Instant::now();
    let mut entries = read_list(&opts.list)?;
    // An empty database would only fail later, in a Data layer's set-up.
    if entries.is_empty() {
        return Err(Error::invalid(
            opts.list.display(),
            "lists no images: there is nothing to write",
        ));
    }
    if opts.shuffle {
        entries.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed));
    }
    let encode_type = normalise_ext(&opts.encode_type);
    if opts.encoded
        && !encode_type.is_empty()
        && !matches!(encode_type.as_str(), "jpg" | "png" | "bmp")
    {
        return Err(Error::invalid(
            "--encode-type",
            format!(
                "{:?} is not supported (use jpg, png or bmp)",
                opts.encode_type
            ),
        ));
    }
    let mut writer = LmdbWriter::create(&opts.db, opts.force)?;
    let pb = crate::progress::bar(entries.len() as u64, "to-lmdb");
    let mut skipped = Vec::new();
    let mut expected_size: Option<usize> = None;
    let indexed: Vec<(usize, &ListEntry)> = entries.iter().enumerate().collect();

    // Decode chunk N+1 on the rayon pool while this thread writes chunk N.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, &ListEntry, Result<Datum>)>>(2);
        let producer = scope.spawn(move || {
            for chunk in indexed.chunks(CHUNK) {
                let done: Vec<_> = chunk
                    .par_iter()
                    .map(|&(i, e)| (i, e, make_datum(opts, &encode_type, e)))
                    .collect();
                if tx.send(done).is_err() {
                    break; // the writer stopped on an error
                }
            }
        });
        for chunk in rx {
            for (index, entry, datum) in chunk {
                pb.inc(1);
                let datum = match datum {
                    Ok(d) => d,
                    Err(e) if !opts.strict => {
                        pb.suspend(|| {
                            crate::progress::say(format_args!(
                                "warning: skipping {}: {e}",
                                entry.path
                            ))
                        });
                        skipped.push(Skipped {
                            line: entry.line,
                            path: entry.path.clone(),
                            reason: e.to_string(),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if opts.check_size {
                    let size = datum.data().len();
                    match expected_size {
                        None => expected_size = Some(size),
                        Some(s) if s != size => {
                            return Err(Error::Line {
                                path: opts.list.clone(),
                                line: entry.line,
                                message: format!(
                                "{}: datum has {size} bytes but the first had {s} (--check-size)",
                                entry.path
                            ),
                            })
                        }
                        _ => {}
                    }
                }
                let key = format!("{index:08}_{}", entry.path);
                writer.put(key.into_bytes(), datum.encode_to_vec())?;
            }
        }
        producer.join().expect("decode thread does not panic");
        Ok(())
    })?;
    pb.finish_and_clear();
    if skipped.len() == entries.len() {
        // Dropped unfinished, the staging database leaves nothing behind.
        return Err(Error::invalid(
            opts.list.display(),
            format!(
                "none of its {} images could be read (the first, {}: {}); nothing was written",
                entries.len(),
                skipped[0].path,
                skipped[0].reason
            ),
        ));
    }
    let written = writer.finish()?;
    Ok(ToLmdbSummary {
        written,
        skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn normalise_ext(ext: &str) -> String {
    let e = ext.trim_start_matches('.').to_ascii_lowercase();
    if e == "jpeg" {
        "jpg".into()
    } else {
        e
    }
}

/// Reads one listed image and builds its datum (ReadImageToDatum).
fn make_datum(opts: &ToLmdbOptions, encode_type: &str, entry: &ListEntry) -> Result<Datum> {
    let path = opts.root.join(&entry.path);
    let bytes = std::fs::read(&path).at(&path)?;
    let mode = if opts.gray {
        ColorMode::Gray
    } else {
        ColorMode::Color
    };
    let mat = decode(&bytes, mode).map_err(|m| Error::image(&path, m))?;
    let mat = fit(mat, opts.pad, opts.resize);
    if !opts.encoded {
        return Ok(Datum::raw(&mat, entry.label));
    }
    let file_ext = normalise_ext(
        Path::new(&entry.path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or(""),
    );
    let target = if encode_type.is_empty() {
        file_ext.clone()
    } else {
        encode_type.to_string()
    };
    // Caffe keeps the original file bytes when there is no resize and the
    // extension matches (its channel test always holds after imread).
    if opts.resize.is_none() && opts.pad.is_none() && target == file_ext {
        return Ok(Datum::encoded_bytes(bytes, entry.label));
    }
    let encoded = encode(&mat, &target).map_err(|m| Error::image(&path, m))?;
    Ok(Datum::encoded_bytes(encoded, entry.label))
}

/// Encodes a BGR/gray image like `cv::imencode`: JPEG at OpenCV's default
/// quality 95 through libjpeg-turbo's own encoder (byte-identical to Caffe's
/// `--encoded` datums); PNG and BMP through the `image` crate (the same
/// pixels, not OpenCV's exact bytes).
pub fn encode(mat: &Mat8, ext: &str) -> std::result::Result<Vec<u8>, String> {
    use image::codecs::{bmp::BmpEncoder, png::PngEncoder};
    use image::{ExtendedColorType, ImageEncoder};
    if ext == "jpg" {
        return super::jpeg::encode(&mat.data, mat.width, mat.height, mat.channels, 95);
    }
    let (color, pixels): (ExtendedColorType, Vec<u8>) = match mat.channels {
        1 => (ExtendedColorType::L8, mat.data.clone()),
        3 => (
            ExtendedColorType::Rgb8,
            mat.data
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect(),
        ),
        n => return Err(format!("cannot encode a {n}-channel image")),
    };
    let (w, h) = (mat.width as u32, mat.height as u32);
    let mut out = Vec::new();
    let res = match ext {
        "png" => PngEncoder::new(&mut out).write_image(&pixels, w, h, color),
        "bmp" => BmpEncoder::new(&mut out).write_image(&pixels, w, h, color),
        other => return Err(format!("cannot encode as {other:?} (use jpg, png or bmp)")),
    };
    res.map_err(|e| e.to_string())?;
    Ok(out)
}
