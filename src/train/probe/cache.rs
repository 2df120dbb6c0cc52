//! Saved features are used again while what made them is unchanged.
use crate::caffe::proto::NetParameter;
use crate::caffe::prototxt;
use crate::inference::features::{Features, SavedBlob};
use std::path::{Path, PathBuf};

/// The file beside saved features that says what they were made from.
pub(super) const STAMP: &str = "made_from.json";

/// What a feature pass depends on: the net that ran (as text), the blob,
/// the key order, the views saved, and the size and time of the weights and of the files its
/// data layers read (source list or LMDB, mean file). Equal stamps mean the
/// saved features can be used again, so a rerun (a different `--max-iter`,
/// a run resumed after Ctrl-C) skips the forward pass.
pub(super) fn stamp(
    def: &NetParameter,
    base: &Path,
    weights: &[PathBuf],
    blob: &str,
    shuffle: Option<u64>,
    views: &str,
) -> String {
    let file = |p: &Path| {
        let p = if p.is_dir() {
            p.join("data.mdb")
        } else {
            p.to_path_buf()
        };
        let meta = std::fs::metadata(&p).ok();
        serde_json::json!({
            "path": p.display().to_string(),
            "bytes": meta.as_ref().map(|m| m.len()),
            "modified": meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string()),
        })
    };
    let mut inputs: Vec<serde_json::Value> = weights.iter().map(|w| file(w)).collect();
    for l in &def.layer {
        let source = l
            .data_param
            .as_ref()
            .and_then(|p| p.source.clone())
            .or_else(|| l.image_data_param.as_ref().and_then(|p| p.source.clone()));
        let mean = l.transform_param.as_ref().and_then(|t| t.mean_file.clone());
        for p in source.iter().chain(&mean) {
            inputs.push(file(&base.join(p)));
        }
    }
    serde_json::json!({
        "net": prototxt::to_string(def),
        "blob": blob,
        "shuffle": shuffle,
        "views": views,
        "inputs": inputs,
    })
    .to_string()
}

/// The features saved in `dir` when its stamp equals `stamp` and every
/// file is there.
pub(super) fn cached(dir: &Path, blob: &str, stamp: &str) -> Option<Features> {
    if std::fs::read_to_string(dir.join(STAMP)).ok()? != stamp {
        return None;
    }
    let index = dir.join("images.csv");
    let rows = std::fs::read_to_string(&index)
        .ok()?
        .lines()
        .count()
        .checked_sub(1)? as u64;
    let (npy, lmdb) = std::fs::read_dir(dir).ok()?.find_map(|e| {
        let p = e.ok()?.path();
        (p.extension()? == "npy").then(|| {
            let lmdb = p
                .with_extension("")
                .as_os_str()
                .to_string_lossy()
                .into_owned()
                + "_lmdb";
            (p, PathBuf::from(lmdb))
        })
    })?;
    let file = std::fs::File::open(&npy).ok()?;
    let shape = npyz::NpyFile::new(std::io::BufReader::new(file))
        .ok()?
        .shape()
        .to_vec();
    if shape.first() != Some(&rows) || !lmdb.join("data.mdb").exists() {
        return None;
    }
    Some(Features {
        rows,
        blobs: vec![SavedBlob {
            name: blob.to_string(),
            shape: shape[1..].iter().map(|&d| d as usize).collect(),
            npy,
            lmdb: Some(lmdb),
        }],
        index,
        failed: Vec::new(),
    })
}
