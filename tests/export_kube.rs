//! `cagerun export kube` on the shipped cage (config/cage.toml) and the test stack
//! (tests/stack/cage.toml): the real binary writes the manifests, PyPI's kubernetes-validate
//! checks them strictly against the oldest and the newest Kubernetes it knows, and the
//! hardening of every container is read back from the YAML. Mutated copies (an unknown field,
//! a wrong type, a missing required field) show the validator does reject.
//!
//! Needs `CAGERUN_KUBE_VALIDATE` (the kubernetes-validate executable; scripts/test installs
//! it). No namespaces: the test runs as whoever runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

const TOKEN: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator() -> PathBuf {
    let exe = std::env::var_os("CAGERUN_KUBE_VALIDATE").unwrap_or_else(|| {
        panic!("CAGERUN_KUBE_VALIDATE is not set: it names the kubernetes-validate executable (scripts/test installs kubernetes-validate==1.37.0 under $CAGERUN_ASSETS/kubevalidate-1.37.0 and sets it)")
    });
    let exe = PathBuf::from(exe);
    assert!(
        exe.is_file(),
        "CAGERUN_KUBE_VALIDATE={} does not exist: run scripts/test (it installs kubernetes-validate)",
        exe.display()
    );
    exe
}

/// The oldest and the newest Kubernetes versions the installed validator knows.
fn versions(exe: &Path) -> (String, String) {
    let python = exe.parent().unwrap().join("python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import kubernetes_validate.utils as u; print(u.all_versions()[0], u.latest_version())",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(str::to_string);
    let (old, new) = (it.next().unwrap(), it.next().unwrap());
    assert_ne!(old, new, "two versions to check against");
    (old, new)
}

/// (status ok, the validator's output) for one file and version, strict.
fn validate(exe: &Path, version: &str, file: &Path) -> (bool, String) {
    let out = Command::new(exe)
        .args(["--strict", "-k", version])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A temp copy of a cage: config/cage.toml, config/openclaw/openclaw.json and a .env.
struct Cage(PathBuf);

impl Cage {
    fn new(tag: &str, cage_toml: &Path, openclaw_json: &Path, env: &str) -> Cage {
        let dir =
            std::env::temp_dir().join(format!("cagerun-test-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config/openclaw")).unwrap();
        std::fs::copy(cage_toml, dir.join("config/cage.toml")).unwrap();
        std::fs::copy(openclaw_json, dir.join("config/openclaw/openclaw.json")).unwrap();
        std::fs::write(dir.join(".env"), env).unwrap();
        Cage(dir)
    }
    fn config(&self) -> PathBuf {
        self.0.join("config/cage.toml")
    }
}

impl Drop for Cage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cagerun(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cagerun"))
        .args(args)
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .output()
        .expect("run cagerun")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn write_docs(path: &Path, docs: &[Value]) {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(d).unwrap());
    }
    std::fs::write(path, text).unwrap();
}

/// Every container of every workload: the cage's hardening, read back from the YAML.
fn assert_hardened(docs: &[Value]) -> usize {
    let mut containers = 0;
    for d in docs {
        if !matches!(
            d["kind"].as_str(),
            Some("Deployment" | "StatefulSet" | "Job")
        ) {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let volumes = pod["volumes"].as_array().unwrap();
        for c in pod["containers"].as_array().unwrap() {
            let who = format!("{name}/{}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["runAsUser"], 1000, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["privileged"], false, "{who}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{who}"
            );
            let seccomp = sc["seccompProfile"]["type"].as_str().unwrap();
            if c["name"] == "broker" {
                // Only the sandbox broker leaves RuntimeDefault (it makes namespaces).
                assert_eq!(seccomp, "Unconfined", "{who}");
                assert_eq!(sc["procMount"], "Unmasked", "{who}");
                assert_eq!(pod["hostUsers"], false, "{who}");
            } else {
                assert_eq!(seccomp, "RuntimeDefault", "{who}");
                assert!(sc.get("procMount").is_none(), "{who}");
            }
            let tmp = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == "/tmp")
                .unwrap_or_else(|| panic!("{who}: no /tmp"));
            let vol = volumes.iter().find(|v| v["name"] == tmp["name"]).unwrap();
            assert_eq!(vol["emptyDir"]["medium"], "Memory", "{who}");
            assert!(vol["emptyDir"]["sizeLimit"].is_string(), "{who}");
            containers += 1;
        }
    }
    containers
}

/// The token is in the Secret and nowhere else; the gateway references it.
fn assert_token_referenced(yaml: &str, docs: &[Value]) {
    assert_eq!(
        yaml.matches(TOKEN).count(),
        1,
        "the token once, in the Secret"
    );
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(secret["stringData"]["OPENCLAW_GATEWAY_TOKEN"], TOKEN);
    let gw = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "gateway")
        .unwrap();
    let env = gw["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "OPENCLAW_GATEWAY_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        secret["metadata"]["name"]
    );
}

