//! `cagerun runtime` (also answering as `cagerun-runc`): a runc-compatible OCI runtime, so
//! containerd (`io.containerd.runc.v2` with `BinaryName`, a Kubernetes RuntimeClass), podman
//! (`--runtime`) and the OCI validation suite run their containers on cagerun's engine —
//! youki's libcontainer, the same one `cagerun up` runs services with — plus cagerun's layer
//! ([`cage_spec::engine_layer`]: the container's seccomp on every exec, Landlock under a
//! read-only root, no inherited descriptors).
//!
//! What engines rely on, and this keeps:
//! - `create` returns once init waits for `start`, with the pid file holding init's pid
//!   (digits only) and the console's master sent over `--console-socket`;
//! - nothing is written to stdout or stderr on success (they are the container's stdio for
//!   `create`, `start` and `exec`; `ps` and `state` print JSON only);
//! - a failure is one runc-shaped line in `--log` ([`errlog`]), and the phrases containerd
//!   and podman map: `does not exist`, `container not running`;
//! - `kill` without a signal sends SIGTERM; `delete --force` of an unknown id succeeds.
//!
//! Not supported, refused with the reason: the systemd cgroup driver (cgroupfs only),
//! checkpoint/restore, seccomp user notification on exec.
//!
//! libcontainer forks with raw clone3: every verb runs on the process's only thread.

pub mod errlog;
mod executor;
pub mod root;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_spec::engine_layer::{self, EngineLayer};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::oci_spec::runtime::{Capability, LinuxResources, Process, Spec};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use serde::Serialize;

use executor::LayeredExecutor;

/// A process.json or resources file larger than this is refused (the engine writes them;
/// the bound keeps a mistake from filling memory).
const MAX_JSON: u64 = 4 << 20;

/// Under the state directory: bundles rewritten for a rootless run.
const MOVED_BUNDLES: &str = ".moved-bundles";
const ORIGIN: &str = "origin";

/// The runtime's state directory, chosen once per call.
pub struct Runtime {
    root: PathBuf,
    /// `/proc/self/uid_map`, read once: whether this is the host's root, and who the caller is
    /// on the host.
    uid_map: String,
}

/// `create`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub no_pivot: bool,
}

/// `exec`'s arguments: a process.json (`--process`, what engines send), or a command with
/// flags on top of the container's own process.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub id: String,
    pub process: Option<PathBuf>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub console_socket: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
    pub ignore_paused: bool,
    pub sub_cgroup: Option<String>,
}

/// The OCI state (`state`), with runc's `rootfs` and `owner` that go-runc and podman read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: &'static str,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

