//! A delegated cgroup from systemd, as podman gets one: on pure cgroup v2 a login shell sits
//! in `session-N.scope`, which belongs to root, so cagerun cannot make the cgroups its limits
//! need there. Before `up` and `exec` (when it has limits) start anything, [`ensure_delegated`]
//! looks at where this process is and:
//!
//! - nothing, where cagerun is not on pure v2, runs as root (it makes `/sys/fs/cgroup/cagerun`
//!   itself), was given `$CAGERUN_CGROUP_PARENT`, or already finds a delegated parent up its
//!   own tree (a unit below `user@UID.service`, e.g. a terminal's app scope);
//! - takes its own cgroup over, where it is alone in a cgroup delegated to it (a unit with
//!   `Delegate=yes`, such as the one `cagerun generate systemd` writes): it moves into a leaf
//!   and puts the cage's cgroups beside it, inside the unit;
//! - otherwise asks the user's systemd over D-Bus for a transient scope
//!   (`org.freedesktop.systemd1.Manager.StartTransientUnit("cagerun-<what>-<pid>.scope",
//!   "fail", [PIDs=[pid], Delegate=true, ...])`), waits for the job (`JobRemoved`), checks it
//!   now sits in that scope with the memory and pids controllers, and takes the scope over.
//!
//! Taking over sets `$CAGERUN_CGROUP_PARENT` to the cgroup, so everything started from here —
//! the detached supervisor, the holder, the monitors, the sandboxes — makes its cgroups there
//! and asks nothing again. The scope lives as long as a process of the cage is in it; `down`
//! ends the last one and systemd removes the scope (`CollectMode=inactive-or-failed`).
//!
//! D-Bus: zbus's async API on a current-thread tokio runtime that is dropped before this
//! returns. zbus's blocking API would keep a thread (a static runtime or async-io's reactor)
//! for the rest of the process, and `exec`'s sandbox engine forks with clone3 and needs this
//! process single-threaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cage_sandbox::cgroups::{self, Layout, OwnCgroup};

/// The leaf this process moves into when it takes a delegated cgroup over.
pub const LEAF: &str = "cagerun";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long systemd gets to start the scope.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// What decides whether cagerun needs a cgroup from systemd (all read by [`observe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    pub unified: bool,
    pub root: bool,
    /// `$CAGERUN_CGROUP_PARENT` is set: the user (or cagerun's own parent process) chose.
    pub parent_env: bool,
    /// This process's own cgroup.
    pub own: Option<OwnCgroup>,
    /// An ancestor of the own cgroup is delegated and has memory and pids for its children.
    pub delegated_parent: bool,
}

/// What to do before starting anything that needs cgroup limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The cgroups cagerun needs can be made where it is (or not on v2 at all).
    Nothing,
    /// This process is alone in a cgroup delegated to it: divide that one.
    TakeOwn(PathBuf),
    /// Ask systemd for a delegated scope with this process in it, then take that over.
    AskSystemd,
}

/// The decision, pure.
pub fn decide(f: &Facts) -> Need {
    if !f.unified || f.root || f.parent_env {
        return Need::Nothing;
    }
    if let Some(own) = &f.own {
        if own.owned && own.alone && own.controllers {
            return Need::TakeOwn(own.path.clone());
        }
    }
    if f.delegated_parent {
        return Need::Nothing;
    }
    Need::AskSystemd
}

/// The transient scope's name: `cagerun-<what>-<pid>.scope` (`what`: the cage's id, or the
/// verb), with anything a unit name cannot hold replaced.
pub fn scope_name(what: &str, pid: u32) -> String {
    let what: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("cagerun-{what}-{pid}.scope")
}

/// Read the facts [`decide`] needs, for this process.
pub fn observe() -> Facts {
    let uid = nix::unistd::geteuid().as_raw();
    let unified = cgroups::detect() == Layout::Unified;
    let parent_env = std::env::var_os(cgroups::PARENT_ENV).is_some();
    let root = uid == 0;
    let own = (unified && !root)
        .then(|| cgroups::own_cgroup(uid))
        .flatten();
    let delegated_parent = unified && !root && !parent_env && cgroups::find_parent(uid).is_some();
    Facts {
        unified,
        root,
        parent_env,
        own,
        delegated_parent,
    }
}

