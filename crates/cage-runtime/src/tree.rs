//! Removing trees the cage made (volumes, partial unpacks, build work): some of their files
//! belong to subordinate ids the caller alone may not delete. And the fresh temporary
//! directories the cage's own ids read from ([`fresh_temp_dir`]).

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

/// A new directory under the temp dir (`cagerun-WHAT-PID-NANOS`, mode 0755), never one that
/// is already there: for files a job's or a sandbox's engine (a cage id, as root a
/// subordinate one) must read, which the runtime directory (0700, the cage owner's) hides.
pub fn fresh_temp_dir(what: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("cagerun-{what}-{}-{stamp}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
