//! Attack probes for the escape suite (test-only, never shipped).
//!
//! `cage-probe ATTACK [ARGS]` tries one thing and prints one line:
//! `WORKS: ...` (exit 0) when the attack succeeded, or the syscall reached the kernel past
//! the privilege gate; `BLOCKED: ...` (exit 1) when it was refused; exit 2 for bad usage.
//! Every side effect is harmless and undone: files are written only to paths the test
//! names, children are killed, dangerous syscalls get arguments the kernel rejects.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::exit;

fn works(msg: impl AsRef<str>) -> ! {
    println!("WORKS: {}", msg.as_ref());
    exit(0)
}

fn blocked(msg: impl AsRef<str>) -> ! {
    println!("BLOCKED: {}", msg.as_ref());
    exit(1)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errstr() -> String {
    std::io::Error::last_os_error().to_string()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// For syscalls called with arguments the kernel rejects: reaching argument checks (any
/// error but EPERM/ENOSYS, or success) proves the call is reachable; EPERM/ENOSYS is the filter.
fn reached(name: &str, rc: i64) -> ! {
    if rc >= 0 {
        works(format!("{name} succeeded"))
    }
    let e = errno();
    if e == libc::EPERM || e == libc::ENOSYS || e == libc::EACCES {
        blocked(format!("{name}: {}", errstr()))
    }
    works(format!("{name} reached the kernel: {}", errstr()))
}

fn check(name: &str, rc: i64) -> ! {
    if rc >= 0 {
        works(format!("{name} succeeded"))
    }
    blocked(format!("{name}: {}", errstr()))
}

fn spawn_sleeper() -> libc::pid_t {
    // SAFETY: fork in a single-threaded probe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::pause();
            libc::_exit(0);
        }
    }
    pid
}

