//! Applying image layers to a root filesystem, as an unprivileged user.
//!
//! Every entry is placed relative to a directory descriptor of the target, never by a path
//! string: parents are opened with `openat2(RESOLVE_IN_ROOT)`, so a symlink met on the way
//! (one an earlier layer planted, say `etc -> /`) resolves inside the target as it would
//! for a process rooted there, and the final name is created with `*at()` calls that do not
//! follow it. Entry names and hardlink targets are cleaned and taken relative to the
//! target as containerd does (a leading `/` or `./` is the image's root); one whose `..`
//! still leaves the root after cleaning is refused outright.
//!
//! Layers unpack as `umoci unpack` unpacks them (tests/layers.rs compares the trees): the
//! root entry (`/`, `./`) gives the root its mode, owner and mtime, and must be a directory;
//! a later entry replaces an earlier one; whiteouts (`.wh.NAME`, `.wh..wh..opq`) hide what
//! lower layers put there, never what the same layer wrote; a directory keeps its mtime when
//! a later layer changes what is in it; GNU and PAX long names, GNU tar's sparse files (the
//! old GNU type and PAX 0.0/0.1/1.0), `user.*` xattrs; a layer that ends right after its
//! last file's data (umoci 0.4.7's `insert`) reads to its end. Where we differ, on purpose:
//! device nodes are skipped (an unprivileged user cannot make them; as root they would be
//! real host devices), setuid/setgid bits of files are dropped (the tree lies on the host),
//! only `user.*` xattrs are set (no file capabilities), owners beyond 65535 become the
//! image's root. Directory modes are applied last, so a read-only directory in the image
//! does not stop its own contents from being written.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::rc::Rc;

use crate::error::{io, ImageError, Result};
use crate::sparse::{copy_with_holes, PaxRecords, PaxSparse, SparseError};
use crate::targuard::{self, TarGuard};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The bytes one image's layers may write unless [`MAX_IMAGE_BYTES_ENV`] says otherwise:
/// 64 GiB, far above real images (base images are megabytes, GPU stacks a few GiB),
/// so a decompression bomb stops with [`ImageError::TooLarge`] long before it has filled a
/// disk of ordinary size; a full disk still fails cleanly (ENOSPC) below that.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 << 30;

/// The environment variable that sets the per-image limit (bytes); named in the error.
pub const MAX_IMAGE_BYTES_ENV: &str = "CAGERUN_MAX_IMAGE_BYTES";

#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Refuse to write more than this many bytes of file data (sparse files count with
    /// their holes): [`apply_layer`] for one layer, [`crate::layout::unpack_image`] for all
    /// of an image's layers together. cage-runtime sets [`DEFAULT_MAX_IMAGE_BYTES`].
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

/// A path below the target, as components.
type Components = Vec<Vec<u8>>;

/// Apply one (possibly compressed) layer tar to `root`, an existing directory.
pub fn apply_layer(root: &Path, layer: impl Read, opts: &UnpackOptions) -> Result<UnpackReport> {
    // The guard sits below the tar reader, so an oversized long name or PAX header is
    // refused before the tar reader would buffer it; its refusal wins over the I/O error
    // the tar reader reports for it.
    let (guarded, refused) = TarGuard::new(
        crate::compression::decompress(layer)?,
        targuard::MAX_METADATA_BYTES,
    );
    let result = apply_tar(root, guarded, opts);
    match refused.take() {
        Some(r) => Err(ImageError::MetadataTooLarge {
            offset: r.offset,
            kind: r.kind,
            size: r.size,
            limit: r.limit,
        }),
        None => result,
    }
}

