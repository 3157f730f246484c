//! `cagerun export kube`: the cage as Kubernetes manifests, from the same model `up` runs.
//!
//! What maps to what (docs/kube.md says it for users):
//!
//! | cage | Kubernetes |
//! |---|---|
//! | a service | a Deployment (one replica, `Recreate`); the model store (the service holding `models.volume`) a StatefulSet whose claim template is that volume |
//! | a `once` job | a Job (`backoffLimit: 0`); one that writes a directory exported as a ConfigMap is left out: its result is that ConfigMap |
//! | an `on_demand` job | nothing (said in the header and on stderr) |
//! | `volumes` | a PersistentVolumeClaim per volume |
//! | `mounts` of a directory under `config/` | a ConfigMap of its files, mounted read-only |
//! | other `mounts` | a PersistentVolumeClaim per source, for the user to fill |
//! | `tmpfs` (and the /tmp every service gets) | an `emptyDir` in memory with its size as `sizeLimit` |
//! | `generate`d secrets | one Secret; containers reference it (`secretKeyRef`, `$(VAR)`), never a value |
//! | the hardening | each container's `securityContext` ([`hardened`]) and the pod's |
//! | `resources` | limits (and equal requests) of memory and CPU |
//! | an HTTP or command healthcheck | readiness and liveness probes, a startup probe for `start_period` |
//! | the service's ports (published, and its HTTP check's) | a ClusterIP Service named after the service |
//! | the cage network | a default-deny NetworkPolicy, then per service: its `depends_on` edges, DNS, `internet` |
//! | `[services.X.sandboxes]` | a `broker` sidecar running `cagerun broker`, its directory at [`SHIM_DIR`] in X |
//!
//! Published ports bound to 127.0.0.1 mean "only this machine": the Service exists (reach it
//! with `kubectl port-forward`) but no NetworkPolicy lets anything in; `allow_lan` ports
//! admit any source on that port.
//!
//! Pure: the caller reads `.env`, the config directories and cage.toml and passes them in.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::cage::{Cage, HealthProbe, Healthcheck, Restart, Service, ServiceRoot};
use crate::compose::{self, ImageDefaults};
use crate::egress::{Internet, Target, DEFAULT_PORTS, NOT_INTERNET};
use crate::passwd::IdPair;
use crate::sandbox::{DEFAULT_PATH, DEFAULT_TMPFS_SIZE, DEFAULT_USER};
use crate::service::{SHIM_DIR, VOLUMES_DIR};

/// The Secret holding the cage's `generate`d values.
pub const SECRET_NAME: &str = "cagerun-generated";
/// The ConfigMap holding cage.toml for the broker sidecar.
pub const CAGE_CONFIGMAP: &str = "cagerun-cage";
/// The sidecar that makes a service's tool sandboxes inside its pod.
pub const BROKER_CONTAINER: &str = "broker";
/// The broker's directory in its own container (socket, shim copies); the service sees it at
/// [`SHIM_DIR`].
pub const BROKER_DIR: &str = "/run/cagerun-broker";
/// The cage's directory in the broker container: cage.toml at `config/cage.toml` below it,
/// the service's mounts and volumes where the broker resolves them (relative sources below
/// it, volumes in [`VOLUMES_DIR`]), the sandbox image trees from the broker image.
pub const BROKER_CAGE_DIR: &str = "/cage";
/// A cage-relative mount source under this directory is exported as a ConfigMap.
pub const CONFIG_DIR: &str = "config";
/// What a ConfigMap may hold (etcd's object limit is 1 MiB, metadata included).
pub const MAX_CONFIGMAP_BYTES: usize = 1000 * 1024;
/// Memory the broker itself needs beside its sandboxes' total.
pub const BROKER_OVERHEAD: u64 = 128 << 20;
/// Requested sizes: cage.toml names none (a cage's volumes grow on the host's disk).
pub const VOLUME_SIZE: &str = "1Gi";
pub const MODELS_VOLUME_SIZE: &str = "64Gi";
/// The shortest secret value told apart from other text (a generated one has 64 characters):
/// a shorter one would match inside ordinary values and be replaced there.
pub const MIN_SECRET_LEN: usize = 16;
/// The prefix of the variables a container gets a secret through when the secret is part of
/// a longer value or an argument (`$(CAGERUN_SECRET_NAME)`).
pub const SECRET_VAR_PREFIX: &str = "CAGERUN_SECRET_";

const LABEL_NAME: &str = "app.kubernetes.io/name";
const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The files of one config directory a service mounts, read by the caller (regular files
/// only, by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDir {
    /// The mount's `src` as cage.toml names it (`config/openclaw`).
    pub src: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// What the export is made from.
#[derive(Debug, Clone)]
pub struct KubeRequest<'a> {
    pub cage: &'a Cage,
    pub namespace: &'a str,
    /// Each `generate`d name with its value (from the environment or `.env`).
    pub secrets: &'a [(String, String)],
    /// Each service's `env_file`, read.
    pub env_files: &'a BTreeMap<String, Vec<(String, String)>>,
    /// Each of [`config_sources`], read.
    pub config_dirs: &'a [ConfigDir],
    /// cage.toml as the broker sidecar reads it: the generated secrets left as `${NAME}`.
    pub broker_cage_toml: &'a str,
    pub broker_image: &'a str,
    pub runtime_class: Option<&'a str>,
}

/// One YAML document and the comment written above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub comment: String,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub manifests: Vec<Manifest>,
    /// What the user must know or do (the CLI prints them on stderr; the YAML has them too).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeError {
    #[error("services.{service}.user = {user:?}: Kubernetes runs a container as a number (runAsUser) and the image's /etc/passwd is not read here: write the uid (\"1000\" or \"1000:1000\")")]
    User { service: String, user: String },
    #[error("{src}/{name}: a ConfigMap key is letters, digits, '-', '_' and '.': rename the file")]
    ConfigKey { src: String, name: String },
    #[error("{src}/{name} is not UTF-8 text: a ConfigMap here carries text files only")]
    ConfigNotText { src: String, name: String },
    #[error("{src} holds {size} bytes: a ConfigMap holds at most {MAX_CONFIGMAP_BYTES}")]
    ConfigTooBig { src: String, size: usize },
    #[error("{src} was not read (an internal error: the caller reads every config source)")]
    ConfigMissing { src: String },
    #[error("{src}/{name} holds the value of {secret}: it would be written into a ConfigMap; make the file refer to the variable instead")]
    SecretInConfig {
        src: String,
        name: String,
        secret: String,
    },
    #[error("services.{service}.sandboxes.internet: a pod has no egress router for tool sandboxes (only `cagerun up` has one): remove the list to export the cage (sandboxes then keep only their own lo)")]
    SandboxInternet { service: String },
    #[error("the value of {secret} would be written into {kind} {name} (an internal error)")]
    SecretInline {
        secret: String,
        kind: String,
        name: String,
    },
    #[error("{0} in .env (or the environment) is shorter than {MIN_SECRET_LEN} characters: it cannot be told apart from other text, so it cannot be kept out of the manifests; remove it to have a new one generated")]
    ShortSecret(String),
    #[error("namespace {0:?}: a Kubernetes namespace is lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit")]
    Namespace(String),
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// The mount sources the caller must read for [`KubeRequest::config_dirs`]: cage-relative
/// directories under [`CONFIG_DIR`] that a service, job or the broker needs.
pub fn config_sources(cage: &Cage) -> Vec<String> {
    let set: BTreeSet<String> = cage
        .services
        .iter()
        .flat_map(|s| s.mounts.iter())
        .filter(|(src, _, _)| is_config_source(src))
        .map(|(src, _, _)| src.clone())
        .collect();
    set.into_iter().collect()
}