impl Runtime {
    /// `--root`, or the default for this user ([`root::default_root`]), created 0700.
    pub fn open(root: Option<PathBuf>) -> Result<Runtime> {
        let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let root = match root {
            Some(r) => r,
            None => root::default_root(
                nix::unistd::geteuid().as_raw(),
                root::is_initial_user_namespace(&uid_map),
                std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
                std::env::var_os("USER").as_deref(),
            ),
        };
        if !root.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .with_context(|| format!("creating the state directory {}", root.display()))?;
        }
        Ok(Runtime { root, uid_map })
    }

    pub fn create(&self, req: CreateRequest) -> Result<()> {
        let spec = bundle_spec(&req.bundle)?;
        let layer = engine_layer::for_init(&spec);
        if container_dir(&self.root, &req.id).is_none() {
            bail!(
                "{:?} is not a container id: one path component (no '/', not . or ..)",
                req.id
            );
        }
        let moved = self.derived_dir(&req.id);
        let bundle = if engine_layer::needs_rewrite_for_rootless(&spec, self.is_rootless()) {
            self.write_moved_bundle(&spec, &req, &moved)?;
            moved.clone()
        } else {
            req.bundle.clone()
        };
        let built = ContainerBuilder::new(req.id.clone(), SyscallType::default())
            .with_executor(executor(&layer, None))
            .with_pid_file(req.pid_file)?
            .with_console_socket(req.console_socket)
            .with_root_path(&self.root)?
            .with_preserved_fds(req.preserve_fds)
            .validate_id()?
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(req.no_pivot)
            .build();
        if let Err(e) = built {
            if bundle == moved && !self.root.join(&req.id).exists() {
                let _ = std::fs::remove_dir_all(&moved);
            }
            return Err(engine_error(e, &req.id));
        }
        Ok(())
    }

    /// Where a bundle rewritten for a rootless run is written
    /// ([`engine_layer::needs_rewrite_for_rootless`]); its `origin` file names the engine's.
    /// `id` is one path component ([`container_dir`] checked it).
    fn derived_dir(&self, id: &str) -> PathBuf {
        self.root.join(MOVED_BUNDLES).join(id)
    }

    fn write_moved_bundle(&self, spec: &Spec, req: &CreateRequest, dir: &Path) -> Result<()> {
        let has_cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .is_some();
        let cgroup = if has_cgroup {
            PathBuf::new()
        } else {
            delegated_cgroup(&req.id, &self.uid_map)?
        };
        let v1 = matches!(
            cage_sandbox::cgroups::detect(),
            cage_sandbox::cgroups::Layout::V1 { .. }
        );
        let moved = engine_layer::rewritten_for_rootless(spec, &req.bundle, cgroup, v1)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&moved)?)
            .with_context(|| format!("writing {}", dir.display()))?;
        std::fs::write(dir.join(ORIGIN), req.bundle.as_os_str().as_encoded_bytes())
            .with_context(|| format!("writing {}", dir.display()))?;
        Ok(())
    }

    /// The bundle the engine gave (not the moved copy libcontainer read).
    fn engine_bundle(&self, container: &Container) -> PathBuf {
        let bundle = container.bundle();
        if bundle.starts_with(self.root.join(MOVED_BUNDLES)) {
            if let Ok(origin) = std::fs::read(bundle.join(ORIGIN)) {
                use std::os::unix::ffi::OsStringExt;
                return PathBuf::from(std::ffi::OsString::from_vec(origin));
            }
        }
        bundle.clone()
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.load(id)?.start().map_err(|e| engine_error(e, id))?;
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<State> {
        let mut c = self.load(id)?;
        c.refresh_status().map_err(|e| engine_error(e, id))?;
        let bundle = self.engine_bundle(&c);
        let rootfs = bundle_spec(&bundle)
            .ok()
            .and_then(|s| s.root().as_ref().map(|r| r.path().clone()))
            .map(|p| if p.is_absolute() { p } else { bundle.join(p) })
            .unwrap_or_default();
        let status = status_name(c.status());
        Ok(State {
            oci_version: "1.0.2".into(),
            id: id.to_string(),
            pid: match c.status() {
                ContainerStatus::Stopped => 0,
                _ => c.pid().map(|p| p.as_raw()).unwrap_or(0),
            },
            status,
            bundle,
            rootfs,
            created: c.created().map(|t| t.to_rfc3339()),
            owner: String::new(),
            annotations: c.state.annotations.clone(),
        })
    }

    /// `signal`: a number, `TERM` or `SIGTERM`.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let signal = Signal::try_from(signal)
            .map_err(|e| anyhow::anyhow!("{signal}: not a signal ({e})"))?;
        let mut c = self.load(id)?;
        if let Err(e) = c.kill(signal, all) {
            let _ = c.refresh_status();
            if c.status() == ContainerStatus::Stopped {
                bail!("container not running");
            }
            return Err(engine_error(e, id));
        }
        Ok(())
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let Some(dir) = container_dir(&self.root, id) else {
            bail!("container {id:?} does not exist");
        };
        let moved = self.derived_dir(id);
        if force && !dir.exists() {
            let _ = std::fs::remove_dir_all(&moved);
            return Ok(());
        }
        match self.load(id)?.delete(force) {
            Ok(()) => {}
            // A poststop hook that fails is a warning and the deletion goes on (the
            // runtime-spec's rule; libcontainer stops there, after the container's processes
            // and cgroup are gone, before its state is removed).
            Err(libcontainer::error::LibcontainerError::Hook(e)) => {
                tracing::warn!("container {id}: a poststop hook failed: {e}");
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing the state of {id}"))?;
            }
            Err(e) => return Err(engine_error(e, id)),
        }
        let _ = std::fs::remove_dir_all(&moved);
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.load(id)?.pause().map_err(|e| engine_error(e, id))?;
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.load(id)?.resume().map_err(|e| engine_error(e, id))?;
        Ok(())
    }

    /// The pids of the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        use libcgroups::common::CgroupManager;
        let manager = self.cgroup(id)?;
        let pids = manager
            .get_all_pids()
            .with_context(|| format!("container {id}: reading its cgroup's pids"))?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// New limits for the running container (`update --resources`).
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        let manager = self.cgroup(id)?;
        manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .with_context(|| format!("container {id}: applying the new limits"))?;
        Ok(())
    }

    /// Run a process in the running container; returns its exit status unless detached.
    pub fn exec(&self, req: ExecRequest) -> Result<i32> {
        let container = self.load(&req.id)?;
        let spec = bundle_spec(container.bundle())?;
        if let Some(pid) = container.pid() {
            join_user_namespace_of(pid.as_raw())?;
        }
        let (process, process_file) = match &req.process {
            Some(path) => (read_json::<Process>(path, "the process file")?, true),
            None => (flags_process(&spec, &req), false),
        };
        let layer = engine_layer::for_exec(&spec, &process);
        let seccomp = if layer.reapply_seccomp {
            let filter = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
            if filter.as_ref().is_some_and(|f| f.listener_path().is_some()) {
                bail!("the container's seccomp filter hands calls to a listener (seccomp user notification): not supported for exec");
            }
            filter
        } else {
            None
        };
        // A process.json is read by libcontainer itself: a forced no_new_privs goes into a
        // copy of it in the container's state directory, removed once the process runs.
        let rewritten = if process_file && layer.force_no_new_privileges {
            let mut p = process.clone();
            p.set_no_new_privileges(Some(true));
            let path = self
                .root
                .join(&req.id)
                .join(format!("exec-process-{}.json", std::process::id()));
            std::fs::write(&path, serde_json::to_vec(&p)?)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        } else {
            None
        };
        let process_path = rewritten.clone().or(req.process.clone());
        let built = ContainerBuilder::new(req.id.clone(), SyscallType::default())
            .with_executor(executor(&layer, seccomp))
            .with_root_path(&self.root)?
            .with_console_socket(req.console_socket.clone())
            .with_pid_file(req.pid_file.clone())?
            .with_preserved_fds(req.preserve_fds)
            .validate_id()?
            .as_tenant()
            .with_detach(req.detach)
            .with_cwd(req.cwd.clone())
            .with_env(req.env.iter().cloned().collect())
            .with_process(process_path)
            .with_no_new_privs(req.no_new_privs || layer.force_no_new_privileges)
            .with_container_args(req.command.clone())
            .with_additional_gids(req.additional_gids.clone())
            .with_user(req.user.map(|(uid, _)| uid))
            .with_group(req.user.and_then(|(_, gid)| gid))
            .with_capabilities(req.capabilities.clone())
            .with_ignore_paused(req.ignore_paused)
            .with_sub_cgroup(req.sub_cgroup.clone())
            .build();
        if let Some(path) = rewritten {
            let _ = std::fs::remove_file(path);
        }
        let pid = built.map_err(|e| engine_error(e, &req.id))?;
        if req.detach {
            return Ok(0);
        }
        use nix::sys::wait::{waitpid, WaitStatus};
        loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("waiting for the exec'd process"),
            }
        }
    }

    fn load(&self, id: &str) -> Result<Container> {
        let Some(dir) = container_dir(&self.root, id) else {
            bail!("container {id:?} does not exist");
        };
        if !dir.join("state.json").exists() {
            bail!("container {id} does not exist");
        }
        Container::load(dir).map_err(|e| engine_error(e, id))
    }

    fn cgroup(&self, id: &str) -> Result<libcgroups::common::AnyCgroupManager> {
        let c = self.load(id)?;
        let config = c.spec().map_err(|e| engine_error(e, id))?;
        libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: c.systemd(),
            container_name: id.to_string(),
        })
        .with_context(|| format!("container {id}: its cgroup"))
    }
}

