//! File descriptors: nothing the caller had open may reach the sandbox.

use std::os::fd::RawFd;

/// Close every descriptor >= 3 except `keep`.
pub fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|fd| *fd >= 3).collect();
    keep.sort_unstable();
    let mut next: u32 = 3;
    for fd in keep {
        if fd as u32 > next {
            close_range(next, fd as u32 - 1);
        }
        next = fd as u32 + 1;
    }
    close_range(next, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes descriptors; no memory is touched.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if rc != 0 {
        // Kernels before 5.9: walk the table.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.max(1024) as u32;
        for fd in first..=last.min(max) {
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// Mark every descriptor >= 3 close-on-exec (the error pipe must stay open until exec).
pub fn cloexec_from_3() {
    // SAFETY: flags only.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}