/// Make sure what this process starts from now on can get cgroup limits (see the module's
/// doc). `what` names the scope, should one be needed: the cage's id, or `exec`.
pub fn ensure_delegated(what: &str) -> Result<()> {
    if delegated_without_bus()? {
        return Ok(());
    }
    let name = scope_name(what, std::process::id());
    start_scope(&name, what)?;
    let own = cgroups::own_cgroup(nix::unistd::geteuid().as_raw());
    let Some(own) = own.filter(|o| o.path.file_name() == Some(name.as_ref())) else {
        bail!("systemd started {name}, but this process is not in it (/proc/self/cgroup)");
    };
    if !own.controllers {
        bail!("systemd's scope {} has no memory and pids controllers (cgroup.controllers): the user's systemd delegates none; run `systemctl --user show -p DelegateControllers` and see systemd.resource-control(5)", own.path.display());
    }
    if !own.owned || !own.alone {
        bail!(
            "systemd's scope {} is not this user's alone to divide",
            own.path.display()
        );
    }
    tracing::info!("cgroup: in {name} (systemd, Delegate=yes)");
    take_over(&own.path)
}

/// [`ensure_delegated`] up to the point where it would ask systemd: `Ok(true)` when what
/// this process starts from now on can get cgroup limits, `Ok(false)` when only a scope from
/// the user's systemd can give it that (then [`ensure_delegated_for_sandbox`] asks). For
/// `cagerun exec`'s small front, which links no D-Bus client.
pub fn delegated_without_bus() -> Result<bool> {
    let facts = observe();
    let need = decide(&facts);
    tracing::debug!(?facts, ?need, "cgroup delegation");
    match need {
        Need::Nothing => Ok(true),
        Need::TakeOwn(dir) => take_over(&dir).map(|()| true),
        Need::AskSystemd => Ok(false),
    }
}

/// [`ensure_delegated`] for a sandbox (`cagerun exec`): without a user bus its limits fall
/// back to rlimits, as they always have where no cgroup is delegated.
pub fn ensure_delegated_for_sandbox() -> Result<()> {
    match ensure_delegated("exec") {
        Err(e)
            if e.downcast_ref::<crate::Error>()
                .is_some_and(|e| matches!(e, crate::Error::NoUserBus { .. })) =>
        {
            tracing::info!("limits: rlimits: {e}");
            Ok(())
        }
        r => r,
    }
}

fn take_over(dir: &Path) -> Result<()> {
    cgroups::take_over(dir, LEAF)
        .with_context(|| format!("dividing the delegated cgroup {}", dir.display()))?;
    // Single-threaded here (see the module's doc): the environment is ours to change.
    std::env::set_var(cgroups::PARENT_ENV, dir);
    Ok(())
}

/// The user's bus, as systemd's own tools find it: `$DBUS_SESSION_BUS_ADDRESS`, else
/// `$XDG_RUNTIME_DIR/bus` (pam_systemd sets the runtime dir at login).
pub fn user_bus_address() -> Option<String> {
    if let Some(a) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        if !a.is_empty() {
            return Some(a.to_string_lossy().into_owned());
        }
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")?;
    let bus = Path::new(&dir).join("bus");
    bus.exists()
        .then(|| format!("unix:path={}", bus.to_string_lossy()))
}

