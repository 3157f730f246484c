//! `${NAME}` and `${NAME:-default}` in config/cage.toml, as docker compose reads them: the
//! values come from the cage's `.env` and cagerun's environment (the environment wins), so
//! ports, the model and generated secrets live outside the checked-in file.
//!
//! Substitution happens on the text before TOML parsing, line by line (line numbers in
//! later errors stay right). A value is escaped for a TOML basic string, so a `"` or `\` in
//! `.env` cannot end the string it lands in and add keys. `$$` is a literal `$`. Comment
//! lines are left as they are.

use crate::cage::CageError;

pub(crate) fn valid_var(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape_basic(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The text with every `${...}` replaced. An unset variable without a default is an error
/// that names it and where to set it.
pub fn interpolate(
    file: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, CageError> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let err = |message: String| CageError {
            file: file.to_string(),
            line: n + 1,
            key: String::new(),
            message,
        };
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let end = body.find('}').ok_or_else(|| {
                err(
                    "an unclosed ${...}: write ${NAME} or ${NAME:-default} ($$ for a literal $)"
                        .into(),
                )
            })?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_var(name) {
                return Err(err(format!(
                    "${{{inner}}}: a variable name is letters, digits and '_' (not starting with a digit)"
                )));
            }
            // As compose: `:-` also replaces an empty value; a bare `${NAME}` may be empty.
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(err(format!(
                        "${{{name}}} is not set: add {name}=... to the cage's .env (or the environment), or write ${{{name}:-default}}"
                    )))
                }
            };
            out.push_str(&escape_basic(&value));
            rest = &body[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The names listed in the top-level `generate = [...]` (secrets cagerun creates in `.env`
/// on first `up`), read before interpolation: they must exist before it runs.
pub fn generated_names(file: &str, text: &str) -> Result<Vec<String>, CageError> {
    #[derive(serde::Deserialize)]
    struct Top {
        #[serde(default)]
        generate: Vec<String>,
    }
    // `${...}` outside a string (`allow_lan = ${LAN:-false}`) is not TOML yet: read the
    // file with every variable as 0, a value TOML takes anywhere. A file that still does
    // not parse lists nothing here; the real parse reports its mistake with the line.
    let placeholder = interpolate(file, text, &|_| Some("0".into()))?;
    let Ok(top) = toml::from_str::<Top>(&placeholder) else {
        return Ok(Vec::new());
    };
    for name in &top.generate {
        if !valid_var(name) {
            return Err(CageError {
                file: file.to_string(),
                line: 1,
                key: "generate".into(),
                message: format!("{name:?} is not a variable name (letters, digits, '_')"),
            });
        }
    }
    Ok(top.generate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("18789".into()),
            "EVIL" => Some("x\"\nprivileged = true".into()),
            _ => None,
        }
    }

    #[test]
    fn values_defaults_and_dollars() {
        let t = "a = \"${PORT}\"\nb = \"${MODEL:-smollm2}\"\nc = \"$$HOME $x\"\n# ${UNSET}\n";
        assert_eq!(
            interpolate("f", t, &vars).unwrap(),
            "a = \"18789\"\nb = \"smollm2\"\nc = \"$HOME $x\"\n# ${UNSET}\n"
        );
    }

    #[test]
    fn an_unset_variable_names_itself_and_its_line() {
        let e = interpolate("f", "a = 1\nb = \"${TOKEN}\"\n", &vars).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("TOKEN") && e.message.contains(".env"),
            "{e}"
        );
    }

    #[test]
    fn a_value_cannot_break_out_of_its_string() {
        let out = interpolate("f", "a = \"${EVIL}\"\n", &vars).unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed["a"].as_str(), Some("x\"\nprivileged = true"));
    }

    #[test]
    fn generate_is_read_before_interpolation() {
        let t = "generate = [\"TOKEN\"]\n[services.a]\nenv = { T = \"${TOKEN}\" }\n";
        assert_eq!(generated_names("f", t).unwrap(), ["TOKEN"]);
        let t = "generate = [\"TOKEN\"]\n[services.a]\nallow_lan = ${LAN:-false}\n";
        assert_eq!(generated_names("f", t).unwrap(), ["TOKEN"]);
        assert_eq!(
            generated_names("c", include_str!("../../../config/cage.toml")).unwrap(),
            ["OPENCLAW_GATEWAY_TOKEN"]
        );
        assert!(generated_names("f", "generate = [\"1X\"]\n").is_err());
    }

    /// The cages in the repository parse as they are checked in (with the values `up`
    /// and the tests give them).
    #[test]
    fn the_checked_in_cages_parse() {
        let lookup = |name: &str| match name {
            "OPENCLAW_GATEWAY_TOKEN" => Some("00".repeat(32)),
            n if n.ends_with("_DIR") || n == "LLAMA_BIN" => Some("/opt".into()),
            _ => None,
        };
        for (file, text) in [
            (
                "config/cage.toml",
                include_str!("../../../config/cage.toml"),
            ),
            (
                "tests/stack/cage.toml",
                include_str!("../../../tests/stack/cage.toml"),
            ),
        ] {
            let text = interpolate(file, text, &lookup).unwrap();
            let cage = crate::cage::parse_cage(file, &text).unwrap();
            assert!(cage
                .services
                .iter()
                .any(|s| s.name == "gateway" && s.supervised()));
            assert!(cage.services.iter().any(|s| s.name == "onboard" && s.once));
            assert!(cage.services.iter().any(|s| s.name == "cli" && s.on_demand));
            assert_eq!(cage.generate, ["OPENCLAW_GATEWAY_TOKEN"]);
        }
        let with_lan = |n: &str| match n {
            "GATEWAY_BIND" => Some("0.0.0.0".into()),
            n => lookup(n),
        };
        let text = interpolate("c", include_str!("../../../config/cage.toml"), &with_lan).unwrap();
        let e = crate::cage::parse_cage("c", &text).unwrap_err();
        assert!(e.message.contains("allow_lan"), "{e}");
        let recipe =
            crate::build::parse_recipe("r", include_str!("../../../config/sandbox-image.toml"))
                .unwrap();
        assert_eq!(recipe.name, "openclaw-sandbox");
    }
}
