//! Caffe's on-disk formats: the protobuf messages (binary and text format),
//! blobs, datums, net upgrades from the V1 layout, and mean files; and
//! Caffe's random draws ([`rng`]), which its data layers' choices depend on.
//!
//! The schema lives in `proto/caffe.proto`; `build.rs` compiles it with protox
//! (no `protoc` needed) into prost types and a descriptor that prost-reflect
//! uses for the `.prototxt` text format.

pub mod blob;
pub mod datum;
pub mod hdf5_snapshot;
pub mod libc_rand;
pub mod mean_file;
pub mod model;
pub mod net_state;
pub mod prototxt;
pub mod rng;

/// The prost types generated from `proto/caffe.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/caffe.rs"));
}

pub use proto::{
    BlobProto, BlobShape, Datum, LayerParameter, NetParameter, SolverParameter, SolverState,
    V1LayerParameter,
};

use crate::error::{Error, IoContext, Result};
use prost::Message;
use std::path::Path;

/// Reads a binary protobuf message of type `T` from `path`.
///
/// There is no 64 MiB limit (prost has none), so a 250 MB caffemodel loads.
pub fn read_binary<T: Message + Default>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = std::fs::read(path).at(path)?;
    T::decode(bytes.as_slice()).map_err(|cause| Error::Proto {
        path: path.to_path_buf(),
        what,
        cause,
    })
}

/// Writes `msg` to `path` atomically: a temporary file in the same folder is
/// written, flushed and renamed, so a crash never leaves a half-written file.
pub fn write_binary<T: Message>(path: &Path, msg: &T) -> Result<()> {
    crate::fsutil::write_atomic(path, &msg.encode_to_vec())
}
