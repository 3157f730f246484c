//! seccomp: an OCI `LinuxSeccomp` compiled into BPF programs with seccompiler.
//!
//! seccompiler gives a filter one "match" action, so entries are grouped by action: one
//! filter holds the default action, one filter each other action. Installed in that order,
//! the kernel runs them all and keeps the most restrictive answer; for two ERRNO answers the
//! later-installed filter wins, so specific answers (ENOSYS for clone3) beat the default.
//! Compiled in the parent before `clone`, installed by the command last before `execve`.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Result, SandboxError};
use crate::syscalls::{lookup, Lookup};

fn err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Seccomp(msg.into())
}

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: Option<u32>,
) -> Result<SeccompAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.or(default_errno).unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        other => {
            return Err(SandboxError::Unsupported {
                field: format!("seccomp action {other:?}"),
            })
        }
    })
}

fn native_target() -> (TargetArch, Arch) {
    #[cfg(target_arch = "x86_64")]
    return (TargetArch::x86_64, Arch::ScmpArchX86_64);
    #[cfg(target_arch = "aarch64")]
    return (TargetArch::aarch64, Arch::ScmpArchAarch64);
}

fn condition(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<SeccompCondition> {
    let index = u8::try_from(arg.index()).map_err(|_| err("argument index out of range"))?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        // libseccomp semantics: value is the mask, valueTwo the expected masked value.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| err(e.to_string()))
}

/// Compile a profile into the programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(SandboxError::Unsupported {
            field: "linux.seccomp.flags".into(),
        });
    }
    if profile.listener_path().is_some() {
        return Err(SandboxError::Unsupported {
            field: "linux.seccomp.listenerPath".into(),
        });
    }
    let (target, arch) = native_target();
    if let Some(archs) = profile.architectures() {
        if !archs.is_empty() && !archs.contains(&arch) {
            return Err(err(format!(
                "the profile's architectures {archs:?} do not include this machine's ({arch:?})"
            )));
        }
    }
    let default = action(profile.default_action(), profile.default_errno_ret(), None)?;

    // action → syscall number → rules (rules OR, conditions within a rule AND).
    #[allow(clippy::type_complexity)]
    let mut groups: Vec<(
        SeccompAction,
        BTreeMap<i64, Vec<SeccompRule>>,
        BTreeSet<i64>,
    )> = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let act = action(
            entry.action(),
            entry.errno_ret(),
            profile.default_errno_ret(),
        )?;
        if act == default {
            continue;
        }
        let conditions = entry
            .args()
            .iter()
            .flatten()
            .map(condition)
            .collect::<Result<Vec<_>>>()?;
        let idx = match groups.iter().position(|(a, _, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act.clone(), BTreeMap::new(), BTreeSet::new()));
                groups.len() - 1
            }
        };
        for name in entry.names() {
            let nr = match lookup(name) {
                Lookup::Number(nr) => nr,
                Lookup::AbsentHere => continue,
                Lookup::Unknown => {
                    return Err(err(format!("unknown syscall name {name:?} in the profile")))
                }
            };
            // seccompiler: an empty rule list matches the call unconditionally.
            let (_, by_nr, unconditional) = &mut groups[idx];
            let rules = by_nr.entry(nr).or_default();
            if conditions.is_empty() {
                rules.clear();
                unconditional.insert(nr);
            } else if !unconditional.contains(&nr) {
                rules.push(SeccompRule::new(conditions.clone()).map_err(|e| err(e.to_string()))?);
            }
        }
    }

    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        // An allow-list: every call not allowed by some entry gets the default.
        let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (act, rules, _) in &groups {
            if *act == SeccompAction::Allow {
                allowed.extend(rules.clone());
            }
        }
        programs.push(build(
            allowed,
            default.clone(),
            SeccompAction::Allow,
            target,
        )?);
    }
    for (act, rules, _) in groups {
        if act == SeccompAction::Allow || rules.is_empty() {
            continue;
        }
        programs.push(build(rules, SeccompAction::Allow, act, target)?);
    }
    if let Some(first) = programs.first_mut() {
        deny_x32(first);
    }
    Ok(programs)
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    target: TargetArch,
) -> Result<BpfProgram> {
    let filter =
        SeccompFilter::new(rules, mismatch, matched, target).map_err(|e| err(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))
}

/// The x32 ABI reaches the same kernel entry points with `nr | 0x40000000` under the x86_64
/// audit arch, so a filter keyed on plain numbers would not see them. Refuse them all.
fn deny_x32(program: &mut BpfProgram) {
    #[cfg(target_arch = "x86_64")]
    {
        use seccompiler::sock_filter;
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        const BPF_LD_W_ABS: u16 = 0x20;
        const BPF_JMP_JGE_K: u16 = 0x35;
        const BPF_RET_K: u16 = 0x06;
        let prologue = [
            sock_filter {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 0,
            }, // seccomp_data.nr
            sock_filter {
                code: BPF_JMP_JGE_K,
                jt: 0,
                jf: 1,
                k: X32_SYSCALL_BIT,
            },
            sock_filter {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
        ];
        program.splice(0..0, prologue);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = program;
}

/// Install compiled programs into the calling thread. `no_new_privs` must already be set.
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| err(format!("installing the filter: {e}")))?;
    }
    Ok(())
}
