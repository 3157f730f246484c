//! `--env K=V` and docker-style `--env-file` parsing.

use crate::SpecError;

/// `K=V` from the command line. `K` alone is refused: unlike docker, the host environment never
/// leaks in implicitly.
pub fn parse_env_arg(input: &str) -> Result<(String, String), SpecError> {
    match input.split_once('=') {
        Some((k, v)) if valid_key(k) => Ok((k.to_string(), v.to_string())),
        _ => Err(SpecError::InvalidEnv {
            input: input.to_string(),
        }),
    }
}

/// Docker's env-file format: one `KEY=VALUE` a line, `#` comments and blank lines skipped,
/// values taken literally (no quotes, no expansion). A bare `KEY` takes the value from `lookup`
/// (the caller's environment), as docker does; a missing one is skipped.
pub fn parse_env_file(
    name: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, SpecError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SpecError::InvalidEnvFileLine {
            file: name.to_string(),
            line: i + 1,
            text: raw.to_string(),
        };
        match line.split_once('=') {
            Some((k, v)) if valid_key(k) => out.push((k.to_string(), v.to_string())),
            Some(_) => return Err(bad()),
            None if valid_key(line.trim_end()) => {
                if let Some(v) = lookup(line.trim_end()) {
                    out.push((line.trim_end().to_string(), v));
                }
            }
            None => return Err(bad()),
        }
    }
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && !k.contains(char::is_whitespace) && !k.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_arg() {
        assert_eq!(parse_env_arg("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env_arg("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env_arg("A").is_err());
        assert!(parse_env_arg("=x").is_err());
    }

    #[test]
    fn env_file() {
        let text = "# comment\n\nA=1\nB = 2\nHOMEISH\nC=x y\n";
        let got = parse_env_file("f", text, |k| (k == "HOMEISH").then(|| "h".to_string()));
        assert!(got.is_err(), "'B ' has a space in its key");
        let text = "# comment\n\nA=1\nHOMEISH\nMISSING\nC=x y\n";
        let got = parse_env_file("f", text, |k| (k == "HOMEISH").then(|| "h".to_string())).unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("HOMEISH".into(), "h".into()),
                ("C".into(), "x y".into())
            ]
        );
    }
}
