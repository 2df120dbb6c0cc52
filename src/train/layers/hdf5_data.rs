//! HDF5Data: Caffe's generic data layer for values that are not images, or
//! that were prepared elsewhere (multi-label targets, regression targets,
//! features). `hdf5_data_param.source` is a text file listing HDF5 files
//! (whitespace-separated, relative to the working folder as in Caffe); each
//! top reads the dataset of its name, row after row: a file's datasets share
//! their first axis (the rows), the top is `batch_size` rows of the rest.
//! Values are taken as f32 whatever the stored type (as Caffe's
//! `H5LTread_dataset_float` converts), and are not transformed.
//!
//! The order is Caffe 1.0's: files in list order, each file's rows in
//! order, a file loaded when the last one runs out, and after the last
//! file the first again. With `shuffle`, Caffe reorders the files at the
//! start and after each pass over them, and a file's rows when it is
//! loaded and each time its rows run out, all with `std::random_shuffle`,
//! whose `rand()` Caffe never seeds: [`LibcRand`] reproduces it, so a
//! shuffled feed is Caffe's. Caffe's process has one `rand()` sequence,
//! and so do the nets of a solver here ([`BuildContext::libc_rand`]): a
//! test net that shuffles too moves the training net's order on, as in
//! Caffe.
//!
//! Each file is read whole when its turn comes, as in Caffe. The layer's
//! resumable state is the number of rows it has delivered: a resume
//! replays the order (no data is read for that) to the same place; a
//! shuffled layer also keeps its orders beside snapshots
//! ([`Layer::carried`]), since with other layers drawing from the same
//! sequence its draws cannot be replayed alone.
use super::{BackwardArgs, BuildContext, Grads, Layer};
use crate::caffe::libc_rand::{lock, SharedLibcRand};
use crate::caffe::proto::{LayerParameter, Phase};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::PathBuf;

/// Where the feed stands (Caffe's current_file_, current_row_ and the two
/// permutations), apart from the data itself.
#[derive(Clone, Debug)]
struct Cursor {
    file_order: Vec<usize>,
    /// Index into `file_order`.
    file: usize,
    row_order: Vec<usize>,
    /// Index into `row_order`.
    row: usize,
    /// Rows delivered so far.
    delivered: u64,
}

pub struct Hdf5Data {
    files: Vec<PathBuf>,
    /// Rows in each file.
    rows: Vec<usize>,
    /// The dataset each top reads, and its shape after the first axis.
    datasets: Vec<(String, Vec<usize>)>,
    batch: usize,
    shuffle: bool,
    /// The process's `rand()`, which the shuffles draw from.
    rand: SharedLibcRand,
    /// The cursor right after set-up (a resume replays from it).
    start: Cursor,
    cursor: Cursor,
    /// The file whose values are in memory: its index and each dataset's values.
    loaded: Option<(usize, Vec<Vec<f32>>)>,
    /// The (file, row) of each item of the last batch.
    last: Vec<(usize, usize)>,
    device: Device,
}

