//! Single-file HTTP downloads for large artefacts (model weights, Caffe's
//! aux archive, the Flickr CSV): streamed to `<dest>.part`, resumed with a
//! Range request when a partial file exists, verified against a checksum and
//! only then renamed to `dest`, so a final name never holds a bad file.
use crate::error::{Error, IoContext, Result};
use futures_util::StreamExt;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An expected digest of a downloaded file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Hex SHA-1 (what Caffe's model readmes give).
    Sha1(String),
    /// Hex SHA-256.
    Sha256(String),
}

impl Checksum {
    /// Hex digest of the file at `path` with this checksum's algorithm.
    pub fn digest_file(&self, path: &Path) -> Result<String> {
        let mut f = std::fs::File::open(path).at(path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut sha1 = Sha1::new();
        let mut sha256 = Sha256::new();
        loop {
            let n = f.read(&mut buf).at(path)?;
            if n == 0 {
                break;
            }
            match self {
                Checksum::Sha1(_) => sha1.update(&buf[..n]),
                Checksum::Sha256(_) => sha256.update(&buf[..n]),
            }
        }
        Ok(match self {
            Checksum::Sha1(_) => hex::encode(sha1.finalize()),
            Checksum::Sha256(_) => hex::encode(sha256.finalize()),
        })
    }

    fn expected(&self) -> String {
        match self {
            Checksum::Sha1(h) | Checksum::Sha256(h) => h.to_ascii_lowercase(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Checksum::Sha1(_) => "SHA-1",
            Checksum::Sha256(_) => "SHA-256",
        }
    }
}

/// Timeouts for a single-file download.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence allowed while reading the body.
    pub read_timeout: Duration,
    /// Attempts (the partial file is kept and resumed between them).
    pub attempts: u32,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            attempts: 4,
            progress: true,
        }
    }
}

/// The path used for a download in progress.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Downloads `url` to `dest` (blocking; runs its own small tokio runtime).
pub fn fetch_file(
    url: &str,
    dest: &Path,
    checksum: Option<&Checksum>,
    opts: &FetchOptions,
) -> Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(dest, e))?;
    rt.block_on(fetch_file_async(url, dest, checksum, opts))
}

/// Async form of [`fetch_file`]. Returns the file size.
pub async fn fetch_file_async(
    url: &str,
    dest: &Path,
    checksum: Option<&Checksum>,
    opts: &FetchOptions,
) -> Result<u64> {
    let http = |message: String| Error::Http {
        url: url.to_string(),
        message,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .user_agent(concat!("flickr-style/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| http(e.to_string()))?;
    let dir = crate::fsutil::parent_dir(dest);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let part = part_path(dest);
    let mut last_err = None;
    for attempt in 0..opts.attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt.min(5))).await;
        }
        match download_once(&client, url, &part, opts.progress).await {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e @ Error::Http { .. }) if is_permanent(&e) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    if let Some(sum) = checksum {
        let got = sum.digest_file(&part)?;
        if got != sum.expected() {
            // A corrupt file cannot be resumed into a good one: start over next time.
            let _ = std::fs::remove_file(&part);
            return Err(http(format!(
                "{} mismatch: expected {}, downloaded file has {got}; nothing was saved as {}",
                sum.name(),
                sum.expected(),
                dest.display()
            )));
        }
    }
    let size = std::fs::metadata(&part).at(&part)?.len();
    std::fs::rename(&part, dest).at(dest)?;
    Ok(size)
}

fn is_permanent(e: &Error) -> bool {
    matches!(e, Error::Http { message, .. } if message.starts_with("HTTP 4") && !message.starts_with("HTTP 408") && !message.starts_with("HTTP 429"))
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    progress: bool,
) -> Result<()> {
    let http = |message: String| Error::Http {
        url: url.to_string(),
        message,
    };
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = req.send().await.map_err(|e| http(describe(&e)))?;
    let status = resp.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The partial file is already complete (or bogus): let the checksum decide.
        return Ok(());
    }
    if !status.is_success() {
        return Err(http(format!("HTTP {status}")));
    }
    let total = resp
        .content_length()
        .map(|n| if resumed { n + have } else { n });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .at(part)?;
    let pb = crate::progress::bar(total.unwrap_or(0), "download");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_position(if resumed { have } else { 0 });
    let mut written = if resumed { have } else { 0 };
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| http(describe(&e)))?;
        file.write_all(&chunk).at(part)?;
        written += chunk.len() as u64;
        pb.set_position(written);
    }
    file.sync_all().at(part)?;
    pb.finish_and_clear();
    if let Some(t) = total {
        if written != t {
            return Err(http(format!(
                "connection closed after {written} of {t} bytes"
            )));
        }
    }
    Ok(())
}

/// A reqwest error with its cause chain, which holds the useful part.
pub fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() && !msg.contains("timed out") {
        msg.push_str(" (timed out)");
    }
    msg
}
