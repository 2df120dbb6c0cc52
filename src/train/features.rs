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
//!
//! Images come from the net's TEST data layer ([`extract`]), or from image
//! files prepared as `classify` prepares them ([`extract_images`]).
use super::classify::{self, ClassifyOptions};
use super::compute::Compute;
use super::evaluate::{images_per_pass, trained_nets, use_source};
use super::layers::{to_vec, BuildContext};
use super::net::Net;
use crate::caffe::model::read_net_prototxt;
use crate::caffe::proto::{Datum, NetParameter, Phase};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{give_default_permissions, write_atomic};
use crate::pipeline::lmdb_store::LmdbWriter;
use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to save and where.
#[derive(Clone, Copy)]
pub struct SaveOptions<'a> {
    /// The blobs to save (their values after the whole forward pass, so an
    /// in-place ReLU's output, as Caffe's tool reads them).
    pub blobs: &'a [String],
    /// The folder for the outputs.
    pub out: &'a Path,
    /// Also write each blob as a Caffe LMDB of float Datums.
    pub lmdb: bool,
    /// Replace existing LMDBs.
    pub force: bool,
}

/// A pass over a net's TEST data.
pub struct FeatureOptions<'a> {
    /// Net prototxt; its TEST phase runs.
    pub model: &'a Path,
    /// Trained weights, loaded by layer name in turn.
    pub weights: &'a [&'a Path],
    /// Where the net's relative data paths resolve.
    pub base_dir: &'a Path,
    /// Device and arithmetic.
    pub compute: &'a Compute,
    /// Another list or LMDB than the TEST data layer's (see `evaluate`).
    pub source: Option<&'a Path>,
    /// Batches to run, every row of each kept (Caffe's `num_mini_batches`);
    /// `None`: each image of the data source once.
    pub iterations: Option<usize>,
    /// Key each LMDB record by its place in a permutation of the rows drawn
    /// from this seed instead of by its row, so a Data layer (which reads in
    /// key order) sees the images shuffled; `None`: Caffe's keys, the rows.
    pub shuffle_keys: Option<u64>,
    /// Stops the pass (writing nothing) when set, as Ctrl-C does.
    pub stop: Option<Arc<AtomicBool>>,
    /// What to save.
    pub save: SaveOptions<'a>,
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

/// What a pass wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Rows (images) per blob.
    pub rows: u64,
    /// The blobs, in the order asked for.
    pub blobs: Vec<SavedBlob>,
    /// `images.csv`: row, image (list path, LMDB key or file) and label.
    pub index: PathBuf,
    /// Image files that could not be read (image mode), with the reason.
    pub failed: Vec<(PathBuf, String)>,
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
        s += &format!("rows: {}\n", self.index.display());
        for (p, e) in &self.failed {
            s += &format!("skipped {}: {e}\n", p.display());
        }
        s
    }
}

