//! `get-ilsvrc-aux`: Caffe's `data/ilsvrc12/get_ilsvrc_aux.sh` — fetches the
//! ILSVRC-2012 auxiliary archive (ImageNet mean, synset lists), checks it and
//! unpacks it.
use super::fetch::{fetch_file, Checksum, FetchOptions};
use crate::caffe::mean_file::MeanImage;
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Caffe's script downloads the archive from.
pub const DEFAULT_URL: &str = "http://dl.caffe.berkeleyvision.org/caffe_ilsvrc12.tar.gz";

/// Files the archive must contain for it to count as Caffe's aux data.
pub const REQUIRED: [&str; 3] = [
    "imagenet_mean.binaryproto",
    "synset_words.txt",
    "synsets.txt",
];

/// What was unpacked.
#[derive(Debug)]
pub struct AuxSummary {
    /// Every file written, in archive order.
    pub files: Vec<PathBuf>,
    /// The mean's per-channel values (B, G, R).
    pub channel_means: Vec<f64>,
    /// Number of synsets listed.
    pub synsets: usize,
}

/// Downloads (unless already present) and unpacks the aux archive into `dir`.
pub fn get_ilsvrc_aux(
    dir: &Path,
    url: &str,
    checksum: Option<&Checksum>,
    opts: &FetchOptions,
) -> Result<AuxSummary> {
    let archive = dir.join("caffe_ilsvrc12.tar.gz");
    if !archive.exists() {
        fetch_file(url, &archive, checksum, opts)?;
        // A download that is not Caffe's archive is removed so a rerun fetches again.
        return unpack(&archive, dir).inspect_err(|_| {
            let _ = std::fs::remove_file(&archive);
        });
    } else if let Some(sum) = checksum {
        let got = sum.digest_file(&archive)?;
        if !got.eq_ignore_ascii_case(match sum {
            Checksum::Sha1(h) | Checksum::Sha256(h) => h,
        }) {
            return Err(Error::invalid(
                archive.display(),
                format!("existing archive has checksum {got}; delete it to download again"),
            ));
        }
    }
    unpack(&archive, dir)
}

/// Checks and unpacks a downloaded archive. Nothing is written unless the
/// whole archive reads and holds the required files with valid content.
pub fn unpack(archive: &Path, dir: &Path) -> Result<AuxSummary> {
    let file = std::fs::File::open(archive).at(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |m: String| Error::invalid(archive.display(), m);
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tar
        .entries()
        .map_err(|e| bad(format!("not a gzip tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        // Only plain file names: never write outside `dir`.
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("corrupt archive at {name}: {e}")))?;
        entries.push((name, bytes));
    }
    for req in REQUIRED {
        if !entries.iter().any(|(n, _)| n == req) {
            return Err(bad(format!(
                "archive has no {req}; is this Caffe's caffe_ilsvrc12.tar.gz?"
            )));
        }
    }
    let get = |n: &str| {
        &entries
            .iter()
            .find(|(name, _)| name == n)
            .expect("checked")
            .1
    };
    let blob = <crate::caffe::BlobProto as prost::Message>::decode(
        get("imagenet_mean.binaryproto").as_slice(),
    )
    .map_err(|e| bad(format!("imagenet_mean.binaryproto is not a BlobProto: {e}")))?;
    let mean = MeanImage::from_blob(&blob, "imagenet_mean.binaryproto")?;
    let synsets = String::from_utf8_lossy(get("synset_words.txt"))
        .lines()
        .count();
    let mut files = Vec::new();
    for (name, bytes) in &entries {
        let out = dir.join(name);
        crate::fsutil::write_atomic(&out, bytes)?;
        files.push(out);
    }
    Ok(AuxSummary {
        files,
        channel_means: mean.channel_means(),
        synsets,
    })
}
