//! `compute-mean`: the per-pixel mean of a dataset as Caffe's
//! `mean.binaryproto`, from an LMDB (raw or encoded datums, or float ones
//! such as `features --lmdb` writes, as Caffe's tool reads them too) or an
//! image list.
//!
//! Pixel sums are kept as exact integers (u64), so the mean is exact before
//! its single rounding to f32. Caffe sums in f32, which is also exact while
//! a pixel's sum stays below 2^24 (about 65,000 images); beyond that Caffe's
//! mean drifts and ours does not. The per-channel means we print are exact
//! averages; Caffe's printed line comes from an f32 running sum and can
//! differ in the 6th digit (128.429 vs 128.428 on the raw256 fixture).
//! Float records are summed in f64.
use super::decode::{read_image, ColorMode};
use super::image_list::read_list;
use super::lmdb_store::LmdbReader;
use super::pad::{fit, Pad};
use crate::caffe::datum::DatumRef;
use crate::caffe::mean_file::MeanImage;
use crate::caffe::Datum;
use crate::error::{Error, Result};
use crate::pipeline::mat::Pixels;
use prost::Message;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Where the images come from.
#[derive(Clone, Debug)]
pub enum MeanSource {
    /// A Caffe LMDB folder.
    Lmdb(PathBuf),
    /// An image list with its root folder, optional (height, width) resize and colour mode.
    List {
        /// The `path label` list.
        list: PathBuf,
        /// Folder prepended to listed paths.
        root: PathBuf,
        /// Resize to (height, width).
        resize: Option<(usize, usize)>,
        /// Pad to a square before resizing (as `to-lmdb --pad-square`).
        pad: Option<Pad>,
        /// One channel instead of BGR.
        gray: bool,
    },
}

/// One decoded record's CHW values.
enum Values {
    /// Pixels (images, raw or encoded datums).
    Bytes(Vec<u8>),
    /// A feature Datum's `float_data` (as `features --lmdb` writes).
    Floats(Vec<f32>),
}

/// A running sum of equally-shaped CHW images.
struct Accumulator {
    shape: (usize, usize, usize),
    sums: Vec<u64>,
    /// Sums of float records, when there are any (exact integer sums stay
    /// apart, so an LMDB of pixels averages exactly as before).
    float_sums: Option<Vec<f64>>,
    count: u64,
}

impl Accumulator {
    fn new(shape: (usize, usize, usize)) -> Self {
        Accumulator {
            shape,
            sums: vec![0; shape.0 * shape.1 * shape.2],
            float_sums: None,
            count: 0,
        }
    }

    fn add(&mut self, values: &Values) {
        match values {
            Values::Bytes(pixels) => {
                for (s, &p) in self.sums.iter_mut().zip(pixels) {
                    *s += p as u64;
                }
            }
            Values::Floats(v) => {
                let n = self.sums.len();
                let sums = self.float_sums.get_or_insert_with(|| vec![0.0; n]);
                for (s, &x) in sums.iter_mut().zip(v) {
                    *s += f64::from(x);
                }
            }
        }
        self.count += 1;
    }

    fn merge(mut self, other: Accumulator) -> Accumulator {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        match (&mut self.float_sums, other.float_sums) {
            (Some(a), Some(b)) => a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            (None, Some(b)) => self.float_sums = Some(b),
            _ => {}
        }
        self.count += other.count;
        self
    }

    fn mean(&self) -> MeanImage {
        let n = self.count as f64;
        MeanImage {
            channels: self.shape.0,
            height: self.shape.1,
            width: self.shape.2,
            // Rounded once to f32: the mean file stores floats, like Caffe's.
            values: match &self.float_sums {
                None => self
                    .sums
                    .iter()
                    .map(|&s| (s as f64 / n) as f32 as f64)
                    .collect(),
                Some(f) => self
                    .sums
                    .iter()
                    .zip(f)
                    .map(|(&s, &f)| ((s as f64 + f) / n) as f32 as f64)
                    .collect(),
            },
        }
    }
}

/// Records read per parallel batch: bounds memory whatever the dataset size.
const BATCH: usize = 512;

/// Computes the mean image; returns it with the number of images averaged.
pub fn compute_mean(source: &MeanSource) -> Result<(MeanImage, u64)> {
    let acc = match source {
        MeanSource::Lmdb(path) => mean_of_lmdb(path)?,
        MeanSource::List {
            list,
            root,
            resize,
            pad,
            gray,
        } => mean_of_list(list, root, *pad, *resize, *gray)?,
    };
    match acc {
        Some(acc) if acc.count > 0 => Ok((acc.mean(), acc.count)),
        _ => Err(Error::invalid(source_name(source), "no images to average")),
    }
}

fn source_name(source: &MeanSource) -> String {
    match source {
        MeanSource::Lmdb(p) => p.display().to_string(),
        MeanSource::List { list, .. } => list.display().to_string(),
    }
}

type Decoded = Result<((usize, usize, usize), Values)>;

