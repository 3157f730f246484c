//! Resource limits. Never raised above the current hard limit (hosts where root lacks
//! CAP_SYS_RESOURCE refuse that): a request above it is clamped to it.

use crate::error::{Result, SandboxError};

/// (resource, soft, hard)
pub type Rlimit = (libc::__rlimit_resource_t, u64, u64);

pub fn apply(limits: &[Rlimit]) -> Result<()> {
    for &(resource, soft, hard) in limits {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on a stack struct.
        unsafe { libc::getrlimit(resource, &mut cur) };
        let hard = hard.min(cur.rlim_max);
        let soft = soft.min(hard);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        if unsafe { libc::setrlimit(resource, &new) } != 0 {
            return Err(SandboxError::Setup(format!(
                "setrlimit({resource}, {soft}, {hard}): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
