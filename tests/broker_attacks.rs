//! The gateway is hostile: attacks on the sandbox broker from inside a gateway service, as
//! root and rootless. The gateway writes its workspace and its state volume and sends the
//! broker whatever docker calls it likes; none of it may reach the host.
//!
//! Every case first proves its probe: the name the gateway plants, resolved by a plain host
//! path walk (what the broker did before it resolved bind sources beneath their root),
//! reaches a host marker file the sandbox user could read. Then it shows that the sandbox
//! cannot read it and that the marker is unchanged.
//!
//! Every case runs twice: with `pool = 0` (each call makes its sandbox) and with the default
//! warm pool, where the test waits for the container's parked sandbox before the hostile
//! call and shows from inside that the call ran in it (support::pool: its pid 1 is older
//! than the call).

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::cage::*;
use support::pool::{self, Pool, AGE_SH};
use support::*;

const IMAGE: &str = "openclaw-sandbox:bookworm-slim";

const GATEWAY_TOML: &str = r#"
[services.gw]
host = true
command = ["sleep", "100000"]
env = { CAGE_MARKER = "{MARKER}" }
mounts = [{ src = "workspace", dst = "/workspace", ro = false }]
volumes = ["state:/state"]

[services.gw.sandboxes]
images = { "openclaw-sandbox:bookworm-slim" = "host" }
max = 2
pids = 30
pids_total = 30
memory_total = "1g"
{POOL}
"#;

/// A host directory outside the cage with a secret the sandbox user could read if it got
/// there: `secret`, and `x/secret` for paths that go through a middle component.
struct Marker {
    dir: TempDir,
    secret: String,
}

impl Marker {
    fn new() -> Marker {
        let dir = TempDir::new("marker", None);
        let secret = unique("host-secret");
        std::fs::write(dir.path().join("secret"), &secret).unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        std::fs::write(dir.path().join("x/secret"), &secret).unwrap();
        for f in ["secret", "x/secret"] {
            set_mode(&dir.path().join(f), 0o644);
        }
        set_mode(&dir.path().join("x"), 0o755);
        Marker { dir, secret }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// (contents, owner, mode, links) of both secrets: what "unchanged" means.
    fn state(&self) -> Vec<(String, u32, u32, u32, u64)> {
        ["secret", "x/secret"]
            .iter()
            .map(|f| {
                let p = self.path().join(f);
                let m = std::fs::symlink_metadata(&p).unwrap();
                (
                    std::fs::read_to_string(&p).unwrap(),
                    m.uid(),
                    m.gid(),
                    m.mode(),
                    m.nlink(),
                )
            })
            .collect()
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn new_cage(mode: Mode, pool: Pool) -> Cage {
    let toml = GATEWAY_TOML.replace("{POOL}", pool.toml());
    let cage = Cage::new(
        mode,
        "atk",
        &[("config/cage.toml", &toml), ("workspace/.keep", "")],
    );
    std::os::unix::fs::chown(
        cage.root.join("workspace"),
        Some(mode.sandbox_host_uid()),
        Some(mode.sandbox_host_gid()),
    )
    .unwrap();
    cage
}

/// A new cage, up: (the cage, its network namespaces for the leftover check).
fn up_cage(mode: Mode, pool: Pool) -> (Cage, Vec<u64>) {
    let mut cage = new_cage(mode, pool);
    cage.up();
    let netns = cage.netns_inodes();
    (cage, netns)
}

/// `down`, and nothing of the cage is left.
fn down_cage(cage: &Cage, netns: &[u64]) {
    cage.down();
    cage.assert_gone(netns);
}

fn gateway(cage: &Cage, script: &str) -> Run {
    cage.sh_in("gw", script)
}

/// Every (mode, pool) a case runs in.
fn runs() -> Vec<(Mode, Pool)> {
    modes()
        .into_iter()
        .flat_map(|m| Pool::BOTH.map(|p| (m, p)))
        .collect()
}

/// With the pool: wait until the container (its id) has a parked sandbox, so that the next
/// call goes to it.
fn parked_for(cage: &Cage, pool: Pool, id: &str) -> Option<pool::Sandbox> {
    (pool == Pool::Default).then(|| pool::park_for(cage, "gw", id))
}

/// With the pool: the call whose output is `out` ran in a parked sandbox; without, in one
/// made for it.
fn assert_sandbox(pool: Pool, out: &str, what: &str) {
    match pool {
        Pool::Default => pool::assert_parked(out, what),
        Pool::Off => pool::assert_fresh(out, what),
    }
}

/// `out` after [`AGE_SH`]'s line (a call that printed its age, then its answer).
fn after_age(out: &str) -> &str {
    let at = out.find("pid1-age:").expect("an age line");
    let rest = &out[at + "pid1-age:".len()..];
    let rest = rest.trim_start();
    rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..].trim()
}

/// A shell function in the gateway: `sbx NAME SRC DST [FLAGS]` creates and starts a sandbox
/// with one bind, the way OpenClaw does (`-v SRC:DST:z`), and says `started NAME ID`.
fn sbx_fn() -> String {
    format!(
        "printf 'A=1\\n' > /tmp/sbx.env\n\
         sbx() {{ docker create --name \"$1\" --read-only --network none --user ${{4:-1000:1000}} \
         --cap-drop ALL --security-opt no-new-privileges --env-file /tmp/sbx.env \
         -v \"$2:$3:z\" {IMAGE} sleep infinity >/dev/null && docker start \"$1\" >/dev/null \
         && echo \"started $1 $(docker inspect -f '{{{{.Id}}}}' \"$1\")\"; }}\n"
    )
}

/// The id `sbx NAME` said it started, if it did.
fn started(out: &str, name: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("started {name} ")))
        .map(str::to_owned)
}

