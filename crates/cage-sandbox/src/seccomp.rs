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
    // Each filter instruction costs kernel time at install (~0.5 µs: cBPF → eBPF, JIT), and
    // seccompiler spends ~7 per unconditional call. So with a default of Allow, unconditional
    // entries become one compare each in a prologue we emit ourselves, and seccompiler builds
    // only what has argument conditions.
    let mut early: Vec<(i64, SeccompAction)> = Vec::new();
    if default == SeccompAction::Allow {
        for (act, rules, unconditional) in groups.iter_mut() {
            if *act == SeccompAction::Allow {
                continue;
            }
            for nr in unconditional.iter() {
                if early.len() < MAX_EARLY {
                    rules.remove(nr);
                    early.push((*nr, act.clone()));
                }
            }
        }
    }
    let mut conditional: Vec<_> = groups
        .into_iter()
        .filter(|(a, r, _)| *a != SeccompAction::Allow && !r.is_empty())
        .collect();
    // The largest group first: it carries the prologue.
    conditional.sort_by_key(|(_, r, _)| std::cmp::Reverse(r.len()));
    // With a default of Allow, the prologue's search also routes the first program's
    // conditional calls to it and answers every other call Allow at once.
    let first_calls: Option<Vec<i64>> = (default == SeccompAction::Allow).then(|| {
        conditional
            .first()
            .map(|(_, r, _)| r.keys().copied().collect())
            .unwrap_or_default()
    });
    for (act, rules, _) in conditional {
        programs.push(build(rules, SeccompAction::Allow, act, target)?);
    }
    if programs.is_empty() && default == SeccompAction::Allow && !early.is_empty() {
        programs.push(allow_all()?);
    }
    if let Some(first) = programs.first_mut() {
        prepend_early_answers(first, &early, first_calls.as_deref())?;
    }
    Ok(programs)
}

/// Classic BPF conditional jumps are 8-bit: every compare must reach its answer.
const MAX_EARLY: usize = 96;

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

/// A program that only checks the architecture and allows: the carrier for early answers
/// when a profile has nothing else to filter.
fn allow_all() -> Result<BpfProgram> {
    use seccompiler::sock_filter;
    Ok(vec![
        sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 4,
        }, // ld seccomp_data.arch
        sock_filter {
            code: 0x15,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_KILL_PROCESS,
        },
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ])
}

/// Instructions put in front of the first program: the architecture check, the x32 guard,
/// then a binary search over the early-answered calls.
///
/// The x32 ABI reaches the same kernel entry points with `nr | 0x40000000` under the x86_64
/// audit arch, so a filter keyed on plain numbers would not see them: refuse them all.
///
/// A search tree, not a chain: at install the kernel runs the filter once per syscall number
/// to find the calls it can always allow (the seccomp action cache), so the depth of the
/// path to "allow" is what install time and every later syscall pay.
///
/// `dispatch`: the calls the program itself filters, when every other call is allowed: the
/// search sends those to the program and answers the rest Allow right there, so the kernel's
/// walk for an unfiltered call is a dozen steps, not the program's whole chain.
fn prepend_early_answers(
    program: &mut BpfProgram,
    early: &[(i64, SeccompAction)],
    dispatch: Option<&[i64]>,
) -> Result<()> {
    let mut asm = Asm::default();
    asm.stmt(LD_W_ABS, 4); // seccomp_data.arch
    let arch_ok = asm.label();
    asm.jump(JEQ_K, AUDIT_ARCH, Tgt::Label(arch_ok), Tgt::Next);
    asm.stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS);
    asm.bind(arch_ok);
    asm.stmt(LD_W_ABS, 0); // seccomp_data.nr
    if cfg!(target_arch = "x86_64") {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        let native = asm.label();
        asm.jump(JGE_K, X32_SYSCALL_BIT, Tgt::Next, Tgt::Label(native));
        asm.stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        asm.bind(native);
    }
    let rest = asm.label();
    let mut answers: Vec<(u32, usize)> = Vec::new();
    let mut items: Vec<(u32, usize)> = Vec::new();
    for (nr, act) in early {
        let a = u32::from(act.clone());
        let label = match answers.iter().find(|(x, _)| *x == a) {
            Some((_, l)) => *l,
            None => {
                let l = asm.label();
                answers.push((a, l));
                l
            }
        };
        items.push((*nr as u32, label));
    }
    let miss = match dispatch {
        Some(calls) => {
            items.extend(calls.iter().map(|nr| (*nr as u32, rest)));
            let allow = asm.label();
            answers.push((libc::SECCOMP_RET_ALLOW, allow));
            allow
        }
        None => rest,
    };
    items.sort_unstable();
    items.dedup_by_key(|(nr, _)| *nr);
    emit_search(&mut asm, &items, miss);
    for (a, l) in &answers {
        asm.bind(*l);
        asm.stmt(RET_K, *a);
    }
    asm.bind(rest);
    let prologue = asm.finish()?;
    program.splice(0..0, prologue);
    Ok(())
}

