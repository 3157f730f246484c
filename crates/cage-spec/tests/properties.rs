//! Property tests over what hostile input reaches: the docker argv the gateway sends the
//! sandbox broker (parse, bounds, judgement, exec request, inspect templates) and the text of
//! `cage.toml`.
//!
//! Bounded and deterministic for CI: each property runs a fixed number of cases from a fixed
//! seed, and writes no failure-persistence file (a read-only checkout works).
//! `PROPTEST_CASES=N` runs N cases per property instead; `PROPTEST_RNG_SEED=S` another seed
//! (e.g. a random one in a nightly job). `--nocapture` shows cases/s and how many generated
//! creates reach the judgement and are accepted.

use std::cell::Cell;
use std::path::{Component, PathBuf};
use std::time::Instant;

use cage_spec::cage::{parse_cage, Cage, HealthProbe, Restart, ServiceRoot};
use cage_spec::docker::{
    check_bounds, exec_request, inspect_document, judge_create, limits, parse, render_template,
    tmpfs_mount, BrokerPolicy, Call, Create, Exec, ExecPlan, GatewayMount, SandboxShape,
};
use cage_spec::passwd::resolve_user;
use cage_spec::{render_sandbox, ExtraMount, HostIds, IdPair, RootfsSource, SpecError};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseResult, TestError, TestRunner};
use toml::{Table, Value};

/// The seed CI runs from (any fixed value; `PROPTEST_RNG_SEED` overrides it).
const SEED: u64 = 0x00ca_6e12_0417;

/// The config for a property of `cases` cases: proptest's defaults (which read the
/// `PROPTEST_*` variables), a fixed case count and seed unless the environment names one,
/// and no persistence file.
// Test harness, not the crate: CI knobs come from the environment.
#[allow(clippy::disallowed_methods)]
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let rng_seed = match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => base.rng_seed,
        None => RngSeed::Fixed(SEED),
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: None,
        ..base
    }
}

/// Run one property, print its rate, and fail the test with the minimal failing input.
// Test harness, not the crate: it times the cases to print a rate.
#[allow(clippy::disallowed_methods)]
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let config = config(cases);
    let n = config.cases;
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let result = runner.run(&strategy, test);
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!(
            "{name}: {n} cases in {secs:.2}s ({:.0} cases/s)",
            f64::from(n) / secs
        ),
        Err(TestError::Fail(why, input)) => {
            panic!("{name}: {why}\nminimal failing input: {input:?}")
        }
        Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
    }
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

// ---------------------------------------------------------------------------------------
// Vocabulary and values.

const IMAGE: &str = "openclaw-sandbox:bookworm-slim";

fn pick(words: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(words).prop_map(str::to_string).boxed()
}

/// One character: mostly printable ASCII, some control characters (NUL included), some of
/// any plane.
fn wild_char() -> BoxedStrategy<char> {
    prop_oneof![
        6 => prop::char::range(' ', '~'),
        1 => prop::char::range('\0', '\x1f'),
        2 => any::<char>(),
    ]
    .boxed()
}

/// A long string, cheap to make: a seeded walk over a palette of path syntax, NUL, control
/// characters and multi-byte ones (it shrinks by length).
fn long_string() -> BoxedStrategy<String> {
    const PALETTE: &[char] = &[
        'a',
        'Z',
        '0',
        '/',
        '/',
        '.',
        '.',
        ':',
        '=',
        ',',
        '-',
        ' ',
        '\0',
        '\n',
        '\u{7f}',
        'é',
        '\u{fffd}',
        '\u{202e}',
        '\u{10ffff}',
        '{',
        '}',
        '"',
        '\\',
    ];
    (any::<u64>(), 0usize..4096)
        .prop_map(|(mut x, n)| {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    PALETTE[(x % PALETTE.len() as u64) as usize]
                })
                .collect()
        })
        .boxed()
}

/// Anything: unicode, NUL bytes, control characters, strings of a few KB.
fn wild() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::collection::vec(wild_char(), 0..24).prop_map(String::from_iter),
        1 => (wild_char(), 0usize..4096).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => long_string(),
    ]
    .boxed()
}

const COMMANDS: &[&str] = &[
    "create",
    "exec",
    "inspect",
    "start",
    "rm",
    "image",
    "version",
    "info",
    "run",
    "",
    "-v",
    "container",
];

const FLAGS: &[&str] = &[
    "--name",
    "--init",
    "--label",
    "-l",
    "--read-only",
    "--tmpfs",
    "--network",
    "--net",
    "--user",
    "-u",
    "--cap-drop",
    "--cap-add",
    "--security-opt",
    "--dns",
    "--add-host",
    "--pids-limit",
    "--memory",
    "-m",
    "--memory-swap",
    "--cpus",
    "--gpus",
    "--ulimit",
    "--volume",
    "-v",
    "--workdir",
    "-w",
    "--env-file",
    "--env",
    "-e",
    "--privileged",
    "--device",
    "--userns",
    "-i",
    "-t",
    "-it",
    "-ti",
    "--interactive",
    "--tty",
    "-f",
    "--format",
    "--type",
    "--force",
    "inspect",
    "--",
    "-",
    "--volume=",
    "--name=",
];

/// Values the broker knows, for arbitrary argv to stumble on.
const VALUES: &[&str] = &[
    IMAGE,
    IMAGE,
    "/workspace:/w",
    "/state/x:/s:ro",
    "/config:/c",
    "/workspace//.git:/g",
    "none",
    "1000:1000",
    "/tmp",
    "sbx",
    "{{json .Mounts}}",
    "{{.State.Running}}",
    "1g",
    "256",
];

/// One path component, mostly plain, sometimes adversarial.
fn component() -> BoxedStrategy<String> {
    prop_oneof![
        8 => pick(&[
            "sandbox", "skills", "main", ".git", "link", "x", "a b", "...", "workspace", "state",
            ".openclaw", "config", "etc", "proc", "..x", ".x", "x..",
        ]),
        12 => "[a-zA-Z0-9._-]{1,12}",
        3 => pick(&["..", ".", "", "x,ro"]),
        1 => pick(&["a:b", ":", "x:ro"]),
        1 => wild(),
        1 => (1usize..300).prop_map(|n| "n".repeat(n)),
    ]
    .boxed()
}

