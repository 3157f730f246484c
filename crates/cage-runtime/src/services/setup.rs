//! What `up` does before the supervisor starts, each step skipped when already done:
//! images pulled, models pulled into their volume, `once` jobs run. And `cagerun run`: a
//! one-shot job (`once` or `on_demand`) through the sandbox engine.
//!
//! One-shot jobs run in the fast sandbox engine with the service's own hardened spec (the
//! same renderer as the services) and no network: a fresh netns with only loopback. They
//! are for setup (onboarding, adding a channel, doctor), which writes config and state.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cage_spec::cage::{Cage, Service, ServiceRoot};

use super::state::CagePaths;

fn step(message: &str) {
    eprintln!("cagerun: {message}");
}

/// The marker a finished `once` job leaves (removed by `down --volumes`).
pub fn once_marker(paths: &CagePaths, name: &str) -> PathBuf {
    paths.cage_dir.join(".cagerun/once").join(name)
}

/// Pull the image of every service in `services` whose rootfs is missing.
pub fn pull_images(
    paths: &CagePaths,
    services: &[&Service],
    store: &crate::image::StoreRoot,
) -> Result<()> {
    let mut opened = None;
    for s in services {
        let ServiceRoot::Image(reference) = &s.root else {
            continue;
        };
        let target = paths.rootfs().join(crate::image::default_name(reference));
        if target.exists() {
            continue;
        }
        if opened.is_none() {
            opened = Some(store.open()?);
        }
        step(&format!("pulling {reference} for {}", s.name));
        crate::image::pull_to(opened.as_ref().expect("opened"), reference, &target)
            .with_context(|| format!("service {}", s.name))?;
    }
    Ok(())
}

/// Build every sandbox image tree a service's `sandboxes` names that is missing, when the
/// cage's recipe (config/sandbox-image.toml) is the one that makes it (its tree is
/// rootfs/NAME); anything else missing is left for the broker's check to name.
pub fn build_sandbox_images(
    paths: &CagePaths,
    cage: &Cage,
    store: &crate::image::StoreRoot,
) -> Result<()> {
    let recipe = paths.config.with_file_name("sandbox-image.toml");
    let rootfs = paths.rootfs();
    for s in &cage.services {
        let Some(sb) = &s.sandboxes else { continue };
        for (image, tree) in &sb.images {
            let dir = paths.cage_dir.join(tree);
            if tree == "host" || dir.exists() || !recipe.exists() {
                continue;
            }
            if dir != rootfs.join(crate::build::recipe_name(&recipe)?) {
                continue;
            }
            step(&format!(
                "building the sandbox image {image} from {} (first run only)",
                recipe.display()
            ));
            let store = store.open()?;
            let built = crate::build::build(&recipe, &rootfs, &[], &store)
                .with_context(|| format!("service {}: sandbox image {image}", s.name))?;
            step(&built.to_string());
        }
    }
    Ok(())
}

