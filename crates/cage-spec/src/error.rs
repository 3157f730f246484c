//! Every way a request or a cage.toml can be refused: messages name the cause and the fix.

use thiserror::Error;

/// Every way a request can be refused. Messages name the cause and, where there is one, the fix.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("no command given: put it after `--`, e.g. `cagerun exec -- ls /workspace`")]
    MissingCommand,
    #[error("invalid size {input:?}: use a number with an optional k, m or g suffix (e.g. 512m)")]
    InvalidSize { input: String },
    #[error("{what} {value} is too small: the minimum is {min}")]
    TooSmall {
        what: &'static str,
        value: u64,
        min: u64,
    },
    #[error("invalid --env {input:?}: expected KEY=VALUE with a non-empty KEY without '='")]
    InvalidEnv { input: String },
    #[error("{file}:{line}: invalid env-file line {text:?}: expected KEY=VALUE or KEY")]
    InvalidEnvFileLine {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "working directory {0:?} is not absolute: use a path inside the sandbox such as /workspace"
    )]
    RelativeCwd(String),
    #[error(
        "invalid user {input:?}: use UID[:GID] or a user name known to the rootfs's /etc/passwd"
    )]
    InvalidUser { input: String },
    #[error(
        "unknown user {name:?}: the rootfs's /etc/passwd has no such user; use a numeric UID:GID"
    )]
    UnknownUser { name: String },
    #[error(
        "unknown group {name:?}: the rootfs's /etc/group has no such group; use a numeric GID"
    )]
    UnknownGroup { name: String },
    #[error("refusing to run the sandbox as root (uid or gid 0): a sandbox's user is never root, not even its namespace's; pick a non-zero --user")]
    HostRootUser,
    #[error("as root, sandboxes run under root's subordinate ids (never a real host id) and root has none of 65536: `usermod --add-subuids 1000000-1065535 --add-subgids 1000000-1065535 root`")]
    RootNeedsSubordinate,
    #[error("user {uid}:{gid} is outside the sandbox's ids (0..65535, mapped onto root's subordinate range)")]
    UserOutsideRange { uid: u32, gid: u32 },
    #[error("bind beneath {root:?}: {path:?} must be a relative path of plain names (no '..', '.' or leading '/')")]
    BindBeneath {
        root: std::path::PathBuf,
        path: std::path::PathBuf,
    },
    #[error("two mounts at {0}: a destination may be mounted once")]
    DuplicateMount(String),
    #[error("{0} has no command: give one after `--`")]
    NoCommand(String),
    #[error("service {0}: gpu = true, but this host has no GPU device nodes (/dev/nvidia*, /dev/dri/*): install the driver, or drop gpu")]
    NoGpu(String),
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// One problem in the file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CageError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for CageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

impl std::error::Error for CageError {}
