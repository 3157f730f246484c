//! A service of the cage (or an image with no service around it) → the [`SandboxRequest`]
//! that [`crate::render_sandbox`] renders: which command, user, environment, binds, volumes,
//! devices (GPU nodes and driver libraries), tmpfs and resources. The engine looks at the
//! host (what exists, what a path resolves to, what the image's config says) and passes
//! what it found in [`ServiceFacts`]; every choice is made here.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Spec};

use crate::cage::Service;
use crate::passwd::{resolve_user, IdPair};
use crate::sandbox::DEFAULT_USER;
use crate::{ExtraMount, RootfsSource, SandboxRequest, SpecError, SubordinateIds};

/// Where a GPU service finds the host's driver libraries: NVIDIA's images look here.
pub const NVIDIA_LIB_DIR: &str = "/usr/local/nvidia/lib64";

/// The host's nobody: a bundle written as root maps the container's root to it.
pub const NOBODY: u32 = 65534;

/// What an image's config says about its process (Entrypoint + Cmd, Env, WorkingDir, User).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<String>,
}

/// What the engine found on the host for one service, each list in the order of the
/// service's own (`mounts`, `volumes`).
#[derive(Debug, Clone)]
pub struct ServiceFacts {
    pub rootfs: RootfsSource,
    pub image: ImageDefaults,
    /// The rootfs's /etc/passwd and /etc/group (or those a host-binds root is given).
    pub passwd: String,
    pub group: String,
    /// The service's `env_file`, read.
    pub env_file: Vec<(String, String)>,
    /// The resolved source of each of the service's `mounts`.
    pub mount_sources: Vec<PathBuf>,
    /// The resolved directory of each of the service's `volumes`.
    pub volume_dirs: Vec<PathBuf>,
    /// With `gpu`: the host's GPU device nodes ([`is_gpu_node`]) and driver libraries
    /// ([`is_gpu_driver_library`], resolved), each sorted.
    pub gpu_nodes: Vec<String>,
    pub gpu_libraries: Vec<PathBuf>,
    /// The image's ownership kept through these subordinate ids (see `SandboxRequest`).
    pub subordinate: Option<SubordinateIds>,
}

/// The command: the one given (after `--`), else the service's, else the image's.
pub fn command(
    name: &str,
    given: &[String],
    service: Option<&Service>,
    image: &ImageDefaults,
) -> Result<Vec<String>, SpecError> {
    let command = if !given.is_empty() {
        given.to_vec()
    } else if let Some(c) = service.and_then(|s| s.command.clone()) {
        c
    } else {
        image.command.clone()
    };
    if command.is_empty() {
        return Err(SpecError::NoCommand(name.to_string()));
    }
    Ok(command)
}

/// A one-shot job's command: the service's with `extra` appended (the image's command is
/// replaced by `extra` when the service names none).
pub fn job_command(service: &Service, extra: &[String]) -> Vec<String> {
    match &service.command {
        Some(c) => c.iter().chain(extra).cloned().collect(),
        None => extra.to_vec(),
    }
}

/// The user: the one given, else the service's, else the image's, else 1000. An image that
/// asks for root runs as 1000: a cage never runs it as root (only an explicit `given` may
/// name root, for `cagerun bundle`, and the renderer refuses it for sandboxes).
pub fn user(
    given: Option<&str>,
    service: Option<&Service>,
    image: &ImageDefaults,
    passwd: &str,
    group: &str,
) -> Result<IdPair, SpecError> {
    let chosen = given
        .map(str::to_string)
        .or_else(|| service.and_then(|s| s.user.clone()))
        .or(image.user.clone());
    let user = match chosen {
        Some(u) => resolve_user(&u, passwd, group)?,
        None => DEFAULT_USER,
    };
    Ok(if user.uid == 0 && given.is_none() {
        DEFAULT_USER
    } else {
        user
    })
}

/// Who owns a volume directory made for a service as root: the service user's id in root's
/// subordinate range (inside it is the service user; on the host no real id).
pub fn volume_owner(user: IdPair, root_range: &SubordinateIds) -> (u32, u32) {
    (
        root_range.uid_base + user.uid,
        root_range.gid_base + user.gid,
    )
}

/// Is this name in /dev (or /dev/nvidia-caps, /dev/dri) a GPU node a `gpu` service gets?
/// `dir` is the directory it is in.
pub fn is_gpu_node(dir: &str, name: &str) -> bool {
    match dir {
        "/dev" => name.starts_with("nvidia"),
        "/dev/nvidia-caps" | "/dev/dri" => true,
        _ => false,
    }
}

