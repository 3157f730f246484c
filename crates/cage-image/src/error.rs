//! Every way the store, a pull or an unpack can fail, each naming what and why.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// The environment variable the CLI reads a registry timeout from (seconds); named in the
/// timeout error, so it lives here.
pub const TIMEOUT_ENV: &str = "CAGERUN_REGISTRY_TIMEOUT";

/// The way `cagerun image import` brings an image onto a host that cannot reach a registry.
const AIR_GAPPED: &str = "on a host without access to it, bring the image in with `cagerun image import oci:DIR` or `docker-archive:FILE`";

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
    #[error("the image's layers write more than the {limit}-byte limit on one image's files; if the image really is that large, raise the limit with {}=BYTES", crate::unpack::MAX_IMAGE_BYTES_ENV)]
    TooLarge { limit: u64 },
    #[error("layer refused: the {kind} entry at byte {offset} of the uncompressed layer claims {size} bytes, over the {limit}-byte limit on tar metadata entries (real long names and PAX headers are a few KiB); the image is malformed or hostile")]
    MetadataTooLarge {
        offset: u64,
        kind: &'static str,
        size: u64,
        limit: u64,
    },
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
    #[error("cannot reach registry {registry}: {why}; {AIR_GAPPED}")]
    Unreachable { registry: String, why: Unreachable },
    #[error("{} answered 401 Unauthorized for repository {}, {}: {}; if the repository is private, log in first: `cagerun login {}` (a repository that does not exist may also answer 401)", .0.registry, .0.repository, .0.tag, .0.sent, .0.registry)]
    Unauthorized(Box<Wanted>),
    #[error("{} denied pull access to repository {}, {} ({status}): {}; ask the repository's owner for pull access, or `cagerun login {}` as a user who has it", at.registry, at.repository, at.tag, at.sent, at.registry)]
    Denied {
        at: Box<Wanted>,
        status: &'static str,
    },
    #[error("{registry} rejected the credentials of {user} (from {from}){}; log in again: `cagerun login {registry}`", message_suffix(message))]
    CredentialsRejected {
        registry: String,
        user: String,
        from: String,
        message: String,
    },
    #[error("{registry} has no repository {repository} (404 NAME_UNKNOWN): check the image name")]
    NoSuchRepository {
        registry: String,
        repository: String,
    },
    #[error("{}/{} has no {} (404 MANIFEST_UNKNOWN): check the tag (`skopeo list-tags docker://{}/{}` lists them)", .0.registry, .0.repository, .0.tag, .0.registry, .0.repository)]
    NoSuchTag(Box<Wanted>),
    #[error(
        "{registry} answered {status} for repository {repository}{}",
        message_suffix(message)
    )]
    RegistryStatus {
        registry: String,
        repository: String,
        status: String,
        message: String,
    },
    #[error("{}: the credentials for {registry} are kept by the credential helper docker-credential-{helper}, and cagerun does not run credential helpers: log in with `cagerun login {registry}` (its auth.json is read first), or point REGISTRY_AUTH_FILE at an auth.json whose \"auths\" holds them", path.display())]
    CredentialHelper {
        path: PathBuf,
        registry: String,
        helper: String,
    },
    #[error("{}: {why}", path.display())]
    AuthFile { path: PathBuf, why: String },
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Why a registry could not be reached, each with what to check.
#[derive(Debug)]
pub enum Unreachable {
    /// The name does not resolve.
    Dns {
        host: String,
        detail: String,
    },
    /// Nothing listens at the address.
    Refused {
        host: String,
    },
    /// The TLS handshake failed (most often: a certificate this host does not trust).
    Tls {
        detail: String,
    },
    /// No answer in time.
    Timeout {
        after: Duration,
    },
    Other(String),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Dns { host, detail } => write!(
                f,
                "the name {host} does not resolve (DNS lookup failed: {detail}); check the name and this host's DNS (/etc/resolv.conf, /etc/hosts)"
            ),
            Unreachable::Refused { host } => write!(
                f,
                "connection refused: nothing listens at {host}; check the registry's host and port"
            ),
            Unreachable::Tls { detail } => write!(
                f,
                "the TLS handshake failed: {detail}; if the registry uses your own CA, add it to this host's trust store (/usr/local/share/ca-certificates, then update-ca-certificates)"
            ),
            Unreachable::Timeout { after } => write!(
                f,
                "no answer within {}s (timed out); check the network path to it, or allow more time with {}=SECONDS",
                after.as_secs_f64(),
                TIMEOUT_ENV
            ),
            Unreachable::Other(detail) => write!(f, "{detail}"),
        }
    }
}

/// What a pull asked for, of whom, and whether it said who it is.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// As the user names it (`docker.io`).
    pub registry: String,
    pub repository: String,
    pub tag: TagOrDigest,
    pub sent: Sent,
}

/// What a pull asked for: `tag 1.2` or `digest sha256:…`.
#[derive(Debug, Clone)]
pub struct TagOrDigest(pub String);

impl fmt::Display for TagOrDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "digest {}", self.0)
        } else {
            write!(f, "tag {}", self.0)
        }
    }
}

/// Whether a request carried credentials, and whose.
#[derive(Debug, Clone)]
pub enum Sent {
    Nothing,
    Credentials { user: String, from: String },
}

impl fmt::Display for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sent::Nothing => write!(f, "no credentials were sent (none are filed for it)"),
            Sent::Credentials { user, from } => {
                write!(f, "the credentials of {user} (from {from}) were sent")
            }
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io(
    path: impl Into<PathBuf>,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, what, source }
}
