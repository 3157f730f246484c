//! Pulls against a real registry with real bearer-token auth, and what cagerun says when a
//! pull cannot work: Debian's docker-registry (distribution 2.8) with `auth: token`, backed by
//! tests/support/token_server.py (anonymous pull tokens for public/*, credentials for
//! private/*, a token that grants nothing for refused/*). Every failure must be one line
//! naming the cause and the fix, exit 125, and leave nothing behind. Root and rootless.

mod support;

use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

const ISSUER: &str = "cagerun-test-issuer";
const SERVICE: &str = "cagerun-test-registry";

/// A process this test started, ended (by its pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} ended before it listened on 127.0.0.1:{port}: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port}");
}

fn support_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/support")
        .join(name)
}

fn sh(script: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}{}\n(scripts/test installs umoci, skopeo, openssl and busybox-static)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// distribution with `auth: token`, and the token server it trusts; both on 127.0.0.1.
/// Manifests may name foreign layers on 127.0.0.1 (distribution refuses any URL unless allowed).
struct AuthRegistry {
    registry: Proc,
    tokens: Proc,
    port: u16,
    token_port: u16,
    marker: String,
    dir: TempDir,
}

impl AuthRegistry {
    fn start() -> AuthRegistry {
        let marker = unique("authreg");
        let dir = TempDir::new(&marker, None);
        let token_port = free_port();
        let mut tokens = Command::new("python3")
            .arg(support_script("token_server.py"))
            .arg(dir.path())
            .arg(token_port.to_string())
            .args([ISSUER, SERVICE])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        wait_listening(token_port, &mut tokens, "the token server");
        let tokens = Proc(tokens);
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {d}/token.pem\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^http://127\\.0\\.0\\.1:[0-9]+/\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut registry = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; scripts/test installs it)");
        wait_listening(port, &mut registry, "docker-registry");
        AuthRegistry {
            registry: Proc(registry),
            tokens,
            port,
            token_port,
            marker,
            dir,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push `layout`'s `base` image as NAME:TAG with credentials that grant push.
    fn push(&self, layout: &Path, name: &str, format: &str) -> String {
        let dest = format!("{}/{name}", self.host());
        sh(
            &format!(
                "skopeo copy -q --format {format} --dest-creds pusher:pushpw --dest-tls-verify=false oci:{}:base docker://{dest}",
                layout.display()
            ),
            layout.parent().unwrap(),
        );
        dest
    }

    /// Stop both servers and check that nothing of theirs runs on.
    fn stop(self) {
        let marker = self.marker.clone();
        drop(self.registry);
        drop(self.tokens);
        drop(self.dir);
        assert_no_leftovers(&marker);
    }
}

/// A one-layer image: busybox and a file to recognise it by.
fn small_layout(dir: &Path) -> PathBuf {
    sh(
        r#"
        umoci init --layout L
        umoci new --image L:base
        umoci unpack --rootless --image L:base B >/dev/null
        mkdir -p B/rootfs/bin
        cp /bin/busybox B/rootfs/bin/busybox
        echo hello > B/rootfs/hello
        umoci repack --image L:base B
        chmod -R a+rX L
        "#,
        dir,
    );
    dir.join("L")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The caller's own HOME and XDG dirs (owned by the caller), a store and a rootfs dir.
struct Home {
    dir: TempDir,
    owner: (u32, u32),
}

impl Home {
    fn new(mode: Mode) -> Home {
        let owner = mode.caller_ids();
        let dir = TempDir::new("home", Some(owner));
        let home = Home { dir, owner };
        for d in ["run", "config", ".docker"] {
            home.mkdir(&home.path(d));
        }
        std::fs::set_permissions(home.path("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        home
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mkdir(&self, p: &Path) {
        std::fs::create_dir_all(p).unwrap();
        if is_root() {
            chown(p, Some(self.owner.0), Some(self.owner.1)).unwrap();
        }
    }

    /// Write a credentials file as the caller would keep it (theirs, 0600).
    fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        self.mkdir(p.parent().unwrap());
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            chown(&p, Some(self.owner.0), Some(self.owner.1)).unwrap();
        }
    }

    fn remove(&self, rel: &str) {
        let _ = std::fs::remove_file(self.path(rel));
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.dir.path().to_path_buf()),
            ("XDG_RUNTIME_DIR", self.path("run")),
            ("XDG_CONFIG_HOME", self.path("config")),
        ]
    }

    fn cmd(&self, mode: Mode, args: &[&str]) -> Command {
        let mut cmd = cagerun_cmd(mode, args);
        cmd.env_remove("REGISTRY_AUTH_FILE")
            .env_remove("CAGERUN_REGISTRY_TIMEOUT")
            .envs(self.env());
        cmd
    }

    fn run(&self, mode: Mode, args: &[&str]) -> Run {
        run_cmd(mode, self.cmd(mode, args), args)
    }

    fn pull_args(&self, image: &str, name: &str) -> Vec<String> {
        vec![
            "pull".into(),
            image.into(),
            "--name".into(),
            name.into(),
            "--store".into(),
            self.path("store").display().to_string(),
            "--rootfs-dir".into(),
            self.path("rootfs").display().to_string(),
        ]
    }

    fn pull(&self, mode: Mode, image: &str, name: &str) -> Run {
        let args = self.pull_args(image, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(mode, &args)
    }

    /// `cagerun ARGS` with `input` on stdin.
    fn run_with_input(&self, mode: Mode, args: &[&str], input: &str) -> Run {
        let mut cmd = self.cmd(mode, args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cagerun");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "[{mode:?}] cagerun {args:?} -> {}\n  stderr: {}",
            r.code,
            r.stderr.trim()
        );
        r
    }

    /// `cagerun ARGS` in a private mount namespace (and a fresh network namespace when
    /// `net`), prepared as root by `setup` (shell); rootless, cagerun then runs as the test
    /// user (setpriv). `after` (shell) runs in the same namespace once cagerun ended.
    fn run_in_ns(&self, mode: Mode, net: bool, setup: &str, args: &[&str], after: &str) -> Run {
        assert!(
            is_root(),
            "this test prepares namespaces as root: run it as root (scripts/test does)"
        );
        let drop_to = match mode {
            Mode::Root => String::new(),
            Mode::Rootless { uid, gid } => {
                format!("setpriv --reuid={uid} --regid={gid} --clear-groups --")
            }
        };
        let script = format!(
            "set -e; {setup}; rc=0; {drop_to} \"$CAGERUN\" \"$@\" || rc=$?; {after}; exit $rc"
        );
        let mut cmd = Command::new("unshare");
        cmd.arg("-m");
        if net {
            cmd.arg("-n");
        }
        cmd.args(["--propagation", "private", "--", "sh", "-c", &script, "sh"])
            .args(args)
            .env("CAGERUN", &bins().cagerun)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("CAGERUN_REGISTRY_TIMEOUT")
            .envs(self.env())
            .current_dir("/")
            .stdin(Stdio::null());
        run_cmd(mode, cmd, args)
    }
}

/// Exit 125 and exactly one `cagerun:` line on stderr, holding every one of `wants`.
#[track_caller]
fn assert_one_line(r: &Run, wants: &[&str]) {
    assert_eq!(r.code, 125, "stderr: {}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("cagerun:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {}", r.stderr);
    for want in wants {
        assert!(
            lines[0].contains(want),
            "{want:?} is not in the error line {:?}",
            lines[0]
        );
    }
}

#[track_caller]
fn assert_pulled(home: &Home, r: &Run, name: &str) {
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hello = home.path("rootfs").join(name).join("hello");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hello\n");
}

#[test]
fn pulls_use_anonymous_tokens_and_the_credentials_users_keep() {
    let work = TempDir::new("regimg", None);
    let layout = small_layout(work.path());
    let reg = AuthRegistry::start();
    let public = reg.push(&layout, "public/busy:1", "oci");
    let private = reg.push(&layout, "private/busy:1", "oci");
    let refused = reg.push(&layout, "refused/busy:1", "oci");
    let host = reg.host();
    let login_fix = format!("cagerun login {host}");
    let alice = format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        b64("alice:alicepw")
    );

    for mode in modes() {
        let home = Home::new(mode);
        // An anonymous pull token from the token server, nothing filed.
        assert_pulled(&home, &home.pull(mode, &public, "pub"), "pub");

        // The private repository without credentials: 401, said plainly.
        let r = home.pull(mode, &private, "priv");
        assert_one_line(
            &r,
            &[
                "401 Unauthorized",
                "repository private/busy",
                "tag 1",
                "no credentials were sent",
                &login_fix,
            ],
        );
        assert!(!home.path("rootfs/priv").exists());

        // podman's file under XDG_RUNTIME_DIR.
        home.write("run/containers/auth.json", &alice);
        assert_pulled(&home, &home.pull(mode, &private, "priv"), "priv");
        home.remove("run/containers/auth.json");

        // Docker's file, under the URL key old Docker versions write.
        home.write(
            ".docker/config.json",
            &format!(
                r#"{{"auths":{{"http://{host}/v1/":{{"auth":"{}"}}}}}}"#,
                b64("alice:alicepw")
            ),
        );
        assert_pulled(&home, &home.pull(mode, &private, "priv2"), "priv2");

        // Good credentials that grant no pull on this repository.
        let r = home.pull(mode, &refused, "ref");
        assert_one_line(
            &r,
            &[
                "denied pull access to repository refused/busy",
                "tag 1",
                "the credentials of alice",
                "config.json",
            ],
        );

        // A wrong password: the token server rejects it, and the line says so.
        home.write(
            "config/containers/auth.json",
            &format!(
                r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
                b64("alice:nope")
            ),
        );
        let r = home.pull(mode, &private, "priv3");
        assert_one_line(
            &r,
            &["rejected the credentials of alice", "auth.json", &login_fix],
        );
        home.remove("config/containers/auth.json");

        // A credential helper is named, not run, and not silently skipped.
        home.write(
            ".docker/config.json",
            &format!(r#"{{"auths":{{}},"credHelpers":{{"{host}":"secretservice"}}}}"#),
        );
        let r = home.pull(mode, &private, "priv4");
        assert_one_line(
            &r,
            &[
                "docker-credential-secretservice",
                "cagerun does not run credential helpers",
                &login_fix,
            ],
        );
        // A file too large to be a credentials file is refused, not read.
        home.write("run/containers/auth.json", &" ".repeat((1 << 20) + 1));
        let r = home.pull(mode, &public, "pub2");
        assert_one_line(&r, &["auth.json", "larger than 1048576 bytes"]);
        for partial in std::fs::read_dir(home.path("rootfs")).unwrap() {
            let name = partial.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                ["pub", "priv", "priv2"].contains(&name.as_str()),
                "only the pulled images are under rootfs/: {name}"
            );
        }
    }
    reg.stop();
}

#[test]
fn login_checks_credentials_before_filing_them_and_logout_removes_them() {
    let work = TempDir::new("regimg", None);
    let layout = small_layout(work.path());
    let reg = AuthRegistry::start();
    let private = reg.push(&layout, "private/busy:1", "oci");
    let host = reg.host();
    let other = format!(
        r#"{{"auths":{{"other.example":{{"auth":"{}"}}}}}}"#,
        b64("o:p")
    );

    for mode in modes() {
        let home = Home::new(mode);
        let file = home.path("run/containers/auth.json");
        home.write("run/containers/auth.json", &other);
        let login = ["login", host.as_str(), "-u", "alice", "--password-stdin"];

        let r = home.run_with_input(mode, &login, "wrong\n");
        assert_one_line(
            &r,
            &[
                "rejected the credentials of alice",
                &format!("cagerun login {host}"),
            ],
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            other,
            "a failed login writes nothing"
        );

        let r = home.run_with_input(mode, &login, "alicepw\n");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            mode.caller_ids().0
        );
        let filed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(filed["auths"][&host]["auth"], b64("alice:alicepw"));
        assert_eq!(filed["auths"]["other.example"]["auth"], b64("o:p"), "kept");
        let leftovers: Vec<_> = std::fs::read_dir(home.path("run/containers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file: {leftovers:?}");
        assert_pulled(&home, &home.pull(mode, &private, "priv"), "priv");

        let r = home.run(mode, &["logout", &host]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let filed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(filed["auths"].get(&host).is_none(), "{filed}");
        assert_eq!(filed["auths"]["other.example"]["auth"], b64("o:p"), "kept");
        let r = home.pull(mode, &private, "priv2");
        assert_one_line(&r, &["401 Unauthorized", "no credentials were sent"]);
        let r = home.run(mode, &["logout", &host]);
        assert_one_line(&r, &["not logged in to", &host]);

        // With no terminal and no --password-stdin, it says how to give the password.
        let r = home.run(mode, &["login", &host, "-u", "alice"]);
        assert_one_line(&r, &["--password-stdin"]);
    }
    reg.stop();
}

#[test]
fn a_missing_repository_and_a_missing_tag_are_told_apart() {
    let work = TempDir::new("regimg", None);
    let layout = small_layout(work.path());
    let reg = AuthRegistry::start();
    reg.push(&layout, "public/busy:1", "oci");
    let host = reg.host();
    for mode in modes() {
        let home = Home::new(mode);
        let r = home.pull(mode, &format!("{host}/public/nothere:1"), "x");
        assert_one_line(
            &r,
            &[
                "has no repository public/nothere",
                "404",
                "check the image name",
            ],
        );
        let r = home.pull(mode, &format!("{host}/public/busy:2"), "x");
        assert_one_line(
            &r,
            &[
                &format!("{host}/public/busy has no tag 2"),
                "404",
                "check the tag",
            ],
        );
        assert!(!home.path("rootfs/x").exists());
    }
    reg.stop();
}

#[test]
fn an_unreachable_registry_says_why() {
    let marker = unique("tlsreg");
    let certs = TempDir::new(&marker, None);
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout k.pem -out c.pem -days 2 \
         -subj /CN=registry.test -addext subjectAltName=DNS:registry.test 2>/dev/null",
        certs.path(),
    );
    std::fs::write(
        certs.path().join("hosts"),
        "127.0.0.1 localhost\n127.0.0.1 registry.test\n",
    )
    .unwrap();
    std::fs::write(certs.path().join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let tls_port = free_port();
    let mut tls = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .arg("-cert")
        .arg(certs.path().join("c.pem"))
        .arg("-key")
        .arg(certs.path().join("k.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    wait_listening(tls_port, &mut tls, "openssl s_server");
    let tls = Proc(tls);
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let import = "cagerun image import";

    for mode in modes() {
        let home = Home::new(mode);
        let refused_port = free_port();
        let r = home.pull(mode, &format!("127.0.0.1:{refused_port}/x:1"), "x");
        assert_one_line(
            &r,
            &[
                "connection refused",
                &format!("nothing listens at 127.0.0.1:{refused_port}"),
                import,
            ],
        );

        let mut cmd = home.cmd(mode, &[]);
        let args = home.pull_args(&format!("127.0.0.1:{silent_port}/x:1"), "x");
        cmd.args(&args).env("CAGERUN_REGISTRY_TIMEOUT", "1");
        let started = Instant::now();
        let r = run_cmd(mode, cmd, &[]);
        assert_one_line(
            &r,
            &["no answer within 1s", "CAGERUN_REGISTRY_TIMEOUT", import],
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the timeout applies"
        );

        // A name that is not local goes over TLS; this server's certificate is self-signed.
        let hosts = format!(
            "mount --bind {} /etc/hosts",
            certs.path().join("hosts").display()
        );
        let image = format!("registry.test:{tls_port}/x:1");
        let args = home.pull_args(&image, "x");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = home.run_in_ns(mode, false, &hosts, &args, "true");
        assert_one_line(
            &r,
            &[
                "cannot reach registry registry.test",
                "TLS",
                "certificate is not trusted",
                import,
            ],
        );

        // No DNS server answers (a fresh network namespace; nothing asks the host's).
        let resolv = format!(
            "ip link set lo up; mount --bind {} /etc/resolv.conf",
            certs.path().join("resolv.conf").display()
        );
        let image = "registry.test:5000/x:1";
        let args = home.pull_args(image, "x");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = home.run_in_ns(mode, true, &resolv, &args, "true");
        assert_one_line(
            &r,
            &["the name registry.test does not resolve", "DNS", import],
        );
        assert!(!home.path("rootfs/x").exists());
    }
    drop(silent);
    drop(tls);
    drop(certs);
    assert_no_leftovers(&marker);
}

#[test]
fn a_full_disk_during_unpack_says_so_and_leaves_nothing() {
    let work = TempDir::new("regimg", None);
    let layout = small_layout(work.path());
    let reg = AuthRegistry::start();
    let public = reg.push(&layout, "public/busy:1", "oci");
    for mode in modes() {
        let home = Home::new(mode);
        let rootfs = home.path("rootfs");
        home.mkdir(&rootfs);
        let (uid, gid) = mode.caller_ids();
        // busybox alone is 2 MB: it cannot fit.
        let setup = format!(
            "mount -t tmpfs -o size=256k,mode=0755,uid={uid},gid={gid} cagefull {}",
            rootfs.display()
        );
        let after = format!("echo \"left:$(ls -A {} | tr '\\n' ' ')\"", rootfs.display());
        let args = home.pull_args(&public, "busy");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = home.run_in_ns(mode, false, &setup, &args, &after);
        assert_one_line(
            &r,
            &[
                "no space left on device",
                &rootfs.display().to_string(),
                "--rootfs-dir",
            ],
        );
        assert_eq!(
            r.stdout.trim(),
            "left:",
            "nothing at rootfs/busy, no hidden partial tree"
        );
        // The image is in the store all the same: with room, the same pull works.
        assert_pulled(&home, &home.pull(mode, &public, "busy"), "busy");
    }
    reg.stop();
}

#[test]
fn a_foreign_layer_is_skipped_and_the_image_unpacks_from_the_rest() {
    let work = TempDir::new("regimg", None);
    let layout = small_layout(work.path());
    let reg = AuthRegistry::start();
    reg.push(&layout, "public/busy:1", "v2s2");
    // Where the foreign layer says it lives: nothing may connect here.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let url = format!(
        "http://127.0.0.1:{}/foreign.tar.gz",
        elsewhere.local_addr().unwrap().port()
    );
    let foreign = sh(
        &format!(
            "python3 {} {} public/busy 1 foreign http://127.0.0.1:{}/token {SERVICE} {url}",
            support_script("foreign_manifest.py").display(),
            reg.host(),
            reg.token_port
        ),
        work.path(),
    );
    let foreign = foreign.trim().trim_start_matches("sha256:");
    for mode in modes() {
        let home = Home::new(mode);
        let r = home.pull(mode, &format!("{}/public/busy:foreign", reg.host()), "busy");
        assert_pulled(&home, &r, "busy");
        let skipped = r
            .stderr
            .lines()
            .find(|l| l.contains("skipped a foreign layer"))
            .unwrap_or_else(|| panic!("no line says the layer was skipped: {}", r.stderr));
        assert!(skipped.starts_with(&foreign[..12]), "{skipped}");
        assert!(skipped.contains("foreign.diff.tar.gzip"), "{skipped}");
        assert!(home.path("rootfs/busy/bin/busybox").exists());
    }
    assert!(
        elsewhere.accept().is_err(),
        "nothing fetched the foreign layer from its URL"
    );
    reg.stop();
}