/// A head (mostly from `good`), components, maybe a trailing slash.
fn path_from(good: &'static [&'static str], bad: &'static [&'static str]) -> BoxedStrategy<String> {
    (
        prop_oneof![6 => pick(good), 1 => pick(bad)],
        prop::collection::vec(component(), 0..4),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(mut p, comps, trailing)| {
            for c in comps {
                p.push('/');
                p.push_str(&c);
            }
            if trailing {
                p.push('/');
            }
            p
        })
        .boxed()
}

/// A path in the gateway (a bind source), mostly near its mounts.
fn gateway_path() -> BoxedStrategy<String> {
    path_from(
        &[
            "/workspace",
            "/state",
            "/config",
            "/workspace/",
            "/workspace/.git",
            "/workspace//.git",
            "/state/",
            "/config/",
            "/workspace//",
            "/state/sandbox/skills",
        ],
        &[
            "//workspace",
            "/workspaces",
            "/stat",
            "/",
            "",
            "/etc",
            "/cage/workspace",
            "/proc/self/root",
            "workspace",
            "/.",
            "/..",
            "/workspace/..",
            "/workspace/.",
            "./workspace",
            "/config/../state",
        ],
    )
}

/// A path in the sandbox (a bind or tmpfs destination, a workdir).
fn sandbox_path() -> BoxedStrategy<String> {
    path_from(
        &[
            "/workspace",
            "/tmp",
            "/x",
            "/workspace/.openclaw/sandbox-skills/skills",
            "/var/tmp",
            "/run",
            "/workspace/",
            "/home/node",
            "/opt",
        ],
        &["/", "", "rel", "/proc", "/..", "//", "/./x"],
    )
}

fn volume_value() -> BoxedStrategy<String> {
    prop_oneof![
        30 => (
            gateway_path(),
            sandbox_path(),
            prop::option::weighted(
                0.5,
                good_bad(
                    &["ro", "rw", "z", "Z", "ro,z", "rw,Z", "ro,rw", "z,ro"],
                    &["", "rslave", "ro,", "nocopy", "ro:ro", "bind", "rw,exec"],
                ),
            ),
        )
            .prop_map(|(s, d, o)| match o {
                Some(o) => format!("{s}:{d}:{o}"),
                None => format!("{s}:{d}"),
            }),
        1 => gateway_path(),
        1 => wild(),
    ]
    .boxed()
}

fn tmpfs_value() -> BoxedStrategy<String> {
    (
        sandbox_path(),
        prop::option::weighted(
            0.5,
            prop::collection::vec(
                pick(&[
                    "size=64m",
                    "size=1g",
                    "mode=1777",
                    "rw",
                    "nosuid",
                    "nodev",
                    "noexec",
                    "exec",
                    "size=x",
                    "uid=0",
                    "size=99999999999999999999g",
                    "",
                    "size=",
                    "=",
                    "suid",
                    "dev",
                ]),
                0..4,
            ),
        ),
    )
        .prop_map(|(d, o)| match o {
            Some(o) => format!("{d}:{}", o.join(",")),
            None => d,
        })
        .boxed()
}

fn or_wild(s: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![15 => s, 1 => wild()].boxed()
}

/// Mostly values the broker takes, sometimes ones it should refuse, now and then anything.
fn good_bad(good: &'static [&'static str], bad: &'static [&'static str]) -> BoxedStrategy<String> {
    or_wild(prop_oneof![4 => pick(good), 1 => pick(bad)].boxed())
}

fn name_value() -> BoxedStrategy<String> {
    or_wild(
        prop_oneof![
            4 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
            1 => pick(&["../x", "", "a/b", ".x", "-x", "a b", "x\0"]),
            1 => (100usize..200).prop_map(|n| "a".repeat(n)),
        ]
        .boxed(),
    )
}

fn user_value() -> BoxedStrategy<String> {
    good_bad(
        &[
            "1000:1000",
            "1000",
            "node",
            "1000:0",
            "65534",
            "0000:x",
            "toor",
            "00",
            " 0",
            "+0",
            "-1",
            "",
        ],
        &["0", "0:0", "root", "root:root", "root:0", "0:1000"],
    )
}

fn size_value() -> BoxedStrategy<String> {
    good_bad(
        &["1g", "512m", "1", "64M", "2GiB", "16t", "8k", "0"],
        &["1.5g", "-1m", "99999999999999999999g", "", "1x", "m"],
    )
}

fn pids_value() -> BoxedStrategy<String> {
    or_wild(
        prop_oneof![
            4 => "-?[0-9]{1,5}",
            1 => pick(&["99999999999999999999", "abc", "", "9223372036854775807", "+1", "0x10"]),
        ]
        .boxed(),
    )
}

/// `[name, value]`, `[--name=value]` (long flags only) or a bare flag.
fn flag(
    names: &'static [&'static str],
    value: BoxedStrategy<String>,
) -> BoxedStrategy<Vec<String>> {
    (pick(names), value, prop::bool::weighted(0.3))
        .prop_map(|(f, v, inline)| {
            if inline && f.starts_with("--") {
                vec![format!("{f}={v}")]
            } else {
                vec![f, v]
            }
        })
        .boxed()
}

fn bare(names: &'static [&'static str]) -> BoxedStrategy<Vec<String>> {
    pick(names).prop_map(|f| vec![f]).boxed()
}

/// One flag of a create (with its value) that the broker may accept (or refuse for its value).
fn create_flag() -> BoxedStrategy<Vec<String>> {
    prop_oneof![
        12 => flag(&["-v", "--volume"], volume_value()),
        4 => flag(&["--tmpfs"], tmpfs_value()),
        2 => flag(&["--name"], name_value()),
        2 => bare(&["--init", "--read-only"]),
        2 => flag(&["--label", "-l"], or_wild("[a-z.]{1,12}(=[ -~]{0,12})?".boxed())),
        1 => flag(&["--network", "--net"], good_bad(
            &["none"],
            &["host", "bridge", "", "None", "container:x", "none "],
        )),
        2 => flag(&["--user", "-u"], user_value()),
        1 => flag(&["--cap-drop"], pick(&["ALL", "NET_RAW", ""])),
        1 => flag(&["--security-opt"], good_bad(
            &["no-new-privileges", "no-new-privileges:true"],
            &["seccomp=unconfined", "no-new-privileges:false", "apparmor=unconfined", "ALL"],
        )),
        2 => flag(&["--pids-limit"], pids_value()),
        2 => flag(&["--memory", "-m", "--memory-swap", "--cpus", "--ulimit"], size_value()),
        2 => flag(&["--workdir", "-w", "--env-file"], sandbox_path()),
        2 => flag(&["--env", "-e"], or_wild("[A-Z_]{1,8}=[ -~]{0,16}".boxed())),
    ]
    .boxed()
}

