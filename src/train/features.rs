//! `features`: the values of chosen blobs (say fc7) for every image of a
//! net's TEST data, what Caffe's `extract_features` tool gives, for other
//! learners (a linear classifier, a random forest with hand-made features,
//! t-SNE maps, near-duplicate search).
//!
//! Each blob goes to `<blob>.npy` (float32, one row per image, the blob's
//! per-image shape after it) and, with `lmdb`, to `<blob>_lmdb` in
//! `extract_features`' layout: keys `%010d` from 0, one Datum per image with
//! the blob's legacy channels/height/width and its values as unpacked
//! `float_data`, plus (beyond Caffe, which leaves it unset) the image's
//! label, so a Data layer can train on the features straight away.
//! `images.csv` says which image each row is. Every file is written under a
//! temporary name and renamed only when the pass completes.
use super::compute::Compute;
use super::evaluate::{images_per_pass, trained_nets, use_source};
use super::layers::{to_vec, BuildContext};
use crate::caffe::model::read_net_prototxt;
use crate::caffe::proto::{Datum, NetParameter, Phase};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{give_default_permissions, write_atomic};
use crate::pipeline::lmdb_store::LmdbWriter;
use npyz::WriterBuilder;
use prost::Message;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to extract and where.
pub struct FeatureOptions<'a> {
    /// Net prototxt; its TEST phase runs.
    pub model: &'a Path,
    /// Trained weights, loaded by layer name in turn.
    pub weights: &'a [&'a Path],
    /// Where the net's relative data paths resolve.
    pub base_dir: &'a Path,
    /// Device and arithmetic.
    pub compute: &'a Compute,
    /// The blobs to save (their values after the whole forward pass, so an
    /// in-place ReLU's output, as Caffe's tool reads them).
    pub blobs: &'a [String],
    /// The folder for the outputs.
    pub out: &'a Path,
    /// Another list or LMDB than the TEST data layer's (see `evaluate`).
    pub source: Option<&'a Path>,
    /// Batches to run, every row of each kept (Caffe's `num_mini_batches`);
    /// `None`: each image of the data source once.
    pub iterations: Option<usize>,
    /// Also write each blob as a Caffe LMDB of float Datums.
    pub lmdb: bool,
    /// Replace existing LMDBs.
    pub force: bool,
    /// Key each LMDB record by its place in a permutation of the rows drawn
    /// from this seed instead of by its row, so a Data layer (which reads in
    /// key order) sees the images shuffled; `None`: Caffe's keys, the rows.
    pub shuffle_keys: Option<u64>,
    /// Stops the pass (writing nothing) when set, as Ctrl-C does.
    pub stop: Option<Arc<AtomicBool>>,
}

/// One saved blob.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedBlob {
    /// The blob's name in the net.
    pub name: String,
    /// Its shape per image (e.g. `[4096]` for fc7, `[256, 6, 6]` for pool5).
    pub shape: Vec<usize>,
    /// The `.npy` file.
    pub npy: PathBuf,
    /// The LMDB, when asked for.
    pub lmdb: Option<PathBuf>,
}

/// What [`extract`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Rows (images) per blob.
    pub rows: u64,
    /// The blobs, in the order asked for.
    pub blobs: Vec<SavedBlob>,
    /// `images.csv`: row, image (list path or LMDB key) and label.
    pub index: PathBuf,
}

impl Features {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!("{} images\n", self.rows);
        for b in &self.blobs {
            let shape: Vec<String> = b.shape.iter().map(|d| d.to_string()).collect();
            s += &format!(
                "{}: {} values per image ({}) -> {}",
                b.name,
                b.shape.iter().product::<usize>(),
                shape.join("x"),
                b.npy.display()
            );
            if let Some(l) = &b.lmdb {
                s += &format!(", {}", l.display());
            }
            s += "\n";
        }
        s + &format!("rows: {}\n", self.index.display())
    }
}

