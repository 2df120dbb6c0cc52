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