/// A flag the broker never accepts, or one it does not know, or any flag with any value.
fn hostile_flag() -> BoxedStrategy<Vec<String>> {
    prop_oneof![
        2 => bare(&["--privileged", "--privileged=false"]),
        2 => flag(&["--cap-add"], pick(&["SYS_ADMIN", "ALL", "NET_ADMIN", ""])),
        2 => flag(&["--device"], pick(&["/dev/fuse", "/dev/kvm", "/dev/sda:/dev/xvda:rwm", ""])),
        2 => flag(
            &["--gpus", "--userns", "--dns", "--add-host"],
            pick(&["all", "host", "8.8.8.8", ""]),
        ),
        2 => flag(
            &["--network", "--net", "--user", "-u"],
            pick(&["host", "bridge", "0", "root", "0:0", "root:x"]),
        ),
        2 => bare(&["--pid=host", "-p", "--mount", "--ipc=host", "--rm", "-", "-v=/x:/y", "--"]),
        1 => (pick(FLAGS), wild()).prop_map(|(f, v)| vec![f, v]),
    ]
    .boxed()
}

/// A `create` from the real vocabulary: flags (a hostile one in a quarter of them, anywhere),
/// maybe `--`, the image, a command.
fn create_argv() -> BoxedStrategy<Vec<String>> {
    (
        prop::collection::vec(create_flag(), 0..8),
        prop::option::weighted(0.25, (any::<prop::sample::Index>(), hostile_flag())),
        prop::bool::weighted(0.05),
        prop_oneof![
            30 => Just(IMAGE.to_string()),
            2 => pick(&["debian:latest", "", "-", "--privileged", "openclaw-sandbox:bookworm "]),
            1 => wild(),
        ],
        prop::collection::vec(
            prop_oneof![3 => pick(&["sleep", "infinity", "sh", "-c", "--rm"]), 1 => wild()],
            0..3,
        ),
    )
        .prop_map(|(mut flags, hostile, dashdash, image, cmd)| {
            if let Some((at, f)) = hostile {
                flags.insert(at.index(flags.len() + 1), f);
            }
            let mut a = vec!["create".to_string()];
            a.extend(flags.into_iter().flatten());
            if dashdash {
                a.push("--".into());
            }
            a.push(image);
            a.extend(cmd);
            a
        })
        .boxed()
}

/// A Go template in OpenClaw's dialect, or near it.
fn template() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::collection::vec(
            prop_oneof![
                8 => pick(&[
                    "{{", "}}", "{{-", "-}}", "{{ ", " }}", ".", ".State.Running", ".Config.Labels",
                    ".Mounts", ".HostConfig.Tmpfs", ".Config.Env", "json ", "index ",
                    "\"openclaw.sandbox\"", "\"", "\\", "range ", "end", "println ", "print ",
                    "{{range .Mounts}}", "{{range .}}", "{{end}}", "{{json .}}", "{{.}}", "x", " ",
                    "é", "\u{0}", "}", "{", "{{-}}", "{{--}}", "..", ".Id", "{{index . \"Id\"}}",
                ]),
                1 => wild(),
            ],
            0..14,
        )
        .prop_map(|v| v.concat()),
        1 => wild(),
        1 => (1usize..200).prop_map(|n| "{{range .}}".repeat(n) + &"{{end}}".repeat(n)),
    ]
    .boxed()
}

/// Any other call from the real vocabulary.
fn other_argv() -> BoxedStrategy<Vec<String>> {
    let exec_flag = prop_oneof![
        3 => bare(&["-i", "-t", "-it", "-ti", "--interactive", "--tty"]),
        2 => flag(&["-w", "--workdir"], sandbox_path()),
        1 => flag(&["--env-file"], gateway_path()),
        2 => flag(&["-e", "--env"], or_wild("[A-Z_]{1,8}=[ -~]{0,16}".boxed())),
        2 => flag(&["-u", "--user"], user_value()),
        1 => (pick(FLAGS), wild()).prop_map(|(f, v)| vec![f, v]),
    ];
    let words = prop::collection::vec(or_wild(name_value()), 0..4);
    prop_oneof![
        4 => (prop::collection::vec(exec_flag, 0..6), words.clone()).prop_map(|(f, w)| {
            let mut a = vec!["exec".to_string()];
            a.extend(f.into_iter().flatten());
            a.extend(w);
            a
        }),
        4 => (
            prop::collection::vec(
                prop_oneof![
                    3 => flag(&["-f", "--format"], template()),
                    1 => flag(&["--type"], pick(&["container", "image", ""])),
                ],
                0..3,
            ),
            words.clone(),
        )
            .prop_map(|(f, w)| {
                let mut a = vec!["inspect".to_string()];
                a.extend(f.into_iter().flatten());
                a.extend(w);
                a
            }),
        2 => (
            pick(&["rm", "start"]),
            prop::collection::vec(bare(&["-f", "--force", "-x"]), 0..2),
            words.clone(),
        )
            .prop_map(|(c, f, w)| {
                let mut a = vec![c];
                a.extend(f.into_iter().flatten());
                a.extend(w);
                a
            }),
        1 => (prop::collection::vec(pick(&["inspect", "ls", "-f", "--", IMAGE]), 0..3), words)
            .prop_map(|(f, w)| {
                let mut a = vec!["image".to_string()];
                a.extend(f);
                a.extend(w);
                a
            }),
        1 => pick(&["version", "info"]).prop_map(|c| vec![c]),
    ]
    .boxed()
}

