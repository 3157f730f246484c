//! Images from disk: an OCI layout made by the real `umoci` is imported by cagerun (as root
//! and rootless), unpacked, compared with `umoci unpack` of the same image, and run with
//! `cagerun exec --rootfs`.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::registry::Registry;
use support::*;

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}{}\n(.ci/run installs umoci, skopeo and busybox-static)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A two-layer image: busybox and files, then a whiteout, a hardlink, a symlink and a
/// setuid bit that must not survive.
fn build_layout(dir: &Path) -> PathBuf {
    sh(
        r#"
        R=--rootless; [ "$(id -u)" = 0 ] && R=
        umoci init --layout L
        umoci new --image L:base
        umoci unpack $R --image L:base B >/dev/null
        mkdir -p B/rootfs/bin B/rootfs/etc B/rootfs/data B/rootfs/workspace B/rootfs/tmp B/rootfs/proc B/rootfs/dev B/rootfs/sys
        cp /bin/busybox B/rootfs/bin/busybox
        ln -s busybox B/rootfs/bin/sh
        echo hello > B/rootfs/hello
        echo gone > B/rootfs/data/gone
        echo keep > B/rootfs/data/keep
        if [ -z "$R" ]; then mkdir -p B/rootfs/home/app && echo mine > B/rootfs/home/app/f && chown -R 1000:1000 B/rootfs/home/app; fi
        umoci repack --image L:base B
        rm B/rootfs/data/gone
        ln B/rootfs/hello B/rootfs/hello-hard
        ln -s /hello B/rootfs/hello-sym
        echo suid > B/rootfs/suid && chmod 4755 B/rootfs/suid
        umoci repack --image L:base B
        chmod -R a+rX L
        "#,
        dir,
    );
    dir.join("L")
}

/// `cagerun image import SRC --name NAME --store STORE --rootfs-dir ROOTFS_DIR` as `mode`.
fn import(
    mode: Mode,
    src: &str,
    name: &str,
    store: impl AsRef<Path>,
    rootfs_dir: impl AsRef<Path>,
) -> Run {
    run(
        mode,
        &[
            "image",
            "import",
            src,
            "--name",
            name,
            "--store",
            store.as_ref().to_str().unwrap(),
            "--rootfs-dir",
            rootfs_dir.as_ref().to_str().unwrap(),
        ],
    )
}

/// (type, size, link target, permission bits) by path: what a tree looks like.
fn tree(root: &Path) -> BTreeMap<String, (char, u64, String, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, link) = if m.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ('d', String::new())
            } else {
                ('f', String::new())
            };
            let size = if kind == 'f' { m.len() } else { 0 };
            out.insert(rel, (kind, size, link, m.mode() & 0o777));
        }
    }
    out
}

/// umoci's rootless unpack of the layout's `base` image, as the tree cagerun must produce:
/// the same, except that setuid/setgid bits are dropped.
fn umoci_tree(work: &Path, layout: &Path) -> BTreeMap<String, (char, u64, String, u32)> {
    let reference = work.join("U");
    sh(
        &format!(
            "umoci unpack --rootless --image {}:base {} >/dev/null",
            layout.display(),
            reference.display()
        ),
        work,
    );
    let mut want = tree(&reference.join("rootfs"));
    want.get_mut("suid").unwrap().3 &= 0o777;
    want
}