/// Runs the TEST net of `o.model` over its data and saves `o.save.blobs`.
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
    let ctx = BuildContext::new(o.base_dir, 0, Phase::Test, o.compute);
    let mut net = trained_nets(def, &ctx, o.weights, false)?
        .pop()
        .expect("trained_nets makes one net without an ensemble");
    let mut saver = Saver::new(&o.save, &net, o.model)?;
    let label_layer = net
        .layer_params()
        .find(|l| matches!(l.r#type(), "Data" | "ImageData") && l.top.len() > 1)
        .map(|l| l.name().to_string());
    let images = images_per_pass(&net, o.iterations, o.model)?;
    let max_batches = o.iterations.unwrap_or(usize::MAX).max(1);
    let bar = crate::progress::bar(images.unwrap_or(0), "features");
    let (mut seen, mut batches) = (0u64, 0usize);
    while batches < max_batches && images.is_none_or(|total| seen < total) {
        stop_requested(&o.stop)?;
        net.forward()?;
        batches += 1;
        let n = saver.batch_rows(&net)?;
        if batches == 1 {
            let total = images.unwrap_or_else(|| (max_batches as u64).saturating_mul(n as u64));
            bar.set_length(total);
            if let Some(seed) = o.shuffle_keys {
                saver.keys = shuffled(total, seed)?;
            }
        }
        let take = images.map_or(n, |t| ((t - seen) as usize).min(n));
        let names = net.data_batch_sources().filter(|s| s.len() == n);
        let labels = match &label_layer {
            Some(l) => net.layer_top(l, 1).map(to_vec).transpose()?,
            None => None,
        };
        saver.add(&net, take, names.as_deref(), labels.as_deref())?;
        seen += take as u64;
        bar.inc(take as u64);
    }
    bar.finish_and_clear();
    saver.finish(Vec::new())
}

/// Saves `save.blobs` for image files, each prepared as `classify` prepares
/// it (the trained net's TEST transform, or a deploy net's input with its
/// mean): features of new, unlabelled images. Only the plain centre view of
/// one model counts (`input`'s views, crops and ensembles do not apply).
/// Unreadable images are skipped and listed in the result; with `strict`
/// one of them is an error and nothing is written.
pub fn extract_images(
    input: &ClassifyOptions,
    save: &SaveOptions,
    strict: bool,
    stop: Option<Arc<AtomicBool>>,
) -> Result<Features> {
    let (def, spec) = classify::input_net(input)?;
    let ctx = BuildContext::new(input.base_dir, 0, Phase::Test, input.compute);
    let mut net = trained_nets(&def, &ctx, input.weights, false)?
        .pop()
        .expect("trained_nets makes one net without an ensemble");
    let mut saver = Saver::new(save, &net, input.model)?;
    if input.oversample {
        return Err(Error::model(
            input.model.display(),
            "features are saved for the centre view of each image; ten crops do not apply",
        ));
    }
    let failed = classify::batches(input, &spec, "features", |batch, _| {
        stop_requested(&stop)?;
        classify::forward_view(&mut net, &spec, &batch, 0, input)?;
        let names: Vec<String> = batch.iter().map(|(p, _)| p.display().to_string()).collect();
        saver.add(&net, batch.len(), Some(&names), None)
    })?;
    if let (true, Some((p, why))) = (strict, failed.first()) {
        return Err(Error::invalid(
            p.display(),
            format!(
                "{why} ({} of {} images unreadable; nothing was written)",
                failed.len(),
                input.images.len()
            ),
        ));
    }
    if saver.rows == 0 {
        return Err(Error::model(
            input.model.display(),
            format!("none of the {} images could be read", input.images.len()),
        ));
    }
    saver.finish(failed)
}

/// `Err(Interrupted)` once `stop` is set.
fn stop_requested(stop: &Option<Arc<AtomicBool>>) -> Result<()> {
    match stop {
        Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// A blob's shape and values after a forward pass.
type BlobValues = (Vec<usize>, Vec<f32>);

/// Writes the rows of a pass: a [`Sink`] per blob, opened at the first batch
/// (when the blobs' shapes are known), and the rows' index.
struct Saver<'a> {
    save: SaveOptions<'a>,
    files: Vec<String>,
    sinks: Vec<Sink>,
    /// Row r's LMDB key: `keys[r]` when shuffled, else r.
    keys: Vec<u64>,
    index: String,
    rows: u64,
}

impl<'a> Saver<'a> {
    /// Checks the request against `net` (of `model`) and the outputs on disk.
    fn new(save: &SaveOptions<'a>, net: &Net, model: &Path) -> Result<Self> {
        if save.blobs.is_empty() {
            return Err(Error::model(
                model.display(),
                "name at least one blob to save",
            ));
        }
        let files = file_names(save.blobs)?;
        for b in save.blobs {
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
                        model.display(),
                        tops.join(", ")
                    ),
                ));
            }
        }
        if save.lmdb && !save.force {
            if let Some(p) = files
                .iter()
                .map(|f| save.out.join(format!("{f}_lmdb")))
                .find(|p| p.exists())
            {
                return Err(Error::lmdb(
                    p,
                    "already exists; remove it or pass --force to replace it",
                ));
            }
        }
        std::fs::create_dir_all(save.out).at(save.out)?;
        Ok(Saver {
            save: *save,
            files,
            sinks: Vec::new(),
            keys: Vec::new(),
            index: String::from("row,image,label\n"),
            rows: 0,
        })
    }

    /// The blobs' values after the last forward pass, checked to hold one
    /// row per image alike; returns the rows.
    fn values(&self, net: &Net) -> Result<(usize, Vec<BlobValues>)> {
        let values: Vec<BlobValues> = self
            .save
            .blobs
            .iter()
            .map(|b| {
                let t = net
                    .blob(b)
                    .ok_or_else(|| Error::model(format!("blob '{b}'"), "not computed"))?;
                Ok((t.dims().to_vec(), to_vec(t)?))
            })
            .collect::<Result<_>>()?;
        Ok((rows_per_batch(self.save.blobs, &values)?, values))
    }

    /// The rows of the last forward pass (checked as [`Saver::add`] checks them).
    fn batch_rows(&self, net: &Net) -> Result<usize> {
        let b = &self.save.blobs[0];
        let n = net
            .blob(b)
            .and_then(|t| t.dims().first().copied())
            .unwrap_or(0);
        if n == 0 {
            return Err(Error::model(format!("blob '{b}'"), "holds no rows"));
        }
        Ok(n)
    }

    /// Appends the first `take` rows of the last forward pass, with their
    /// images' names and labels when known.
    fn add(
        &mut self,
        net: &Net,
        take: usize,
        names: Option<&[String]>,
        labels: Option<&[f32]>,
    ) -> Result<()> {
        let (n, values) = self.values(net)?;
        if self.sinks.is_empty() {
            for ((b, file), (dims, _)) in self.save.blobs.iter().zip(&self.files).zip(&values) {
                let lmdb = self
                    .save
                    .lmdb
                    .then(|| self.save.out.join(format!("{file}_lmdb")));
                self.sinks.push(Sink::open(
                    b,
                    &dims[1..],
                    self.save.out,
                    file,
                    lmdb,
                    self.save.force,
                )?);
            }
        }
        for i in 0..take.min(n) {
            let row = self.rows;
            let label = labels.and_then(|l| l.get(i)).map(|&v| v as i32);
            let key = self.keys.get(row as usize).copied().unwrap_or(row);
            for (sink, (_, v)) in self.sinks.iter_mut().zip(&values) {
                let per = v.len() / n;
                sink.push(key, &v[i * per..(i + 1) * per], label)?;
            }
            let name = names.and_then(|s| s.get(i)).map_or("", String::as_str);
            self.index += &format!(
                "{row},{},{}\n",
                csv_field(name),
                label.map_or(String::new(), |l| l.to_string())
            );
            self.rows += 1;
        }
        Ok(())
    }

    /// Every row is in: only now do the files get their names.
    fn finish(self, failed: Vec<(PathBuf, String)>) -> Result<Features> {
        let blobs = self
            .sinks
            .into_iter()
            .map(Sink::finish)
            .collect::<Result<Vec<_>>>()?;
        let index = self.save.out.join("images.csv");
        write_atomic(&index, self.index.as_bytes())?;
        Ok(Features {
            rows: self.rows,
            blobs,
            index,
            failed,
        })
    }
}

