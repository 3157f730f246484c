//! The annotations cagerun adds to an OCI spec for what the spec has no field for; the
//! sandbox engine reads them back (cage-sandbox's `plan`).

/// Annotation prefix for files the engine writes into a fresh (tmpfs) root before sealing it
/// read-only, e.g. `run.cagerun.file:/etc/passwd`. Value: the file's contents.
pub const FILE_ANNOTATION_PREFIX: &str = "run.cagerun.file:";

/// Annotation prefix for symlinks the engine makes in a fresh root, e.g.
/// `run.cagerun.symlink:/bin` = `usr/bin` (merged-/usr hosts: a link, not another mount).
pub const SYMLINK_ANNOTATION_PREFIX: &str = "run.cagerun.symlink:";

/// Annotation prefix marking a bind whose source hostile code can write, e.g.
/// `run.cagerun.beneath:/workspace` = `/cage/workspace`: the mount at that destination has a
/// source below the value, and the engine opens the rest of the source beneath the value's
/// directory with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) when it
/// mounts it, and binds that descriptor: a symlink planted below the root (absolute,
/// relative, through /proc, in any component, or swapped in at any time before the mount)
/// resolves inside the root, never on the host.
pub const BENEATH_ANNOTATION_PREFIX: &str = "run.cagerun.beneath:";
