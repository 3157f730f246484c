//! The cage's config: config/cage.toml read with `${NAME}` resolved from the environment
//! and the cage's `.env` (secrets it lists under `generate` made on first use), parsed and
//! validated by cage-spec.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cage_spec::cage::{Cage, Service};

/// Reads config/cage.toml with `${NAME}` resolved from the environment and the cage's
/// `.env`; a secret listed in `generate` that is not there yet reads as empty (only `up`
/// and `run` create it: see [`load_cage_generating`]).
pub fn load_cage(config: &Path) -> Result<Cage> {
    load(config, false)
}

/// As [`load_cage`], first creating (and announcing) the `generate`d secrets `.env` lacks.
pub fn load_cage_generating(config: &Path) -> Result<Cage> {
    load(config, true)
}

fn load(config: &Path, generate: bool) -> Result<Cage> {
    use crate::dotenv;
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let file = config.display().to_string();
    let secrets = cage_spec::interpolate::generated_names(&file, &text)?;
    let cage = cage_dir(config);
    let mut vars = dotenv::read(&cage)?;
    if generate {
        dotenv::ensure_generated(&cage, &secrets, &mut vars)?;
    }
    let lookup = |name: &str| {
        std::env::var(name)
            .ok()
            .or_else(|| vars.get(name).cloned())
            .or_else(|| secrets.iter().any(|s| s == name).then(String::new))
    };
    let text = cage_spec::interpolate::interpolate(&file, &text, &lookup)?;
    Ok(cage_spec::cage::parse_cage(&file, &text)?)
}

/// The values of the cage's `generate`d secrets as `up` uses them (the environment wins
/// over `.env`; one not made yet is empty): for `export kube`'s Secret.
pub fn generated_values(config: &Path, cage: &Cage) -> Result<Vec<(String, String)>> {
    let vars = crate::dotenv::read(&cage_dir(config))?;
    Ok(cage
        .generate
        .iter()
        .map(|name| {
            let value = std::env::var(name)
                .ok()
                .or_else(|| vars.get(name).cloned())
                .unwrap_or_default();
            (name.clone(), value)
        })
        .collect())
}

/// config/cage.toml with `${NAME}` resolved as [`load_cage`] does, except the `generate`d
/// secrets, which stay `${NAME}`: the file for a reader that must not hold them (the broker
/// sidecar of `export kube`, which reads them as empty). A resolved `$` is written `$$`, so
/// reading the text again gives the same values.
pub fn text_without_secrets(config: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let file = config.display().to_string();
    let secrets = cage_spec::interpolate::generated_names(&file, &text)?;
    let vars = crate::dotenv::read(&cage_dir(config))?;
    // A literal `$$` must still be one after this pass.
    let text = text.replace("$$", "$$$$");
    let lookup = |name: &str| {
        if secrets.iter().any(|s| s == name) {
            return Some(format!("${{{name}}}"));
        }
        std::env::var(name)
            .ok()
            .or_else(|| vars.get(name).cloned())
            .map(|v| v.replace('$', "$$"))
    };
    Ok(cage_spec::interpolate::interpolate(&file, &text, &lookup)?)
}

pub fn find_service<'a>(cage: &'a Cage, name: &str, config: &Path) -> Result<&'a Service> {
    cage.services
        .iter()
        .find(|s| s.name == name)
        .with_context(|| {
            let names: Vec<&str> = cage.services.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no service {name:?} in {} (services: {})",
                config.display(),
                names.join(", ")
            )
        })
}

/// The cage: the directory that holds config/ (paths in cage.toml are relative to it).
pub fn cage_dir(config: &Path) -> PathBuf {
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    config
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
