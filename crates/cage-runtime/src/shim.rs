//! The `docker` shim: cagerun answering to the name `docker` (or `podman`) inside a service
//! that has sandboxes (OpenClaw's sandbox backend runs `docker` or `podman` from PATH).
//!
//! It decides nothing. It sends its argv and the contents of the `--env-file`s it names (they
//! live in the service's private /tmp, which the broker never opens) as one
//! [`ShimRequest`], with its own stdin, stdout and stderr attached (SCM_RIGHTS), to the broker
//! over the socket bound into the service, and exits as the broker's [`ShimReply`] says. If
//! the shim dies, the broker sees the connection close and kills what it started for it.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use crate::ipc::{self, IpcError};
use crate::proto::{ShimReply, ShimRequest, MAX_SHIM_REQUEST};

/// Where the broker's directory appears inside the service (a tmpfs /dev of its own: no
/// image tree is touched); the shim itself is bound at `BROKER_DIR/docker` and
/// `BROKER_DIR/podman`.
pub const BROKER_DIR: &str = cage_spec::service::SHIM_DIR;
pub const SOCKET_NAME: &str = "docker.sock";
/// Another socket than `BROKER_DIR/SOCKET_NAME`, for running the shim where no
/// `/dev/.cagerun` is bound (tests of `cagerun broker` outside a pod). It widens nothing: the
/// shim runs as the caller's own code, and the caller can connect to any socket it reaches
/// without it; the broker decides.
pub const SOCKET_ENV: &str = "CAGERUN_BROKER_SOCKET";

/// The names the shim answers to: OpenClaw's sandbox backend is `docker` or `podman`, and
/// both speak the same CLI for the calls it makes; one parser, one broker, for both.
pub const NAMES: [&str; 2] = cage_spec::service::SHIM_NAMES;

/// Is this process the shim (invoked as `docker` or `podman`)?
pub fn invoked_as_shim() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| NAMES.iter().any(|name| n == *name))
        })
        .unwrap_or(false)
}

pub fn main() -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut req = ShimRequest {
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
    let path = std::env::var(SOCKET_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("{BROKER_DIR}/{SOCKET_NAME}"));
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
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    match ipc::send(&sock, &req, &stdio) {
        Ok(()) => {}
        Err(IpcError::TooLong { .. }) => {
            eprintln!("docker: the request is over {MAX_SHIM_REQUEST} bytes");
            return 125;
        }
        Err(e) => {
            eprintln!("docker: {:#}", anyhow::Error::from(e));
            return 125;
        }
    }
    match ipc::recv::<ShimReply>(&sock) {
        Ok(Some((ShimReply::Exit { code }, _))) => code,
        Ok(Some((ShimReply::Refused(why), _))) => {
            // The broker refused the call before it could answer on our stderr.
            eprintln!("{why}");
            125
        }
        Ok(None) => {
            eprintln!("docker: the sandbox broker went away (is the cage stopping?)");
            125
        }
        Err(e) => {
            eprintln!("docker: {:#}", anyhow::Error::from(e));
            125
        }
    }
}
