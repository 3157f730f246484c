//! Images in the store and their root filesystems: pull, import, unpack with the image's
//! ownership (shifted onto the subordinate range that runs it), record, remove.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cage_image::layout::{import_oci_layout, unpack_image};
pub use cage_image::records::ImageRecord as Record;
use cage_image::records::{self, ImageRecord};
pub use cage_image::store::Store;
use cage_image::unpack::{UnpackOptions, DEFAULT_MAX_IMAGE_BYTES, MAX_IMAGE_BYTES_ENV};

use crate::{ids, progress, tree};

/// Where the image store is; opened (and created) only when an image is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRoot(pub PathBuf);

impl Default for StoreRoot {
    /// $XDG_DATA_HOME/cagerun, else ~/.local/share/cagerun.
    fn default() -> Self {
        StoreRoot(Store::default_root())
    }
}

impl StoreRoot {
    pub fn open(&self) -> Result<Store> {
        Ok(Store::open(&self.0)?)
    }
}

/// Where an image comes from when it is imported (air-gapped hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// An OCI image layout (as umoci and skopeo write), optionally one tag of it.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` archive, optionally one tag of it.
    DockerArchive { file: PathBuf, tag: Option<String> },
}

impl ImportSource {
    /// `oci:DIR[:TAG]` or `docker-archive:FILE[:TAG]`. A last `:` part that contains no `/`
    /// is the tag.
    pub fn parse(source: &str) -> Result<ImportSource> {
        let (oci, rest) = if let Some(r) = source.strip_prefix("oci:") {
            (true, r)
        } else if let Some(r) = source.strip_prefix("docker-archive:") {
            (false, r)
        } else {
            bail!(
                "unknown image source {source:?}: use oci:DIR[:TAG] or docker-archive:FILE[:TAG]"
            );
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => {
                (PathBuf::from(path), Some(tag.to_string()))
            }
            _ => (PathBuf::from(rest), None),
        };
        Ok(if oci {
            ImportSource::OciLayout { dir: path, tag }
        } else {
            ImportSource::DockerArchive { file: path, tag }
        })
    }
}

/// Unpack with the image's ownership where we can: as root shifted onto root's subordinate
/// range (image id N is host id base+N), rootless as root of a user namespace over the caller's
/// subordinate ids; otherwise every file is the caller's.
pub fn unpack(store: &Store, image: &cage_image::layout::Image, target: &Path) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    // The parent is the cage's, made by the caller (not by a mapped helper).
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // Read before the mapped helper runs, so a bad value is the caller's error.
    let bounded = UnpackOptions {
        max_bytes: Some(max_image_bytes()?),
        ..Default::default()
    };
    let chowned = UnpackOptions {
        chown: true,
        ..bounded.clone()
    };
    match (root, ids::subordinate()) {
        // As root, the image's ids land in root's subordinate range (image id N is host id
        // base+N), where its sandboxes and services run: inside they are what the image says,
        // and no file of it carries a real host id. Without a range: the image's own ids.
        (true, _) => {
            let shifted = UnpackOptions {
                id_offset: ids::root_range()
                    .map(|sub| (sub.uid_base, sub.gid_base))
                    .unwrap_or_default(),
                ..chowned
            };
            unpack_image(store, image, target, &shifted).map(drop)?
        }
        // The helper's error crosses back as text: a full disk is named inside it.
        (false, Some(sub)) => ids::as_mapped_root(&sub, || {
            unpack_image(store, image, target, &chowned).map_err(|e| {
                let dir = target.parent().unwrap_or(Path::new("."));
                disk_full(
                    e.into(),
                    dir,
                    "the root filesystem directory",
                    "--rootfs-dir",
                )
            })?;
            Ok(())
        })?,
        (false, None) => unpack_image(store, image, target, &bounded).map(drop)?,
    }
    Ok(())
}

/// The most bytes of files one image's layers may write: `$CAGERUN_MAX_IMAGE_BYTES`, else
/// [`DEFAULT_MAX_IMAGE_BYTES`] (a decompression bomb stops there, not at a full disk).
pub fn max_image_bytes() -> Result<u64> {
    match std::env::var(MAX_IMAGE_BYTES_ENV) {
        Err(_) => Ok(DEFAULT_MAX_IMAGE_BYTES),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!(
                "{MAX_IMAGE_BYTES_ENV}={v:?}: expected a number of bytes above 0 (e.g. {DEFAULT_MAX_IMAGE_BYTES})"
            ),
        },
    }
}

/// Unpack an image that is in the store into `target` and record it under `name`; `source`
/// is what it came from (a canonical reference or an import source).
fn unpack_and_record(
    store: &Store,
    name: &str,
    source: &str,
    image: &cage_image::layout::Image,
    target: &Path,
) -> Result<ImageRecord> {
    unpack(store, image, target)
        .with_context(|| format!("unpacking {source} into {}", target.display()))?;
    let rec = ImageRecord::new(store, name, source, image)?;
    records::save(store, &rec)?;
    Ok(rec)
}

/// The store name of an image reference when `pull` gets no --name: the repository's last
/// part, without tag or digest.
pub fn default_name(reference: &str) -> String {
    let repo = reference.split('@').next().unwrap_or(reference);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next().unwrap_or(last).to_ascii_lowercase()
}

