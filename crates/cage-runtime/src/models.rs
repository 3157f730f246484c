//! Ollama models in Ollama's own layout, in a models directory (the model server reads them
//! as they are): pull from a registry, list, remove.

use std::path::Path;

use anyhow::{Context, Result};
use cage_image::models::{self, ModelRef, DEFAULT_REGISTRY};

pub use cage_image::models::ModelRef as Model;

/// The registry's host (as model references name it) for a registry URL; Ollama's own
/// without one.
fn registry_name(url: Option<&str>) -> String {
    match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string(),
        None => DEFAULT_REGISTRY.to_string(),
    }
}

/// `NAME[:TAG]` from `registry` (a URL; Ollama's registry without one).
pub fn parse(name: &str, registry: Option<&str>) -> Result<ModelRef> {
    Ok(ModelRef::parse(name, &registry_name(registry))?)
}

/// Pull `model` into `dir` with progress; its manifest's digest.
pub fn pull(dir: &Path, model: &ModelRef, registry: Option<&str>) -> Result<String> {
    let digest = models::pull_model(dir, model, registry, crate::progress::bars())
        .with_context(|| format!("pulling model {model}"))?;
    Ok(digest.to_string())
}

/// Every model in `dir`: (name, size).
pub fn list(dir: &Path) -> Result<Vec<(String, u64)>> {
    Ok(models::list_models(dir)?)
}

/// Remove `model` and the blobs no other model uses: the bytes freed.
pub fn remove(dir: &Path, model: &ModelRef) -> Result<u64> {
    Ok(models::remove_model(dir, model)?)
}