fn kill_reap(pid: libc::pid_t) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i).cloned().unwrap_or_else(|| {
            eprintln!("missing argument {i}");
            exit(2)
        })
    };
    let attack = arg(0);
    unsafe {
        match attack.as_str() {
            "mount" => {
                let rc = libc::mount(
                    c("tmpfs").as_ptr(),
                    c(&arg(1)).as_ptr(),
                    c("tmpfs").as_ptr(),
                    0,
                    std::ptr::null(),
                );
                if rc == 0 {
                    libc::umount2(c(&arg(1)).as_ptr(), libc::MNT_DETACH);
                }
                check("mount tmpfs", rc as i64)
            }
            "unshare-user" => check(
                "unshare(CLONE_NEWUSER)",
                libc::unshare(libc::CLONE_NEWUSER) as i64,
            ),
            "unshare-mount" => check(
                "unshare(CLONE_NEWNS)",
                libc::unshare(libc::CLONE_NEWNS) as i64,
            ),
            "clone-newuser" | "clone-newnet" => {
                let flag = if attack == "clone-newuser" {
                    libc::CLONE_NEWUSER
                } else {
                    libc::CLONE_NEWNET
                };
                let rc = libc::syscall(
                    libc::SYS_clone,
                    (flag | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 {
                    libc::waitpid(rc as i32, std::ptr::null_mut(), 0);
                }
                check("clone with a namespace flag", rc)
            }
            "clone3-newns" => {
                #[repr(C)]
                struct Args([u64; 11]);
                let mut a = Args([0; 11]);
                a.0[0] = libc::CLONE_NEWNS as u64;
                a.0[4] = libc::SIGCHLD as u64;
                let rc = libc::syscall(
                    libc::SYS_clone3,
                    &a as *const Args,
                    std::mem::size_of::<Args>(),
                );
                if rc == 0 {
                    libc::_exit(0);
                }
                if rc > 0 {
                    libc::waitpid(rc as i32, std::ptr::null_mut(), 0);
                }
                check("clone3(CLONE_NEWNS)", rc)
            }
            "setns" => {
                let fd = libc::open(c("/proc/self/ns/uts").as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    blocked(format!("open /proc/self/ns/uts: {}", errstr()))
                }
                check("setns", libc::setns(fd, libc::CLONE_NEWUTS) as i64)
            }
            "ptrace" => {
                let pid = spawn_sleeper();
                let rc = libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0);
                kill_reap(pid);
                check("ptrace(PTRACE_SEIZE) a child", rc)
            }
            "process-vm-readv" => {
                let pid = spawn_sleeper();
                let mut buf = [0u8; 8];
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: (&raise_marker as *const _ as *mut libc::c_void),
                    iov_len: 8,
                };
                let rc = libc::process_vm_readv(pid, &local, 1, &remote, 1, 0);
                kill_reap(pid);
                check("process_vm_readv of a child", rc as i64)
            }
            "kcmp" => {
                let pid = spawn_sleeper();
                let rc = libc::syscall(
                    libc::SYS_kcmp,
                    libc::getpid(),
                    pid,
                    0, /* KCMP_FILE */
                    0,
                    0,
                );
                kill_reap(pid);
                check("kcmp", rc)
            }
            "raw-socket" => check(
                "socket(AF_INET, SOCK_RAW)",
                libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as i64,
            ),
            "packet-socket" => check(
                "socket(AF_PACKET)",
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) as i64,
            ),
            "netlink-audit" => check(
                "socket(AF_NETLINK, NETLINK_AUDIT)",
                libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 9) as i64,
            ),
            "connect-tcp" => match std::net::TcpStream::connect_timeout(
                &arg(1).parse().unwrap(),
                std::time::Duration::from_secs(2),
            ) {
                Ok(_) => works(format!("connected to {}", arg(1))),
                Err(e) => blocked(format!("connect {}: {e}", arg(1))),
            },
            "connect-unix" => match std::os::unix::net::UnixStream::connect(arg(1)) {
                Ok(_) => works(format!("connected to {}", arg(1))),
                Err(e) => blocked(format!("connect {}: {e}", arg(1))),
            },
            "connect-abstract" => {
                use std::os::linux::net::SocketAddrExt;
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(arg(1).as_bytes()).unwrap();
                match std::os::unix::net::UnixStream::connect_addr(&addr) {
                    Ok(_) => works("connected to the abstract socket"),
                    Err(e) => blocked(format!("connect @{}: {e}", arg(1))),
                }
            }
            "write" => match std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(arg(1))
            {
                Ok(mut f) => match f.write_all(arg(2).as_bytes()) {
                    Ok(()) => works(format!("wrote {}", arg(1))),
                    Err(e) => blocked(format!("write {}: {e}", arg(1))),
                },
                Err(e) => blocked(format!("open {}: {e}", arg(1))),
            },
            "read" => match std::fs::read(arg(1)) {
                Ok(b) if !b.is_empty() => works(format!("read {} bytes of {}", b.len(), arg(1))),
                Ok(_) => blocked(format!("{} is empty", arg(1))),
                Err(e) => blocked(format!("read {}: {e}", arg(1))),
            },
            "read-kcore" => {
                let mut f = match std::fs::File::open("/proc/kcore") {
                    Ok(f) => f,
                    Err(e) => blocked(format!("open /proc/kcore: {e}")),
                };
                let mut b = [0u8; 16];
                match f.read(&mut b) {
                    Ok(n) if n > 0 => works("read kernel memory image"),
                    Ok(_) => blocked("/proc/kcore reads empty (masked)"),
                    Err(e) => blocked(format!("read /proc/kcore: {e}")),
                }
            }
            "hardlink" => check(
                "link",
                libc::link(c(&arg(1)).as_ptr(), c(&arg(2)).as_ptr()) as i64,
            ),
            "proc-root" => {
                // Any process's root that shows the host file names in arg(1).
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.parse::<u32>().is_ok() {
                        let p = format!("/proc/{name}/root{}", arg(1));
                        if std::fs::read(&p).is_ok() {
                            works(format!("read {p}"))
                        }
                    }
                }
                blocked(format!("no /proc/*/root{} readable", arg(1)))
            }
            "fd-escape" => {
                // An inherited descriptor of a host directory opens files next to it.
                for fd in 3..256 {
                    let f = libc::openat(fd, c(&arg(1)).as_ptr(), libc::O_RDONLY);
                    if f >= 0 {
                        works(format!("opened {} through inherited fd {fd}", arg(1)))
                    }
                }
                blocked("no inherited descriptor leads to the host file")
            }
            "list-fds" => {
                let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                println!("{}", fds.join(" "));
                exit(0)
            }
            "tiocsti" => {
                let ch: libc::c_char = b'#' as libc::c_char;
                check(
                    "ioctl(0, TIOCSTI)",
                    libc::ioctl(0, libc::TIOCSTI, &ch) as i64,
                )
            }
            "tiocsti-highbits" => {
                let ch: libc::c_char = b'#' as libc::c_char;
                let req: u64 = 0x1_0000_0000 | libc::TIOCSTI;
                check(
                    "ioctl(0, TIOCSTI | 1<<32)",
                    libc::syscall(libc::SYS_ioctl, 0, req, &ch),
                )
            }
            "euid" => {
                let e = libc::geteuid();
                if e == 0 {
                    works("running with euid 0")
                }
                blocked(format!("euid is {e}"))
            }
            "fork-bomb" => {
                let want: usize = arg(1).parse().unwrap();
                let mut kids = Vec::new();
                for _ in 0..want {
                    let pid = spawn_sleeper();
                    if pid < 0 {
                        break;
                    }
                    kids.push(pid);
                }
                let n = kids.len();
                for k in kids {
                    kill_reap(k);
                }
                if n >= want {
                    works(format!("started {n} processes"))
                }
                blocked(format!(
                    "stopped after {n} of {want} processes: {}",
                    errstr()
                ))
            }
            "fill" => {
                let path = format!("{}/cage-probe-fill", arg(1));
                let mb: usize = arg(2).parse().unwrap();
                let mut f = match std::fs::File::create(&path) {
                    Ok(f) => f,
                    Err(e) => blocked(format!("create {path}: {e}")),
                };
                let chunk = vec![1u8; 1 << 20];
                let mut res = Ok(());
                for _ in 0..mb {
                    res = f.write_all(&chunk);
                    if res.is_err() {
                        break;
                    }
                }
                let _ = std::fs::remove_file(&path);
                match res {
                    Ok(()) => works(format!("wrote {mb} MiB to {}", arg(1))),
                    Err(e) => blocked(format!("filling {}: {e}", arg(1))),
                }
            }
            "alloc" => {
                let mb: usize = arg(1).parse().unwrap();
                let mut v: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mb {
                    let mut chunk = Vec::new();
                    if chunk.try_reserve_exact(1 << 20).is_err() {
                        blocked(format!("allocation failed after {} MiB", v.len()))
                    }
                    chunk.resize(1 << 20, 7u8);
                    v.push(chunk);
                }
                works(format!("allocated and touched {mb} MiB"))
            }
            "mknod" => {
                let p = c(&arg(1));
                let rc = libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3));
                if rc == 0 {
                    libc::unlink(p.as_ptr());
                }
                check("mknod char device", rc as i64)
            }
            "block-device" => {
                let dev = std::fs::read_dir("/sys/block").ok().and_then(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .find(|n| !n.starts_with("loop") && !n.starts_with("ram"))
                });
                let path = match dev {
                    Some(d) => format!("/dev/{d}"),
                    None => "/dev/vda".into(),
                };
                match std::fs::File::open(&path) {
                    Ok(mut f) => {
                        let mut b = [0u8; 512];
                        match f.read(&mut b) {
                            Ok(n) => works(format!("read {n} bytes of the disk {path}")),
                            Err(e) => blocked(format!("read {path}: {e}")),
                        }
                    }
                    Err(e) => blocked(format!("open {path}: {e}")),
                }
            }
            "proc-sys-hostname" => {
                match std::fs::write("/proc/sys/kernel/hostname", "cage-probe") {
                    Ok(()) => works("wrote /proc/sys/kernel/hostname"),
                    Err(e) => blocked(format!("write /proc/sys/kernel/hostname: {e}")),
                }
            }
            "sethostname" => check(
                "sethostname",
                libc::sethostname(c("cage-probe").as_ptr(), 10) as i64,
            ),
            "chroot" => check("chroot", libc::chroot(c("/").as_ptr()) as i64),
            "cgroup-escape" => {
                let pid = std::process::id().to_string();
                for root in [
                    "/sys/fs/cgroup/pids/cgroup.procs",
                    "/sys/fs/cgroup/cgroup.procs",
                    "/sys/fs/cgroup/unified/cgroup.procs",
                ] {
                    if std::fs::write(root, &pid).is_ok() {
                        works(format!("moved into the root cgroup via {root}"))
                    }
                }
                blocked(format!("cannot write a root cgroup.procs: {}", errstr()))
            }
            "bpf" => {
                // BPF_PROG_LOAD of "return 0" as a socket filter.
                let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
                let license = c("GPL");
                let mut attr = [0u8; 128];
                let w = |a: &mut [u8], off: usize, v: u64, n: usize| {
                    a[off..off + n].copy_from_slice(&v.to_ne_bytes()[..n])
                };
                w(&mut attr, 0, 1, 4); // prog_type = SOCKET_FILTER
                w(&mut attr, 4, 2, 4); // insn_cnt
                w(&mut attr, 8, insns.as_ptr() as u64, 8);
                w(&mut attr, 16, license.as_ptr() as u64, 8);
                check(
                    "bpf(BPF_PROG_LOAD)",
                    libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), 128),
                )
            }
            "perf" => {
                // perf_event_attr: type u32 @0 (1 = PERF_TYPE_SOFTWARE), size u32 @4, config u64 @8
                // (0 = PERF_COUNT_SW_CPU_CLOCK); the rest zero. 128 bytes covers every version.
                let mut attr = [0u8; 128];
                attr[0..4].copy_from_slice(&1u32.to_ne_bytes());
                attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
                check(
                    "perf_event_open",
                    libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0),
                )
            }
            "userfaultfd" => check(
                "userfaultfd",
                libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC),
            ),
            "keyctl" => check(
                "keyctl(GET_KEYRING_ID)",
                libc::syscall(libc::SYS_keyctl, 0, -4 /* user keyring */, 0),
            ),
            "io-uring" => {
                let mut params = [0u8; 120];
                let rc = libc::syscall(libc::SYS_io_uring_setup, 2, params.as_mut_ptr());
                check("io_uring_setup", rc)
            }
            "personality" => check(
                "personality(READ_IMPLIES_EXEC)",
                libc::personality(0x0040_0000) as i64,
            ),
            "open-by-handle" => {
                // The "shocker" escape: open a file by handle, bypassing the mount's path.
                #[repr(C)]
                struct Handle {
                    bytes: u32,
                    typ: i32,
                    f: [u8; 128],
                }
                let mut h = Handle {
                    bytes: 128,
                    typ: 0,
                    f: [0; 128],
                };
                let mut mount_id = 0;
                let rc = libc::syscall(
                    libc::SYS_name_to_handle_at,
                    libc::AT_FDCWD,
                    c("/").as_ptr(),
                    &mut h,
                    &mut mount_id,
                    0,
                );
                if rc != 0 {
                    blocked(format!("name_to_handle_at: {}", errstr()))
                }
                let root = libc::open(c("/").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                check(
                    "open_by_handle_at",
                    libc::syscall(libc::SYS_open_by_handle_at, root, &h, libc::O_RDONLY),
                )
            }
            "finit-module" => {
                let f = std::fs::File::open("/dev/null").unwrap();
                reached(
                    "finit_module",
                    libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c("").as_ptr(), 0),
                )
            }
            "kexec-load" => reached(
                "kexec_load",
                libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0xdead_0000u64),
            ),
            "reboot" => reached(
                "reboot (bad magic)",
                libc::syscall(libc::SYS_reboot, 0, 0, 0, 0),
            ),
            "swapoff" => reached(
                "swapoff",
                libc::syscall(libc::SYS_swapoff, c("/nonexistent-cage-probe").as_ptr()),
            ),
            "clock-settime" => {
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 2_000_000_000,
                };
                reached(
                    "clock_settime (invalid time)",
                    libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, &ts),
                )
            }
            "acct" => reached(
                "acct",
                libc::syscall(libc::SYS_acct, c("/nonexistent-cage-probe").as_ptr()),
            ),
            "pivot-root" => reached(
                "pivot_root",
                libc::syscall(
                    libc::SYS_pivot_root,
                    c("/nonexistent-a").as_ptr(),
                    c("/nonexistent-b").as_ptr(),
                ),
            ),
            _ => {
                eprintln!("unknown attack {attack}");
                exit(2)
            }
        }
    }
}

static RAISE_MARKER: u64 = 0x6361_6765;
#[allow(non_upper_case_globals)]
static raise_marker: &u64 = &RAISE_MARKER;
