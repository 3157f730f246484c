//! The service supervisor's decisions, as pure functions over the cage model.
//!
//! A cage's services live through a small state machine: created, waiting for a
//! dependency, starting, running, exited or failed, restarting after a backoff, and stopped
//! at `down`; beside it runs a health state (no check, starting, healthy, unhealthy) fed by
//! probes. Everything the supervisor *decides* on that path is here: which services `up a b`
//! selects and in what order, when a dependency is met, what a probe result does to health,
//! whether an ended run restarts and after how long, and in what order `down` stops them.
//! The strings `ps` shows (and `--json` carries) are these types' `Display`/serde forms.
//!
//! The engine (the supervisor in cage-runtime) asks, never re-decides: it does the waiting,
//! probing, signalling and bookkeeping, and passes in what it observed (exit codes, elapsed
//! times, the other services' states). Pure: no clock, no files, no processes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::cage::{Cage, Dependency, Healthcheck, Restart, Service};

/// How long a stopped service gets between SIGTERM and SIGKILL (`stop <ms>` to its monitor).
pub const STOP_GRACE_MS: u64 = 10_000;
/// How long `down` waits for one stop level's monitors to end before it moves on: the grace
/// and 5 s more.
pub const STOP_WAIT: Duration = Duration::from_millis(STOP_GRACE_MS + 5_000);
/// The first restart's delay; each further one doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Doublings stop after this many (100 ms × 2⁸ = 25.6 s).
pub const BACKOFF_MAX_DOUBLINGS: u32 = 8;
/// No delay is longer (never reached today: the doublings stop at 25.6 s first).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A service that ran this long before it ended restarts from the first delay again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How often a service waiting for a dependency looks at it again.
pub const DEPENDENCY_POLL: Duration = Duration::from_millis(50);

/// A refused selection, or a state/health string that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LifecycleError {
    /// The engine says where (the config's path) around it.
    #[error("no service {name:?} in this cage (services: {})", .services.join(", "))]
    UnknownService { name: String, services: Vec<String> },
    #[error("{0} is on_demand: `up` never starts it; run it with `cagerun run {0} -- ARGS`")]
    OnDemand(String),
    #[error("{0:?} is not a service state (created, waiting for S to be running|healthy, starting, running, exited, failed, restarting in N ms, stopped)")]
    UnknownState(String),
    #[error("{0:?} is not a health (\"-\", \"starting\", \"healthy\", \"unhealthy\")")]
    UnknownHealth(String),
}

// ---------------------------------------------------------------------------------------
// Service state

/// Where one service is in its life, as `ps` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServiceState {
    /// Set up, not yet started: `created`.
    #[default]
    Created,
    /// Waiting for a dependency: `waiting for db to be healthy`.
    Waiting {
        service: String,
        condition: Condition,
    },
    /// Its monitor is starting the container: `starting`.
    Starting,
    /// The container runs: `running`.
    Running,
    /// The container ended (the code is the status's `last_exit`): `exited`.
    Exited,
    /// It could not be started (the status's `error` says why): `failed`.
    Failed,
    /// Between an end and the next start: `restarting in 400 ms`.
    Restarting { delay_ms: u64 },
    /// Stopped by `down`; nothing follows: `stopped`.
    Stopped,
}

impl ServiceState {
    /// The state shown while a service waits for `dep`.
    pub fn waiting_for(dep: &Dependency) -> Self {
        ServiceState::Waiting {
            service: dep.service.clone(),
            condition: dep.condition(),
        }
    }

