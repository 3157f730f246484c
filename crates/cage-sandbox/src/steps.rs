//! What each step of a sandbox start cost, for `-v` (and `CAGERUN_LOG=info`): the parent's
//! side of [`crate::launch::run`], one line at the end. The child's own steps (building the
//! root, dropping privileges, execve) run while the parent waits and show as one span.

use std::time::Instant;

pub struct Steps {
    on: bool,
    last: Instant,
    start: Instant,
    marks: Vec<(&'static str, f64)>,
}

impl Steps {
    pub fn start() -> Steps {
        let now = Instant::now();
        Steps {
            on: tracing::enabled!(tracing::Level::INFO),
            last: now,
            start: now,
            marks: Vec::new(),
        }
    }

    /// The step that just ended.
    pub fn mark(&mut self, step: &'static str) {
        if self.on {
            let now = Instant::now();
            self.marks
                .push((step, (now - self.last).as_secs_f64() * 1000.0));
            self.last = now;
        }
    }

    pub fn report(&self) {
        if self.on && !self.marks.is_empty() {
            let steps: Vec<String> = self
                .marks
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.2}"))
                .collect();
            tracing::info!(
                "timing (ms): {}; total {:.2}",
                steps.join(", "),
                (self.last - self.start).as_secs_f64() * 1000.0
            );
        }
    }
}