/// Remove `rootfs_dir/name` (as root of the mapped user namespace when the image kept its
/// ownership through subordinate ids, which the caller alone may not delete).
pub fn remove_rootfs(rootfs_dir: &Path, name: &str) -> Result<PathBuf> {
    records::validate_name(name)?;
    let target = rootfs_dir.join(name);
    if !target.exists() {
        bail!("{} does not exist", target.display());
    }
    let remove = || -> Result<()> {
        cage_image::layout::make_writable_and_remove(&target)
            .with_context(|| format!("removing {}", target.display()))
    };
    match ids::subordinate().filter(|s| ids::ownership_mapped(&target, s)) {
        Some(sub) => ids::as_mapped_root(&sub, remove)?,
        None => remove()?,
    }
    Ok(target)
}

/// Import `source` into the store as `name` and unpack it to `rootfs_dir/name`.
pub fn import(
    store: &Store,
    source: &str,
    name: &str,
    rootfs_dir: &Path,
) -> Result<(ImageRecord, PathBuf)> {
    records::validate_name(name)?;
    let image = match ImportSource::parse(source)? {
        ImportSource::OciLayout { dir, tag } => import_oci_layout(store, &dir, tag.as_deref()),
        ImportSource::DockerArchive { file, tag } => {
            cage_image::archive::import_docker_archive(store, &file, tag.as_deref())
        }
    }
    .with_context(|| format!("importing {source}"))?;
    let target = rootfs_dir.join(name);
    let rec = unpack_and_record(store, name, source, &image, &target)?;
    Ok((rec, target))
}

/// A hidden sibling of `target` for work in progress (`.NAME.WHAT-PID`): built there, then
/// renamed into place.
pub fn beside(target: &Path, what: &str) -> PathBuf {
    target.with_file_name(format!(
        ".{}.{what}-{}",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ))
}

/// Pull `reference` into the store with its filed credentials (see [`crate::credentials`]),
/// with progress bars.
fn pull_into_store(
    store: &Store,
    reference: &str,
    insecure_registries: &[String],
) -> Result<(String, cage_image::layout::Image)> {
    let opts = crate::credentials::pull_options(reference, insecure_registries)?;
    cage_image::registry::pull(store, reference, &opts, progress::bars())
        .map_err(|e| disk_full(e.into(), store.root(), "the image store", "--store"))
        .with_context(|| format!("pulling {reference}"))
}

/// `e` as [`Error::DiskFull`] when a write in `dir` ran out of space (ENOSPC anywhere in
/// its chain); otherwise `e` as it is.
fn disk_full(
    e: anyhow::Error,
    dir: &Path,
    what: &'static str,
    flag: &'static str,
) -> anyhow::Error {
    let is_enospc = |io: &std::io::Error| io.raw_os_error() == Some(libc::ENOSPC);
    let enospc = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(is_enospc)
            // A layer's own error holds its io::Error without naming it as the source.
            || matches!(c.downcast_ref::<cage_image::ImageError>(),
                Some(cage_image::ImageError::Archive(io)) if is_enospc(io))
    });
    if enospc {
        crate::Error::DiskFull {
            dir: dir.to_path_buf(),
            what,
            flag,
        }
        .into()
    } else {
        e
    }
}

/// Unpack `image` beside `target`, record it as `name`, and rename it into place: an
/// interrupted or failed unpack (a full disk) leaves nothing at `target`, nor beside it.
fn unpack_into_place(
    store: &Store,
    name: &str,
    source: &str,
    image: &cage_image::layout::Image,
    target: &Path,
) -> Result<ImageRecord> {
    let partial = beside(target, "partial");
    let dir = target.parent().unwrap_or(Path::new("."));
    let unpacked = unpack(store, image, &partial)
        .map_err(|e| disk_full(e, dir, "the root filesystem directory", "--rootfs-dir"))
        .with_context(|| format!("unpacking {source} into {}", target.display()))
        .and_then(|()| {
            std::fs::rename(&partial, target)
                .with_context(|| format!("moving {} into place", target.display()))
        });
    if let Err(e) = unpacked {
        if partial.exists() {
            tree::remove(&partial);
        }
        return Err(e);
    }
    let rec = ImageRecord::new(store, name, source, image)?;
    records::save(store, &rec)?;
    Ok(rec)
}

/// Pull `reference` (with progress) and unpack it to `target` (a service's rootfs).
pub fn pull_to(store: &Store, reference: &str, target: &Path) -> Result<()> {
    let name = default_name(reference);
    let (canonical, image) = pull_into_store(store, reference, &[])?;
    unpack_into_place(store, &name, &canonical, &image, target).map(drop)
}

/// `cagerun pull`: `reference` into the store as `name` (default: [`default_name`]) and
/// unpacked to `rootfs_dir/name`, which must not exist yet.
pub fn pull(
    store: &Store,
    reference: &str,
    name: Option<&str>,
    insecure_registries: &[String],
    rootfs_dir: &Path,
) -> Result<(String, ImageRecord, PathBuf)> {
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| default_name(reference));
    records::validate_name(&name)?;
    let target = rootfs_dir.join(&name);
    if target.exists() {
        bail!(
            "{} already exists; remove it or pull with another --name",
            target.display()
        );
    }
    let (canonical, image) = pull_into_store(store, reference, insecure_registries)?;
    let rec = unpack_into_place(store, &name, &canonical, &image, &target)?;
    Ok((canonical, rec, target))
}

/// The images in the store, as recorded.
pub fn list(store: &Store) -> Result<Vec<ImageRecord>> {
    Ok(records::list(store)?)
}

/// Remove the image `name` from the store and the blobs no other image uses: the bytes freed.
/// Its root filesystem under rootfs/ is the cage's and stays.
pub fn remove(store: &Store, name: &str) -> Result<u64> {
    Ok(records::remove(store, name)?)
}
