//! The layer compatibility corpus: layers as real tools write them (python's tarfile in
//! ustar/GNU/PAX formats, GNU tar's sparse formats, `umoci insert`/`repack`), one image per
//! shape in an OCI layout (tests/support/layer_corpus.py). Each is unpacked by the real
//! `umoci unpack` (as root: the image's own owners, modes and device nodes) and imported by
//! cagerun as root and as the unprivileged test user; the trees are compared entry by entry:
//! type, mode bits (setuid/setgid/sticky too), size, content hash, link target, hardlink
//! identity, owner (the image's ids, read back through the mapping cagerun unpacked with),
//! extended attributes and mtime (seconds).
//!
//! Where cagerun deliberately differs from umoci, [`expected`] says so, with the reason:
//! - setuid/setgid bits on non-directories are dropped: the tree lies on the host, owned by
//!   subordinate ids; a setuid file there would let any host user who reaches it run as
//!   that id (inside, no_new_privs makes the bits inert anyway);
//! - device nodes are not created (as root they would be real host devices in a tree
//!   hostile code controls; rootless, mknod is refused); the runtime provides /dev;
//! - only `user.*` extended attributes are set: `security.capability` would give the file
//!   host capabilities (as root) and `trusted.*`/`security.*` need host privileges;
//! - owners beyond 65535 (outside the mapped range) become the image's root;
//! - GNU tar's old sparse type ('S'), which umoci 0.4.7 refuses, unpacks as GNU tar does;
//! - a relative name whose `..` leaves the root is refused (umoci clamps it);
//! - foreign (non-distributable) layers are left out, with a warning.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/support/layer_corpus.py"
);

#[derive(Debug, Clone, PartialEq)]
struct Meta {
    kind: String,
    mode: String,
    size: u64,
    sha256: String,
    link: String,
    hardlink: String,
    uid: i64,
    gid: i64,
    xattrs: BTreeMap<String, String>,
    mtime: i64,
}

type Tree = BTreeMap<String, Meta>;

struct Case {
    name: String,
    tag: Option<String>,
    reference: String,
    refused: Option<String>,
    umoci_refuses: bool,
    no_mtime: BTreeSet<String>,
    root_entry: bool,
    archive: Option<String>,
}

fn cases(out: &str) -> Vec<Case> {
    let v: Value = serde_json::from_str(out).expect("the corpus lists its cases as JSON");
    let s = |c: &Value, k: &str| c[k].as_str().map(str::to_string);
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: s(c, "name").unwrap(),
            tag: s(c, "tag"),
            reference: s(c, "ref").unwrap(),
            refused: s(c, "refused"),
            umoci_refuses: c["umoci_refuses"].as_bool().unwrap(),
            no_mtime: c["no_mtime"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect(),
            root_entry: c["root_entry"].as_bool().unwrap(),
            archive: s(c, "archive"),
        })
        .collect()
}

/// The tree below `root`, as layer_corpus.py's snapshot reads it.
fn snapshot(root: &Path) -> Tree {
    let out = Command::new("python3")
        .args([CORPUS, "snapshot"])
        .arg(root)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "snapshot of {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(path, e)| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            let n = |k: &str| e[k].as_i64().unwrap();
            let xattrs = e["xattrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let meta = Meta {
                kind: s("type"),
                mode: s("mode"),
                size: n("size") as u64,
                sha256: s("sha256"),
                link: s("link"),
                hardlink: s("hardlink"),
                uid: n("uid"),
                gid: n("gid"),
                xattrs,
                mtime: n("mtime"),
            };
            (path.clone(), meta)
        })
        .collect()
}

/// How the image's ids were placed on the host in `mode`, read backwards: host id -> image
/// id; an id outside every range reads as `-1 - host id`, which no image id equals.
fn image_id(mode: Mode, host: i64, gid: bool) -> i64 {
    let file = if gid { "/etc/subgid" } else { "/etc/subuid" };
    match mode {
        // As root: image id N is root's subordinate id base+N.
        Mode::Root => {
            let base = root_subordinate_base(file) as i64;
            if (base..base + 65536).contains(&host) {
                host - base
            } else {
                -1 - host
            }
        }
        // Rootless: the image's user 1000 is the caller, the rest the caller's subordinate
        // range around it (cage-spec's keep_id_map).
        Mode::Rootless { uid, gid: g } => {
            let caller = (if gid { g } else { uid }) as i64;
            let base = subordinate_base(uid, file) as i64;
            if host == caller {
                1000
            } else if (base..base + 1000).contains(&host) {
                host - base
            } else if (base + 1000..base + 65535).contains(&host) {
                host - base + 1
            } else {
                -1 - host
            }
        }
    }
}

