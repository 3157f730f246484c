//! Applying image layers to a root filesystem, as an unprivileged user.
//!
//! Every entry is placed relative to a directory descriptor of the target, never by a path
//! string: parents are opened with `openat2(RESOLVE_IN_ROOT)`, so a symlink met on the way
//! (one an earlier layer planted, say `etc -> /`) resolves inside the target as it would
//! for a process rooted there, and the final name is created with `*at()` calls that do not
//! follow it. Entry names and hardlink targets are cleaned and taken relative to the
//! target as containerd does (a leading `/` or `./` is the image's root); one whose `..`
//! still leaves the root after cleaning is refused outright. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what lower layers put there.
//! Device nodes are skipped (an unprivileged user cannot make them), setuid/setgid bits are
//! dropped, files belong to the unpacking user. Directory modes are applied last, so a
//! read-only directory in the image does not stop its own contents from being written.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::error::{io, ImageError, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Refuse a layer whose entries add up to more than this many bytes.
    pub max_bytes: Option<u64>,
    /// Give entries the image's owners (ids 0..65535). Needs the power to chown: root, or
    /// root of a user namespace that maps those ids (subordinate ranges).
    pub chown: bool,
    /// Added to every owner (uid, gid) when `chown`: as root, image id N becomes root's
    /// subordinate id base+N, so no file of an image carries a real host id.
    pub id_offset: (u32, u32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    pub whiteouts: u64,
    /// Extended attributes set (`user.*`) and skipped (other namespaces need privileges we
    /// do not use; `security.capability` would be file capabilities, never wanted).
    pub xattrs: u64,
    pub skipped_xattrs: u64,
    /// Entries whose owner is outside 0..65535 and keep the unpacking user's.
    pub unmapped_owners: u64,
}

struct DirMode {
    path: Vec<Vec<u8>>,
    mode: u32,
    mtime: i64,
}

