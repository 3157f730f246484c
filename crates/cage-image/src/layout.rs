//! OCI image layouts on disk (`oci:DIR[:tag]`, as `umoci` and `skopeo` write them), and
//! turning an imported image into a root filesystem.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::digest::Digest;
use crate::error::{io, ImageError, Result};
use crate::store::Store;
use crate::unpack::{apply_layer, UnpackOptions};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<Digest>,
}

fn format(msg: impl Into<String>) -> ImageError {
    ImageError::Format(msg.into())
}

/// This machine's architecture as OCI platforms name it.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The entry of a multi-platform index that runs here (linux on this architecture).
pub(crate) fn host_platform_entry(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
        })
    })
}

fn digest_of(d: &oci_spec::image::Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref())
}

/// Copy one blob of the layout into the store, verified.
fn ingest_from_layout(store: &Store, dir: &Path, d: &Digest, size: u64) -> Result<()> {
    let path = dir.join("blobs/sha256").join(d.hex());
    store.ingest(d, Some(size), |offset| {
        let mut f = File::open(&path).map_err(io(&path, "opening the layout blob"))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io(&path, "seeking in the layout blob"))?;
        Ok(Box::new(f))
    })?;
    Ok(())
}

/// Import `oci:DIR[:tag]` into the store: every blob copied and verified.
pub fn import_oci_layout(store: &Store, dir: &Path, tag: Option<&str>) -> Result<Image> {
    if !dir.join("oci-layout").is_file() {
        return Err(format(format!(
            "{} is not an OCI image layout (no oci-layout file)",
            dir.display()
        )));
    }
    let index = ImageIndex::from_file(dir.join("index.json"))
        .map_err(|e| format(format!("{}/index.json: {e}", dir.display())))?;
    let candidates: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| match tag {
            Some(t) => {
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    == Some(t)
            }
            None => true,
        })
        .collect();
    let mut desc = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(format(format!(
                "{}: no image tagged {:?}",
                dir.display(),
                tag.unwrap_or("")
            )))
        }
        _ => {
            let tags: Vec<String> = index
                .manifests()
                .iter()
                .filter_map(|m| {
                    m.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .cloned()
                })
                .collect();
            return Err(format(format!(
                "{} holds several images; name one with oci:DIR:TAG (tags: {})",
                dir.display(),
                tags.join(", ")
            )));
        }
    };
    // A nested index (a multi-platform image): pick this machine's platform.
    while *desc.media_type() == MediaType::ImageIndex {
        let d = digest_of(&desc)?;
        ingest_from_layout(store, dir, &d, desc.size())?;
        let nested = ImageIndex::from_reader(&store.read_verified(&d)?[..])
            .map_err(|e| format(format!("index {d}: {e}")))?;
        desc = host_platform_entry(&nested).cloned().ok_or_else(|| {
            format(format!(
                "image index {d} has no linux/{} image",
                host_arch()
            ))
        })?;
    }
    let manifest_digest = digest_of(&desc)?;
    ingest_from_layout(store, dir, &manifest_digest, desc.size())?;
    let manifest = ImageManifest::from_reader(&store.read_verified(&manifest_digest)?[..])
        .map_err(|e| format(format!("manifest {manifest_digest}: {e}")))?;
    let config_digest = digest_of(manifest.config())?;
    ingest_from_layout(store, dir, &config_digest, manifest.config().size())?;
    let config = ImageConfiguration::from_reader(&store.read_verified(&config_digest)?[..])
        .map_err(|e| format(format!("config {config_digest}: {e}")))?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let d = digest_of(l)?;
        if is_foreign_layer(l.media_type().as_ref()) {
            // Its blob need not be in the layout (it is fetched from elsewhere, if at all).
            warn_foreign(&d, l.media_type().as_ref());
            continue;
        }
        ingest_from_layout(store, dir, &d, l.size())?;
        layers.push(d);
    }
    if manifest.layers().len() != config.rootfs().diff_ids().len() {
        return Err(format(format!(
            "manifest {manifest_digest} has {} layers but its config lists {} diff_ids",
            manifest.layers().len(),
            config.rootfs().diff_ids().len()
        )));
    }
    Ok(Image {
        manifest: manifest_digest,
        config_digest,
        config,
        layers,
    })
}