/// The probe is valid: a plain host walk of `planted` (inside the cage's workspace or
/// volume) reaches the marker's secret.
fn assert_host_walk_reaches(planted: &Path, marker: &Marker, case: &str) {
    let got = std::fs::read_to_string(planted).unwrap_or_else(|e| {
        panic!(
            "{case}: the probe is invalid: a host walk of {} does not reach the marker ({e})",
            planted.display()
        )
    });
    assert_eq!(got, marker.secret, "{case}: the probe is invalid");
}

/// One symlink shape planted in the workspace and named as a bind source.
struct Planted {
    case: &'static str,
    /// What the gateway runs in /workspace to plant it.
    plant: String,
    /// The path (below /workspace) the plant makes a link, for the pooled run's benign
    /// stand-in.
    link: &'static str,
    src: String,
    dst: &'static str,
    /// What the sandbox reads.
    read: String,
    /// The host path (below the workspace) a plain walk of the source resolves.
    walk: String,
}

#[test]
fn symlinks_of_every_shape_in_a_bind_source_stay_inside_the_gateways_mount() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let marker = Marker::new();
        let before = marker.state();
        let (cage, netns) = up_cage(mode, pool);
        let m = marker.path().display().to_string();
        let parent = marker.path().parent().unwrap().display().to_string();
        let base = marker
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let climb = "../".repeat(30);
        let planted = |case, plant: String, link, src: &str, dst, read: &str, walk: &str| Planted {
            case,
            plant,
            link,
            src: src.into(),
            dst,
            read: read.into(),
            walk: walk.into(),
        };
        let cases = vec![
            planted(
                "absolute",
                format!("ln -s {m} abs"),
                "abs",
                "/workspace/abs",
                "/mnt",
                "/mnt/secret",
                "abs/secret",
            ),
            planted(
                "relative",
                format!("ln -s {climb}{} rel", m.trim_start_matches('/')),
                "rel",
                "/workspace/rel",
                "/mnt",
                "/mnt/secret",
                "rel/secret",
            ),
            planted(
                "proc-root",
                format!("ln -s /proc/self/root{m} proc"),
                "proc",
                "/workspace/proc",
                "/mnt",
                "/mnt/secret",
                "proc/secret",
            ),
            planted(
                "middle",
                format!("ln -s {parent} mid"),
                "mid",
                &format!("/workspace/mid/{base}"),
                "/mnt",
                "/mnt/secret",
                &format!("mid/{base}/secret"),
            ),
            planted(
                "chain",
                format!("ln -s chain2 chain1 && ln -s {m} chain2"),
                "chain1",
                "/workspace/chain1",
                "/mnt",
                "/mnt/secret",
                "chain1/secret",
            ),
            planted(
                "file",
                format!("ln -s {m}/secret file"),
                "file",
                "/workspace/file",
                "/mnt/f",
                "/mnt/f",
                "file",
            ),
            planted(
                "dotdot-inside",
                format!(
                    "mkdir -p d/e && ln -s ../../{climb}{} d/e/up",
                    m.trim_start_matches('/')
                ),
                "d/e/up",
                "/workspace/d/e/up",
                "/mnt",
                "/mnt/secret",
                "d/e/up/secret",
            ),
        ];
        for c in &cases {
            let case = c.case;
            // Planted before create: no sandbox can be made of it, parked or fresh.
            let r = gateway(
                &cage,
                &format!(
                    "{}cd /workspace\n{}\nsbx c-{case} {} {} || echo 'create refused'",
                    sbx_fn(),
                    c.plant,
                    c.src,
                    c.dst
                ),
            );
            let seen = match started(&r.stdout, &format!("c-{case}")) {
                Some(_) => {
                    let r = gateway(
                        &cage,
                        &format!(
                            "docker exec c-{case} sh -c '{AGE_SH}; cat {}' 2>&1; docker rm -f c-{case}",
                            c.read
                        ),
                    );
                    r.stdout
                }
                None => r.stdout,
            };
            assert_host_walk_reaches(&cage.root.join("workspace").join(&c.walk), &marker, case);
            assert!(
                !seen.contains(&marker.secret),
                "{case}: the sandbox read the host's secret: {seen}"
            );
            if pool == Pool::Off {
                continue;
            }
            // Planted after a sandbox parked with a benign stand-in at the same path: the
            // call must not get the parked sandbox (its source changed), nor the host.
            let stand_in = match case {
                "file" => "echo benign > file".to_string(),
                _ => format!(
                    "mkdir -p {src} && echo benign > {src}/secret",
                    src = c.src.trim_start_matches("/workspace/")
                ),
            };
            let r = gateway(
                &cage,
                &format!(
                    "{}cd /workspace\nrm -rf abs rel proc mid chain1 chain2 file d\n{stand_in}\nsbx p-{case} {} {}",
                    sbx_fn(),
                    c.src,
                    c.dst
                ),
            );
            let id = started(&r.stdout, &format!("p-{case}"))
                .unwrap_or_else(|| panic!("{case}: the stand-in was refused: {}", r.stderr));
            let parked = parked_for(&cage, pool, &id).unwrap();
            // The probe is valid: the parked sandbox holds the stand-in.
            let init = parked.init.unwrap();
            let held = std::fs::read_to_string(format!("/proc/{init}/root{}", c.read));
            assert_eq!(
                held.ok().as_deref(),
                Some("benign\n"),
                "{case}: the parked sandbox"
            );
            let r = gateway(
                &cage,
                &format!(
                    "cd /workspace && rm -rf {} && {}\n\
                     docker exec p-{case} sh -c '{AGE_SH}; cat {}' 2>&1; docker rm -f p-{case}",
                    c.link, c.plant, c.read
                ),
            );
            assert_host_walk_reaches(&cage.root.join("workspace").join(&c.walk), &marker, case);
            // Neither the host nor the stand-in the parked sandbox holds: no sandbox of the
            // source as it is now can be made, so the command never ran.
            assert!(
                !r.stdout.contains(&marker.secret)
                    && !r.stdout.contains("benign")
                    && !r.stdout.contains("pid1-age"),
                "{case}: planted after parking, the call read {}",
                r.stdout
            );
        }
        // The probe's other half: the bind itself works when the source is what it says.
        std::fs::create_dir_all(cage.root.join("workspace/real")).unwrap();
        std::fs::write(cage.root.join("workspace/real/secret"), "benign").unwrap();
        chown_tree(
            &cage.root.join("workspace/real"),
            (mode.sandbox_host_uid(), mode.sandbox_host_gid()),
        );
        let r = gateway(
            &cage,
            &format!("{}sbx c-real /workspace/real /mnt", sbx_fn()),
        );
        let id = started(&r.stdout, "c-real").expect("c-real started");
        parked_for(&cage, pool, &id);
        let r = gateway(
            &cage,
            &format!("docker exec c-real sh -c '{AGE_SH}; cat /mnt/secret'"),
        );
        assert_sandbox(pool, &r.stdout, "real");
        assert_eq!(after_age(&r.stdout), "benign", "{}", r.stderr);
        assert_eq!(marker.state(), before, "the marker changed");
        down_cage(&cage, &netns);
    }
}