fn is_config_source(src: &str) -> bool {
    let src = src.trim_end_matches('/');
    src == CONFIG_DIR
        || src
            .strip_prefix(CONFIG_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The namespace when none is given: the cage's name as a DNS label (`cagerun` without one).
pub fn default_namespace(cage: &Cage) -> String {
    dns_label(cage.name.as_deref().unwrap_or("cagerun"))
}

/// `text` as a DNS label: lowercase letters, digits and '-', at most 63, alphanumeric ends.
fn dns_label(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "x".into()
    } else {
        out
    }
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= 63 && dns_label(ns) == ns
}

/// A memory size as a Kubernetes quantity (binary suffix when it divides).
pub fn quantity(bytes: u64) -> String {
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes >= 1 << shift && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// CPUs as millicores (rounded up, at least 1m).
fn cpu_quantity(cpus: f64) -> String {
    format!("{}m", ((cpus * 1000.0).ceil() as u64).max(1))
}

/// Milliseconds as whole probe seconds (at least 1).
fn seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// Kubernetes expands `$(VAR)` in env values, commands and arguments and reads `$$` as `$`:
/// doubling every `$` keeps a value literal.
fn literal(value: &str) -> String {
    value.replace('$', "$$")
}

/// The securityContext of every container, from the cage's policy: the user, no root, a
/// read-only root, no capabilities, no privilege gain, the runtime's default seccomp filter.
pub fn hardened(user: IdPair) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": user.uid,
        "runAsGroup": user.gid,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn service_user(s: &Service) -> Result<IdPair, KubeError> {
    compose::user(None, Some(s), &ImageDefaults::default(), "", "").map_err(|_| KubeError::User {
        service: s.name.clone(),
        user: s.user.clone().unwrap_or_default(),
    })
}

/// The ports a service listens on inside the cage: its published ports' container side and
/// its HTTP check's port.
pub fn listening_ports(s: &Service) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = s.ports.iter().map(|p| p.container_port).collect();
    if let Some(Healthcheck {
        probe: HealthProbe::Http { port, .. },
        ..
    }) = &s.healthcheck
    {
        ports.insert(*port);
    }
    ports
}

/// How a workload is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    Job,
}

/// Where one mount source lives in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backing {
    ConfigMap(String),
    Claim(String),
}

struct Plan<'a> {
    req: &'a KubeRequest<'a>,
    cage_label: String,
    workloads: Vec<(&'a Service, Kind)>,
    /// The model store: (service, volume).
    store: Option<(&'a str, &'a str)>,
    /// Volume name → claim name.
    volume_claims: BTreeMap<String, String>,
    /// Mount source → where it lives.
    mount_backing: BTreeMap<String, Backing>,
    notes: Vec<String>,
}

impl<'a> Plan<'a> {
    fn new(req: &'a KubeRequest<'a>) -> Result<Self, KubeError> {
        let cage = req.cage;
        let mut notes = Vec::new();
        let store = cage.models.as_ref().and_then(|(vol, _)| {
            cage.services
                .iter()
                .find(|s| s.supervised() && s.volumes.iter().any(|(v, _)| v == vol))
                .map(|s| (s.name.as_str(), vol.as_str()))
        });
        let mut workloads = Vec::new();
        for s in &cage.services {
            if s.on_demand {
                notes.push(format!("{} is on_demand (`cagerun run {}`): not deployed; run it by hand when you need it", s.name, s.name));
                continue;
            }
            if s.once {
                let writes_config = s
                    .mounts
                    .iter()
                    .find(|(src, _, ro)| !ro && is_config_source(src));
                if let Some((src, _, _)) = writes_config {
                    notes.push(format!("{} (once) writes {src}, which is a read-only ConfigMap here: not deployed; run it with cagerun before exporting (its result is what the ConfigMap carries)", s.name));
                    continue;
                }
                workloads.push((s, Kind::Job));
                continue;
            }
            if let Some(sb) = &s.sandboxes {
                if !sb.internet.is_empty() {
                    return Err(KubeError::SandboxInternet {
                        service: s.name.clone(),
                    });
                }
            }
            let kind = if store.is_some_and(|(name, _)| name == s.name) {
                Kind::StatefulSet
            } else {
                Kind::Deployment
            };
            workloads.push((s, kind));
        }
        // Claims: named volumes keep their names; other mount sources are named after their
        // last component, made unique in a fixed order.
        let deployed = || workloads.iter().map(|(s, _)| *s);
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut volume_claims = BTreeMap::new();
        let volumes: BTreeSet<&str> = deployed()
            .flat_map(|s| s.volumes.iter().map(|(v, _)| v.as_str()))
            .collect();
        for v in volumes {
            let claim = match store {
                // The claim the StatefulSet's template makes for its one replica.
                Some((svc, vol)) if vol == v => format!("{}-{svc}-0", claim_template(v)),
                _ => dns_label(v),
            };
            taken.insert(claim.clone());
            volume_claims.insert(v.to_string(), claim);
        }
        let mut mount_backing = BTreeMap::new();
        let mut sources: Vec<&str> = deployed()
            .flat_map(|s| s.mounts.iter().map(|(src, _, _)| src.as_str()))
            .collect();
        // The broker mounts the config sources of its service too (already among them).
        sources.sort();
        sources.dedup();
        for src in sources {
            let backing = if is_config_source(src) {
                Backing::ConfigMap(dns_label(src))
            } else {
                let base = dns_label(src.trim_end_matches('/').rsplit('/').next().unwrap_or(src));
                let mut name = base.clone();
                let mut n = 2;
                while taken.contains(&name) {
                    name = format!("{base}-{n}");
                    n += 1;
                }
                taken.insert(name.clone());
                Backing::Claim(name)
            };
            mount_backing.insert(src.to_string(), backing);
        }
        Ok(Plan {
            req,
            cage_label: dns_label(cage.name.as_deref().unwrap_or("cagerun")),
            workloads,
            store,
            volume_claims,
            mount_backing,
            notes,
        })
    }

    fn service(&self, name: &str) -> Option<&'a Service> {
        self.workloads
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, _)| *s)
    }

    fn metadata(&self, name: &str, app: Option<&str>) -> Value {
        let mut labels = Map::new();
        if let Some(app) = app {
            labels.insert(LABEL_NAME.into(), json!(app));
        }
        labels.insert(LABEL_PART_OF.into(), json!(self.cage_label));
        labels.insert(LABEL_MANAGED_BY.into(), json!("cagerun"));
        json!({ "name": name, "namespace": self.req.namespace, "labels": labels })
    }

    fn selector(&self, app: &str) -> Value {
        json!({ LABEL_NAME: app, LABEL_PART_OF: self.cage_label })
    }

    /// Services that depend on `name` over the network (both supervised and deployed).
    fn dependents(&self, name: &str) -> Vec<&'a Service> {
        self.workloads
            .iter()
            .filter(|(s, k)| *k != Kind::Job && s.depends_on.iter().any(|d| d.service == name))
            .map(|(s, _)| *s)
            .collect()
    }

    /// What `s` reaches over the network: its supervised, deployed dependencies.
    fn dependencies(&self, s: &Service) -> Vec<&'a Service> {
        if !s.supervised() {
            return Vec::new();
        }
        s.depends_on
            .iter()
            .filter_map(|d| self.service(&d.service))
            .filter(|d| d.supervised())
            .collect()
    }
}

fn claim_template(volume: &str) -> String {
    dns_label(volume)
}

/// Render the cage.
pub fn render(req: &KubeRequest) -> Result<Export, KubeError> {
    if !valid_namespace(req.namespace) {
        return Err(KubeError::Namespace(req.namespace.to_string()));
    }
    if let Some((name, _)) = req.secrets.iter().find(|(_, v)| v.len() < MIN_SECRET_LEN) {
        return Err(KubeError::ShortSecret(name.clone()));
    }
    let mut plan = Plan::new(req)?;
    let mut out = Vec::new();
    let with_broker = plan
        .workloads
        .iter()
        .any(|(s, k)| *k != Kind::Job && s.sandboxes.is_some());

    // The namespace, with Pod Security admission as strict as the pods allow.
    let level = if with_broker {
        "privileged"
    } else {
        "restricted"
    };
    let mut ns = plan.metadata(req.namespace, None);
    ns.as_object_mut().map(|m| m.remove("namespace"));
    ns["labels"]["pod-security.kubernetes.io/enforce"] = json!(level);
    out.push(Manifest {
        comment: if with_broker {
            "Pod Security \"privileged\": the broker sidecar needs seccomp Unconfined and procMount Unmasked,\nwhich the baseline and restricted levels forbid.\nEvery other container still meets \"restricted\" (see each securityContext).".into()
        } else {
            "Pod Security \"restricted\": every container meets it.".into()
        },
        body: json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": ns }),
    });

    if !req.secrets.is_empty() {
        let data: Map<String, Value> = req
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.push(Manifest {
            comment: "The cage's generated secrets (`generate` in cage.toml, their values from .env).\nContainers reference this Secret; no value is written anywhere else. Keep this file private.".into(),
            body: json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": plan.metadata(SECRET_NAME, None),
                "type": "Opaque",
                "stringData": data,
            }),
        });
    }

    out.extend(config_maps(&plan)?);
    out.extend(claims(&plan));
    out.extend(network_policies(&mut plan));
    out.extend(services(&plan));
    let workloads = plan.workloads.clone();
    for (s, kind) in workloads {
        out.push(workload(&mut plan, s, kind)?);
    }

    // Defence in depth: no secret value outside the Secret.
    for m in &out {
        if m.body["kind"] == "Secret" {
            continue;
        }
        let text = m.body.to_string();
        let shown = m.comment.clone();
        for (name, value) in req.secrets {
            if !value.is_empty()
                && (text.contains(value.as_str()) || shown.contains(value.as_str()))
            {
                return Err(KubeError::SecretInline {
                    secret: name.clone(),
                    kind: m.body["kind"].as_str().unwrap_or("?").to_string(),
                    name: m.body["metadata"]["name"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                });
            }
        }
    }
    Ok(Export {
        manifests: out,
        notes: plan.notes,
    })
}

