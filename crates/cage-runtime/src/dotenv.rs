//! The cage's `.env`: values for `${NAME}` in cage.toml (ports, the model, the gateway
//! token), and the secrets `up` generates there on first run. Mode 0600: it holds a secret.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub fn path(cage_dir: &Path) -> PathBuf {
    cage_dir.join(".env")
}

/// The variables of the cage's `.env` (none when there is no file).
pub fn read(cage_dir: &Path) -> Result<BTreeMap<String, String>> {
    let file = path(cage_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    Ok(
        cage_spec::envfile::parse_env_file(&file.display().to_string(), &text, |_| None)?
            .into_iter()
            .collect(),
    )
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Adds each of `names` that `.env` (its variables: `vars`, updated here) or the
/// environment lacks as 32 random bytes in hex, and says so; creates `.env` 0600, and
/// narrows an existing one to 0600 when it gains a secret.
pub fn ensure_generated(
    cage_dir: &Path,
    names: &[String],
    vars: &mut BTreeMap<String, String>,
) -> Result<()> {
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !vars.contains_key(*n) && std::env::var_os(n).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let file = path(cage_dir);
    let mut lines = String::new();
    let old = std::fs::read(&file).unwrap_or_default();
    if !old.is_empty() && !old.ends_with(b"\n") {
        lines.push('\n');
    }
    let mut generated = Vec::new();
    for n in missing {
        let value = random_hex(32)?;
        lines.push_str(&format!("{n}={value}\n"));
        generated.push((n.clone(), value));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| {
            format!(
                "creating {} (is the cage directory writable?)",
                file.display()
            )
        })?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private (chmod 600)", file.display()))?;
        eprintln!(
            "cagerun: {} was readable by others ({:o}); it holds a secret now, so it is 0600",
            file.display(),
            mode & 0o777
        );
    }
    f.write_all(lines.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    for (name, value) in generated {
        eprintln!(
            "cagerun: generated {name} in {} (mode 0600)",
            file.display()
        );
        vars.insert(name, value);
    }
    Ok(())
}