fn apply_tar(root: &Path, layer: impl Read, opts: &UnpackOptions) -> Result<UnpackReport> {
    let root_fd = open_dir(root)?;
    let (reader, made_up) = EndAtLastByte::new(layer);
    let mut archive = tar::Archive::new(reader);
    let mut report = UnpackReport::default();
    let mut dir_modes: Vec<DirMode> = Vec::new();
    // Paths this layer wrote, with their ancestors (umoci's "upper paths"): a whiteout or an
    // opaque directory hides what lower layers put there, never what this layer wrote.
    let mut upper: HashSet<Components> = HashSet::new();
    // Directories of lower layers this layer changed, with their mtime before: adding or
    // removing an entry keeps its directory's mtime (umoci restores it after each entry).
    let mut touched: HashMap<Components, i64> = HashMap::new();
    let image_root = opts.chown.then_some(opts.id_offset);
    if let Some((u, g)) = image_root {
        // The image's root owns its `/`.
        chown_at(root_fd.as_raw_fd(), c"", u, g, libc::AT_EMPTY_PATH)
            .map_err(io(root, "giving the image's root its /"))?;
    }

    for entry in archive.entries().map_err(ImageError::Archive)? {
        let mut entry = entry.map_err(ImageError::Archive)?;
        let pax = pax_records(&mut entry);
        let header = entry.header().clone();
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |why: &'static str| ImageError::UnsafeEntry {
            entry: shown.clone(),
            why,
        };
        let sparse = PaxSparse::of(&pax).map_err(unsafe_entry)?;
        // GNU tar's PAX sparse files carry their real name beside a made-up one.
        let raw_name = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let comps = safe_components(&raw_name).map_err(unsafe_entry)?;
        let kind = header.entry_type();
        let xattrs = xattrs_of(&pax);
        let mtime = header.mtime().unwrap_or(0) as i64;
        let Some((name, parents)) = comps.split_last() else {
            // "/" or "./": the root itself, whose directory is the target. It can only be a
            // directory (umoci refuses anything else as malicious, and so do we).
            if !kind.is_dir() {
                return Err(unsafe_entry(
                    "the image's root must be a directory; the layer makes it something else",
                ));
            }
            report.entries += 1;
            if let Some(owner) = owner_of(&header, opts, &mut report) {
                chown_at(
                    root_fd.as_raw_fd(),
                    c"",
                    owner.0,
                    owner.1,
                    libc::AT_EMPTY_PATH,
                )
                .map_err(|e| ImageError::Entry {
                    entry: shown.clone(),
                    what: "setting the owner",
                    source: e,
                })?;
            }
            if let Ok(fd) = open_in_root(&root_fd, &[], libc::O_RDONLY | libc::O_DIRECTORY) {
                replace_user_xattrs(fd.as_raw_fd(), &xattrs, &mut report);
            }
            dir_modes.push(DirMode {
                path: Vec::new(),
                mode: header.mode().unwrap_or(0o755) & DIR_BITS,
                mtime,
            });
            continue;
        };
        report.entries += 1;

        if name.as_slice() == OPAQUE || name.starts_with(WHITEOUT_PREFIX) {
            report.whiteouts += 1;
            // A whiteout below a directory that is not there hides nothing: no directory
            // is made for it (as umoci does).
            let parent_fd = match open_in_root(&root_fd, parents, libc::O_PATH | libc::O_DIRECTORY)
            {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue
                }
                Err(e) => {
                    return Err(ImageError::Entry {
                        entry: shown,
                        what: "opening its directory",
                        source: e,
                    })
                }
            };
            note_touched(&parent_fd, parents, &mut touched);
            if name.as_slice() == OPAQUE {
                clear_dir(&parent_fd, parents, &upper, &shown)?;
            } else {
                let hidden = &name[WHITEOUT_PREFIX.len()..];
                let mut path = parents.to_vec();
                path.push(hidden.to_vec());
                hide_lower(&parent_fd, hidden, &path, &upper, &shown)?;
            }
            continue;
        }

        let parent_fd = ensure_parents(&root_fd, parents, &shown, image_root)?;
        note_touched(&parent_fd, parents, &mut touched);
        let mode = header.mode().unwrap_or(0o644);
        let cname = cstr(name);
        let existing_dir = is_dir_at(&parent_fd, &cname);
        if !(kind.is_dir() && existing_dir) {
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
        let mut path = parents.to_vec();
        path.push(name.clone());
        match kind {
            tar::EntryType::Directory => {
                if !existing_dir {
                    mkdirat(&parent_fd, &cname, 0o700)
                        .map_err(entry_err("creating the directory"))?;
                }
                if let Ok(fd) = open_in_root(&root_fd, &path, libc::O_RDONLY | libc::O_DIRECTORY) {
                    // A directory declared again has the attributes this entry lists.
                    replace_user_xattrs(fd.as_raw_fd(), &xattrs, &mut report);
                }
                dir_modes.push(DirMode {
                    path: path.clone(),
                    mode: mode & DIR_BITS,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = match &sparse {
                    Some(s) => s.real_size,
                    None => entry.size(), // a GNU sparse file's size with its holes
                };
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
                let made_up_before = made_up.get();
                let copied = match &sparse {
                    Some(s) => s.write(&mut entry, &file).map_err(|e| match e {
                        SparseError::Map(why) => unsafe_entry(why),
                        SparseError::Io(e) => ImageError::Archive(e),
                    })?,
                    None if kind == tar::EntryType::GNUSparse => {
                        copy_with_holes(&mut entry, &file).map_err(ImageError::Archive)?
                    }
                    None => std::io::copy(&mut entry, &mut file).map_err(ImageError::Archive)?,
                };
                if copied != size || made_up.get() != made_up_before {
                    return Err(ImageError::Archive(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{shown}: the layer ends inside the entry's {size} bytes of data"),
                    )));
                }
                report.bytes += copied;
                apply_xattrs(file.as_raw_fd(), &xattrs, &mut report);
                nix::sys::stat::fchmod(
                    file.as_raw_fd(),
                    nix::sys::stat::Mode::from_bits_truncate(mode & FILE_BITS),
                )
                .map_err(|e| entry_err("setting the mode")(e.into()))?;
                set_mtime(&parent_fd, &cname, mtime, false);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("symlink without a target"))?;
                let target = CString::new(target.into_owned())
                    .map_err(|_| unsafe_entry("NUL in the symlink target"))?;
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
                    .ok_or_else(|| unsafe_entry("hardlink without a target"))?;
                let target_comps = safe_components(&target)
                    .map_err(|_| unsafe_entry("hardlink out of the image"))?;
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
                        libc::S_IFIFO | 0o600,
                        0,
                    )
                } != 0
                {
                    return Err(entry_err("creating the fifo")(
                        std::io::Error::last_os_error(),
                    ));
                }
                // Its mode as the layer says, not as the umask left it.
                nix::sys::stat::fchmodat(
                    Some(parent_fd.as_raw_fd()),
                    cname.as_c_str(),
                    nix::sys::stat::Mode::from_bits_truncate(mode & FILE_BITS),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| entry_err("setting the mode")(e.into()))?;
                set_mtime(&parent_fd, &cname, mtime, true);
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                report.skipped_devices += 1;
                continue;
            }
            _ => continue, // pax/GNU metadata entries are consumed by the tar reader
        }
        if kind != tar::EntryType::Link {
            if let Some((uid, gid)) = owner_of(&header, opts, &mut report) {
                chown_at(
                    parent_fd.as_raw_fd(),
                    &cname,
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| ImageError::Entry {
                    entry: shown.clone(),
                    what: "setting the owner",
                    source: e,
                })?;
            }
        }
        for depth in 1..=path.len() {
            upper.insert(path[..depth].to_vec());
        }
    }

    for (path, mtime) in touched {
        if let Ok(fd) = open_in_root(&root_fd, &path, libc::O_RDONLY | libc::O_DIRECTORY) {
            let times = [ts(mtime), ts(mtime)];
            // SAFETY: futimens on a descriptor we own.
            unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) };
        }
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