#[test]
fn a_source_swapped_for_a_symlink_after_create_or_while_sandboxes_start_stays_inside() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let marker = Marker::new();
        let before = marker.state();
        let (cage, netns) = up_cage(mode, pool);
        let m = marker.path().display().to_string();
        let ws = cage.root.join("workspace");

        // The last component, then a middle one, swapped for a symlink between create and
        // exec (with the pool: after a sandbox of the benign directory parked).
        for (case, source, swapped) in [("swap-last", "sub", "sub"), ("swap-middle", "d1/x", "d1")]
        {
            let r = gateway(
                &cage,
                &format!(
                    "{}mkdir -p /workspace/{source} && echo benign > /workspace/{source}/secret\n\
                     sbx c-{case} /workspace/{source} /mnt",
                    sbx_fn()
                ),
            );
            let id = started(&r.stdout, &format!("c-{case}")).expect("started");
            parked_for(&cage, pool, &id);
            let r = gateway(
                &cage,
                &format!("docker exec c-{case} sh -c '{AGE_SH}; cat /mnt/secret' 2>&1"),
            );
            assert_sandbox(pool, &r.stdout, case);
            assert_eq!(after_age(&r.stdout), "benign", "{case}: {}", r.stderr);
            // The probe is valid: the parked sandbox the next call would get holds the
            // benign directory.
            if let Some(parked) = parked_for(&cage, pool, &id) {
                let init = parked.init.unwrap();
                let held = std::fs::read_to_string(format!("/proc/{init}/root/mnt/secret"));
                assert_eq!(held.ok().as_deref(), Some("benign\n"), "{case}");
            }
            let r = gateway(
                &cage,
                &format!(
                    "rm -r /workspace/{swapped} && ln -s {m} /workspace/{swapped}\n\
                     echo \"after: $(docker exec c-{case} sh -c '{AGE_SH}; cat /mnt/secret' 2>&1 | tr '\\n' ' ')\""
                ),
            );
            assert_host_walk_reaches(&ws.join(source).join("secret"), &marker, case);
            let after = line_after(&r.stdout, "after:");
            assert!(!after.contains(&marker.secret), "{case}: {after}");
            // No sandbox of the swapped source can be made, and the parked one (holding the
            // old directory) was not handed the call: the command never ran.
            assert!(!after.contains("pid1-age"), "{case}: {after}");
        }

        // A loop swapping the source between a directory and a symlink while 200 sandboxes
        // start: each sees the benign directory or fails, never the host (the loop stops
        // after a whole swap, not in the middle of one, which a kill would leave racing
        // the final planting below). With the pool,
        // sandboxes park while the source flips; the sampler shows they were in play.
        let r = gateway(
            &cage,
            &format!(
                "{}mkdir -p /workspace/s && sbx c-loop /workspace/s /mnt\n\
                 echo benign > /workspace/s/secret",
                sbx_fn()
            ),
        );
        let id = started(&r.stdout, "c-loop").expect("started");
        parked_for(&cage, pool, &id);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (stop, runs) = (stop.clone(), pool::runs_dir(&cage, "gw"));
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.extend(
                        pool::sandboxes_in(&runs)
                            .into_iter()
                            .filter(|s| s.waiting)
                            .map(|s| s.bundle),
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen.len()
            })
        };
        let r = gateway(
            &cage,
            &format!(
                "rm -f /tmp/stop-swapping\n\
                 ( while [ ! -e /tmp/stop-swapping ]; do sleep 0.01; mv /workspace/s /workspace/s.real; ln -s {m} /workspace/s; sleep 0.01; rm /workspace/s; mv /workspace/s.real /workspace/s; done ) &\n\
                 swapper=$!\n\
                 for i in $(seq 200); do docker exec c-loop cat /mnt/secret 2>&1 || echo failed; done | cat > /tmp/seen\n\
                 touch /tmp/stop-swapping; wait $swapper\n\
                 rm -rf /workspace/s /workspace/s.real; ln -s {m} /workspace/s\n\
                 echo \"benign: $(grep -c benign /tmp/seen)\"; echo \"failed: $(grep -c failed /tmp/seen)\"\n\
                 echo \"total: $(wc -l < /tmp/seen)\"; echo \"other: $(grep -v -e benign -e failed /tmp/seen | head -3 | tr '\\n' ' ')\""
            ),
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let parked_seen = sampler.join().unwrap();
        eprintln!("[{mode:?} {pool:?}] parked sandboxes seen during the loop: {parked_seen}");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let benign: usize = line_after(&r.stdout, "benign:").parse().unwrap();
        assert!(
            benign > 0,
            "the probe is invalid: no exec ever saw the real directory: {}\n{}",
            r.stdout,
            r.stderr
        );
        if pool == Pool::Default {
            assert!(
                parked_seen > 1,
                "the pool was not in play: {parked_seen} parked sandboxes seen"
            );
        }
        assert_host_walk_reaches(&ws.join("s/secret"), &marker, "swap-loop");
        assert!(!r.stdout.contains(&marker.secret), "{}", r.stdout);
        assert_eq!(marker.state(), before, "the marker changed");
        down_cage(&cage, &netns);
    }
}

