//! Removing trees the cage made (volumes, partial unpacks, build work): some of their files
//! belong to subordinate ids the caller alone may not delete.

use std::path::Path;

use crate::ids;

/// Remove a directory tree that may hold files made by the cage's root (a subordinate id,
/// which the caller cannot delete from directories it does not own): as that root if needed.
/// Volumes are written by hostile services: `remove_dir_all` walks by descriptor
/// (`openat(O_NOFOLLOW | O_DIRECTORY)` + `unlinkat`, std's fix for CVE-2022-21658), so a
/// symlink or hardlink planted anywhere in the tree is unlinked, never followed; only `dir`
/// itself is named, and it is the cage's own path.
pub fn remove(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    if let Some(sub) = ids::subordinate() {
        let d = dir.to_path_buf();
        let _ = ids::as_mapped_root(&sub, move || Ok(std::fs::remove_dir_all(&d)?));
    }
    let _ = std::fs::remove_dir_all(dir);
}
