//! The `docker` shim: cagerun answering to the name `docker` inside a service that has
//! sandboxes (OpenClaw's sandbox backend runs `docker` from PATH).
//!
//! It decides nothing. It sends its argv, the contents of the `--env-file`s it names (they
//! live in the service's private /tmp, which the broker never opens) and its own stdin,
//! stdout and stderr (SCM_RIGHTS) to the broker over the socket bound into the service, and
//! exits with the code the broker answers. If the shim dies, the broker sees the connection
//! close and kills what it started for it.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

/// Where the broker's directory appears inside the service (a tmpfs /dev of its own: no
/// image tree is touched); the shim itself is bound at `BROKER_DIR/docker`.
pub const BROKER_DIR: &str = "/dev/.cagerun";
pub const SOCKET_NAME: &str = "docker.sock";
/// Upper bound on one request (argv + env files).
pub const MAX_REQUEST: usize = 256 << 10;

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Request {
    pub argv: Vec<String>,
    /// `--env-file` path → its contents, read by the shim.
    pub files: BTreeMap<String, String>,
}

/// Is this process the shim (invoked as `docker`)?
pub fn invoked_as_docker() -> bool {
    std::env::args_os()
        .next()
        .map(|a| std::path::Path::new(&a).file_name() == Some(std::ffi::OsStr::new("docker")))
        .unwrap_or(false)
}

pub fn main() -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut req = Request {
        argv,
        ..Default::default()
    };
    let mut it = req.argv.iter();
    while let Some(a) = it.next() {
        let file = match a.strip_prefix("--env-file=") {
            Some(f) => Some(f.to_string()),
            None if a == "--env-file" => it.next().cloned(),
            None => None,
        };
        if let Some(f) = file {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    req.files.insert(f, text);
                }
                Err(e) => {
                    eprintln!("docker: open {f}: {e}");
                    return 125;
                }
            }
        }
    }
    let path = format!("{BROKER_DIR}/{SOCKET_NAME}");
    let sock = match nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|s| {
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &nix::sys::socket::UnixAddr::new(path.as_str())?,
        )
        .map(|_| s)
    }) {
        Ok(s) => UnixStream::from(s),
        Err(e) => {
            // OpenClaw recognises docker's own wording for a missing daemon.
            eprintln!("Cannot connect to the Docker daemon at unix://{path}. Is the docker daemon running? (cagerun's sandbox broker: {e})");
            return 1;
        }
    };
    let body = serde_json::to_vec(&req).unwrap_or_default();
    if body.len() > MAX_REQUEST {
        eprintln!("docker: the request is over {MAX_REQUEST} bytes");
        return 125;
    }
    if let Err(e) = crate::ipc::send_fds(&sock, &body, &[0, 1, 2]) {
        eprintln!("docker: {e:#}");
        return 125;
    }
    match crate::ipc::recv_fds(&sock, 1024) {
        Ok(Some((reply, _))) => {
            let reply = String::from_utf8_lossy(&reply);
            if let Some(why) = reply.strip_prefix("error ") {
                // The broker refused the call before it could answer on our stderr.
                eprintln!("{why}");
                return 125;
            }
            reply
                .strip_prefix("exit ")
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(125)
        }
        Ok(None) => {
            eprintln!("docker: the sandbox broker went away (is the cage stopping?)");
            125
        }
        Err(e) => {
            eprintln!("docker: {e:#}");
            125
        }
    }
}