#[test]
fn links_planted_in_the_state_volume_touch_nothing_outside_it_on_down_or_up() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let marker = Marker::new();
        let (mut cage, netns) = up_cage(mode, pool);
        let m = marker.path().display().to_string();
        let state = cage.root.join(".cagerun/volumes/state");
        // The gateway plants symlinks to the host in its state volume ...
        let r = gateway(
            &cage,
            &format!("ln -s {m} /state/dir-link && ln -s {m}/secret /state/file-link && mkdir -p /state/deep && ln -s {m}/x /state/deep/x"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        // ... and a hardlink to a host file (planted from outside: the gateway cannot see
        // one, but a volume restored from elsewhere might hold one).
        std::fs::hard_link(marker.path().join("x/secret"), state.join("hard")).unwrap();
        assert_host_walk_reaches(&state.join("dir-link/secret"), &marker, "state dir-link");
        assert_host_walk_reaches(&state.join("file-link"), &marker, "state file-link");
        assert_host_walk_reaches(&state.join("hard"), &marker, "state hardlink");
        // A host file's owner, as the test set it, must survive everything below.
        std::os::unix::fs::chown(marker.path().join("secret"), Some(4242), Some(4343)).unwrap();
        let before = marker.state();

        // The next up with the links in place: nothing outside the volume changes owner.
        down_cage(&cage, &netns);
        cage.up();
        let netns = cage.netns_inodes();
        let mut after_up = marker.state();
        // The hardlink's count is the only thing the volume shares with the host file.
        assert_eq!(
            after_up, before,
            "up touched a host file through the volume"
        );

        // down --volumes: removes the links, never what they point at.
        let r = cage.cagerun(&["down", "--volumes"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        cage.assert_gone(&netns);
        assert!(!state.exists(), "the volume is gone");
        after_up[1].4 -= 1;
        assert_eq!(
            marker.state(),
            after_up,
            "down --volumes touched a host file"
        );
        assert!(marker.path().join("x").is_dir());
    }
}

#[test]
fn stdio_that_is_not_a_pipe_socket_or_terminal_is_refused() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let (cage, netns) = up_cage(mode, pool);
        let r = gateway(
            &cage,
            &format!("{}sbx c-fd /workspace /workspace", sbx_fn()),
        );
        let id = started(&r.stdout, "c-fd").expect("started");
        // With the pool, the refused calls find a parked sandbox, and leave it to the first
        // call that is served.
        parked_for(&cage, pool, &id);
        // The probe is valid: a process whose stdin is a directory reaches that directory's
        // tree through /proc/self/fd/0 (in a sandbox, that would be the gateway's root).
        let r = gateway(
            &cage,
            &format!(
                "echo \"probe: $(sh -c 'ls /proc/self/fd/0/dev/.cagerun' < / | tr '\\n' ' ')\"\n\
                 docker exec -i c-fd sh -c 'ls /proc/self/fd/0/dev/.cagerun' < /; echo \"dir-stdin: $?\"\n\
                 docker exec c-fd echo leaked > /tmp/regular; echo \"file-stdout: $? $(cat /tmp/regular)\"\n\
                 docker exec c-fd sh -c '{AGE_SH}; echo fine' | cat; echo \"pipe: $?\"\n\
                 docker exec c-fd echo fine > /dev/null; echo \"null: $?\""
            ),
        );
        assert_sandbox(pool, &r.stdout, "the first call served");
        assert!(
            line_after(&r.stdout, "probe:").contains("docker"),
            "{}",
            r.stdout
        );
        assert_eq!(line_after(&r.stdout, "dir-stdin:"), "125", "{}", r.stdout);
        assert!(r.stderr.contains("stdin is a directory"), "{}", r.stderr);
        assert_eq!(line_after(&r.stdout, "file-stdout:"), "125", "{}", r.stdout);
        assert!(
            r.stderr.contains("stdout is a regular file"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.contains("fine"), "{}", r.stdout);
        assert_eq!(line_after(&r.stdout, "pipe:"), "0");
        assert_eq!(line_after(&r.stdout, "null:"), "0");
        down_cage(&cage, &netns);
    }
}

#[test]
fn a_fifo_wedged_create_delays_nothing_and_down_still_ends_everything() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let (cage, netns) = up_cage(mode, pool);
        // With the pool, a sandbox is parked all along (and `down` must end it too).
        let r = gateway(
            &cage,
            &format!("{}sbx c-park /workspace /workspace", sbx_fn()),
        );
        let id = started(&r.stdout, "c-park").expect("started");
        let parked: Vec<pool::Sandbox> = parked_for(&cage, pool, &id).into_iter().collect();
        // The probe is valid: the FIFO is full (a write to it would block).
        let r = gateway(
            &cage,
            &format!(
                "{}mkfifo /tmp/wedge && exec 3<>/tmp/wedge && head -c 65536 /dev/zero >&3\n\
                 if timeout 1 sh -c 'echo x >&3'; then echo 'full: no'; else echo 'full: yes'; fi\n\
                 ( docker create --name c-wedge --network none {IMAGE} sleep infinity <&3 >&3 2>&3; echo \"wedged: $?\" > /tmp/wedged ) &\n\
                 sleep 0.3\n\
                 start=$(date +%s%N)\n\
                 docker version >/dev/null; docker inspect c-wedge >/dev/null 2>&1\n\
                 echo \"next-ms: $(( ($(date +%s%N) - start) / 1000000 ))\"\n\
                 wait; echo \"$(cat /tmp/wedged)\"",
                sbx_fn()
            ),
        );
        assert_eq!(line_after(&r.stdout, "full:"), "yes", "{}", r.stdout);
        let next_ms: u64 = line_after(&r.stdout, "next-ms:").parse().unwrap();
        assert!(
            next_ms < 2000,
            "a call behind a wedged create took {next_ms} ms (the write timeout is 2 s): {}",
            r.stdout
        );
        // The wedged call itself ended (its answer dropped after the timeout).
        assert!(r.stdout.contains("wedged:"), "{}", r.stdout);
        let t = Instant::now();
        cage.down();
        assert!(t.elapsed() < Duration::from_secs(20));
        pool::wait_ended(&parked, "down");
        cage.assert_gone(&netns);
    }
}

