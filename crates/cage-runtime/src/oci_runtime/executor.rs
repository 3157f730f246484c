//! The last step inside the container before its program runs, for every process
//! `cagerun runtime` starts (`create`'s init and every `exec`): one code path, so no way of
//! starting a process skips cagerun's layer ([`cage_spec::engine_layer`] decides it).
//!
//! Order: Landlock, then the seccomp filter (last, so it need not allow Landlock's calls),
//! then libcontainer's own executor (the PATH lookup and execve).

use std::path::PathBuf;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

#[derive(Clone, Default)]
pub(crate) struct LayeredExecutor {
    /// Landlock: write only beneath these paths.
    pub landlock_writable: Option<Vec<PathBuf>>,
    /// The container's filter, for an exec'd process (libcontainer's exec drops it).
    pub seccomp: Option<LinuxSeccomp>,
}

impl Executor for LayeredExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(writable) = &self.landlock_writable {
            // A second fence on top of the read-only mounts: a kernel without Landlock, or a
            // container filter that refuses its calls (init's filter is already in place
            // here), keeps what the spec asked for.
            if let Err(e) = cage_sandbox::landlock::restrict_writes(writable) {
                tracing::debug!("landlock not added: {e}");
            }
        }
        if let Some(seccomp) = &self.seccomp {
            libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|e| {
                ExecutorError::Other(format!(
                    "installing the container's seccomp filter for the exec'd process: {e}"
                ))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