    /// The state shown during a backoff of `delay` (whole milliseconds, as shown).
    pub fn restarting(delay: Duration) -> Self {
        ServiceState::Restarting {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Its container runs: a dependency on it can be met, `enter` can join it, `ps` shows
    /// an uptime.
    pub fn is_running(&self) -> bool {
        matches!(self, ServiceState::Running)
    }

    /// It could not be started: `up --wait` gives up on the cage.
    pub fn is_failed(&self) -> bool {
        matches!(self, ServiceState::Failed)
    }

    /// Stopped by `down`: no transition follows.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ServiceState::Stopped)
    }

    /// The STATE column of `ps`: `exited (CODE)` when the code is known, else the state.
    pub fn label(&self, last_exit: Option<i32>) -> String {
        match (self, last_exit) {
            (ServiceState::Exited, Some(c)) => format!("exited ({c})"),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceState::Created => f.write_str("created"),
            ServiceState::Waiting { service, condition } => {
                write!(f, "waiting for {service} to be {condition}")
            }
            ServiceState::Starting => f.write_str("starting"),
            ServiceState::Running => f.write_str("running"),
            ServiceState::Exited => f.write_str("exited"),
            ServiceState::Failed => f.write_str("failed"),
            ServiceState::Restarting { delay_ms } => write!(f, "restarting in {delay_ms} ms"),
            ServiceState::Stopped => f.write_str("stopped"),
        }
    }
}

impl FromStr for ServiceState {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || LifecycleError::UnknownState(s.to_string());
        Ok(match s {
            "created" => ServiceState::Created,
            "starting" => ServiceState::Starting,
            "running" => ServiceState::Running,
            "exited" => ServiceState::Exited,
            "failed" => ServiceState::Failed,
            "stopped" => ServiceState::Stopped,
            _ => {
                if let Some(rest) = s.strip_prefix("waiting for ") {
                    let (service, condition) = rest.rsplit_once(" to be ").ok_or_else(unknown)?;
                    if service.is_empty() {
                        return Err(unknown());
                    }
                    ServiceState::Waiting {
                        service: service.to_string(),
                        condition: condition.parse().map_err(|_| unknown())?,
                    }
                } else if let Some(ms) = s
                    .strip_prefix("restarting in ")
                    .and_then(|r| r.strip_suffix(" ms"))
                {
                    ServiceState::Restarting {
                        delay_ms: ms.parse().map_err(|_| unknown())?,
                    }
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

impl Serialize for ServiceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Health

/// A service's health as `ps` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No healthcheck: `-`.
    #[serde(rename = "-")]
    #[default]
    None,
    /// Checked, not yet healthy (or started again): `starting`.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// A new service's health: `starting` with a healthcheck, `-` without.
    pub fn initial(has_check: bool) -> Self {
        if has_check {
            Health::Starting
        } else {
            Health::None
        }
    }

    /// After the container ended: a checked service is `starting` again (its next run is
    /// probed afresh); `-` stays `-`.
    pub fn after_exit(self) -> Self {
        match self {
            Health::None => Health::None,
            _ => Health::Starting,
        }
    }

    /// After one probe. `failures` is the run's count of failed probes after this one
    /// (see [`HealthWatch`]: failures inside the start period are not counted, a success
    /// resets it). A success is `healthy`; a failure turns the health `unhealthy` once
    /// `failures` reaches `retries` (at least 1), and otherwise leaves it as it was.
    pub fn after_probe(self, ok: bool, failures: u32, retries: u32) -> Self {
        if ok {
            Health::Healthy
        } else if failures >= retries.max(1) {
            Health::Unhealthy
        } else {
            self
        }
    }

    /// The service has a healthcheck.
    pub fn is_checked(self) -> bool {
        self != Health::None
    }

    /// `up --wait` still waits for it: checked and not (yet) healthy.
    pub fn is_pending(self) -> bool {
        self.is_checked() && self != Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::None => "-",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

impl FromStr for Health {
    type Err = LifecycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "-" => Ok(Health::None),
            "starting" => Ok(Health::Starting),
            "healthy" => Ok(Health::Healthy),
            "unhealthy" => Ok(Health::Unhealthy),
            _ => Err(LifecycleError::UnknownHealth(s.to_string())),
        }
    }
}

impl Healthcheck {
    /// The wait after each probe before the next (the first probe is at once).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How long one probe may take; longer is a failure.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Failures this soon after the container started are not counted.
    pub fn start_period(&self) -> Duration {
        Duration::from_millis(self.start_period_ms)
    }

    /// `since_start` (from when the run's probing began) is still inside the start period.
    pub fn in_start_period(&self, since_start: Duration) -> bool {
        since_start < self.start_period()
    }

    /// The wait between probes while a run has not been healthy yet and is inside its start
    /// period (`start_interval`, as compose's): a service is seen healthy this soon after it
    /// first answers, not an `interval` later. One probe at a time, as ever: more at once
    /// were measured to slow the gateway's start (21 HTTP probes in flight: its first
    /// answer seen ~1 s late in 3 runs of 3).
    pub fn starting_interval(&self) -> Duration {
        Duration::from_millis(self.start_interval_ms)
    }

    /// Probing is in its starting mode (see [`Healthcheck::starting_interval`]): the run
    /// has never been healthy and is inside its start period.
    pub fn starting(&self, since_start: Duration, ever_healthy: bool) -> bool {
        !ever_healthy && self.in_start_period(since_start)
    }
}

/// The failure count of one run's probes; a fresh one for each start of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthWatch {
    failures: u32,
    /// A probe of this run has succeeded (its start period's fast probing is over).
    succeeded: bool,
}

impl HealthWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Failed probes counted so far (since the last success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Count one probe's result, `since_start` after probing began, and say the health to
    /// show instead of `current`. A success resets the count; a failure inside the start
    /// period is not counted.
    pub fn observe(
        &mut self,
        current: Health,
        ok: bool,
        since_start: Duration,
        check: &Healthcheck,
    ) -> Health {
        if ok {
            self.failures = 0;
            self.succeeded = true;
        } else if !check.in_start_period(since_start) {
            self.failures = self.failures.saturating_add(1);
        }
        current.after_probe(ok, self.failures, check.retries)
    }

    /// The wait before the next probe, `since_start` after probing began: `start_interval`
    /// until this run's first success inside the start period, `interval` after.
    pub fn next_probe_in(&self, since_start: Duration, check: &Healthcheck) -> Duration {
        if check.starting(since_start, self.succeeded) {
            check.starting_interval()
        } else {
            check.interval()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dependencies

/// What a dependant waits for: its dependency `running`, or `running` and `healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    Running,
    Healthy,
}

impl Condition {
    /// Met by a dependency in this state and health: it runs, and for `Healthy` its health
    /// is `healthy` (a dependency without a healthcheck never is).
    pub fn met(self, state: &ServiceState, health: Health) -> bool {
        state.is_running() && (self == Condition::Running || health == Health::Healthy)
    }

    /// `up` counts a service waiting on this condition as settled (waiting for health may
    /// take long, or never end); waiting for a dependency to run does not count.
    pub fn counts_as_settled(self) -> bool {
        self == Condition::Healthy
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Running => "running",
            Condition::Healthy => "healthy",
        })
    }
}

impl FromStr for Condition {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "running" => Ok(Condition::Running),
            "healthy" => Ok(Condition::Healthy),
            _ => Err(()),
        }
    }
}

impl Dependency {
    pub fn condition(&self) -> Condition {
        if self.healthy {
            Condition::Healthy
        } else {
            Condition::Running
        }
    }
}

/// Whether `dep` is met by its service's status; `None` (a service the supervisor does not
/// know) never meets it.
pub fn dependency_met(dep: &Dependency, status: Option<(&ServiceState, Health)>) -> bool {
    status.is_some_and(|(state, health)| dep.condition().met(state, health))
}

// ---------------------------------------------------------------------------------------
// Restarts

impl Restart {
    /// The policy restarts a container that exited with `code` (a user's restart request
    /// aside): `always` does, `on-failure` on a code other than 0, `no` never.
    pub fn restarts_after_exit(&self, code: i32) -> bool {
        match self {
            Restart::No => false,
            Restart::OnFailure => code != 0,
            Restart::Always => true,
        }
    }

