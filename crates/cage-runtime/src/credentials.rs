//! Registry credentials where users keep them: the files are found and read here (podman's
//! order), what they say is decided by [`cage_image::auth`], and `cagerun login`'s own file
//! is written here (atomically, mode 0600, other entries kept).
//!
//! Read in this order, the first file with an entry for the registry winning:
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`), `~/.docker/config.json`.
//! `cagerun login` writes `$REGISTRY_AUTH_FILE` when set (as podman does), else
//! `$XDG_RUNTIME_DIR/containers/auth.json`, else `~/.config/containers/auth.json`.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
pub use cage_image::auth::Credentials;
use cage_image::auth::{self, Found, MAX_AUTH_FILE};
use cage_image::registry::{FiledCredentials, PullOptions, DEFAULT_TIMEOUT, TIMEOUT_ENV};
use cage_image::ImageError;

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    env_path("HOME")
}

fn config_home() -> Option<PathBuf> {
    env_path("XDG_CONFIG_HOME").or_else(|| home().map(|h| h.join(".config")))
}

/// The files credentials are read from, in the order they are searched.
pub fn search_path() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files.extend(env_path("REGISTRY_AUTH_FILE"));
    files.extend(env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(config_home().map(|d| d.join("containers/auth.json")));
    files.extend(home().map(|h| h.join(".docker/config.json")));
    files
}

/// The file `cagerun login` and `logout` edit.
pub fn login_file() -> Result<PathBuf> {
    env_path("REGISTRY_AUTH_FILE")
        .or_else(|| env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .or_else(|| config_home().map(|d| d.join("containers/auth.json")))
        .context("no place for credentials: set XDG_RUNTIME_DIR, HOME or REGISTRY_AUTH_FILE")
}

/// A credentials file's bytes, at most [`MAX_AUTH_FILE`] of them; `None` when it does not
/// exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut content = Vec::new();
    file.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut content)
        .with_context(|| format!("reading {}", path.display()))?;
    if content.len() as u64 > MAX_AUTH_FILE {
        return Err(ImageError::AuthFile {
            path: path.to_path_buf(),
            why: format!(
                "larger than {MAX_AUTH_FILE} bytes, which no credentials file is; check what it holds"
            ),
        }
        .into());
    }
    Ok(Some(content))
}

fn bad_file(path: &Path) -> impl FnOnce(auth::AuthFileError) -> anyhow::Error + '_ {
    move |e| {
        ImageError::AuthFile {
            path: path.to_path_buf(),
            why: format!("{e}; fix or remove the file"),
        }
        .into()
    }
}

/// The credentials filed for `reference`'s registry, if any. A credential helper named for
/// it is an error: cagerun runs none, and pulling anonymously instead would fail later
/// with a less helpful message.
pub fn for_reference(reference: &str) -> Result<Option<FiledCredentials>> {
    let at = cage_image::registry::locate(reference)?;
    for path in search_path() {
        let content = match read_bounded(&path) {
            Ok(Some(content)) => content,
            Ok(None) => continue,
            // A HOME that is not the caller's (`sudo -u` keeps root's) holds no file of
            // theirs. (login and logout, which rewrite the file, do not skip it.)
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    io.kind() == std::io::ErrorKind::PermissionDenied
                        || io.raw_os_error() == Some(libc::ENOTDIR)
                }) =>
            {
                tracing::warn!(file = %path.display(), "skipping a credentials file: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        match auth::lookup(&content, &at.registry, &at.repository).map_err(bad_file(&path))? {
            Some(Found::Credentials(credentials)) => {
                tracing::info!(registry = at.registry, file = %path.display(), "credentials");
                return Ok(Some(FiledCredentials {
                    credentials,
                    from: path.display().to_string(),
                }));
            }
            Some(Found::Helper(helper)) => {
                return Err(ImageError::CredentialHelper {
                    path,
                    registry: at.registry,
                    helper,
                }
                .into())
            }
            None => {}
        }
    }
    Ok(None)
}

/// The registry timeout: `$CAGERUN_REGISTRY_TIMEOUT` seconds, else 30.
pub fn timeout() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 86400.0 => Ok(Duration::from_secs_f64(s)),
            _ => bail!("{TIMEOUT_ENV}={v:?}: expected a number of seconds above 0 (e.g. 30)"),
        },
    }
}

/// How to pull `reference`: its filed credentials, the timeout, the insecure registries.
pub fn pull_options(reference: &str, insecure: &[String]) -> Result<PullOptions> {
    Ok(PullOptions {
        insecure_registries: insecure.to_vec(),
        credentials: for_reference(reference)?,
        timeout: timeout()?,
        ..Default::default()
    })
}

/// A registry as `login` takes it: host[:port], a URL's scheme and trailing `/` dropped.
pub fn registry_name(given: &str) -> Result<String> {
    let r = given
        .strip_prefix("https://")
        .or_else(|| given.strip_prefix("http://"))
        .unwrap_or(given)
        .trim_end_matches('/');
    if r.is_empty()
        || r.contains('/')
        || !r
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    {
        bail!("{given:?} is not a registry: name one as HOST[:PORT] (e.g. ghcr.io, docker.io, localhost:5000)");
    }
    Ok(auth::canonical_registry(r).to_string())
}

/// `cagerun login`: check `credentials` against `registry`, then file them; returns the file.
pub fn login(
    registry: &str,
    credentials: Credentials,
    from: &str,
    insecure: &[String],
) -> Result<PathBuf> {
    let registry = registry_name(registry)?;
    let filed = FiledCredentials {
        credentials,
        from: from.to_string(),
    };
    cage_image::registry::verify_login(&registry, &filed, insecure, timeout()?)?;
    let path = login_file()?;
    let old = read_bounded(&path)?;
    let new =
        auth::with_entry(old.as_deref(), &registry, &filed.credentials).map_err(bad_file(&path))?;
    write_atomically(&path, &new)?;
    Ok(path)
}

/// `cagerun logout`: remove `registry`'s entry from the login file; returns the file.
pub fn logout(registry: &str) -> Result<PathBuf> {
    let registry = registry_name(registry)?;
    let path = login_file()?;
    let Some(old) = read_bounded(&path)? else {
        bail!(
            "not logged in to {registry}: {} does not exist",
            path.display()
        );
    };
    let Some(new) = auth::without_entry(&old, &registry).map_err(bad_file(&path))? else {
        bail!(
            "not logged in to {registry}: {} has no entry for it",
            path.display()
        );
    };
    write_atomically(&path, &new)?;
    Ok(path)
}

/// Replace `path` with `content`: written to a 0600 file beside it, synced, renamed over
/// it, so a reader sees the old file or the new one, and never a password in a file others
/// can read.
fn write_atomically(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_hosts() {
        assert_eq!(registry_name("ghcr.io").unwrap(), "ghcr.io");
        assert_eq!(
            registry_name("https://index.docker.io/").unwrap(),
            "docker.io"
        );
        assert_eq!(registry_name("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert!(registry_name("ghcr.io/org").is_err());
        assert!(registry_name("").is_err());
        assert!(registry_name("a b").is_err());
    }

    #[test]
    fn the_written_file_is_private_and_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containers/auth.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }
}
