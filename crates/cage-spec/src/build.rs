//! `cagerun build`: a recipe (a base image, then RUN steps) and the policy one RUN step
//! runs under — the only place a cage gives its process root, capabilities, a writable root
//! and the host's network (a build fetches packages).
//!
//! Still contained: a user namespace (rootless, the step's root is a subordinate id; as root
//! the image's own ids, as a rootful `docker build` has), a mount namespace with only the
//! tree being built, pid/ipc/uts namespaces, the seccomp profile and no_new_privs. The
//! capabilities are Docker's default set minus MKNOD and NET_RAW; they act only inside the
//! build's user namespace.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespaceType, Spec,
    UserBuilder,
};
use serde::Deserialize;

use crate::cage::CageError;
use crate::sandbox::{
    render_sandbox, ExtraMount, HostIds, IdPair, RootfsSource, SandboxRequest, SubordinateIds,
};
use crate::SpecError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The image's name: the tree lands in ROOTFS_DIR/NAME.
    pub name: String,
    /// The base image reference.
    pub from: String,
    /// Shell commands (`/bin/sh -c`), run in order as root.
    pub run: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    name: toml::Spanned<String>,
    from: String,
    #[serde(default)]
    run: Vec<String>,
}

pub fn parse_recipe(file: &str, text: &str) -> Result<Recipe, CageError> {
    let err = |span: Option<Range<usize>>, key: &str, message: String| CageError {
        file: file.to_string(),
        line: span
            .map(|s| crate::cage::line_of(text, s.start))
            .unwrap_or(1),
        key: key.to_string(),
        message,
    };
    let r: RecipeFile =
        toml::from_str(text).map_err(|e| err(e.span(), "", e.message().to_string()))?;
    let name = r.name.get_ref();
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !ok {
        return Err(err(
            Some(r.name.span()),
            "name",
            format!("{name:?}: lowercase letters, digits, '-', '_', '.'"),
        ));
    }
    if r.run.iter().any(|s| s.trim().is_empty()) {
        return Err(err(None, "run", "an empty step".into()));
    }
    Ok(Recipe {
        name: name.clone(),
        from: r.from,
        run: r.run,
    })
}

const BUILD_CAPABILITIES: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Setfcap,
];

/// The request one RUN step of a recipe runs as: `/bin/sh -c STEP` in the tree being built,
/// with a package manager's environment, room for one (1024 processes, 2 GiB), and the
/// host's resolver file (`resolv`, resolved by the caller) read-only, since a build shares
/// the host's network to reach its mirrors.
pub fn build_step_request(
    step: &str,
    tree: RootfsSource,
    subordinate: Option<SubordinateIds>,
    resolv: Option<PathBuf>,
) -> SandboxRequest {
    let mut req = SandboxRequest::new(vec!["/bin/sh".into(), "-c".into(), step.into()], tree);
    req.subordinate = subordinate;
    req.env = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
    ];
    req.pids = Some(BUILD_PIDS);
    req.memory = Some(BUILD_MEMORY);
    if let Some(r) = resolv {
        req.extra_mounts.push(ExtraMount::Bind {
            src: r,
            dst: "/etc/resolv.conf".into(),
            ro: true,
        });
    }
    req
}

/// Processes a build step may have.
pub const BUILD_PIDS: i64 = 1024;
/// Memory a build step may use.
pub const BUILD_MEMORY: u64 = 2 << 30;

