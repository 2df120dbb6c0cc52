//! Parallel image downloads for `assemble`: a bounded number of requests in
//! flight on tokio, every request under connect/read/total timeouts, retries
//! with exponential backoff and seeded jitter for transient failures only,
//! and a body accepted only if it is complete, not Flickr's placeholder and
//! fully decodes as an image (decoding runs off the async runtime).
use super::decode::is_valid_image;
use super::fetch::describe;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use sha1::{Digest, Sha1};
use std::time::Duration;

/// SHA-1 of the image Flickr serves for a photo that is gone.
pub const FLICKR_PLACEHOLDER_SHA1: &str = "6a92790b1c2a301c6e7ddef645dca1f53ea97ac2";

/// Download settings.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// Requests in flight at once.
    pub workers: usize,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence while reading.
    pub read_timeout: Duration,
    /// Longest time for one whole attempt.
    pub total_timeout: Duration,
    /// Attempts per URL for transient failures.
    pub attempts: u32,
    /// First backoff delay (doubled each retry, with jitter).
    pub backoff: Duration,
    /// Largest accepted body.
    pub max_bytes: u64,
    /// Bodies with these SHA-1s count as missing (Flickr's placeholder is always included).
    pub placeholder_sha1: Vec<String>,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            workers: 128,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(20),
            total_timeout: Duration::from_secs(60),
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_bytes: 32 << 20,
            placeholder_sha1: Vec::new(),
            seed: 0,
        }
    }
}

/// Why an image is missing.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// 404 or 410: the photo is gone.
    NotFound,
    /// Another HTTP error status (after retries for 5xx/429).
    HttpStatus,
    /// Timed out (after retries).
    Timeout,
    /// Connection failed, reset or closed early (after retries).
    Network,
    /// Flickr's "photo unavailable" image, by redirect or by checksum.
    Placeholder,
    /// The body is not a complete image.
    Undecodable,
    /// The body is larger than the cap.
    TooLarge,
}

/// The result of fetching one URL.
#[derive(Debug)]
pub enum Fetched {
    /// A verified image body.
    Image(Vec<u8>),
    /// No usable image, with the cause and a detail message.
    Missing(Cause, String),
}

/// One failed attempt: its cause, message, whether to retry, and a server-requested delay.
struct Failure {
    cause: Cause,
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

/// Builds the shared HTTP client (honours HTTP(S)_PROXY / NO_PROXY).
pub fn client(cfg: &DownloadConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .pool_max_idle_per_host(cfg.workers)
        .user_agent(concat!("flickr-style/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Fetches `url` with retries; `key` seeds this URL's jitter so runs repeat.
pub async fn fetch_image(
    client: &reqwest::Client,
    url: &str,
    cfg: &DownloadConfig,
    key: u64,
) -> Fetched {
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = tokio::time::timeout(cfg.total_timeout, attempt_once(client, url, cfg)).await;
        let failure = match result {
            Ok(Ok(body)) => return verify(body, cfg).await,
            Ok(Err(f)) => f,
            Err(_) => Failure {
                cause: Cause::Timeout,
                message: format!("no complete response within {:?}", cfg.total_timeout),
                retry: true,
                retry_after: None,
            },
        };
        if !failure.retry || attempt >= cfg.attempts {
            let note = if attempt > 1 {
                format!(" (after {attempt} attempts)")
            } else {
                String::new()
            };
            return Fetched::Missing(failure.cause, format!("{}{note}", failure.message));
        }
        let base = cfg.backoff.as_secs_f64() * 2f64.powi(attempt as i32 - 1);
        let jittered = base * rng.random_range(0.5..1.5);
        let delay = failure
            .retry_after
            .map_or(jittered, |d| d.as_secs_f64().min(30.0).max(jittered));
        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    }
}

async fn attempt_once(
    client: &reqwest::Client,
    url: &str,
    cfg: &DownloadConfig,
) -> Result<Vec<u8>, Failure> {
    let net = |e: reqwest::Error| Failure {
        cause: if e.is_timeout() {
            Cause::Timeout
        } else {
            Cause::Network
        },
        message: describe(&e),
        retry: true,
        retry_after: None,
    };
    let resp = client.get(url).send().await.map_err(net)?;
    if resp.url().path().contains("photo_unavailable") {
        return Err(Failure {
            cause: Cause::Placeholder,
            message: format!("redirected to Flickr's placeholder {}", resp.url()),
            retry: false,
            retry_after: None,
        });
    }
    let status = resp.status();
    if !status.is_success() {
        let code = status.as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Failure {
            cause: if code == 404 || code == 410 {
                Cause::NotFound
            } else {
                Cause::HttpStatus
            },
            message: format!("HTTP {status}"),
            retry: status.is_server_error() || code == 429 || code == 408,
            retry_after,
        });
    }
    let too_large = |n: u64| Failure {
        cause: Cause::TooLarge,
        message: format!("body of {n} bytes is over the {} byte cap", cfg.max_bytes),
        retry: false,
        retry_after: None,
    };
    let expected = resp.content_length();
    if let Some(n) = expected.filter(|&n| n > cfg.max_bytes) {
        return Err(too_large(n));
    }
    let mut body = Vec::with_capacity(expected.unwrap_or(64 << 10) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.map_err(net)?);
        if body.len() as u64 > cfg.max_bytes {
            return Err(too_large(body.len() as u64));
        }
    }
    if let Some(n) = expected.filter(|&n| n != body.len() as u64) {
        return Err(Failure {
            cause: Cause::Network,
            message: format!("connection closed after {} of {n} bytes", body.len()),
            retry: true,
            retry_after: None,
        });
    }
    Ok(body)
}

/// One slot per core for CPU and disk work done off the async runtime.
/// Unbounded `spawn_blocking` would start hundreds of threads that fight
/// over the image folder's directory lock.
static CPU_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
});

/// Runs `f` on the blocking pool, at most one task per core at a time.
pub async fn on_cpu<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    let _slot = CPU_SLOTS.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

/// Placeholder and decode checks, off the async runtime so the network stays busy.
async fn verify(body: Vec<u8>, cfg: &DownloadConfig) -> Fetched {
    let extra = cfg.placeholder_sha1.clone();
    let checked = on_cpu(move || {
        let sha1 = hex::encode(Sha1::digest(&body));
        if sha1 == FLICKR_PLACEHOLDER_SHA1 || extra.iter().any(|s| s.eq_ignore_ascii_case(&sha1)) {
            return Fetched::Missing(
                Cause::Placeholder,
                format!("body is a known placeholder (SHA-1 {sha1})"),
            );
        }
        if !is_valid_image(&body) {
            return Fetched::Missing(
                Cause::Undecodable,
                "body does not decode as a complete image".into(),
            );
        }
        Fetched::Image(body)
    })
    .await;
    checked.unwrap_or_else(|e| {
        Fetched::Missing(Cause::Undecodable, format!("image check failed: {e}"))
    })
}