fn subordinate_base(uid: u32, file: &str) -> u32 {
    let name = String::from_utf8(
        Command::new("id")
            .args(["-un", &uid.to_string()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}:", name.trim())))
        .unwrap_or_else(|| panic!("the test user has no range in {file} (useradd gives one)"))
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// What cagerun must produce, from umoci's tree as root: umoci's, apart from the
/// documented differences (see the module docs for each reason).
fn expected(case: &Case, umoci: &Tree) -> Tree {
    let mut want = Tree::new();
    for (path, m) in umoci {
        let mut m = m.clone();
        if m.kind == "c" || m.kind == "b" {
            continue; // device nodes are not created
        }
        if m.kind != "d" && !m.mode.is_empty() {
            let bits = u32::from_str_radix(m.mode.trim_start_matches("0o"), 8).unwrap();
            m.mode = format!("0o{:o}", bits & !0o6000); // no setuid/setgid files
        }
        m.xattrs.retain(|k, _| k.starts_with("user.")); // only user.* attributes
        for id in [&mut m.uid, &mut m.gid] {
            if *id > 65535 {
                *id = 0; // beyond the mapped range: the image's root
            }
        }
        want.insert(path.clone(), m);
    }
    // Mtimes umoci gives "now" (directories it made or changed without an entry for them),
    // and the root's unless the layer has an entry for it, are not compared.
    for (path, m) in want.iter_mut() {
        if case.no_mtime.contains(path) || (path == "." && !case.root_entry) {
            m.mtime = 0;
        }
    }
    want
}

fn compare(want: &Tree, got: &Tree) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => diffs.push(format!("{path}: missing (umoci: {w:?})")),
            Some(g) if g != w => diffs.push(format!("{path}:\n      want {w:?}\n      got  {g:?}")),
            Some(_) => {}
        }
    }
    for (path, g) in got {
        if !want.contains_key(path) {
            diffs.push(format!("{path}: not in umoci's tree (got {g:?})"));
        }
    }
    diffs
}