#[test]
fn five_thousand_idle_connections_leave_the_supervisor_answering() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let mut cage = new_cage(mode, pool);
        let supervisor = cage.up();
        let netns = cage.netns_inodes();
        let r = gateway(
            &cage,
            &format!("{}sbx c-flood /workspace /workspace", sbx_fn()),
        );
        let id = started(&r.stdout, "c-flood").expect("started");
        parked_for(&cage, pool, &id);
        // 5 processes × 1000 connections to the broker's socket, held idle for 8 s.
        let flood = r#"
import os, socket, sys, time, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
kids = []
for k in range(5):
    pid = os.fork()
    if pid == 0:
        held, refused = [], 0
        for i in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect("/dev/.cagerun/docker.sock")
                held.append(s)
            except OSError:
                refused += 1
                s.close()
        print("held", len(held), "refused", refused, flush=True)
        time.sleep(8)
        os._exit(0)
    kids.append(pid)
for p in kids:
    os.waitpid(p, 0)
"#;
        let flooder = cage
            .command(&["exec", "gw", "--", "python3", "-c", flood])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        // While the flood holds: ps answers quickly and the supervisor's descriptors and
        // threads stay bounded.
        let t = Instant::now();
        let ps = cage.cagerun(&["ps"]);
        let took = t.elapsed();
        assert_eq!(ps.code, 0, "{}", ps.stderr);
        assert!(
            took < Duration::from_secs(1),
            "ps took {took:?} under the flood"
        );
        let fds = std::fs::read_dir(format!("/proc/{supervisor}/fd"))
            .unwrap()
            .count();
        let threads = std::fs::read_dir(format!("/proc/{supervisor}/task"))
            .unwrap()
            .count();
        assert!(
            fds < 600,
            "the supervisor holds {fds} descriptors under the flood"
        );
        assert!(
            threads < 300,
            "the supervisor runs {threads} threads under the flood"
        );
        let out = flooder.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        // The probe is valid: the flood connected (the broker accepted them all, answering
        // the ones over its bound with "busy").
        let held: usize = said
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
            .sum();
        assert!(held >= 4000, "the flood never connected: {said}");
        // Afterwards the broker still serves, and (with the pool) hands the call to the
        // sandbox parked before the flood.
        let r = gateway(&cage, "docker version");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = gateway(&cage, &format!("docker exec c-flood sh -c '{AGE_SH}'"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_sandbox(pool, &r.stdout, "after the flood");
        down_cage(&cage, &netns);
    }
}