    /// The policy tries again after a start that failed (not the cage's first one: that
    /// ends the cage): every policy but `no`.
    pub fn restarts_after_failed_start(&self) -> bool {
        !matches!(self, Restart::No)
    }
}

/// After an exit with `code`: restart when the user asked (`cagerun restart`) or the policy
/// says so.
pub fn should_restart(policy: &Restart, code: i32, restart_requested: bool) -> bool {
    restart_requested || policy.restarts_after_exit(code)
}

/// How one run of a service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The container exited with `code` after running for `ran`.
    Exited { code: i32, ran: Duration },
    /// It could not be started (or its monitor failed).
    StartFailed,
}

impl RunEnd {
    /// How long it ran, for [`Backoff::next`]; a failed start counts as no time.
    pub fn ran(&self) -> Duration {
        match self {
            RunEnd::Exited { ran, .. } => *ran,
            RunEnd::StartFailed => Duration::ZERO,
        }
    }
}

/// What the supervisor does after a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The cage is stopping: leave the loop (the service ends `stopped`).
    Stop,
    /// The service never started once: report the failure to `up`, which ends the cage.
    GiveUp,
    /// Stay down until `cagerun restart` (then start again with a reset [`Backoff`], not
    /// counted as a restart) or `down`.
    AwaitRequest,
    /// Start again after [`Backoff::next`] (counted as a restart once the delay passed and
    /// the cage is not stopping).
    Restart,
}

/// The decision after a run ended. `first_start_pending`: the service has not yet settled
/// for `up` (started once, or reported waiting). `take_restart_request` reads and clears the
/// user's `cagerun restart` flag; it is called only for an exit while not stopping, so a
/// request made during a failed start stays for later, as today.
///
/// A failed start is not checked against `stopping` here: the loop notices it after the
/// backoff (which `down` cuts short by waking the service).
pub fn after_run(
    policy: &Restart,
    end: RunEnd,
    first_start_pending: bool,
    stopping: bool,
    take_restart_request: impl FnOnce() -> bool,
) -> Next {
    match end {
        RunEnd::Exited { code, .. } => {
            if stopping {
                Next::Stop
            } else if should_restart(policy, code, take_restart_request()) {
                Next::Restart
            } else {
                Next::AwaitRequest
            }
        }
        RunEnd::StartFailed => {
            if first_start_pending {
                Next::GiveUp
            } else if policy.restarts_after_failed_start() {
                Next::Restart
            } else {
                Next::AwaitRequest
            }
        }
    }
}

/// The delay before restart number `attempt` (0-based since the last reset): 100 ms doubled
/// per attempt, at most 8 doublings (25.6 s), at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = BACKOFF_BASE.as_millis() as u64;
    Duration::from_millis(ms.saturating_mul(1 << attempt.min(BACKOFF_MAX_DOUBLINGS)))
        .min(BACKOFF_CAP)
}

/// The restart attempts of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Start over (a restart the user asked for).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next start, after a run of `ran` ([`RunEnd::ran`]): a run of
    /// [`BACKOFF_RESET`] or longer starts over from the first delay.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= BACKOFF_RESET {
            self.attempt = 0;
        }
        let delay = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

// ---------------------------------------------------------------------------------------
// Selection and ordering

/// The services `up` supervises, in start order (every one after what it depends on): with
/// `only` empty, all of them; else those named and, transitively, what they depend on. Every
/// name must exist (the first unknown one is the error), none may be `on_demand`. One-shot
/// jobs (`once`, `on_demand`) are then left out, and dependencies on them dropped (`once`
/// jobs have finished before the supervisor starts).
pub fn select_services(cage: &Cage, only: &[String]) -> Result<Vec<Service>, LifecycleError> {
    let find = |name: &str| {
        cage.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| LifecycleError::UnknownService {
                name: name.to_string(),
                services: cage.services.iter().map(|s| s.name.clone()).collect(),
            })
    };
    let mut wanted: Vec<String> = only.to_vec();
    let mut i = 0;
    while i < wanted.len() {
        let svc = find(&wanted[i])?;
        for d in &svc.depends_on {
            if !wanted.contains(&d.service) {
                wanted.push(d.service.clone());
            }
        }
        i += 1;
    }
    if let Some(s) = cage
        .services
        .iter()
        .find(|s| s.on_demand && only.contains(&s.name))
    {
        return Err(LifecycleError::OnDemand(s.name.clone()));
    }
    let jobs: Vec<&str> = cage
        .services
        .iter()
        .filter(|s| !s.supervised())
        .map(|s| s.name.as_str())
        .collect();
    Ok(cage
        .services
        .iter()
        .filter(|s| only.is_empty() || wanted.contains(&s.name))
        .filter(|s| s.supervised())
        .map(|s| {
            let mut s = s.clone();
            s.depends_on.retain(|d| !jobs.contains(&d.service.as_str()));
            s
        })
        .collect())
}

