//! A real registry (Debian's docker-registry) on 127.0.0.1, stopped (by pid) on drop, and
//! pushes into it with skopeo.

use std::path::Path;
use std::process::Command;

use super::TempDir;

pub struct Registry {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = TempDir::new("registry", None);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}/data\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry; .ci/run installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Registry {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not listen on 127.0.0.1:{port}");
    }

    /// `host:port`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push `layout:tag` (an OCI layout) as `repo:tag2` (`repo_tag`); the pushed reference.
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str) -> String {
        self.push_as(layout, tag, repo_tag, "oci")
    }

    /// [`Registry::push`] in `format`: `oci`, or `v2s2` (Docker's schema 2 media types).
    pub fn push_as(&self, layout: &Path, tag: &str, repo_tag: &str, format: &str) -> String {
        let dest = format!("{}/{repo_tag}", self.address());
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--format", format, "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .expect("skopeo (scripts/test installs it)");
        assert!(
            out.status.success(),
            "skopeo copy {tag} → {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