/// The directories looked in for GPU nodes, in order.
pub const GPU_NODE_DIRS: [&str; 3] = ["/dev", "/dev/nvidia-caps", "/dev/dri"];

/// The library directories looked in for the driver's libraries; the first that has any wins.
pub const GPU_LIBRARY_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

/// Is this a library of NVIDIA's driver (libcuda, libnvidia-*), by a name programs load?
pub fn is_gpu_driver_library(name: &str) -> bool {
    let driver = name.starts_with("libcuda.so")
        || name.starts_with("libnvidia-")
        || name.starts_with("libcudadebugger.so");
    driver && name.contains(".so")
}

/// The device nodes a service gets: its `devices`, and with `gpu` the host's GPU nodes (an
/// error when it has none).
pub fn devices(service: &Service, gpu_nodes: &[String]) -> Result<Vec<String>, SpecError> {
    let mut devices = service.devices.clone();
    if service.gpu {
        if gpu_nodes.is_empty() {
            return Err(SpecError::NoGpu(service.name.clone()));
        }
        devices.extend(gpu_nodes.iter().cloned());
    }
    Ok(devices)
}

/// The request for `name`: `given` command and user override the service's and image's.
pub fn service_request(
    name: &str,
    service: Option<&Service>,
    given_command: &[String],
    given_user: Option<&str>,
    facts: &ServiceFacts,
) -> Result<SandboxRequest, SpecError> {
    let command = command(name, given_command, service, &facts.image)?;
    let mut req = SandboxRequest::new(command, facts.rootfs.clone());
    req.env = facts.image.env.clone();
    req.cwd = facts.image.cwd.clone();
    req.user = user(
        given_user,
        service,
        &facts.image,
        &facts.passwd,
        &facts.group,
    )?;
    if let Some(s) = service {
        apply_service(&mut req, s, facts)?;
    }
    req.subordinate = facts.subordinate;
    Ok(req)
}

/// The service's own settings on top of the image's.
fn apply_service(
    req: &mut SandboxRequest,
    s: &Service,
    facts: &ServiceFacts,
) -> Result<(), SpecError> {
    req.hostname = Some(s.name.clone());
    if let Some(w) = &s.workdir {
        req.cwd = Some(w.clone());
    }
    req.env.extend(facts.env_file.iter().cloned());
    req.env
        .extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for ((_, dst, ro), src) in s.mounts.iter().zip(&facts.mount_sources) {
        req.extra_mounts.push(ExtraMount::Bind {
            src: src.clone(),
            dst: dst.clone(),
            ro: *ro,
        });
    }
    for ((_, dst), dir) in s.volumes.iter().zip(&facts.volume_dirs) {
        req.extra_mounts.push(ExtraMount::Bind {
            src: dir.clone(),
            dst: dst.clone(),
            ro: false,
        });
    }
    if s.gpu && !facts.gpu_libraries.is_empty() {
        // The driver's user-space half must match the host's kernel module: the host's
        // libraries, read-only, where NVIDIA's images look.
        for lib in &facts.gpu_libraries {
            let name = lib.file_name().unwrap_or_default().to_string_lossy();
            req.extra_mounts.push(ExtraMount::Bind {
                src: lib.clone(),
                dst: format!("{NVIDIA_LIB_DIR}/{name}"),
                ro: true,
            });
        }
        match req.env.iter_mut().find(|(k, _)| k == "LD_LIBRARY_PATH") {
            Some((_, v)) if v.split(':').any(|d| d == NVIDIA_LIB_DIR) => {}
            Some((_, v)) => *v = format!("{NVIDIA_LIB_DIR}:{v}"),
            None => req
                .env
                .push(("LD_LIBRARY_PATH".into(), NVIDIA_LIB_DIR.into())),
        }
    }
    for path in devices(s, &facts.gpu_nodes)? {
        req.extra_mounts.push(ExtraMount::Device { path });
    }
    for (dst, size) in &s.tmpfs {
        req.extra_mounts.push(ExtraMount::Tmpfs {
            dst: dst.clone(),
            size: *size,
        });
    }
    req.memory = s.memory.or(req.memory);
    req.pids = s.pids.or(req.pids);
    req.cpus = s.cpus;
    Ok(())
}

