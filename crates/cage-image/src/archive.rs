//! `docker-archive:FILE.tar` (what `docker save` and `skopeo copy … docker-archive:` write):
//! `manifest.json` names a config and uncompressed layer tars. The archive is unpacked into
//! a private directory of the store (regular files with plain names only), every file is
//! hashed on its way into the store, and an OCI manifest is written for it. Archives in the
//! newer format (an OCI layout inside) are imported as a layout.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{io, ImageError, Result};
use crate::layout::{import_oci_layout, make_writable_and_remove, Image};
use crate::store::Store;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
    /// docker save's record of layers that came with another media type (foreign ones),
    /// by diff_id.
    #[serde(default)]
    layer_sources: std::collections::HashMap<String, LayerSource>,
}

#[derive(Deserialize)]
struct LayerSource {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

fn format(msg: impl Into<String>) -> ImageError {
    ImageError::Format(msg.into())
}

/// A relative path inside the archive, or None for anything that could leave it.
fn inside(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Some(dir.join(p))
    } else {
        None
    }
}

pub fn import_docker_archive(store: &Store, file: &Path, tag: Option<&str>) -> Result<Image> {
    let work = store
        .root()
        .join(format!("ingest/archive-{}", std::process::id()));
    let _ = make_writable_and_remove(&work);
    fs::create_dir_all(&work).map_err(io(&work, "creating a work directory"))?;
    let result = (|| {
        let f = File::open(file).map_err(io(file, "opening the archive"))?;
        let mut archive = tar::Archive::new(f);
        for entry in archive.entries().map_err(ImageError::Archive)? {
            let mut entry = entry.map_err(ImageError::Archive)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let dest = inside(&work, &name).ok_or(ImageError::UnsafeEntry {
                entry: name.clone(),
                why: "path outside the archive",
            })?;
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(io(parent, "unpacking the archive"))?;
            }
            let mut out = File::create(&dest).map_err(io(&dest, "unpacking the archive"))?;
            std::io::copy(&mut entry, &mut out).map_err(ImageError::Archive)?;
        }
        if work.join("oci-layout").is_file() {
            return import_oci_layout(store, &work, tag);
        }
        let manifest = work.join("manifest.json");
        let entries: Vec<Entry> = serde_json::from_slice(&fs::read(&manifest).map_err(|_| {
            format(format!(
                "{} has no manifest.json: not a docker archive",
                file.display()
            ))
        })?)
        .map_err(|e| format(format!("{}: manifest.json: {e}", file.display())))?;
        let entry = match (tag, entries.as_slice()) {
            (None, [one]) => one,
            (Some(t), all) => all
                .iter()
                .find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|rt| rt == t || rt.rsplit_once(':').map(|(_, x)| x) == Some(t))
                })
                .ok_or_else(|| format(format!("{}: no image tagged {t}", file.display())))?,
            (None, _) => {
                return Err(format(format!(
                    "{} holds several images; name one with docker-archive:FILE:TAG",
                    file.display()
                )))
            }
        };
        let put_file = |name: &str| -> Result<(Digest, u64)> {
            let path = inside(&work, name).ok_or(ImageError::UnsafeEntry {
                entry: name.to_string(),
                why: "path outside the archive",
            })?;
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io(&path, "reading from the archive"))?;
            Ok((store.put_bytes(&bytes)?, bytes.len() as u64))
        };
        let (config_digest, config_size) = put_file(&entry.config)?;
        let config = oci_spec::image::ImageConfiguration::from_reader(
            &store.read_verified(&config_digest)?[..],
        )
        .map_err(|e| format(format!("{}: config: {e}", file.display())))?;
        // The uncompressed layer tars are the diff_ids the config lists.
        let diff_ids: Vec<String> = config.rootfs().diff_ids().to_vec();
        if diff_ids.len() != entry.layers.len() {
            return Err(format(format!(
                "{}: the layers do not match the config's diff_ids",
                file.display()
            )));
        }
        // Each layer's descriptor for the manifest, and the layers to unpack. A foreign
        // layer is left out (its file need not be in the archive) and keeps its own
        // descriptor in the manifest, as it had when pulled.
        let mut descriptors = Vec::new();
        let mut layers = Vec::new();
        for (l, diff_id) in entry.layers.iter().zip(&diff_ids) {
            if let Some(src) = entry
                .layer_sources
                .get(diff_id)
                .filter(|s| crate::layout::is_foreign_layer(&s.media_type))
            {
                crate::layout::warn_foreign(&src.digest, &src.media_type);
                descriptors.push(serde_json::json!({"mediaType": src.media_type, "digest": src.digest, "size": src.size}));
                continue;
            }
            let (d, size) = put_file(l)?;
            if *diff_id != d.to_string() {
                return Err(format(format!(
                    "{}: the layers do not match the config's diff_ids",
                    file.display()
                )));
            }
            descriptors.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": size}));
            layers.push((d, size));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size},
            "layers": descriptors,
        });
        let manifest_digest =
            store.put_bytes(&serde_json::to_vec(&manifest).map_err(|e| format(e.to_string()))?)?;
        Ok(Image {
            manifest: manifest_digest,
            config_digest,
            config,
            layers: layers.into_iter().map(|(d, _)| d).collect(),
        })
    })();
    let _ = make_writable_and_remove(&work);
    result
}
