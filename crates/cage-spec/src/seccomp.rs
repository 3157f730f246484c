//! The sandbox's seccomp profile: an allow-list derived from Docker's default profile
//! (moby/profiles `seccomp/default.json` v0.2.3, what moby vendors), stricter where cagerun
//! refuses more. Anything not listed stays closed, including syscalls newer kernels add.
//!
//! # How each answer is written in the OCI `LinuxSeccomp`
//! - `defaultAction: SCMP_ACT_ERRNO`, `defaultErrnoRet: 38` (ENOSYS): a syscall the profile
//!   does not name (newer than its lists, or a number no kernel assigns) is "not
//!   implemented", as on an older kernel, so libc falls back. runc does the same for syscalls
//!   newer than a profile; here it is written in the profile, so every engine does it.
//! - One `SCMP_ACT_ALLOW` entry: [`ALLOWED_SYSCALLS`].
//! - One `SCMP_ACT_ERRNO` entry with `errnoRet: 1` (EPERM): [`DENIED_SYSCALLS`], every other
//!   syscall the profile knows. Refused on purpose is "not permitted".
//! - `clone3` is named nowhere: it gets the default ENOSYS and libc falls back to `clone`,
//!   whose flags sit in a register a filter can read ([`ENOSYS_SYSCALLS`]).
//! - [`ARGUMENT_FILTERED`] calls have only conditional entries: ERRNO entries for what is
//!   refused (namespace flags, TIOCSTI, packet/raw/ALG/vsock sockets, netlink other than
//!   routing), then ALLOW entries for the rest. A call that no entry matches (personality
//!   values other than Docker's five, arguments with junk in the upper 32 bits) gets the
//!   default ENOSYS.
//!
//! # Written so that both engines answer alike
//! The per-command engine compiles this with its own cBPF compiler (`cage_sandbox::seccomp`),
//! the services engine with libcontainer and libseccomp. The profile keeps to what both
//! evaluate the same way (the unit tests below check each rule):
//! 1. A syscall is named either unconditionally or only in conditional entries: libseccomp
//!    lets an unconditional rule replace every conditional rule of its syscall.
//! 2. Refusals come first. libseccomp tries a syscall's rules in the order of their first
//!    comparison (higher argument first, then `==`/masked `==` before `<`/`<=` before
//!    `>`/`>=`; libseccomp 2.5 `db.c`), the first that matches answers; cage-sandbox stacks
//!    one filter per answer and the kernel lets ERRNO beat ALLOW. So refusals compare with
//!    `==` or masked `==`, and the ALLOW entries that catch the rest compare the same
//!    argument with `<`, `<=` or `>=`. Refusals with different errnos never overlap.
//! 3. An entry compares each argument at most once: runc and libcontainer split repeated
//!    indexes into separate rules (OR), cage-sandbox ANDs them.
//! 4. A masked compare has `value == valueTwo` (all these bits set). libcontainer 0.7 passes
//!    `valueTwo` as the mask and `value` as the datum, the reverse of runc and of libseccomp's
//!    reading of the OCI fields; a symmetric compare reads the same either way.
//! 5. Only names that exist on the native architecture are written. A name libseccomp is too
//!    old to know is skipped by libcontainer: that call gets the default ENOSYS there.
//!
//! # Arguments the kernel reads as 32 bits
//! `ioctl`'s request, `socket`'s family and `clone`'s flags are 32-bit to the kernel, but the
//! filter sees 64. Refusals test the low 32 bits (masked) or an exact 64-bit value that the
//! ALLOW side then limits to well-formed values: a 32-bit value zero-extended (`<=
//! 0xffffffff`) or sign-extended (`>= 0xffffffff80000000`, how musl passes an `int` request
//! with bit 31 set). A request with other upper bits, which could hide TIOCSTI in its low
//! half, matches nothing and is refused.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::SpecError;

/// Allowed without looking at arguments: Docker's default allow-list (its unconditional
/// entry, plus `arch_prctl`, which it allows on amd64), restricted to names that exist on
/// x86_64 or aarch64, minus [`DENIED_SYSCALLS`] and [`ARGUMENT_FILTERED`].
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Refused with EPERM: every syscall the profile knows that is neither allowed nor
/// argument-filtered (nor clone3).
pub const DENIED_SYSCALLS: &[&str] = &[
    // No sandboxed tool needs these and they widen the kernel's attack surface or reach
    // outside the sandbox (mounts, namespaces, tracing, keys, BPF, io_uring, modules,
    // clocks, reboot). Docker allows a few (clock_adjtime, name_to_handle_at) or allows them
    // with a capability; cagerun refuses them regardless.
    "acct",
    "add_key",
    "bpf",
    "chroot",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    // Docker's default allows these; cagerun does not: an LDT to build 16-bit or odd
    // segments from (a long line of kernel bugs), memory hidden even from the kernel, and the
    // host's mount tree read by id from inside any mount namespace.
    "listmount",
    "memfd_secret",
    "modify_ldt",
    "statmount",
    // Not in Docker's default either: NUMA policy, LSM attributes, newer mount and
    // namespace calls, inode attributes by path (Linux 6.17), uprobes, and numbers the
    // kernel reserves but never implemented.
    "afs_syscall",
    "file_getattr",
    "file_setattr",
    "get_mempolicy",
    "getpmsg",
    "listns",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "open_tree_attr",
    "putpmsg",
    "security",
    "set_mempolicy_home_node",
    "tuxcall",
    "uprobe",
    "vserver",
];

