//! The network namespace's `lo`, brought up with one ioctl (no netlink needed for this).

use crate::error::{Result, SandboxError};

pub fn up() -> Result<()> {
    // SAFETY: a throwaway socket and an ifreq on the stack.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(SandboxError::Setup(format!(
                "loopback: socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        let e = std::io::Error::last_os_error();
        libc::close(sock);
        if rc != 0 {
            return Err(SandboxError::Setup(format!(
                "loopback: bringing lo up: {e}"
            )));
        }
    }
    Ok(())
}
