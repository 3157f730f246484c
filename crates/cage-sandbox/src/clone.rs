//! clone3, the two ways this engine uses it: the sandbox's pid 1 (fork-like, into new
//! namespaces, see [`crate::launch`]) and pid 1's command (vfork-like: it borrows pid 1's
//! memory until `execve`, and is born in the sandbox's limits cgroup, see [`crate::init`]).

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd};

/// clone3's flag (Linux 5.7) that starts the child in the cgroup `CloneArgs::cgroup` names.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone3 without a stack of its own: returns twice, like fork (0 in the child).
///
/// # Safety
/// Without CLONE_VM the child gets a copy of this process; the caller must be
/// single-threaded and the child must end in `_exit` or `execve`.
pub unsafe fn clone3(args: &CloneArgs) -> std::io::Result<i32> {
    // SAFETY: per the caller's contract.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Start `child` as a new process that shares this one's memory until it execs (as
/// posix_spawn does: no page tables to copy, no copy-on-write faults, and this process
/// sleeps until then), optionally born in the cgroup `into` (a cgroup v2 directory).
/// Returns the child's pid; it reports to its parent with SIGCHLD.
///
/// Born in the cgroup, the child never runs outside it, and no process is moved: a move
/// (`cgroup.procs`) waits out an RCU grace period on cgroup v2 unless `favordynmods` is on.
///
/// # Safety
/// `child` runs on `stack` in this address space, beside this process's frozen frames: it
/// may only borrow, never free what this process owns, and must end in `execve` or
/// `_exit` (returning exits the child with the value). Signals should be blocked.
pub unsafe fn spawn_sharing_memory(
    stack: &mut [u8],
    into: Option<BorrowedFd>,
    child: &mut dyn FnMut() -> i32,
) -> std::io::Result<i32> {
    let base = stack.as_mut_ptr() as u64;
    // The ABI wants the stack 16-byte aligned at a call.
    let top = (base + stack.len() as u64) & !15;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: base,
        stack_size: top - base,
        ..Default::default()
    };
    if let Some(dir) = into {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    let mut child = child;
    let data = &mut child as *mut &mut dyn FnMut() -> i32 as *mut c_void;
    // SAFETY: per the caller's contract; the closure outlives the child's use of it
    // (CLONE_VFORK: we resume only after the child has exec'd or exited).
    let rc = unsafe { clone3_on_stack(&args, run_child, data) };
    if rc < 0 {
        Err(std::io::Error::from_raw_os_error(-rc as i32))
    } else {
        Ok(rc as i32)
    }
}

extern "C" fn run_child(data: *mut c_void) -> libc::c_int {
    // SAFETY: `data` is the `&mut dyn FnMut` that spawn_sharing_memory passed, alive while
    // the parent is frozen.
    let child = unsafe { &mut *(data as *mut &mut dyn FnMut() -> i32) };
    child()
}

/// The raw clone3 system call for a child with a stack of its own: the child starts at the
/// instruction after the call with a fresh stack pointer, so it must not return into this
/// function's frame. Here it calls `entry(data)` at once and exits with its result. (libc
/// has a wrapper like this for clone, none for clone3, which CLONE_INTO_CGROUP needs.)
/// Returns the child's pid, or -errno.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(
    args: &CloneArgs,
    entry: extern "C" fn(*mut c_void) -> libc::c_int,
    data: *mut c_void,
) -> i64 {
    let rc: i64;
    // SAFETY: the parent's path only loses rax, rcx and r11 (the syscall's clobbers). The
    // child's path runs on the new stack and never leaves the asm block: entry, then exit.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => rc,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") data,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    rc
}

/// Elsewhere than x86_64: no clone3 with a stack here yet; the caller falls back to
/// clone(2) and a move into the cgroup.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_on_stack(
    _args: &CloneArgs,
    _entry: extern "C" fn(*mut c_void) -> libc::c_int,
    _data: *mut c_void,
) -> i64 {
    -(libc::ENOSYS as i64)
}
