//! flickr-style: Caffe's "fine-tune CaffeNet on Flickr Style" workflow as a
//! library (and the thin `flickr-style` binary over it).
//!
//! - [`caffe`]: Caffe's file formats (protobuf binary and text, blobs,
//!   datums, V1 nets, mean files).
//! - [`pipeline`]: data in: OpenCV-compatible decoding and resizing, image
//!   lists, LMDB, and the `to-lmdb` / `compute-mean` stages.
//! - [`error`]: the library's error type.

pub mod caffe;
pub mod error;
pub mod fsutil;
pub mod pipeline;
pub mod progress;
pub mod train;
pub mod workflow;

pub use error::{Error, Result};
