//! An evaluation's `probabilities.csv` joined with `samples.csv`: each
//! image's log-probabilities, label and raw features, with every mistake
//! named by file and line.
use super::model::log_probabilities;
use super::FuseOptions;
use crate::error::{Error, Result};
use crate::pipeline::measure;
use std::collections::HashMap;
use std::path::Path;

/// The evaluated images joined with their features.
pub(super) struct Data {
    pub(super) classes: usize,
    /// Per image: ln of its clipped, renormalized probabilities.
    pub(super) log_p: Vec<Vec<f64>>,
    /// Per image: raw (unstandardized) features.
    pub(super) x: Vec<Vec<f64>>,
    pub(super) labels: Vec<usize>,
    pub(super) images: Vec<String>,
    pub(super) feature_names: Vec<String>,
    pub(super) class_names: Vec<String>,
}

pub(super) fn read_csv(
    path: &Path,
) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>)> {
    let bad = |e: csv::Error| Error::invalid(path.display(), e.to_string());
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(bad)?;
    let header = r.headers().map_err(bad)?.clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(bad)?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        rows.push((line, rec));
    }
    Ok((header, rows))
}

/// The index of column `name` in `header`, or an error listing the columns
/// `file` has.
pub(super) fn column(
    header: &csv::StringRecord,
    file: &Path,
    name: &str,
    why: &str,
) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        Error::invalid(
            file.display(),
            format!(
                "has no column {name:?}{why} (its columns: {})",
                header.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// The image path inside an evaluate image name: an LMDB key is
/// `%08d_` followed by the list's path.
pub(super) fn key_path(image: &str) -> &str {
    let b = image.as_bytes();
    if b.len() > 9 && b[..8].iter().all(u8::is_ascii_digit) && b[8] == b'_' {
        &image[9..]
    } else {
        image
    }
}

/// Each row's `path` and its values of `columns`, every one a finite
/// number (else an error naming the line); `why` ends a missing column's
/// message.
pub(super) fn read_numbers(
    file: &Path,
    columns: &[&str],
    why: &str,
) -> Result<Vec<(String, Vec<f64>)>> {
    let (header, rows) = read_csv(file)?;
    let path_col = column(&header, file, "path", why)?;
    let cols = columns
        .iter()
        .map(|n| column(&header, file, n, why))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (line, rec) in rows {
        let path = rec.get(path_col).unwrap_or("").to_string();
        let mut values = Vec::with_capacity(cols.len());
        for (&c, name) in cols.iter().zip(columns) {
            let v = rec.get(c).unwrap_or("");
            values.push(
                v.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| Error::Line {
                        path: file.to_path_buf(),
                        line,
                        message: format!("{name} of {path}: {v:?} is not a number"),
                    })?,
            );
        }
        out.push((path, values));
    }
    Ok(out)
}

/// `measure`'s output: each image's measurements by its path as written.
fn read_measures(file: &Path, samples: &Path) -> Result<HashMap<String, Vec<f64>>> {
    if !file.exists() {
        return Err(Error::invalid(
            file.display(),
            format!(
                "not found: run `flickr-style measure {}` first (or the pipeline with --measure)",
                samples.display()
            ),
        ));
    }
    let rows = read_numbers(
        file,
        &measure::NAMES,
        ", which `flickr-style measure` writes",
    )?;
    Ok(rows.into_iter().collect())
}

pub(super) fn load(o: &FuseOptions) -> Result<Data> {
    let p = &o.probabilities;
    let (header, rows) = read_csv(p)?;
    if header.len() < 4 || &header[0] != "image" || &header[1] != "label" {
        return Err(Error::invalid(
            p.display(),
            "is not an evaluate probabilities.csv (image, label, then one column per class)",
        ));
    }
    let class_names: Vec<String> = header.iter().skip(2).map(str::to_string).collect();
    let classes = class_names.len();

    let (s_header, s_rows) = read_csv(&o.samples)?;
    let column = |name: &str| column(&s_header, &o.samples, name, "");
    let path_col = column("path")?;
    let label_col = column("label")?;
    let mut feature_names = Vec::new();
    let mut feature_cols = Vec::new();
    if o.size {
        for (name, col) in [("ln_width", "width"), ("ln_height", "height")] {
            feature_names.push(name.to_string());
            feature_cols.push((column(col)?, true));
        }
    }
    for f in o.features.iter().cloned() {
        if measure::is_measure(&f) {
            return Err(Error::invalid(
                "--feature",
                format!(
                    "{f} is one of `measure`'s measurements: use --measured, which reads them all"
                ),
            ));
        }
        if feature_names.contains(&f) {
            return Err(Error::invalid(
                o.samples.display(),
                format!("feature {f:?} is given twice"),
            ));
        }
        feature_cols.push((column(&f)?, false));
        feature_names.push(f);
    }
    let measures = match &o.measures {
        Some(m) => {
            feature_names.extend(measure::NAMES.map(String::from));
            Some((m, read_measures(m, &o.samples)?))
        }
        None => None,
    };
    if feature_names.is_empty() {
        return Err(Error::invalid(
            o.samples.display(),
            "no features to fuse: keep the size, add --measured, or name columns with --feature",
        ));
    }
    let mut by_path: HashMap<&str, (usize, &csv::StringRecord)> = HashMap::new();
    for (line, rec) in &s_rows {
        by_path.insert(rec.get(path_col).unwrap_or(""), (*line, rec));
    }

    let mut data = Data {
        classes,
        log_p: Vec::with_capacity(rows.len()),
        x: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
        images: Vec::with_capacity(rows.len()),
        feature_names,
        class_names,
    };
    for (line, rec) in &rows {
        let bad = |message: String| Error::Line {
            path: p.clone(),
            line: *line,
            message,
        };
        let image = rec.get(0).unwrap_or("");
        let label: usize = rec
            .get(1)
            .and_then(|l| l.parse().ok())
            .filter(|&l| l < classes)
            .ok_or_else(|| bad(format!("label must be a class index below {classes}")))?;
        let mut probs = Vec::with_capacity(classes);
        for v in rec.iter().skip(2) {
            match v.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => probs.push(v),
                _ => return Err(bad(format!("{v:?} is not a probability"))),
            }
        }
        if probs.len() != classes {
            return Err(bad(format!(
                "has {} probabilities for {classes} classes",
                probs.len()
            )));
        }
        let path = key_path(image);
        let (s_line, s_rec) = by_path.get(path).ok_or_else(|| {
            bad(format!(
                "image {path} is not in {} (fuse needs the samples.csv of the same dataset)",
                o.samples.display()
            ))
        })?;
        let s_bad = |message: String| Error::Line {
            path: o.samples.clone(),
            line: *s_line,
            message,
        };
        if s_rec.get(label_col).and_then(|l| l.parse::<usize>().ok()) != Some(label) {
            return Err(s_bad(format!(
                "{path} has label {:?} here but {label} in {}",
                s_rec.get(label_col).unwrap_or(""),
                p.display()
            )));
        }
        let mut x = Vec::with_capacity(feature_cols.len());
        for (&(col, log), name) in feature_cols.iter().zip(&data.feature_names) {
            let v = s_rec.get(col).unwrap_or("");
            let value = v
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && (!log || *v > 0.0))
                .ok_or_else(|| {
                    s_bad(format!(
                        "{name} of {path}: {v:?} is not {}",
                        if log {
                            "a positive size (import with the image check on)"
                        } else {
                            "a number"
                        }
                    ))
                })?;
            x.push(if log { value.ln() } else { value });
        }
        if let Some((file, by_path)) = &measures {
            let m = by_path.get(path).ok_or_else(|| {
                bad(format!(
                    "image {path} has no row in {}: the dataset changed since it was measured; measure again",
                    file.display()
                ))
            })?;
            x.extend_from_slice(m);
        }
        data.log_p.push(log_probabilities(probs.into_iter()));
        data.x.push(x);
        data.labels.push(label);
        data.images.push(image.to_string());
    }
    if data.labels.is_empty() {
        return Err(Error::invalid(p.display(), "lists no images"));
    }
    Ok(data)
}