/// Pull the cage's `models` into their volume (Ollama's layout), each unless present.
pub fn pull_models(paths: &CagePaths, cage: &Cage) -> Result<()> {
    let Some((volume, names)) = &cage.models else {
        return Ok(());
    };
    let dir = paths.volumes().join(volume);
    for name in names {
        let model =
            cage_image::models::ModelRef::parse(name, cage_image::models::DEFAULT_REGISTRY)?;
        if model.manifest_path(&dir).exists() {
            continue;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating volume {}", dir.display()))?;
        step(&format!("pulling model {model} into volume {volume}"));
        cage_image::models::pull_model(&dir, &model, None, crate::progress::bars()).with_context(
            || {
                format!(
                    "pulling model {model} (models.pull in {})",
                    paths.config.display()
                )
            },
        )?;
    }
    Ok(())
}

/// Run each `once` job that has not finished yet, in dependency order; a failure stops `up`.
pub fn run_once_jobs(
    paths: &CagePaths,
    cage: &Cage,
    store: &crate::image::StoreRoot,
) -> Result<()> {
    for s in cage.services.iter().filter(|s| s.once) {
        let marker = once_marker(paths, &s.name);
        if marker.exists() {
            continue;
        }
        step(&format!("running {} (once; first run only)", s.name));
        let code = run_job(paths, s, &[], store, false)?;
        if code != 0 {
            bail!(
                "{} (a once job) exited with {code}: see its output above; fix the cause and run `cagerun up` again",
                s.name
            );
        }
        let dir = marker.parent().expect("a marker has a parent");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&marker, b"done\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(())
}

/// Run one service's spec one-shot in the sandbox engine: `extra` is appended to its
/// `command` (or replaces the image's command when the service names none). Returns the
/// exit code.
pub fn run_job(
    paths: &CagePaths,
    service: &Service,
    extra: &[String],
    store: &crate::image::StoreRoot,
    attach: bool,
) -> Result<i32> {
    pull_images(paths, &[service], store)?;
    let store = match service.root {
        ServiceRoot::Image(_) => Some(store.open()?),
        _ => None,
    };
    let command = cage_spec::compose::job_command(service, extra);
    let mut spec = crate::bundle::render_service(
        &paths.config,
        &paths.rootfs(),
        store.as_ref(),
        service,
        &command,
        None,
    )
    .with_context(|| format!("service {}", service.name))?;
    warn_unwritable(&service.name, &spec);
    let tty = attach && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(tty));
    }
    match &service.network_of {
        Some(other) => {
            // The service's name files, copied where the job's user can read them (the
            // cage's runtime directory is its root's alone).
            let names = JobNames::copy_from(&paths.service_dir(other))?;
            cage_spec::service::share_network(&mut spec, &names.hosts(), names.resolv().as_deref())
                .with_context(|| format!("service {}", service.name))?;
            let network = super::enter::network_of(paths, other)?;
            super::enter::run_in_network(spec, network, attach)
        }
        None => crate::sandbox::run_spec(&spec, attach),
    }
}

/// Say which writable binds the job's user cannot write, with the fix, before the job fails
/// on them with its own words (OpenClaw says "openat2 beneath root: Permission denied").
/// Mode bits only (an ACL may still allow it): a warning, never an error.
fn warn_unwritable(job: &str, spec: &oci_spec::runtime::Spec) {
    use std::os::unix::fs::MetadataExt;
    let (Some((uid, gid)), sources) = cage_spec::compose::writable_binds(spec) else {
        return;
    };
    for src in sources {
        let Ok(m) = std::fs::metadata(&src) else {
            continue;
        };
        let mode = m.mode();
        let writable = (m.uid() == uid && mode & 0o200 != 0)
            || (m.gid() == gid && mode & 0o020 != 0)
            || mode & 0o002 != 0;
        if !writable {
            eprintln!(
                "cagerun: warning: {job} writes {} (owner {}:{}, mode {:o}), which its user (host {uid}:{gid}) cannot write: `chown -R {uid}:{gid} {}`",
                src.display(),
                m.uid(),
                m.gid(),
                mode & 0o7777,
                src.display()
            );
        }
    }
}

/// A private copy of a service's hosts file and resolv.conf for one job, removed on drop.
struct JobNames(PathBuf);

impl JobNames {
    fn copy_from(service_dir: &std::path::Path) -> Result<JobNames> {
        let names = JobNames(crate::tree::fresh_temp_dir("job")?);
        for file in ["hosts", "resolv.conf"] {
            let from = service_dir.join(file);
            if !from.exists() {
                continue;
            }
            // Written by the supervisor; bounded all the same.
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(std::fs::File::open(&from)?, 64 << 10),
                &mut text,
            )
            .with_context(|| format!("reading {}", from.display()))?;
            std::fs::write(names.0.join(file), text)
                .with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(names)
    }

    fn hosts(&self) -> PathBuf {
        self.0.join("hosts")
    }

    fn resolv(&self) -> Option<PathBuf> {
        Some(self.0.join("resolv.conf")).filter(|p| p.exists())
    }
}

impl Drop for JobNames {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
