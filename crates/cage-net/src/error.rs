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
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}