/// Allowed or refused by their arguments (conditional entries only).
pub const ARGUMENT_FILTERED: &[&str] = &["clone", "ioctl", "personality", "socket"];

/// Known, refused, and left unnamed so that they get the default ENOSYS: `clone3` passes its
/// flags in memory, which seccomp cannot read; ENOSYS makes libc fall back to `clone`.
pub const ENOSYS_SYSCALLS: &[&str] = &["clone3"];

/// Names of the lists above that x86_64 has and aarch64 does not (legacy calls that the
/// generic syscall table replaced with their `*at`/`p*` forms, and x86 specifics).
pub const X86_64_ONLY: &[&str] = &[
    "_sysctl",
    "access",
    "afs_syscall",
    "alarm",
    "arch_prctl",
    "chmod",
    "chown",
    "creat",
    "create_module",
    "dup2",
    "epoll_create",
    "epoll_ctl_old",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "fork",
    "futimesat",
    "get_kernel_syms",
    "get_thread_area",
    "getdents",
    "getpgrp",
    "getpmsg",
    "inotify_init",
    "ioperm",
    "iopl",
    "lchown",
    "link",
    "lstat",
    "mkdir",
    "mknod",
    "modify_ldt",
    "open",
    "pause",
    "pipe",
    "poll",
    "putpmsg",
    "query_module",
    "readlink",
    "rename",
    "rmdir",
    "security",
    "select",
    "set_thread_area",
    "signalfd",
    "stat",
    "symlink",
    "sysfs",
    "time",
    "tuxcall",
    "unlink",
    "uprobe",
    "uretprobe",
    "uselib",
    "ustat",
    "utime",
    "utimes",
    "vfork",
    "vserver",
];

/// Namespace flags that `clone` must not carry (`unshare` and `setns` are refused outright).
/// CLONE_NEWTIME shares its bit with the exit signal in `clone`, where 0x80 is no valid
/// signal: refused all the same.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
    0x0000_0080, // CLONE_NEWTIME
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const EPROTONOSUPPORT: u32 = 93;

/// The largest 32-bit value zero-extended, and the smallest sign-extended (bit 31 set).
const U32_MAX: u64 = 0xffff_ffff;
const I32_MIN_SIGN_EXTENDED: u64 = 0xffff_ffff_8000_0000;

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_NETLINK: u64 = 16;
const AF_PACKET: u64 = 17;
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
/// One past the highest address family (AF_MCTP, 45) of Linux 6.x: newer families are
/// refused until listed, as Docker refuses those it does not know.
const AF_MAX: u64 = 46;
/// SOCK_RAW is 3; `type & 3 == 3` also matches 7, 11 and 15, which no socket type uses.
const SOCK_RAW: u64 = 3;
const NETLINK_ROUTE: u64 = 0;
/// personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 variants, the query.
const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn compare(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSeccompArg, SpecError> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(two) = value_two {
        b = b.value_two(two);
    }
    Ok(b.build()?)
}

fn eq(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(index, LinuxSeccompOperator::ScmpCmpEq, value, None)
}

fn ne(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(index, LinuxSeccompOperator::ScmpCmpNe, value, None)
}

fn lt(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(index, LinuxSeccompOperator::ScmpCmpLt, value, None)
}

fn le(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(index, LinuxSeccompOperator::ScmpCmpLe, value, None)
}

fn ge(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(index, LinuxSeccompOperator::ScmpCmpGe, value, None)
}

/// `arg & bits == bits`, written so that both readings of the masked fields agree.
fn all_bits_set(index: usize, bits: u64) -> Result<LinuxSeccompArg, SpecError> {
    compare(
        index,
        LinuxSeccompOperator::ScmpCmpMaskedEq,
        bits,
        Some(bits),
    )
}

