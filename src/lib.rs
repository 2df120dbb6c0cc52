//! flickr-style: Caffe's "fine-tune CaffeNet on Flickr Style" workflow as a
//! library (and the thin `flickr-style` binary over it).
//!
//! - [`caffe`]: Caffe's file formats (protobuf binary and text, blobs,
//!   datums, V1 nets, mean files).
//! - [`pipeline`]: data in: OpenCV-compatible decoding and resizing, image
//!   lists, LMDB, and the `to-lmdb` / `compute-mean` stages.
//! - [`train`]: the learner (Caffe's Net / Layer / Solver on candle).
//! - [`inference`]: what a trained net is for (evaluate, classify, explain,
//!   features, deploy); [`analysis`]: reports and plots from its outputs.
//! - [`workflow`]: the `pipeline` command, every stage in order.
//! - [`error`]: the library's error type.

pub mod analysis;
pub mod caffe;
pub mod error;
pub mod fsutil;
pub mod inference;
pub mod pipeline;
pub mod progress;
pub mod train;
pub mod workflow;

pub use error::{Error, Result};
