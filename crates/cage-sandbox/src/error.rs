//! Every way the sandbox engine can fail, each naming the step and the cause.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("this engine does not implement {field}; refusing to run rather than ignore it")]
    Unsupported { field: String },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("cgroup {path}: {what}: {source}")]
    Cgroup {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Os { what: String, source: nix::Error },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The sandbox could not be set up; the message comes from inside, already worded.
    #[error("{0}")]
    Setup(String),
}

impl SandboxError {
    pub fn os(what: impl Into<String>, source: nix::Error) -> Self {
        SandboxError::Os {
            what: what.into(),
            source,
        }
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