/// What a rendered spec's process writes on the host: the host uid and gid it runs as
/// (through the spec's id maps; None without a user namespace or an unmapped user) and the
/// sources of its writable binds. `up` warns before a job runs when one of them is not
/// writable for that user (as root, a cage's writable directories belong to root's
/// subordinate id base+1000, not to host root).
pub fn writable_binds(spec: &Spec) -> (Option<(u32, u32)>, Vec<PathBuf>) {
    let outside = |maps: Option<&Vec<LinuxIdMapping>>, id: u32| {
        maps.into_iter().flatten().find_map(|m| {
            (id >= m.container_id() && id - m.container_id() < m.size())
                .then(|| m.host_id() + (id - m.container_id()))
        })
    };
    let linux = spec.linux().as_ref();
    let ids = spec.process().as_ref().and_then(|p| {
        let uid = outside(
            linux.and_then(|l| l.uid_mappings().as_ref()),
            p.user().uid(),
        )?;
        let gid = outside(
            linux.and_then(|l| l.gid_mappings().as_ref()),
            p.user().gid(),
        )?;
        Some((uid, gid))
    });
    let sources = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("bind"))
        .filter(|m| !m.options().iter().flatten().any(|o| o == "ro"))
        .filter_map(|m| m.source().clone())
        .collect();
    (ids, sources)
}

