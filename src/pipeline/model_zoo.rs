//! `download-model`: Caffe's `scripts/download_model_binary.py`. Reads a
//! model folder's `readme.md` front matter (`caffemodel`, `caffemodel_url`,
//! `sha1`), downloads with resume, verifies the SHA-1 and only then puts the
//! file under its final name.
use super::fetch::{fetch_file, Checksum, FetchOptions};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// The download facts of a model-zoo folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// File name of the weights.
    pub caffemodel: String,
    /// Where to get them.
    pub url: String,
    /// Their SHA-1.
    pub sha1: String,
}

/// Parses the `---`-delimited front matter of a model readme.
pub fn parse_readme(text: &str, source: &Path) -> Result<ModelInfo> {
    let bad = |m: &str| Error::invalid(source.display(), m.to_string());
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("---") {
        return Err(bad(
            "readme.md has no front matter (it must start with a `---` line)",
        ));
    }
    let mut fields = std::collections::HashMap::new();
    for line in lines.by_ref() {
        if line.trim() == "---" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(
                k.trim().to_string(),
                v.trim().trim_matches(['"', '\'']).to_string(),
            );
        }
    }
    let get = |k: &str| {
        fields
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| bad(&format!("front matter has no `{k}` field")))
    };
    let info = ModelInfo {
        caffemodel: get("caffemodel")?,
        url: get("caffemodel_url")?,
        sha1: get("sha1")?.to_ascii_lowercase(),
    };
    if Path::new(&info.caffemodel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        != Some(info.caffemodel.clone())
    {
        return Err(bad("`caffemodel` must be a plain file name"));
    }
    Ok(info)
}

/// Downloads the model of `dir` (unless an intact copy is there); returns its path.
pub fn download_model(
    dir: &Path,
    url_override: Option<&str>,
    opts: &FetchOptions,
) -> Result<(PathBuf, bool)> {
    let readme = dir.join("readme.md");
    let info = parse_readme(&std::fs::read_to_string(&readme).at(&readme)?, &readme)?;
    let dest = dir.join(&info.caffemodel);
    let sum = Checksum::Sha1(info.sha1.clone());
    if dest.exists() {
        if sum.digest_file(&dest)? == info.sha1 {
            return Ok((dest, false));
        }
        return Err(Error::invalid(
            dest.display(),
            "exists but its SHA-1 does not match readme.md; delete it to download again",
        ));
    }
    fetch_file(url_override.unwrap_or(&info.url), &dest, Some(&sum), opts)?;
    Ok((dest, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_caffe_front_matter() {
        let t = "---\nname: X\ncaffemodel: a.caffemodel\ncaffemodel_url: http://h/a.caffemodel\nsha1: ABC\n---\nbody\n";
        let i = parse_readme(t, Path::new("readme.md")).unwrap();
        assert_eq!(
            i,
            ModelInfo {
                caffemodel: "a.caffemodel".into(),
                url: "http://h/a.caffemodel".into(),
                sha1: "abc".into()
            }
        );
        assert!(parse_readme("no front matter", Path::new("r")).is_err());
        let e = parse_readme("---\ncaffemodel: a\n---\n", Path::new("r"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("caffemodel_url"), "{e}");
    }
}