fn config_maps(plan: &Plan) -> Result<Vec<Manifest>, KubeError> {
    let req = plan.req;
    let mut out = Vec::new();
    for (src, backing) in &plan.mount_backing {
        let Backing::ConfigMap(name) = backing else {
            continue;
        };
        let dir = req
            .config_dirs
            .iter()
            .find(|d| d.src == *src)
            .ok_or_else(|| KubeError::ConfigMissing { src: src.clone() })?;
        let mut data = Map::new();
        let mut size = 0;
        for (file, bytes) in &dir.files {
            let key_ok = !file.is_empty()
                && file
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !key_ok {
                return Err(KubeError::ConfigKey {
                    src: src.clone(),
                    name: file.clone(),
                });
            }
            let text = std::str::from_utf8(bytes).map_err(|_| KubeError::ConfigNotText {
                src: src.clone(),
                name: file.clone(),
            })?;
            if let Some((secret, _)) = req
                .secrets
                .iter()
                .find(|(_, v)| !v.is_empty() && text.contains(v.as_str()))
            {
                return Err(KubeError::SecretInConfig {
                    src: src.clone(),
                    name: file.clone(),
                    secret: secret.clone(),
                });
            }
            size += file.len() + bytes.len();
            data.insert(file.clone(), json!(text));
        }
        if size > MAX_CONFIGMAP_BYTES {
            return Err(KubeError::ConfigTooBig {
                src: src.clone(),
                size,
            });
        }
        out.push(Manifest {
            comment: format!(
                "{src}/ of the cage, mounted read-only (a ConfigMap cannot be written)."
            ),
            body: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": plan.metadata(name, None),
                "data": data,
            }),
        });
    }
    if plan
        .workloads
        .iter()
        .any(|(s, k)| *k != Kind::Job && s.sandboxes.is_some())
    {
        out.push(Manifest {
            comment: "cage.toml for the broker sidecar (it derives the sandboxes' policy from it, as `up` does).\nThe generated secrets stay `${NAME}`: the broker reads them as empty and never needs them.".into(),
            body: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": plan.metadata(CAGE_CONFIGMAP, None),
                "data": { "cage.toml": req.broker_cage_toml },
            }),
        });
    }
    Ok(out)
}

fn claim(plan: &Plan, name: &str, size: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": plan.metadata(name, None),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": size } },
        },
    })
}

fn claims(plan: &Plan) -> Vec<Manifest> {
    let mut out = Vec::new();
    for (volume, name) in &plan.volume_claims {
        if plan.store.is_some_and(|(_, v)| v == volume) {
            continue;
        }
        out.push(Manifest {
            comment: format!("The cage's volume {volume:?} ({VOLUME_SIZE} requested: cage.toml names no size; resize to need).\nReadWriteOnce: the pods that share it run on one node."),
            body: claim(plan, name, VOLUME_SIZE),
        });
    }
    for (src, backing) in &plan.mount_backing {
        let Backing::Claim(name) = backing else {
            continue;
        };
        let users: Vec<String> = plan
            .workloads
            .iter()
            .filter_map(|(s, _)| {
                s.mounts
                    .iter()
                    .find(|(m, _, _)| m == src)
                    .map(|(_, dst, ro)| {
                        format!(
                            "{} at {dst}{}",
                            s.name,
                            if *ro { " (read-only)" } else { "" }
                        )
                    })
            })
            .collect();
        out.push(Manifest {
            comment: format!("What the cage binds from {src}: {}.\nFill it before the pods start (the cluster has no copy of the host's files).", users.join(", ")),
            body: claim(plan, name, VOLUME_SIZE),
        });
    }
    out
}

fn network_policies(plan: &mut Plan) -> Vec<Manifest> {
    let mut out = vec![Manifest {
        comment: "Nothing in or out of the namespace's pods but what the policies below allow (a cage's default).".into(),
        body: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": plan.metadata("default-deny", None),
            "spec": { "podSelector": {}, "policyTypes": ["Ingress", "Egress"] },
        }),
    }];
    let dns = json!({
        "to": [{
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
        }],
        "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
    });
    let port_list = |ports: &BTreeSet<u16>| -> Value {
        ports
            .iter()
            .map(|p| json!({ "protocol": "TCP", "port": p }))
            .collect()
    };
    let workloads = plan.workloads.clone();
    for (s, _) in workloads {
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        let mut comment = Vec::new();
        let ports = listening_ports(s);
        let dependents = plan.dependents(&s.name);
        if !dependents.is_empty() {
            let from: Vec<Value> = dependents
                .iter()
                .map(|d| json!({ "podSelector": { "matchLabels": plan.selector(&d.name) } }))
                .collect();
            let mut rule = json!({ "from": from });
            if !ports.is_empty() {
                rule["ports"] = port_list(&ports);
            }
            ingress.push(rule);
            let names: Vec<&str> = dependents.iter().map(|d| d.name.as_str()).collect();
            comment.push(format!("In: from {} (depends_on).", names.join(", ")));
        }
        let lan: BTreeSet<u16> = s
            .ports
            .iter()
            .filter(|p| !p.host_addr.is_loopback())
            .map(|p| p.container_port)
            .collect();
        if !lan.is_empty() {
            ingress.push(json!({ "ports": port_list(&lan) }));
            comment.push("In: any source on its allow_lan ports.".into());
        }
        if s.ports.iter().any(|p| p.host_addr.is_loopback()) {
            comment.push(
                "Its 127.0.0.1 ports admit nothing here: reach them with `kubectl port-forward`."
                    .into(),
            );
        }
        let deps = plan.dependencies(s);
        for d in &deps {
            let mut rule =
                json!({ "to": [{ "podSelector": { "matchLabels": plan.selector(&d.name) } }] });
            let dports = listening_ports(d);
            if !dports.is_empty() {
                rule["ports"] = port_list(&dports);
            }
            egress.push(rule);
        }
        if !deps.is_empty() {
            let names: Vec<&str> = deps.iter().map(|d| d.name.as_str()).collect();
            comment.push(format!("Out: to {} (depends_on).", names.join(", ")));
        }
        match &s.internet {
            Internet::None => {}
            Internet::Any => {
                let except: Vec<String> = NOT_INTERNET
                    .iter()
                    .map(|(net, len, _)| format!("{net}/{len}"))
                    .collect();
                egress.push(
                    json!({ "to": [{ "ipBlock": { "cidr": "0.0.0.0/0", "except": except } }] }),
                );
                comment.push("Out: the internet (internet = true), never the cluster's or the host's private ranges.".into());
            }
            Internet::Allow(rules) => {
                let mut unnamed = Vec::new();
                for r in rules {
                    match r.target {
                        Target::Address(a) => {
                            let ports: BTreeSet<u16> = match r.port {
                                Some(p) => [p].into(),
                                None => DEFAULT_PORTS.into(),
                            };
                            egress.push(json!({
                                "to": [{ "ipBlock": { "cidr": format!("{a}/32") } }],
                                "ports": port_list(&ports),
                            }));
                        }
                        _ => unnamed.push(r.to_string()),
                    }
                }
                comment.push("Out: the addresses of its internet list.".into());
                if !unnamed.is_empty() {
                    comment.push(format!("A NetworkPolicy cannot name hosts: {} need an egress proxy (cagerun's own runs only under `cagerun up`), so they are NOT reachable here.", unnamed.join(", ")));
                    plan.notes.push(format!("{}: internet entries {} cannot be said in a NetworkPolicy (names need an egress proxy): not reachable in the cluster", s.name, unnamed.join(", ")));
                }
            }
        }
        if !deps.is_empty() || s.internet.is_any() {
            egress.push(dns.clone());
            comment.push("Out: cluster DNS (to find its dependencies' Services; it also answers names outside the cluster).".into());
        }
        if ingress.is_empty() && egress.is_empty() {
            continue;
        }
        let mut types = Vec::new();
        let mut spec = json!({ "podSelector": { "matchLabels": plan.selector(&s.name) } });
        if !ingress.is_empty() {
            types.push("Ingress");
            spec["ingress"] = json!(ingress);
        }
        if !egress.is_empty() {
            types.push("Egress");
            spec["egress"] = json!(egress);
        }
        spec["policyTypes"] = json!(types);
        out.push(Manifest {
            comment: format!("{}:\n{}", s.name, comment.join("\n")),
            body: json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": plan.metadata(&s.name, Some(&s.name)),
                "spec": spec,
            }),
        });
    }
    out
}

