//! Every way the store, a pull or an unpack can fail, each naming what and why.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error(
        "digest mismatch for {expected}: the content hashes to {actual}; the blob was discarded"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer entry {entry:?}: {why}; nothing was written outside the target")]
    UnsafeEntry { entry: String, why: &'static str },
    #[error("layer entry {entry:?}: {what}: {source}")]
    Entry {
        entry: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("layer is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading the layer: {0}")]
    Archive(std::io::Error),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io(
    path: impl Into<PathBuf>,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, what, source }
}