/// The order `down` stops services in: levels, the first stopped first, each in start
/// order; the services of one level are stopped together, and the next level waits for
/// them (up to [`STOP_WAIT`]). A service's level is one more than its highest dependency's
/// (0 without dependencies), so dependants stop before what they depend on. `services` in
/// start order; a dependency not among them counts as level -1.
pub fn stop_levels<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<Vec<String>> {
    let mut levels: Vec<(&str, usize)> = Vec::new();
    for s in services {
        let level = s
            .depends_on
            .iter()
            .map(|d| {
                levels
                    .iter()
                    .find(|(n, _)| *n == d.service)
                    .map_or(0, |(_, l)| l + 1)
            })
            .max()
            .unwrap_or(0);
        levels.push((&s.name, level));
    }
    let Some(top) = levels.iter().map(|(_, l)| *l).max() else {
        return Vec::new();
    };
    (0..=top)
        .rev()
        .map(|l| {
            levels
                .iter()
                .filter(|(_, sl)| *sl == l)
                .map(|(n, _)| n.to_string())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cage::{parse_cage, HealthProbe};

    fn cage(text: &str) -> Cage {
        parse_cage("cage.toml", text).unwrap()
    }

    /// model ← gateway (healthy) ← ui; db alone; setup a once job gateway needs; cli on demand.
    const CAGE: &str = r#"
[services.model]
host = true
command = ["m"]
healthcheck = { http = ":11434/", retries = 3 }

[services.gateway]
host = true
command = ["g"]
depends_on = [{ service = "model", healthy = true }, "setup"]
restart = "on-failure"

[services.ui]
host = true
command = ["u"]
depends_on = ["gateway"]

[services.db]
host = true
command = ["d"]

[services.setup]
host = true
command = ["s"]
once = true

[services.cli]
host = true
command = ["c"]
on_demand = true
"#;

    fn names(services: &[Service]) -> Vec<&str> {
        services.iter().map(|s| s.name.as_str()).collect()
    }

    fn only(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn check(retries: u32, start_period_ms: u64) -> Healthcheck {
        Healthcheck {
            probe: HealthProbe::Command(vec!["true".into()]),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            retries,
            start_period_ms,
            start_interval_ms: 5_000,
        }
    }

    fn dep(service: &str, healthy: bool) -> Dependency {
        Dependency {
            service: service.into(),
            healthy,
        }
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    // --- states: the strings ps shows

    #[test]
    fn states_show_as_today_s_strings() {
        let shown = [
            (ServiceState::Created, "created"),
            (ServiceState::Starting, "starting"),
            (ServiceState::Running, "running"),
            (ServiceState::Exited, "exited"),
            (ServiceState::Failed, "failed"),
            (ServiceState::Stopped, "stopped"),
            (
                ServiceState::waiting_for(&dep("db", true)),
                "waiting for db to be healthy",
            ),
            (
                ServiceState::waiting_for(&dep("db", false)),
                "waiting for db to be running",
            ),
            (
                ServiceState::restarting(Duration::from_millis(400)),
                "restarting in 400 ms",
            ),
        ];
        for (state, text) in shown {
            assert_eq!(state.to_string(), text);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("{text:?}"));
            assert_eq!(text.parse::<ServiceState>().unwrap(), state, "{text}");
            assert_eq!(
                serde_json::from_str::<ServiceState>(&format!("{text:?}")).unwrap(),
                state
            );
        }
    }

    #[test]
    fn a_string_that_is_no_state_is_refused() {
        for bad in [
            "",
            "Running",
            "exited (0)",
            "waiting for db",
            "waiting for db to be ready",
            "waiting for  to be running",
            "restarting in soon ms",
            "restarting in 5",
        ] {
            assert_eq!(
                bad.parse::<ServiceState>(),
                Err(LifecycleError::UnknownState(bad.into())),
                "{bad}"
            );
            assert!(serde_json::from_str::<ServiceState>(&format!("{bad:?}")).is_err());
        }
    }

    #[test]
    fn a_service_name_with_to_be_in_it_still_reads_back() {
        let s = ServiceState::Waiting {
            service: "to be or not".into(),
            condition: Condition::Healthy,
        };
        assert_eq!(s.to_string().parse::<ServiceState>().unwrap(), s);
    }

    #[test]
    fn ps_shows_an_exit_code_with_exited_only() {
        assert_eq!(ServiceState::Exited.label(Some(3)), "exited (3)");
        assert_eq!(ServiceState::Exited.label(None), "exited");
        assert_eq!(ServiceState::Running.label(Some(3)), "running");
        assert_eq!(
            ServiceState::restarting(Duration::from_millis(200)).label(Some(1)),
            "restarting in 200 ms"
        );
    }

    #[test]
    fn only_a_running_service_counts_as_running() {
        assert!(ServiceState::Running.is_running());
        for s in [
            ServiceState::Created,
            ServiceState::Starting,
            ServiceState::Exited,
            ServiceState::Failed,
            ServiceState::Stopped,
            ServiceState::restarting(SECS(1)),
            ServiceState::waiting_for(&dep("db", false)),
        ] {
            assert!(!s.is_running(), "{s}");
        }
    }

    #[test]
    fn only_a_failed_start_is_failed_and_only_stopped_is_terminal() {
        assert!(ServiceState::Failed.is_failed());
        assert!(!ServiceState::Exited.is_failed());
        assert!(ServiceState::Stopped.is_terminal());
        assert!(!ServiceState::Exited.is_terminal());
        assert!(!ServiceState::Failed.is_terminal());
    }

    #[test]
    fn a_restart_delay_shows_in_whole_milliseconds() {
        assert_eq!(
            ServiceState::restarting(Duration::from_micros(25_600_999)).to_string(),
            "restarting in 25600 ms"
        );
    }

    // --- health

    #[test]
    fn health_shows_as_today_s_strings() {
        for (h, text) in [
            (Health::None, "-"),
            (Health::Starting, "starting"),
            (Health::Healthy, "healthy"),
            (Health::Unhealthy, "unhealthy"),
        ] {
            assert_eq!(h.to_string(), text);
            assert_eq!(serde_json::to_string(&h).unwrap(), format!("{text:?}"));
            assert_eq!(text.parse::<Health>().unwrap(), h);
            assert_eq!(
                serde_json::from_str::<Health>(&format!("{text:?}")).unwrap(),
                h
            );
        }
        assert_eq!(
            "none".parse::<Health>(),
            Err(LifecycleError::UnknownHealth("none".into()))
        );
    }

    #[test]
    fn a_service_with_a_healthcheck_starts_as_starting_one_without_as_dash() {
        assert_eq!(Health::initial(true), Health::Starting);
        assert_eq!(Health::initial(false), Health::None);
    }

    #[test]
    fn an_exit_makes_a_checked_service_starting_again() {
        assert_eq!(Health::Healthy.after_exit(), Health::Starting);
        assert_eq!(Health::Unhealthy.after_exit(), Health::Starting);
        assert_eq!(Health::Starting.after_exit(), Health::Starting);
    }

    #[test]
    fn an_exit_leaves_an_unchecked_service_without_health() {
        assert_eq!(Health::None.after_exit(), Health::None);
    }

    #[test]
    fn one_good_probe_is_healthy_even_after_unhealthy() {
        assert_eq!(Health::Unhealthy.after_probe(true, 0, 3), Health::Healthy);
        let mut w = HealthWatch::new();
        let c = check(3, 0);
        let mut h = Health::Starting;
        for _ in 0..5 {
            h = w.observe(h, false, SECS(60), &c);
        }
        assert_eq!(h, Health::Unhealthy);
        assert_eq!(w.observe(h, true, SECS(60), &c), Health::Healthy);
        assert_eq!(w.failures(), 0);
    }

    #[test]
    fn health_turns_unhealthy_only_after_retries_consecutive_failures() {
        let c = check(3, 0);
        let mut w = HealthWatch::new();
        let mut h = Health::Starting;
        h = w.observe(h, false, SECS(1), &c);
        assert_eq!(h, Health::Starting);
        h = w.observe(h, false, SECS(2), &c);
        assert_eq!(h, Health::Starting);
        h = w.observe(h, false, SECS(3), &c);
        assert_eq!(h, Health::Unhealthy);
        assert_eq!(w.failures(), 3);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let c = check(3, 0);
        let mut w = HealthWatch::new();
        let mut h = Health::Starting;
        for ok in [false, false, true, false, false] {
            h = w.observe(h, ok, SECS(60), &c);
        }
        assert_eq!(h, Health::Healthy);
        assert_eq!(w.failures(), 2);
    }

    #[test]
    fn a_healthy_service_stays_healthy_through_fewer_than_retries_failures() {
        assert_eq!(Health::Healthy.after_probe(false, 2, 3), Health::Healthy);
        assert_eq!(Health::Healthy.after_probe(false, 3, 3), Health::Unhealthy);
    }

    #[test]
    fn zero_retries_means_one_failure_is_unhealthy() {
        assert_eq!(Health::Starting.after_probe(false, 0, 0), Health::Starting);
        assert_eq!(Health::Starting.after_probe(false, 1, 0), Health::Unhealthy);
        let mut w = HealthWatch::new();
        assert_eq!(
            w.observe(Health::Healthy, false, SECS(1), &check(0, 0)),
            Health::Unhealthy
        );
    }

    #[test]
    fn failures_inside_start_period_do_not_count() {
        let c = check(1, 30_000);
        let mut w = HealthWatch::new();
        let mut h = Health::Starting;
        for t in [0, 5, 10, 29] {
            h = w.observe(h, false, SECS(t), &c);
            assert_eq!(h, Health::Starting, "at {t}s");
        }
        assert_eq!(w.failures(), 0);
        assert_eq!(w.observe(h, false, SECS(31), &c), Health::Unhealthy);
    }

    #[test]
    fn the_start_period_ends_exactly_at_its_length() {
        let c = check(3, 2_000);
        assert!(c.in_start_period(Duration::from_millis(1_999)));
        assert!(!c.in_start_period(Duration::from_millis(2_000)));
        assert!(!check(3, 0).in_start_period(Duration::ZERO));
    }

    #[test]
    fn a_success_inside_the_start_period_is_healthy_at_once() {
        let mut w = HealthWatch::new();
        assert_eq!(
            w.observe(Health::Starting, true, SECS(1), &check(3, 60_000)),
            Health::Healthy
        );
    }

    #[test]
    fn probe_timings_are_the_healthcheck_s_milliseconds() {
        let c = check(3, 1_500);
        assert_eq!(c.interval(), SECS(5));
        assert_eq!(c.timeout(), SECS(2));
        assert_eq!(c.start_period(), Duration::from_millis(1_500));
    }

    #[test]
    fn start_interval_defaults_to_100ms_for_http_and_the_interval_for_a_command() {
        let hc = |line: &str| {
            let text =
                format!("[services.a]\nhost = true\ncommand = [\"true\"]\nhealthcheck = {line}\n");
            parse_cage("cage.toml", &text).map(|c| c.services[0].healthcheck.clone().unwrap())
        };
        let h = hc(r#"{ http = ":80/", interval = "2s", start_period = "60s" }"#).unwrap();
        assert_eq!(h.starting_interval(), Duration::from_millis(100));
        let h = hc(r#"{ http = ":80/", interval = "50ms" }"#).unwrap();
        assert_eq!(
            h.starting_interval(),
            Duration::from_millis(50),
            "never slower than interval"
        );
        let h = hc(r#"{ command = ["true"], interval = "3s" }"#).unwrap();
        assert_eq!(h.starting_interval(), SECS(3));
        let h = hc(r#"{ command = ["true"], start_interval = "250ms" }"#).unwrap();
        assert_eq!(h.starting_interval(), Duration::from_millis(250));
        let e = hc(r#"{ http = ":80/", start_interval = "0s" }"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than 0"), "{e}");
    }

    #[test]
    fn probing_starts_fast_only_until_the_first_success_inside_the_start_period() {
        let c = check(3, 10_000);
        assert!(c.starting(SECS(0), false));
        assert!(c.starting(SECS(9), false));
        assert!(
            !c.starting(SECS(9), true),
            "healthy once: the interval from then on"
        );
        assert!(!c.starting(SECS(10), false), "the start period is over");
        assert!(
            !check(3, 0).starting(SECS(0), false),
            "no start period, no fast probing"
        );
    }

    #[test]
    fn the_next_probe_comes_at_start_interval_until_the_first_success() {
        let mut c = check(3, 10_000);
        c.start_interval_ms = 100;
        let mut w = HealthWatch::new();
        assert_eq!(w.next_probe_in(SECS(1), &c), Duration::from_millis(100));
        w.observe(Health::Starting, false, SECS(1), &c);
        assert_eq!(w.next_probe_in(SECS(2), &c), Duration::from_millis(100));
        w.observe(Health::Starting, true, SECS(3), &c);
        assert_eq!(
            w.next_probe_in(SECS(3), &c),
            SECS(5),
            "healthy once: the interval"
        );
        w.observe(Health::Healthy, false, SECS(4), &c);
        assert_eq!(w.next_probe_in(SECS(4), &c), SECS(5), "and it stays");
        assert_eq!(
            HealthWatch::new().next_probe_in(SECS(10), &c),
            SECS(5),
            "the start period is over"
        );
    }

    #[test]
    fn up_wait_waits_for_a_checked_service_until_healthy() {
        assert!(Health::Starting.is_pending());
        assert!(Health::Unhealthy.is_pending());
        assert!(!Health::Healthy.is_pending());
        assert!(!Health::None.is_pending());
        assert!(!Health::None.is_checked());
    }

    // --- dependencies

    #[test]
    fn a_service_depending_on_a_healthy_db_waits_while_db_is_starting() {
        let d = dep("db", true);
        assert!(!dependency_met(
            &d,
            Some((&ServiceState::Running, Health::Starting))
        ));
        assert!(!dependency_met(
            &d,
            Some((&ServiceState::Running, Health::Unhealthy))
        ));
        assert!(dependency_met(
            &d,
            Some((&ServiceState::Running, Health::Healthy))
        ));
    }

    #[test]
    fn a_plain_dependency_is_met_once_it_runs_whatever_its_health() {
        let d = dep("db", false);
        for h in [
            Health::None,
            Health::Starting,
            Health::Healthy,
            Health::Unhealthy,
        ] {
            assert!(dependency_met(&d, Some((&ServiceState::Running, h))));
        }
        assert!(!dependency_met(
            &d,
            Some((&ServiceState::Starting, Health::None))
        ));
    }

    #[test]
    fn a_healthy_dependency_that_does_not_run_is_not_met() {
        let d = dep("db", true);
        for s in [
            ServiceState::Exited,
            ServiceState::Failed,
            ServiceState::restarting(SECS(1)),
            ServiceState::Stopped,
        ] {
            assert!(!dependency_met(&d, Some((&s, Health::Healthy))), "{s}");
        }
    }

    #[test]
    fn waiting_for_health_of_a_service_without_healthcheck_never_ends() {
        assert!(!dependency_met(
            &dep("db", true),
            Some((&ServiceState::Running, Health::None))
        ));
    }

    #[test]
    fn a_dependency_the_supervisor_does_not_know_is_never_met() {
        assert!(!dependency_met(&dep("ghost", false), None));
    }

    #[test]
    fn up_counts_waiting_for_health_as_settled_but_not_waiting_to_run() {
        assert!(dep("db", true).condition().counts_as_settled());
        assert!(!dep("db", false).condition().counts_as_settled());
    }

    // --- restarts

    #[test]
    fn on_failure_does_not_restart_after_exit_0() {
        assert!(!should_restart(&Restart::OnFailure, 0, false));
    }

    #[test]
    fn on_failure_restarts_after_any_other_code() {
        for code in [1, 2, 137, 255, -1] {
            assert!(should_restart(&Restart::OnFailure, code, false), "{code}");
        }
    }

    #[test]
    fn always_restarts_after_exit_0() {
        assert!(should_restart(&Restart::Always, 0, false));
    }

    #[test]
    fn no_never_restarts_by_itself() {
        assert!(!should_restart(&Restart::No, 1, false));
        assert_eq!(
            after_run(
                &Restart::No,
                RunEnd::Exited {
                    code: 1,
                    ran: SECS(1)
                },
                false,
                false,
                || false
            ),
            Next::AwaitRequest
        );
    }

    #[test]
    fn a_user_restart_request_restarts_whatever_the_policy() {
        assert!(should_restart(&Restart::No, 0, true));
        assert_eq!(
            after_run(
                &Restart::No,
                RunEnd::Exited {
                    code: 0,
                    ran: SECS(1)
                },
                false,
                false,
                || true
            ),
            Next::Restart
        );
    }

    #[test]
    fn an_exit_while_stopping_stops_even_with_always() {
        let taken = std::cell::Cell::new(false);
        let next = after_run(
            &Restart::Always,
            RunEnd::Exited {
                code: 1,
                ran: SECS(1),
            },
            false,
            true,
            || {
                taken.set(true);
                true
            },
        );
        assert_eq!(next, Next::Stop);
        assert!(!taken.get(), "the restart request stays for later");
    }

    #[test]
    fn a_failed_first_start_gives_up_whatever_the_policy() {
        for p in [Restart::No, Restart::OnFailure, Restart::Always] {
            assert_eq!(
                after_run(&p, RunEnd::StartFailed, true, false, || true),
                Next::GiveUp
            );
        }
    }

    #[test]
    fn a_later_failed_start_retries_unless_the_policy_is_no() {
        assert_eq!(
            after_run(
                &Restart::OnFailure,
                RunEnd::StartFailed,
                false,
                false,
                || { false }
            ),
            Next::Restart
        );
        assert_eq!(
            after_run(&Restart::Always, RunEnd::StartFailed, false, false, || {
                false
            }),
            Next::Restart
        );
        assert_eq!(
            after_run(&Restart::No, RunEnd::StartFailed, false, false, || false),
            Next::AwaitRequest
        );
    }

    #[test]
    fn a_failed_start_neither_reads_nor_clears_a_restart_request() {
        let taken = std::cell::Cell::new(false);
        let next = after_run(&Restart::No, RunEnd::StartFailed, false, false, || {
            taken.set(true);
            true
        });
        assert_eq!(next, Next::AwaitRequest);
        assert!(!taken.get());
    }

    #[test]
    fn a_failed_start_is_not_checked_against_stopping() {
        assert_eq!(
            after_run(&Restart::Always, RunEnd::StartFailed, false, true, || false),
            Next::Restart
        );
    }

    #[test]
    fn an_exit_after_the_first_start_does_not_give_up() {
        assert_eq!(
            after_run(
                &Restart::OnFailure,
                RunEnd::Exited {
                    code: 0,
                    ran: SECS(1)
                },
                true,
                false,
                || false
            ),
            Next::AwaitRequest
        );
    }

    // --- backoff

    #[test]
    fn backoff_starts_at_100_ms_and_doubles() {
        let ms: Vec<u128> = (0..9).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600]
        );
    }

    #[test]
    fn backoff_stops_doubling_at_25_6_s_below_the_30_s_cap() {
        for a in [9, 10, 31, 32, 1_000, u32::MAX] {
            assert_eq!(backoff(a), Duration::from_millis(25_600), "{a}");
        }
        assert!(backoff(u32::MAX) <= BACKOFF_CAP);
    }

    #[test]
    fn short_runs_climb_the_backoff() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..4).map(|_| b.next(SECS(1)).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(b.attempt(), 4);
    }

    #[test]
    fn a_run_of_10_s_or_more_starts_the_backoff_over() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.next(Duration::ZERO);
        }
        assert_eq!(b.next(Duration::from_millis(9_999)), backoff(5));
        assert_eq!(b.next(SECS(10)), Duration::from_millis(100));
        assert_eq!(b.next(SECS(1)), Duration::from_millis(200));
    }

    #[test]
    fn a_failed_start_counts_as_no_run_time() {
        assert_eq!(RunEnd::StartFailed.ran(), Duration::ZERO);
        assert_eq!(
            RunEnd::Exited {
                code: 0,
                ran: SECS(12)
            }
            .ran(),
            SECS(12)
        );
        let mut b = Backoff::new();
        b.next(SECS(60));
        assert_eq!(
            b.next(RunEnd::StartFailed.ran()),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn a_requested_restart_resets_the_backoff() {
        let mut b = Backoff::new();
        b.next(Duration::ZERO);
        b.next(Duration::ZERO);
        b.reset();
        assert_eq!(b.next(Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn down_waits_15_s_per_level_for_a_10_s_grace() {
        assert_eq!(STOP_GRACE_MS, 10_000);
        assert_eq!(STOP_WAIT, SECS(15));
    }

    // --- selection

    #[test]
    fn up_gateway_selects_model_too_model_first() {
        let c = cage(CAGE);
        let s = select_services(&c, &only(&["gateway"])).unwrap();
        assert_eq!(names(&s), ["model", "gateway"]);
    }

    #[test]
    fn up_selects_dependencies_transitively() {
        let c = cage(CAGE);
        let s = select_services(&c, &only(&["ui"])).unwrap();
        assert_eq!(names(&s), ["model", "gateway", "ui"]);
    }

    #[test]
    fn up_without_names_supervises_every_service_but_the_jobs() {
        let c = cage(CAGE);
        let s = select_services(&c, &[]).unwrap();
        let mut n = names(&s);
        n.sort();
        assert_eq!(n, ["db", "gateway", "model", "ui"]);
    }

    #[test]
    fn selection_keeps_start_order_not_the_order_named() {
        let c = cage(CAGE);
        let s = select_services(&c, &only(&["ui", "db", "model"])).unwrap();
        let pos = |n: &str| names(&s).iter().position(|x| *x == n).unwrap();
        assert!(pos("model") < pos("gateway") && pos("gateway") < pos("ui"));
        assert_eq!(
            names(&s),
            names(&c.services)
                .into_iter()
                .filter(|n| ["model", "gateway", "ui", "db"].contains(n))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_dependency_on_a_once_job_is_dropped_and_the_job_not_supervised() {
        let c = cage(CAGE);
        let s = select_services(&c, &only(&["gateway"])).unwrap();
        assert!(!names(&s).contains(&"setup"));
        let gw = s.iter().find(|s| s.name == "gateway").unwrap();
        assert_eq!(gw.depends_on, [dep("model", true)]);
    }

    #[test]
    fn naming_an_on_demand_service_is_refused_with_the_way_to_run_it() {
        let c = cage(CAGE);
        let e = select_services(&c, &only(&["cli"])).unwrap_err();
        assert_eq!(e, LifecycleError::OnDemand("cli".into()));
        assert_eq!(
            e.to_string(),
            "cli is on_demand: `up` never starts it; run it with `cagerun run cli -- ARGS`"
        );
    }

    #[test]
    fn naming_an_unknown_service_lists_the_services() {
        let c = cage(CAGE);
        let e = select_services(&c, &only(&["db", "ghost", "cli"])).unwrap_err();
        let LifecycleError::UnknownService { name, services } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(name, "ghost");
        assert_eq!(services, &names(&c.services));
        assert!(e
            .to_string()
            .starts_with("no service \"ghost\" in this cage (services: "));
    }

    #[test]
    fn naming_a_once_job_starts_nothing_for_it() {
        let c = cage(CAGE);
        assert_eq!(
            names(&select_services(&c, &only(&["setup"])).unwrap()),
            [] as [&str; 0]
        );
    }

    // --- stop order

    #[test]
    fn stop_order_stops_gateway_before_model() {
        let c = cage(CAGE);
        let s = select_services(&c, &only(&["gateway"])).unwrap();
        assert_eq!(stop_levels(&s), [vec!["gateway"], vec!["model"]]);
    }

    #[test]
    fn dependants_stop_level_by_level_independent_services_with_the_roots() {
        let c = cage(CAGE);
        let s = select_services(&c, &[]).unwrap();
        let levels = stop_levels(&s);
        assert_eq!(levels.len(), 3);
        assert_eq!(levels[0], ["ui"]);
        assert_eq!(levels[1], ["gateway"]);
        let mut last = levels[2].clone();
        last.sort();
        assert_eq!(last, ["db", "model"]);
    }

    #[test]
    fn a_service_stops_before_its_deepest_dependency_chain() {
        // c depends on a (level 0) and b (level 1): c is level 2, not 1.
        let c = cage(
            r#"
[services.a]
host = true
command = ["a"]
[services.b]
host = true
command = ["b"]
depends_on = ["a"]
[services.c]
host = true
command = ["c"]
depends_on = ["a", "b"]
"#,
        );
        assert_eq!(stop_levels(&c.services), [["c"], ["b"], ["a"]]);
    }

    #[test]
    fn services_of_one_level_stop_in_start_order() {
        let c = cage(
            "[services.z]\nhost = true\ncommand = [\"z\"]\n[services.a]\nhost = true\ncommand = [\"a\"]\n",
        );
        assert_eq!(stop_levels(&c.services), [names(&c.services)]);
    }

    #[test]
    fn nothing_to_stop_is_no_level() {
        assert!(stop_levels(&[]).is_empty());
    }

    #[test]
    fn a_dependency_outside_the_set_counts_as_below_the_roots() {
        let mut c = cage(CAGE);
        c.services.retain(|s| s.name == "ui");
        assert_eq!(stop_levels(&c.services), [["ui"]]);
    }
}