impl Hdf5Data {
    pub fn new(param: &LayerParameter, ctx: &BuildContext) -> Result<Hdf5Data> {
        let lctx = format!("layer '{}'", param.name());
        if param.transform_param.is_some() {
            return Err(Error::model(
                &lctx,
                "HDF5Data does not transform data (no transform_param: prepare the values in the files)",
            ));
        }
        let p = param
            .hdf5_data_param
            .clone()
            .ok_or_else(|| Error::model(&lctx, "needs hdf5_data_param"))?;
        if p.batch_size() == 0 {
            return Err(Error::model(&lctx, "needs hdf5_data_param.batch_size > 0"));
        }
        if param.top.is_empty() {
            return Err(Error::model(
                &lctx,
                "needs at least one top (a dataset name)",
            ));
        }
        let list = ctx.resolve(p.source());
        let text = std::fs::read_to_string(&list).map_err(|e| {
            Error::model(
                &lctx,
                format!("cannot read the HDF5 file list {}: {e}", list.display()),
            )
        })?;
        let files: Vec<PathBuf> = text.split_whitespace().map(|f| ctx.resolve(f)).collect();
        if files.is_empty() {
            return Err(Error::model(
                &lctx,
                format!("{} lists no HDF5 file", list.display()),
            ));
        }
        // Every file's shapes now, so a bad file is named before training.
        let mut rows = Vec::with_capacity(files.len());
        let mut datasets: Vec<(String, Vec<usize>)> = Vec::new();
        for f in &files {
            let shapes = dataset_shapes(f, &param.top)?;
            let n = shapes[0][0];
            for ((top, shape), first) in param.top.iter().zip(&shapes).zip(0..) {
                if shape[0] != n {
                    return Err(file_error(
                        f,
                        format!(
                            "dataset '{top}' has {} rows but '{}' has {n}",
                            shape[0], param.top[0]
                        ),
                    ));
                }
                match datasets.get(first) {
                    None => datasets.push((top.clone(), shape[1..].to_vec())),
                    Some((_, want)) if want.as_slice() != &shape[1..] => {
                        return Err(file_error(
                            f,
                            format!(
                                "dataset '{top}' has rows of shape {:?}, but {} has {want:?}",
                                &shape[1..],
                                files[0].display()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if n == 0 {
                return Err(file_error(f, "has no rows".to_string()));
            }
            rows.push(n);
        }
        let shuffle = p.shuffle();
        // Caffe's set-up draws: the file order, then the first file's rows.
        let mut file_order: Vec<usize> = (0..files.len()).collect();
        let mut row_order: Vec<usize> = Vec::new();
        {
            let mut rand = lock(&ctx.libc_rand);
            if shuffle {
                rand.shuffle(&mut file_order);
            }
            row_order.extend(0..rows[file_order[0]]);
            if shuffle {
                rand.shuffle(&mut row_order);
            }
        }
        let start = Cursor {
            file_order,
            file: 0,
            row_order,
            row: 0,
            delivered: 0,
        };
        Ok(Hdf5Data {
            files,
            rows,
            datasets,
            batch: p.batch_size() as usize,
            shuffle,
            rand: ctx.libc_rand.clone(),
            cursor: start.clone(),
            start,
            loaded: None,
            last: Vec::new(),
            device: ctx.device.clone(),
        })
    }

    /// Moves past one row (Caffe's HDF5DataLayer::Next).
    fn advance(&mut self) {
        let c = &mut self.cursor;
        c.delivered += 1;
        c.row += 1;
        if c.row < c.row_order.len() {
            return;
        }
        let mut rand = lock(&self.rand);
        if self.files.len() > 1 {
            c.file += 1;
            if c.file == self.files.len() {
                c.file = 0;
                if self.shuffle {
                    rand.shuffle(&mut c.file_order);
                }
            }
            // Loading a file starts its rows in order (shuffled if asked).
            c.row_order = (0..self.rows[c.file_order[c.file]]).collect();
            if self.shuffle {
                rand.shuffle(&mut c.row_order);
            }
        }
        c.row = 0;
        if self.shuffle {
            rand.shuffle(&mut c.row_order);
        }
    }

    /// The values of the file the cursor is in, read if another is loaded.
    fn values(&mut self) -> Result<&[Vec<f32>]> {
        let file = self.cursor.file_order[self.cursor.file];
        if self.loaded.as_ref().is_none_or(|(f, _)| *f != file) {
            let tops: Vec<String> = self.datasets.iter().map(|(t, _)| t.clone()).collect();
            let values = read_datasets(&self.files[file], &tops)?;
            for ((top, shape), v) in self.datasets.iter().zip(&values) {
                let want = self.rows[file] * shape.iter().product::<usize>();
                if v.len() != want {
                    return Err(file_error(
                        &self.files[file],
                        format!("dataset '{top}' has {} values, not {want}", v.len()),
                    ));
                }
            }
            self.loaded = Some((file, values));
        }
        Ok(&self.loaded.as_ref().expect("loaded").1)
    }
}

/// Indices as f32 pairs (high and low 16 bits), exact for any index below
/// 2^40, for [`Layer::carried`].
fn encode(indices: &[usize]) -> Vec<f32> {
    indices
        .iter()
        .flat_map(|&i| [(i >> 16) as f32, (i & 0xffff) as f32])
        .collect()
}

/// What [`encode`] made (a value that is not a whole number, or an odd
/// count, gives an index no file has, which the caller refuses).
fn decode(values: &[f32]) -> Vec<usize> {
    if values.len() % 2 != 0 {
        return vec![usize::MAX];
    }
    values
        .chunks(2)
        .map(|p| {
            let whole =
                |v: f32| (v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0).then_some(v as usize);
            match (whole(p[0]), whole(p[1])) {
                (Some(hi), Some(lo)) if lo < 1 << 16 => (hi << 16) | lo,
                _ => usize::MAX,
            }
        })
        .collect()
}

/// The shape of one row of dataset `top` in the first file the list
/// `list` names (resolved against `base`): what a deploy net's Input takes.
pub fn row_shape(list: &std::path::Path, base: &std::path::Path, top: &str) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(list).map_err(|e| {
        Error::model(
            format!("HDF5 file list {}", list.display()),
            format!("cannot read: {e}"),
        )
    })?;
    let first = text.split_whitespace().next().ok_or_else(|| {
        Error::model(
            format!("HDF5 file list {}", list.display()),
            "lists no file",
        )
    })?;
    let shapes = dataset_shapes(&base.join(first), &[top.to_string()])?;
    Ok(shapes[0][1..].to_vec())
}

fn file_error(file: &std::path::Path, what: String) -> Error {
    Error::model(format!("HDF5 file {}", file.display()), what)
}

/// Runs `read` on an HDF5 file's parser, turning a panic (a damaged file
/// the parser did not foresee) into an error naming the file.
fn guarded<T>(file: &std::path::Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        Err(file_error(
            file,
            "is damaged (its parser failed)".to_string(),
        ))
    })
}

/// The shapes of the datasets named `tops` in `file`, without their values.
/// A dataset too large for a Caffe blob (2^31 - 1 values) or, with the
/// others, for this machine's memory is refused here, before any is read:
/// a damaged shape must not become a huge allocation.
fn dataset_shapes(file: &std::path::Path, tops: &[String]) -> Result<Vec<Vec<usize>>> {
    let shapes = guarded(file, || read_shapes(file, tops))?;
    let mut bytes = 0u64;
    for (t, shape) in tops.iter().zip(&shapes) {
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let n = crate::caffe::hdf5_snapshot::checked_count(file, t, &dims)?;
        bytes = bytes.saturating_add(n as u64 * 4);
    }
    if let Some(limit) = crate::train::memory::machine_memory() {
        if bytes > limit {
            return Err(file_error(
                file,
                format!(
                    "needs {} to load (HDF5Data holds a whole file in memory) but this machine \
                     has {}; split it into smaller files",
                    crate::train::memory::gib(bytes),
                    crate::train::memory::gib(limit)
                ),
            ));
        }
    }
    Ok(shapes)
}

fn read_shapes(file: &std::path::Path, tops: &[String]) -> Result<Vec<Vec<usize>>> {
    let f = hdf5_pure::File::open_streaming(file)
        .map_err(|e| file_error(file, format!("cannot open: {e}")))?;
    tops.iter()
        .map(|t| {
            let ds = f
                .dataset(t)
                .map_err(|e| file_error(file, format!("no dataset '{t}' ({e})")))?;
            let shape = ds
                .shape()
                .map_err(|e| file_error(file, format!("dataset '{t}': {e}")))?;
            if shape.is_empty() {
                return Err(file_error(
                    file,
                    format!("dataset '{t}' is a scalar; it needs a first axis of rows"),
                ));
            }
            Ok(shape.iter().map(|&d| d as usize).collect())
        })
        .collect()
}

/// The values of the datasets named `tops` in `file`, as f32.
fn read_datasets(file: &std::path::Path, tops: &[String]) -> Result<Vec<Vec<f32>>> {
    // Checked again: the file may have changed since set-up.
    dataset_shapes(file, tops)?;
    guarded(file, || {
        let f = hdf5_pure::File::open(file)
            .map_err(|e| file_error(file, format!("cannot open: {e}")))?;
        tops.iter()
            .map(|t| {
                f.dataset(t)
                    .and_then(|ds| ds.read_f32())
                    .map_err(|e| file_error(file, format!("cannot read dataset '{t}': {e}")))
            })
            .collect()
    })
}

impl Layer for Hdf5Data {
    fn type_name(&self) -> &'static str {
        "HDF5Data"
    }
    fn is_data(&self) -> bool {
        true
    }
    // Net::new has already refused bottoms (a data layer takes none).
    fn setup(&mut self, _bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(self
            .datasets
            .iter()
            .map(|(_, shape)| {
                let mut s = vec![self.batch];
                s.extend(shape);
                s
            })
            .collect())
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let dims: Vec<usize> = self
            .datasets
            .iter()
            .map(|(_, s)| s.iter().product())
            .collect();
        let mut out: Vec<Vec<f32>> = dims
            .iter()
            .map(|d| Vec::with_capacity(self.batch * d))
            .collect();
        self.last.clear();
        for _ in 0..self.batch {
            let row = self.cursor.row_order[self.cursor.row];
            self.last
                .push((self.cursor.file_order[self.cursor.file], row));
            let values = self.values()?;
            for ((o, v), &d) in out.iter_mut().zip(values).zip(&dims) {
                o.extend_from_slice(&v[row * d..(row + 1) * d]);
            }
            self.advance();
        }
        out.into_iter()
            .zip(&self.datasets)
            .map(|(v, (_, shape))| {
                let mut s = vec![self.batch];
                s.extend(shape);
                Ok(Tensor::from_vec(v, s, &self.device)?)
            })
            .collect()
    }
    fn workspace_len(&self) -> (usize, usize) {
        // The largest file's values stay in memory.
        let per_row: usize = self
            .datasets
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let rows = self.rows.iter().copied().max().unwrap_or(0);
        (rows.saturating_mul(per_row), 0)
    }
    fn state(&self) -> Option<u64> {
        Some(self.cursor.delivered)
    }
    fn restore_state(&mut self, state: u64) {
        // Exact alone; with other layers shuffling too, the orders and the
        // shared sequence saved beside the snapshot then replace the result.
        self.last.clear();
        self.cursor = self.start.clone();
        for _ in 0..state {
            self.advance();
        }
    }
    fn carried(&self) -> Result<Vec<Vec<f32>>> {
        if !self.shuffle {
            return Ok(Vec::new());
        }
        let c = &self.cursor;
        Ok(vec![
            encode(&c.file_order),
            encode(&[c.file, c.row]),
            encode(&c.row_order),
        ])
    }
    fn restore_carried(&mut self, values: &[Vec<f32>]) -> Result<()> {
        let bad = || {
            Error::model(
                "an HDF5Data layer",
                "the shuffled orders saved beside the snapshot do not fit its files (were the files or the list changed?)",
            )
        };
        let [files, place, rows] = values else {
            return Err(bad());
        };
        let (file_order, place, row_order) = (decode(files), decode(place), decode(rows));
        let is_permutation = |v: &[usize], n: usize| {
            let mut seen = vec![false; n];
            v.len() == n
                && v.iter()
                    .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
        };
        let (&[file, row], true) = (
            place.as_slice(),
            is_permutation(&file_order, self.files.len()),
        ) else {
            return Err(bad());
        };
        let rows_in = |f: usize| self.rows[file_order[f]];
        if file >= file_order.len()
            || !is_permutation(&row_order, rows_in(file))
            || row >= row_order.len()
        {
            return Err(bad());
        }
        let delivered = self.cursor.delivered;
        self.cursor = Cursor {
            file_order,
            file,
            row_order,
            row,
            delivered,
        };
        Ok(())
    }
    fn source_len(&self) -> Option<usize> {
        Some(self.rows.iter().sum())
    }
    fn last_batch_sources(&self) -> Option<Vec<String>> {
        (!self.last.is_empty()).then(|| {
            self.last
                .iter()
                .map(|&(f, row)| format!("{}#{row}", self.files[f].display()))
                .collect()
        })
    }
    fn backward(&mut self, _a: &BackwardArgs) -> Result<Grads> {
        Ok((vec![], vec![]))
    }
}
