//! Internet mode rootless: slirp4netns, a user-mode TCP/IP stack, with its tap `uplink` in the
//! cage's router namespace. Chosen over pasta by measurement (DESIGN.md: Debian 12's pasta tap
//! path stalls; slirp4netns 1.2 is steady).
//!
//! This module says how it is run ([`SlirpRequest::args`]) and reads what it answers
//! ([`wait_ready`], [`did_not_start`]); the engine spawns it as its own child, so that it ends
//! with the supervisor (`--exit-fd`), and stops it. Its guard is [`crate::firewall::guard`].
//!
//! Internet means the internet: it runs with `--disable-host-loopback` (10.0.2.2 would be the
//! host's 127.0.0.1) and without an API socket (no port handler).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::topology;

/// The tool's name (found by [`crate::tools::find`]).
pub const SLIRP4NETNS: &str = "slirp4netns";

#[derive(Debug, thiserror::Error)]
pub enum SlirpError {
    #[error("internet mode rootless needs slirp4netns: apt-get install slirp4netns")]
    Missing,
    #[error("slirp4netns cannot open /dev/net/tun ({0}): rootless internet mode needs it usable by you, as Debian installs it: sudo chmod 0666 /dev/net/tun")]
    NoTun(String),
    #[error("slirp4netns did not start: {0}")]
    DidNotStart(String),
}

/// The slirp4netns binary.
pub fn binary() -> Result<PathBuf, SlirpError> {
    crate::tools::find(SLIRP4NETNS).ok_or(SlirpError::Missing)
}

/// How slirp4netns is to run for one cage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlirpRequest {
    /// The holder's user namespace (slirp4netns joins it to configure the tap).
    pub userns: PathBuf,
    /// The router namespace, where the tap goes.
    pub netns: PathBuf,
    /// The tap's name there.
    pub iface: String,
    pub mtu: u32,
    /// The child's descriptor whose closing ends slirp4netns.
    pub exit_fd: i32,
    /// The child's descriptor on which slirp4netns writes "1" once the tap is configured.
    pub ready_fd: i32,
}

impl SlirpRequest {
    /// The cage's holder `pid`; the engine puts the exit and ready pipes at `exit_fd` and
    /// `ready_fd` of the child.
    pub fn for_holder(pid: i32, exit_fd: i32, ready_fd: i32) -> Self {
        SlirpRequest {
            userns: PathBuf::from(format!("/proc/{pid}/ns/user")),
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            iface: topology::UPLINK_IFACE.to_string(),
            mtu: topology::MTU,
            exit_fd,
            ready_fd,
        }
    }

    /// slirp4netns's arguments: configured (address, route, DNS), no host loopback.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--configure".into(),
            format!("--mtu={}", self.mtu),
            // 10.0.2.2 would be the host's 127.0.0.1.
            "--disable-host-loopback".into(),
            format!("--exit-fd={}", self.exit_fd),
            format!("--ready-fd={}", self.ready_fd),
            format!("--userns-path={}", self.userns.display()),
            "--netns-type=path".into(),
            self.netns.display().to_string(),
            self.iface.clone(),
        ]
    }
}

/// Wait for slirp4netns to say it is ready on `ready` (the read end of its ready pipe): true
/// once it has, false if it ended first (EOF).
pub fn wait_ready(ready: OwnedFd) -> bool {
    let mut ready = std::fs::File::from(ready);
    let mut buf = [0u8; 1];
    ready.read(&mut buf).unwrap_or(0) > 0
}

/// Why slirp4netns ended before it was ready, from what it wrote on stderr.
pub fn did_not_start(stderr: &str) -> SlirpError {
    let stderr = stderr.trim().to_string();
    if stderr.contains("/dev/net/tun") {
        SlirpError::NoTun(stderr)
    } else {
        SlirpError::DidNotStart(stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_for_a_holder() {
        let args = SlirpRequest::for_holder(42, 3, 4).args();
        assert_eq!(
            args,
            [
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--exit-fd=3",
                "--ready-fd=4",
                "--userns-path=/proc/42/ns/user",
                "--netns-type=path",
                "/proc/42/ns/net",
                "uplink",
            ]
        );
    }

    #[test]
    fn a_missing_tun_is_named() {
        let e = did_not_start("open(\"/dev/net/tun\"): Permission denied\n");
        assert!(matches!(e, SlirpError::NoTun(_)), "{e}");
        assert!(e.to_string().contains("sudo chmod 0666 /dev/net/tun"));
        assert_eq!(
            did_not_start(" boom\n").to_string(),
            "slirp4netns did not start: boom"
        );
    }

    #[test]
    fn ready_or_not() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"1").unwrap();
        assert!(wait_ready(r));
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert!(!wait_ready(r));
    }
}
