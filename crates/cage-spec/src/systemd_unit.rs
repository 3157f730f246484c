//! `cagerun generate systemd`: a cage as a systemd user service (as podman's `generate
//! systemd` and quadlet do for a container). The unit runs `cagerun up` in the foreground, so
//! systemd watches the supervisor itself and restarts it on failure; `Delegate=yes` hands the
//! unit's cgroup to cagerun, which puts the cage's cgroups inside it (so `systemctl --user
//! stop` ends everything the cage ran); `ExecStop` is `cagerun down`, the orderly stop.
//!
//! Values are written for systemd's own parser: `%` is a specifier there (`%%` is a percent
//! sign), command arguments are double-quoted with C escapes where they need it, and a path
//! with a line break or another control character cannot be written into a unit at all.

use std::path::Path;

/// What the unit needs to know: all absolute, resolved by the caller.
#[derive(Debug, Clone)]
pub struct UnitRequest<'a> {
    /// The cagerun binary.
    pub exe: &'a Path,
    /// The cage's config/cage.toml.
    pub config: &'a Path,
    /// The cage's directory (the one holding config/).
    pub cage_dir: &'a Path,
    /// The cage's id (`cagerun ps` shows it); names the unit.
    pub cage_id: &'a str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("{what} {path:?} is not absolute: pass an absolute path")]
    Relative { what: &'static str, path: String },
    #[error("{what} {path:?} has a control character (a line break?), which a systemd unit cannot carry: move the cage to a plain path")]
    ControlCharacter { what: &'static str, path: String },
}

/// The unit's file name: `cagerun-<cage id>.service`.
pub fn unit_name(cage_id: &str) -> String {
    format!("cagerun-{cage_id}.service")
}

fn checked<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, UnitError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(UnitError::Relative {
            what,
            path: text.into_owned(),
        });
    }
    if text.chars().any(char::is_control) {
        return Err(UnitError::ControlCharacter {
            what,
            path: text.into_owned(),
        });
    }
    // Not UTF-8: to_string_lossy replaced bytes, which would name another file.
    path.to_str().ok_or(UnitError::ControlCharacter {
        what,
        path: text.into_owned(),
    })
}

/// A path as a setting's value (`WorkingDirectory=`): taken literally up to the line's end,
/// but specifiers are expanded, so `%` doubles.
fn setting(value: &str) -> String {
    value.replace('%', "%%")
}

/// One argument of an `Exec*=` line: quoted (C escapes) when it has a space, a quote, a
/// backslash or a `;` (a lone `;` separates commands); `%` doubles; a leading `$` would be
/// expanded as a variable, so it is escaped too.
fn argument(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';' | '$'));
    let value = value.replace('%', "%%");
    if plain {
        return value;
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The user unit for one cage.
pub fn render(req: &UnitRequest) -> Result<String, UnitError> {
    let exe = argument(checked("the cagerun binary", req.exe)?);
    let config = argument(checked("the cage's config", req.config)?);
    let dir = checked("the cage's directory", req.cage_dir)?;
    let name = unit_name(req.cage_id);
    Ok(format!(
        "\
# {name}: the cage in {dir_comment} as a systemd user service (written by `cagerun generate systemd`).
#
# Install it as the user who owns the cage (no sudo):
#   mkdir -p ~/.config/systemd/user && cp THIS_FILE ~/.config/systemd/user/{name}
#   systemctl --user daemon-reload
#   systemctl --user enable --now {name}
# Then: `systemctl --user status {name}`, `cagerun ps --config {config_comment}`,
# `systemctl --user stop {name}` (runs `cagerun down`).
# To start it at boot, before anyone logs in, let the user's systemd run without a session:
#   loginctl enable-linger $USER
[Unit]
Description=cagerun cage {id} ({workdir})

[Service]
WorkingDirectory={workdir}
# In the foreground: systemd watches the supervisor itself.
ExecStart={exe} up --config {config}
ExecStop={exe} down --config {config}
# The unit's cgroup is cagerun's to divide: the cage's services and their limits go inside it.
Delegate=yes
Restart=on-failure
RestartSec=5s
# Images and models are pulled on the first start.
TimeoutStartSec=infinity
TimeoutStopSec=120s

[Install]
WantedBy=default.target
",
        id = req.cage_id,
        dir_comment = dir,
        config_comment = req.config.display(),
        workdir = setting(dir),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(dir: &'a Path, config: &'a Path) -> UnitRequest<'a> {
        UnitRequest {
            exe: Path::new("/usr/local/bin/cagerun"),
            config,
            cage_dir: dir,
            cage_id: "clawbot-0a1b2c3d",
        }
    }

    fn line<'a>(unit: &'a str, key: &str) -> &'a str {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in\n{unit}"))
    }

    #[test]
    fn runs_up_in_the_foreground_and_down_to_stop_with_delegation() {
        let unit = render(&req(
            Path::new("/home/u/clawbot"),
            Path::new("/home/u/clawbot/config/cage.toml"),
        ))
        .unwrap();
        assert_eq!(
            line(&unit, "ExecStart="),
            "/usr/local/bin/cagerun up --config /home/u/clawbot/config/cage.toml"
        );
        assert!(!line(&unit, "ExecStart=").contains(" -d"));
        assert_eq!(
            line(&unit, "ExecStop="),
            "/usr/local/bin/cagerun down --config /home/u/clawbot/config/cage.toml"
        );
        assert_eq!(line(&unit, "WorkingDirectory="), "/home/u/clawbot");
        assert_eq!(line(&unit, "Delegate="), "yes");
        assert_eq!(line(&unit, "Restart="), "on-failure");
        assert_eq!(line(&unit, "WantedBy="), "default.target");
        assert!(unit.contains("systemctl --user daemon-reload"));
        assert!(unit.contains("systemctl --user enable --now cagerun-clawbot-0a1b2c3d.service"));
        assert!(unit.contains("loginctl enable-linger"));
        // Every section header and setting is at the start of its line.
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(unit.lines().any(|l| l == section), "{section}");
        }
    }

    #[test]
    fn spaces_quotes_and_percent_are_written_for_systemd_s_parser() {
        let dir = Path::new("/home/u/my cage 100%");
        let config = Path::new("/home/u/my cage 100%/config/ca\"ge.toml");
        let unit = render(&req(dir, config)).unwrap();
        assert_eq!(
            line(&unit, "ExecStart="),
            r#"/usr/local/bin/cagerun up --config "/home/u/my cage 100%%/config/ca\"ge.toml""#
        );
        assert_eq!(line(&unit, "WorkingDirectory="), "/home/u/my cage 100%%");
        let dollar = render(&req(Path::new("/c"), Path::new("/c/$HOME/cage.toml"))).unwrap();
        assert_eq!(
            line(&dollar, "ExecStart="),
            r#"/usr/local/bin/cagerun up --config "/c/$$HOME/cage.toml""#
        );
    }

    #[test]
    fn a_line_break_or_a_relative_path_is_refused() {
        let err = render(&req(
            Path::new("/home/u/a\nExecStartPre=/bin/evil"),
            Path::new("/home/u/a/config/cage.toml"),
        ))
        .unwrap_err();
        assert!(matches!(err, UnitError::ControlCharacter { .. }), "{err}");
        let err = render(&req(Path::new("/c"), Path::new("config/cage.toml"))).unwrap_err();
        assert!(matches!(err, UnitError::Relative { .. }), "{err}");
    }
}