fn services(plan: &Plan) -> Vec<Manifest> {
    let mut out = Vec::new();
    for (s, kind) in &plan.workloads {
        if *kind == Kind::Job {
            continue;
        }
        let ports = listening_ports(s);
        let needed =
            !ports.is_empty() || !plan.dependents(&s.name).is_empty() || *kind == Kind::StatefulSet;
        if !needed {
            continue;
        }
        let mut spec = json!({ "selector": plan.selector(&s.name) });
        let mut comment = format!(
            "{}: its name is the host name the cage's services use.",
            s.name
        );
        if ports.is_empty() {
            spec["clusterIP"] = json!("None");
            comment.push_str(
                "\nHeadless: the service names no port (no published port, no HTTP check).",
            );
        } else {
            spec["type"] = json!("ClusterIP");
            spec["ports"] = ports
                .iter()
                .map(|p| json!({ "name": format!("tcp-{p}"), "protocol": "TCP", "port": p, "targetPort": p }))
                .collect();
        }
        for p in &s.ports {
            comment.push_str(&format!(
                "\nPublished on {}:{} by `cagerun up`: here `kubectl -n {} port-forward svc/{} {}:{}`.",
                p.host_addr, p.host_port, plan.req.namespace, s.name, p.host_port, p.container_port
            ));
        }
        out.push(Manifest {
            comment,
            body: json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": plan.metadata(&s.name, Some(&s.name)),
                "spec": spec,
            }),
        });
    }
    out
}

/// Env entries and the secret helper variables they need, with secrets referenced.
struct EnvBuilder<'a> {
    secrets: &'a [(String, String)],
    helpers: BTreeSet<String>,
}