/// Mode bits kept: on files no setuid/setgid (the tree lies on the host, owned by
/// subordinate ids: a setuid file there would run as that id for any host user who reaches
/// it); on directories setgid too (it only steers the group of new files).
const FILE_BITS: u32 = 0o1777;
const DIR_BITS: u32 = 0o3777;

/// The owner an entry gets (host ids), or None when the unpack keeps the caller's. Ids
/// beyond 0..65535 are outside every mapping: such an entry belongs to the image's root.
fn owner_of(
    header: &tar::Header,
    opts: &UnpackOptions,
    report: &mut UnpackReport,
) -> Option<(u32, u32)> {
    if !opts.chown {
        return None;
    }
    let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
    let (uid, gid) = if uid < 65536 && gid < 65536 {
        (uid as u32, gid as u32)
    } else {
        report.unmapped_owners += 1;
        (0, 0)
    };
    Some((uid + opts.id_offset.0, gid + opts.id_offset.1))
}

/// Remember a directory's mtime the first time this layer changes what is in it.
fn note_touched(dir: &OwnedFd, path: &[Vec<u8>], touched: &mut HashMap<Components, i64>) {
    if touched.contains_key(path) {
        return;
    }
    if let Ok(st) = nix::sys::stat::fstat(dir.as_raw_fd()) {
        touched.insert(path.to_vec(), st.st_mtime);
    }
}

/// Ends the layer cleanly where its bytes end right after an entry's data: umoci 0.4.7's
/// `insert` writes layers without the end-of-archive blocks and without padding the last
/// file's data, and Go's tar reader (umoci, containerd) reads them to the end. The missing
/// padding reads as zeros, counted in `made_up`: an entry whose data took any of them (a
/// layer cut short inside a file) is still an error.
struct EndAtLastByte<R> {
    inner: R,
    read: u64,
    padding: Option<u64>,
    made_up: Rc<Cell<u64>>,
}

impl<R: Read> EndAtLastByte<R> {
    fn new(inner: R) -> (Self, Rc<Cell<u64>>) {
        let made_up = Rc::new(Cell::new(0));
        let reader = EndAtLastByte {
            inner,
            read: 0,
            padding: None,
            made_up: made_up.clone(),
        };
        (reader, made_up)
    }
}

impl<R: Read> Read for EndAtLastByte<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.padding.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.padding = Some((512 - self.read % 512) % 512);
        }
        let left = self.padding.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        self.made_up.set(self.made_up.get() + n as u64);
        Ok(n)
    }
}