/// A bundle written as root for another runtime (runc, crun chown to the container's root):
/// map the container's root to the host's nobody, which owns nothing that matters and which
/// nothing in the sandbox can become (no capabilities, no_new_privs). Unchanged when the
/// process is root or root is already mapped, or when nobody is already in a map.
pub fn map_container_root_to_nobody(spec: &mut Spec) -> Result<(), SpecError> {
    if spec.process().as_ref().is_some_and(|p| p.user().uid() == 0) {
        return Ok(());
    }
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(());
    };
    let add = |maps: &Option<Vec<LinuxIdMapping>>| -> Result<Vec<LinuxIdMapping>, SpecError> {
        let mut maps = maps.clone().unwrap_or_default();
        let root_mapped = maps.iter().any(|m| m.container_id() == 0);
        let nobody_mapped = maps
            .iter()
            .any(|m| m.host_id() <= NOBODY && NOBODY < m.host_id() + m.size());
        if !root_mapped && !nobody_mapped {
            maps.push(
                LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(NOBODY)
                    .size(1u32)
                    .build()?,
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cage::parse_cage;
    use crate::passwd::IdPair;

    fn service(body: &str) -> Service {
        let text = format!("[services.app]\n{body}\n");
        parse_cage("cage.toml", &text)
            .unwrap()
            .services
            .into_iter()
            .find(|s| s.name == "app")
            .unwrap()
    }

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnode:x:1000:\nwww:x:33:\n";

    fn facts(image: ImageDefaults) -> ServiceFacts {
        ServiceFacts {
            rootfs: RootfsSource::Dir("/rootfs/app".into()),
            image,
            passwd: PASSWD.into(),
            group: GROUP.into(),
            env_file: Vec::new(),
            mount_sources: Vec::new(),
            volume_dirs: Vec::new(),
            gpu_nodes: Vec::new(),
            gpu_libraries: Vec::new(),
            subordinate: None,
        }
    }

    fn image_with(command: &[&str], user: Option<&str>) -> ImageDefaults {
        ImageDefaults {
            command: command.iter().map(|s| s.to_string()).collect(),
            user: user.map(str::to_string),
            ..Default::default()
        }
    }

    fn binds(req: &SandboxRequest) -> Vec<(String, String, bool)> {
        req.extra_mounts
            .iter()
            .filter_map(|m| match m {
                ExtraMount::Bind { src, dst, ro } => {
                    Some((src.display().to_string(), dst.clone(), *ro))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_given_command_wins_over_the_service_and_the_image() {
        let s = service("host = true\ncommand = [\"svc\"]");
        let c = command(
            "app",
            &["given".into()],
            Some(&s),
            &image_with(&["img"], None),
        );
        assert_eq!(c.unwrap(), ["given"]);
    }

    #[test]
    fn the_service_command_wins_over_the_image() {
        let s = service("host = true\ncommand = [\"svc\", \"-x\"]");
        let c = command("app", &[], Some(&s), &image_with(&["img"], None));
        assert_eq!(c.unwrap(), ["svc", "-x"]);
    }

    #[test]
    fn the_image_command_is_the_last_resort() {
        let s = service(r#"image = "example.org/app:1""#);
        let c = command("app", &[], Some(&s), &image_with(&["img", "run"], None));
        assert_eq!(c.unwrap(), ["img", "run"]);
    }

    #[test]
    fn no_command_anywhere_is_refused_with_the_name() {
        let s = service(r#"image = "example.org/app:1""#);
        let e = command("app", &[], Some(&s), &ImageDefaults::default()).unwrap_err();
        assert_eq!(e.to_string(), "app has no command: give one after `--`");
    }

    #[test]
    fn a_job_appends_its_arguments_to_the_service_command() {
        let s = service("host = true\ncommand = [\"node\", \"openclaw.mjs\"]");
        assert_eq!(
            job_command(&s, &["doctor".into()]),
            ["node", "openclaw.mjs", "doctor"]
        );
    }

    #[test]
    fn a_job_without_a_service_command_runs_its_arguments_instead_of_the_image_command() {
        let s = service(r#"image = "example.org/app:1""#);
        assert_eq!(job_command(&s, &["sh".into()]), ["sh"]);
    }

    #[test]
    fn an_image_that_asks_for_root_runs_as_1000() {
        let u = user(None, None, &image_with(&[], Some("root")), PASSWD, GROUP).unwrap();
        assert_eq!(u, DEFAULT_USER);
    }

    #[test]
    fn root_given_explicitly_stays_root_for_a_bundle() {
        let u = user(Some("0"), None, &ImageDefaults::default(), PASSWD, GROUP).unwrap();
        assert_eq!(u, IdPair { uid: 0, gid: 0 });
    }

    #[test]
    fn the_service_user_wins_over_the_image_user_and_names_resolve_in_the_rootfs() {
        let s = service("host = true\ncommand = [\"x\"]\nuser = \"www\"");
        let u = user(
            None,
            Some(&s),
            &image_with(&[], Some("node")),
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(u, IdPair { uid: 33, gid: 33 });
    }

    #[test]
    fn without_any_user_the_default_is_1000() {
        let u = user(None, None, &ImageDefaults::default(), "", "").unwrap();
        assert_eq!(
            u,
            IdPair {
                uid: 1000,
                gid: 1000
            }
        );
    }

    #[test]
    fn a_volume_made_as_root_belongs_to_the_service_user_in_root_s_range() {
        let range = SubordinateIds {
            uid_base: 1_000_000,
            uid_count: 65536,
            gid_base: 2_000_000,
            gid_count: 65536,
        };
        assert_eq!(
            volume_owner(
                IdPair {
                    uid: 1000,
                    gid: 1001
                },
                &range
            ),
            (1_001_000, 2_001_001)
        );
    }

    #[test]
    fn service_env_comes_after_the_env_file_after_the_image_env() {
        let s = service("host = true\ncommand = [\"x\"]\nenv = { A = \"service\" }");
        let mut f = facts(ImageDefaults {
            env: vec![("A".into(), "image".into())],
            ..Default::default()
        });
        f.env_file = vec![("A".into(), "file".into())];
        let req = service_request("app", Some(&s), &[], None, &f).unwrap();
        let values: Vec<&str> = req
            .env
            .iter()
            .filter(|(k, _)| k == "A")
            .map(|(_, v)| v.as_str())
            .collect();
        // The renderer keeps the last of each name: the service's.
        assert_eq!(values, ["image", "file", "service"]);
    }

    #[test]
    fn binds_and_volumes_take_the_resolved_sources_in_order_and_volumes_are_writable() {
        let s = service(
            "host = true\ncommand = [\"x\"]\nmounts = [{ src = \"config\", dst = \"/config\", ro = true }, { src = \"ws\", dst = \"/workspace\", ro = false }]\nvolumes = [\"state:/state\"]",
        );
        let mut f = facts(ImageDefaults::default());
        f.mount_sources = vec!["/cage/config".into(), "/cage/ws".into()];
        f.volume_dirs = vec!["/cage/.cagerun/volumes/state".into()];
        let req = service_request("app", Some(&s), &[], None, &f).unwrap();
        assert_eq!(
            binds(&req),
            [
                ("/cage/config".into(), "/config".into(), true),
                ("/cage/ws".into(), "/workspace".into(), false),
                (
                    "/cage/.cagerun/volumes/state".into(),
                    "/state".into(),
                    false
                ),
            ]
        );
    }

    #[test]
    fn the_workdir_and_hostname_are_the_service_s() {
        let s = service("host = true\ncommand = [\"x\"]\nworkdir = \"/app\"");
        let mut f = facts(ImageDefaults::default());
        f.image.cwd = Some("/image".into());
        let req = service_request("app", Some(&s), &[], None, &f).unwrap();
        assert_eq!(req.cwd.as_deref(), Some("/app"));
        assert_eq!(req.hostname.as_deref(), Some("app"));
    }

    #[test]
    fn without_a_service_the_image_workdir_stays_and_no_hostname_is_set() {
        let mut f = facts(image_with(&["x"], None));
        f.image.cwd = Some("/image".into());
        let req = service_request("img", None, &[], None, &f).unwrap();
        assert_eq!(req.cwd.as_deref(), Some("/image"));
        assert_eq!(req.hostname, None);
    }

    #[test]
    fn a_gpu_service_on_a_host_without_gpu_nodes_is_refused() {
        let s = service("host = true\ncommand = [\"x\"]\ngpu = true");
        let e = devices(&s, &[]).unwrap_err();
        assert!(e
            .to_string()
            .contains("gpu = true, but this host has no GPU device nodes"));
    }

    #[test]
    fn a_gpu_service_gets_its_own_devices_then_the_gpu_nodes() {
        let s = service("host = true\ncommand = [\"x\"]\ngpu = true\ndevices = [\"/dev/fuse\"]");
        let nodes = vec!["/dev/nvidia0".to_string(), "/dev/nvidiactl".to_string()];
        assert_eq!(
            devices(&s, &nodes).unwrap(),
            ["/dev/fuse", "/dev/nvidia0", "/dev/nvidiactl"]
        );
    }

    #[test]
    fn a_service_without_gpu_gets_no_gpu_nodes_even_when_the_host_has_them() {
        let s = service("host = true\ncommand = [\"x\"]");
        assert!(devices(&s, &["/dev/nvidia0".into()]).unwrap().is_empty());
    }

    #[test]
    fn driver_libraries_are_bound_read_only_where_nvidia_images_look_and_put_first_on_the_library_path(
    ) {
        let s = service(
            "host = true\ncommand = [\"x\"]\ngpu = true\nenv = { LD_LIBRARY_PATH = \"/opt/lib\" }",
        );
        let mut f = facts(ImageDefaults::default());
        f.gpu_nodes = vec!["/dev/nvidia0".into()];
        f.gpu_libraries = vec!["/usr/lib/x86_64-linux-gnu/libcuda.so.1".into()];
        let req = service_request("app", Some(&s), &[], None, &f).unwrap();
        assert!(binds(&req).contains(&(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            "/usr/local/nvidia/lib64/libcuda.so.1".into(),
            true
        )));
        let path = req
            .env
            .iter()
            .find(|(k, _)| k == "LD_LIBRARY_PATH")
            .unwrap();
        assert_eq!(path.1, "/usr/local/nvidia/lib64:/opt/lib");
        assert!(req.extra_mounts.contains(&ExtraMount::Device {
            path: "/dev/nvidia0".into()
        }));
    }

    #[test]
    fn the_library_path_is_not_prefixed_twice() {
        let s = service(
            "host = true\ncommand = [\"x\"]\ngpu = true\nenv = { LD_LIBRARY_PATH = \"/usr/local/nvidia/lib64:/x\" }",
        );
        let mut f = facts(ImageDefaults::default());
        f.gpu_nodes = vec!["/dev/nvidia0".into()];
        f.gpu_libraries = vec!["/usr/lib/libnvidia-ml.so.1".into()];
        let req = service_request("app", Some(&s), &[], None, &f).unwrap();
        let path = req
            .env
            .iter()
            .find(|(k, _)| k == "LD_LIBRARY_PATH")
            .unwrap();
        assert_eq!(path.1, "/usr/local/nvidia/lib64:/x");
    }

    #[test]
    fn which_names_are_gpu_nodes_and_driver_libraries() {
        assert!(is_gpu_node("/dev", "nvidia0"));
        assert!(is_gpu_node("/dev", "nvidia-uvm"));
        assert!(!is_gpu_node("/dev", "null"));
        assert!(is_gpu_node("/dev/dri", "renderD128"));
        assert!(is_gpu_driver_library("libcuda.so.1"));
        assert!(is_gpu_driver_library("libnvidia-ml.so.550.54"));
        assert!(!is_gpu_driver_library("libcudart.so.12"));
        assert!(!is_gpu_driver_library("libnvidia-ml.a"));
    }

    #[test]
    fn service_resources_override_and_tmpfs_is_kept() {
        let s = service(
            "host = true\ncommand = [\"x\"]\nresources = { memory = \"2g\", pids = 512 }\ntmpfs = [{ dst = \"/tmp\", size = \"256m\" }]",
        );
        let req =
            service_request("app", Some(&s), &[], None, &facts(ImageDefaults::default())).unwrap();
        assert_eq!(req.memory, Some(2 << 30));
        assert_eq!(req.pids, Some(512));
        assert!(req.extra_mounts.contains(&ExtraMount::Tmpfs {
            dst: "/tmp".into(),
            size: 256 << 20
        }));
    }

    #[test]
    fn the_image_ownership_mapping_found_by_the_engine_is_kept() {
        let mut f = facts(image_with(&["x"], None));
        let sub = SubordinateIds {
            uid_base: 100_000,
            uid_count: 65536,
            gid_base: 100_000,
            gid_count: 65536,
        };
        f.subordinate = Some(sub);
        let req = service_request("img", None, &[], None, &f).unwrap();
        assert_eq!(req.subordinate, Some(sub));
    }

    fn spec_with(uid: u32, maps: Vec<(u32, u32, u32)>) -> Spec {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        let mut u = process.user().clone();
        u.set_uid(uid);
        process.set_user(u);
        spec.set_process(Some(process));
        let m: Vec<LinuxIdMapping> = maps
            .into_iter()
            .map(|(c, h, n)| {
                LinuxIdMappingBuilder::default()
                    .container_id(c)
                    .host_id(h)
                    .size(n)
                    .build()
                    .unwrap()
            })
            .collect();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_uid_mappings(Some(m.clone()));
        linux.set_gid_mappings(Some(m));
        spec.set_linux(Some(linux));
        spec
    }

    fn uid_maps(spec: &Spec) -> Vec<(u32, u32, u32)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .uid_mappings()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.container_id(), m.host_id(), m.size()))
            .collect()
    }

    #[test]
    fn writable_binds_name_the_host_user_and_only_rw_bind_sources() {
        let mut spec = spec_with(1000, vec![(0, 1_000_000, 65536)]);
        let bind = |src: &str, ro: bool| {
            let mut o = vec!["bind".to_string()];
            if ro {
                o.push("ro".into());
            }
            oci_spec::runtime::MountBuilder::default()
                .destination(format!("/m{src}"))
                .typ("bind")
                .source(src)
                .options(o)
                .build()
                .unwrap()
        };
        spec.set_mounts(Some(vec![bind("/rw", false), bind("/ro", true)]));
        let (ids, sources) = writable_binds(&spec);
        assert_eq!(
            ids,
            Some((1_001_000, 1_000_000)),
            "uid 1000, gid 0 through the map"
        );
        assert_eq!(sources, [PathBuf::from("/rw")]);
        let (ids, _) = writable_binds(&spec_with(70000, vec![(0, 1_000_000, 65536)]));
        assert_eq!(ids, None, "an unmapped user has no host id");
    }

    #[test]
    fn a_bundle_as_root_maps_the_container_root_to_nobody() {
        let mut spec = spec_with(1000, vec![(1000, 1_001_000, 1)]);
        map_container_root_to_nobody(&mut spec).unwrap();
        assert_eq!(uid_maps(&spec), [(1000, 1_001_000, 1), (0, NOBODY, 1)]);
    }

    #[test]
    fn a_bundle_whose_maps_already_hold_nobody_or_root_is_left_alone() {
        let mut spec = spec_with(1000, vec![(0, 1_000_000, 65536)]);
        map_container_root_to_nobody(&mut spec).unwrap();
        assert_eq!(uid_maps(&spec), [(0, 1_000_000, 65536)]);
        let mut spec = spec_with(1000, vec![(1000, 60000, 10000)]);
        map_container_root_to_nobody(&mut spec).unwrap();
        assert_eq!(uid_maps(&spec), [(1000, 60000, 10000)]);
    }

    #[test]
    fn a_bundle_whose_process_is_root_is_left_alone() {
        let mut spec = spec_with(0, vec![(1000, 1_001_000, 1)]);
        map_container_root_to_nobody(&mut spec).unwrap();
        assert_eq!(uid_maps(&spec), [(1000, 1_001_000, 1)]);
    }
}
