//! seccomp: an OCI `LinuxSeccomp` compiled into classic BPF programs.
//!
//! The first program opens with a prologue of our own: the architecture check, the x32 guard,
//! then a binary search over syscall numbers. Its leaves answer every call whose answer does
//! not depend on arguments (named unconditionally, or not named at all: the default) and send
//! the others to seccompiler's code for their argument rules, which follows the prologue.
//! seccompiler gives a filter one "match" action, so argument rules are grouped by action:
//! the first program carries the ALLOW group's (with a default of ALLOW, the largest other
//! group's), each other action with argument rules gets a program of its own. Installed in
//! that order, the kernel runs them all and keeps the most restrictive answer: ERRNO beats
//! ALLOW, and of two ERRNO answers the later-installed filter's wins.
//!
//! The sandbox profile (`cage_spec::seccomp`) is an allow-list with a default of ERRNO
//! ENOSYS. Compiled, the search answers ALLOW for its allowed calls, EPERM for its refused
//! ones, and ENOSYS for every number it does not name: clone3, the gaps of the syscall
//! table, and everything above the highest number it names, which is where newer kernels add
//! calls. clone, ioctl, socket and personality leave the search for their ALLOW rules (no
//! match: the default), and the EPERM and EPROTONOSUPPORT programs stacked after it refuse
//! their flags, requests and families whatever the first program said.
//!
//! libseccomp (the services engine, through libcontainer) reads the same profile. Shared
//! semantics: a masked compare is `arg & value == valueTwo & value`, names absent on this
//! architecture are skipped. Where the two differ the profile stays clear: an entry's repeated
//! argument indexes are ANDed here (libcontainer and runc OR them); an ERRNO rule here beats
//! every ALLOW rule of its call, while libseccomp takes the first rule that matches in its own
//! order; and a call named unconditionally keeps the refusals of its conditional entries
//! here, while libseccomp drops them.
//!
//! Compiled by pid 1 while its parent writes the id maps (off the way of everything else),
//! installed by the command last before `execve`.

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

/// How the kernel ranks stacked answers: the lowest action value wins (signed, so that
/// KILL_PROCESS, 0x80000000, is the most restrictive).
fn precedence(a: &SeccompAction) -> i32 {
    (u32::from(a.clone()) & libc::SECCOMP_RET_ACTION_FULL) as i32
}

fn native_target() -> (TargetArch, Arch) {
    #[cfg(target_arch = "x86_64")]
    return (TargetArch::x86_64, Arch::ScmpArchX86_64);
    #[cfg(target_arch = "aarch64")]
    return (TargetArch::aarch64, Arch::ScmpArchAarch64);
}

/// Syscalls that the libc crate's tables, which `syscalls.rs` is generated from, lack:
/// (name, x86_64, aarch64), numbered as in the kernel's `syscall_64.tbl` and
/// `asm-generic/unistd.h` up to Linux 6.19. Consulted before `syscalls::lookup`; belongs in
/// `syscalls.rs` when that table is next generated.
const NUMBERS_BEYOND_LIBC: &[(&str, Option<i64>, Option<i64>)] = &[
    ("cachestat", Some(451), Some(451)),
    ("fchmodat2", Some(452), Some(452)),
    ("file_getattr", Some(468), Some(468)),
    ("file_setattr", Some(469), Some(469)),
    ("futex_requeue", Some(456), Some(456)),
    ("futex_wait", Some(455), Some(455)),
    ("futex_wake", Some(454), Some(454)),
    ("getrlimit", Some(97), Some(163)),
    ("getxattrat", Some(464), Some(464)),
    ("io_pgetevents", Some(333), Some(292)),
    ("listmount", Some(458), Some(458)),
    ("listns", Some(470), Some(470)),
    ("listxattrat", Some(465), Some(465)),
    ("lsm_get_self_attr", Some(459), Some(459)),
    ("lsm_list_modules", Some(461), Some(461)),
    ("lsm_set_self_attr", Some(460), Some(460)),
    ("map_shadow_stack", Some(453), Some(453)),
    ("open_tree_attr", Some(467), Some(467)),
    ("removexattrat", Some(466), Some(466)),
    ("renameat", Some(264), Some(38)),
    ("setrlimit", Some(160), Some(164)),
    ("setxattrat", Some(463), Some(463)),
    ("statmount", Some(457), Some(457)),
    ("sync_file_range", Some(277), Some(84)),
    ("uprobe", Some(336), None),
    ("uretprobe", Some(335), None),
];