impl EnvBuilder<'_> {
    /// `value` with `$` kept literal and each secret value replaced by `$(HELPER)`.
    fn expand(&mut self, value: &str) -> String {
        let mut out = String::new();
        let mut rest = value;
        'outer: while !rest.is_empty() {
            for (name, secret) in self.secrets {
                if !secret.is_empty() && rest.starts_with(secret.as_str()) {
                    out.push_str(&format!("$({SECRET_VAR_PREFIX}{name})"));
                    self.helpers.insert(name.clone());
                    rest = &rest[secret.len()..];
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap_or_default();
            out.push_str(&literal(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    fn entry(&mut self, key: &str, value: &str) -> Value {
        if let Some((name, _)) = self
            .secrets
            .iter()
            .find(|(_, v)| !v.is_empty() && v == value)
        {
            return json!({ "name": key, "valueFrom": { "secretKeyRef": { "name": SECRET_NAME, "key": name } } });
        }
        json!({ "name": key, "value": self.expand(value) })
    }

    fn helper_entries(&self) -> Vec<Value> {
        self.helpers
            .iter()
            .map(|name| json!({ "name": format!("{SECRET_VAR_PREFIX}{name}"), "valueFrom": { "secretKeyRef": { "name": SECRET_NAME, "key": name } } }))
            .collect()
    }
}

fn probe(h: &Healthcheck) -> Value {
    let mut p = match &h.probe {
        HealthProbe::Http { port, path } => json!({ "httpGet": { "path": path, "port": port } }),
        HealthProbe::Command(c) => json!({ "exec": { "command": c } }),
    };
    p["periodSeconds"] = json!(seconds(h.interval_ms));
    p["timeoutSeconds"] = json!(seconds(h.timeout_ms));
    p["failureThreshold"] = json!(h.retries.max(1));
    p
}

fn tmpfs_volume(name: &str, size: u64) -> Value {
    json!({ "name": name, "emptyDir": { "medium": "Memory", "sizeLimit": quantity(size) } })
}

/// The pod volume for a mount source or volume claim.
fn pod_volume(backing: &Backing) -> (String, Value) {
    match backing {
        Backing::ConfigMap(cm) => {
            let name = dns_label(&format!("cm-{cm}"));
            (
                name.clone(),
                json!({ "name": name, "configMap": { "name": cm } }),
            )
        }
        Backing::Claim(claim) => {
            let name = dns_label(&format!("pvc-{claim}"));
            (
                name.clone(),
                json!({ "name": name, "persistentVolumeClaim": { "claimName": claim } }),
            )
        }
    }
}

fn workload(plan: &mut Plan, s: &Service, kind: Kind) -> Result<Manifest, KubeError> {
    let req = plan.req;
    let user = service_user(s)?;
    let mut comment = vec![format!(
        "{}: {}",
        s.name,
        match kind {
            Kind::Deployment => "a service of the cage",
            Kind::StatefulSet => "the cage's model store: its models volume is the claim template",
            Kind::Job =>
                "a once job (`up` runs it before the services; here it runs when applied, once)",
        }
    )];
    let image = match &s.root {
        ServiceRoot::Image(i) => i.clone(),
        other => {
            let what = match other {
                ServiceRoot::Host => {
                    "host = true (the host's system directories, read-only)".to_string()
                }
                ServiceRoot::Rootfs(dir) => format!("rootfs = {dir:?}"),
                ServiceRoot::Image(_) => unreachable!(),
            };
            let image = format!("localhost/{}/{}:latest", plan.cage_label, s.name);
            comment.push(format!("Its files come from {what}: {image} stands for an image holding what its command needs."));
            plan.notes.push(format!(
                "{}: {what} has no image; build and push one as {image} (or edit the manifest)",
                s.name
            ));
            image
        }
    };

    let mut volumes: BTreeMap<String, Value> = BTreeMap::new();
    let mut mounts = Vec::new();
    for (src, dst, ro) in &s.mounts {
        let backing = &plan.mount_backing[src];
        let (name, vol) = pod_volume(backing);
        let read_only = *ro || matches!(backing, Backing::ConfigMap(_));
        if !*ro && read_only {
            comment.push(format!(
                "{src} at {dst} is read-only here (a ConfigMap); cage.toml mounts it writable."
            ));
            plan.notes.push(format!(
                "{}: {src} is a read-only ConfigMap here, though cage.toml mounts it writable",
                s.name
            ));
        }
        volumes.insert(name.clone(), vol);
        mounts.push(json!({ "name": name, "mountPath": dst, "readOnly": read_only }));
    }
    let mut claim_templates = Vec::new();
    for (vol, dst) in &s.volumes {
        let is_template = kind == Kind::StatefulSet && plan.store.is_some_and(|(_, v)| v == vol);
        if is_template {
            let name = claim_template(vol);
            claim_templates.push(json!({
                "metadata": { "name": name, "labels": plan.selector(&s.name) },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": MODELS_VOLUME_SIZE } },
                },
            }));
            mounts.push(json!({ "name": name, "mountPath": dst }));
            comment.push(format!("The models volume {vol:?} starts empty: `cagerun up` pulls {} into it on the host, and this server has no internet; copy the models in (e.g. `kubectl cp`) before it serves.", req.cage.models.as_ref().map(|(_, m)| m.join(", ")).unwrap_or_default()));
            plan.notes.push(format!(
                "{}: fill the models volume (claim {}-{}-0) with the models before use",
                s.name, name, s.name
            ));
            continue;
        }
        let claim = plan.volume_claims[vol].clone();
        let (name, v) = pod_volume(&Backing::Claim(claim));
        volumes.insert(name.clone(), v);
        mounts.push(json!({ "name": name, "mountPath": dst }));
    }
    // /tmp is always a size-limited tmpfs, as the sandbox renderer gives every service.
    let mut tmpfs = s.tmpfs.clone();
    if !tmpfs.iter().any(|(d, _)| d.trim_end_matches('/') == "/tmp") {
        tmpfs.push(("/tmp".into(), DEFAULT_TMPFS_SIZE));
    }
    for (dst, size) in &tmpfs {
        let name = dns_label(&format!("tmpfs-{dst}"));
        volumes.insert(name.clone(), tmpfs_volume(&name, *size));
        mounts.push(json!({ "name": name, "mountPath": dst }));
    }

    // Environment: the env_file's, then the service's (the last of a name wins, as in `up`).
    let mut env_map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.env_files.get(&s.name).into_iter().flatten() {
        env_map.insert(k.clone(), v.clone());
    }
    for (k, v) in &s.env {
        env_map.insert(k.clone(), v.clone());
    }
    let broker = kind != Kind::Job && s.sandboxes.is_some();
    if broker {
        let path = env_map
            .get("PATH")
            .cloned()
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        env_map.insert("PATH".into(), format!("{SHIM_DIR}:{path}"));
    }
    let mut envb = EnvBuilder {
        secrets: req.secrets,
        helpers: BTreeSet::new(),
    };
    let env: Vec<Value> = env_map.iter().map(|(k, v)| envb.entry(k, v)).collect();
    let command: Option<Vec<String>> = s
        .command
        .as_ref()
        .map(|c| c.iter().map(|a| envb.expand(a)).collect());
    let mut env_all = envb.helper_entries();
    env_all.extend(env);

    let mut container = json!({
        "name": s.name,
        "image": image,
        "securityContext": hardened(user),
        "volumeMounts": mounts,
    });
    if let Some(c) = command {
        container["command"] = json!(c);
    }
    if let Some(w) = &s.workdir {
        container["workingDir"] = json!(w);
    }
    if !env_all.is_empty() {
        container["env"] = json!(env_all);
    }
    let ports = listening_ports(s);
    if !ports.is_empty() && kind != Kind::Job {
        container["ports"] = ports
            .iter()
            .map(|p| json!({ "name": format!("tcp-{p}"), "containerPort": p, "protocol": "TCP" }))
            .collect();
    }
    let mut limits = Map::new();
    if let Some(m) = s.memory {
        limits.insert("memory".into(), json!(quantity(m)));
    }
    if let Some(c) = s.cpus {
        limits.insert("cpu".into(), json!(cpu_quantity(c)));
    }
    let mut requests = limits.clone();
    if s.gpu {
        limits.insert("nvidia.com/gpu".into(), json!(1));
        comment
            .push("gpu = true: one NVIDIA GPU through the device plugin (nvidia.com/gpu).".into());
    }
    if !limits.is_empty() {
        requests.remove("nvidia.com/gpu");
        container["resources"] = json!({ "limits": limits, "requests": requests });
    }
    if let Some(p) = s.pids {
        comment.push(format!("resources.pids = {p} has no per-container counterpart (the kubelet's podPidsLimit is node-wide)."));
    }
    if !s.devices.is_empty() {
        comment.push(format!(
            "devices {} are not passed: a cluster gives devices through device plugins.",
            s.devices.join(", ")
        ));
        plan.notes.push(format!(
            "{}: devices {} are not exported (use a device plugin)",
            s.name,
            s.devices.join(", ")
        ));
    }
    if let Some(h) = &s.healthcheck {
        let p = probe(h);
        container["readinessProbe"] = p.clone();
        container["livenessProbe"] = p.clone();
        if h.start_period_ms > 0 {
            let mut startup = p;
            let tries =
                h.start_period_ms.div_ceil(h.interval_ms.max(1)) + u64::from(h.retries.max(1));
            startup["failureThreshold"] = json!(tries);
            container["startupProbe"] = startup;
        }
    }
    if kind != Kind::Job && s.restart == Restart::No {
        comment
            .push("restart = \"no\" has no Deployment counterpart: Kubernetes restarts it.".into());
    }

    let mut containers = vec![container];
    let mut pod_annotations = Map::new();
    let mut pod = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostname": s.name,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": user.uid,
            "runAsGroup": user.gid,
            "fsGroup": user.gid,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": { "type": "RuntimeDefault" },
        },
    });
    if broker {
        let (c, extra) = broker_container(plan, s, &mut comment);
        if let Some(m) = containers[0]["volumeMounts"].as_array_mut() {
            m.push(json!({ "name": "broker-dir", "mountPath": SHIM_DIR, "readOnly": true }));
        }
        containers.push(c);
        for v in extra {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            volumes.insert(name, v);
        }
        pod["hostUsers"] = json!(false);
        pod_annotations.insert(
            format!("container.apparmor.security.beta.kubernetes.io/{BROKER_CONTAINER}"),
            json!("unconfined"),
        );
    }
    pod["containers"] = json!(containers);
    pod["volumes"] = volumes.into_values().collect();
    if let Some(rc) = req.runtime_class {
        pod["runtimeClassName"] = json!(rc);
    }
    if kind == Kind::Job {
        pod["restartPolicy"] = json!("Never");
    }
    let mut template_meta = json!({ "labels": plan.metadata(&s.name, Some(&s.name))["labels"] });
    if !pod_annotations.is_empty() {
        template_meta["annotations"] = json!(pod_annotations);
    }
    let template = json!({ "metadata": template_meta, "spec": pod });
    let body = match kind {
        Kind::Deployment => json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": plan.metadata(&s.name, Some(&s.name)),
            "spec": {
                "replicas": 1,
                // Its volumes are ReadWriteOnce: the old pod goes before the new one comes.
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": plan.selector(&s.name) },
                "template": template,
            },
        }),
        Kind::StatefulSet => json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": plan.metadata(&s.name, Some(&s.name)),
            "spec": {
                "replicas": 1,
                "serviceName": s.name,
                "selector": { "matchLabels": plan.selector(&s.name) },
                "template": template,
                "volumeClaimTemplates": claim_templates,
            },
        }),
        Kind::Job => json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": plan.metadata(&s.name, Some(&s.name)),
            "spec": { "backoffLimit": 0, "template": template },
        }),
    };
    Ok(Manifest {
        comment: comment.join("\n"),
        body,
    })
}

/// Where the broker finds a mount source of its service: relative sources below the cage's
/// directory, absolute ones where they are.
fn broker_path(src: &str) -> String {
    if src.starts_with('/') {
        src.to_string()
    } else {
        format!("{BROKER_CAGE_DIR}/{}", src.trim_end_matches('/'))
    }
}