/// Whether a layer's media type says its content is not distributed with the image
/// (Windows base layers, licensed content): OCI's `…layer.nondistributable.v1.tar*` and
/// Docker's `…rootfs.foreign.diff.tar*`. Such layers are left out: an image imports and
/// unpacks from its other layers, as containerd and skopeo carry it without their blobs.
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// The manifest's left-out layers, each as "DIGEST (MEDIA TYPE)".
pub fn foreign_layers(manifest: &ImageManifest) -> Vec<String> {
    manifest
        .layers()
        .iter()
        .map(|l| (l.digest().to_string(), l.media_type().to_string()))
        .filter(|(_, mt)| is_foreign_layer(mt))
        .map(|(d, mt)| format!("{d} ({mt})"))
        .collect()
}

pub(crate) fn warn_foreign(digest: &impl std::fmt::Display, media_type: &str) {
    tracing::warn!(
        "leaving out the non-distributable layer {digest} ({media_type}): its content does not travel with the image; the image unpacks from its other layers"
    );
}

/// Unpack `image` into `target` (which must not exist yet). Built in a sibling temp dir and
/// renamed into place at the end, so a failure leaves nothing at `target`.
pub fn unpack_image(
    store: &Store,
    image: &Image,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<PathBuf> {
    if target.exists() {
        return Err(format(format!(
            "{} already exists; remove it or pick another name",
            target.display()
        )));
    }
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent, "creating the rootfs directory"))?;
    let name = target
        .file_name()
        .ok_or_else(|| format("the rootfs target has no name"))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::create_dir(&tmp).map_err(io(&tmp, "creating the unpack directory"))?;
    let result = (|| {
        // `max_bytes` bounds the image: each layer gets what the layers below left.
        let mut written = 0u64;
        for d in &image.layers {
            let layer_opts = UnpackOptions {
                max_bytes: opts.max_bytes.map(|m| m.saturating_sub(written)),
                ..opts.clone()
            };
            let report =
                apply_layer(&tmp, store.open_verified(d)?, &layer_opts).map_err(|e| match e {
                    ImageError::TooLarge { .. } => ImageError::TooLarge {
                        limit: opts.max_bytes.unwrap_or_default(),
                    },
                    e => e,
                })?;
            written += report.bytes;
        }
        fs::rename(&tmp, target).map_err(io(target, "moving the rootfs into place"))
    })();
    if let Err(e) = result {
        let _ = make_writable_and_remove(&tmp);
        return Err(e);
    }
    Ok(target.to_path_buf())
}

/// Remove a tree we unpacked, even where the image made directories read-only. Image
/// contents are hostile (and build steps ran in the tree): the walk goes by directory
/// descriptor, opening each subdirectory with `O_NOFOLLOW` beneath its parent and changing
/// only the mode of what it holds open, so a symlink in the tree (or one swapped in while
/// this runs) is unlinked, never followed — nothing outside the tree changes.
pub fn make_writable_and_remove(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags, CWD};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = match rustix::fs::open(path, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        // Not a directory (or a symlink): unlink the name itself.
        Err(rustix::io::Errno::NOTDIR) | Err(rustix::io::Errno::LOOP) => {
            return Ok(rustix::fs::unlink(path)?)
        }
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    empty_dir(top)?;
    Ok(rustix::fs::unlinkat(CWD, path, AtFlags::REMOVEDIR)?)
}

/// Empty the directory `dir` (held open): make it writable, remove every entry, recursing
/// into subdirectories by descriptor.
fn empty_dir(dir: std::os::fd::OwnedFd) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700));
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push((name, entry.file_type()));
        }
    }
    for (name, kind) in names {
        let sub = match kind {
            FileType::Directory | FileType::Unknown => rustix::fs::openat(
                &dir,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok(),
            _ => None,
        };
        match sub {
            Some(fd) => {
                empty_dir(fd)?;
                rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
            }
            None => rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty())?,
        }
    }
    Ok(())
}