/// Export, validate old and new, check hardening, then show mutations are rejected.
fn check(tag: &str, cage: &Cage) -> Vec<Value> {
    let exe = validator();
    let (old, new) = versions(&exe);
    let out_file = cage.0.join("manifests.yaml");
    let config = cage.config();
    let run = cagerun(&[
        "export",
        "kube",
        "--config",
        config.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{tag}: {stderr}");
    assert!(
        stderr.contains("holds the cage's secret OPENCLAW_GATEWAY_TOKEN"),
        "{tag}: {stderr}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "{tag}: the file with the secret is private"
    );
    let yaml = std::fs::read_to_string(&out_file).unwrap();
    // Deterministic: printing gives the same bytes.
    let again = cagerun(&["export", "kube", "--config", config.to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), yaml, "{tag}");

    for v in [&old, &new] {
        let (ok, text) = validate(&exe, v, &out_file);
        assert!(ok, "{tag} against {v}:\n{text}");
        assert!(!text.contains("WARN"), "{tag} against {v}:\n{text}");
        assert!(text.contains("passed"), "{tag} against {v}:\n{text}");
    }
    let docs = documents(&yaml);
    assert!(assert_hardened(&docs) >= 2, "{tag}");
    assert_token_referenced(&yaml, &docs);

    // Each mutation of the valid output must fail validation (against the newest version).
    let gw_index = docs
        .iter()
        .position(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "gateway")
        .unwrap();
    type Mutation = fn(&mut Value);
    let mutations: [(&str, Mutation); 3] = [
        ("an unknown field", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsRoot"] =
                Value::Bool(true)
        }),
        ("a wrong type", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] =
                Value::String("node".into())
        }),
        ("a missing required field", |d| {
            d["spec"].as_object_mut().unwrap().remove("selector");
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = docs.clone();
        mutate(&mut bad[gw_index]);
        let file = cage.0.join("mutated.yaml");
        write_docs(&file, &bad);
        let (ok, text) = validate(&exe, &new, &file);
        assert!(!ok, "{tag}: {what} passed validation:\n{text}");
        assert!(
            text.contains("deployment/gateway"),
            "{tag}: {what}:\n{text}"
        );
    }
    // The unmutated documents, written the same way, pass: the rejections are the mutations'.
    let file = cage.0.join("rewritten.yaml");
    write_docs(&file, &docs);
    let (ok, text) = validate(&exe, &new, &file);
    assert!(ok, "{tag}: rewritten:\n{text}");
    docs
}

#[test]
fn the_shipped_cage_exports_to_valid_hardened_manifests() {
    let repo = repo();
    let cage = Cage::new(
        "shipped",
        &repo.join("config/cage.toml"),
        &repo.join("config/openclaw/openclaw.json"),
        &format!("OPENCLAW_GATEWAY_TOKEN={TOKEN}\n"),
    );
    let docs = check("config/cage.toml", &cage);
    let kinds = |kind: &str| -> Vec<&str> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(kinds("StatefulSet"), ["ollama"], "the model store");
    assert_eq!(kinds("Deployment"), ["gateway"]);
    assert!(
        kinds("Job").is_empty(),
        "onboard writes config/: run locally"
    );
    assert_eq!(kinds("ConfigMap"), ["config-openclaw", "cagerun-cage"]);
    let deny = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "default-deny")
        .unwrap();
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    let gw_policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "gateway")
        .unwrap();
    let egress = gw_policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress[0]["ports"][0]["port"], 11434, "gateway → ollama");
    assert_eq!(
        egress[1]["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0",
        "internet = true"
    );
    // The broker's cage.toml keeps the token a variable.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "cagerun-cage")
        .unwrap();
    let toml = cm["data"]["cage.toml"].as_str().unwrap();
    assert!(
        toml.contains("\"${OPENCLAW_GATEWAY_TOKEN}\""),
        "{toml:.400}"
    );
}

#[test]
fn the_test_stack_exports_to_valid_hardened_manifests() {
    let repo = repo();
    let env = format!(
        "OPENCLAW_GATEWAY_TOKEN={TOKEN}\nLLAMA_BIN=/opt/assets/llama/bin\nMODEL_DIR=/opt/assets/models\nNODE_DIR=/opt/assets/node\nOPENCLAW_DIR=/opt/assets/openclaw/node_modules\n"
    );
    let cage = Cage::new(
        "stack",
        &repo.join("tests/stack/cage.toml"),
        &repo.join("tests/stack/openclaw.json"),
        &env,
    );
    let docs = check("tests/stack/cage.toml", &cage);
    let deployments: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(deployments, ["model", "scripted", "gateway"]);
    // `$(hostname)` in the scripted model's command stays literal for Kubernetes.
    let scripted = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "scripted")
        .unwrap();
    let env = scripted["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let cmd = env
        .iter()
        .find(|e| e["name"] == "SCRIPTED_COMMAND")
        .unwrap();
    assert!(cmd["value"].as_str().unwrap().contains("$$(hostname)"));
}