/// The `broker` sidecar of a service with sandboxes, and the pod volumes only it uses.
fn broker_container(plan: &Plan, s: &Service, comment: &mut Vec<String>) -> (Value, Vec<Value>) {
    let req = plan.req;
    let Some(sb) = &s.sandboxes else {
        return (Value::Null, Vec::new());
    };
    let config = format!("{BROKER_CAGE_DIR}/{CONFIG_DIR}/cage.toml");
    let mut mounts = vec![
        json!({ "name": "broker-dir", "mountPath": BROKER_DIR }),
        json!({ "name": "broker-cage", "mountPath": format!("{BROKER_CAGE_DIR}/{CONFIG_DIR}"), "readOnly": true }),
        json!({ "name": "broker-tmp", "mountPath": "/tmp" }),
    ];
    // cage.toml and the service's config directories, as one read-only tree at /cage/config.
    let mut sources = vec![
        json!({ "configMap": { "name": CAGE_CONFIGMAP, "items": [{ "key": "cage.toml", "path": "cage.toml" }] } }),
    ];
    for (src, _, ro) in &s.mounts {
        match &plan.mount_backing[src] {
            Backing::ConfigMap(cm) => {
                let below = src
                    .trim_end_matches('/')
                    .strip_prefix(CONFIG_DIR)
                    .unwrap_or_default()
                    .trim_start_matches('/');
                let files = req
                    .config_dirs
                    .iter()
                    .find(|d| d.src == *src)
                    .map(|d| d.files.as_slice())
                    .unwrap_or_default();
                let items: Vec<Value> = files
                    .iter()
                    .map(|(f, _)| {
                        let path = if below.is_empty() {
                            f.clone()
                        } else {
                            format!("{below}/{f}")
                        };
                        json!({ "key": f, "path": path })
                    })
                    .filter(|i| i["path"] != "cage.toml")
                    .collect();
                if !items.is_empty() {
                    sources.push(json!({ "configMap": { "name": cm, "items": items } }));
                }
            }
            backing @ Backing::Claim(_) => {
                let (name, _) = pod_volume(backing);
                mounts
                    .push(json!({ "name": name, "mountPath": broker_path(src), "readOnly": *ro }));
            }
        }
    }
    for (vol, _) in &s.volumes {
        let (name, _) = pod_volume(&Backing::Claim(plan.volume_claims[vol].clone()));
        mounts.push(
            json!({ "name": name, "mountPath": format!("{BROKER_CAGE_DIR}/{VOLUMES_DIR}/{vol}") }),
        );
    }
    // Unconfined with a RuntimeClass too: RuntimeDefault is the CRI implementation's profile
    // (containerd's, CRI-O's), which the class's OCI runtime does not change, and it refuses
    // unshare/clone of namespaces without CAP_SYS_ADMIN (tests/oci_engines.rs shows it with
    // the cagerun handler).
    let seccomp = "Unconfined";
    let mut security = hardened(DEFAULT_USER);
    security["seccompProfile"] = json!({ "type": seccomp });
    security["procMount"] = json!("Unmasked");
    // Limited to all its sandboxes together; it asks the scheduler for one sandbox.
    let memory = sb.memory_total.saturating_add(BROKER_OVERHEAD);
    let request = sb.memory.saturating_add(BROKER_OVERHEAD);
    let container = json!({
        "name": BROKER_CONTAINER,
        "image": req.broker_image,
        "command": ["cagerun", "broker", "--config", config, "--service", s.name, "--dir", BROKER_DIR],
        "securityContext": security,
        "resources": {
            "limits": { "memory": quantity(memory) },
            "requests": { "memory": quantity(request) },
        },
        "volumeMounts": mounts,
    });
    let trees: Vec<String> = sb
        .images
        .iter()
        .map(|(image, tree)| {
            if tree == "host" {
                format!("{image} = the broker image's own root")
            } else {
                format!("{image} = {}", broker_path(tree))
            }
        })
        .collect();
    comment.push(format!(
        "Tool sandboxes: OpenClaw's `docker` is cagerun's shim at {SHIM_DIR} (first on PATH, read-only);\n\
         the `{BROKER_CONTAINER}` sidecar (`cagerun broker`) makes each sandbox inside this pod with the policy of cage.toml.\n\
         What the pod needs for it:\n\
         - the image {image} holding the static cagerun binary on PATH and the sandbox trees: {trees};\n\
         - hostUsers: false (a user namespace of its own; the node's runtime must support it) and\n\
         \x20 procMount: Unmasked (a fresh /proc in a nested user+pid namespace is refused under masked paths);\n\
         - seccomp {seccomp}: the RuntimeDefault profile forbids unshare/clone of namespaces without CAP_SYS_ADMIN\n\
         \x20 (a RuntimeClass does not change it: it is the container runtime's); the sandboxes get cagerun's own filter;\n\
         - AppArmor unconfined for the sidecar (container runtimes' default profile forbids mount);\n\
         - still uid {uid}, no capabilities, allowPrivilegeEscalation false, a read-only root;\n\
         - the service's mounts and volumes where the broker resolves them (below {BROKER_CAGE_DIR}).\n\
         Sandbox memory: {total} in all (the sidecar's limit, plus {overhead} for the broker; it requests one sandbox's).",
        image = req.broker_image,
        trees = trees.join(", "),
        uid = DEFAULT_USER.uid,
        total = quantity(sb.memory_total),
        overhead = quantity(BROKER_OVERHEAD),
    ));
    let volumes = vec![
        json!({ "name": "broker-dir", "emptyDir": { "medium": "Memory", "sizeLimit": "256Mi" } }),
        json!({ "name": "broker-cage", "projected": { "sources": sources } }),
        tmpfs_volume("broker-tmp", DEFAULT_TMPFS_SIZE),
    ];
    (container, volumes)
}