/// Apply one (possibly compressed) layer tar to `root`, an existing directory.
pub fn apply_layer(root: &Path, layer: impl Read, opts: &UnpackOptions) -> Result<UnpackReport> {
    let root_fd = open_dir(root)?;
    let reader = crate::compression::decompress(layer)?;
    let mut archive = tar::Archive::new(reader);
    let mut report = UnpackReport::default();
    let mut dir_modes: Vec<DirMode> = Vec::new();
    // Paths this layer created: an opaque whiteout hides lower layers only.
    let mut this_layer: HashSet<Vec<Vec<u8>>> = HashSet::new();
    if opts.chown {
        // The image's root owns its `/`.
        let (u, g) = opts.id_offset;
        chown_at(root_fd.as_raw_fd(), c"", u, g, libc::AT_EMPTY_PATH)
            .map_err(io(root, "giving the image's root its /"))?;
    }

    for entry in archive.entries().map_err(ImageError::Archive)? {
        let mut entry = entry.map_err(ImageError::Archive)?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let comps = safe_components(&raw_name).map_err(|why| ImageError::UnsafeEntry {
            entry: shown.clone(),
            why,
        })?;
        let Some((name, parents)) = comps.split_last() else {
            continue; // "/" or "./": the root itself (its directory is the target)
        };
        report.entries += 1;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let xattrs = pax_xattrs(&mut entry);
        let parent_fd = ensure_parents(&root_fd, parents, &shown)?;

        if name.as_slice() == OPAQUE {
            clear_dir(&parent_fd, parents, &this_layer, &shown)?;
            report.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            remove_any(&parent_fd, hidden, &shown)?;
            report.whiteouts += 1;
            continue;
        }

        let mode = header.mode().unwrap_or(0o644) & 0o1777; // no setuid/setgid
        let mtime = header.mtime().unwrap_or(0) as i64;
        let cname = cstr(name);
        if !(kind.is_dir() && is_dir_at(&parent_fd, &cname)) {
            remove_any(&parent_fd, name, &shown)?;
        }
        let entry_err = |what: &'static str| {
            let entry = shown.clone();
            move |source: std::io::Error| ImageError::Entry {
                entry,
                what,
                source,
            }
        };
        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(&parent_fd, &cname) {
                    mkdirat(&parent_fd, &cname, 0o700)
                        .map_err(entry_err("creating the directory"))?;
                }
                let mut path = parents.to_vec();
                path.push(name.clone());
                if !xattrs.is_empty() {
                    if let Ok(fd) =
                        open_in_root(&root_fd, &path, libc::O_RDONLY | libc::O_DIRECTORY)
                    {
                        apply_xattrs(fd.as_raw_fd(), &xattrs, &mut report);
                    }
                }
                dir_modes.push(DirMode { path, mode, mtime });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                if let Some(limit) = opts.max_bytes {
                    if report.bytes + size > limit {
                        return Err(ImageError::TooLarge { limit });
                    }
                }
                // SAFETY: openat on a descriptor we own; O_NOFOLLOW|O_EXCL: a fresh file only.
                let fd = unsafe {
                    libc::openat(
                        parent_fd.as_raw_fd(),
                        cname.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(entry_err("creating the file")(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: a fresh descriptor.
                let mut file = unsafe { File::from_raw_fd(fd) };
                let copied = std::io::copy(&mut entry, &mut file).map_err(ImageError::Archive)?;
                if copied != size {
                    return Err(ImageError::Archive(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{shown}: the layer ends inside the entry ({copied} of {size} bytes)"
                        ),
                    )));
                }
                report.bytes += copied;
                apply_xattrs(file.as_raw_fd(), &xattrs, &mut report);
                nix::sys::stat::fchmod(
                    file.as_raw_fd(),
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                )
                .map_err(|e| entry_err("setting the mode")(e.into()))?;
                set_mtime(&parent_fd, &cname, mtime, false);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::UnsafeEntry {
                        entry: shown.clone(),
                        why: "symlink without a target",
                    })?;
                let target = cstr(&target);
                // SAFETY: symlinkat with valid C strings.
                if unsafe {
                    libc::symlinkat(target.as_ptr(), parent_fd.as_raw_fd(), cname.as_ptr())
                } != 0
                {
                    return Err(entry_err("creating the symlink")(
                        std::io::Error::last_os_error(),
                    ));
                }
                set_mtime(&parent_fd, &cname, mtime, true);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::UnsafeEntry {
                        entry: shown.clone(),
                        why: "hardlink without a target",
                    })?;
                let target_comps =
                    safe_components(&target).map_err(|_| ImageError::UnsafeEntry {
                        entry: shown.clone(),
                        why: "hardlink out of the image",
                    })?;
                let source = open_in_root(&root_fd, &target_comps, libc::O_PATH | libc::O_NOFOLLOW)
                    .map_err(entry_err("finding the hardlink target"))?;
                let via = CString::new(format!("/proc/self/fd/{}", source.as_raw_fd())).unwrap();
                // SAFETY: linkat through the magic link of a descriptor we hold.
                if unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        via.as_ptr(),
                        parent_fd.as_raw_fd(),
                        cname.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                } != 0
                {
                    return Err(entry_err("creating the hardlink")(
                        std::io::Error::last_os_error(),
                    ));
                }
            }
            tar::EntryType::Fifo => {
                // SAFETY: mknodat of a FIFO needs no privilege.
                if unsafe {
                    libc::mknodat(
                        parent_fd.as_raw_fd(),
                        cname.as_ptr(),
                        libc::S_IFIFO | (mode & 0o777),
                        0,
                    )
                } != 0
                {
                    return Err(entry_err("creating the fifo")(
                        std::io::Error::last_os_error(),
                    ));
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                report.skipped_devices += 1;
                continue;
            }
            _ => continue, // pax/GNU metadata entries are consumed by the tar reader
        }
        if opts.chown && kind != tar::EntryType::Link {
            let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            if uid < 65536 && gid < 65536 {
                chown_at(
                    parent_fd.as_raw_fd(),
                    &cname,
                    uid as u32 + opts.id_offset.0,
                    gid as u32 + opts.id_offset.1,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| ImageError::Entry {
                    entry: shown.clone(),
                    what: "setting the owner",
                    source: e,
                })?;
            } else {
                report.unmapped_owners += 1;
            }
        }
        let mut path = parents.to_vec();
        path.push(name.clone());
        this_layer.insert(path);
    }

    // Deepest first, so a read-only parent is closed after its children were written.
    dir_modes.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
    for d in dir_modes {
        let Ok(fd) = open_in_root(&root_fd, &d.path, libc::O_RDONLY | libc::O_DIRECTORY) else {
            continue;
        };
        let _ = nix::sys::stat::fchmod(
            fd.as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(d.mode),
        );
        let times = [ts(d.mtime), ts(d.mtime)];
        // SAFETY: futimens on a descriptor we own.
        unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) };
    }
    Ok(report)
}

/// `SCHILY.xattr.NAME` PAX records of the entry (how tar carries extended attributes).
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(CString, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec();
            Some((CString::new(name).ok()?, e.value_bytes().to_vec()))
        })
        .collect()
}

fn apply_xattrs(fd: RawFd, xattrs: &[(CString, Vec<u8>)], report: &mut UnpackReport) {
    for (name, value) in xattrs {
        if !name.as_bytes().starts_with(b"user.") {
            report.skipped_xattrs += 1;
            continue;
        }
        // SAFETY: fsetxattr on a descriptor we own, with a live buffer.
        let rc =
            unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc == 0 {
            report.xattrs += 1;
        } else {
            report.skipped_xattrs += 1; // e.g. a filesystem without user xattrs
        }
    }
}

