//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// `../shared/caffe-ref` relative to the crate root (read-only in CI).
pub fn caffe_ref() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref")
}

/// `../shared/caffe-ref/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    caffe_ref().join("fixtures").join(rel)
}

/// Path of the built `flickr-style` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flickr-style"))
}

/// Runs the binary with `args` in `cwd`; returns (status ok, stdout, stderr).
pub fn run(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub mod http;