/// Where one blob's rows go while the pass runs.
struct Sink {
    name: String,
    shape: Vec<usize>,
    /// Caffe's legacy (channels, height, width) of one image's values.
    legacy: (i32, i32, i32),
    npy: NpyRows,
    npy_path: PathBuf,
    lmdb: Option<(LmdbWriter, PathBuf)>,
}

impl Sink {
    fn open(
        name: &str,
        shape: &[usize],
        dir: &Path,
        file: &str,
        lmdb: Option<PathBuf>,
        force: bool,
    ) -> Result<Sink> {
        let legacy = legacy_shape(name, shape, lmdb.is_some())?;
        let npy_path = dir.join(format!("{file}.npy"));
        let npy = NpyRows::create(dir, shape)?;
        let lmdb = match lmdb {
            Some(p) => Some((LmdbWriter::create(&p, force)?, p)),
            None => None,
        };
        Ok(Sink {
            name: name.to_string(),
            shape: shape.to_vec(),
            legacy,
            npy,
            npy_path,
            lmdb,
        })
    }

    /// Appends one image's values; `key` numbers its LMDB record.
    fn push(&mut self, key: u64, values: &[f32], label: Option<i32>) -> Result<()> {
        self.npy.push(values).at(&self.npy_path)?;
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
        self.npy.finish(&self.npy_path)?;
        let lmdb = match self.lmdb {
            Some((w, p)) => {
                w.finish()?;
                Some(p)
            }
            None => None,
        };
        Ok(SavedBlob {
            name: self.name,
            shape: self.shape,
            npy: self.npy_path,
            lmdb,
        })
    }
}

