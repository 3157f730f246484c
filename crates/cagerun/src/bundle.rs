//! `cagerun bundle`: an image in the store + cagerun's hardened policy → a standard OCI
//! bundle (`config.json` whose root is the unpacked image), which any OCI runtime (runc, crun, youki) and both
//! of cagerun's engines run. The policy is cage-spec's, the same as `cagerun exec`'s; the
//! image config gives the process defaults (Entrypoint, Cmd, Env, WorkingDir, User).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cage_image::records;
use cage_spec::sandbox::DEFAULT_USER;
use cage_spec::{passwd, render_sandbox, HostIds, RootfsSource, SandboxRequest};
use clap::Args;

use crate::image::StoreArg;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct BundleArgs {
    /// An image in the store (`cagerun images`).
    #[arg(long)]
    image: String,
    /// Where the image's root filesystem is (ROOTFS_DIR/IMAGE).
    #[arg(long, value_name = "DIR", default_value = "rootfs")]
    rootfs_dir: PathBuf,
    /// The bundle directory (default: bundles/IMAGE).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// UID[:GID] or NAME[:GROUP] (default: the image's user, or 1000 if that is root).
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[command(flatten)]
    store: StoreArg,
    /// The command, instead of the image's Entrypoint and Cmd.
    #[arg(value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: BundleArgs) -> Result<()> {
    let store = args.store.open()?;
    let rec = records::load(&store, &args.image)?;
    let config_digest = cage_image::Digest::parse(&rec.config)?;
    let config =
        oci_spec::image::ImageConfiguration::from_reader(&store.read_verified(&config_digest)?[..])
            .with_context(|| format!("reading the config of {}", args.image))?;
    let rootfs = args.rootfs_dir.join(&args.image);
    let rootfs = std::fs::canonicalize(&rootfs).with_context(|| {
        format!(
            "{} is missing: pull or import the image first",
            rootfs.display()
        )
    })?;
    let defaults = config.config().clone().unwrap_or_default();

    let command = if args.command.is_empty() {
        let mut c = defaults.entrypoint().clone().unwrap_or_default();
        c.extend(defaults.cmd().clone().unwrap_or_default());
        c
    } else {
        args.command.clone()
    };
    if command.is_empty() {
        bail!(
            "image {} has no Entrypoint or Cmd: give the command after `--`",
            args.image
        );
    }
    let mut req = SandboxRequest::new(command, RootfsSource::Dir(rootfs.clone()));
    req.subordinate = crate::exec::mapped_ownership(&RootfsSource::Dir(rootfs.clone()));
    for kv in defaults.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            req.env.push((k.to_string(), v.to_string()));
        }
    }
    req.cwd = defaults.working_dir().clone().filter(|w| !w.is_empty());
    let pw = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let gr = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let user = args
        .user
        .clone()
        .or_else(|| defaults.user().clone())
        .filter(|u| !u.is_empty());
    req.user = match user {
        Some(u) => passwd::resolve_user(&u, &pw, &gr)?,
        None => DEFAULT_USER,
    };
    if req.user.uid == 0 && args.user.is_none() {
        // The image asks for root; a cage never runs it as root.
        req.user = DEFAULT_USER;
    }
    let host = HostIds {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let mut spec = render_sandbox(&req, host)?;
    if host.uid == 0 && req.user.uid != 0 {
        // runc and crun need the container's root mapped to something (they chown to it);
        // as root the bundle maps it to the host's nobody, which owns nothing that matters
        // and which nothing in the sandbox can become (no capabilities, no_new_privs).
        map_container_root_to_nobody(&mut spec)?;
    }

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bundles").join(&args.image));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // root.path is the rootfs's absolute, resolved path (no `rootfs` symlink in the bundle:
    // runc refuses a symlinked root), so the rootfs stays where the image was unpacked.
    let tmp = out.join(".config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&spec)?)?;
    std::fs::rename(&tmp, out.join("config.json"))?;
    println!("{}", out.display());
    Ok(())
}

fn map_container_root_to_nobody(spec: &mut oci_spec::runtime::Spec) -> Result<()> {
    use oci_spec::runtime::LinuxIdMappingBuilder;
    const NOBODY: u32 = 65534;
    let Some(linux) = spec.linux().clone() else {
        return Ok(());
    };
    let mut linux = linux;
    let add = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Result<Vec<oci_spec::runtime::LinuxIdMapping>> {
        let mut maps = maps.clone().unwrap_or_default();
        if !maps.iter().any(|m| m.container_id() == 0) && !maps.iter().any(|m| m.host_id() <= NOBODY && NOBODY < m.host_id() + m.size()) {
            maps.push(LinuxIdMappingBuilder::default().container_id(0u32).host_id(NOBODY).size(1u32).build()?);
        }
        Ok(maps)
    };
    let uids = add(linux.uid_mappings())?;
    let gids = add(linux.gid_mappings())?;
    linux.set_uid_mappings(Some(uids));
    linux.set_gid_mappings(Some(gids));
    spec.set_linux(Some(linux));
    Ok(())
}
