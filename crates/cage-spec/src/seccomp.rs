//! The sandbox's seccomp profile, modelled on Docker's default profile but stricter: a
//! deny-list (default allow) answered with EPERM, so ordinary programs that probe a syscall
//! see "not permitted" and carry on instead of being killed.
//!
//! Arguments are compared through a 32-bit mask where the kernel reads an `int`: an attacker
//! who sets the upper bits of `ioctl`'s request must not slip past an equality test.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::SpecError;

/// Syscalls that no sandboxed tool needs and that widen the kernel's attack surface or reach
/// outside the sandbox (mounts, namespaces, tracing, keys, BPF, modules, clocks, reboot).
pub const DENIED_SYSCALLS: &[&str] = &[
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
];

/// Namespace flags that `clone` must not carry (`unshare` and `setns` are denied outright).
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
const INT_MASK: u64 = 0xffff_ffff;

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_NETLINK: u64 = 16;
const AF_PACKET: u64 = 17;
const SOCK_RAW: u64 = 3;
const SOCK_TYPE_MASK: u64 = 0xf;
const NETLINK_ROUTE: u64 = 0;
/// personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 variants, and the query.
const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn masked_eq(index: usize, mask: u64, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(index)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .value(mask)
        .value_two(value)
        .build()?)
}

fn ne(index: usize, value: u64) -> Result<LinuxSeccompArg, SpecError> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(index)
        .op(LinuxSeccompOperator::ScmpCmpNe)
        .value(value)
        .build()?)
}

fn deny(names: &[&str], errno: u32, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, SpecError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno);
    if !args.is_empty() {
        b = b.args(args);
    }
    Ok(b.build()?)
}

/// The profile for per-command sandboxes (and, later, services).
pub fn sandbox_profile() -> Result<LinuxSeccomp, SpecError> {
    let mut syscalls = vec![deny(DENIED_SYSCALLS, EPERM, vec![])?];
    // clone3 hides its flags in memory where seccomp cannot look: ENOSYS makes libc fall back
    // to clone, whose flags register is filtered below.
    syscalls.push(deny(&["clone3"], ENOSYS, vec![])?);
    for flag in CLONE_NAMESPACE_FLAGS {
        syscalls.push(deny(&["clone"], EPERM, vec![masked_eq(0, *flag, *flag)?])?);
    }
    for request in [TIOCSTI, TIOCLINUX] {
        syscalls.push(deny(
            &["ioctl"],
            EPERM,
            vec![masked_eq(1, INT_MASK, request)?],
        )?);
    }
    syscalls.push(deny(
        &["socket"],
        EPERM,
        vec![masked_eq(0, INT_MASK, AF_PACKET)?],
    )?);
    // Netlink beyond routing (audit, ...) answers "protocol not supported", as a kernel
    // without it would: programs that use audit when it is there (useradd, su) carry on
    // instead of aborting, while the socket is refused all the same.
    syscalls.push(deny(
        &["socket"],
        EPROTONOSUPPORT,
        vec![masked_eq(0, INT_MASK, AF_NETLINK)?, ne(2, NETLINK_ROUTE)?],
    )?);
    for family in [AF_INET, AF_INET6] {
        syscalls.push(deny(
            &["socket"],
            EPERM,
            vec![
                masked_eq(0, INT_MASK, family)?,
                masked_eq(1, SOCK_TYPE_MASK, SOCK_RAW)?,
            ],
        )?);
    }
    let personality_args = PERSONALITY_ALLOWED
        .iter()
        .map(|v| ne(0, *v))
        .collect::<Result<Vec<_>, _>>()?;
    syscalls.push(deny(&["personality"], EPERM, personality_args)?);

    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
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
    use super::*;

    #[test]
    fn profile_denies_the_escape_syscalls_with_eperm() {
        let p = sandbox_profile().unwrap();
        let calls = p.syscalls().as_ref().unwrap();
        let unconditional: Vec<&String> = calls
            .iter()
            .filter(|s| s.args().is_none())
            .flat_map(|s| s.names())
            .collect();
        for name in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "keyctl",
            "pivot_root",
            "userfaultfd",
        ] {
            assert!(
                unconditional.iter().any(|n| *n == name),
                "{name} must be denied"
            );
        }
        let clone3 = calls.iter().find(|s| s.names() == &["clone3"]).unwrap();
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn ioctl_is_compared_through_a_32_bit_mask() {
        let p = sandbox_profile().unwrap();
        let ioctl = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["ioctl"])
            .unwrap();
        let arg = &ioctl.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), INT_MASK);
    }
}