/// Where one blob's rows go while the pass runs.
struct Sink {
    name: String,
    shape: Vec<usize>,
    /// Caffe's legacy (channels, height, width) of one image's values.
    legacy: (i32, i32, i32),
    npy: npyz::NpyWriter<f32, BufWriter<File>>,
    tmp: tempfile::TempPath,
    npy_path: PathBuf,
    lmdb: Option<(LmdbWriter, PathBuf)>,
}

/// Runs the TEST net of `o.model` over its data and saves `o.blobs`.
pub fn extract(o: &FeatureOptions) -> Result<Features> {
    let mut def = read_net_prototxt(o.model)?;
    if let Some(source) = o.source {
        use_source(&mut def, source, o.model)?;
    }
    extract_from(&def, o)
}

/// [`extract`] with the net's definition given (`o.model` and `o.source`
/// only name it in messages).
pub(crate) fn extract_from(def: &NetParameter, o: &FeatureOptions) -> Result<Features> {
    if o.blobs.is_empty() {
        return Err(Error::model(
            o.model.display(),
            "name at least one blob to save",
        ));
    }
    let files = file_names(o.blobs)?;
    let ctx = BuildContext::new(o.base_dir, 0, Phase::Test, o.compute);
    let mut net = trained_nets(def, &ctx, o.weights, false)?
        .pop()
        .expect("trained_nets makes one net without an ensemble");
    for b in o.blobs {
        if !net.layer_params().any(|l| l.top.iter().any(|t| t == b)) {
            let mut tops: Vec<&str> = Vec::new();
            for t in net.layer_params().flat_map(|l| &l.top) {
                if !tops.contains(&t.as_str()) {
                    tops.push(t);
                }
            }
            return Err(Error::model(
                format!("blob '{b}'"),
                format!(
                    "the TEST net of {} has no such blob; it has {}",
                    o.model.display(),
                    tops.join(", ")
                ),
            ));
        }
    }
    let lmdb_paths: Vec<PathBuf> = files
        .iter()
        .map(|f| o.out.join(format!("{f}_lmdb")))
        .collect();
    if o.lmdb && !o.force {
        if let Some(p) = lmdb_paths.iter().find(|p| p.exists()) {
            return Err(Error::lmdb(
                p,
                "already exists; remove it or pass --force to replace it",
            ));
        }
    }
    std::fs::create_dir_all(o.out).at(o.out)?;
    let label_layer = net
        .layer_params()
        .find(|l| matches!(l.r#type(), "Data" | "ImageData") && l.top.len() > 1)
        .map(|l| l.name().to_string());
    let images = images_per_pass(&net, o.iterations, o.model)?;
    let max_batches = o.iterations.unwrap_or(usize::MAX).max(1);
    let bar = crate::progress::bar(images.unwrap_or(0), "features");
    let mut sinks: Vec<Sink> = Vec::new();
    // Row r's LMDB key: r, or its place in the shuffled order.
    let mut keys: Vec<u64> = Vec::new();
    let mut index = String::from("row,image,label\n");
    let (mut seen, mut batches) = (0u64, 0usize);
    while batches < max_batches && images.is_none_or(|total| seen < total) {
        if o.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        net.forward()?;
        batches += 1;
        let values: Vec<(Vec<usize>, Vec<f32>)> = o
            .blobs
            .iter()
            .map(|b| {
                let t = net
                    .blob(b)
                    .ok_or_else(|| Error::model(format!("blob '{b}'"), "not computed"))?;
                Ok((t.dims().to_vec(), to_vec(t)?))
            })
            .collect::<Result<_>>()?;
        let n = rows_per_batch(o.blobs, &values)?;
        let total = images.unwrap_or_else(|| (max_batches as u64).saturating_mul(n as u64));
        if sinks.is_empty() {
            bar.set_length(total);
            if let Some(seed) = o.shuffle_keys {
                keys = shuffled(total, seed)?;
            }
            for ((b, file), (dims, _)) in o.blobs.iter().zip(&files).zip(&values) {
                let lmdb = o.lmdb.then(|| o.out.join(format!("{file}_lmdb")));
                sinks.push(Sink::open(
                    b,
                    &dims[1..],
                    total,
                    o.out,
                    file,
                    lmdb,
                    o.force,
                )?);
            }
        }
        let take = images.map_or(n, |t| ((t - seen) as usize).min(n));
        let names = net.data_batch_sources().filter(|s| s.len() == n);
        let labels = match &label_layer {
            Some(l) => net.layer_top(l, 1).map(to_vec).transpose()?,
            None => None,
        };
        for i in 0..take {
            let row = seen + i as u64;
            let label = labels.as_ref().and_then(|l| l.get(i)).map(|&v| v as i32);
            let key = keys.get(row as usize).copied().unwrap_or(row);
            for (sink, (_, v)) in sinks.iter_mut().zip(&values) {
                let per = v.len() / n;
                sink.push(key, &v[i * per..(i + 1) * per], label)?;
            }
            let name = names.as_ref().map_or("", |s| s[i].as_str());
            index += &format!(
                "{row},{},{}\n",
                csv_field(name),
                label.map_or(String::new(), |l| l.to_string())
            );
        }
        seen += take as u64;
        bar.inc(take as u64);
    }
    bar.finish_and_clear();
    // Every row is in: only now do the files get their names.
    let blobs = sinks
        .into_iter()
        .map(Sink::finish)
        .collect::<Result<Vec<_>>>()?;
    let index_path = o.out.join("images.csv");
    write_atomic(&index_path, index.as_bytes())?;
    Ok(Features {
        rows: seen,
        blobs,
        index: index_path,
    })
}

impl Sink {
    fn open(
        name: &str,
        shape: &[usize],
        rows: u64,
        dir: &Path,
        file: &str,
        lmdb: Option<PathBuf>,
        force: bool,
    ) -> Result<Sink> {
        let legacy = legacy_shape(name, shape, lmdb.is_some())?;
        let npy_path = dir.join(format!("{file}.npy"));
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .at(dir)?;
        give_default_permissions(tmp.path(), false)?;
        let (handle, tmp) = tmp.into_parts();
        let full: Vec<u64> = std::iter::once(rows)
            .chain(shape.iter().map(|&d| d as u64))
            .collect();
        let npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&full)
            .writer(BufWriter::with_capacity(1 << 20, handle))
            .begin_nd()
            .at(&npy_path)?;
        let lmdb = match lmdb {
            Some(p) => Some((LmdbWriter::create(&p, force)?, p)),
            None => None,
        };
        Ok(Sink {
            name: name.to_string(),
            shape: shape.to_vec(),
            legacy,
            npy,
            tmp,
            npy_path,
            lmdb,
        })
    }

    /// Appends one image's values; `key` numbers its LMDB record.
    fn push(&mut self, key: u64, values: &[f32], label: Option<i32>) -> Result<()> {
        for v in values {
            self.npy.push(v).at(&self.npy_path)?;
        }
        if let Some((w, _)) = &mut self.lmdb {
            let (c, h, wd) = self.legacy;
            let datum = Datum {
                channels: Some(c),
                height: Some(h),
                width: Some(wd),
                float_data: values.to_vec(),
                label,
                ..Default::default()
            };
            w.put(format!("{key:010}").into_bytes(), datum.encode_to_vec())?;
        }
        Ok(())
    }

    fn finish(self) -> Result<SavedBlob> {
        let Sink {
            name,
            shape,
            npy,
            tmp,
            npy_path,
            lmdb,
            ..
        } = self;
        npy.finish().at(&npy_path)?;
        File::open(&tmp).and_then(|f| f.sync_all()).at(&npy_path)?;
        tmp.persist(&npy_path)
            .map_err(|e| Error::io(&npy_path, e.error))?;
        let lmdb = match lmdb {
            Some((w, p)) => {
                w.finish()?;
                Some(p)
            }
            None => None,
        };
        Ok(SavedBlob {
            name,
            shape,
            npy: npy_path,
            lmdb,
        })
    }
}

/// Each row's place in a seeded shuffle of `rows` rows.
fn shuffled(rows: u64, seed: u64) -> Result<Vec<u64>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let n = usize::try_from(rows)
        .map_err(|_| Error::model("features", format!("{rows} rows do not fit in memory")))?;
    let mut order: Vec<u64> = (0..rows).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut place = vec![0u64; n];
    for (at, &row) in order.iter().enumerate() {
        place[row as usize] = at as u64;
    }
    Ok(place)
}

