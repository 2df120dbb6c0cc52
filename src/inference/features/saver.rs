//! Writing a pass's rows: per blob a `.npy` and, when asked, an LMDB of
//! float Datums in `extract_features`' layout, and the rows' index.
use super::npy_rows::NpyRows;
use super::{Features, SaveOptions, SavedBlob};
use crate::caffe::proto::Datum;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::pipeline::lmdb_store::LmdbWriter;
use crate::train::layers::to_vec;
use crate::train::net::Net;
use prost::Message;
use std::path::{Path, PathBuf};

/// A blob's shape and values after a forward pass.
type BlobValues = (Vec<usize>, Vec<f32>);

/// Writes the rows of a pass: a [`Sink`] per blob, opened at the first batch
/// (when the blobs' shapes are known), and the rows' index.
pub(super) struct Saver<'a> {
    save: SaveOptions<'a>,
    files: Vec<String>,
    sinks: Vec<Sink>,
    /// Row r's LMDB key: `keys[r]` when shuffled, else r.
    pub(super) keys: Vec<u64>,
    index: String,
    /// Rows written so far.
    pub(super) rows: u64,
}

impl<'a> Saver<'a> {
    /// Checks the request against `net` (of `model`) and the outputs on disk.
    pub(super) fn new(save: &SaveOptions<'a>, net: &Net, model: &Path) -> Result<Self> {
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
        for b in save.blobs {
            net.check_per_item(b, "saving features per image")?;
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
    pub(super) fn batch_rows(&self, net: &Net) -> Result<usize> {
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
    pub(super) fn add(
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
    pub(super) fn finish(self, failed: Vec<(PathBuf, String)>) -> Result<Features> {
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

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
    }
}
