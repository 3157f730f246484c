//! The sandbox's root filesystem, built in the child's private mount namespace.
//!
//! Everything is made private first, so nothing propagates back to the host. A fresh tmpfs
//! is mounted over /tmp (in this private namespace only) and filled with read-only binds
//! (the host's system dirs, or each top-level entry of an image tree), kernel filesystems
//! and the workspace, then sealed read-only; we pivot into it and detach the host's root.
//! Bind sources were opened beforehand (O_PATH) and are mounted through /proc/self/fd, so
//! the tmpfs over /tmp does not hide a workspace that lives there.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use crate::error::{Result, SandboxError};
use crate::mounts::{MountKind, MountStep};
use crate::plan::Plan;

/// Where the new root is built before the pivot.
const NEW: &str = "/tmp";

/// Character devices every OCI container gets, bound from the host (no mknod in a user ns).
const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

fn os(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

/// The new root + an absolute in-sandbox path.
fn inside(dest: &Path) -> PathBuf {
    Path::new(NEW).join(dest.strip_prefix("/").unwrap_or(dest))
}

/// Host paths opened (O_PATH) by the child before it took the sandbox identity. Mounting
/// through /proc/self/fd needs no search permission on the path's ancestors, which the
/// sandbox identity may lack (as root on the host, the sandbox user is unprivileged).
pub type SourceFds = std::collections::HashMap<PathBuf, std::os::fd::RawFd>;

fn outside(src: &Path, fds: &SourceFds) -> PathBuf {
    match fds.get(src) {
        Some(fd) => PathBuf::from(format!("/proc/self/fd/{fd}")),
        None => src.to_path_buf(),
    }
}

/// Mount flags the kernel locks on a mount we do not own; a remount must repeat them.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (st_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            out |= ms_flag;
        }
    }
    out
}

fn bind(src: &Path, dst: &Path, flags: MsFlags, recursive: bool) -> Result<()> {
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .map_err(os(format!(
        "binding {} at {}",
        src.display(),
        dst.display()
    )))?;
    set_flags(dst, flags, recursive)
}

/// Add flags to a mount (and, recursive, to the mounts below it). mount_setattr only sets
/// what is asked, so flags the kernel locked stay as they are; kernels before 5.12 get a
/// remount that repeats the locked flags.
fn set_flags(dst: &Path, flags: MsFlags, recursive: bool) -> Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let mut set = 0u64;
    for (ms, attr) in [
        (MsFlags::MS_RDONLY, 0x1u64),
        (MsFlags::MS_NOSUID, 0x2),
        (MsFlags::MS_NODEV, 0x4),
        (MsFlags::MS_NOEXEC, 0x8),
    ] {
        if flags.contains(ms) {
            set |= attr;
        }
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes())
        .map_err(|_| SandboxError::Setup(format!("NUL in {}", dst.display())))?;
    let at_recursive = if recursive { 0x8000 } else { 0 };
    // SAFETY: mount_setattr reads a properly sized struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            at_recursive,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return Err(SandboxError::Setup(format!(
            "setting flags on {}: {}",
            dst.display(),
            std::io::Error::last_os_error()
        )));
    }
    let flags = flags | locked_flags(dst);
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(os(format!("setting flags on {}", dst.display())))
}