impl Runtime {
    /// Not root of the host: a user, or root of a user namespace (rootless podman).
    fn is_rootless(&self) -> bool {
        !nix::unistd::geteuid().is_root() || !root::is_initial_user_namespace(&self.uid_map)
    }
}

/// A container's state directory; `None` when `id` is not one path component (it would
/// name something outside the state directory). libcontainer checks ids again on create.
fn container_dir(root: &Path, id: &str) -> Option<PathBuf> {
    let one_component = !id.is_empty() && !id.contains('/') && id != "." && id != "..";
    one_component.then(|| root.join(id))
}

/// A cgroup for one container in the caller's delegated subtree, as libcontainer's
/// `cgroupsPath` (relative to each hierarchy's root).
fn delegated_cgroup(id: &str, uid_map: &str) -> Result<PathBuf> {
    use cage_sandbox::cgroups::{self, Layout};
    let host_uid = root::host_id(uid_map, nix::unistd::geteuid().as_raw())
        .context("this user namespace does not map the caller's uid")?;
    let Some(parent) = cgroups::find_parent(host_uid) else {
        bail!("run rootless with no cgroupsPath, the container needs a cgroup this user may write, and there is none: on cgroup v1 run `sudo cagerun setup-cgroups --user {host_uid}` once per boot; on cgroup v2 run it from a systemd user session (its delegated subtree)");
    };
    let top = match &parent.layout {
        Layout::V1 { memory, .. } => memory.clone(),
        _ => PathBuf::from(cgroups::ROOT),
    };
    let rel = parent.dirs[0]
        .strip_prefix(&top)
        .context("the delegated cgroup is outside its hierarchy")?;
    Ok(Path::new("/").join(rel).join(format!("runc-{id}")))
}

