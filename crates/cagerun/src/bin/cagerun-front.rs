//! `cagerun` as installed in PATH (scripts/install): a small binary that runs `cagerun exec`
//! itself and hands every other verb, and any `exec` it does not take, to the full binary:
//! `../libexec/cagerun/cagerun` from its own directory (the installed layout), else
//! `cagerun` in the same directory (cargo's target directory).
//!
//! Why two binaries: cagerun is a static PIE (the supervisor, the broker and the egress proxy
//! read hostile input and keep ASLR), and a static PIE relocates itself at every start. The
//! full binary has ~36,000 relocations on ~170 pages that are each copied on write, and a
//! sandbox forks it twice; measured here, that was ~1 ms of every `exec` (bwrap's whole start
//! is ~5 ms). This binary links only the sandbox's path: clap, cage-spec and the engine's
//! sandbox.
//!
//! And it is not a PIE (scripts/install links it with `-C relocation-model=static`): even its
//! ~16,500 relocations on ~75 pages cost ~0.2 ms of every `exec` and of every tool call's shim
//! start (scripts/bench-ab, scripts/bench-calls-ab: 0.96x and 0.92x). ASLR of its code buys
//! nothing here, because nothing it reads is hostile from a position it could gain from: as
//! `exec` it reads the user's argv and its own pid 1's 8-byte report (pid 1 reads nothing
//! from the command: it reaps and forwards signals), and with a terminal it copies the
//! command's bytes to the caller's without parsing them; as the shim it runs with the very
//! identity and inside the very sandbox of the caller that feeds it, and reads the broker's
//! answers. The processes that parse hostile input (the supervisor's broker and forwarder,
//! image pulls, the egress proxy) are the full binary, which stays a static PIE. Its stack,
//! heap and mmap areas are randomised as any process's.
//!
//! It is also the `docker` shim inside services (`cage_runtime::host::shim_exe`): a tool
//! call starts it every time.
//!
//! It takes `exec [FLAGS] -- CMD` (also after `-v`) when clap parses it, `CAGERUN_LOG` is
//! unset (EnvFilter's regexes stay out), and the route needs neither the user's systemd over
//! D-Bus (a scope, on pure cgroup v2 from a cgroup not delegated) nor a cage's namespaces
//! (`--join-fds`). The policy is the full binary's own: both call `cagerun::exec::route` and
//! `Job::run`. Everything else is handed over by execve with argv (argv[0] too: the shim
//! and runtime names) and the environment unchanged, so help, errors and exit codes are the
//! full binary's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use cagerun::exec::{self, ExecArgs, Route};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cagerun")]
struct Front {
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    Exec(ExecArgs),
}

fn main() -> ExitCode {
    // Bound into services as their `docker` and `podman` (the supervisor prefers this binary
    // for it: a tool call starts the shim every time).
    if cage_runtime::shim::invoked_as_shim() {
        return ExitCode::from(cage_runtime::shim::main().clamp(0, 255) as u8);
    }
    let argv: Vec<OsString> = std::env::args_os().collect();
    let Some(Front {
        verbose,
        command: Verb::Exec(args),
    }) = sandbox_args(&argv)
    else {
        return hand_over(&argv);
    };
    if verbose {
        cagerun::log_verbose();
    }
    match exec::route(args) {
        Ok(Route::Sandbox(job)) => cagerun::exit(job.run()),
        Ok(Route::AfterScope(_) | Route::InheritedNetwork { .. }) => hand_over(&argv),
        Err(e) => cagerun::exit(Err(e)),
    }
}

/// The sandbox's `exec`, when this binary takes it (see the module's doc).
fn sandbox_args(argv: &[OsString]) -> Option<Front> {
    if std::env::var_os("CAGERUN_LOG").is_some() {
        return None;
    }
    let words: Vec<String> = argv
        .iter()
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let verb = 1 + words
        .iter()
        .skip(1)
        .position(|w| !matches!(w.as_str(), "-v" | "--verbose"))?;
    if words[verb] != "exec" || exec::parse_enter(&words).is_some() {
        return None;
    }
    // Help, a bad flag: the full binary says it, in its own words.
    Front::try_parse_from(&words).ok()
}

/// Run the full binary in this process's place.
fn hand_over(argv: &[OsString]) -> ExitCode {
    // The installed layout, else cargo's target directory.
    match cage_runtime::host::binary_beside_self(&["../libexec/cagerun/cagerun", "cagerun"]) {
        Ok(full) => {
            let err = std::process::Command::new(&full)
                .arg0(&argv[0])
                .args(&argv[1..])
                .exec();
            eprintln!("cagerun: running the full binary {}: {err}", full.display());
        }
        Err(looked) => eprintln!(
            "cagerun: this is cagerun's front, which runs sandboxes only; the full binary for everything else is not at {looked}: reinstall with scripts/install"
        ),
    }
    ExitCode::from(cage_runtime::error::EXIT_CAGERUN_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(words: &[&str]) -> bool {
        let argv: Vec<OsString> = words.iter().map(OsString::from).collect();
        sandbox_args(&argv).is_some()
    }

    #[test]
    fn takes_the_sandbox_s_exec_with_its_flags_and_after_verbose() {
        assert!(taken(&["cagerun", "exec", "--", "id"]));
        assert!(taken(&[
            "cagerun",
            "-v",
            "exec",
            "--workspace",
            "w",
            "--",
            "id"
        ]));
        assert!(taken(&[
            "cagerun",
            "exec",
            "--verbose",
            "--memory",
            "64m",
            "--",
            "id"
        ]));
    }

    #[test]
    fn hands_over_other_verbs_a_service_s_exec_help_and_bad_flags() {
        assert!(!taken(&["cagerun"]));
        assert!(!taken(&["cagerun", "--version"]));
        assert!(!taken(&["cagerun", "up", "-d"]));
        assert!(!taken(&["cagerun", "spec", "--", "id"]));
        assert!(!taken(&["cagerun", "exec", "gateway", "--", "id"]));
        assert!(!taken(&["cagerun", "exec", "--help"]));
        assert!(!taken(&["cagerun", "exec", "--bogus", "--", "id"]));
        assert!(!taken(&["cagerun", "-v"]));
    }
}