/// The images in this batch: every blob's first axis, which must agree.
fn rows_per_batch(blobs: &[String], values: &[(Vec<usize>, Vec<f32>)]) -> Result<usize> {
    let n = values[0].0.first().copied().unwrap_or(0);
    for (b, (dims, _)) in blobs.iter().zip(values) {
        if dims.len() < 2 || dims[0] != n || n == 0 {
            return Err(Error::model(
                format!("blob '{b}'"),
                format!(
                    "has shape {dims:?}; features need one row per image (images first, as {} has {n})",
                    blobs[0]
                ),
            ));
        }
    }
    Ok(n)
}

/// Caffe's legacy channels/height/width of a blob whose per-image shape is
/// `shape` (missing axes count 1); a Datum holds at most three.
fn legacy_shape(name: &str, shape: &[usize], for_lmdb: bool) -> Result<(i32, i32, i32)> {
    if for_lmdb && shape.len() > 3 {
        return Err(Error::model(
            format!("blob '{name}'"),
            format!("has {} axes per image; a Datum holds at most 3 (channels, height, width), so only .npy can hold it", shape.len()),
        ));
    }
    let axis = |i: usize| shape.get(i).map_or(Ok(1), |&d| i32::try_from(d));
    match (axis(0), axis(1), axis(2)) {
        (Ok(c), Ok(h), Ok(w)) => Ok((c, h, w)),
        _ => Err(Error::model(
            format!("blob '{name}'"),
            format!("shape {shape:?} is too large for a Datum"),
        )),
    }
}