#[test]
fn sandboxes_over_the_budget_are_refused_in_dockers_words() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let (cage, netns) = up_cage(mode, pool);
        let r = gateway(&cage, &format!("{}sbx c-b /workspace /workspace", sbx_fn()));
        let id = started(&r.stdout, "c-b").expect("started");
        // max = 2 in the cage: two sandboxes run, the third exec is refused (with the pool,
        // the first goes to the parked sandbox, which holds its slot).
        parked_for(&cage, pool, &id);
        let r = gateway(
            &cage,
            "docker exec c-b sleep 3 & docker exec c-b sleep 3 &\n\
             sleep 1\n\
             docker exec c-b echo third; echo \"third: $?\"\n\
             wait\n\
             echo \"after: $(docker exec c-b echo ok)\"",
        );
        assert_eq!(line_after(&r.stdout, "third:"), "125", "{}", r.stdout);
        assert!(r.stderr.contains("sandbox budget is spent"), "{}", r.stderr);
        assert!(
            r.stderr.starts_with("Error response from daemon:"),
            "{}",
            r.stderr
        );
        assert_eq!(line_after(&r.stdout, "after:"), "ok");

        // The sandboxes share one cgroup inside the cage's, limited to the totals.
        let cage_dirs = find_dirs_named(Path::new("/sys/fs/cgroup"), cage.id(), 10);
        let budget: Vec<_> = cage_dirs
            .iter()
            .map(|d| d.join("sandboxes-gw"))
            .filter(|d| d.join("pids.max").exists())
            .collect();
        assert!(
            !budget.is_empty(),
            "no sandboxes-gw cgroup in {cage_dirs:?}"
        );
        assert_eq!(
            std::fs::read_to_string(budget[0].join("pids.max"))
                .unwrap()
                .trim(),
            "30"
        );
        let memory: Vec<String> = cage_dirs
            .iter()
            .map(|d| d.join("sandboxes-gw"))
            .flat_map(|d| [d.join("memory.max"), d.join("memory.limit_in_bytes")])
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.trim().to_string())
            .collect();
        assert_eq!(memory, ["1073741824"], "the sandboxes' memory total");
        // pids: one sandbox alone starts 20 sleepers (its own cap is 30); beside another
        // that holds 20, it gets what is left of the total 30, not its own cap.
        let count = "for i in $(seq 20); do sleep 4 & done 2>/dev/null; sleep 0.5; ls /proc | grep -c \"^[0-9]*$\"";
        parked_for(&cage, pool, &id);
        let r = gateway(&cage, &format!("docker exec c-b sh -c '{AGE_SH}; {count}'"));
        assert_sandbox(pool, &r.stdout, "alone");
        let alone: usize = after_age(&r.stdout).parse().unwrap();
        let r = gateway(
            &cage,
            &format!(
                "docker exec c-b sh -c 'for i in $(seq 20); do sleep 4 & done; sleep 3' &\n\
                 sleep 1\n\
                 echo \"beside: $(docker exec c-b sh -c '{count}' 2>/dev/null)\"\n\
                 wait"
            ),
        );
        let beside: usize = line_after(&r.stdout, "beside:").parse().unwrap_or(0);
        assert!(
            alone >= 21,
            "the probe is invalid: alone it ran {alone}: {}",
            r.stderr
        );
        assert!(
            beside < 12,
            "beside a sandbox holding 20 pids it ran {beside} (the total is 30)"
        );
        down_cage(&cage, &netns);
    }
}

