//! `cagerun init -- CMD`: pid 1 of a service container (like `docker run --init`). A
//! program that is pid 1 gets no default signal actions, so a plain `python3 -m http.server`
//! would ignore `down`'s SIGTERM and wait out the grace period; this init forwards every
//! signal to the command, reaps orphans, and exits with the command's status. The monitor
//! binds cagerun itself at [`INIT_PATH`] (on the container's fresh /dev tmpfs, so no image is
//! touched).

use std::ffi::CString;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{execvp, fork, ForkResult};

pub use cage_spec::service::INIT_PATH;

pub fn run(command: Vec<String>) -> Result<i32> {
    anyhow::ensure!(!command.is_empty(), "init: no command");
    let all = SigSet::all();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)?;
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .context("a NUL byte in the command")?;
    // SAFETY: the child only restores its signal mask and execs.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&all), None);
            let err = execvp(&argv[0], &argv).unwrap_err();
            eprintln!("cagerun init: {}: {err}", command[0]);
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe {
                libc::_exit(if err == nix::errno::Errno::ENOENT {
                    127
                } else {
                    126
                })
            }
        }
        ForkResult::Parent { child } => Ok(cage_sandbox::init::reap_and_forward(child)),
    }
}

/// Whether this cagerun can run in any root filesystem (statically linked: no interpreter).
pub fn self_is_static(exe: &std::path::Path) -> bool {
    use std::io::Read;
    // The interpreter path sits in the first page or two: read only those, not the binary.
    let mut head = Vec::with_capacity(8192);
    let read = std::fs::File::open(exe).and_then(|f| f.take(8192).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    !head.windows(7).any(|w| w == b"ld-linu") && !head.windows(6).any(|w| w == b"ld-mus")
}
