//! Ollama models without Ollama: the Ollama registry protocol (the distribution API with
//! `application/vnd.ollama.image.*` layers) spoken by cagerun itself, written in Ollama's
//! own layout — `blobs/sha256-<hex>` and `manifests/<registry>/<namespace>/<model>/<tag>` —
//! so the model server reads the directory as it is (`OLLAMA_MODELS`) and never needs the
//! internet. Blobs are verified and resumable like image blobs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use crate::digest::Digest;
use crate::error::Sent;
use crate::error::{io, ImageError, Result};
use crate::registry::{
    block_on, client_for, fetch_blob, is_local, registry_err, PullProgress, Target, DEFAULT_TIMEOUT,
};
use crate::store::{Naming, Store};

pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub registry: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

fn valid(part: &str, tag: bool) -> bool {
    !part.is_empty()
        && part.len() <= 128
        && !part.starts_with('.')
        && part.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"._-".contains(&b)
                || (tag && b.is_ascii_uppercase())
        })
}

impl ModelRef {
    /// `model`, `model:tag`, `namespace/model[:tag]`, `registry/namespace/model[:tag]`.
    pub fn parse(name: &str, registry: &str) -> Result<ModelRef> {
        let bad = || {
            ImageError::Format(format!(
                "invalid model name {name:?}: use [registry/][namespace/]model[:tag]"
            ))
        };
        let (path, tag) = match name.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, t),
            _ => (name, "latest"),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (reg, ns, model) = match parts.as_slice() {
            [m] => (registry, "library", *m),
            [n, m] => (registry, *n, *m),
            [r, n, m] => (*r, *n, *m),
            _ => return Err(bad()),
        };
        let reg_ok = !reg.is_empty()
            && reg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !reg_ok || !valid(ns, false) || !valid(model, false) || !valid(tag, true) {
            return Err(bad());
        }
        Ok(ModelRef {
            registry: reg.to_string(),
            namespace: ns.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        })
    }

    pub fn manifest_path(&self, models: &Path) -> PathBuf {
        models
            .join("manifests")
            .join(&self.registry)
            .join(&self.namespace)
            .join(&self.model)
            .join(&self.tag)
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.registry, self.namespace, self.model, self.tag
        )
    }
}

fn manifest_blobs(bytes: &[u8]) -> Result<Vec<(Digest, u64)>> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Format(format!("model manifest: {e}")))?;
    let mut out = Vec::new();
    let desc =
        |d: &serde_json::Value| -> Result<(Digest, u64)> {
            let digest = d.get("digest").and_then(|x| x.as_str()).ok_or_else(|| {
                ImageError::Format("model manifest: a layer without a digest".into())
            })?;
            let size = d.get("size").and_then(|x| x.as_u64()).ok_or_else(|| {
                ImageError::Format("model manifest: a layer without a size".into())
            })?;
            Ok((Digest::parse(digest)?, size))
        };
    if let Some(c) = v.get("config") {
        out.push(desc(c)?);
    }
    for l in v
        .get("layers")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        out.push(desc(l)?);
    }
    Ok(out)
}