/// A syscall's number on this architecture.
fn number(name: &str) -> Lookup {
    match NUMBERS_BEYOND_LIBC.iter().find(|(n, _, _)| *n == name) {
        Some((_, x86_64, aarch64)) => {
            let nr = if cfg!(target_arch = "aarch64") {
                aarch64
            } else {
                x86_64
            };
            nr.map_or(Lookup::AbsentHere, Lookup::Number)
        }
        None => lookup(name),
    }
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
        // libseccomp semantics: value is the mask, valueTwo the expected value, which
        // libseccomp masks too.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0) & arg.value(),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| err(e.to_string()))
}

/// The entries of one action: calls it answers whatever their arguments, and argument rules
/// for others (rules OR, the conditions of a rule AND).
struct Group {
    action: SeccompAction,
    unconditional: BTreeSet<i64>,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
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

    let mut groups: Vec<Group> = Vec::new();
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
        let idx = match groups.iter().position(|g| g.action == act) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    action: act,
                    unconditional: BTreeSet::new(),
                    rules: BTreeMap::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[idx];
        for name in entry.names() {
            let nr = match number(name) {
                Lookup::Number(nr) => nr,
                Lookup::AbsentHere => continue,
                Lookup::Unknown => {
                    return Err(err(format!("unknown syscall name {name:?} in the profile")))
                }
            };
            if conditions.is_empty() {
                group.rules.remove(&nr);
                group.unconditional.insert(nr);
            } else if !group.unconditional.contains(&nr) {
                let rule = SeccompRule::new(conditions.clone()).map_err(|e| err(e.to_string()))?;
                group.rules.entry(nr).or_default().push(rule);
            }
        }
    }

    // What the search answers for a call named unconditionally: the answer the stacked
    // filters would keep (the most restrictive; of equals, the later group's).
    let mut fixed: BTreeMap<i64, SeccompAction> = BTreeMap::new();
    for g in &groups {
        for nr in &g.unconditional {
            if fixed
                .get(nr)
                .is_none_or(|old| precedence(old) >= precedence(&g.action))
            {
                fixed.insert(*nr, g.action.clone());
            }
        }
    }

    // The argument rules the first program carries, and what it answers when none matches.
    let first = if default == SeccompAction::Allow {
        groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.rules.is_empty())
            .max_by_key(|(i, g)| (g.rules.len(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    } else {
        groups
            .iter()
            .position(|g| g.action == SeccompAction::Allow && !g.rules.is_empty())
    };
    let mut first_rules = first
        .map(|i| std::mem::take(&mut groups[i].rules))
        .unwrap_or_default();
    for nr in fixed.keys() {
        first_rules.remove(nr);
    }

    let mut programs = Vec::new();
    if !(default == SeccompAction::Allow && fixed.is_empty() && first_rules.is_empty()) {
        let leaf = |nr: i64| match fixed.get(&nr) {
            Some(a) => Leaf::Return(a.clone().into()),
            None if first_rules.contains_key(&nr) => Leaf::Rules,
            None => Leaf::Return(default.clone().into()),
        };
        let highest = fixed.keys().chain(first_rules.keys()).max().copied();
        let mut runs: Vec<(u32, Leaf)> = Vec::new();
        for nr in 0..=highest.map_or(0, |h| h + 1) {
            let l = if Some(nr) > highest {
                Leaf::Return(default.clone().into())
            } else {
                leaf(nr)
            };
            if runs.last().is_none_or(|(_, last)| *last != l) {
                runs.push((nr as u32, l));
            }
        }
        let mut program = prologue(&runs)?;
        if let Some(i) = first {
            if !first_rules.is_empty() {
                let (mismatch, matched) = if default == SeccompAction::Allow {
                    (SeccompAction::Allow, groups[i].action.clone())
                } else {
                    (default.clone(), SeccompAction::Allow)
                };
                program.extend(build(first_rules, mismatch, matched, target)?);
            }
        }
        programs.push(program);
    }
    for g in groups {
        if g.action != SeccompAction::Allow && !g.rules.is_empty() {
            programs.push(build(g.rules, SeccompAction::Allow, g.action, target)?);
        }
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

/// What the search answers for a run of syscall numbers.
#[derive(Clone, PartialEq)]
enum Leaf {
    /// This SECCOMP_RET value.
    Return(u32),
    /// The argument rules after the prologue decide.
    Rules,
}

/// The first program's opening: the architecture check, the x32 guard, then a binary search
/// over `runs` (syscall numbers from which on the answer is the same, ascending from 0).
///
/// The x32 ABI reaches the same kernel entry points with `nr | 0x40000000` under the x86_64
/// audit arch, so a filter keyed on plain numbers would not see them: refuse them all.
///
/// A search tree, not a chain: at install the kernel runs the filter once per syscall number
/// to find the calls it can always allow (the seccomp action cache), and each instruction
/// costs install time (~0.5 µs: cBPF → eBPF, JIT), so both the size and the depth of the path
/// to an answer count. Runs of equal answers keep it small: ~100 leaves for the sandbox
/// profile, about seven compares deep.
fn prologue(runs: &[(u32, Leaf)]) -> Result<BpfProgram> {
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
    emit_search(&mut asm, runs, rest);
    asm.bind(rest);
    asm.finish()
}

/// A subtree of `n` leaves takes at most 3n - 2 instructions: past this many leaves, a
/// conditional jump (8-bit offset) may not reach over it, and an unconditional one is used.
const NEAR_LEAVES: usize = 85;

fn emit_search(asm: &mut Asm, runs: &[(u32, Leaf)], rest: usize) {
    if let [(_, leaf)] = runs {
        match leaf {
            Leaf::Return(k) => asm.stmt(RET_K, *k),
            Leaf::Rules => asm.ja(rest),
        }
        return;
    }
    let mid = runs.len() / 2;
    let upper = asm.label();
    if mid > NEAR_LEAVES {
        let lower = asm.label();
        asm.jump(JGE_K, runs[mid].0, Tgt::Next, Tgt::Label(lower));
        asm.ja(upper);
        asm.bind(lower);
    } else {
        asm.jump(JGE_K, runs[mid].0, Tgt::Label(upper), Tgt::Next);
    }
    emit_search(asm, &runs[..mid], rest);
    asm.bind(upper);
    emit_search(asm, &runs[mid..], rest);
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

    /// Stacked filters: the most restrictive answer wins (lowest action value); the kernel
    /// runs the latest-installed filter first and keeps its answer on a tie.
    fn answer(programs: &[BpfProgram], d: &Data) -> u32 {
        programs
            .iter()
            .rev()
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

    /// A bound above every syscall number x86_64 and aarch64 assign (470 in Linux 6.19).
    const MAX_NR: i64 = 1023;

    fn programs() -> Vec<BpfProgram> {
        compile(&cage_spec::seccomp::sandbox_profile().unwrap()).unwrap()
    }

    fn numbers(names: &[&str]) -> BTreeSet<i64> {
        names
            .iter()
            .filter_map(|n| match number(n) {
                Lookup::Number(nr) => Some(nr),
                Lookup::AbsentHere => None,
                Lookup::Unknown => panic!("{n} has no number"),
            })
            .collect()
    }

    /// With all arguments zero, every call is answered by its name's list: allowed and
    /// argument-filtered calls pass (zero is a harmless clone, ioctl, socket or personality),
    /// denied ones get EPERM, and everything else (clone3, numbers the profile does not
    /// name, numbers no kernel assigns) ENOSYS.
    #[test]
    fn every_syscall_number_gets_the_profiles_answer() {
        use cage_spec::seccomp::{ALLOWED_SYSCALLS, ARGUMENT_FILTERED, DENIED_SYSCALLS};
        let progs = programs();
        let allowed = numbers(ALLOWED_SYSCALLS);
        let filtered = numbers(ARGUMENT_FILTERED);
        let denied = numbers(DENIED_SYSCALLS);
        let mut passed = 0;
        for nr in 0..=MAX_NR {
            let want = if allowed.contains(&nr) || filtered.contains(&nr) {
                passed += 1;
                ALLOW
            } else if denied.contains(&nr) {
                DENY
            } else {
                NOSYS
            };
            assert_eq!(answer(&progs, &call(nr, [0; 6])), want, "syscall {nr}");
        }
        assert_eq!(passed, allowed.len() + filtered.len());
        // The same answers by the libc crate's numbers, for the calls this change is about.
        for (nr, want) in [
            (libc::SYS_read, ALLOW),
            (libc::SYS_execve, ALLOW),
            (libc::SYS_mount, DENY),
            (libc::SYS_unshare, DENY),
            (libc::SYS_ptrace, DENY),
            (libc::SYS_io_uring_setup, DENY),
            (libc::SYS_memfd_secret, DENY),
            (libc::SYS_clone3, NOSYS),
        ] {
            assert_eq!(answer(&progs, &call(nr, [0; 6])), want, "syscall {nr}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(answer(&progs, &call(libc::SYS_modify_ldt, [0; 6])), DENY);
            assert_eq!(answer(&progs, &call(libc::SYS_arch_prctl, [0; 6])), ALLOW);
        }
        // Kernel numbers newer than the libc crate: statmount, listmount, listns; the
        // first number no kernel assigns yet.
        for nr in [457, 458, 470] {
            assert_eq!(answer(&progs, &call(nr, [0; 6])), DENY, "syscall {nr}");
        }
        assert_eq!(answer(&progs, &call(471, [0; 6])), NOSYS);
    }

    /// Every number this architecture's table knows is in one of the profile's lists, and
    /// every name in the lists has a number (or is absent on this architecture).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_known_syscall_is_in_one_of_the_profiles_lists() {
        use cage_spec::seccomp::*;
        let listed: BTreeSet<&str> = [
            ALLOWED_SYSCALLS,
            DENIED_SYSCALLS,
            ARGUMENT_FILTERED,
            ENOSYS_SYSCALLS,
        ]
        .concat()
        .into_iter()
        .collect();
        // The generated table's x86_64 half, read from its source: ("name", nr), lines.
        let table = include_str!("syscalls.rs");
        let native = table
            .split("#[cfg(target_arch = \"x86_64\")]")
            .nth(1)
            .and_then(|t| t.split("];").next())
            .unwrap();
        let mut known: Vec<(&str, i64)> = native
            .lines()
            .filter_map(|l| {
                let (name, nr) = l.trim().strip_prefix("(\"")?.split_once("\", ")?;
                Some((name, nr.strip_suffix("),")?.parse().ok()?))
            })
            .collect();
        assert!(known.len() > 300, "parsed {} entries", known.len());
        known.extend(
            NUMBERS_BEYOND_LIBC
                .iter()
                .filter_map(|(n, nr, _)| Some((*n, (*nr)?))),
        );
        for (name, nr) in known {
            assert!(listed.contains(name), "syscall {name} ({nr}) is in no list");
            assert_eq!(number(name), Lookup::Number(nr), "{name}");
        }
        for name in listed {
            assert_ne!(number(name), Lookup::Unknown, "{name}");
        }
    }

    #[test]
    fn numbers_beyond_libc_agree_with_libc_where_it_has_them() {
        assert_eq!(lookup("renameat"), Lookup::Number(number_of("renameat")));
        assert_eq!(number("listmount"), Lookup::Number(458));
        assert_eq!(number("fchmodat2"), Lookup::Number(libc::SYS_fchmodat2));
        for (name, _, _) in NUMBERS_BEYOND_LIBC {
            if let Lookup::Number(nr) = lookup(name) {
                assert_eq!(number(name), Lookup::Number(nr), "{name}");
            }
        }
    }

    fn number_of(name: &str) -> i64 {
        match number(name) {
            Lookup::Number(nr) => nr,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn x32_and_foreign_architectures_are_refused() {
        let progs = programs();
        for nr in 0..=MAX_NR {
            if cfg!(target_arch = "x86_64") {
                let x32 = call(0x4000_0000 | nr, [0; 6]);
                assert_eq!(answer(&progs, &x32), DENY, "x32 syscall {nr}");
            }
            let i386 = Data {
                nr: nr as u32,
                arch: 0x4000_0003, // AUDIT_ARCH_I386
                args: [0; 6],
            };
            assert_eq!(
                answer(&progs, &i386),
                libc::SECCOMP_RET_KILL_PROCESS,
                "i386 syscall {nr}"
            );
        }
    }

    #[test]
    fn argument_rules_look_at_the_arguments() {
        let progs = programs();
        let clone = |flags: u64| answer(&progs, &call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]));
        assert_eq!(clone(libc::SIGCHLD as u64), ALLOW);
        assert_eq!(clone(0x3d0f00), ALLOW, "glibc's pthread_create flags");
        assert_eq!(
            clone(0xffff_ffff_8000_0000 | libc::SIGCHLD as u64),
            ALLOW,
            "CLONE_IO in a sign-extended int"
        );
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
        ] {
            assert_eq!(clone(ns as u64 | libc::SIGCHLD as u64), DENY);
            assert_eq!(clone(0xffff_ffff_0000_0000 | ns as u64), DENY);
        }
        assert_eq!(
            clone(1 << 32 | libc::SIGCHLD as u64),
            NOSYS,
            "junk upper bits"
        );

        let ioctl = |req: u64| answer(&progs, &call(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]));
        assert_eq!(ioctl(libc::TIOCSTI), DENY);
        assert_eq!(ioctl(libc::TIOCLINUX), DENY);
        for high in [1u64 << 32, 0xffff_ffff_0000_0000, 0x8000_0000_0000_0000] {
            assert_ne!(ioctl(high | libc::TIOCSTI), ALLOW, "high bits hide TIOCSTI");
        }
        assert_eq!(ioctl(libc::TIOCGWINSZ), ALLOW);
        assert_eq!(ioctl(libc::FIONREAD), ALLOW);
        assert_eq!(ioctl(0x8004_5430), ALLOW, "TIOCGPTN");
        assert_eq!(
            ioctl(0xffff_ffff_8004_5430),
            ALLOW,
            "TIOCGPTN as musl passes it"
        );

        let socket =
            |d: u64, t: u64, p: u64| answer(&progs, &call(libc::SYS_socket, [d, t, p, 0, 0, 0]));
        let (stream, dgram, raw) = (
            libc::SOCK_STREAM as u64,
            libc::SOCK_DGRAM as u64,
            libc::SOCK_RAW as u64,
        );
        let cloexec = libc::SOCK_CLOEXEC as u64 | libc::SOCK_NONBLOCK as u64;
        for family in [libc::AF_INET, libc::AF_INET6] {
            let f = family as u64;
            assert_eq!(socket(f, stream, 0), ALLOW);
            assert_eq!(socket(f, dgram | cloexec, 0), ALLOW);
            assert_eq!(socket(f, libc::SOCK_SEQPACKET as u64, 0), ALLOW);
            assert_eq!(socket(f, raw, 1), DENY);
            assert_eq!(socket(f, raw | cloexec, 1), DENY);
            assert_eq!(socket(f, 1 << 32 | raw, 1), DENY);
        }
        assert_eq!(socket(libc::AF_UNIX as u64, stream | cloexec, 0), ALLOW);
        assert_eq!(socket(libc::AF_UNIX as u64, dgram, 0), ALLOW);
        for family in [libc::AF_PACKET, libc::AF_ALG, libc::AF_VSOCK] {
            assert_eq!(socket(family as u64, raw, 0), DENY, "family {family}");
            assert_eq!(
                socket(1 << 32 | family as u64, raw, 0),
                NOSYS,
                "family {family}"
            );
        }
        assert_eq!(
            socket(46, stream, 0),
            NOSYS,
            "a family newer than the profile"
        );
        assert_eq!(
            socket(libc::AF_NETLINK as u64, raw, 0),
            ALLOW,
            "NETLINK_ROUTE"
        );
        // Refused as "protocol not supported", as a kernel without audit answers.
        for protocol in [9, 1 << 32] {
            assert_eq!(
                socket(libc::AF_NETLINK as u64, raw, protocol),
                libc::SECCOMP_RET_ERRNO | libc::EPROTONOSUPPORT as u32,
                "netlink protocol {protocol:#x}"
            );
        }

        let personality = |p: u64| answer(&progs, &call(libc::SYS_personality, [p, 0, 0, 0, 0, 0]));
        for allowed in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(personality(allowed), ALLOW, "{allowed:#x}");
        }
        assert_eq!(personality(0x0040_0000), NOSYS, "READ_IMPLIES_EXEC");
        assert_eq!(personality(0x0004_0000), NOSYS, "ADDR_NO_RANDOMIZE");
        assert_eq!(personality(1 << 32), NOSYS);
    }

    /// Install cost is per instruction (~0.5 µs each): the allow-list stays compact (403
    /// instructions in three programs when written).
    #[test]
    fn the_compiled_profile_stays_small() {
        let progs = programs();
        let total: usize = progs.iter().map(Vec::len).sum();
        eprintln!(
            "programs: {:?} instructions",
            progs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(total < 700, "{total} instructions");
    }

    /// Profiles other than cagerun's (an OCI bundle's): a deny-list with a default of ALLOW
    /// answers the same way through the same prologue.
    #[test]
    fn a_deny_list_profile_answers_its_entries() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            "syscalls": [
                {"names": ["mount", "ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 1, "value": 4294967295u64, "valueTwo": 21522,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            ]
        }))
        .unwrap();
        let progs = compile(&profile).unwrap();
        for nr in 0..=MAX_NR {
            let want = match nr {
                libc::SYS_mount | libc::SYS_ptrace => DENY,
                libc::SYS_clone3 => NOSYS,
                _ => ALLOW,
            };
            assert_eq!(answer(&progs, &call(nr, [0; 6])), want, "syscall {nr}");
        }
        let ioctl = |req: u64| answer(&progs, &call(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]));
        assert_eq!(ioctl(libc::TIOCSTI), DENY);
        assert_eq!(ioctl(1 << 32 | libc::TIOCSTI), DENY);
        assert_eq!(ioctl(libc::TIOCGWINSZ), ALLOW);

        let allow_all: LinuxSeccomp =
            serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"})).unwrap();
        assert!(compile(&allow_all).unwrap().is_empty());
    }
}