/// libcontainer's exec joins every namespace of the container but its user namespace: a
/// process exec'd into a container with one of its own must join it first, or it would run
/// with the caller's ids and capabilities in the container's other namespaces (rootless, it
/// could not even join them). Joined, it continues as the namespace's root, as the container's
/// own setup did; the process's user comes from the spec.
fn join_user_namespace_of(pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let theirs = format!("/proc/{pid}/ns/user");
    let same = std::fs::metadata(&theirs)
        .and_then(|t| Ok(t.ino() == std::fs::metadata("/proc/self/ns/user")?.ino()))
        .with_context(|| format!("the container's user namespace ({theirs})"))?;
    if same {
        return Ok(());
    }
    let ns = std::fs::File::open(&theirs).with_context(|| format!("opening {theirs}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .context("joining the container's user namespace")?;
    // Refused where the namespace denies setgroups; the process's groups come from the spec.
    let _ = nix::unistd::setgroups(&[]);
    nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .context("becoming root of the container's user namespace (gid 0 is not mapped)")?;
    nix::unistd::setresuid(0.into(), 0.into(), 0.into())
        .context("becoming root of the container's user namespace (uid 0 is not mapped)")?;
    Ok(())
}

fn executor(
    layer: &EngineLayer,
    seccomp: Option<libcontainer::oci_spec::runtime::LinuxSeccomp>,
) -> LayeredExecutor {
    LayeredExecutor {
        landlock_writable: layer.landlock_writable.clone(),
        seccomp,
    }
}

/// The container's process as `exec`'s flags change it (what libcontainer builds from them),
/// for deciding the layer.
fn flags_process(spec: &Spec, req: &ExecRequest) -> Process {
    let mut p = spec.process().clone().unwrap_or_default();
    if req.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if req
        .capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("CAP_SYS_ADMIN") || c.eq_ignore_ascii_case("SYS_ADMIN"))
    {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let mut effective = caps.effective().clone().unwrap_or_default();
        effective.insert(Capability::SysAdmin);
        caps.set_effective(Some(effective));
        p.set_capabilities(Some(caps));
    }
    p
}

fn bundle_spec(bundle: &Path) -> Result<Spec> {
    read_json(&bundle.join("config.json"), "the bundle's config.json")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let what = format!("{what} {}", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("opening {what}"))?;
    parse_bounded(file, &what)
}

/// JSON from `from`, refused past [`MAX_JSON`] bytes.
fn parse_bounded<T: serde::de::DeserializeOwned>(
    from: impl std::io::Read,
    what: &str,
) -> Result<T> {
    use std::io::Read;
    let mut text = Vec::new();
    from.take(MAX_JSON + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading {what}"))?;
    if text.len() as u64 > MAX_JSON {
        bail!("{what} is larger than {MAX_JSON} bytes");
    }
    serde_json::from_slice(&text).with_context(|| what.to_string())
}

/// `update --resources`'s JSON (a file, or `-` for stdin as containerd sends it).
pub fn read_resources(source: &Path) -> Result<LinuxResources> {
    if source == Path::new("-") {
        return parse_bounded(std::io::stdin(), "the resources on stdin");
    }
    read_json(source, "the resources file")
}

fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

/// libcontainer's error with its causes, in the words engines map: runc's phrases for a
/// missing executable (podman: exit 127) and a stopped container.
fn engine_error(e: libcontainer::error::LibcontainerError, id: &str) -> anyhow::Error {
    use libcontainer::error::LibcontainerError;
    if let LibcontainerError::IncorrectStatus(status) = &e {
        return match status {
            ContainerStatus::Stopped => anyhow::anyhow!("container not running"),
            other => anyhow::anyhow!(
                "container {id} is {}: not possible in that state",
                status_name(*other)
            ),
        };
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    anyhow::anyhow!(runc_phrasing(&text))
}

/// libcontainer says `executable 'x' not found in $PATH`; runc (and so podman's and
/// containerd's matching) says `exec: "x": executable file not found in $PATH`.
fn runc_phrasing(text: &str) -> String {
    if let Some(start) = text.find("executable '") {
        let rest = &text[start + "executable '".len()..];
        if let Some(end) = rest.find("' not found in $PATH") {
            let name = &rest[..end];
            return format!(
                "{}exec: {name:?}: executable file not found in $PATH",
                &text[..start]
            );
        }
    }
    text.to_string()
}

/// `features`: what this runtime supports, in the shape of runc's (the runtime-spec's
/// features document).
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "exec", "noatime",
            "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid",
            "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave",
            "runbindable", "rw", "shared", "slave", "strictatime", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": CAPABILITIES.to_vec(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": true },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "org.cagerun.engine": "libcontainer 0.7",
            "org.cagerun.exec.seccomp": "the container's filter",
            "org.cagerun.landlock": "read-only root with noNewPrivileges"
        }
    })
}

/// Every capability up to CAP_CHECKPOINT_RESTORE (Linux 5.9), in the spec's spelling.
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_one_path_component() {
        let root = Path::new("/run/cagerun-runc");
        assert_eq!(container_dir(root, "abc"), Some(root.join("abc")));
        for bad in ["", ".", "..", "../x", "a/b"] {
            assert_eq!(container_dir(root, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn missing_executable_reads_as_runcs() {
        assert_eq!(
            runc_phrasing("failed to create container: executable 'nope' not found in $PATH"),
            "failed to create container: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(runc_phrasing("other"), "other");
    }
}
