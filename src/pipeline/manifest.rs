//! CSV/TSV manifests (one row per image: its path, its class and, as
//! ZooScanNet ships, maybe its set; EcoTaxa's TSVs with their row of column
//! types too) into Caffe image lists through
//! [`split`](super::split). Labels follow the sorted class names (numerically
//! when every name is a number); a set column, where given, decides the
//! lists instead of the seeded split.
use super::split::{write_lists, Carried, Class, ImportSummary, Set, SplitOptions};
use crate::error::{Error, IoContext, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// What to import and how to split it.
#[derive(Clone, Debug)]
pub struct ManifestImportOptions {
    /// The CSV (or, by its `.tsv`/`.tab` extension, tab-separated) file with a header row.
    pub manifest: PathBuf,
    /// Where relative image paths resolve from (default: the manifest's folder).
    pub root: Option<PathBuf>,
    /// Column of image paths.
    pub path_column: String,
    /// Column of class names.
    pub label_column: String,
    /// Column naming each row's set (train, val or test; empty: split here).
    pub set_column: Option<String>,
    /// Checks, split, re-sampling and where the lists go.
    pub split: SplitOptions,
}

/// A set column's value.
fn parse_set(v: &str) -> std::result::Result<Option<Set>, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "train" | "training" => Ok(Some(Set::Train)),
        "val" | "valid" | "validation" | "dev" => Ok(Some(Set::Val)),
        "test" | "testing" => Ok(Some(Set::Test)),
        other => Err(format!(
            "set {other:?} is not train, val or test (or empty, to split it here)"
        )),
    }
}

/// Class names in label order: numeric order when all are integers.
fn label_order(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.collect();
    v.sort();
    v.dedup();
    if v.iter().all(|n| n.parse::<i64>().is_ok()) {
        v.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
    }
    v
}

/// Imports the manifest and writes the lists into `o.split.out`.
pub fn import_manifest(o: &ManifestImportOptions) -> Result<ImportSummary> {
    o.split.validate()?;
    let m = &o.manifest;
    let tab = matches!(m.extension().and_then(|e| e.to_str()), Some("tsv" | "tab"));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if tab { b'\t' } else { b',' })
        .trim(csv::Trim::All)
        .from_path(m)
        .map_err(|e| Error::invalid(m.display(), e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid(m.display(), e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::invalid(
                m.display(),
                format!(
                    "has no column {name:?} (its columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (path_col, label_col) = (column(&o.path_column)?, column(&o.label_column)?);
    let set_col = o.set_column.as_deref().map(column).transpose()?;
    let root = match &o.root {
        Some(r) => r.clone(),
        None => crate::fsutil::parent_dir(m),
    };
    let root = std::path::absolute(&root).at(&root)?;
    // Every other column travels into samples.csv.
    let kept: Vec<usize> = (0..headers.len())
        .filter(|&i| i != path_col && i != label_col && Some(i) != set_col)
        .collect();
    let mut carried = Carried {
        names: kept.iter().map(|&i| headers[i].to_string()).collect(),
        values: HashMap::new(),
    };
    // (path, class, set) per row, and the line each path was first seen on.
    let mut rows = Vec::new();
    let mut first_line: HashMap<PathBuf, u64> = HashMap::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::invalid(m.display(), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        // EcoTaxa's TSV format types its columns in the row after the
        // header: [t] for text, [f] for numbers. That row is no image.
        if row == 0 && record.iter().all(|f| f == "[t]" || f == "[f]") {
            continue;
        }
        let bad = |message: String| Error::Line {
            path: m.clone(),
            line: line as usize,
            message,
        };
        let field = |i: usize| record.get(i).unwrap_or("");
        let (path, class) = (field(path_col), field(label_col));
        if path.is_empty() || class.is_empty() {
            return Err(bad(format!(
                "empty {:?} or {:?}",
                o.path_column, o.label_column
            )));
        }
        let set = match set_col {
            Some(i) => parse_set(field(i)).map_err(bad)?,
            None => None,
        };
        let path = root.join(path);
        if let Some(earlier) = first_line.insert(path.clone(), line) {
            return Err(bad(format!(
                "{} is listed again (first on line {earlier})",
                path.display()
            )));
        }
        carried.values.insert(
            path.clone(),
            kept.iter().map(|&i| field(i).to_string()).collect(),
        );
        rows.push((path, class.to_string(), set));
    }
    if rows.is_empty() {
        return Err(Error::invalid(m.display(), "lists no images"));
    }
    let order = label_order(rows.iter().map(|(_, c, _)| c.clone()));
    let mut by_class: BTreeMap<usize, Vec<(PathBuf, Option<Set>)>> = BTreeMap::new();
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for (path, class, set) in &rows {
        by_class
            .entry(index[class.as_str()])
            .or_default()
            .push((path.clone(), *set));
    }
    let classes = by_class
        .into_iter()
        .map(|(i, images)| Class {
            name: order[i].clone(),
            origin: format!("{} ({})", m.display(), o.label_column),
            images,
        })
        .collect();
    write_lists(classes, &o.split, ImportSummary::default(), &carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_label_orders() {
        assert_eq!(parse_set(" Train "), Ok(Some(Set::Train)));
        assert_eq!(parse_set("validation"), Ok(Some(Set::Val)));
        assert_eq!(parse_set("TEST"), Ok(Some(Set::Test)));
        assert_eq!(parse_set(""), Ok(None));
        assert!(parse_set("holdout").unwrap_err().contains("holdout"));
        let names = |v: &[&str]| label_order(v.iter().map(|s| s.to_string()));
        assert_eq!(names(&["10", "2", "1", "2"]), ["1", "2", "10"]);
        assert_eq!(
            names(&["diatom", "Copepod", "appendicularia"]),
            ["Copepod", "appendicularia", "diatom"]
        );
    }
}
