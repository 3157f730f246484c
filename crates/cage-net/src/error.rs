//! Every way the cage network can fail, each naming the step and the cause.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no network interface named {0}")]
    NoSuchLink(String),
    #[error("the cage subnet has no free address left (at most 253 services)")]
    SubnetFull,
    #[error("{0} panicked")]
    Panicked(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// `error: its source: its source's source...`, as anyhow's `{:#}` writes a chain (for a log
/// line of an error that is not handed on).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
