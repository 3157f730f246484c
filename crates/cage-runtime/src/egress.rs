//! `cagerun egress-proxy`: the egress resolver and proxy of a cage's `internet = [...]` lists
//! (cage-net `egress`), as its own process: hostile bytes (lookups, ClientHellos, requests)
//! are parsed in a process that holds nothing but its sockets. It runs in the host's network
//! namespace (it connects from the host's stack) with the router namespace's sockets the
//! holder made, no_new_privs, no filesystem at all (Landlock), and as root drops to `nobody`
//! before it reads a byte. It ends
//! with its control socket (the supervisor, however it ends).
//!
//! The supervisor's side is [`EgressProxy`]: spawn it, send it the live policy, write what
//! it reports to the audit log (`<cage>/.cagerun/logs/egress.log`, JSON lines, rotated).

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use cage_net::egress::proxy::{Proxy, ProxyRequest, Sockets};
pub use cage_net::egress::{Entry, Verdict};
use cage_spec::egress::EgressPolicy;

use crate::ipc;
use crate::proto::{EgressEvent, SupervisorToEgress};

/// Where the proxy finds its descriptors.
pub mod fds {
    pub const CONTROL: i32 = 3;
    pub const DNS: i32 = 4;
    pub const TCP: i32 = 5;
    pub const NFLOG: i32 = 6;
}

/// The audit log rotates (to `egress.log.1`) past this size.
pub const LOG_MAX: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct EgressOptions {
    pub upstream_dns: Vec<SocketAddrV4>,
}

