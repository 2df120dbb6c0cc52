//! `assemble`: Caffe's `assemble_data.py` done right. Selects the same
//! Flickr Style subset, downloads it in parallel, keeps only verified images,
//! and writes Caffe ImageData lists plus a manifest.
//!
//! Crash and resume safety: an image is written to a hidden temporary name
//! and renamed when complete; every finished download is appended to
//! `manifest.jsonl` at once, so a killed run loses nothing; a rerun reuses an
//! image only when its file still has the SHA-256 the manifest recorded.
//! On Ctrl-C the lists and manifest are written for what finished.
use super::downloader::{client, fetch_image, on_cpu, Cause, DownloadConfig, Fetched};
use super::flickr_csv::{read_csv, select, Split, StyleRow};
use crate::error::{Error, IoContext, Result};
use futures_util::StreamExt;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where Caffe's example keeps the CSV.
pub const CSV_URL: &str =
    "https://raw.githubusercontent.com/BVLC/caffe/master/examples/finetune_flickr_style/flickr_style.csv.gz";

/// Options of `assemble`.
#[derive(Clone, Debug)]
pub struct AssembleOptions {
    /// CSV path or http(s) URL; `None` = `<out>/flickr_style.csv.gz`, downloaded from [`CSV_URL`] if absent.
    pub csv: Option<String>,
    /// Output folder (images/, train.txt, test.txt, manifest.jsonl).
    pub out: PathBuf,
    /// NumPy seed of the selection.
    pub seed: u32,
    /// Keep the first N selected rows (-1 = all).
    pub images: i64,
    /// Keep rows with `label < labels` (0 = all).
    pub labels: i32,
    /// Fetch the same URL paths from this base URL instead of Flickr.
    pub mirror: Option<String>,
    /// Only select: the summary lists the selection, nothing is downloaded.
    pub dry_run: bool,
    /// Network settings.
    pub download: DownloadConfig,
}

/// One manifest line.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// Flickr id.
    pub id: String,
    /// The URL in the CSV.
    pub url: String,
    /// Style label.
    pub label: i32,
    /// train or test.
    pub split: Split,
    /// "ok" or "missing".
    pub status: String,
    /// File size when ok.
    pub bytes: Option<u64>,
    /// SHA-256 of the file when ok.
    pub sha256: Option<String>,
    /// Why it is missing.
    pub cause: Option<Cause>,
    /// Details of the failure.
    pub error: Option<String>,
}

/// What `assemble` did.
#[derive(Debug, Default)]
pub struct AssembleSummary {
    /// Rows selected.
    pub selected: usize,
    /// Images available (downloaded now or reused).
    pub ok: usize,
    /// Of those, reused from an earlier run.
    pub reused: usize,
    /// Missing images by cause.
    pub missing: BTreeMap<String, usize>,
    /// Lines in train.txt / test.txt.
    pub train: usize,
    /// Lines in test.txt.
    pub test: usize,
    /// Stopped by Ctrl-C before finishing.
    pub interrupted: bool,
    /// Wall time.
    pub seconds: f64,
    /// With `dry_run`: each selected row as `id,image_url,label,split`, in
    /// selection order (nothing is downloaded or written).
    pub selection: Vec<String>,
}

/// The file name an image is stored under: the URL's basename, like Caffe.
pub fn image_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or(url)
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_string()
}

/// `url` with its scheme and host replaced by `mirror`.
pub fn mirrored(url: &str, mirror: &str) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    format!("{}{}", mirror.trim_end_matches('/'), path)
}

/// Downloads the CSV to `dest`; where it cannot be fetched, the error says
/// how to do without the network.
async fn fetch_csv(url: &str, dest: &Path) -> Result<()> {
    let opts = super::fetch::FetchOptions::default();
    match super::fetch::fetch_file_async(url, dest, None, &opts).await {
        Ok(_) => Ok(()),
        Err(Error::Http { url, message }) => Err(Error::Http {
            url,
            message: format!(
                "{message} (the Flickr Style CSV: give --csv a local copy of it, e.g. Caffe's \
                 examples/finetune_flickr_style/flickr_style.csv.gz)"
            ),
        }),
        Err(e) => Err(e),
    }
}