/// Create `dest` (and parents) under the new root without following a symlink anywhere on the
/// way: a hostile image must not steer a mount out of the new root.
/// `seen`: directories of the new root already checked or made during this build, so a
/// path's prefix is looked at once.
fn ensure_mountpoint(dest: &Path, is_dir: bool, seen: &mut HashSet<PathBuf>) -> Result<PathBuf> {
    let mut cur = PathBuf::from(NEW);
    let comps: Vec<Component> = dest
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        if seen.contains(&cur) {
            continue;
        }
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(SandboxError::Setup(format!(
                    "mount destination {} crosses a symlink in the rootfs ({}); refusing",
                    dest.display(),
                    cur.strip_prefix(NEW).unwrap_or(&cur).display()
                )))
            }
            Ok(_) => {}
            Err(_) => {
                let made = if last && !is_dir {
                    fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .mode(0o644)
                        .open(&cur)
                        .map(drop)
                } else {
                    fs::create_dir(&cur)
                };
                made.map_err(|e| {
                    SandboxError::Setup(format!(
                        "mount destination {} does not exist in the rootfs and cannot be created ({e}); add it to the image",
                        dest.display()
                    ))
                })?;
            }
        }
        if !last || is_dir {
            seen.insert(cur.clone());
        }
    }
    Ok(cur)
}

/// Whether a bind source is a directory: from its descriptor when we hold one.
fn source_is_dir(source: &Path, fds: &SourceFds) -> Result<bool> {
    let mode = match fds.get(source) {
        Some(fd) => {
            nix::sys::stat::fstat(*fd)
                .map_err(os(format!("bind source {}", source.display())))?
                .st_mode
        }
        None => {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(source)
                .map_err(io(format!("bind source {}", source.display())))?
                .mode()
        }
    };
    Ok(mode & libc::S_IFMT == libc::S_IFDIR)
}

fn mount_step(m: &MountStep, fds: &SourceFds, seen: &mut HashSet<PathBuf>) -> Result<()> {
    match &m.kind {
        MountKind::Bind {
            source, recursive, ..
        } => {
            let src = outside(source, fds);
            let dst = ensure_mountpoint(&m.destination, source_is_dir(source, fds)?, seen)?;
            bind(&src, &dst, m.flags, *recursive)
        }
        MountKind::Fs { fstype, source } => {
            let dst = ensure_mountpoint(&m.destination, true, seen)?;
            let data = (!m.data.is_empty()).then_some(m.data.as_str());
            mount(
                Some(source.as_str()),
                &dst,
                Some(fstype.as_str()),
                m.flags,
                data,
            )
            .map_err(os(format!(
                "mounting {fstype} at {}",
                m.destination.display()
            )))?;
            if fstype == "tmpfs" && m.destination == Path::new("/dev") {
                default_devices(&dst)?;
            }
            Ok(())
        }
    }
}

fn default_devices(dev: &Path) -> Result<()> {
    for name in DEFAULT_DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let dst = dev.join(name);
        fs::File::create(&dst).map_err(io(format!("creating /dev/{name}")))?;
        // The node keeps the host /dev mount's flags (nosuid); a remount would add nothing.
        mount(
            Some(&host),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(os(format!("binding /dev/{name}")))?;
    }
    for (name, target) in DEV_SYMLINKS {
        symlink(target, dev.join(name)).map_err(io(format!("creating /dev/{name}")))?;
    }
    Ok(())
}

/// Each top-level entry of an image tree, bound read-only into the fresh root; entries that
/// are themselves mount destinations become plain mount points instead.
fn populate_from_dir(root: &Path, plan: &Plan, fds: &SourceFds) -> Result<()> {
    let src_root = outside(root, fds);
    let entries =
        fs::read_dir(&src_root).map_err(io(format!("reading rootfs {}", root.display())))?;
    let ro = if plan.root_readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    for e in entries {
        let e = e.map_err(io(format!("reading rootfs {}", root.display())))?;
        let name = e.file_name();
        let top = Path::new("/").join(&name);
        if plan.mounts.iter().any(|m| m.destination == top) {
            continue;
        }
        let ft = e.file_type().map_err(io("rootfs entry"))?;
        let dst = Path::new(NEW).join(&name);
        if ft.is_symlink() {
            let target = fs::read_link(src_root.join(&name)).map_err(io("rootfs symlink"))?;
            symlink(target, &dst).map_err(io(format!("symlink {}", top.display())))?;
        } else if ft.is_dir() || ft.is_file() {
            let mount_point = if ft.is_dir() {
                fs::create_dir(&dst)
            } else {
                fs::File::create(&dst).map(drop)
            };
            mount_point.map_err(io(format!("mount point {}", top.display())))?;
            bind(
                &src_root.join(&name),
                &dst,
                ro | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                false,
            )?;
        }
    }
    Ok(())
}

