//! Named images in the store (`images/<name>.json`) and garbage collection of the blobs no
//! name refers to any more.

use std::collections::HashSet;
use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{io, ImageError, Result};
use crate::layout::Image;
use crate::store::Store;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    /// Where it came from, e.g. `oci:/path:tag`.
    pub source: String,
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
    /// Bytes of all blobs (compressed layers, config, manifest).
    pub size: u64,
    /// Seconds since the epoch.
    pub created: u64,
    /// Non-distributable (foreign) layers the manifest lists and the unpack left out, each
    /// as "DIGEST (MEDIA TYPE)".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_layers: Vec<String>,
}

/// Image names are file names in the store and directory names under rootfs/.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Format(format!(
            "invalid image name {name:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
        )))
    }
}

impl ImageRecord {
    pub fn new(store: &Store, name: &str, source: &str, image: &Image) -> Result<ImageRecord> {
        validate_name(name)?;
        let mut size = 0;
        for d in image
            .layers
            .iter()
            .chain([&image.config_digest, &image.manifest])
        {
            let p = store.blob_path(d);
            size += fs::metadata(&p).map_err(io(&p, "sizing the blob"))?.len();
        }
        let manifest =
            oci_spec::image::ImageManifest::from_reader(&store.read_verified(&image.manifest)?[..])
                .map_err(|e| ImageError::Format(format!("manifest {}: {e}", image.manifest)))?;
        Ok(ImageRecord {
            skipped_layers: crate::layout::foreign_layers(&manifest),
            name: name.to_string(),
            source: source.to_string(),
            manifest: image.manifest.to_string(),
            config: image.config_digest.to_string(),
            layers: image.layers.iter().map(Digest::to_string).collect(),
            size,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    pub fn blobs(&self) -> Result<Vec<Digest>> {
        self.layers
            .iter()
            .chain([&self.config, &self.manifest])
            .map(|d| Digest::parse(d))
            .collect()
    }
}

fn dir(store: &Store) -> std::path::PathBuf {
    store.root().join("images")
}

/// Write atomically (temp file + rename).
pub fn save(store: &Store, rec: &ImageRecord) -> Result<()> {
    validate_name(&rec.name)?;
    let d = dir(store);
    fs::create_dir_all(&d).map_err(io(&d, "creating the image list"))?;
    let tmp = d.join(format!(".{}.json.tmp", rec.name));
    let json = serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Format(e.to_string()))?;
    fs::write(&tmp, json).map_err(io(&tmp, "writing the image record"))?;
    let path = d.join(format!("{}.json", rec.name));
    fs::rename(&tmp, &path).map_err(io(&path, "writing the image record"))
}

pub fn load(store: &Store, name: &str) -> Result<ImageRecord> {
    validate_name(name)?;
    let path = dir(store).join(format!("{name}.json"));
    let bytes = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Format(format!(
            "no image named {name:?}; `cagerun images` lists them"
        )),
        _ => ImageError::Io {
            path: path.clone(),
            what: "reading the image record",
            source: e,
        },
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Format(format!("{}: {e}", path.display())))
}

pub fn list(store: &Store) -> Result<Vec<ImageRecord>> {
    let d = dir(store);
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&d) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".json").filter(|n| !n.starts_with('.')) {
            out.push(load(store, n)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Forget a name, then delete every blob no remaining name uses. Returns bytes freed.
pub fn remove(store: &Store, name: &str) -> Result<u64> {
    load(store, name)?;
    let path = dir(store).join(format!("{name}.json"));
    fs::remove_file(&path).map_err(io(&path, "removing the image record"))?;
    gc(store)
}

pub fn gc(store: &Store) -> Result<u64> {
    let mut keep = HashSet::new();
    for rec in list(store)? {
        keep.extend(rec.blobs()?.into_iter().map(|d| d.hex().to_string()));
    }
    let blobs = store.root().join("blobs/sha256");
    let mut freed = 0;
    for e in fs::read_dir(&blobs)
        .map_err(io(&blobs, "listing blobs"))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).map_err(io(e.path(), "removing an unused blob"))?;
        }
    }
    Ok(freed)
}
