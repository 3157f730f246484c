//! `cagerun build RECIPE`: an image tree from a base image and RUN steps (cage-spec's
//! `build` module has the recipe format and the policy a step runs under).
//!
//! The tree is built beside its final place and renamed into it only when every step
//! succeeded: a failed or interrupted build leaves the previous tree (if any) as it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cage_spec::build::{build_step_request, parse_recipe, render_build_step};
use cage_spec::RootfsSource;

/// What a build made.
#[derive(Debug)]
pub struct Built {
    pub name: String,
    /// The base image's canonical reference.
    pub base: String,
    pub steps: usize,
    pub seconds: f64,
    pub target: PathBuf,
}

impl std::fmt::Display for Built {
    /// `NAME: built from BASE in S s (N steps) → TARGET`, as `build` and `up` report it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: built from {} in {:.1} s ({} steps) → {}",
            self.name,
            self.base,
            self.seconds,
            self.steps,
            self.target.display()
        )
    }
}

/// The name a recipe builds (its tree is ROOTFS_DIR/NAME).
pub fn recipe_name(recipe: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(recipe).with_context(|| format!("reading {}", recipe.display()))?;
    Ok(parse_recipe(&recipe.display().to_string(), &text)?.name)
}

/// Build `recipe` into `rootfs_dir`/NAME (swapped in only when every step succeeded).
pub fn build(
    recipe_path: &Path,
    rootfs_dir: &Path,
    insecure: &[String],
    store: &cage_image::store::Store,
) -> Result<Built> {
    let started = Instant::now();
    let text = std::fs::read_to_string(recipe_path)
        .with_context(|| format!("reading {}", recipe_path.display()))?;
    let recipe = parse_recipe(&recipe_path.display().to_string(), &text)?;
    let target = rootfs_dir.join(&recipe.name);
    let work = crate::image::beside(&target, "build");
    eprintln!("cagerun: base {}", recipe.from);
    let opts = crate::credentials::pull_options(&recipe.from, insecure)?;
    let (canonical, image) =
        cage_image::registry::pull(store, &recipe.from, &opts, crate::progress::bars())
            .with_context(|| format!("pulling the base image {}", recipe.from))?;
    let built = crate::image::unpack(store, &image, &work)
        .with_context(|| format!("unpacking {canonical}"))
        .and_then(|()| run_steps(&recipe.run, &work));
    let built = built.and_then(|()| {
        // Swap in the new tree; the old one goes only after the new one is in place.
        let old = crate::image::beside(&target, "old");
        let had_old = target.exists();
        if had_old {
            std::fs::rename(&target, &old)
                .with_context(|| format!("moving the old {} aside", target.display()))?;
        }
        std::fs::rename(&work, &target)
            .with_context(|| format!("moving the new tree to {}", target.display()))?;
        if had_old {
            crate::tree::remove(&old);
        }
        Ok(())
    });
    if let Err(e) = built {
        if work.exists() {
            crate::tree::remove(&work);
        }
        return Err(e);
    }
    Ok(Built {
        name: recipe.name,
        base: canonical,
        steps: recipe.run.len(),
        seconds: started.elapsed().as_secs_f64(),
        target,
    })
}

fn run_steps(steps: &[String], tree: &Path) -> Result<()> {
    let tree = std::fs::canonicalize(tree)?;
    let rootfs = RootfsSource::Dir(tree.clone());
    let host = crate::host::host_ids();
    // The host's resolver, so package managers find their mirrors (the host network is
    // shared). Resolved: it is often a link into /run.
    let resolv = std::fs::canonicalize("/etc/resolv.conf").ok();
    for (i, step) in steps.iter().enumerate() {
        eprintln!("cagerun: step {}/{}: {step}", i + 1, steps.len());
        let req = build_step_request(
            step,
            rootfs.clone(),
            crate::host::mapped_ownership(&rootfs),
            resolv.clone(),
        );
        let spec = render_build_step(&req, host)?;
        let code = crate::sandbox::run_spec(&spec, false)?;
        if code != 0 {
            bail!(
                "step {} ({step}) exited with {code}: nothing was kept; fix the recipe and build again",
                i + 1
            );
        }
    }
    Ok(())
}
