//! Download progress for pulls: bars on a terminal, a line per blob otherwise (stderr).

/// Progress bars on a terminal, a line per blob otherwise.
struct Progress {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
    tty: bool,
}

impl cage_image::registry::PullProgress for Progress {
    fn blob_started(&self, d: &cage_image::Digest, size: u64, resumed_at: u64) {
        let short = d.hex()[..12].to_string();
        if !self.tty {
            if resumed_at == size {
                eprintln!("{short}: already in the store");
            } else if resumed_at > 0 {
                eprintln!(
                    "{short}: resuming at {} of {}",
                    human(resumed_at),
                    human(size)
                );
            } else {
                eprintln!("{short}: downloading {}", human(size));
            }
            return;
        }
        let bar = self.multi.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short);
        bar.set_position(resumed_at);
        self.bars.lock().unwrap().insert(d.to_string(), bar);
    }
    fn blob_advanced(&self, d: &cage_image::Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().unwrap().get(&d.to_string()) {
            b.inc(bytes);
        }
    }
    fn layer_skipped(&self, d: &cage_image::Digest, media_type: &str) {
        let line = format!(
            "{}: skipped a foreign layer ({media_type}): registries do not serve it; the image is unpacked from its other layers",
            &d.hex()[..12]
        );
        // Through the bars when they are drawn, so the line does not tear them.
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
    fn blob_done(&self, d: &cage_image::Digest) {
        match self.bars.lock().unwrap().remove(&d.to_string()) {
            Some(b) => b.finish(),
            None if !self.tty => eprintln!("{}: done", &d.hex()[..12]),
            None => {}
        }
    }
}

/// Bars on a terminal, a line per blob otherwise.
pub fn bars() -> std::sync::Arc<dyn cage_image::registry::PullProgress> {
    std::sync::Arc::new(Progress {
        multi: indicatif::MultiProgress::new(),
        bars: Default::default(),
        tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

/// Decimal units, as registries and `docker images` show sizes.
pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// A spinner with the elapsed time for a step that has no measure (waiting for health), on
/// a terminal only; it clears itself when dropped.
pub struct Spinner(Option<indicatif::ProgressBar>);

pub fn spinner(message: &str) -> Spinner {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return Spinner(None);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Spinner(Some(bar))
}

impl Spinner {
    pub fn set_message(&self, message: String) {
        if let Some(b) = &self.0 {
            b.set_message(message);
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
