//! What the full `cagerun` binary and its small front share: `exec`, and logging. The front
//! (`src/bin/cagerun-front.rs`, installed as `bin/cagerun`) runs a sandbox itself and hands
//! every other verb to the full binary (installed as `libexec/cagerun/cagerun`).

pub mod exec;

/// `-v` without `CAGERUN_LOG`: info and up on stderr. A subscriber costs ~15 µs at every
/// start, so one is set up only when asked.
pub fn log_verbose() {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .init();
}

/// `CAGERUN_LOG=SPEC`: EnvFilter (~0.5 ms of regexes at start; the front hands such runs to
/// the full binary rather than link it).
pub fn log_filtered(spec: &str) {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .without_time()
        .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
        .init();
}

/// The process's exit: the command's code, or the error's (see [`cage_runtime::error`]).
pub fn exit(result: anyhow::Result<i32>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("cagerun: {e:#}");
            std::process::ExitCode::from(cage_runtime::error::exit_code(&e))
        }
    }
}