/// Loads the CSV from the option, the default location, or Caffe's
/// repository. Async: it runs inside `assemble`'s runtime, where the
/// blocking [`fetch_file`](super::fetch::fetch_file) (a runtime of its own)
/// would panic.
async fn load_rows(opts: &AssembleOptions) -> Result<Vec<StyleRow>> {
    let default = opts.out.join("flickr_style.csv.gz");
    let path = match &opts.csv {
        Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
            fetch_csv(s, &default).await?;
            default
        }
        Some(p) => PathBuf::from(p),
        None => {
            if !default.exists() {
                crate::progress::say(format_args!(
                    "Downloading the Flickr Style CSV from {CSV_URL}"
                ));
                fetch_csv(CSV_URL, &default).await?;
            }
            default
        }
    };
    read_csv(&path)
}

/// Runs `assemble`; `interrupt` resolves when the user asks to stop.
pub async fn assemble(
    opts: &AssembleOptions,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<AssembleSummary> {
    let start = Instant::now();
    let rows = load_rows(opts).await?;
    let picked = select(&rows, opts.seed, opts.images, opts.labels);
    let mut summary = AssembleSummary {
        selected: picked.len(),
        ..Default::default()
    };
    if opts.dry_run {
        summary.selection = picked
            .iter()
            .map(|r| {
                let split = if r.split == Split::Train {
                    "train"
                } else {
                    "test"
                };
                format!("{},{},{},{split}", r.id, r.image_url, r.label)
            })
            .collect();
        return Ok(summary);
    }
    let images_dir = opts.out.join("images");
    std::fs::create_dir_all(&images_dir).at(&images_dir)?;
    remove_stale_parts(&images_dir)?;
    let manifest_path = opts.out.join("manifest.jsonl");
    let mut known = read_manifest(&manifest_path)?;

    // Reuse what an earlier run verified, if the file is still intact.
    let reusable: Vec<bool> = picked
        .par_iter()
        .map(|r| {
            known.get(&r.id).is_some_and(|e| {
                e.status == "ok"
                    && e.sha256.as_deref().is_some_and(|want| {
                        std::fs::read(images_dir.join(image_name(&r.image_url)))
                            .is_ok_and(|b| hex::encode(Sha256::digest(&b)) == want)
                    })
            })
        })
        .collect();
    summary.reused = reusable.iter().filter(|&&b| b).count();
    let todo: Vec<&StyleRow> = picked
        .iter()
        .zip(&reusable)
        .filter(|(_, &r)| !r)
        .map(|(r, _)| r)
        .collect();

    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&manifest_path)
        .at(&manifest_path)?;
    let http = client(&opts.download).map_err(|e| Error::Http {
        url: String::new(),
        message: e.to_string(),
    })?;
    let pb = crate::progress::bar(todo.len() as u64, "download");
    pb.set_message(format!("({} reused)", summary.reused));
    let mut results = futures_util::stream::iter(todo.iter().enumerate())
        .map(|(i, row)| {
            let http = &http;
            let images_dir = &images_dir;
            async move {
                let url = match &opts.mirror {
                    Some(m) => mirrored(&row.image_url, m),
                    None => row.image_url.clone(),
                };
                let key = row.id.parse::<u64>().unwrap_or(i as u64);
                let entry = match fetch_image(http, &url, &opts.download, key).await {
                    Fetched::Image(body) => {
                        let dest = images_dir.join(image_name(&row.image_url));
                        store(body, dest)
                            .await
                            .map(|(bytes, sha)| entry(row, Some((bytes, sha)), None))
                    }
                    Fetched::Missing(cause, msg) => Ok(entry(row, None, Some((cause, msg)))),
                };
                entry
            }
        })
        .buffer_unordered(opts.download.workers.max(1));

    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            next = results.next() => match next {
                Some(entry) => {
                    let entry = entry?;
                    let line = serde_json::to_string(&entry).expect("entry serialises");
                    writeln!(journal, "{line}").at(&manifest_path)?;
                    journal.flush().at(&manifest_path)?;
                    known.insert(entry.id.clone(), entry);
                    pb.inc(1);
                }
                None => break,
            },
            _ = &mut interrupt => {
                summary.interrupted = true;
                break;
            }
        }
    }
    drop(results);
    // Closed before the manifest is rewritten in place: Windows refuses to
    // rename a file over one that is still open.
    drop(journal);
    pb.finish_and_clear();
    write_outputs(opts, &picked, &known, &mut summary)?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn entry(
    row: &StyleRow,
    ok: Option<(u64, String)>,
    missing: Option<(Cause, String)>,
) -> ManifestEntry {
    ManifestEntry {
        id: row.id.clone(),
        url: row.image_url.clone(),
        label: row.label,
        split: row.split,
        status: if ok.is_some() { "ok" } else { "missing" }.into(),
        bytes: ok.as_ref().map(|o| o.0),
        sha256: ok.map(|o| o.1),
        cause: missing.as_ref().map(|m| m.0),
        error: missing.map(|m| m.1),
    }
}

