//! The runtime's error, in the words engines read back: runc's `--log` lines.
//!
//! containerd reads the file as a stream of JSON objects and repeats the last one whose
//! `level` is exactly `"error"` (any line that is not JSON, or a `time` that is not RFC 3339,
//! hides every message); podman parses the whole file as *one* object. So on failure exactly
//! one line is written, and nothing on success.

use std::io::Write;
use std::path::Path;

use crate::services::state::unix_now;
use crate::views::rfc3339_utc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// logrus's text form: `time="..." level=error msg="..."`.
    Text,
    /// `{"level":"error","msg":"...","time":"..."}`.
    Json,
}

impl LogFormat {
    /// `--log-format`'s value; runc's default is text.
    pub fn parse(value: Option<&str>) -> Result<LogFormat, String> {
        match value {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(format!(
                "--log-format {other}: unknown log format (use text or json)"
            )),
        }
    }
}

/// One error line (with its newline) at `unix_secs`.
pub fn error_line(format: LogFormat, msg: &str, unix_secs: i64) -> String {
    let time = rfc3339_utc(unix_secs);
    match format {
        LogFormat::Json => {
            let line = serde_json::json!({ "level": "error", "msg": msg, "time": time });
            format!("{line}\n")
        }
        LogFormat::Text => {
            // logrus quotes with Go's %q; JSON string escaping is the same for what matters
            // here (quotes, backslashes, control characters).
            let quoted = serde_json::Value::String(msg.to_string());
            format!("time=\"{time}\" level=error msg={quoted}\n")
        }
    }
}

/// Append the error to the engine's `--log` file (created 0600 if missing).
pub fn append(log: &Path, format: LogFormat, msg: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let now = unix_now() as i64;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    file.write_all(error_line(format, msg, now).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_what_containerd_and_podman_parse() {
        let line = error_line(
            LogFormat::Json,
            "container \"x\" does not exist",
            1_796_166_135,
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert_eq!(v["time"], "2026-12-01T23:02:15Z");
    }

    #[test]
    fn text_line_is_logrus_shaped() {
        let line = error_line(LogFormat::Text, "a \"b\"", 0);
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:00Z\" level=error msg=\"a \\\"b\\\"\"\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        assert!(LogFormat::parse(Some("yaml")).is_err());
    }
}
