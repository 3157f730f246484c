//! The errors users hit, typed, and the one place that maps an error to cagerun's exit code.
//!
//! The engine builds its errors with `anyhow` context chains (what it was doing, then why);
//! a case a user hits and a script may want to tell apart is an [`Error`] somewhere in that
//! chain. [`exit_code`] looks for one; anything else is cagerun's own failure, 125, as docker
//! and podman use for "the runtime failed" (the command's own codes pass through untouched).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Exit code for cagerun's own errors (bad input, setup failure), as docker and podman use.
pub const EXIT_CAGERUN_ERROR: u8 = 125;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service {service}: port {addr} is already in use on this host: stop what listens there (`ss -ltnp 'sport = :{}'`) or publish another port in {}", addr.port(), config.display())]
    PortInUse {
        service: String,
        addr: SocketAddr,
        config: PathBuf,
    },
    #[error("services need subordinate ids (65536 of them) and newuidmap/newgidmap: `sudo apt install uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`")]
    NoSubordinateIds { user: String },
    #[error("the cgroup v1 hierarchy {} has no {subtree} delegated to you: run `sudo cagerun setup-cgroups --user {user}` once (per boot)", hierarchy.display())]
    CgroupNotDelegatedV1 {
        hierarchy: PathBuf,
        subtree: String,
        user: String,
    },
    #[error("no delegated cgroup v2 subtree with the memory and pids controllers: run cagerun under systemd's user delegation (`systemd-run --user --scope -p Delegate=yes cagerun up`), or set {parent_env}")]
    CgroupNotDelegatedV2 { parent_env: &'static str },
    #[error("cgroup v2 limits need a delegated cgroup, and there is no user D-Bus to ask systemd for one (DBUS_SESSION_BUS_ADDRESS is unset and $XDG_RUNTIME_DIR/bus is missing): log in through pam_systemd (ssh, a console login, `machinectl shell {user}@`), or run `sudo loginctl enable-linger {user}` once, or run cagerun as `systemd-run --user --scope -p Delegate=yes cagerun ...`")]
    NoUserBus { user: String },
    #[error("cage {cage} is not up ({hint})")]
    NotUp { cage: String, hint: &'static str },
    #[error("cage {cage} is already up (`cagerun ps`, `cagerun down`)")]
    AlreadyUp { cage: String },
    #[error("no space left on device in {what} {}: free space there, or choose another place with {flag} DIR; nothing was left behind", dir.display())]
    DiskFull {
        dir: PathBuf,
        what: &'static str,
        flag: &'static str,
    },
}

impl Error {
    /// The exit code of this case. All are cagerun's own failures today: 125, so that a
    /// script tells them from the command's codes; a case that needs its own code gets it here.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::PortInUse { .. }
            | Error::NoSubordinateIds { .. }
            | Error::CgroupNotDelegatedV1 { .. }
            | Error::CgroupNotDelegatedV2 { .. }
            | Error::NoUserBus { .. }
            | Error::NotUp { .. }
            | Error::AlreadyUp { .. }
            | Error::DiskFull { .. } => EXIT_CAGERUN_ERROR,
        }
    }
}

/// The exit code for an error that ended a command: the first [`Error`] in its chain decides,
/// anything else is [`EXIT_CAGERUN_ERROR`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>())
        .map(Error::exit_code)
        .unwrap_or(EXIT_CAGERUN_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_error_deep_in_the_chain_decides_the_code() {
        let e = anyhow::Error::new(Error::AlreadyUp { cage: "c".into() }).context("starting");
        assert_eq!(exit_code(&e), EXIT_CAGERUN_ERROR);
        assert!(format!("{e:#}").contains("cage c is already up"));
    }

    #[test]
    fn an_untyped_error_is_cagerun_s_own_failure() {
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 125);
    }

    #[test]
    fn port_in_use_names_the_port_and_the_fix() {
        let e = Error::PortInUse {
            service: "gateway".into(),
            addr: "127.0.0.1:18789".parse().unwrap(),
            config: "config/cage.toml".into(),
        };
        let text = e.to_string();
        assert!(text.contains("port 127.0.0.1:18789 is already in use"));
        assert!(text.contains("sport = :18789"));
        assert!(text.contains("config/cage.toml"));
    }
}