/// Start `name` with this process in it and wait until systemd says the job is done.
fn start_scope(name: &str, what: &str) -> Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    let Some(address) = user_bus_address() else {
        return Err(crate::Error::NoUserBus {
            user: crate::host::user_name(uid),
        }
        .into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the D-Bus client")?;
    let started = rt.block_on(async {
        tokio::time::timeout(JOB_TIMEOUT, start_scope_on(&address, name, what)).await
    });
    // Dropped before anything else runs: no thread of it outlives this call.
    drop(rt);
    match started {
        Ok(r) => r.with_context(|| {
            format!("asking the user's systemd ({address}) for a delegated scope {name}")
        }),
        Err(_) => bail!(
            "the user's systemd did not start {name} within {}s (`systemctl --user status {name}`)",
            JOB_TIMEOUT.as_secs()
        ),
    }
}

async fn start_scope_on(address: &str, name: &str, what: &str) -> Result<()> {
    use futures_util::StreamExt;
    use zbus::zvariant::{OwnedObjectPath, Value};

    let conn = zbus::connection::Builder::address(address)?
        .build()
        .await
        .context("connecting")?;
    // Listen before asking: the job may end before StartTransientUnit's reply is read.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(SYSTEMD)?
        .path(MANAGER_PATH)?
        .interface(MANAGER)?
        .member("JobRemoved")?
        .build();
    let mut removed = zbus::MessageStream::for_match_rule(rule, &conn, Some(64)).await?;
    // systemd sends job signals only to subscribed clients.
    conn.call_method(Some(SYSTEMD), MANAGER_PATH, Some(MANAGER), "Subscribe", &())
        .await
        .context("Subscribe")?;
    let description = format!("cagerun {what}");
    let properties: Vec<(&str, Value)> = vec![
        ("Description", Value::from(description.as_str())),
        ("PIDs", Value::from(vec![std::process::id()])),
        ("Delegate", Value::from(true)),
        // A failed scope (a supervisor killed) is removed too, not kept until reset-failed.
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            MANAGER_PATH,
            Some(MANAGER),
            "StartTransientUnit",
            &(name, "fail", properties, aux),
        )
        .await
        .context("StartTransientUnit")?;
    let job: OwnedObjectPath = reply.body().deserialize()?;
    while let Some(msg) = removed.next().await {
        let msg = msg?;
        let (_id, path, unit, result): (u32, OwnedObjectPath, String, String) =
            msg.body().deserialize()?;
        if path == job || unit == name {
            if result == "done" {
                return Ok(());
            }
            bail!("the job starting {unit} ended {result:?} (`journalctl --user -u {unit}`)");
        }
    }
    bail!("the bus closed before systemd started {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(owned: bool, alone: bool, controllers: bool) -> Option<OwnCgroup> {
        Some(OwnCgroup {
            path: "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/cagerun-x.service".into(),
            owned,
            alone,
            controllers,
        })
    }

    fn login_shell() -> Facts {
        // session-2.scope belongs to root: not owned; user-1000.slice is not the user's either.
        Facts {
            unified: true,
            root: false,
            parent_env: false,
            own: own(false, false, true),
            delegated_parent: false,
        }
    }

    #[test]
    fn a_login_shell_on_v2_asks_systemd() {
        assert_eq!(decide(&login_shell()), Need::AskSystemd);
        // Alone in a scope that is not ours (`su -l USER -c cagerun`): still not ours to divide.
        let f = Facts {
            own: own(false, true, true),
            ..login_shell()
        };
        assert_eq!(decide(&f), Need::AskSystemd);
    }

    #[test]
    fn cgroup_v1_root_and_an_explicit_parent_ask_nothing() {
        let v1 = Facts {
            unified: false,
            own: None,
            ..login_shell()
        };
        assert_eq!(decide(&v1), Need::Nothing);
        let root = Facts {
            root: true,
            ..login_shell()
        };
        assert_eq!(decide(&root), Need::Nothing);
        let env = Facts {
            parent_env: true,
            ..login_shell()
        };
        assert_eq!(decide(&env), Need::Nothing);
    }

    #[test]
    fn alone_in_a_delegated_unit_takes_it_over() {
        let f = Facts {
            own: own(true, true, true),
            delegated_parent: true,
            ..login_shell()
        };
        assert_eq!(decide(&f), Need::TakeOwn(f.own.clone().unwrap().path));
    }

    #[test]
    fn sharing_a_unit_uses_the_delegated_parent_and_asks_nothing() {
        // A test harness, or a terminal's app scope below user@UID.service.
        let f = Facts {
            own: own(true, false, true),
            delegated_parent: true,
            ..login_shell()
        };
        assert_eq!(decide(&f), Need::Nothing);
        // A unit of ours without the controllers: the parent, when there is one.
        let f = Facts {
            own: own(true, true, false),
            delegated_parent: true,
            ..login_shell()
        };
        assert_eq!(decide(&f), Need::Nothing);
        let f = Facts {
            own: own(true, false, true),
            delegated_parent: false,
            ..login_shell()
        };
        assert_eq!(decide(&f), Need::AskSystemd);
    }

    #[test]
    fn scope_names_are_unit_names() {
        assert_eq!(
            scope_name("clawbot-0a1b2c3d", 4242),
            "cagerun-clawbot-0a1b2c3d-4242.scope"
        );
        assert_eq!(scope_name("a b/c", 1), "cagerun-a_b_c-1.scope");
    }
}