/// The proxy process.
pub fn run(opts: EgressOptions) -> Result<()> {
    // SAFETY: the supervisor put these descriptors at these numbers.
    let (ctl, dns, tcp, nflog) = unsafe {
        (
            OwnedFd::from_raw_fd(fds::CONTROL),
            OwnedFd::from_raw_fd(fds::DNS),
            OwnedFd::from_raw_fd(fds::TCP),
            OwnedFd::from_raw_fd(fds::NFLOG),
        )
    };
    // Start-up ran most of this binary once; proxying needs far less of it resident. Here,
    // while /proc/self/smaps can still be read (not after becoming nobody or Landlock).
    crate::resident::release_startup_pages();
    harden()?;
    // Nothing from the filesystem is needed past this point (every socket is open, the
    // resolvers came as arguments): a parser bug reached by hostile bytes finds no file to
    // read, write or run, and no process outside to signal or trace.
    match cage_sandbox::landlock::no_filesystem() {
        Ok(landlock::RulesetStatus::FullyEnforced) => {}
        Ok(status) => tracing::debug!("egress proxy: Landlock {status:?} on this kernel"),
        Err(e) => tracing::warn!("egress proxy: Landlock: {e}"),
    }
    let policy = match ipc::recv::<SupervisorToEgress>(&ctl)? {
        Some((SupervisorToEgress::Policy(p), _)) => p,
        None => return Ok(()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let proxy = Proxy::start(
        ProxyRequest {
            sockets: Sockets {
                dns: dns.into(),
                tcp: tcp.into(),
                nflog,
            },
            upstream_dns: opts.upstream_dns,
            policy,
        },
        tx,
    )
    .context("starting the egress proxy")?;
    let out = ctl.try_clone()?;
    std::thread::spawn(move || {
        for e in rx {
            if ipc::send(&out, &EgressEvent::Entry(e), &[]).is_err() {
                std::process::exit(0);
            }
        }
    });
    loop {
        match ipc::recv::<SupervisorToEgress>(&ctl) {
            Ok(Some((SupervisorToEgress::Policy(p), _))) => proxy.update(p),
            Ok(None) => return Ok(()),
            Err(e @ (ipc::IpcError::Malformed { .. } | ipc::IpcError::TooLong { .. })) => {
                tracing::warn!("egress proxy: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Never gain privileges, and as root become nobody: the proxy needs no privilege for what it
/// does (accept, connect, splice). It ends with its control socket, not by PDEATHSIG: that
/// fires when the parent *thread* ends, and the supervisor starts it from a pool thread that
/// ends when idle.
fn harden() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            bail!("no_new_privs: {}", std::io::Error::last_os_error());
        }
    }
    if nix::unistd::geteuid().is_root() {
        let nobody = 65534;
        nix::unistd::setgroups(&[]).context("dropping supplementary groups")?;
        nix::unistd::setresgid(nobody.into(), nobody.into(), nobody.into())
            .context("becoming group nogroup")?;
        nix::unistd::setresuid(nobody.into(), nobody.into(), nobody.into())
            .context("becoming user nobody")?;
    }
    Ok(())
}

/// The supervisor's handle on its egress proxy.
pub struct EgressProxy {
    child: Mutex<Child>,
    sock: Mutex<OwnedFd>,
}

impl EgressProxy {
    /// Start it on the router namespace's sockets, with the first policy; what it reports is
    /// appended to `log`.
    pub fn spawn(
        sockets: Sockets,
        upstream_dns: &[SocketAddrV4],
        policy: &EgressPolicy,
        log: &Path,
    ) -> Result<EgressProxy> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut writer = crate::monitor::Log::open(log, LOG_MAX)?;
        let (ours, theirs) = ipc::pair()?;
        let mut cmd = Command::new(crate::host::self_exe()?);
        cmd.arg("egress-proxy");
        for d in upstream_dns {
            cmd.args(["--dns", &d.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let dns: OwnedFd = sockets.dns.into();
        let tcp: OwnedFd = sockets.tcp.into();
        ipc::pass_fds(
            &mut cmd,
            &[
                theirs.as_raw_fd(),
                dns.as_raw_fd(),
                tcp.as_raw_fd(),
                sockets.nflog.as_raw_fd(),
            ],
        );
        let child = cmd.spawn().context("starting the egress proxy")?;
        drop((theirs, dns, tcp, sockets.nflog));
        ipc::send(&ours, &SupervisorToEgress::Policy(policy.clone()), &[])
            .context("sending the egress proxy its policy")?;
        let reader = ours.try_clone()?;
        std::thread::Builder::new()
            .name("egress-log".into())
            .spawn(move || {
                while let Ok(Some((EgressEvent::Entry(e), _))) = ipc::recv::<EgressEvent>(&reader) {
                    if let Ok(mut line) = serde_json::to_vec(&e) {
                        line.push(b'\n');
                        writer.write(&line);
                    }
                }
            })?;
        Ok(EgressProxy {
            child: Mutex::new(child),
            sock: Mutex::new(ours),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.lock().unwrap().id() as i32
    }

    /// The new live policy.
    pub fn update(&self, policy: &EgressPolicy) -> Result<()> {
        let sock = self.sock.lock().unwrap();
        ipc::send(
            &sock.as_fd(),
            &SupervisorToEgress::Policy(policy.clone()),
            &[],
        )
        .context("sending the egress proxy its policy")
    }

    pub fn stop(&self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The cage's audit log (it outlives the run, like the services' logs).
pub fn log_path(paths: &crate::services::state::CagePaths) -> std::path::PathBuf {
    paths.logs().join("egress.log")
}

/// Reads the audit log: what is there now ([`AuditReader::next_batch`]), then what is
/// appended (it follows a rotation to `egress.log.1` by reopening the path).
pub struct AuditReader {
    path: std::path::PathBuf,
    file: Option<std::io::BufReader<std::fs::File>>,
    inode: u64,
    partial: String,
}

impl AuditReader {
    pub fn open(path: &Path) -> AuditReader {
        AuditReader {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            partial: String::new(),
        }
    }

    /// The entries appended since the last call (lines that do not parse are skipped).
    pub fn next_batch(&mut self) -> Vec<cage_net::egress::Entry> {
        use std::io::BufRead;
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0);
        if self.file.is_none() || (now != 0 && now != self.inode) {
            if let Ok(f) = std::fs::File::open(&self.path) {
                self.file = Some(std::io::BufReader::new(f));
                self.inode = now;
                self.partial.clear();
            }
        }
        let mut out = Vec::new();
        let Some(r) = self.file.as_mut() else {
            return out;
        };
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => {
                    self.partial.push_str(&line);
                    break;
                }
                Ok(_) => {
                    let whole = std::mem::take(&mut self.partial) + &line;
                    if let Ok(e) = serde_json::from_str(whole.trim_end()) {
                        out.push(e);
                    }
                }
            }
        }
        out
    }
}
