//! The seccomp allow-list against real tools: python3, git, curl, node, npm, pip, gcc and
//! dpkg from the host's /usr (`--rootfs host`), run inside `cagerun exec` as root and
//! rootless, each doing the everyday things that need threads, processes, sockets, memory
//! maps and randomness. Then the calls the allow-list closes, first shown to work outside.
//! Last, the two engines' compilers (cage-sandbox's and libcontainer's libseccomp) given the
//! same profile and the same calls, in threads of this process.
//!
//! A missing tool fails the test, naming the Debian package to install.

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::*;

/// The sandbox's PATH (cage_spec::sandbox's default), looked up on the host, whose /usr the
/// sandbox binds.
const SANDBOX_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn require(tool: &str, package: &str) {
    let found = SANDBOX_PATH
        .iter()
        .any(|dir| Path::new(dir).join(tool).exists());
    assert!(
        found,
        "{tool} is not installed on this host (in {SANDBOX_PATH:?}): these tests need it; \
         install the Debian package `{package}` (apt-get install {package})"
    );
}

/// Write `name` into the workspace, readable by the sandbox user.
fn put(ws: &TempDir, name: &str, text: &str) {
    let path = ws.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Run `script` with sh inside the sandbox in every mode; it must exit 0 and print `expect`
/// (every line of it, in order, somewhere in its output).
fn runs_inside(prepare: impl Fn(&TempDir), script: &str, expect: &[&str]) {
    for mode in modes() {
        let ws = workspace(mode);
        prepare(&ws);
        let r = sh(mode, &ws, &["--timeout", "120"], script);
        assert_eq!(
            r.code, 0,
            "[{mode:?}] {script}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        let mut rest = r.stdout.as_str();
        for line in expect {
            let at = rest.find(line).unwrap_or_else(|| {
                panic!(
                    "[{mode:?}] {line:?} missing in the output of {script}:\n{}\nstderr: {}",
                    r.stdout, r.stderr
                )
            });
            rest = &rest[at + line.len()..];
        }
    }
}

const PYTHON: &str = r#"
import mmap, multiprocessing, os, socket, subprocess, tempfile, threading

def square(x):
    return x * x

if __name__ == "__main__":
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(square(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [square(i) for i in range(8)], out
    r = subprocess.run(["/bin/echo", "child"], capture_output=True, text=True, check=True)
    assert r.stdout == "child\n", r.stdout
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(square, range(5)) == [0, 1, 4, 9, 16], method
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(b"ping")
    assert b.recv(4) == b"ping"
    path = os.path.join(tempfile.mkdtemp(), "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    conn, _ = server.accept()
    client.sendall(b"x")
    assert conn.recv(1) == b"x"
    assert len(os.urandom(32)) == 32
    anon = mmap.mmap(-1, 4096)
    anon[:5] = b"hello"
    assert anon[:5] == b"hello"
    with open("/tmp/mapped", "wb") as f:
        f.write(b"\0" * 4096)
    with open("/tmp/mapped", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[:3] = b"abc"
        m.flush()
    with open("/tmp/mapped", "rb") as f:
        assert f.read(3) == b"abc"
    print("python ok")
"#;

#[test]
fn python3_threads_processes_unix_sockets_urandom_mmap() {
    require("python3", "python3");
    runs_inside(
        |ws| put(ws, "t.py", PYTHON),
        "python3 /workspace/t.py",
        &["python ok"],
    );
}

#[test]
fn pip_reports_its_version() {
    require("python3", "python3");
    let pip = Command::new("/usr/bin/python3")
        .args(["-c", "import pip"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        pip,
        "pip is not installed for /usr/bin/python3: install the Debian package `python3-pip`"
    );
    runs_inside(|_| {}, "python3 -m pip --version", &["pip ", "python 3"]);
}

#[test]
fn git_init_add_commit() {
    require("git", "git");
    runs_inside(
        |_| {},
        "cd /workspace && git init -q repo && cd repo && echo hi > f && git add f \
         && git -c user.name=sandbox -c user.email=sandbox@example.com commit -q -m first \
         && git log --format=%s",
        &["first"],
    );
}

#[test]
fn curl_version_and_a_file_url() {
    require("curl", "curl");
    runs_inside(
        |ws| put(ws, "page.txt", "served from a file url\n"),
        "curl --version && curl -sS file:///workspace/page.txt",
        &["curl ", "served from a file url"],
    );
}

const NODE: &str = r#"
const cp = require("child_process");
const crypto = require("crypto");
const fs = require("fs");
const { Worker } = require("worker_threads");
if (cp.execFileSync("/bin/echo", ["child"]).toString() !== "child\n") throw new Error("child");
cp.spawn("/bin/true").on("exit", (code) => { if (code !== 0) process.exit(4); });
fs.writeFileSync("/tmp/n.txt", "data");
if (fs.readFileSync("/tmp/n.txt", "utf8") !== "data") throw new Error("fs");
fs.promises.readFile("/tmp/n.txt", "utf8").then((d) => { if (d !== "data") process.exit(5); });
const digest = crypto.createHash("sha256").update("x").digest("hex");
if (crypto.randomBytes(16).length !== 16) throw new Error("random");
const w = new Worker('require("worker_threads").parentPort.postMessage(21 * 2)', { eval: true });
w.on("message", (m) => {
  if (m !== 42) process.exit(3);
  console.log("node ok " + digest.slice(0, 8));
  w.terminate();
});
"#;

#[test]
fn node_child_process_worker_threads_fs_crypto() {
    require("node", "nodejs");
    runs_inside(
        |ws| put(ws, "t.js", NODE),
        "node /workspace/t.js",
        &["node ok 2d711642"],
    );
}

#[test]
fn npm_version_and_init() {
    require("node", "nodejs");
    require("npm", "npm");
    runs_inside(
        |_| {},
        "npm --version && mkdir /workspace/pkg && cd /workspace/pkg \
         && HOME=/tmp npm_config_update_notifier=false npm init -y > /dev/null \
         && cat package.json",
        &[".", "\"name\": \"pkg\""],
    );
}

const C_THREADS: &str = r#"
#include <pthread.h>
#include <stdio.h>

static long sums[4];

static void *work(void *arg) {
    long i = (long)arg, s = 0;
    for (long k = i * 25; k < (i + 1) * 25; k++)
        s += k;
    sums[i] = s;
    return NULL;
}

int main(void) {
    pthread_t t[4];
    long total = 0;
    for (long i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, work, (void *)i))
            return 1;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += sums[i];
    }
    printf("sum %ld\n", total);
    return 0;
}
"#;

#[test]
fn gcc_compiles_and_runs_a_threaded_program() {
    require("gcc", "gcc");
    runs_inside(
        |ws| put(ws, "threads.c", C_THREADS),
        "gcc -O1 -pthread -o /tmp/threads /workspace/threads.c && /tmp/threads \
         && gcc -O1 -pthread -o /workspace/threads /workspace/threads.c && /workspace/threads",
        &["sum 4950", "sum 4950"],
    );
}

/// `--rootfs host` binds /usr and a few files of /etc, not /var/lib/dpkg: dpkg reads a copy of
/// the host's package database from the workspace.
#[test]
fn dpkg_version_and_list() {
    require("dpkg", "dpkg");
    let status = std::fs::read_to_string("/var/lib/dpkg/status")
        .expect("/var/lib/dpkg/status: this host has no dpkg database");
    runs_inside(
        |ws| {
            let db = ws.path().join("dpkgdb");
            std::fs::create_dir(&db).unwrap();
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
            put(ws, "dpkgdb/status", &status);
        },
        "dpkg --version && dpkg --admindir=/workspace/dpkgdb -l | head -n 8",
        &["package management program version", "Desired=", "ii  "],
    );
}

/// Calls the allow-list refuses, each asked with arguments that make it succeed on this
/// kernel, and what unknown and clone3 numbers answer. Prints `name ret errno`.
const SYSCALL_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

struct mnt_id_req { uint32_t size, spare; uint64_t mnt_id, param, mnt_ns_id; };

static void show(const char *name, long ret) {
    printf("%s %ld %d\n", name, ret < 0 ? -1L : ret, ret < 0 ? errno : 0);
}

int main(void) {
    char ldt[16];
    show("modify_ldt", syscall(154, 0, ldt, sizeof ldt)); /* read the LDT */
    show("memfd_secret", syscall(447, 0));
    /* LSMT_ROOT: the mount ids under this mount namespace's root */
    struct mnt_id_req req = { .size = 24, .mnt_id = (uint64_t)-1 };
    uint64_t ids[256];
    show("listmount", syscall(458, &req, ids, 256, 0));
    show("clone3", syscall(435, NULL, 0));
    show("nr_1000", syscall(1000));
    return 0;
}
"#;

/// name → (return value, errno)
fn parse_probe(out: &str) -> std::collections::BTreeMap<String, (i64, i32)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
            ))
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn modify_ldt_memfd_secret_listmount_work_outside_and_are_refused_inside() {
    require("gcc", "gcc");
    for mode in modes() {
        let ws = workspace(mode);
        put(&ws, "probe.c", SYSCALL_PROBE);
        let bin = ws.path().join("syscall-probe");
        let gcc = Command::new("gcc")
            .arg("-O1")
            .arg("-o")
            .arg(&bin)
            .arg(ws.path().join("probe.c"))
            .output()
            .unwrap();
        assert!(gcc.status.success(), "gcc: {gcc:?}");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Outside, as the caller of this mode: the probe is valid.
        let mut outside = Command::new(&bin);
        if let Mode::Rootless { uid, gid } = mode {
            if is_root() {
                use std::os::unix::process::CommandExt;
                outside.uid(uid).gid(gid);
            }
        }
        let out = outside.output().unwrap();
        let outside = parse_probe(&String::from_utf8_lossy(&out.stdout));
        eprintln!("[{mode:?}] outside: {outside:?}");
        assert_eq!(outside["modify_ldt"], (0, 0), "modify_ldt works outside");
        assert!(outside["memfd_secret"].0 >= 0, "memfd_secret works outside");
        assert!(outside["listmount"].0 >= 1, "listmount works outside");
        assert_eq!(
            outside["clone3"],
            (-1, libc::EINVAL),
            "clone3 reaches the kernel"
        );

        let r = sh(mode, &ws, &[], "/workspace/syscall-probe");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let inside = parse_probe(&r.stdout);
        for name in ["modify_ldt", "memfd_secret", "listmount"] {
            assert_eq!(inside[name], (-1, libc::EPERM), "{name} inside [{mode:?}]");
        }
        assert_eq!(
            inside["clone3"],
            (-1, libc::ENOSYS),
            "clone3: libc falls back"
        );
        assert_eq!(inside["nr_1000"], (-1, libc::ENOSYS), "unknown numbers");
    }
}

/// One call made by a filtered thread: raw syscall number and arguments.
struct Probe {
    what: &'static str,
    nr: i64,
    args: [u64; 6],
    /// The answer both engines must give: Ok(return value) or Err(errno).
    want: Result<i64, i32>,
}

fn probes() -> Vec<Probe> {
    use libc::*;
    let bad_fd = u32::MAX as u64; // -1 as an int
    let einval_clone = CLONE_SIGHAND as u64; // without CLONE_VM: EINVAL from the kernel
    let bogus = 0x100; // a socket type bit no socket has: EINVAL from the kernel
    let p = |what, nr, args: &[u64], want| {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        Probe {
            what,
            nr,
            args: a,
            want,
        }
    };
    let (raw, stream) = (SOCK_RAW as u64, SOCK_STREAM as u64);
    vec![
        p("getpid", SYS_getpid, &[], Ok(std::process::id() as i64)),
        p("unshare(0)", SYS_unshare, &[0], Err(EPERM)),
        p("ptrace", SYS_ptrace, &[PTRACE_TRACEME as u64], Err(EPERM)),
        p("modify_ldt", SYS_modify_ldt, &[1, 0, 0], Err(EPERM)),
        p("clone3", SYS_clone3, &[0, 0], Err(ENOSYS)),
        p("nr 1000", 1000, &[], Err(ENOSYS)),
        p("clone", SYS_clone, &[einval_clone], Err(EINVAL)),
        p(
            "clone, sign-extended CLONE_IO",
            SYS_clone,
            &[0xffff_ffff_8000_0000 | einval_clone],
            Err(EINVAL),
        ),
        p(
            "clone, junk upper bits",
            SYS_clone,
            &[1 << 32 | einval_clone],
            Err(ENOSYS),
        ),
        p(
            "clone CLONE_NEWUSER",
            SYS_clone,
            &[(CLONE_NEWUSER | CLONE_FS) as u64],
            Err(EPERM),
        ),
        p(
            "clone CLONE_NEWNS",
            SYS_clone,
            &[(CLONE_NEWNS | CLONE_FS) as u64],
            Err(EPERM),
        ),
        p(
            "clone CLONE_NEWNET, upper bits",
            SYS_clone,
            &[0xffff_ffff_0000_0000 | (CLONE_NEWNET | CLONE_FS) as u64],
            Err(EPERM),
        ),
        p(
            "ioctl TIOCGWINSZ",
            SYS_ioctl,
            &[bad_fd, TIOCGWINSZ],
            Err(EBADF),
        ),
        p(
            "ioctl TIOCGPTN sign-extended",
            SYS_ioctl,
            &[bad_fd, 0xffff_ffff_8004_5430],
            Err(EBADF),
        ),
        p("ioctl TIOCSTI", SYS_ioctl, &[bad_fd, TIOCSTI], Err(EPERM)),
        p(
            "ioctl TIOCLINUX",
            SYS_ioctl,
            &[bad_fd, TIOCLINUX],
            Err(EPERM),
        ),
        p(
            "ioctl TIOCSTI, upper bits",
            SYS_ioctl,
            &[bad_fd, 1 << 32 | TIOCSTI],
            Err(ENOSYS),
        ),
        p(
            "socket AF_UNIX",
            SYS_socket,
            &[AF_UNIX as u64, stream | bogus],
            Err(EINVAL),
        ),
        p(
            "socket AF_INET stream",
            SYS_socket,
            &[AF_INET as u64, stream | bogus],
            Err(EINVAL),
        ),
        p(
            "socket AF_INET raw",
            SYS_socket,
            &[AF_INET as u64, raw | bogus],
            Err(EPERM),
        ),
        p(
            "socket AF_INET6 raw",
            SYS_socket,
            &[AF_INET6 as u64, raw | bogus],
            Err(EPERM),
        ),
        p(
            "socket AF_PACKET",
            SYS_socket,
            &[AF_PACKET as u64, raw | bogus],
            Err(EPERM),
        ),
        p(
            "socket AF_ALG",
            SYS_socket,
            &[AF_ALG as u64, SOCK_SEQPACKET as u64 | bogus],
            Err(EPERM),
        ),
        p(
            "socket AF_VSOCK",
            SYS_socket,
            &[AF_VSOCK as u64, stream | bogus],
            Err(EPERM),
        ),
        p(
            "socket AF_PACKET, upper bits",
            SYS_socket,
            &[1 << 32 | AF_PACKET as u64, raw | bogus],
            Err(ENOSYS),
        ),
        p(
            "socket NETLINK_ROUTE",
            SYS_socket,
            &[AF_NETLINK as u64, raw | bogus, 0],
            Err(EINVAL),
        ),
        p(
            "socket NETLINK_AUDIT",
            SYS_socket,
            &[AF_NETLINK as u64, raw | bogus, NETLINK_AUDIT as u64],
            Err(EPROTONOSUPPORT),
        ),
        p("personality query", SYS_personality, &[0xffff_ffff], Ok(0)),
        p(
            "personality READ_IMPLIES_EXEC",
            SYS_personality,
            &[0x0040_0000],
            Err(ENOSYS),
        ),
    ]
}

/// Install a filter in a new thread (filters are per thread without TSYNC), make every probe
/// call there, and return what each answered.
fn answers_in_a_filtered_thread(
    install: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Vec<Result<i64, i32>> {
    std::thread::spawn(move || {
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            0
        );
        install().expect("installing the filter");
        probes()
            .iter()
            .map(|p| {
                let [a, b, c, d, e, f] = p.args;
                let r = unsafe { libc::syscall(p.nr, a, b, c, d, e, f) };
                if r < 0 {
                    Err(std::io::Error::last_os_error().raw_os_error().unwrap())
                } else {
                    Ok(r)
                }
            })
            .collect()
    })
    .join()
    .expect("the filtered thread")
}

/// The profile's argument rules rely on both compilers trying refusals before the ALLOW
/// entries that catch the rest (cage_spec::seccomp, "Written so that both engines answer
/// alike"): the same calls, under each engine's own compilation, answer the same.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_sandbox_and_services_engines_compile_the_profile_alike() {
    let profile = cage_spec::seccomp::sandbox_profile().unwrap();
    let ours = {
        let profile = profile.clone();
        answers_in_a_filtered_thread(move || {
            let programs = cage_sandbox::seccomp::compile(&profile).map_err(|e| e.to_string())?;
            cage_sandbox::seccomp::install(&programs).map_err(|e| e.to_string())
        })
    };
    let libseccomp = answers_in_a_filtered_thread(move || {
        libcontainer::seccomp::initialize_seccomp(&profile)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let mut wrong = Vec::new();
    for ((p, a), b) in probes().iter().zip(&ours).zip(&libseccomp) {
        eprintln!(
            "{:32} want {:?}, cage-sandbox {:?}, libseccomp {:?}",
            p.what, p.want, a, b
        );
        if *a != p.want || *b != p.want {
            wrong.push(p.what);
        }
    }
    assert!(wrong.is_empty(), "answered otherwise: {wrong:?}");
}