#[test]
fn oversized_calls_and_bad_names_are_refused_and_nothing_is_recorded() {
    let _serial = serial();
    for (mode, pool) in runs() {
        let (cage, netns) = up_cage(mode, pool);
        let r = gateway(
            &cage,
            &format!(
                "{}for i in $(seq 20); do printf 'A=1\\n' > /tmp/e$i; done\n\
                 ef=$(for i in $(seq 9); do printf ' --env-file /tmp/e%s' $i; done)\n\
                 docker create --name many-files $ef {IMAGE} true; echo \"files: $?\"\n\
                 head -c 70000 /dev/zero | tr '\\0' a > /tmp/big; printf '\\n' >> /tmp/big\n\
                 docker create --name big-file --env-file /tmp/big {IMAGE} true; echo \"big: $?\"\n\
                 docker create --name ../../etc {IMAGE} true; echo \"name: $?\"\n\
                 labels=$(for i in $(seq 65); do printf ' --label l%s=v' $i; done)\n\
                 docker create --name many-labels $labels {IMAGE} true; echo \"labels: $?\"\n\
                 for n in many-files big-file many-labels; do docker inspect $n >/dev/null 2>&1 && echo \"recorded: $n\"; done\n\
                 echo \"count: $(for i in $(seq 70); do docker create --network none {IMAGE} true >/dev/null 2>&1 && echo x; done | wc -l)\"\n\
                 docker create --network none {IMAGE} true >/dev/null; echo \"one-more: $?\"",
                sbx_fn()
            ),
        );
        for case in ["files", "big", "name", "labels"] {
            assert_eq!(
                line_after(&r.stdout, &format!("{case}:")),
                "125",
                "{case}: {}",
                r.stdout
            );
        }
        assert!(!r.stdout.contains("recorded:"), "{}", r.stdout);
        assert!(r.stderr.contains("Invalid container name"), "{}", r.stderr);
        // The container table is bounded too.
        assert_eq!(line_after(&r.stdout, "count:"), "64", "{}", r.stderr);
        assert_eq!(line_after(&r.stdout, "one-more:"), "125");
        assert!(
            r.stderr.contains("at most 64 sandbox containers"),
            "{}",
            r.stderr
        );
        down_cage(&cage, &netns);
    }
}

