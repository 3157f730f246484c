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
    #[error("refusing to run the sandbox as host root: as root, cagerun maps the sandbox user to the same unprivileged host id, so --user 0 would be uid 0 on the host; pick a non-zero --user")]
    HostRootUser,
    #[error("bind beneath {root:?}: {path:?} must be a relative path of plain names (no '..', '.' or leading '/')")]
    BindBeneath {
        root: std::path::PathBuf,
        path: std::path::PathBuf,
    },
    #[error("two mounts at {0}: a destination may be mounted once")]
    DuplicateMount(String),
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}