/// The entry's PAX records (its own extended header), as (key, value).
fn pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec()))
        .collect()
}

/// `SCHILY.xattr.NAME` PAX records (how tar carries extended attributes).
fn xattrs_of(pax: &PaxRecords) -> Vec<(CString, Vec<u8>)> {
    pax.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(b"SCHILY.xattr.")?.to_vec();
            Some((CString::new(name).ok()?, v.clone()))
        })
        .collect()
}

/// Only `user.*` attributes are set. `security.capability` would be file capabilities, real
/// ones on the host when unpacking as root; `trusted.*` and other `security.*` need host
/// privileges. umoci sets them as root and skips them rootless; we never set them.
fn apply_xattrs(fd: RawFd, xattrs: &[(CString, Vec<u8>)], report: &mut UnpackReport) {
    for (name, value) in xattrs {
        if !name.as_bytes().starts_with(b"user.") {
            report.skipped_xattrs += 1;
            tracing::warn!(
                "leaving out the extended attribute {}: only user.* attributes are set",
                name.to_string_lossy()
            );
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

/// A directory entry says all of its attributes: those a lower layer set go first (as
/// umoci clears them before applying an entry's own).
fn replace_user_xattrs(fd: RawFd, xattrs: &[(CString, Vec<u8>)], report: &mut UnpackReport) {
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: flistxattr into a live buffer of the given size.
    let n = unsafe { libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) };
    if n > 0 {
        for name in names[..n as usize].split(|b| *b == 0) {
            if name.starts_with(b"user.") {
                let name = CString::new(name).expect("split at NUL");
                // SAFETY: fremovexattr on a descriptor we own.
                unsafe { libc::fremovexattr(fd, name.as_ptr()) };
            }
        }
    }
    apply_xattrs(fd, xattrs, report);
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

/// The entry's parent directory, creating missing ones (mode 0755, like tar does), owned by
/// `owner` when given (the image's root: no file of the image keeps a real host id).
fn ensure_parents(
    root: &OwnedFd,
    parents: &[Vec<u8>],
    shown: &str,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd> {
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
                let name = cstr(&parents[i]);
                mkdirat(&cur, &name, 0o755).map_err(|e| ImageError::Entry {
                    entry: shown.to_string(),
                    what: "creating its directory",
                    source: e,
                })?;
                if let Some((u, g)) = owner {
                    chown_at(cur.as_raw_fd(), &name, u, g, libc::AT_SYMLINK_NOFOLLOW).map_err(
                        |e| ImageError::Entry {
                            entry: shown.to_string(),
                            what: "giving its directory the image's root",
                            source: e,
                        },
                    )?;
                }
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
    clear_children(&sub)?;
    // SAFETY: unlinkat of an emptied directory.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every name in `dir` (without `.` and `..`).
fn names_in(dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let dup = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    Ok(d.iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect())
}

fn clear_children(dir: &OwnedFd) -> std::io::Result<()> {
    for n in names_in(dir)? {
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

/// What a whiteout hides: `name` in `dir` (at `path` below the root) and all below it that
/// lower layers put there. What this layer wrote (`upper`: its entries and their ancestors)
/// stays, as umoci keeps it; a directory it wrote into is walked, not removed.
fn hide_lower(
    dir: &OwnedFd,
    name: &[u8],
    path: &[Vec<u8>],
    upper: &HashSet<Components>,
    shown: &str,
) -> Result<()> {
    if !upper.contains(path) {
        return remove_any(dir, name, shown);
    }
    let cname = cstr(name);
    // SAFETY: openat without following a symlink at the last component.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Ok(()); // not a directory: this layer's own entry, kept
    }
    // SAFETY: a fresh descriptor.
    let sub = unsafe { OwnedFd::from_raw_fd(fd) };
    hide_lower_children(&sub, path, upper, shown)
}

fn hide_lower_children(
    dir: &OwnedFd,
    path: &[Vec<u8>],
    upper: &HashSet<Components>,
    shown: &str,
) -> Result<()> {
    let names = names_in(dir).map_err(|e| ImageError::Entry {
        entry: shown.to_string(),
        what: "listing what it hides",
        source: e,
    })?;
    for n in names {
        let mut child = path.to_vec();
        child.push(n.as_bytes().to_vec());
        hide_lower(dir, n.as_bytes(), &child, upper, shown)?;
    }
    Ok(())
}

/// Opaque whiteout: hide everything lower layers put in this directory.
fn clear_dir(
    parent: &OwnedFd,
    parents: &[Vec<u8>],
    upper: &HashSet<Components>,
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
    hide_lower_children(&dir, parents, upper, shown)
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