#[test]
fn whatever_user_the_gateway_asks_for_files_carry_no_host_identity() {
    let _serial = serial();
    // The probe is valid: gid 42 is a host group that matters (Debian's `shadow`, which
    // reads /etc/shadow): a setgid file of it left in the workspace would hand it to anyone.
    let group = std::process::Command::new("getent")
        .args(["group", "42"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&group.stdout).starts_with("shadow:"),
        "gid 42 is not shadow on this host: {}",
        String::from_utf8_lossy(&group.stdout)
    );
    for (mode, pool) in runs() {
        let mut cage = new_cage(mode, pool);
        set_mode(&cage.root.join("workspace"), 0o777);
        cage.up();
        let netns = cage.netns_inodes();
        let r = gateway(&cage, &format!("{}sbx c-u /workspace /workspace", sbx_fn()));
        let id = started(&r.stdout, "c-u").expect("started");
        let parked = parked_for(&cage, pool, &id);
        let r = gateway(
            &cage,
            &format!(
                "docker exec -u 1003:42 c-u sh -c '{AGE_SH}; echo \"ids: $(id -u) $(id -g)\"; cp /bin/cat /workspace/cat-sg && chmod 6755 /workspace/cat-sg; touch /workspace/u-file'\n\
                 docker exec -u 70000:70000 c-u true; echo \"outside: $?\""
            ),
        );
        // Inside, the sandbox got the ids it asked for: not the container's parked sandbox,
        // made for its create's user, which stays parked.
        assert_eq!(line_after(&r.stdout, "ids:"), "1003 42", "{}", r.stderr);
        pool::assert_fresh(&r.stdout, "exec -u");
        if let Some(p) = parked {
            let still = pool::parked(&cage, "gw", Some(&id[..12]));
            assert!(
                still.contains(&p),
                "exec -u took the parked sandbox: {still:?}"
            );
        }
        let outside = line_after(&r.stdout, "outside:").to_string();
        // A container created as that user: its calls go to a sandbox parked as that user.
        let r = gateway(
            &cage,
            &format!(
                "{}docker rm -f c-u >/dev/null; sbx c-g /workspace /workspace 1003:42",
                sbx_fn()
            ),
        );
        let id = started(&r.stdout, "c-g").expect("started");
        parked_for(&cage, pool, &id);
        let r = gateway(
            &cage,
            &format!(
                "docker exec c-g sh -c '{AGE_SH}; echo \"ids: $(id -u) $(id -g)\"; cp /bin/cat /workspace/cat-sg2 && chmod 6755 /workspace/cat-sg2; touch /workspace/u-file2'"
            ),
        );
        assert_sandbox(pool, &r.stdout, "created as 1003:42");
        assert_eq!(line_after(&r.stdout, "ids:"), "1003 42", "{}", r.stderr);
        // ... and on the host they are no host identity.
        let ws = cage.root.join("workspace");
        for f in ["u-file", "cat-sg", "u-file2", "cat-sg2"] {
            let m = std::fs::metadata(ws.join(f)).unwrap();
            match mode {
                Mode::Root => {
                    let (ub, gb) = (
                        root_subordinate_base("/etc/subuid"),
                        root_subordinate_base("/etc/subgid"),
                    );
                    assert_eq!((m.uid(), m.gid()), (ub + 1003, gb + 42), "{f}");
                }
                Mode::Rootless { uid, gid } => {
                    assert_eq!((m.uid(), m.gid()), (uid, gid), "{f}")
                }
            }
            assert_ne!(m.gid(), 42, "{f} carries the host's shadow group");
        }
        if mode == Mode::Root {
            // An id beyond the mapped range is refused, never mapped to itself on the host.
            assert_ne!(outside, "0", "{}", r.stderr);
        }
        down_cage(&cage, &netns);
    }
}
