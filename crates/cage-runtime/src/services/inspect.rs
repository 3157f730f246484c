//! `inspect SVC`: a service's settings as they resolve (cage.toml, the image's defaults and
//! cagerun's policy, rendered the way `up` renders them) and, while the cage runs, its live
//! state from the supervisor.

use anyhow::{Context, Result};
use cage_spec::cage::{Cage, HealthProbe, Restart, ServiceRoot};

use super::control;
use super::state::CagePaths;
use crate::image::StoreRoot;
use crate::views::{
    HealthcheckView, MountView, PortView, ResourcesView, RootView, ServiceInspect, UserView,
};

pub fn inspect(
    paths: &CagePaths,
    cage: &Cage,
    name: &str,
    store: &StoreRoot,
) -> Result<ServiceInspect> {
    let service = crate::config::find_service(cage, name, &paths.config)?;
    let store = match service.root {
        ServiceRoot::Image(_) => Some(store.open()?),
        _ => None,
    };
    let request = crate::bundle::service_request(
        &paths.config,
        &paths.rootfs(),
        store.as_ref(),
        service,
        &[],
        None,
    )
    .with_context(|| format!("service {name}"))?;
    let spec = cage_spec::render_sandbox(&request, crate::host::host_ids())
        .with_context(|| format!("service {name}"))?;
    let process = spec.process().clone().unwrap_or_default();
    let resources = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let cpus = resources.cpu().as_ref().and_then(|c| {
        let (quota, period) = (c.quota()?, c.period()?);
        (period > 0 && quota > 0).then(|| quota as f64 / period as f64)
    });
    let root = match &service.root {
        ServiceRoot::Image(r) => RootView {
            kind: "image".into(),
            source: r.clone(),
            path: spec.root().as_ref().map(|r| r.path().clone()),
        },
        ServiceRoot::Rootfs(d) => RootView {
            kind: "rootfs".into(),
            source: d.clone(),
            path: spec.root().as_ref().map(|r| r.path().clone()),
        },
        ServiceRoot::Host => RootView {
            kind: "host".into(),
            source: String::new(),
            path: None,
        },
    };
    let mut mounts = Vec::new();
    for (src, dst, ro) in &service.mounts {
        let p = paths.cage_dir.join(src);
        mounts.push(MountView {
            kind: "bind".into(),
            source: std::fs::canonicalize(&p).unwrap_or(p),
            destination: dst.clone(),
            read_only: *ro,
            size: None,
        });
    }
    for (vol, dst) in &service.volumes {
        mounts.push(MountView {
            kind: "volume".into(),
            source: paths.volumes().join(vol),
            destination: dst.clone(),
            read_only: false,
            size: None,
        });
    }
    for (dst, size) in &service.tmpfs {
        mounts.push(MountView {
            kind: "tmpfs".into(),
            source: Default::default(),
            destination: dst.clone(),
            read_only: false,
            size: Some(*size),
        });
    }
    let state = control::request(paths, &control::Request::Ps)
        .ok()
        .and_then(|r| r.services)
        .and_then(|list| list.into_iter().find(|s| s.service == name));
    Ok(ServiceInspect {
        service: name.to_string(),
        cage: paths.id.clone(),
        root,
        command: process.args().clone().unwrap_or_default(),
        user: UserView {
            uid: process.user().uid(),
            gid: process.user().gid(),
        },
        workdir: process.cwd().display().to_string(),
        env: process
            .env()
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string()))
            .collect(),
        mounts,
        ports: service
            .ports
            .iter()
            .map(|p| PortView {
                host_address: p.host_addr.to_string(),
                host_port: p.host_port,
                container_port: p.container_port,
            })
            .collect(),
        resources: ResourcesView {
            memory: resources.memory().as_ref().and_then(|m| m.limit()),
            pids: resources.pids().as_ref().map(|p| p.limit()),
            cpus,
        },
        internet: service.internet.is_any(),
        internet_list: service
            .internet
            .rules()
            .map(|r| r.iter().map(|r| r.to_string()).collect()),
        restart: match service.restart {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
        .into(),
        depends_on: service
            .depends_on
            .iter()
            .map(|d| d.service.clone())
            .collect(),
        healthcheck: service.healthcheck.as_ref().map(|h| {
            let (kind, probe) = match &h.probe {
                HealthProbe::Http { port, path } => ("http", format!(":{port}{path}")),
                HealthProbe::Command(c) => ("command", c.join(" ")),
            };
            HealthcheckView {
                kind: kind.into(),
                probe,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                retries: h.retries,
                start_period_ms: h.start_period_ms,
                start_interval_ms: h.start_interval_ms,
            }
        }),
        sandboxes: service.sandboxes.is_some(),
        state,
    })
}