/// The entry's path as plain components below the image's root, cleaned as containerd
/// does (Go's `filepath.Clean`, then taken relative to the root): `.` and empty components
/// go, `a/..` cancels, a leading `/` means the root (umoci's `insert … /` writes `/`, and
/// other tools `/etc/x` or `./etc/x`), and `..` at the root of a rooted name stays at the
/// root. Only a relative name whose `..` still leaves the root after cleaning is refused.
/// The root itself is no components.
fn safe_components(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    if raw.contains(&0) {
        return Err("NUL in the name");
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let rooted = path.has_root();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() && !rooted {
                    return Err("path traversal (..)");
                }
            }
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

fn cstr(b: &[u8]) -> CString {
    CString::new(b).expect("names were checked for NUL")
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io(path, "opening the target directory")(e.into()))?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Open `comps` under the target as if the target were `/`.
fn open_in_root(root: &OwnedFd, comps: &[Vec<u8>], flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let joined = if comps.is_empty() {
        b".".to_vec()
    } else {
        comps.join(&b'/')
    };
    let path = cstr(&joined);
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a properly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The entry's parent directory, creating missing ones (mode 0755, like tar does).
fn ensure_parents(root: &OwnedFd, parents: &[Vec<u8>], shown: &str) -> Result<OwnedFd> {
    match open_in_root(root, parents, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => {
            return Err(ImageError::Entry {
                entry: shown.to_string(),
                what: "opening its directory",
                source: e,
            })
        }
    }
    let mut cur = open_in_root(root, &[], libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
        ImageError::Entry {
            entry: shown.to_string(),
            what: "opening the target",
            source: e,
        }
    })?;
    for i in 0..parents.len() {
        let next = match open_in_root(root, &parents[..=i], libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                mkdirat(&cur, &cstr(&parents[i]), 0o755).map_err(|e| ImageError::Entry {
                    entry: shown.to_string(),
                    what: "creating its directory",
                    source: e,
                })?;
                match open_in_root(root, &parents[..=i], libc::O_PATH | libc::O_DIRECTORY) {
                    Ok(fd) => fd,
                    // The name exists but leads nowhere inside the image: a symlink that
                    // points outside it (or dangles). Never followed out; refused.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        return Err(ImageError::UnsafeEntry {
                            entry: shown.to_string(),
                            why: "written through a symlink that leads outside the image",
                        })
                    }
                    Err(e) => {
                        return Err(ImageError::Entry {
                            entry: shown.to_string(),
                            what: "opening its directory",
                            source: e,
                        })
                    }
                }
            }
            Err(e) => {
                return Err(ImageError::Entry {
                    entry: shown.to_string(),
                    what: "opening its directory",
                    source: e,
                })
            }
        };
        cur = next;
    }
    Ok(cur)
}

fn mkdirat(dir: &OwnedFd, name: &CString, mode: u32) -> std::io::Result<()> {
    // SAFETY: mkdirat with a valid C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn is_dir_at(dir: &OwnedFd, name: &CString) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    .unwrap_or(false)
}

/// Remove `name` in `dir`, whatever it is (a directory recursively); absent is fine.
fn remove_any(dir: &OwnedFd, name: &[u8], shown: &str) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(ImageError::UnsafeEntry {
            entry: shown.to_string(),
            why: "whiteout of an invalid name",
        });
    }
    let cname = cstr(name);
    // SAFETY: unlinkat never follows the final component.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) => remove_tree(dir, &cname).map_err(|e| ImageError::Entry {
            entry: shown.to_string(),
            what: "removing",
            source: e,
        }),
        _ => Err(ImageError::Entry {
            entry: shown.to_string(),
            what: "removing",
            source: std::io::Error::last_os_error(),
        }),
    }
}

fn remove_tree(dir: &OwnedFd, name: &CString) -> std::io::Result<()> {
    // SAFETY: openat without following a symlink at the last component.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    let sub = unsafe { OwnedFd::from_raw_fd(fd) };
    // Make sure we may delete inside (an image can ship a 0555 directory).
    let _ = nix::sys::stat::fchmod(
        sub.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    );
    clear_children(&sub, &HashSet::new(), &[])?;
    // SAFETY: unlinkat of an emptied directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn clear_children(
    dir: &OwnedFd,
    keep: &HashSet<Vec<Vec<u8>>>,
    prefix: &[Vec<u8>],
) -> std::io::Result<()> {
    let dup = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for n in names {
        let mut path = prefix.to_vec();
        path.push(n.as_bytes().to_vec());
        if keep.contains(&path) {
            continue;
        }
        // SAFETY: unlinkat never follows.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EISDIR) {
                remove_tree(dir, &n)?;
            } else {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Opaque whiteout: hide everything lower layers put in this directory.
fn clear_dir(
    parent: &OwnedFd,
    parents: &[Vec<u8>],
    this_layer: &HashSet<Vec<Vec<u8>>>,
    shown: &str,
) -> Result<()> {
    let dot = cstr(b".");
    // SAFETY: reopen the O_PATH directory for reading.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            dot.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(ImageError::Entry {
            entry: shown.to_string(),
            what: "opening the opaque directory",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    clear_children(&dir, this_layer, parents).map_err(|e| ImageError::Entry {
        entry: shown.to_string(),
        what: "clearing the opaque directory",
        source: e,
    })
}

fn chown_at(
    dir: RawFd,
    name: &std::ffi::CStr,
    uid: u32,
    gid: u32,
    flags: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: fchownat with a valid C string.
    if unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ts(secs: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    }
}

fn set_mtime(dir: &OwnedFd, name: &CString, mtime: i64, nofollow: bool) {
    let times = [ts(mtime), ts(mtime)];
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: utimensat with a valid name and two timespecs.
    unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) };
}
