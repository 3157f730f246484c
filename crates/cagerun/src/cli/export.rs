//! `cagerun export kube`: the cage as Kubernetes manifests (cage-spec's `kube` decides every
//! field; this reads the files it is made from and writes the YAML).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cage_spec::kube::{self, ConfigDir, KubeRequest};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Kubernetes manifests for the cage: Deployments (a StatefulSet for the model store), a
    /// Job per once job, Services, PVCs, a ConfigMap of config/, a Secret for the generated
    /// token, NetworkPolicies, hardened securityContexts and the sandbox broker sidecar.
    Kube(KubeArgs),
}

#[derive(Args, Debug)]
pub struct KubeArgs {
    /// The cage's config; the cage is the directory holding config/.
    #[arg(long, value_name = "FILE", default_value = "config/cage.toml")]
    config: PathBuf,
    /// The namespace of every object (default: the cage's name).
    #[arg(long, value_name = "N")]
    namespace: Option<String>,
    /// Run every pod with this RuntimeClass (e.g. `cagerun`). The broker sidecar stays
    /// seccomp Unconfined: RuntimeDefault is the container runtime's profile, not the class's.
    #[arg(long, value_name = "NAME")]
    runtime_class: Option<String>,
    /// The broker sidecar's image: the static cagerun binary and the sandbox image trees.
    #[arg(long, value_name = "REF", default_value = concat!("localhost/cagerun-broker:", env!("CARGO_PKG_VERSION")))]
    broker_image: String,
    /// Write the manifests to FILE (mode 0600: they hold the cage's secret) instead of
    /// printing them.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The regular files of a config directory, by name; subdirectories are skipped (said).
fn read_config_dir(cage_dir: &Path, src: &str) -> Result<ConfigDir> {
    let dir = cage_dir.join(src);
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "reading {} (a config directory a service mounts; `cagerun up` creates it)",
            dir.display()
        )
    })?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if !kind.is_file() {
            eprintln!("cagerun: {src}/{name} is not a regular file: not in the ConfigMap");
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        files.push((name, bytes));
    }
    files.sort();
    Ok(ConfigDir {
        src: src.to_string(),
        files,
    })
}

pub fn run(cmd: ExportCommand) -> Result<i32> {
    let ExportCommand::Kube(args) = cmd;
    // As `up`: a generated secret `.env` lacks is made there, so the cluster and the host
    // cage share it.
    let cage = cage_runtime::config::load_cage_generating(&args.config)?;
    let cage_dir = cage_runtime::config::cage_dir(&args.config);
    let secrets = cage_runtime::config::generated_values(&args.config, &cage)?;
    let broker_cage_toml = cage_runtime::config::text_without_secrets(&args.config)?;
    let mut env_files = BTreeMap::new();
    for s in &cage.services {
        if let Some(f) = &s.env_file {
            env_files.insert(
                s.name.clone(),
                cage_runtime::host::read_env_file(&cage_dir.join(f), "env_file")?,
            );
        }
    }
    let config_dirs = kube::config_sources(&cage)
        .iter()
        .map(|src| read_config_dir(&cage_dir, src))
        .collect::<Result<Vec<_>>>()?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| kube::default_namespace(&cage));
    let export = kube::render(&KubeRequest {
        cage: &cage,
        namespace: &namespace,
        secrets: &secrets,
        env_files: &env_files,
        config_dirs: &config_dirs,
        broker_cage_toml: &broker_cage_toml,
        broker_image: &args.broker_image,
        runtime_class: args.runtime_class.as_deref(),
    })?;
    let mut header = format!(
        "The cage {:?} ({}) as Kubernetes manifests, written by `cagerun export kube` {}.\nApply: kubectl apply -f FILE   (docs/kube.md says what maps to what)",
        cage.name.as_deref().unwrap_or("cagerun"),
        args.config.display(),
        env!("CARGO_PKG_VERSION"),
    );
    for note in &export.notes {
        header.push_str(&format!("\nNote: {note}"));
    }
    let yaml = kube::to_yaml(&header, &export.manifests)?;
    for note in &export.notes {
        eprintln!("cagerun: {note}");
    }
    let secret_names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    match &args.output {
        None => print!("{yaml}"),
        Some(file) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(file)
                .with_context(|| format!("writing {}", file.display()))?;
            f.write_all(yaml.as_bytes())
                .with_context(|| format!("writing {}", file.display()))?;
            eprintln!("cagerun: wrote {}", file.display());
        }
    }
    if !secret_names.is_empty() {
        eprintln!(
            "cagerun: the output holds the cage's secret {} (Secret {}): keep it out of version control",
            secret_names.join(", "),
            kube::SECRET_NAME
        );
    }
    Ok(0)
}