/// Fully arbitrary argv, its first word often a command.
fn arbitrary_argv() -> BoxedStrategy<Vec<String>> {
    (
        prop::option::weighted(0.7, pick(COMMANDS)),
        prop::collection::vec(
            prop_oneof![3 => wild(), 2 => pick(FLAGS), 2 => pick(VALUES)],
            0..10,
        ),
    )
        .prop_map(|(cmd, rest)| cmd.into_iter().chain(rest).collect())
        .boxed()
}

// ---------------------------------------------------------------------------------------
// The broker's invariants.

fn policy(gateway_mounts: Vec<GatewayMount>) -> BrokerPolicy {
    BrokerPolicy {
        images: vec![(IMAGE.into(), "/cage/rootfs/openclaw-sandbox".into())],
        gateway_mounts,
        max_memory: 1 << 30,
        max_pids: 256,
    }
}

fn mount(inside: &str, host: &str, read_only: bool) -> GatewayMount {
    GatewayMount {
        inside: inside.into(),
        host: host.into(),
        read_only,
    }
}

/// The gateway's mounts as a cage gives them: the workspace and a state volume writable, the
/// gateway's config read-only.
fn openclaw_policy() -> BrokerPolicy {
    policy(vec![
        mount("/workspace", "/cage/workspace", false),
        mount("/state", "/cage/.cagerun/volumes/state", false),
        mount("/config", "/cage/config/openclaw", true),
    ])
}

/// Nested mounts: a read-only directory inside the writable workspace (its host path is the
/// same directory of the workspace: e.g. `.git` kept from the gateway's writes), and a mount
/// named with a trailing slash.
fn nested_policy() -> BrokerPolicy {
    policy(vec![
        mount("/workspace", "/cage/workspace", false),
        mount("/workspace/.git", "/cage/workspace/.git", true),
        mount("/state/", "/cage/.cagerun/volumes/state", false),
    ])
}

fn comps(p: &str) -> Vec<&str> {
    p.split('/').filter(|c| !c.is_empty()).collect()
}

fn plain_names(p: &str) -> bool {
    p.is_empty() || p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// What an accepted create must be: nothing the policy forbids, and every bind a path inside
/// the gateway mount its source lies in (component-wise, the innermost), never wider.
fn check_shape(c: &Create, s: &SandboxShape, policy: &BrokerPolicy) -> TestCaseResult {
    prop_assert!(!c.privileged, "--privileged accepted");
    prop_assert!(c.cap_add.is_empty(), "--cap-add accepted");
    prop_assert!(c.devices.is_empty(), "--device accepted");
    prop_assert!(c.gpus.is_none() && c.userns.is_none());
    prop_assert!(c.dns.is_empty() && c.add_host.is_empty());
    prop_assert!(
        c.network.as_deref().is_none_or(|n| n == "none"),
        "--network {:?} accepted",
        c.network
    );
    prop_assert!(c
        .security_opt
        .iter()
        .all(|o| o == "no-new-privileges" || o == "no-new-privileges:true"));
    if let Some(u) = &s.user {
        let uid = u.split(':').next().unwrap_or_default();
        prop_assert!(uid != "0" && uid != "root", "--user {u} accepted");
    }
    prop_assert!(policy.images.iter().any(|(n, _)| *n == s.image));
    prop_assert_eq!(s.binds.len(), c.volumes.len());
    for b in &s.binds {
        prop_assert!(
            policy.gateway_mounts.iter().any(|m| m.host == b.root),
            "bind root {} is no gateway mount's host path",
            b.root
        );
        prop_assert!(
            !b.path.starts_with('/') && plain_names(&b.path),
            "bind path {:?} is not plain names",
            b.path
        );
        let src = comps(&b.source);
        prop_assert!(
            b.source.starts_with('/') && src.iter().all(|c| *c != "." && *c != ".."),
            "bind source {:?} is not clean",
            b.source
        );
        let m = policy
            .gateway_mounts
            .iter()
            .filter(|m| src.starts_with(&comps(&m.inside)))
            .max_by_key(|m| comps(&m.inside).len());
        let Some(m) = m else {
            return Err(TestCaseError::fail(format!(
                "bind source {} lies in no gateway mount",
                b.source
            )));
        };
        // Only a writable bind is sandbox material: a read-only mount (or one nested in a
        // writable mount) is refused, never read through the writable one.
        prop_assert!(
            !m.read_only,
            "a bind through the read-only mount {}: {:?}",
            m.inside,
            b
        );
        let rest = src[comps(&m.inside).len()..].join("/");
        prop_assert_eq!(
            (&b.root, &b.path),
            (&m.host, &rest),
            "bind source {} is not mapped through its innermost mount {}",
            &b.source,
            &m.inside
        );
        prop_assert!(b.inside.starts_with('/') && !b.inside.split('/').any(|c| c == ".."));
    }
    prop_assert!(s.memory <= policy.max_memory);
    prop_assert!(s.pids >= 1 && s.pids <= policy.max_pids);
    for t in &s.tmpfs {
        prop_assert!(tmpfs_mount(t).is_ok());
    }
    Ok(())
}

/// The image's users: root, root again under another name, and OpenClaw's.
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnode:x:1000:\n";

/// The sandbox request of an exec of an accepted shape: its beneath-binds are the shape's
/// binds, unchanged, and the renderer never refuses them; root is refused, however the
/// create's `--user` spelt it (`00`, `+0`, a second name for uid 0).
fn check_exec(s: &SandboxShape, counts: &Counts) -> TestCaseResult {
    let exec = Exec {
        container: "sbx".into(),
        command: vec!["sh".into(), "-lc".into(), "true".into()],
        ..Exec::default()
    };
    let plan = |uid| ExecPlan {
        shape: s,
        exec: &exec,
        env: vec![("LANG".into(), "C.UTF-8".into())],
        rootfs: RootfsSource::Dir("/cage/rootfs/openclaw-sandbox".into()),
        user: IdPair { uid, gid: 1000 },
        hostname: "0123456789ab".into(),
    };
    prop_assert!(exec_request(plan(0)).is_err(), "an exec as root accepted");
    if let Some(Ok(id)) = s.user.as_deref().map(|u| resolve_user(u, PASSWD, GROUP)) {
        if id.uid == 0 {
            bump(&counts.disguised_root);
        }
        prop_assert_eq!(exec_request(plan(id.uid)).is_err(), id.uid == 0);
    }
    let req = exec_request(plan(1000))
        .map_err(|e| TestCaseError::fail(format!("exec of an accepted shape refused: {e}")))?;
    let beneath: Vec<(&PathBuf, &PathBuf, &String, bool)> = req
        .extra_mounts
        .iter()
        .filter_map(|m| match m {
            ExtraMount::BindBeneath {
                root,
                path,
                dst,
                ro,
            } => Some((root, path, dst, *ro)),
            _ => None,
        })
        .collect();
    prop_assert_eq!(beneath.len(), s.binds.len());
    for (b, (root, path, dst, ro)) in s.binds.iter().zip(beneath) {
        prop_assert_eq!(root, &PathBuf::from(&b.root));
        prop_assert_eq!(path, &PathBuf::from(&b.path));
        prop_assert_eq!(dst, &b.inside);
        prop_assert_eq!(ro, b.read_only);
        prop_assert!(root.is_absolute());
        prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))));
    }
    let host = HostIds {
        uid: 1000,
        gid: 1000,
    };
    if let Err(e @ SpecError::BindBeneath { .. }) = render_sandbox(&req, host) {
        return Err(TestCaseError::fail(format!(
            "the renderer refuses the broker's bind: {e}"
        )));
    }
    Ok(())
}