/// Writes `body` to `dest` through a hidden temporary file; returns size and SHA-256.
///
/// No fsync per image: the rename already guarantees that a killed run never
/// leaves a partial file under a final name, and after a power loss the
/// manifest's SHA-256 check on the next run catches any damaged file.
async fn store(body: Vec<u8>, dest: PathBuf) -> Result<(u64, String)> {
    on_cpu(move || {
        let sha = hex::encode(Sha256::digest(&body));
        crate::fsutil::write_renamed(&dest, &body)?;
        Ok((body.len() as u64, sha))
    })
    .await
    .map_err(|e| Error::invalid("image writer", e))?
}

/// Deletes temporary files a killed run left behind.
fn remove_stale_parts(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Reads the manifest (the last line for an id wins); a missing file is empty.
/// A torn last line from a killed run is ignored.
fn read_manifest(path: &Path) -> Result<HashMap<String, ManifestEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<ManifestEntry>(l).ok())
        .map(|e| (e.id.clone(), e))
        .collect())
}

fn write_outputs(
    opts: &AssembleOptions,
    picked: &[StyleRow],
    known: &HashMap<String, ManifestEntry>,
    summary: &mut AssembleSummary,
) -> Result<()> {
    let images_dir = std::path::absolute(opts.out.join("images")).at(&opts.out)?;
    let (mut train, mut test, mut manifest) = (String::new(), String::new(), String::new());
    summary.ok = 0;
    summary.missing.clear();
    for row in picked {
        let Some(e) = known.get(&row.id) else {
            continue;
        };
        manifest.push_str(&serde_json::to_string(e).expect("entry serialises"));
        manifest.push('\n');
        if e.status == "ok" {
            summary.ok += 1;
            let path = images_dir.join(image_name(&row.image_url));
            let line = format!(
                "{} {}\n",
                crate::fsutil::list_path(&path).unwrap_or_else(|| path.display().to_string()),
                row.label
            );
            match row.split {
                Split::Train => train.push_str(&line),
                Split::Test => test.push_str(&line),
            }
        } else {
            let cause = e.cause.map_or("unknown".to_string(), |c| {
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            *summary.missing.entry(cause).or_default() += 1;
        }
    }
    // Keep what earlier, larger runs verified so they can be reused later.
    let picked_ids: std::collections::HashSet<&str> =
        picked.iter().map(|r| r.id.as_str()).collect();
    let mut others: Vec<&ManifestEntry> = known
        .values()
        .filter(|e| !picked_ids.contains(e.id.as_str()))
        .collect();
    others.sort_by(|a, b| a.id.cmp(&b.id));
    for e in others {
        manifest.push_str(&serde_json::to_string(e).expect("entry serialises"));
        manifest.push('\n');
    }
    summary.train = train.lines().count();
    summary.test = test.lines().count();
    crate::fsutil::write_atomic(&opts.out.join("train.txt"), train.as_bytes())?;
    crate::fsutil::write_atomic(&opts.out.join("test.txt"), test.as_bytes())?;
    crate::fsutil::write_atomic(&opts.out.join("manifest.jsonl"), manifest.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_mirrors() {
        let u = "http://farm2.staticflickr.com/1227/5159730964_124c1e63d8.jpg";
        assert_eq!(image_name(u), "5159730964_124c1e63d8.jpg");
        assert_eq!(
            mirrored(u, "http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/1227/5159730964_124c1e63d8.jpg"
        );
    }
}