/// The spec of one RUN step. `req.rootfs` is the tree being built; its id mapping is the one
/// the tree was unpacked with (rootless: keep-id over the subordinate range).
pub fn render_build_step(req: &SandboxRequest, host: HostIds) -> Result<Spec, SpecError> {
    // Rendered for the image user 1000, whose map is the unpack's; the step then runs as root.
    let mut as_user = req.clone();
    as_user.user = IdPair {
        uid: 1000,
        gid: 1000,
    };
    let mut spec = render_sandbox(&as_user, host)?;
    let caps: HashSet<Capability> = BUILD_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    if let Some(p) = spec.process_mut() {
        p.set_user(UserBuilder::default().uid(0u32).gid(0u32).build()?);
        p.set_capabilities(Some(capabilities));
    }
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(false));
    }
    spec.set_hostname(Some("build".into()));
    let map = |inside: u32, outside: u32, size: u32| {
        LinuxIdMappingBuilder::default()
            .container_id(inside)
            .host_id(outside)
            .size(size)
            .build()
    };
    // As root the tree's ids are root's subordinate ids (image id N is base+N) and the
    // rendered map already says so, straight.
    let own_ids = if host.uid != 0 && req.subordinate.is_none() {
        // Without subordinate ids every file is the caller's: the step's root is the caller.
        Some((map(0, host.uid, 1)?, map(0, host.gid, 1)?))
    } else {
        None
    };
    // sysfs can only be mounted by the owner of the network namespace, and a build shares
    // the host's: it gets no /sys (package managers do not need it).
    if let Some(mounts) = spec.mounts_mut() {
        mounts.retain(|m| m.destination() != std::path::Path::new("/sys"));
    }
    if let Some(linux) = spec.linux_mut() {
        let outside_sys = |paths: &mut Option<Vec<String>>| {
            if let Some(p) = paths {
                p.retain(|x| !x.starts_with("/sys"));
            }
        };
        let mut masked = linux.masked_paths().clone();
        outside_sys(&mut masked);
        linux.set_masked_paths(masked);
        let mut readonly = linux.readonly_paths().clone();
        outside_sys(&mut readonly);
        linux.set_readonly_paths(readonly);
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Network);
        }
        if let Some((u, g)) = own_ids {
            linux.set_uid_mappings(Some(vec![u]));
            linux.set_gid_mappings(Some(vec![g]));
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::RootfsSource;

    #[test]
    fn a_recipe_names_its_place_when_wrong() {
        let r = parse_recipe(
            "r.toml",
            "name = \"sbx\"\nfrom = \"debian:bookworm-slim\"\nrun = [\"apt-get update\"]\n",
        )
        .unwrap();
        assert_eq!(r.run, ["apt-get update"]);
        let e = parse_recipe("r.toml", "name = \"Bad/Name\"\nfrom = \"x\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (1, "name"));
        let e = parse_recipe("r.toml", "name = \"a\"\nfrom = \"x\"\nrunn = []\n").unwrap_err();
        assert!(e.message.contains("runn"), "{e}");
    }

    #[test]
    fn a_step_is_root_with_the_build_capabilities_the_host_network_and_a_writable_root() {
        let req = SandboxRequest::new(
            vec!["/bin/sh".into(), "-c".into(), "true".into()],
            RootfsSource::Dir("/tmp/tree".into()),
        );
        let spec = render_build_step(
            &req,
            HostIds {
                uid: 1001,
                gid: 1001,
            },
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap();
        assert!(caps.contains(&Capability::Chown) && !caps.contains(&Capability::SysAdmin));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            ns.contains(&LinuxNamespaceType::User) && !ns.contains(&LinuxNamespaceType::Network)
        );
        assert!(linux.seccomp().is_some());
        let m = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!((m.container_id(), m.host_id(), m.size()), (0, 1001, 1));
    }

    #[test]
    fn a_build_step_runs_the_line_with_sh_a_package_manager_env_and_the_host_resolver() {
        let req = build_step_request(
            "apt-get update",
            RootfsSource::Dir("/tree".into()),
            None,
            Some("/run/systemd/resolve/stub-resolv.conf".into()),
        );
        assert_eq!(req.args, ["/bin/sh", "-c", "apt-get update"]);
        assert!(req
            .env
            .contains(&("DEBIAN_FRONTEND".into(), "noninteractive".into())));
        assert_eq!((req.pids, req.memory), (Some(1024), Some(2 << 30)));
        assert_eq!(
            req.extra_mounts,
            [ExtraMount::Bind {
                src: "/run/systemd/resolve/stub-resolv.conf".into(),
                dst: "/etc/resolv.conf".into(),
                ro: true
            }]
        );
    }

    #[test]
    fn a_build_step_without_a_host_resolver_binds_none() {
        let req = build_step_request("true", RootfsSource::Dir("/tree".into()), None, None);
        assert!(req.extra_mounts.is_empty());
    }
}