/// The inspect document of an accepted shape renders OpenClaw's mount template as JSON naming
/// the gateway's sources; any template renders or errs.
fn check_inspect(s: &SandboxShape, extra_template: Option<&str>) -> TestCaseResult {
    let id = "0123456789abcdef".repeat(4);
    let doc = inspect_document(
        &id,
        s,
        true,
        &[("A".into(), "b".into())],
        "2026-01-01T00:00:00Z",
    );
    let out = render_template("{{json .Mounts}}", &doc)
        .map_err(|e| TestCaseError::fail(format!("{{{{json .Mounts}}}}: {e}")))?;
    let mounts: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| TestCaseError::fail(format!("{{{{json .Mounts}}}} is not JSON: {e}")))?;
    let sources: Vec<&str> = mounts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["Source"].as_str())
        .collect();
    let want: Vec<&str> = s.binds.iter().map(|b| b.source.as_str()).collect();
    prop_assert_eq!(sources, want);
    if let Some(t) = extra_template {
        let _ = render_template(t, &doc);
    }
    Ok(())
}

/// Counters for a property's generated cases.
#[derive(Default)]
struct Counts {
    cases: Cell<usize>,
    create: Cell<usize>,
    accepted: Cell<usize>,
    binds: Cell<usize>,
    disguised_root: Cell<usize>,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

impl Counts {
    fn report(&self, name: &str) {
        let n = self.cases.get();
        println!(
            "{name}: {:.1}% parse as a create, {:.1}% accepted by judge_create ({} binds; \
             {} with a --user that resolves to uid 0, refused by exec_request)",
            pct(self.create.get(), n),
            pct(self.accepted.get(), n),
            self.binds.get(),
            self.disguised_root.get(),
        );
    }
}

/// Everything the broker does with one argv: bounds, parse, and for a create the judgement
/// under `policy` (checked when accepted), the exec request and the inspect document.
fn broker(argv: &[String], policy: &BrokerPolicy, counts: &Counts) -> TestCaseResult {
    bump(&counts.cases);
    let _ = check_bounds(argv, &[argv.len(), 1 << 16, 0]);
    match parse(argv) {
        Ok(Call::Create(c)) => {
            bump(&counts.create);
            if let Ok(s) = judge_create(&c, policy) {
                bump(&counts.accepted);
                counts.binds.set(counts.binds.get() + s.binds.len());
                check_shape(&c, &s, policy)?;
                check_exec(&s, counts)?;
                check_inspect(&s, None)?;
            }
        }
        Ok(Call::Inspect {
            format: Some(f), ..
        }) => {
            let (_, shape) = accepted_openclaw_create();
            check_inspect(&shape, Some(&f))?;
        }
        _ => {}
    }
    Ok(())
}

fn accepted_openclaw_create() -> (Create, SandboxShape) {
    let argv: Vec<String> = [
        "create",
        "--name",
        "sbx",
        "-l",
        "openclaw.sandbox=1",
        "--tmpfs",
        "/tmp",
        "-v",
        "/workspace:/workspace",
        "-v",
        "/state/x:/cfg:ro",
        IMAGE,
        "sleep",
        "infinity",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Ok(Call::Create(c)) = parse(&argv) else {
        panic!("the fixed create does not parse")
    };
    let s = judge_create(&c, &openclaw_policy()).expect("the fixed create is refused");
    (*c, s)
}

/// The checks catch what they are for (each escape below, made by hand, fails them).
#[test]
fn the_bind_checks_catch_escapes() {
    let policy = openclaw_policy();
    let (c, good) = accepted_openclaw_create();
    let counts = Counts::default();
    assert!(check_shape(&c, &good, &policy).is_ok());
    assert!(check_exec(&good, &counts).is_ok());
    let escapes: [fn(&mut cage_spec::docker::Bind); 7] = [
        |b| b.path = "../x".into(),
        |b| b.path = "/etc".into(),
        |b| b.path = "a//b".into(),
        |b| b.root = "/".into(),
        |b| b.source = "/workspace/../etc".into(),
        |b| b.inside = "/x/../../etc".into(),
        |b| {
            b.source = "/config".into();
            b.root = "/cage/config/openclaw".into();
            b.read_only = false;
        },
    ];
    for escape in escapes {
        let mut s = good.clone();
        escape(&mut s.binds[0]);
        assert!(check_shape(&c, &s, &policy).is_err(), "{:?}", s.binds[0]);
    }
    let mut root = good.clone();
    root.user = Some("0:0".into());
    assert!(check_shape(&c, &root, &policy).is_err());
    let mut privileged = c.clone();
    privileged.privileged = true;
    assert!(check_shape(&privileged, &good, &policy).is_err());
}

// ---------------------------------------------------------------------------------------
// The broker properties.

#[test]
fn arbitrary_argv_never_panics() {
    let policy = openclaw_policy();
    let counts = Counts::default();
    check("arbitrary argv", 4000, arbitrary_argv(), |argv| {
        broker(&argv, &policy, &counts)
    });
    counts.report("arbitrary argv");
}

#[test]
fn accepted_creates_bind_only_inside_the_gateways_mounts() {
    let policy = openclaw_policy();
    let counts = Counts::default();
    check("structured create", 5000, create_argv(), |argv| {
        broker(&argv, &policy, &counts)
    });
    counts.report("structured create");
}

/// A read-only mount nested in a writable one is never read through the writable one,
/// however the source is spelt.
#[test]
fn nested_read_only_mounts_are_never_widened() {
    let policy = nested_policy();
    let counts = Counts::default();
    check(
        "structured create, nested mounts",
        3000,
        create_argv(),
        |argv| broker(&argv, &policy, &counts),
    );
    counts.report("structured create, nested mounts");
}

#[test]
fn other_calls_and_templates_never_panic() {
    let policy = openclaw_policy();
    let counts = Counts::default();
    check(
        "structured exec/inspect/rm/start/image",
        3000,
        other_argv(),
        |argv| broker(&argv, &policy, &counts),
    );
}

#[test]
fn templates_over_any_accepted_shape_never_panic() {
    let policy = openclaw_policy();
    check(
        "template over a generated shape",
        2000,
        (create_argv(), template()),
        |(argv, t)| {
            if let Ok(Call::Create(c)) = parse(&argv) {
                if let Ok(s) = judge_create(&c, &policy) {
                    check_inspect(&s, Some(&t))?;
                }
            }
            Ok(())
        },
    );
}

/// A size anywhere up to just past `limit`, often right at it.
fn near(limit: usize) -> BoxedStrategy<usize> {
    prop_oneof![1 => 0..limit + 3, 1 => limit - 2..limit + 3].boxed()
}

#[test]
fn bounds_are_exactly_the_limits() {
    check(
        "check_bounds",
        2000,
        (
            near(limits::ARGS),
            near(limits::ARG_BYTES),
            prop::collection::vec(near(limits::ENV_FILE_BYTES), 0..limits::ENV_FILES + 3),
        ),
        |(n, long, sizes)| {
            let mut argv = vec![String::new(); n];
            if let Some(a) = argv.first_mut() {
                *a = "x".repeat(long);
            }
            let within = n <= limits::ARGS
                && (n == 0 || long <= limits::ARG_BYTES)
                && sizes.len() <= limits::ENV_FILES
                && sizes.iter().all(|s| *s <= limits::ENV_FILE_BYTES);
            prop_assert_eq!(check_bounds(&argv, &sizes).is_ok(), within);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// cage.toml.

const GOOD: &str = r#"
name = "clawbot"
generate = ["TOKEN"]
models = { volume = "ollama", pull = ["qwen3:8b"] }

[services.ollama]
image = "docker.io/ollama/ollama:0.12.3"
volumes = ["models:/root/.ollama"]
healthcheck = { http = ":11434/api/version", interval = "2s", retries = 10 }
resources = { memory = "4g", pids = 512, cpus = 1.5 }

[services.gateway]
host = true
command = ["node", "openclaw.mjs", "gateway", "run"]
ports = ["127.0.0.1:18789:18789"]
depends_on = [{ service = "ollama", healthy = true }]
restart = "on-failure"
tmpfs = [{ dst = "/tmp", size = "256m" }]
env = { OPENCLAW_CONFIG_READONLY = "1" }
mounts = [{ src = "config/openclaw", dst = "/config", ro = true }]
devices = ["/dev/fuse"]

[services.gateway.sandboxes]
images = { "openclaw-sandbox:bookworm-slim" = "rootfs/openclaw-sandbox" }
memory = "1g"
pids = 256
max = 8
"#;

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What an accepted cage promises (from cage.rs).
fn check_cage(c: &Cage, allow_lan: &dyn Fn(&str) -> bool) -> TestCaseResult {
    let mut published = std::collections::HashSet::new();
    for (i, s) in c.services.iter().enumerate() {
        prop_assert!(valid_name(&s.name), "service name {:?}", s.name);
        for d in &s.depends_on {
            prop_assert!(
                c.services[..i].iter().any(|x| x.name == d.service),
                "{} depends on {}, which does not start before it",
                s.name,
                d.service
            );
        }
        if s.root == ServiceRoot::Host {
            prop_assert!(s.command.as_ref().is_some_and(|c| !c.is_empty()));
        }
        if let Some(w) = &s.workdir {
            prop_assert!(w.starts_with('/'));
        }
        for p in &s.ports {
            prop_assert!(p.host_port > 0 && p.container_port > 0);
            prop_assert!(p.host_addr.is_loopback() || allow_lan(&s.name));
            prop_assert!(
                published.insert((p.host_addr, p.host_port)),
                "{}:{} published twice",
                p.host_addr,
                p.host_port
            );
        }
        for (vol, dst) in &s.volumes {
            prop_assert!(valid_name(vol), "volume name {vol:?}");
            prop_assert!(dst.starts_with('/'));
        }
        prop_assert!(s.tmpfs.iter().all(|(d, _)| d.starts_with('/')));
        prop_assert!(s.mounts.iter().all(|(_, d, _)| d.starts_with('/')));
        for d in &s.devices {
            prop_assert!(d.starts_with("/dev/") && d.len() > 5);
            prop_assert!(!d.split('/').any(|c| c == "." || c == ".."), "device {d:?}");
        }
        if let Some(sb) = &s.sandboxes {
            prop_assert!(s.supervised());
            prop_assert!(!sb.images.is_empty());
            prop_assert!(sb
                .images
                .iter()
                .all(|(n, t)| !n.is_empty() && !n.contains(char::is_whitespace) && !t.is_empty()));
            prop_assert!(sb.pids > 0 && sb.max >= 1 && sb.max <= 64);
        }
        prop_assert!(s.pids.is_none_or(|p| p >= 1));
        prop_assert!(s.cpus.is_none_or(|c| c > 0.0 && c.is_finite()));
        if let Some(h) = &s.healthcheck {
            match &h.probe {
                HealthProbe::Http { port, path } => {
                    prop_assert!(*port > 0 && path.starts_with('/'))
                }
                HealthProbe::Command(c) => prop_assert!(!c.is_empty()),
            }
        }
        prop_assert!(!(s.once && s.on_demand));
        if !s.supervised() {
            prop_assert!(s.ports.is_empty() && s.healthcheck.is_none());
            prop_assert_eq!(&s.restart, &Restart::No);
        }
    }
    if let Some((vol, pulls)) = &c.models {
        prop_assert!(valid_name(vol));
        prop_assert!(pulls
            .iter()
            .all(|n| !n.is_empty() && !n.contains(char::is_whitespace)));
    }
    for g in &c.generate {
        let mut chars = g.chars();
        prop_assert!(
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "generate {g:?}"
        );
    }
    Ok(())
}

/// Parse; errors name a line of the text; accepted cages keep their promises.
fn cage(text: &str, allow_lan: &dyn Fn(&str) -> bool, accepted: &Cell<usize>) -> TestCaseResult {
    match parse_cage("config/cage.toml", text) {
        Ok(c) => {
            bump(accepted);
            check_cage(&c, allow_lan)
        }
        Err(e) => {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
            prop_assert!(!e.to_string().is_empty());
            Ok(())
        }
    }
}

/// Arbitrary text, edits of a good file, and deep nesting.
fn cage_text() -> BoxedStrategy<String> {
    let edit = (
        any::<prop::sample::Index>(),
        0usize..8,
        prop_oneof![
            pick(&[
                "",
                "\"",
                "'",
                "[",
                "]",
                "{",
                "}",
                "=",
                "\n",
                ",",
                "\\",
                "[[services.x]]\n",
                "0",
                "-",
                ":",
                "\u{0}",
                "é",
                "\"\"\"",
                "#",
            ]),
            wild(),
        ],
    );
    prop_oneof![
        2 => any::<String>(),
        2 => wild(),
        6 => prop::collection::vec(edit, 1..6).prop_map(|edits| {
            let mut t = GOOD.to_string();
            for (at, del, ins) in edits {
                let mut i = at.index(t.len() + 1);
                while !t.is_char_boundary(i) {
                    i -= 1;
                }
                let mut j = (i + del).min(t.len());
                while !t.is_char_boundary(j) {
                    j += 1;
                }
                t.replace_range(i..j, &ins);
            }
            t
        }),
        1 => (
            1usize..3000,
            pick(&["a = ", "[services.a]\nx = ", "services = "]),
            pick(&["[", "{ a = ", "[{ a = "]),
        )
            .prop_map(|(n, head, open)| format!("{head}{}", open.repeat(n))),
    ]
    .boxed()
}

#[test]
fn cage_toml_text_never_panics() {
    let accepted = Cell::new(0);
    let cases = Cell::new(0);
    check("cage.toml text", 3000, cage_text(), |t| {
        bump(&cases);
        cage(&t, &|_| true, &accepted)
    });
    println!(
        "cage.toml text: {:.1}% accepted",
        pct(accepted.get(), cases.get())
    );
}

// Structured cage.toml, built as a TOML table from the real keys.

fn tv(s: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    s.prop_map(Value::String).boxed()
}

/// A value of the wrong type now and then.
fn odd(v: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        20 => v,
        1 => any::<i64>().prop_map(Value::Integer),
        1 => any::<bool>().prop_map(Value::Boolean),
        1 => any::<String>().prop_map(Value::String),
        1 => Just(Value::Array(vec![])),
    ]
    .boxed()
}

/// An integer, mostly in `likely`.
fn int(likely: std::ops::Range<i64>) -> BoxedStrategy<Value> {
    prop_oneof![3 => likely, 1 => any::<i64>()]
        .prop_map(Value::Integer)
        .boxed()
}

fn strings(s: BoxedStrategy<String>, n: std::ops::Range<usize>) -> BoxedStrategy<Value> {
    prop::collection::vec(s.prop_map(Value::String), n)
        .prop_map(Value::Array)
        .boxed()
}

fn table(entries: Vec<(&'static str, BoxedStrategy<Value>, f64)>) -> BoxedStrategy<Value> {
    let parts: Vec<BoxedStrategy<Option<(String, Value)>>> = entries
        .into_iter()
        .map(|(k, v, p)| prop::option::weighted(p, v.prop_map(move |v| (k.to_string(), v))).boxed())
        .collect();
    parts
        .prop_map(|kvs| Value::Table(kvs.into_iter().flatten().collect::<Table>()))
        .boxed()
}

const SERVICE_NAMES: &[&str] = &["gateway", "ollama", "a", "b-2", "Web", "9x", "-", "x_y", ""];

fn duration() -> BoxedStrategy<Value> {
    odd(tv(or_wild(pick(&[
        "500ms",
        "5s",
        "2m",
        "1h",
        "soon",
        "",
        "99999999999999999999h",
        "-1s",
        "1.5s",
    ]))))
}

fn service() -> BoxedStrategy<Value> {
    let health = table(vec![
        (
            "http",
            odd(tv(or_wild(pick(&[
                ":11434/api/version",
                ":80",
                ":0/",
                "80/x",
                ":65536/",
                ":/",
                ":80/a/b?c",
            ])))),
            0.7,
        ),
        (
            "command",
            strings(or_wild(pick(&["curl", "-f", "x"])), 0..3),
            0.3,
        ),
        ("interval", duration(), 0.4),
        ("timeout", duration(), 0.3),
        (
            "retries",
            odd(any::<u8>().prop_map(|n| Value::Integer(n.into())).boxed()),
            0.3,
        ),
        ("start_period", duration(), 0.2),
        ("start_interval", duration(), 0.2),
    ]);
    let mount = table(vec![
        (
            "src",
            tv(or_wild(pick(&["config/openclaw", "/etc", "../x", ""]))),
            0.95,
        ),
        (
            "dst",
            tv(or_wild(pick(&["/config", "config", "/", ""]))),
            0.95,
        ),
        ("ro", any::<bool>().prop_map(Value::Boolean).boxed(), 0.5),
    ]);
    let tmpfs = table(vec![
        ("dst", tv(or_wild(pick(&["/tmp", "tmp", "/"]))), 0.95),
        ("size", tv(size_value()), 0.5),
    ]);
    let depends = prop_oneof![
        3 => pick(SERVICE_NAMES).prop_map(Value::String),
        1 => table(vec![
            ("service", tv(pick(SERVICE_NAMES)), 0.95),
            ("healthy", any::<bool>().prop_map(Value::Boolean).boxed(), 0.6),
        ]),
    ]
    .boxed();
    let resources = table(vec![
        ("memory", tv(size_value()), 0.5),
        ("pids", odd(int(1..100_000)), 0.5),
        (
            "cpus",
            odd(prop_oneof![3 => 0.1f64..64.0, 1 => any::<f64>()]
                .prop_map(Value::Float)
                .boxed()),
            0.5,
        ),
    ]);
    let sandboxes = table(vec![
        (
            "images",
            prop::collection::btree_map(
                or_wild(pick(&[IMAGE, "debian:latest", "", "a b"])),
                prop_oneof![
                    4 => tv(pick(&["rootfs/openclaw-sandbox", "host", "", "../x", "/abs"])),
                    1 => Just(Value::Integer(1)),
                ],
                0..3,
            )
            .prop_map(|m| Value::Table(m.into_iter().collect()))
            .boxed(),
            0.95,
        ),
        ("memory", tv(size_value()), 0.4),
        ("pids", int(1..1000), 0.4),
        ("max", int(0..70), 0.4),
    ]);
    let flag = |p: f64| prop::bool::weighted(p).prop_map(Value::Boolean).boxed();
    (
        prop_oneof![
            6 => Just(&["image"][..]),
            3 => Just(&["host"][..]),
            2 => Just(&["rootfs"][..]),
            1 => Just(&[][..]),
            1 => Just(&["image", "host"][..]),
        ],
        or_wild(pick(&["docker.io/ollama/ollama:0.12.3", "rootfs/x", ""])),
        table(vec![
            (
                "command",
                odd(strings(or_wild(pick(&["node", "run", ""])), 0..3)),
                0.6,
            ),
            (
                "env",
                prop::collection::btree_map(wild(), wild(), 0..3)
                    .prop_map(|m| {
                        Value::Table(m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
                    })
                    .boxed(),
                0.2,
            ),
            ("env_file", tv(wild()), 0.1),
            ("user", tv(user_value()), 0.1),
            ("workdir", tv(or_wild(pick(&["/app", "app", "", "/"]))), 0.2),
            (
                "mounts",
                prop::collection::vec(mount, 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
                0.2,
            ),
            (
                "tmpfs",
                prop::collection::vec(tmpfs, 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
                0.2,
            ),
            (
                "volumes",
                strings(
                    or_wild(pick(&[
                        "models:/root/.ollama",
                        "state:/state",
                        "Bad:/x",
                        "-x:/y",
                        "a_b:/c",
                        "x:rel",
                        "x",
                        ":/x",
                        "x:",
                        "state:/state:ro",
                    ])),
                    0..3,
                ),
                0.3,
            ),
            (
                "ports",
                strings(
                    or_wild(
                        prop_oneof![
                            pick(&[
                                "127.0.0.1:18789:18789",
                                "8080:80",
                                "0.0.0.0:80:80",
                                "[::1]:81:80",
                                "::1:82:80",
                                "80",
                                "1:2:3:4",
                                "127.0.0.1:0:1",
                                "127.0.0.1:65536:1",
                                "localhost:80:80",
                                "[::]:83:80",
                                "127.0.0.2:84:1"
                            ]),
                            "[0-9.:\\[\\]a-f]{0,20}",
                        ]
                        .boxed(),
                    ),
                    0..3,
                ),
                0.3,
            ),
            ("allow_lan", flag(0.3), 0.3),
            ("internet", flag(0.5), 0.2),
            (
                "depends_on",
                prop::collection::vec(depends, 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
                0.3,
            ),
            ("healthcheck", health, 0.2),
            (
                "restart",
                odd(tv(pick(&["no", "on-failure", "always", "sometimes", ""]))),
                0.2,
            ),
            ("resources", resources, 0.2),
            (
                "devices",
                strings(
                    or_wild(pick(&[
                        "/dev/fuse",
                        "/dev/",
                        "/dev/../etc/x",
                        "/dev/./x",
                        "/devx",
                        "/dev/dri/card0",
                        "/dev//x",
                    ])),
                    0..2,
                ),
                0.1,
            ),
            ("gpu", flag(0.5), 0.05),
            ("once", flag(0.5), 0.1),
            ("on_demand", flag(0.5), 0.1),
            ("sandboxes", sandboxes, 0.2),
            ("privileged", flag(1.0), 0.01),
        ]),
    )
        .prop_map(|(sources, root, rest)| {
            let Value::Table(mut t) = rest else {
                unreachable!()
            };
            for k in sources {
                let v = if *k == "host" {
                    Value::Boolean(true)
                } else {
                    Value::String(root.clone())
                };
                t.insert(k.to_string(), v);
            }
            Value::Table(t)
        })
        .boxed()
}

fn cage_table() -> BoxedStrategy<Value> {
    table(vec![
        ("name", tv(or_wild(pick(&["clawbot", ""]))), 0.5),
        (
            "services",
            prop::collection::btree_map(pick(SERVICE_NAMES), service(), 0..4)
                .prop_map(|m| Value::Table(m.into_iter().collect()))
                .boxed(),
            0.95,
        ),
        (
            "generate",
            strings(or_wild(pick(&["TOKEN", "A-B", "_x", "1A", ""])), 0..3),
            0.2,
        ),
        ("dashboard", tv(wild()), 0.1),
        (
            "models",
            table(vec![
                (
                    "volume",
                    tv(or_wild(pick(&["ollama", "../x", "Ollama", ""]))),
                    0.95,
                ),
                (
                    "pull",
                    strings(or_wild(pick(&["qwen3:8b", "a b", ""])), 0..3),
                    0.7,
                ),
            ]),
            0.2,
        ),
    ])
}

#[test]
fn structured_cage_toml_keeps_its_promises() {
    let accepted = Cell::new(0);
    let cases = Cell::new(0);
    check("structured cage.toml", 3000, cage_table(), |v| {
        let Ok(text) = toml::to_string(&v) else {
            return Ok(());
        };
        bump(&cases);
        let allow_lan = |name: &str| {
            v.get("services")
                .and_then(|s| s.get(name))
                .and_then(|s| s.get("allow_lan"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        cage(&text, &allow_lan, &accepted)
    });
    println!(
        "structured cage.toml: {:.1}% accepted",
        pct(accepted.get(), cases.get())
    );
}
