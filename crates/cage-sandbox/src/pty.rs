//! `-t`: a pseudo-terminal pair made on the host. The sandbox gets the replica as its
//! controlling terminal; the caller's own terminal never enters the sandbox, so TIOCSTI
//! there could only type into our relay.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::pty::{openpty, Winsize};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{Result, SandboxError};

pub struct Pty {
    pub primary: OwnedFd,
    pub replica: OwnedFd,
}

pub fn open() -> Result<Pty> {
    let size = window_size(libc::STDIN_FILENO);
    let p = openpty(size.as_ref(), None).map_err(|e| SandboxError::os("openpty", e))?;
    Ok(Pty {
        primary: p.master,
        replica: p.slave,
    })
}

pub fn window_size(fd: i32) -> Option<Winsize> {
    let mut ws: Winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the struct.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

pub fn copy_window_size(from: i32, to: &OwnedFd) {
    if let Some(ws) = window_size(from) {
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Puts the caller's terminal in raw mode; restores it when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