/// The manifests as one multi-document YAML stream, each preceded by its comment.
pub fn to_yaml(header: &str, manifests: &[Manifest]) -> Result<String, KubeError> {
    let mut out = String::new();
    let comment = |out: &mut String, text: &str| {
        for line in text.lines() {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
        }
    };
    comment(&mut out, header);
    for m in manifests {
        out.push_str("---\n");
        comment(&mut out, &m.comment);
        out.push_str(
            &serde_norway::to_string(&m.body).map_err(|e| KubeError::Yaml(e.to_string()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cage::parse_cage;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The shape of config/cage.toml, as interpolated (the token is in the gateway's env).
    fn cage_text() -> String {
        format!(
            r#"
name = "clawbot"
generate = ["OPENCLAW_GATEWAY_TOKEN"]
models = {{ volume = "ollama", pull = ["qwen3:8b"] }}

[services.ollama]
image = "docker.io/ollama/ollama:0.12.6"
command = ["/bin/ollama", "serve"]
env = {{ OLLAMA_HOST = "0.0.0.0:11434" }}
volumes = ["ollama:/models"]
tmpfs = [{{ dst = "/tmp", size = "256m" }}]
healthcheck = {{ http = ":11434/api/version", interval = "2s", start_period = "60s" }}
resources = {{ memory = "24g" }}

[services.onboard]
image = "ghcr.io/openclaw/openclaw:2026.9.6"
once = true
user = "1000"
mounts = [{{ src = "config/openclaw", dst = "/config", ro = false }}]
volumes = ["state:/state"]

[services.cli]
image = "ghcr.io/openclaw/openclaw:2026.9.6"
on_demand = true
network = "service:gateway"

[services.gateway]
image = "ghcr.io/openclaw/openclaw:2026.9.6"
user = "1000"
command = ["node", "openclaw.mjs", "gateway", "run"]
env = {{ OPENCLAW_GATEWAY_TOKEN = "{TOKEN}", HOME = "/home/node" }}
mounts = [
  {{ src = "config/openclaw", dst = "/config" }},
  {{ src = "workspace", dst = "/workspace", ro = false }},
]
volumes = ["state:/state"]
ports = ["127.0.0.1:18789:18789"]
depends_on = [{{ service = "ollama", healthy = true }}, "onboard"]
healthcheck = {{ http = ":18789/healthz", interval = "2s", start_period = "90s" }}
resources = {{ memory = "2g", pids = 512, cpus = 1.5 }}
internet = true

[services.gateway.sandboxes]
images = {{ "openclaw-sandbox:bookworm-slim" = "rootfs/openclaw-sandbox" }}
memory = "1g"
max = 4
"#
        )
    }

    fn secrets() -> Vec<(String, String)> {
        vec![("OPENCLAW_GATEWAY_TOKEN".into(), TOKEN.into())]
    }

    fn config_dirs() -> Vec<ConfigDir> {
        vec![ConfigDir {
            src: "config/openclaw".into(),
            files: vec![("openclaw.json".into(), b"{\"gateway\":{}}".to_vec())],
        }]
    }

    fn export_of(text: &str, runtime_class: Option<&str>) -> Result<Export, KubeError> {
        let cage = parse_cage("cage.toml", text).unwrap();
        let env_files = BTreeMap::new();
        let dirs = config_dirs();
        let secrets = secrets();
        render(&KubeRequest {
            cage: &cage,
            namespace: "clawbot",
            secrets: &secrets,
            env_files: &env_files,
            config_dirs: &dirs,
            broker_cage_toml: "name = \"clawbot\"\n",
            broker_image: "localhost/cagerun-broker:test",
            runtime_class,
        })
    }

    fn export() -> Export {
        export_of(&cage_text(), None).unwrap()
    }

    fn find<'a>(e: &'a Export, kind: &str, name: &str) -> &'a Value {
        e.manifests
            .iter()
            .map(|m| &m.body)
            .find(|b| b["kind"] == kind && b["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn pod(workload: &Value) -> &Value {
        &workload["spec"]["template"]["spec"]
    }

    fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
        pod(workload)["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn pods(e: &Export) -> Vec<&Value> {
        e.manifests
            .iter()
            .map(|m| &m.body)
            .filter(|b| {
                matches!(
                    b["kind"].as_str(),
                    Some("Deployment" | "StatefulSet" | "Job")
                )
            })
            .collect()
    }

    #[test]
    fn every_container_carries_the_cage_hardening() {
        let e = export();
        let workloads = pods(&e);
        assert_eq!(
            workloads.len(),
            2,
            "ollama and gateway; onboard and cli are not deployed"
        );
        let mut seen = 0;
        for w in workloads {
            let p = pod(w);
            assert_eq!(p["automountServiceAccountToken"], false);
            assert_eq!(p["securityContext"]["runAsNonRoot"], true);
            assert_eq!(
                p["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            for c in p["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
                assert_eq!(sc["runAsUser"], 1000, "{}", c["name"]);
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", c["name"]);
                assert!(sc["seccompProfile"]["type"].is_string(), "{}", c["name"]);
                let tmp = c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["mountPath"] == "/tmp")
                    .unwrap_or_else(|| panic!("{} has no /tmp", c["name"]));
                let vol = p["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == tmp["name"])
                    .unwrap();
                assert_eq!(vol["emptyDir"]["medium"], "Memory");
                assert!(vol["emptyDir"]["sizeLimit"].is_string());
                seen += 1;
            }
        }
        assert_eq!(seen, 3, "ollama, gateway and the broker");
        let ollama = find(&e, "StatefulSet", "ollama");
        let vols = pod(ollama)["volumes"].as_array().unwrap();
        let tmp = vols.iter().find(|v| v["name"] == "tmpfs-tmp").unwrap();
        assert_eq!(
            tmp["emptyDir"]["sizeLimit"], "256Mi",
            "the service's own /tmp size"
        );
        assert_eq!(
            container(ollama, "ollama")["resources"]["limits"]["memory"],
            "24Gi"
        );
        let gw = container(find(&e, "Deployment", "gateway"), "gateway");
        assert_eq!(gw["resources"]["limits"]["cpu"], "1500m");
        assert_eq!(gw["resources"]["requests"]["memory"], "2Gi");
    }

    #[test]
    fn the_token_is_referenced_never_inlined() {
        let e = export();
        let secret = find(&e, "Secret", SECRET_NAME);
        assert_eq!(secret["stringData"]["OPENCLAW_GATEWAY_TOKEN"], TOKEN);
        for m in &e.manifests {
            if m.body["kind"] != "Secret" {
                assert!(!m.body.to_string().contains(TOKEN), "{}", m.body["kind"]);
            }
        }
        let gw = container(find(&e, "Deployment", "gateway"), "gateway");
        let env = gw["env"].as_array().unwrap();
        let token = env
            .iter()
            .find(|v| v["name"] == "OPENCLAW_GATEWAY_TOKEN")
            .unwrap();
        assert_eq!(
            token["valueFrom"]["secretKeyRef"],
            json!({ "name": SECRET_NAME, "key": "OPENCLAW_GATEWAY_TOKEN" })
        );
        assert!(token.get("value").is_none());
        let yaml = to_yaml("h", &e.manifests).unwrap();
        assert_eq!(yaml.matches(TOKEN).count(), 1, "once, in the Secret");
    }

    #[test]
    fn a_secret_inside_a_longer_value_or_an_argument_goes_through_a_variable() {
        let text = cage_text()
            .replace(
                "HOME = \"/home/node\"",
                &format!("HOME = \"/home/node\", URL = \"http://x/#token={TOKEN}&cost=$5\""),
            )
            .replace(
                "\"gateway\", \"run\"]",
                &format!("\"gateway\", \"run\", \"--token={TOKEN}\", \"$(id)\"]"),
            );
        let e = export_of(&text, None).unwrap();
        let gw = container(find(&e, "Deployment", "gateway"), "gateway");
        let env = gw["env"].as_array().unwrap();
        assert_eq!(
            env[0]["name"], "CAGERUN_SECRET_OPENCLAW_GATEWAY_TOKEN",
            "defined first"
        );
        assert_eq!(
            env[0]["valueFrom"]["secretKeyRef"]["key"],
            "OPENCLAW_GATEWAY_TOKEN"
        );
        let url = env.iter().find(|v| v["name"] == "URL").unwrap();
        assert_eq!(
            url["value"],
            "http://x/#token=$(CAGERUN_SECRET_OPENCLAW_GATEWAY_TOKEN)&cost=$$5"
        );
        let cmd = gw["command"].as_array().unwrap();
        assert_eq!(cmd[4], "--token=$(CAGERUN_SECRET_OPENCLAW_GATEWAY_TOKEN)");
        assert_eq!(
            cmd[5], "$$(id)",
            "a literal $( is not expanded by Kubernetes"
        );
    }

    #[test]
    fn the_model_store_is_a_stateful_set_with_its_volume_as_claim_template() {
        let e = export();
        let sts = find(&e, "StatefulSet", "ollama");
        assert_eq!(sts["spec"]["serviceName"], "ollama");
        let templates = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
        assert_eq!(templates.len(), 1);
        assert_eq!(templates[0]["metadata"]["name"], "ollama");
        let mount = container(sts, "ollama")["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/models")
            .unwrap()
            .clone();
        assert_eq!(mount["name"], "ollama");
        // No separate claim for it; the others are claims.
        assert!(e
            .manifests
            .iter()
            .all(|m| !(m.body["kind"] == "PersistentVolumeClaim"
                && m.body["metadata"]["name"] == "ollama")));
        find(&e, "PersistentVolumeClaim", "state");
        find(&e, "PersistentVolumeClaim", "workspace");
        find(&e, "Service", "ollama");
        let readiness = &container(sts, "ollama")["readinessProbe"];
        assert_eq!(
            readiness["httpGet"],
            json!({ "path": "/api/version", "port": 11434 })
        );
        assert_eq!(readiness["periodSeconds"], 2);
        assert_eq!(
            container(sts, "ollama")["startupProbe"]["failureThreshold"],
            33
        );
    }

    #[test]
    fn network_policies_deny_by_default_and_allow_the_dependency_edges() {
        let e = export();
        let deny = find(&e, "NetworkPolicy", "default-deny");
        assert_eq!(deny["spec"]["podSelector"], json!({}));
        assert_eq!(deny["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());

        let ollama = find(&e, "NetworkPolicy", "ollama");
        let ingress = ollama["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0]["from"][0]["podSelector"]["matchLabels"][LABEL_NAME],
            "gateway"
        );
        assert_eq!(
            ingress[0]["ports"],
            json!([{ "protocol": "TCP", "port": 11434 }])
        );
        assert!(
            ollama["spec"].get("egress").is_none(),
            "ollama reaches nothing"
        );

        let gw = find(&e, "NetworkPolicy", "gateway");
        assert!(
            gw["spec"].get("ingress").is_none(),
            "127.0.0.1 ports admit nothing"
        );
        let egress = gw["spec"]["egress"].as_array().unwrap();
        assert_eq!(
            egress[0]["to"][0]["podSelector"]["matchLabels"][LABEL_NAME],
            "ollama"
        );
        assert_eq!(
            egress[0]["ports"],
            json!([{ "protocol": "TCP", "port": 11434 }])
        );
        let internet = &egress[1]["to"][0]["ipBlock"];
        assert_eq!(internet["cidr"], "0.0.0.0/0");
        let except = internet["except"].as_array().unwrap();
        for private in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "100.64.0.0/10",
        ] {
            assert!(except.contains(&json!(private)), "{private}");
        }
        assert_eq!(
            egress[2]["ports"][0],
            json!({ "protocol": "UDP", "port": 53 })
        );
    }

    #[test]
    fn an_internet_list_allows_only_its_addresses() {
        let text = cage_text().replace(
            "internet = true",
            "internet = [\"api.telegram.org\", \"203.0.113.7:8443\", \"198.51.100.1\"]",
        );
        let e = export_of(&text, None).unwrap();
        let gw = find(&e, "NetworkPolicy", "gateway");
        let egress = gw["spec"]["egress"].as_array().unwrap();
        let blocks: Vec<(&Value, &Value)> = egress
            .iter()
            .filter(|r| r["to"][0].get("ipBlock").is_some())
            .map(|r| (&r["to"][0]["ipBlock"]["cidr"], &r["ports"]))
            .collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, "203.0.113.7/32");
        assert_eq!(blocks[0].1, &json!([{ "protocol": "TCP", "port": 8443 }]));
        assert_eq!(blocks[1].0, "198.51.100.1/32");
        assert_eq!(
            blocks[1].1,
            &json!([{ "protocol": "TCP", "port": 80 }, { "protocol": "TCP", "port": 443 }])
        );
        assert!(!gw.to_string().contains("0.0.0.0/0"));
        let m = e.manifests.iter().find(|m| m.body == *gw).unwrap();
        assert!(m.comment.contains("api.telegram.org") && m.comment.contains("egress proxy"));
        assert!(e.notes.iter().any(|n| n.contains("api.telegram.org")));
    }

    #[test]
    fn jobs_run_once_and_on_demand_ones_are_not_deployed() {
        let e = export();
        assert!(e.notes.iter().any(|n| n.starts_with("cli is on_demand")));
        assert!(e
            .notes
            .iter()
            .any(|n| n.starts_with("onboard (once) writes config/openclaw")));
        // A once job that writes only its volume is a Job.
        let text = cage_text().replace(
            "mounts = [{ src = \"config/openclaw\", dst = \"/config\", ro = false }]\n",
            "",
        );
        let e = export_of(&text, None).unwrap();
        let job = find(&e, "Job", "onboard");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(pod(job)["restartPolicy"], "Never");
        assert_eq!(pod(job)["automountServiceAccountToken"], false);
    }

    #[test]
    fn the_broker_sidecar_gets_what_nested_sandboxes_need_and_nothing_more() {
        let e = export();
        let gw = find(&e, "Deployment", "gateway");
        assert_eq!(pod(gw)["hostUsers"], false);
        assert!(pod(gw).get("runtimeClassName").is_none());
        let broker = container(gw, BROKER_CONTAINER);
        let sc = &broker["securityContext"];
        assert_eq!(sc["seccompProfile"]["type"], "Unconfined");
        assert_eq!(sc["procMount"], "Unmasked");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            broker["command"],
            json!([
                "cagerun",
                "broker",
                "--config",
                "/cage/config/cage.toml",
                "--service",
                "gateway",
                "--dir",
                BROKER_DIR
            ])
        );
        assert_eq!(
            broker["resources"]["limits"]["memory"], "4224Mi",
            "4 sandboxes of 1g + 128Mi"
        );
        assert!(
            broker.get("env").is_none(),
            "the broker never gets the token"
        );
        let mounts = broker["volumeMounts"].as_array().unwrap();
        let at = |path: &str| mounts.iter().find(|m| m["mountPath"] == path).cloned();
        assert_eq!(at("/cage/workspace").unwrap()["readOnly"], false);
        assert!(at("/cage/.cagerun/volumes/state").is_some());
        assert!(at("/cage/config").is_some());
        let gateway = container(gw, "gateway");
        let shim = gateway["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == SHIM_DIR)
            .unwrap()
            .clone();
        assert_eq!(
            shim,
            json!({ "name": "broker-dir", "mountPath": SHIM_DIR, "readOnly": true })
        );
        let path = gateway["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "PATH")
            .unwrap()
            .clone();
        assert_eq!(path["value"], format!("{SHIM_DIR}:{DEFAULT_PATH}"));
        let projected = pod(gw)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "broker-cage")
            .unwrap()
            .clone();
        let sources = projected["projected"]["sources"].as_array().unwrap();
        assert_eq!(
            sources[1]["configMap"]["items"][0]["path"],
            "openclaw/openclaw.json"
        );
        find(&e, "ConfigMap", CAGE_CONFIGMAP);
        let ns = find(&e, "Namespace", "clawbot");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "privileged"
        );
        // The ollama pod has none of it.
        let ollama = pod(find(&e, "StatefulSet", "ollama"));
        assert!(ollama.get("hostUsers").is_none());

        let e = export_of(&cage_text(), Some("cagerun")).unwrap();
        let gw = find(&e, "Deployment", "gateway");
        assert_eq!(pod(gw)["runtimeClassName"], "cagerun");
        let sc = &container(gw, BROKER_CONTAINER)["securityContext"];
        assert_eq!(sc["seccompProfile"]["type"], "Unconfined");
        assert_eq!(
            pod(find(&e, "StatefulSet", "ollama"))["runtimeClassName"],
            "cagerun"
        );
    }

    #[test]
    fn without_sandboxes_the_namespace_enforces_restricted() {
        let text = cage_text().replace(
            "[services.gateway.sandboxes]\nimages = { \"openclaw-sandbox:bookworm-slim\" = \"rootfs/openclaw-sandbox\" }\nmemory = \"1g\"\nmax = 4\n",
            "",
        );
        let e = export_of(&text, None).unwrap();
        let ns = find(&e, "Namespace", "clawbot");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        let gw = find(&e, "Deployment", "gateway");
        assert_eq!(pod(gw)["containers"].as_array().unwrap().len(), 1);
        assert!(pod(gw).get("hostUsers").is_none());
    }

    #[test]
    fn what_cannot_be_exported_is_refused_with_the_reason() {
        let text = cage_text().replace("max = 4\n", "max = 4\ninternet = [\"pypi.org\"]\n");
        assert_eq!(
            export_of(&text, None).unwrap_err(),
            KubeError::SandboxInternet {
                service: "gateway".into()
            }
        );
        let text = cage_text().replace("user = \"1000\"\ncommand", "user = \"node\"\ncommand");
        assert!(matches!(
            export_of(&text, None).unwrap_err(),
            KubeError::User { .. }
        ));
        // The token in a config file would land in a ConfigMap.
        let cage = parse_cage("cage.toml", &cage_text()).unwrap();
        let dirs = vec![ConfigDir {
            src: "config/openclaw".into(),
            files: vec![(
                "openclaw.json".into(),
                format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
            )],
        }];
        let secrets = secrets();
        let err = render(&KubeRequest {
            cage: &cage,
            namespace: "clawbot",
            secrets: &secrets,
            env_files: &BTreeMap::new(),
            config_dirs: &dirs,
            broker_cage_toml: "",
            broker_image: "b",
            runtime_class: None,
        })
        .unwrap_err();
        assert!(matches!(err, KubeError::SecretInConfig { .. }), "{err}");
        let err = render(&KubeRequest {
            cage: &cage,
            namespace: "Bad_NS",
            secrets: &secrets,
            env_files: &BTreeMap::new(),
            config_dirs: &config_dirs(),
            broker_cage_toml: "",
            broker_image: "b",
            runtime_class: None,
        })
        .unwrap_err();
        assert_eq!(err, KubeError::Namespace("Bad_NS".into()));
        let short = vec![("OPENCLAW_GATEWAY_TOKEN".to_string(), "ab".to_string())];
        let err = render(&KubeRequest {
            cage: &cage,
            namespace: "clawbot",
            secrets: &short,
            env_files: &BTreeMap::new(),
            config_dirs: &config_dirs(),
            broker_cage_toml: "",
            broker_image: "b",
            runtime_class: None,
        })
        .unwrap_err();
        assert_eq!(err, KubeError::ShortSecret("OPENCLAW_GATEWAY_TOKEN".into()));
    }

    #[test]
    fn the_yaml_is_deterministic_with_comments_above_each_document() {
        let a = to_yaml("header\n\nline", &export().manifests).unwrap();
        let b = to_yaml("header\n\nline", &export().manifests).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("# header\n#\n# line\n---\n"));
        assert!(a.contains("\n---\n# Nothing in or out"));
    }

    #[test]
    fn quantities_and_names() {
        assert_eq!(quantity(24 << 30), "24Gi");
        assert_eq!(quantity(256 << 20), "256Mi");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(cpu_quantity(0.0001), "1m");
        assert_eq!(dns_label("Clawbot Test_1"), "clawbot-test-1");
        assert_eq!(dns_label("/var/cache/x"), "var-cache-x");
        assert_eq!(
            dns_label("tmpfs-/home/node/.cache"),
            "tmpfs-home-node-cache"
        );
        assert_eq!(seconds(500), 1);
        assert_eq!(literal("a$b$$"), "a$$b$$$$");
    }
}