#[test]
fn an_oci_layout_imports_unpacks_like_umoci_and_runs() {
    let work = TempDir::new("image", None);
    let layout = build_layout(work.path());
    let want = umoci_tree(work.path(), &layout);

    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("image-store", Some((uid, gid)));
        let store = mine.path().join("store");
        let rootfs_dir = mine.path().join("rootfs");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&rootfs_dir).unwrap();
        if is_root() {
            for d in [&store, &rootfs_dir] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
            }
        }
        let src = format!("oci:{}:base", layout.display());
        let (s, r) = (store.to_str().unwrap(), rootfs_dir.to_str().unwrap());
        let imp = import(mode, &src, "busy", s, r);
        assert_eq!(imp.code, 0, "{}", imp.stderr);
        let ours = rootfs_dir.join("busy");

        assert_eq!(tree(&ours), want);
        assert!(!ours.join("data/gone").exists(), "whiteout applied");
        assert_eq!(
            std::fs::metadata(ours.join("hello")).unwrap().ino(),
            std::fs::metadata(ours.join("hello-hard")).unwrap().ino()
        );
        assert_eq!(
            std::fs::metadata(ours.join("suid"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7000,
            0
        );

        // It runs.
        let out = run(
            mode,
            &[
                "exec",
                "--rootfs",
                ours.to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
                "cat /hello /hello-sym; ls /data",
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout, "hello\nhello\nkeep\n");

        // Listed, then removed with its blobs.
        let list = run(mode, &["images", "--store", s]);
        assert!(list.stdout.contains("busy"), "{}", list.stdout);
        let again = import(mode, &src, "busy", s, r);
        assert_eq!(
            again.code, 125,
            "importing over an existing rootfs is refused"
        );
        assert!(again.stderr.contains("already exists"), "{}", again.stderr);
        let rmi = run(mode, &["rmi", "busy", "--store", s]);
        assert_eq!(rmi.code, 0, "{}", rmi.stderr);
        assert_eq!(
            std::fs::read_dir(store.join("blobs/sha256"))
                .unwrap()
                .count(),
            0,
            "unused blobs collected"
        );
        let _ = cage_cleanup(&ours);
    }
}

/// A layer as `umoci insert SRC /` writes it: the root entry itself is named `/`, which
/// containerd, umoci and docker accept. (umoci 0.4.7's insert also ends its tar without the
/// end-of-archive blocks and leaves its last file's data unpadded: the source here ends with
/// a directory, so the layer is a well-formed tar apart from its `/`; the truncated case is
/// for the layer corpus.)
#[test]
fn a_layer_inserted_at_the_root_by_umoci_imports_like_umoci_unpacks_it() {
    let work = TempDir::new("image-insert", None);
    sh(
        r#"
        R=--rootless; [ "$(id -u)" = 0 ] && R=
        umoci init --layout L
        umoci new --image L:base
        mkdir -p S/etc S/opt/app
        echo inserted > S/etc/motd
        chmod 750 S/opt/app
        ln -s /etc/motd S/motd-link
        umoci insert $R --image L:base S /
        chmod -R a+rX L
        "#,
        work.path(),
    );
    // Probe validity: the layer really has the entry `/` (which cagerun refused before).
    let names = Command::new("sh")
        .arg("-ec")
        .arg("for b in L/blobs/sha256/*; do tar -tzf $b 2>/dev/null || true; done")
        .current_dir(work.path())
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names.lines().any(|l| l == "/") && names.lines().any(|l| l == "etc/motd"),
        "umoci wrote no root entry:\n{names}"
    );
    let layout = work.path().join("L");
    let reference = work.path().join("U");
    sh(
        &format!(
            "umoci unpack --rootless --image {}:base {} >/dev/null",
            layout.display(),
            reference.display()
        ),
        work.path(),
    );
    let want = tree(&reference.join("rootfs"));
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("image-insert-store", Some((uid, gid)));
        let (s, r) = (mine.path().join("store"), mine.path().join("rootfs"));
        let src = format!("oci:{}:base", layout.display());
        let imp = import(mode, &src, "inserted", &s, &r);
        assert_eq!(imp.code, 0, "{}", imp.stderr);
        let ours = r.join("inserted");
        assert_eq!(tree(&ours), want, "unpacked as umoci unpacks it");
        assert_eq!(
            std::fs::read_to_string(ours.join("etc/motd")).unwrap(),
            "inserted\n"
        );
        let _ = cage_cleanup(&ours);
    }
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_unpacked() {
    let work = TempDir::new("image-bad", None);
    let layout = build_layout(work.path());
    // Flip a byte in the biggest layer blob.
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("image-bad-store", Some((uid, gid)));
        let src = format!("oci:{}:base", layout.display());
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let r_ = import(mode, &src, "busy", &s, &r);
        assert_eq!(r_.code, 125);
        assert!(r_.stderr.contains("digest mismatch"), "{}", r_.stderr);
        assert!(!r.join("busy").exists(), "no partial rootfs");
        let kept: Vec<_> = std::fs::read_dir(s.join("blobs/sha256"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !kept
                .iter()
                .any(|n| biggest.file_name() == Some(n.as_os_str())),
            "the bad blob is not in the store"
        );
    }
}

fn cage_cleanup(p: &Path) -> std::io::Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(p).status();
    std::fs::remove_dir_all(p)
}