fn entry(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall, SpecError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if let Some(errno) = errno {
        b = b.errno_ret(errno);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    Ok(b.build()?)
}

fn allow(name: &str, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, SpecError> {
    entry(&[name], LinuxSeccompAction::ScmpActAllow, None, args)
}

fn refuse(name: &str, errno: u32, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, SpecError> {
    entry(&[name], LinuxSeccompAction::ScmpActErrno, Some(errno), args)
}

/// ALLOW entries for a 32-bit argument that no refusal matched: zero- or sign-extended.
fn allow_well_formed_u32(name: &str, index: usize) -> Result<Vec<LinuxSyscall>, SpecError> {
    Ok(vec![
        allow(name, vec![le(index, U32_MAX)?])?,
        allow(name, vec![ge(index, I32_MIN_SIGN_EXTENDED)?])?,
    ])
}

fn on_native_arch(name: &&str) -> bool {
    !(cfg!(target_arch = "aarch64") && X86_64_ONLY.contains(name))
}

/// The profile for per-command sandboxes and services. Built once per process (the broker
/// renders one for every tool call) and copied after.
pub fn sandbox_profile() -> Result<LinuxSeccomp, SpecError> {
    static PROFILE: std::sync::OnceLock<LinuxSeccomp> = std::sync::OnceLock::new();
    if let Some(profile) = PROFILE.get() {
        return Ok(profile.clone());
    }
    let profile = build_sandbox_profile()?;
    Ok(PROFILE.get_or_init(|| profile).clone())
}

fn build_sandbox_profile() -> Result<LinuxSeccomp, SpecError> {
    let allowed: Vec<&str> = ALLOWED_SYSCALLS
        .iter()
        .copied()
        .filter(on_native_arch)
        .collect();
    let denied: Vec<&str> = DENIED_SYSCALLS
        .iter()
        .copied()
        .filter(on_native_arch)
        .collect();
    let mut syscalls = vec![
        entry(&allowed, LinuxSeccompAction::ScmpActAllow, None, vec![])?,
        entry(
            &denied,
            LinuxSeccompAction::ScmpActErrno,
            Some(EPERM),
            vec![],
        )?,
    ];

    // clone: no namespace flag.
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(refuse("clone", EPERM, vec![all_bits_set(0, *flag)?])?);
    }
    syscalls.extend(allow_well_formed_u32("clone", 0)?);

    // ioctl: no terminal input injection (TIOCSTI) or console control (TIOCLINUX).
    for request in [TIOCSTI, TIOCLINUX] {
        syscalls.push(refuse("ioctl", EPERM, vec![eq(1, request)?])?);
    }
    syscalls.extend(allow_well_formed_u32("ioctl", 1)?);

    // socket: no packet, AF_ALG or vsock sockets, no raw IP, netlink for routing only.
    for family in [AF_PACKET, AF_ALG, AF_VSOCK] {
        syscalls.push(refuse("socket", EPERM, vec![eq(0, family)?])?);
    }
    for family in [AF_INET, AF_INET6] {
        syscalls.push(refuse(
            "socket",
            EPERM,
            vec![eq(0, family)?, all_bits_set(1, SOCK_RAW)?],
        )?);
    }
    // Netlink beyond routing (audit, ...) answers "protocol not supported", as a kernel
    // without it would: programs that use audit when it is there (useradd, su) carry on
    // instead of aborting, while the socket is refused all the same.
    syscalls.push(refuse(
        "socket",
        EPROTONOSUPPORT,
        vec![eq(0, AF_NETLINK)?, ne(2, NETLINK_ROUTE)?],
    )?);
    syscalls.push(allow("socket", vec![lt(0, AF_MAX)?])?);

    // personality: Docker's values only; any other matches nothing (ENOSYS).
    for value in PERSONALITY_ALLOWED {
        syscalls.push(allow("personality", vec![eq(0, *value)?])?);
    }

    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(ENOSYS)
        .architectures(vec![native_arch()])
        .syscalls(syscalls)
        .build()?)
}

fn native_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::ScmpArchAarch64
    } else {
        Arch::ScmpArchX86_64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn profile_entries() -> Vec<LinuxSyscall> {
        sandbox_profile().unwrap().syscalls().clone().unwrap()
    }

    fn unconditional(action: LinuxSeccompAction, errno: Option<u32>) -> BTreeSet<String> {
        profile_entries()
            .iter()
            .filter(|s| s.args().is_none() && s.action() == action && s.errno_ret() == errno)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn the_lists_do_not_overlap_and_name_each_call_once() {
        let lists = [
            ALLOWED_SYSCALLS,
            DENIED_SYSCALLS,
            ARGUMENT_FILTERED,
            ENOSYS_SYSCALLS,
        ];
        let mut seen = BTreeSet::new();
        for name in lists.iter().flat_map(|l| l.iter()) {
            assert!(seen.insert(*name), "{name} is listed twice");
        }
        for name in X86_64_ONLY {
            assert!(
                seen.contains(name),
                "{name} is in X86_64_ONLY but in no list"
            );
        }
    }

    #[test]
    fn nothing_denied_is_allowed_and_the_new_refusals_are_there() {
        for name in DENIED_SYSCALLS {
            assert!(
                !ALLOWED_SYSCALLS.contains(name),
                "{name} is denied and allowed"
            );
        }
        for name in [
            "modify_ldt",
            "memfd_secret",
            "listmount",
            "statmount",
            "clone3",
        ] {
            assert!(
                !ALLOWED_SYSCALLS.contains(&name),
                "{name} must not be allowed"
            );
        }
        let eperm = unconditional(LinuxSeccompAction::ScmpActErrno, Some(EPERM));
        for name in [
            "modify_ldt",
            "memfd_secret",
            "listmount",
            "statmount",
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "keyctl",
            "pivot_root",
            "userfaultfd",
            "perf_event_open",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ] {
            if on_native_arch(&name) {
                assert!(eperm.contains(name), "{name} must be refused with EPERM");
            }
        }
    }

    #[test]
    fn unknown_calls_and_clone3_get_the_default_enosys() {
        let p = sandbox_profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(ENOSYS));
        let named: BTreeSet<String> = profile_entries()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        assert!(!named.contains("clone3"), "clone3 is left to the default");
        let allowed = unconditional(LinuxSeccompAction::ScmpActAllow, None);
        for name in ["read", "write", "execve", "futex", "getrandom"] {
            assert!(allowed.contains(name), "{name} must be allowed");
        }
    }

    #[test]
    fn only_native_names_are_written() {
        let named: BTreeSet<String> = profile_entries()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        for name in X86_64_ONLY {
            assert_eq!(
                named.contains(*name),
                cfg!(target_arch = "x86_64"),
                "{name}"
            );
        }
    }

    /// Rule 1: libseccomp lets an unconditional rule replace its syscall's conditional ones.
    #[test]
    fn a_call_is_named_unconditionally_or_only_conditionally() {
        let entries = profile_entries();
        let names = |conditional: bool| -> BTreeSet<String> {
            entries
                .iter()
                .filter(|s| s.args().is_some() == conditional)
                .flat_map(|s| s.names().clone())
                .collect()
        };
        let (plain, conditional) = (names(false), names(true));
        assert_eq!(
            conditional,
            ARGUMENT_FILTERED.iter().map(|s| s.to_string()).collect()
        );
        assert!(plain.is_disjoint(&conditional));
        assert!(entries
            .iter()
            .all(|s| s.args().is_none() || s.names().len() == 1));
    }

    /// Rules 3 and 4: one comparison per argument and entry, symmetric masked compares.
    #[test]
    fn every_comparison_reads_the_same_in_libseccomp_and_libcontainer() {
        for s in profile_entries() {
            let args = s.args().clone().unwrap_or_default();
            let indexes: BTreeSet<usize> = args.iter().map(|a| a.index()).collect();
            assert_eq!(
                indexes.len(),
                args.len(),
                "{s:?} compares an argument twice"
            );
            for a in &args {
                if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    assert_eq!(Some(a.value()), a.value_two(), "{s:?}: asymmetric mask");
                }
            }
        }
    }

    /// Where libseccomp puts a rule among its syscall's rules: by the first comparison of its
    /// chain (lowest argument), higher argument first, then `==`, `<`/`<=`, `>`/`>=`.
    fn libseccomp_order(s: &LinuxSyscall) -> (usize, u8) {
        let first = s
            .args()
            .as_ref()
            .unwrap()
            .iter()
            .min_by_key(|a| a.index())
            .unwrap();
        let op = match first.op() {
            LinuxSeccompOperator::ScmpCmpEq
            | LinuxSeccompOperator::ScmpCmpNe
            | LinuxSeccompOperator::ScmpCmpMaskedEq => 3,
            LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe => 2,
            LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => 1,
        };
        (first.index(), op)
    }

    /// Rule 2: libseccomp tries every refusal before the ALLOW entries, as the stacked
    /// filters of cage-sandbox let a refusal win; refusals with different errnos are
    /// disjoint (checked by the cage-sandbox interpreter and the engine comparison test).
    #[test]
    fn refusals_are_tried_before_the_allow_entries() {
        let entries = profile_entries();
        for name in ARGUMENT_FILTERED {
            let rules: Vec<&LinuxSyscall> = entries
                .iter()
                .filter(|s| s.names() == &[name.to_string()])
                .collect();
            let allow: Vec<_> = rules
                .iter()
                .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
                .collect();
            assert!(!allow.is_empty(), "{name} has no ALLOW entry");
            for refusal in rules
                .iter()
                .filter(|s| s.action() != LinuxSeccompAction::ScmpActAllow)
            {
                for a in &allow {
                    assert!(
                        libseccomp_order(refusal) > libseccomp_order(a),
                        "{name}: {refusal:?} is not tried before {a:?}"
                    );
                }
            }
        }
    }
}
