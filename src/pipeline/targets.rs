//! Regression and multi-label targets as Caffe reads them beside images:
//! an LMDB of `float_data` Datums (`n x 1 x 1`, n values per image) with
//! one record per record of an image LMDB, under the same key. Caffe's Data
//! layers read an LMDB in key order, so a second Data layer over the targets
//! stays in step with the images' one, and an EuclideanLoss or
//! SigmoidCrossEntropyLoss layer takes its top as the targets.
//!
//! The targets come from a CSV: an image path (as the image list gave it to
//! `to-lmdb`, which keys each record `<index>_<path>`), then the numbers.
use super::lmdb_store::{LmdbReader, LmdbWriter};
use crate::caffe::proto::Datum;
use crate::error::{Error, Result};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;

/// What [`write_targets_lmdb`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct TargetsWritten {
    /// Records (one per image record).
    pub records: usize,
    /// Values per record.
    pub values: usize,
}

/// Reads the targets CSV: path → values (the same count on every row; a
/// first row whose numbers do not parse is a header). Every problem names
/// its line.
pub fn read_targets(csv_path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .map_err(|e| Error::invalid(csv_path.display(), e.to_string()))?;
    let mut targets: HashMap<String, (Vec<f32>, u64)> = HashMap::new();
    let mut width = None;
    for (i, row) in reader.records().enumerate() {
        let at = |line: u64| format!("{}:{line}", csv_path.display());
        let row = row.map_err(|e| Error::invalid(csv_path.display(), e.to_string()))?;
        let line = row.position().map_or(i as u64 + 1, |p| p.line());
        if row.iter().all(str::is_empty) {
            continue;
        }
        let parsed: std::result::Result<Vec<f32>, _> = row.iter().skip(1).map(str::parse).collect();
        let values = match parsed {
            Ok(v) if !v.is_empty() => v,
            Err(_) if i == 0 => continue, // the header
            Ok(_) => {
                return Err(Error::invalid(
                    at(line),
                    "needs a path and at least one number",
                ))
            }
            Err(_) => {
                return Err(Error::invalid(
                    at(line),
                    format!(
                        "a value of {:?} is not a number",
                        row.iter().skip(1).collect::<Vec<_>>()
                    ),
                ))
            }
        };
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(
                at(line),
                format!("value {v} is not finite (it would make the loss NaN)"),
            ));
        }
        match width {
            None => width = Some(values.len()),
            Some(w) if w != values.len() => {
                return Err(Error::invalid(
                    at(line),
                    format!("has {} values where the rows above have {w}", values.len()),
                ))
            }
            Some(_) => {}
        }
        let path = row[0].to_string();
        if let Some((_, first)) = targets.get(&path) {
            return Err(Error::invalid(
                at(line),
                format!("repeats the path '{path}' of line {first}"),
            ));
        }
        targets.insert(path, (values, line));
    }
    if targets.is_empty() {
        return Err(Error::invalid(csv_path.display(), "holds no targets"));
    }
    Ok(targets.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// The image path in a `to-lmdb` (or `convert_imageset`) key: what follows
/// the `<index>_` prefix.
fn key_path(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    let (index, path) = key.split_once('_')?;
    (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then_some(path)
}

/// Writes `out`: for each record of the image LMDB `images`, in key order,
/// the targets of its image from `csv` under the same key. Refuses an
/// existing `out` unless `force`, and leaves nothing behind on an error.
pub fn write_targets_lmdb(
    images: &Path,
    csv: &Path,
    out: &Path,
    force: bool,
) -> Result<TargetsWritten> {
    let targets = read_targets(csv)?;
    let reader = LmdbReader::open(images)?;
    let keys = reader.keys()?;
    if keys.is_empty() {
        return Err(Error::lmdb(images, "holds no records"));
    }
    let mut writer = LmdbWriter::create(out, force)?;
    let mut width = 0;
    for key in keys {
        let shown = String::from_utf8_lossy(&key).into_owned();
        let path = key_path(&key).ok_or_else(|| {
            Error::lmdb(
                images,
                format!("key '{shown}' is not <index>_<path>, as to-lmdb and convert_imageset write them"),
            )
        })?;
        let values = targets.get(path).ok_or_else(|| {
            Error::invalid(
                csv.display(),
                format!("has no targets for '{path}' (record '{shown}' of {}); its paths must be the image list's", images.display()),
            )
        })?;
        width = values.len();
        let datum = Datum {
            channels: Some(values.len() as i32),
            height: Some(1),
            width: Some(1),
            float_data: values.clone(),
            label: Some(0),
            ..Default::default()
        };
        writer.put(key, datum.encode_to_vec())?;
    }
    let records = writer.finish()?;
    Ok(TargetsWritten {
        records,
        values: width,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("t.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_rows_after_an_optional_header() {
        let t = tempfile::tempdir().unwrap();
        let m = read_targets(&csv(
            t.path(),
            "path,length,width\na/b.jpg,1.5,2\nc.png, -3 ,0.25\n",
        ))
        .unwrap();
        assert_eq!(m["a/b.jpg"], [1.5, 2.0]);
        assert_eq!(m["c.png"], [-3.0, 0.25]);
        let m = read_targets(&csv(t.path(), "x.jpg,1\n")).unwrap();
        assert_eq!(m["x.jpg"], [1.0]);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let t = tempfile::tempdir().unwrap();
        let err = |text: &str| read_targets(&csv(t.path(), text)).unwrap_err().to_string();
        assert!(err("a,1,2\nb,1\n").contains("t.csv:2: has 1 values where the rows above have 2"));
        assert!(err("a,1\nb,x\n").contains("t.csv:2: a value of"));
        assert!(err("a,1\nb,NaN\n").contains("t.csv:2: value NaN is not finite"));
        assert!(err("a,1\na,2\n").contains("t.csv:2: repeats the path 'a' of line 1"));
        assert!(err("path,value\n").contains("holds no targets"));
        assert!(err("a,1\nb\n").contains("t.csv:2: needs a path and at least one number"));
    }

    #[test]
    fn keys_carry_the_list_path() {
        assert_eq!(key_path(b"00000012_cats/a_b.jpg"), Some("cats/a_b.jpg"));
        assert_eq!(key_path(b"cats/a.jpg"), None);
        assert_eq!(key_path(b"_a.jpg"), None);
    }
}