#[test]
fn pull_from_a_real_registry_resumes_and_recovers() {
    let work = TempDir::new("pull", None);
    let layout = build_layout(work.path());
    let want = umoci_tree(work.path(), &layout);
    let registry = Registry::start();
    let image = registry.push(&layout, "base", "busy:1");
    let docker_v2 = registry.push_as(&layout, "base", "busy:v2s2", "v2s2");

    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("pull-store", Some((uid, gid)));
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let (ss, rs) = (s.to_str().unwrap(), r.to_str().unwrap());
        let p = run(mode, &["pull", &image, "--store", ss, "--rootfs-dir", rs]);
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_eq!(tree(&r.join("busy")), want, "pulled like umoci unpacks");
        let out = run(
            mode,
            &[
                "exec",
                "--rootfs",
                r.join("busy").to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
                "cat /hello",
            ],
        );
        assert_eq!(out.stdout, "hello\n");
        // Docker's schema 2 media types pull the same tree.
        let p = run(
            mode,
            &[
                "pull",
                &docker_v2,
                "--name",
                "busy-v2",
                "--store",
                ss,
                "--rootfs-dir",
                rs,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_eq!(tree(&r.join("busy-v2")), want);

        // An interrupted pull left half of the biggest blob: the next pull resumes there.
        let blobs = s.join("blobs/sha256");
        let big = std::fs::read_dir(&blobs)
            .unwrap()
            .flatten()
            .max_by_key(|e| e.metadata().unwrap().len())
            .unwrap()
            .path();
        let bytes = std::fs::read(&big).unwrap();
        let partial = s.join("ingest").join(format!(
            "{}.partial",
            big.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&partial, &bytes[..bytes.len() / 2]).unwrap();
        std::os::unix::fs::chown(&partial, Some(uid), Some(gid)).ok();
        std::fs::remove_file(&big).unwrap();
        let p = run(
            mode,
            &[
                "pull",
                &image,
                "--name",
                "busy2",
                "--store",
                ss,
                "--rootfs-dir",
                rs,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert!(p.stderr.contains("resuming at"), "{}", p.stderr);
        assert_eq!(
            std::fs::read(&big).unwrap(),
            bytes,
            "the resumed blob is whole"
        );
        assert_eq!(tree(&r.join("busy2")), want);

        // A partial that is garbage is found out, dropped, and the blob fetched whole.
        std::fs::write(&partial, b"not the blob").unwrap();
        std::os::unix::fs::chown(&partial, Some(uid), Some(gid)).ok();
        std::fs::remove_file(&big).unwrap();
        let p = run(
            mode,
            &[
                "pull",
                &image,
                "--name",
                "busy3",
                "--store",
                ss,
                "--rootfs-dir",
                rs,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_eq!(std::fs::read(&big).unwrap(), bytes);
        assert!(!partial.exists());
        // A partial that is already whole (killed between the last byte and the rename).
        let small = std::fs::read_dir(&blobs)
            .unwrap()
            .flatten()
            .min_by_key(|e| e.metadata().unwrap().len())
            .unwrap()
            .path();
        let small_bytes = std::fs::read(&small).unwrap();
        let small_partial = s.join("ingest").join(format!(
            "{}.partial",
            small.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&small_partial, &small_bytes).unwrap();
        std::os::unix::fs::chown(&small_partial, Some(uid), Some(gid)).ok();
        std::fs::remove_file(&small).unwrap();
        let p = run(
            mode,
            &[
                "pull",
                &image,
                "--name",
                "busy4",
                "--store",
                ss,
                "--rootfs-dir",
                rs,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert_eq!(std::fs::read(&small).unwrap(), small_bytes);
        for n in ["busy", "busy2", "busy3", "busy4", "busy-v2"] {
            let _ = cage_cleanup(&r.join(n));
        }
    }
}

/// The same bundle through runc (a real OCI runtime) and through cagerun's engine: the
/// process must see the same identity, privileges, hostname, network and filesystem.
#[test]
fn a_bundle_runs_the_same_under_runc_and_cagerun() {
    assert!(is_root(), "runc runs bundles as root on this host (crun refuses the hybrid cgroup layout): run the tests as root, as .ci/run does");
    let work = TempDir::new("bundle", None);
    let layout = build_layout(work.path());
    let s = work.path().join("store");
    let r = work.path().join("rootfs");
    let b = work.path().join("bundle");
    let src = format!("oci:{}:base", layout.display());
    let imp = import(Mode::Root, &src, "busy", &s, &r);
    assert_eq!(imp.code, 0, "{}", imp.stderr);
    let facts = "id -u; id -g; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
                 hostname; ls /sys/class/net; (touch /x 2>/dev/null && echo root-writable) || echo root-read-only; \
                 cat /hello; ls /data; wc -c < /proc/keys; (echo 1 > /proc/sys/kernel/hostname) 2>/dev/null || echo proc-sys-read-only";
    let bun = run(
        Mode::Root,
        &[
            "bundle",
            "--image",
            "busy",
            "--store",
            s.to_str().unwrap(),
            "--rootfs-dir",
            r.to_str().unwrap(),
            "--out",
            b.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            facts,
        ],
    );
    assert_eq!(bun.code, 0, "{}", bun.stderr);

    let ours = run(Mode::Root, &["exec", "--bundle", b.to_str().unwrap()]);
    assert_eq!(ours.code, 0, "{}", ours.stderr);

    let id = unique("cagerun-test-");
    let state = work.path().join("runc-state");
    let out = Command::new("unshare")
        .args([
            "-m",
            "-u",
            "--propagation",
            "private",
            "--",
            "runc",
            "--root",
        ])
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc (Debian package runc; .ci/run installs it)");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", &id])
        .output();
    assert!(
        out.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        ours.stdout, theirs,
        "cagerun and runc show the process the same sandbox"
    );
    assert!(ours.stdout.contains("root-read-only") && ours.stdout.contains("proc-sys-read-only"));
    for ctrl in [
        "memory", "pids", "cpu", "devices", "freezer", "blkio", "cpuset", "systemd",
    ] {
        assert!(
            !Path::new("/sys/fs/cgroup").join(ctrl).join(&id).exists(),
            "runc left its {ctrl} cgroup"
        );
    }
    let _ = cage_cleanup(&r.join("busy"));
}

#[test]
fn an_ollama_model_lands_byte_identical_in_ollamas_layout() {
    let registry = Registry::start();
    let work = TempDir::new("model", None);
    // A tiny but well-formed GGUF (magic, version 3, no tensors, no metadata) and a tail.
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend(0u64.to_le_bytes());
    gguf.extend(0u64.to_le_bytes());
    gguf.extend((0..100_000u32).map(|i| (i % 251) as u8));
    let model_file = work.path().join("tiny.gguf");
    std::fs::write(&model_file, &gguf).unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/push_model.py");
    let host = format!("127.0.0.1:{}", registry.port);
    let pushed = Command::new("python3")
        .arg(&helper)
        .args([&host, "me/tiny", "1"])
        .arg(&model_file)
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let manifest = pushed.stdout;

    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("models", Some((uid, gid)));
        let m = mine.path().join("models");
        let ms = m.to_str().unwrap();
        let url = format!("http://{host}");
        let p = run(
            mode,
            &[
                "model",
                "pull",
                "me/tiny:1",
                "--registry",
                &url,
                "--models",
                ms,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        let digest = {
            use std::fmt::Write;
            let d = sha256_hex(&gguf);
            let mut s = String::new();
            write!(s, "sha256-{d}").unwrap();
            s
        };
        assert_eq!(
            std::fs::read(m.join("blobs").join(&digest)).unwrap(),
            gguf,
            "the model blob is byte-identical"
        );
        assert_eq!(
            std::fs::read(m.join(format!("manifests/{host}/me/tiny/1"))).unwrap(),
            manifest,
            "Ollama's manifest, as served"
        );
        let ls = run(mode, &["model", "ls", "--models", ms]);
        assert!(
            ls.stdout.contains(&format!("{host}/me/tiny:1")),
            "{}",
            ls.stdout
        );
        let rm = run(
            mode,
            &[
                "model",
                "rm",
                "me/tiny:1",
                "--registry",
                &url,
                "--models",
                ms,
            ],
        );
        assert_eq!(rm.code, 0, "{}", rm.stderr);
        assert_eq!(
            std::fs::read_dir(m.join("blobs")).unwrap().count(),
            0,
            "blobs collected"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        });
    String::from_utf8(out.unwrap().stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_pull_killed_half_way_resumes_and_the_store_stays_sound() {
    let work = TempDir::new("kill", None);
    // One big incompressible layer, so there is a moment when it is half downloaded.
    sh(
        r#"
        umoci init --layout L
        umoci new --image L:base
        umoci unpack --rootless --image L:base B >/dev/null
        mkdir -p B/rootfs/bin && cp /bin/busybox B/rootfs/bin/busybox
        head -c 48000000 /dev/urandom > B/rootfs/noise
        umoci repack --image L:base B
        chmod -R a+rX L
        "#,
        work.path(),
    );
    let registry = Registry::start();
    let image = registry.push(&work.path().join("L"), "base", "noise:1");
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("kill-store", Some((uid, gid)));
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let (ss, rs) = (s.to_str().unwrap(), r.to_str().unwrap());
        // Kill the pull the moment the big layer is partly on disk (watched, not guessed).
        let big_partial = |s: &Path| {
            std::fs::read_dir(s.join("ingest"))
                .map(|d| {
                    d.flatten().any(|e| {
                        e.metadata()
                            .map(|m| m.len() > 1_000_000 && m.len() < 40_000_000)
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false)
        };
        let mut caught = false;
        for _attempt in 0..5 {
            let mut child = cagerun_cmd(
                mode,
                &[
                    "pull",
                    &image,
                    "--name",
                    "n",
                    "--store",
                    ss,
                    "--rootfs-dir",
                    rs,
                ],
            )
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
            let pid = child.id() as i32;
            let start = std::time::Instant::now();
            while !big_partial(&s)
                && start.elapsed() < std::time::Duration::from_secs(20)
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            // `unshare` without --fork execs cagerun: the same pid in both modes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = child.wait();
            if big_partial(&s) && !r.join("n").exists() {
                caught = true;
                break;
            }
            let _ = std::fs::remove_dir_all(&s);
            let _ = cage_cleanup(&r.join("n"));
        }
        assert!(
            caught,
            "no kill landed while a layer was downloading (the probe needs a pull in flight)"
        );
        let p = run(
            mode,
            &[
                "pull",
                &image,
                "--name",
                "n",
                "--store",
                ss,
                "--rootfs-dir",
                rs,
            ],
        );
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert!(p.stderr.contains("resuming at"), "{}", p.stderr);
        // Every blob in the store hashes to its name.
        for e in std::fs::read_dir(s.join("blobs/sha256")).unwrap().flatten() {
            let hex = e.file_name().to_string_lossy().into_owned();
            assert_eq!(
                sha256_hex(&std::fs::read(e.path()).unwrap()),
                hex,
                "corrupt blob {hex}"
            );
        }
        assert_eq!(
            std::fs::metadata(r.join("n/noise")).unwrap().len(),
            48_000_000
        );
        let _ = cage_cleanup(&r.join("n"));
    }
}

#[test]
fn a_docker_archive_imports_like_the_layout_it_came_from() {
    let work = TempDir::new("archive", None);
    let layout = build_layout(work.path());
    let want = umoci_tree(work.path(), &layout);
    let archive = work.path().join("busy.tar");
    sh(
        &format!(
            "skopeo copy -q oci:{}:base docker-archive:{}:busy:1 && chmod a+r {}",
            layout.display(),
            archive.display(),
            archive.display()
        ),
        work.path(),
    );
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("archive-store", Some((uid, gid)));
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let src = format!("docker-archive:{}", archive.display());
        let imp = import(mode, &src, "busy", &s, &r);
        assert_eq!(imp.code, 0, "{}", imp.stderr);
        assert_eq!(tree(&r.join("busy")), want);
        assert!(!s
            .join(format!("ingest/archive-{}", std::process::id()))
            .exists());
        let _ = cage_cleanup(&r.join("busy"));
    }
}

#[test]
fn images_keep_their_ownership_through_the_mapping() {
    assert!(
        is_root(),
        "the test image needs a file owned by uid 1000: build it as root, as .ci/run does"
    );
    let work = TempDir::new("owner", None);
    let layout = build_layout(work.path());
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("owner-store", Some((uid, gid)));
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let (ss, rs) = (s.to_str().unwrap(), r.to_str().unwrap());
        let src = format!("oci:{}:base", layout.display());
        let imp = import(mode, &src, "own", ss, rs);
        assert_eq!(imp.code, 0, "{}", imp.stderr);
        let owner = |p: &str| {
            std::fs::symlink_metadata(r.join("own").join(p))
                .unwrap()
                .uid()
        };
        let inside = run(
            mode,
            &[
                "exec",
                "--rootfs",
                r.join("own").to_str().unwrap(),
                "--",
                "/bin/busybox",
                "stat",
                "-c",
                "%u",
                "/home/app/f",
                "/hello",
            ],
        );
        assert_eq!(inside.code, 0, "{}", inside.stderr);
        match mode {
            Mode::Root => {
                // Host ids are root's subordinate ids (image id N is base+N), never the
                // image's own host ids; inside, they are what the image said.
                let base = root_subordinate_base("/etc/subuid");
                assert_eq!((owner("home/app/f"), owner("hello")), (base + 1000, base));
                assert_eq!(inside.stdout, "1000\n0\n");
            }
            Mode::Rootless { uid, .. } => {
                let base = subordinate_base(uid);
                // The image's user is the caller, the image's root a subordinate id ...
                assert_eq!((owner("home/app/f"), owner("hello")), (uid, base));
                // ... and inside, both are what the image said.
                assert_eq!(inside.stdout, "1000\n0\n");
                // The caller cannot delete such files alone; cagerun can.
                let rm = run(mode, &["image", "rm-rootfs", "own", "--rootfs-dir", rs]);
                assert_eq!(rm.code, 0, "{}", rm.stderr);
                assert!(!r.join("own").exists());
            }
        }
        let _ = cage_cleanup(&r.join("own"));
    }
}

#[test]
fn a_service_bundle_carries_the_services_settings() {
    let work = TempDir::new("svc", None);
    let layout = build_layout(work.path());
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let cage = TempDir::new("cage", Some((uid, gid)));
        let c = cage.path();
        std::fs::create_dir_all(c.join("config")).unwrap();
        std::fs::create_dir_all(c.join("host-data")).unwrap();
        std::fs::write(c.join("host-data/readme"), "data\n").unwrap();
        std::fs::write(
            c.join("config/cage.toml"),
            r#"
[services.web]
image = "example.org/busy:1"
command = ["/bin/sh", "-c", "hostname; echo $GREETING; cat /data-ro/readme; (touch /data-ro/x 2>/dev/null && echo rw) || echo ro; touch /state/y && echo volume-writable; df -k /scratch | tail -1 | awk '{print $2}'"]
env = { GREETING = "hello" }
mounts = [{ src = "host-data", dst = "/data-ro" }]
volumes = ["state:/state"]
tmpfs = [{ dst = "/scratch", size = "8m" }]
resources = { memory = "256m", pids = 64 }
"#,
        )
        .unwrap();
        for p in [
            c.join("config"),
            c.join("config/cage.toml"),
            c.join("host-data"),
            c.join("host-data/readme"),
        ] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).ok();
        }
        let (s, r, b) = (c.join("store"), c.join("rootfs"), c.join("bundles/web"));
        let src = format!("oci:{}:base", layout.display());
        let imp = import(mode, &src, "busy", &s, &r);
        assert_eq!(imp.code, 0, "{}", imp.stderr);
        let cfg = c.join("config/cage.toml");
        let bun = run(
            mode,
            &[
                "bundle",
                "--service",
                "web",
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                s.to_str().unwrap(),
                "--rootfs-dir",
                r.to_str().unwrap(),
                "--out",
                b.to_str().unwrap(),
            ],
        );
        assert_eq!(bun.code, 0, "{}", bun.stderr);
        let out = run(mode, &["exec", "--bundle", b.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout, "web\nhello\ndata\nro\nvolume-writable\n8192\n");
        assert!(
            c.join(".cagerun/volumes/state/y").exists(),
            "the volume persists in the cage"
        );
        let missing = run(
            mode,
            &[
                "bundle",
                "--service",
                "nope",
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                s.to_str().unwrap(),
            ],
        );
        assert_eq!(missing.code, 125);
        assert!(
            missing.stderr.contains("no service \"nope\"") && missing.stderr.contains("web"),
            "{}",
            missing.stderr
        );
        let _ = cage_cleanup(&r.join("busy"));
    }
}

/// The caller's first subordinate uid (rootless images keep their root's files there).
fn subordinate_base(uid: u32) -> u32 {
    let name = String::from_utf8(
        Command::new("id")
            .args(["-un", &uid.to_string()])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::read_to_string("/etc/subuid")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{}:", name.trim())))
        .expect("the test user has subordinate ids (useradd gives them; .ci/run checks)")
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn build_runs_its_steps_as_root_of_the_tree_with_the_hosts_network_and_keeps_nothing_failed() {
    let work = TempDir::new("build", None);
    let layout = build_layout(work.path());
    let registry = Registry::start();
    let image = registry.push(&layout, "base", "busy:1");
    // A server on the host's 127.0.0.1: a build step reaches it (the build shares the host
    // network); the probe is valid from here first.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in server.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nfetched-ok\n");
        }
    });
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.ends_with("fetched-ok\n"));
    }
    let good = format!(
        r#"name = "sbx"
from = "{image}"
run = [
  "test $(id -u) = 0 && test $(hostname) = build",
  "echo built > /built && wget -q -O /fetched http://127.0.0.1:{port}/",
  "mkdir -p /home/sandbox && chown 1000:1000 /home/sandbox && echo sandbox:x:1000:1000::/home/sandbox:/bin/sh >> /etc/passwd",
]
"#
    );
    let bad = format!(
        "name = \"sbx\"\nfrom = \"{image}\"\nrun = [\"echo second > /built\", \"exit 3\"]\n"
    );
    for mode in modes() {
        let (uid, gid) = mode.caller_ids();
        let mine = TempDir::new("build-out", Some((uid, gid)));
        let s = mine.path().join("store");
        let r = mine.path().join("rootfs");
        let (ss, rs) = (s.to_str().unwrap(), r.to_str().unwrap());
        let recipe = mine.path().join("recipe.toml");
        std::fs::write(&recipe, &good).unwrap();
        std::fs::set_permissions(&recipe, std::fs::Permissions::from_mode(0o644)).unwrap();
        let build = || {
            run(
                mode,
                &[
                    "build",
                    recipe.to_str().unwrap(),
                    "--store",
                    ss,
                    "--rootfs-dir",
                    rs,
                ],
            )
        };
        let b = build();
        assert_eq!(b.code, 0, "{}", b.stderr);
        assert!(b.stderr.contains("step 3/3"), "{}", b.stderr);
        let tree = r.join("sbx");
        assert_eq!(
            std::fs::read_to_string(tree.join("fetched")).unwrap(),
            "fetched-ok\n"
        );
        let owner = |p: &str| std::fs::metadata(tree.join(p)).unwrap().uid();
        match mode {
            Mode::Root => {
                // As root the tree's ids are root's subordinate ids (image id N is base+N).
                let base = root_subordinate_base("/etc/subuid");
                assert_eq!(owner("built"), base, "the step's root is root's base id");
                assert_eq!(owner("home/sandbox"), base + 1000);
            }
            Mode::Rootless { uid, .. } => {
                assert_eq!(
                    owner("built"),
                    subordinate_base(uid),
                    "the step's root is a subordinate id"
                );
                assert_eq!(
                    owner("home/sandbox"),
                    uid,
                    "the image's user 1000 is the caller"
                );
            }
        }
        // The tree runs as an ordinary sandbox: its user, read-only, no network.
        let e = run(
            mode,
            &[
                "exec",
                "--rootfs",
                tree.to_str().unwrap(),
                "--",
                "/bin/sh",
                "-c",
                "id -u; cat /built; touch /built 2>&1",
            ],
        );
        assert!(e.stdout.starts_with("1000\nbuilt\n"), "{}", e.stdout);
        assert!(e.stdout.contains("Read-only file system"), "{}", e.stdout);

        // A failing step: one error naming it; the previous tree untouched; no work dir left.
        std::fs::write(&recipe, &bad).unwrap();
        let b = build();
        assert_eq!(b.code, 125, "{}", b.stderr);
        assert!(
            b.stderr
                .contains("step 2 (exit 3) exited with 3: nothing was kept"),
            "{}",
            b.stderr
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("built")).unwrap(),
            "built\n"
        );
        let left: Vec<String> = std::fs::read_dir(&r)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["sbx"], "only the finished tree is there");
        let rm = run(mode, &["image", "rm-rootfs", "sbx", "--rootfs-dir", rs]);
        assert_eq!(rm.code, 0, "{}", rm.stderr);
    }
}