/// Files are hidden behind /dev/null, directories behind an empty read-only tmpfs; a path
/// this kernel does not have is skipped.
///
/// Look before mounting: a bind that fails (a file onto a directory) has already copied a
/// mount, and freeing it waits for an expedited RCU grace period (~50 µs here).
fn mask(path: &Path) -> Result<()> {
    let p = inside(path);
    let Ok(meta) = fs::symlink_metadata(&p) else {
        return Ok(());
    };
    let masked = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            &p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,mode=000"),
        )
    } else {
        mount(
            Some("/dev/null"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    masked.map_err(os(format!("masking {}", path.display())))
}

fn make_readonly(path: &Path) -> Result<()> {
    let p = inside(path);
    if fs::symlink_metadata(&p).is_err() {
        return Ok(());
    }
    bind(
        &p,
        &p,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        true,
    )
}

/// The whole filesystem sequence, top to bottom. Ends inside the new root.
/// `console`: the host path of the pty replica (`-t`), bound at /dev/console: a node in the
/// sandbox's own tree, so `ttyname` finds it.
///
/// `join_net` is called before the first sysfs mount: sysfs shows the network devices of
/// the mounting process's network namespace, which must be the sandbox's.
pub fn build(
    plan: &Plan,
    fds: &SourceFds,
    console: Option<&Path>,
    join_net: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(os("making mounts private"))?;
    match &plan.root {
        // A writable root (a `cagerun build` step): the tree itself, so what the command
        // writes anywhere lands in it.
        Some(root) if !plan.root_readonly => bind(
            &outside(root, fds),
            Path::new(NEW),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            false,
        )?,
        _ => {
            mount(
                Some("tmpfs"),
                NEW,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755,size=1m"),
            )
            .map_err(os("mounting the new root"))?;
            if let Some(root) = &plan.root {
                populate_from_dir(root, plan, fds)?;
            }
        }
    }
    let mut seen = HashSet::new();
    for (link, target) in &plan.symlinks {
        symlink(target, inside(link)).map_err(io(format!("symlink {}", link.display())))?;
    }
    for m in &plan.mounts {
        if matches!(&m.kind, MountKind::Fs { fstype, .. } if fstype == "sysfs") {
            join_net()?;
        }
        mount_step(m, fds, &mut seen)?;
    }
    if let Some(pty) = console {
        let dst = ensure_mountpoint(Path::new("/dev/console"), false, &mut seen)?;
        bind(
            &outside(pty, fds),
            &dst,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            false,
        )?;
    }
    for (path, text) in &plan.files {
        let p = inside(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", path.display())))?;
        }
        fs::write(&p, text).map_err(io(format!("writing {}", path.display())))?;
    }
    for p in &plan.masked_paths {
        mask(p)?;
    }
    for p in &plan.readonly_paths {
        // Beneath a mount that is read-only already, there is nothing to do.
        let covered = plan
            .mounts
            .iter()
            .rev()
            .find(|m| p.starts_with(&m.destination))
            .is_some_and(|m| m.read_only());
        if !covered {
            make_readonly(p)?;
        }
    }
    if plan.root_readonly {
        mount(
            None::<&str>,
            NEW,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(os("sealing the new root read-only"))?;
    }

    // pivot_root(".", "."): the host's root ends up stacked over ours; detach it.
    chdir(NEW).map_err(os("entering the new root"))?;
    pivot_root(".", ".").map_err(os("pivot_root into the new root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(os("detaching the host root"))?;
    chdir("/").map_err(os("chdir /"))?;
    Ok(())
}