/// A float32 `.npy` (format 1.0, C order) written row by row into a
/// temporary file, before the number of rows is known: its header is
/// reserved at a fixed length and rewritten, padded to that length, when
/// the file is finished and renamed into place.
struct NpyRows {
    file: BufWriter<File>,
    tmp: tempfile::TempPath,
    shape: Vec<usize>,
    rows: u64,
}

impl NpyRows {
    /// Header bytes (magic to newline): room for any row count, a multiple
    /// of 64 so the data starts aligned, as NumPy writes it.
    fn header_len(shape: &[usize]) -> usize {
        let longest = Self::dict(u64::MAX, shape).len() + 1;
        (10 + longest).div_ceil(64) * 64
    }

    fn dict(rows: u64, shape: &[usize]) -> String {
        let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}")
    }

    fn header(rows: u64, shape: &[usize]) -> Vec<u8> {
        let len = Self::header_len(shape);
        let mut dict = Self::dict(rows, shape);
        while dict.len() < len - 11 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut h = b"\x93NUMPY\x01\x00".to_vec();
        h.extend((dict.len() as u16).to_le_bytes());
        h.extend(dict.into_bytes());
        h
    }

    fn create(dir: &Path, shape: &[usize]) -> Result<NpyRows> {
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .at(dir)?;
        give_default_permissions(tmp.path(), false)?;
        let (handle, tmp) = tmp.into_parts();
        let mut file = BufWriter::with_capacity(1 << 20, handle);
        file.write_all(&Self::header(0, shape)).at(&tmp)?;
        Ok(NpyRows {
            file,
            tmp,
            shape: shape.to_vec(),
            rows: 0,
        })
    }

    fn push(&mut self, values: &[f32]) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all(&bytes)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the row count into the header, syncs and renames to `path`.
    fn finish(self, path: &Path) -> Result<()> {
        let mut file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).at(path)?;
        file.write_all(&Self::header(self.rows, &self.shape))
            .at(path)?;
        file.sync_all().at(path)?;
        self.tmp
            .persist(path)
            .map_err(|e| Error::io(path, e.error))?;
        Ok(())
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
fn rows_per_batch(blobs: &[String], values: &[BlobValues]) -> Result<usize> {
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

    /// The header is rewritten in place with the final row count; NumPy's
    /// format (read back here by npyz) sees the rows written, and the data
    /// starts 64-byte aligned.
    #[test]
    fn npy_rows_are_counted_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        for (rows, shape) in [(0u64, vec![3usize]), (5, vec![2, 2]), (1, vec![])] {
            let mut w = NpyRows::create(dir.path(), &shape).unwrap();
            let per: usize = shape.iter().product();
            for r in 0..rows {
                let row: Vec<f32> = (0..per).map(|i| (r as usize * per + i) as f32).collect();
                w.push(&row).unwrap();
            }
            let path = dir.path().join(format!("{rows}.npy"));
            w.finish(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(NpyRows::header_len(&shape) % 64, 0);
            let f = npyz::NpyFile::new(bytes.as_slice()).unwrap();
            let want: Vec<u64> = std::iter::once(rows)
                .chain(shape.iter().map(|&d| d as u64))
                .collect();
            assert_eq!(f.shape(), want);
            let values = f.into_vec::<f32>().unwrap();
            assert_eq!(
                values,
                (0..rows as usize * per)
                    .map(|v| v as f32)
                    .collect::<Vec<_>>()
            );
        }
        // Only the finished files remain: no temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
    }
}
