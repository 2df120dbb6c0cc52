//! The library's error type: every variant names the file (or URL, or LMDB
//! key) it is about, so a message is actionable without a backtrace.
use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flickr-style's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A binary protobuf file (caffemodel, binaryproto, solverstate) that does not decode.
    #[error("{}: not a valid {what} file: {cause}", path.display())]
    Proto {
        path: PathBuf,
        what: &'static str,
        cause: prost::DecodeError,
    },
    /// A protobuf text-format (`.prototxt`) error with its position.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Prototxt {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// An image that cannot be decoded.
    #[error("{}: cannot decode image: {message}", path.display())]
    Image { path: PathBuf, message: String },
    /// A malformed line in a Caffe image list or CSV.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// An LMDB environment that cannot be opened, read or written.
    #[error("LMDB {}: {message}", path.display())]
    Lmdb { path: PathBuf, message: String },
    /// A record or file whose content is inconsistent (wrong shape, bad field).
    #[error("{context}: {message}")]
    Invalid { context: String, message: String },
    /// A network transfer that failed.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// A tensor operation failed (shape mismatch, device error).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A net, layer or solver definition that cannot be run.
    #[error("{context}: {message}")]
    Model { context: String, message: String },
    /// Training stopped on a non-finite loss.
    #[error(
        "iteration {iter}: loss is {value}; training diverged (lower base_lr or check the data)"
    )]
    Diverged { iter: usize, value: f32 },
    /// The user interrupted the run (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    /// Inconsistent content in `context` (a file, a key, a layer name).
    pub fn invalid(context: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Invalid {
            context: context.to_string(),
            message: message.into(),
        }
    }

    /// Undecodable image at `path`.
    pub fn image(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Image {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A net/layer/solver definition problem in `context` (a layer name, a file).
    pub fn model(context: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Model {
            context: context.to_string(),
            message: message.into(),
        }
    }

    /// LMDB failure on the environment at `path`.
    pub fn lmdb(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Lmdb {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Adds the path to a bare `std::io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