/// File names for the blobs (`/` and other characters a file name should not
/// hold become `_`, as in GoogLeNet's `pool5/7x7_s1`); two blobs may not share one.
fn file_names(blobs: &[String]) -> Result<Vec<String>> {
    let names: Vec<String> = blobs
        .iter()
        .map(|b| {
            b.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.starts_with('.') {
            return Err(Error::model(
                format!("blob '{}'", blobs[i]),
                "is not a name a file can take",
            ));
        }
        if let Some(j) = names[..i].iter().position(|m| m == n) {
            return Err(Error::model(
                format!("blobs '{}' and '{}'", blobs[j], blobs[i]),
                format!("would both be saved as {n}.npy; name each blob once"),
            ));
        }
    }
    Ok(names)
}

/// A CSV field, quoted when it must be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_distinct() {
        let b = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            file_names(&b(&["fc7", "pool5/7x7_s1"])).unwrap(),
            ["fc7", "pool5_7x7_s1"]
        );
        let e = file_names(&b(&["a/b", "a_b"])).unwrap_err().to_string();
        assert!(e.contains("a_b.npy"), "{e}");
        assert!(file_names(&b(&[".."])).is_err());
        assert!(file_names(&b(&["fc7", "fc7"])).is_err());
    }

    #[test]
    fn legacy_shapes_fill_missing_axes_with_one() {
        assert_eq!(legacy_shape("fc7", &[4096], true).unwrap(), (4096, 1, 1));
        assert_eq!(legacy_shape("p", &[256, 6, 6], true).unwrap(), (256, 6, 6));
        assert_eq!(legacy_shape("x", &[2, 3], false).unwrap(), (2, 3, 1));
        assert!(legacy_shape("x", &[1, 2, 3, 4], true).is_err());
        assert!(legacy_shape("x", &[1, 2, 3, 4], false).is_ok());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
    }
}