/// Pull a model into `models`. `endpoint` (e.g. `http://127.0.0.1:5000`) overrides where the
/// registry is reached; plain HTTP only for this machine's addresses.
pub fn pull_model(
    models: &Path,
    model: &ModelRef,
    endpoint: Option<&str>,
    progress: Arc<dyn PullProgress>,
) -> Result<Digest> {
    block_on(async {
        let (host, plain) = match endpoint {
            Some(u) if u.starts_with("http://") => (
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string(),
                true,
            ),
            Some(u) => (
                u.trim_start_matches("https://")
                    .trim_end_matches('/')
                    .to_string(),
                false,
            ),
            None => (model.registry.clone(), false),
        };
        if plain && !is_local(&host) {
            return Err(ImageError::Format(format!(
                "{host}: plain HTTP is only spoken to this machine's registries"
            )));
        }
        let client = client_for(&host, plain, DEFAULT_TIMEOUT)?;
        let at: Reference = format!("{host}/{}/{}:{}", model.namespace, model.model, model.tag)
            .parse()
            .map_err(|e| ImageError::Format(format!("{model}: {e}")))?;
        let target = Target::of(&at, Sent::Nothing, DEFAULT_TIMEOUT);
        let (bytes, digest) = client
            .pull_manifest_raw(&at, &RegistryAuth::Anonymous, &[MANIFEST_TYPE])
            .await
            .map_err(|e| registry_err(&model.to_string(), e))?;
        let digest = Digest::parse(&digest)?;
        if Digest::of(&bytes) != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual: Digest::of(&bytes).to_string(),
            });
        }
        let store = Store::open_with(models, Naming::Ollama)?;
        for (d, size) in manifest_blobs(&bytes)? {
            fetch_blob(&client, &at, &store, &d, size, progress.as_ref(), &target).await?;
        }
        // The manifest last: Ollama lists a model only once everything it names is there.
        let path = model.manifest_path(models);
        let dir = path.parent().expect("a manifest path has a parent");
        fs::create_dir_all(dir).map_err(io(dir, "creating the manifest directory"))?;
        let tmp = dir.join(format!(".{}.tmp", model.tag));
        fs::write(&tmp, &bytes).map_err(io(&tmp, "writing the manifest"))?;
        fs::rename(&tmp, &path).map_err(io(&path, "writing the manifest"))?;
        Ok(digest)
    })?
}

/// (name, total size of its blobs) for every model in `models`.
pub fn list_models(models: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for path in manifest_files(models) {
        let rel = path.strip_prefix(models.join("manifests")).unwrap_or(&path);
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if let [r, n, m, t] = parts.as_slice() {
            let bytes = fs::read(&path).map_err(io(&path, "reading the manifest"))?;
            let size = manifest_blobs(&bytes)?.iter().map(|(_, s)| s).sum();
            out.push((format!("{r}/{n}/{m}:{t}"), size));
        }
    }
    out.sort();
    Ok(out)
}

fn manifest_files(models: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![models.join("manifests")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out
}

/// Remove a model's manifest, then every blob no remaining manifest names. Bytes freed.
pub fn remove_model(models: &Path, model: &ModelRef) -> Result<u64> {
    let path = model.manifest_path(models);
    if !path.is_file() {
        return Err(ImageError::Format(format!(
            "no model {model} in {}",
            models.display()
        )));
    }
    fs::remove_file(&path).map_err(io(&path, "removing the manifest"))?;
    let mut keep = HashSet::new();
    for m in manifest_files(models) {
        let bytes = fs::read(&m).map_err(io(&m, "reading a manifest"))?;
        keep.extend(
            manifest_blobs(&bytes)?
                .into_iter()
                .map(|(d, _)| format!("sha256-{}", d.hex())),
        );
    }
    let mut freed = 0;
    let blobs = models.join("blobs");
    for e in fs::read_dir(&blobs)
        .map_err(io(&blobs, "listing blobs"))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("sha256-") && !keep.contains(&name) {
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).map_err(io(e.path(), "removing an unused blob"))?;
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ollamas_defaults() {
        let r = |s| ModelRef::parse(s, DEFAULT_REGISTRY).unwrap().to_string();
        assert_eq!(r("smollm2"), "registry.ollama.ai/library/smollm2:latest");
        assert_eq!(r("smollm2:135m"), "registry.ollama.ai/library/smollm2:135m");
        assert_eq!(r("me/tiny:Q4_0"), "registry.ollama.ai/me/tiny:Q4_0");
        assert_eq!(r("127.0.0.1:5000/me/tiny:1"), "127.0.0.1:5000/me/tiny:1");
        for bad in ["", "../x", "a/b/c/d", "x:", "UPPER", "me/../x"] {
            assert!(ModelRef::parse(bad, DEFAULT_REGISTRY).is_err(), "{bad}");
        }
    }
}