/// Sums a batch in parallel, checking every item against `shape`. Each
/// item's label names it in size errors; its own errors name it already.
fn sum_batch(
    items: Vec<(String, Box<dyn FnOnce() -> Decoded + Send>)>,
    shape: &mut Option<(usize, usize, usize)>,
    total: &mut Option<Accumulator>,
) -> Result<()> {
    let mut decoded: Vec<(String, Decoded)> =
        items.into_par_iter().map(|(k, f)| (k, f())).collect();
    if let Some(i) = decoded.iter().position(|(_, d)| d.is_err()) {
        return decoded.swap_remove(i).1.map(|_| ());
    }
    let first_shape = match (&shape, decoded.first()) {
        (Some(s), _) => *s,
        (None, Some((_, Ok((s, _))))) => *s,
        (None, _) => return Ok(()),
    };
    *shape = Some(first_shape);
    for (key, d) in &decoded {
        match d {
            Ok((s, _)) if *s != first_shape => {
                return Err(Error::invalid(
                    key,
                    format!(
                        "image is {}x{}x{} but earlier ones are {}x{}x{}; all must have one size (resize them, e.g. to-lmdb --resize-height/--resize-width)",
                        s.0, s.1, s.2, first_shape.0, first_shape.1, first_shape.2
                    ),
                ))
            }
            _ => {}
        }
    }
    let part = decoded
        .par_iter()
        .fold(
            || Accumulator::new(first_shape),
            |mut acc, (_, d)| {
                acc.add(&d.as_ref().expect("checked above").1);
                acc
            },
        )
        .reduce(|| Accumulator::new(first_shape), Accumulator::merge);
    *total = Some(match total.take() {
        Some(t) => t.merge(part),
        None => part,
    });
    Ok(())
}

fn mean_of_lmdb(path: &Path) -> Result<Option<Accumulator>> {
    let reader = LmdbReader::open(path)?;
    let pb = crate::progress::bar(reader.len()? as u64, "mean");
    let mut shape = None;
    let mut total = None;
    let mut batch: Vec<(String, Box<dyn FnOnce() -> Decoded + Send>)> = Vec::with_capacity(BATCH);
    reader.for_each(|k, v| {
        let key = String::from_utf8_lossy(k).into_owned();
        let value = v.to_vec();
        let label = format!("{}: record {key}", path.display());
        let db = path.display().to_string();
        batch.push((
            label.clone(),
            Box::new(move || {
                // A feature record's floats, as Caffe's compute_image_mean sums them.
                if let Ok(r) = DatumRef::parse(&value) {
                    if r.data.is_empty() && !r.float_data.is_empty() {
                        let (c, h, w, v) = r
                            .values(&key)
                            .map_err(|e| Error::invalid(&db, e.to_string()))?;
                        let v = match v {
                            Pixels::F32(v) => Values::Floats(v.to_vec()),
                            Pixels::U8(b) => Values::Bytes(b.to_vec()),
                        };
                        return Ok(((c, h, w), v));
                    }
                }
                let datum = Datum::decode(value.as_slice())
                    .map_err(|e| Error::invalid(label, format!("not a Datum: {e}")))?;
                // into_pixels names the record; add the database.
                let (c, h, w, px) = datum
                    .into_pixels(&key)
                    .map_err(|e| Error::invalid(db, e.to_string()))?;
                Ok(((c, h, w), Values::Bytes(px)))
            }),
        ));
        if batch.len() == BATCH {
            pb.inc(BATCH as u64);
            sum_batch(std::mem::take(&mut batch), &mut shape, &mut total)?;
        }
        Ok(())
    })?;
    sum_batch(batch, &mut shape, &mut total)?;
    pb.finish_and_clear();
    Ok(total)
}

fn mean_of_list(
    list: &Path,
    root: &Path,
    pad: Option<Pad>,
    resize: Option<(usize, usize)>,
    gray: bool,
) -> Result<Option<Accumulator>> {
    let entries = read_list(list)?;
    let pb = crate::progress::bar(entries.len() as u64, "mean");
    let mode = if gray {
        ColorMode::Gray
    } else {
        ColorMode::Color
    };
    let mut shape = None;
    let mut total = None;
    for chunk in entries.chunks(BATCH) {
        let items = chunk
            .iter()
            .map(|e| {
                let path = root.join(&e.path);
                let label = format!("{}:{} ({})", list.display(), e.line, e.path);
                let context = label.clone();
                let f: Box<dyn FnOnce() -> Decoded + Send> = Box::new(move || {
                    let mat = read_image(&path, mode)
                        .map_err(|e| Error::invalid(context, e.to_string()))?;
                    let mat = fit(mat, pad, resize);
                    Ok((
                        (mat.channels, mat.height, mat.width),
                        Values::Bytes(mat.to_chw()),
                    ))
                });
                (label, f)
            })
            .collect();
        sum_batch(items, &mut shape, &mut total)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(total)
}