/// What cagerun must produce rootless, from umoci's rootless tree (`umoci unpack
/// --rootless` as the test user): the same documented differences, owners aside (umoci
/// gives the caller every file and records the image's owner in `user.rootlesscontainers`),
/// and umoci's stand-ins for device nodes (empty files) are not there either.
fn expected_rootless(case: &Case, umoci_rootless: &Tree, umoci: &Tree) -> Tree {
    let mut want = expected(case, umoci_rootless);
    want.retain(|path, _| {
        umoci
            .get(path)
            .is_none_or(|m| m.kind != "c" && m.kind != "b")
    });
    for m in want.values_mut() {
        m.xattrs.remove("user.rootlesscontainers");
        (m.uid, m.gid) = (0, 0);
    }
    want
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<(), String> {
    umoci_unpack_as(layout, tag, bundle, None)
}

/// `umoci unpack`, as root or (`user`) `umoci unpack --rootless` as that user.
fn umoci_unpack_as(
    layout: &Path,
    tag: &str,
    bundle: &Path,
    user: Option<(u32, u32)>,
) -> Result<(), String> {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.arg("--rootless").uid(uid).gid(gid).current_dir("/");
    }
    let out = cmd
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .expect("umoci (Debian package umoci; scripts/test installs it)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn layers_unpack_as_umoci_unpacks_them() {
    assert!(
        is_root(),
        "the corpus compares with umoci's unpack as root (real owners, device nodes): run as root, as scripts/test does"
    );
    let work = TempDir::new("layers", None);
    let out = Command::new("python3")
        .args([CORPUS, "build"])
        .arg(work.path())
        .current_dir(work.path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "building the corpus: {}\n(needs python3, GNU tar, zstd and umoci: scripts/test installs them)",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = cases(&String::from_utf8(out.stdout).unwrap());
    let layout = work.path().join("L");
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(work.path())
        .status()
        .unwrap();

    let mut failures: Vec<String> = Vec::new();
    // The references: umoci's tree of each reference image, as root.
    let mut refs: BTreeMap<String, Tree> = BTreeMap::new();
    for c in &cases {
        if refs.contains_key(&c.reference) || c.refused.is_some() {
            continue;
        }
        let bundle = work.path().join("umoci").join(&c.reference);
        match umoci_unpack(&layout, &c.reference, &bundle) {
            Ok(()) => {
                refs.insert(c.reference.clone(), snapshot(&bundle.join("rootfs")));
            }
            Err(e) => failures.push(format!("{}: umoci unpack failed: {e}", c.reference)),
        }
    }
    // Where umoci refuses a shape, the probe shows it really does.
    for c in cases.iter().filter(|c| c.umoci_refuses) {
        let bundle = work.path().join("umoci-refuses").join(&c.name);
        if umoci_unpack(&layout, c.tag.as_deref().unwrap(), &bundle).is_ok() {
            failures.push(format!(
                "{}: umoci unpacked it; the corpus says it refuses",
                c.name
            ));
        }
    }

    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("layers-out", Some((uid, gid)));
        let store = mine.path().join("store");
        let rootfs = mine.path().join("rootfs");
        for d in [&store, &rootfs] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
        for c in &cases {
            let src = match (&c.tag, &c.archive) {
                (Some(tag), _) => format!("oci:{}:{tag}", layout.display()),
                (None, Some(a)) => format!("docker-archive:{}", work.path().join(a).display()),
                (None, None) => unreachable!(),
            };
            let r = run(
                mode,
                &[
                    "image",
                    "import",
                    &src,
                    "--name",
                    &c.name,
                    "--store",
                    store.to_str().unwrap(),
                    "--rootfs-dir",
                    rootfs.to_str().unwrap(),
                ],
            );
            let ours = rootfs.join(&c.name);
            let tag = format!("{} [{mode:?}]", c.name);
            if let Some(why) = &c.refused {
                if r.code != 125 || !r.stderr.contains(why.as_str()) {
                    failures.push(format!(
                        "{tag}: expected a refusal naming {why:?}, got exit {}: {}",
                        r.code,
                        r.stderr.trim()
                    ));
                }
                if ours.exists() {
                    failures.push(format!("{tag}: a refused import left {}", ours.display()));
                }
                continue;
            }
            if r.code != 0 {
                failures.push(format!(
                    "{tag}: import failed ({}): {}",
                    r.code,
                    r.stderr.trim()
                ));
                continue;
            }
            if c.name.contains("foreign") && !r.stderr.contains("non-distributable") {
                failures.push(format!(
                    "{tag}: no message about the foreign layer left out: {}",
                    r.stderr.trim()
                ));
            }
            let Some(reference) = refs.get(&c.reference) else {
                continue; // umoci's failure is reported above
            };
            let mut got = snapshot(&ours);
            for m in got.values_mut() {
                m.uid = image_id(mode, m.uid, false);
                m.gid = image_id(mode, m.gid, true);
            }
            let want = expected(c, reference);
            for (path, m) in got.iter_mut() {
                if want.get(path).is_some_and(|w| w.mtime == 0) {
                    m.mtime = 0;
                }
            }
            let diffs = compare(&want, &got);
            if !diffs.is_empty() {
                failures.push(format!("{tag}:\n    {}", diffs.join("\n    ")));
            }
            // Rootless, also against umoci's own rootless unpack (owners aside).
            if let Mode::Rootless { uid, gid } = mode {
                let bundle = mine.path().join("umoci-rootless").join(&c.name);
                match umoci_unpack_as(&layout, &c.reference, &bundle, Some((uid, gid))) {
                    Ok(()) => {
                        let theirs = snapshot(&bundle.join("rootfs"));
                        let want = expected_rootless(c, &theirs, reference);
                        for m in got.values_mut() {
                            (m.uid, m.gid) = (0, 0);
                        }
                        let diffs = compare(&want, &got);
                        if !diffs.is_empty() {
                            failures.push(format!(
                                "{tag} against umoci --rootless:\n    {}",
                                diffs.join("\n    ")
                            ));
                        }
                    }
                    Err(e) => failures.push(format!("{tag}: umoci --rootless failed: {e}")),
                }
            }
        }
        // cagerun removes what it unpacked (rootless trees belong to subordinate ids).
        for c in &cases {
            if rootfs.join(&c.name).exists() {
                let rm = run(
                    mode,
                    &[
                        "image",
                        "rm-rootfs",
                        &c.name,
                        "--rootfs-dir",
                        rootfs.to_str().unwrap(),
                    ],
                );
                assert_eq!(rm.code, 0, "{}", rm.stderr);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) of {} differ from umoci:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