fn emit_search(asm: &mut Asm, items: &[(u32, usize)], miss: usize) {
    if items.len() <= 3 {
        for (nr, answer) in items {
            asm.jump(JEQ_K, *nr, Tgt::Label(*answer), Tgt::Next);
        }
        asm.ja(miss);
        return;
    }
    let mid = items.len() / 2;
    let upper = asm.label();
    asm.jump(JGE_K, items[mid].0, Tgt::Label(upper), Tgt::Next);
    emit_search(asm, &items[..mid], miss);
    asm.bind(upper);
    emit_search(asm, &items[mid..], miss);
}

const LD_W_ABS: u16 = 0x20;
const JGE_K: u16 = 0x35;
const JEQ_K: u16 = 0x15;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

#[derive(Clone, Copy)]
enum Tgt {
    Next,
    Label(usize),
}

/// A few lines of classic BPF with forward labels.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, u32, Tgt, Tgt)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((code, k, Tgt::Next, Tgt::Next));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Tgt, jf: Tgt) {
        self.code.push((code, k, jt, jf));
    }
    fn ja(&mut self, label: usize) {
        self.code.push((JA, 0, Tgt::Label(label), Tgt::Next));
    }
    fn finish(self) -> Result<BpfProgram> {
        let off = |at: usize, t: Tgt| -> Result<u32> {
            match t {
                Tgt::Next => Ok(0),
                Tgt::Label(l) => {
                    let to = self.labels[l].ok_or_else(|| err("unbound label"))?;
                    to.checked_sub(at + 1)
                        .map(|o| o as u32)
                        .ok_or_else(|| err("backward jump"))
                }
            }
        };
        let mut out = Vec::with_capacity(self.code.len());
        for (i, (code, k, jt, jf)) in self.code.iter().enumerate() {
            let ins = if *code == JA {
                seccompiler::sock_filter {
                    code: *code,
                    jt: 0,
                    jf: 0,
                    k: off(i, *jt)?,
                }
            } else {
                let (t, f) = (off(i, *jt)?, off(i, *jf)?);
                if t > 255 || f > 255 {
                    return Err(err("filter prologue jump out of range"));
                }
                seccompiler::sock_filter {
                    code: *code,
                    jt: t as u8,
                    jf: f as u8,
                    k: *k,
                }
            };
            out.push(ins);
        }
        Ok(out)
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Install compiled programs into the calling thread. `no_new_privs` must already be set.
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| err(format!("installing the filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The compiled sandbox profile, run by a small classic-BPF interpreter over every
    //! syscall number: the hand-written prologue and seccompiler's part together must answer
    //! exactly what the profile says.

    use super::*;

    const AUDIT_ARCH_SELF: u32 = AUDIT_ARCH;

    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    fn word(d: &Data, off: u32) -> u32 {
        match off {
            0 => d.nr,
            4 => d.arch,
            // seccomp_data.args[i] at 16 + 8i, low word first (little endian).
            16..=63 if off.is_multiple_of(4) => {
                let v = d.args[((off - 16) / 8) as usize];
                if (off - 16).is_multiple_of(8) {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            _ => panic!("load at offset {off}"),
        }
    }

    /// Runs one program; returns the SECCOMP_RET value.
    fn run(p: &BpfProgram, d: &Data) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let mut mem = [0u32; 16];
        loop {
            let i = &p[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(d, i.k),      // ld w abs
                0x00 => a = i.k,               // ld imm
                0x60 => a = mem[i.k as usize], // ld mem
                0x61 => x = mem[i.k as usize], // ldx mem
                0x02 => mem[i.k as usize] = a, // st
                0x03 => mem[i.k as usize] = x, // stx
                0x54 => a &= i.k,              // and k
                0x44 => a |= i.k,              // or k
                0x07 => x = a,                 // tax
                0x87 => a = x,                 // txa
                0x05 => pc += i.k as usize,    // ja
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                0x06 => return i.k, // ret k
                0x16 => return a,   // ret a
                other => panic!("opcode {other:#x} at {}", pc - 1),
            }
        }
    }

    /// Stacked filters: the most restrictive answer wins (lowest action value).
    fn answer(programs: &[BpfProgram], d: &Data) -> u32 {
        programs
            .iter()
            .map(|p| run(p, d))
            // Signed: KILL_PROCESS (0x80000000) is the most restrictive.
            .min_by_key(|r| (r & libc::SECCOMP_RET_ACTION_FULL) as i32)
            .unwrap()
    }

    fn call(nr: i64, args: [u64; 6]) -> Data {
        Data {
            nr: nr as u32,
            arch: AUDIT_ARCH_SELF,
            args,
        }
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const NOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    fn programs() -> Vec<BpfProgram> {
        compile(&cage_spec::seccomp::sandbox_profile().unwrap()).unwrap()
    }

    #[test]
    fn every_syscall_number_gets_the_profiles_answer() {
        let progs = programs();
        let denied: Vec<i64> = cage_spec::seccomp::DENIED_SYSCALLS
            .iter()
            .filter_map(|n| match lookup(n) {
                Lookup::Number(nr) => Some(nr),
                _ => None,
            })
            .collect();
        let conditional = [
            libc::SYS_clone,
            libc::SYS_ioctl,
            libc::SYS_socket,
            libc::SYS_personality,
        ];
        for nr in 0..500i64 {
            if conditional.contains(&nr) {
                continue;
            }
            let want = if denied.contains(&nr) {
                DENY
            } else if nr == libc::SYS_clone3 {
                NOSYS
            } else {
                ALLOW
            };
            assert_eq!(answer(&progs, &call(nr, [0; 6])), want, "syscall {nr}");
        }
    }

    #[test]
    fn x32_and_foreign_architectures_are_refused() {
        let progs = programs();
        assert_eq!(
            answer(&progs, &call(0x4000_0000 | libc::SYS_getpid, [0; 6])),
            DENY
        );
        let foreign = Data {
            nr: libc::SYS_getpid as u32,
            arch: 0x4000_0003,
            args: [0; 6],
        };
        assert_eq!(answer(&progs, &foreign), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn argument_rules_look_at_the_arguments() {
        let progs = programs();
        let clone = |flags: u64| answer(&progs, &call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]));
        assert_eq!(clone(libc::SIGCHLD as u64), ALLOW);
        assert_eq!(clone(0x3d0f00), ALLOW, "glibc's pthread_create flags");
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
        ] {
            assert_eq!(clone(ns as u64 | libc::SIGCHLD as u64), DENY);
        }
        let ioctl = |req: u64| answer(&progs, &call(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]));
        assert_eq!(ioctl(libc::TIOCSTI), DENY);
        assert_eq!(
            ioctl(1 << 32 | libc::TIOCSTI),
            DENY,
            "high bits must not hide TIOCSTI"
        );
        assert_eq!(ioctl(libc::TIOCGWINSZ), ALLOW);
        let socket =
            |d: u64, t: u64, p: u64| answer(&progs, &call(libc::SYS_socket, [d, t, p, 0, 0, 0]));
        assert_eq!(
            socket(libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0),
            ALLOW
        );
        assert_eq!(
            socket(libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0),
            ALLOW
        );
        assert_eq!(
            socket(libc::AF_PACKET as u64, libc::SOCK_RAW as u64, 0),
            DENY
        );
        assert_eq!(socket(libc::AF_INET as u64, libc::SOCK_RAW as u64, 1), DENY);
        assert_eq!(
            socket(libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 0),
            ALLOW,
            "NETLINK_ROUTE"
        );
        // Refused as "protocol not supported", as a kernel without audit answers.
        assert_eq!(
            socket(libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 9),
            libc::SECCOMP_RET_ERRNO | libc::EPROTONOSUPPORT as u32,
            "NETLINK_AUDIT"
        );
        let personality = |p: u64| answer(&progs, &call(libc::SYS_personality, [p, 0, 0, 0, 0, 0]));
        assert_eq!(personality(0), ALLOW);
        assert_eq!(personality(0xffff_ffff), ALLOW);
        assert_eq!(personality(0x0040_0000), DENY, "READ_IMPLIES_EXEC");
    }
}
