//! Registry credentials as users keep them, parsed and edited without touching the disk.
//!
//! Two file formats hold them, and both share one shape: podman's `auth.json` and Docker's
//! `~/.docker/config.json`, each `{"auths": {"KEY": {"auth": base64("USER:PASSWORD")}}}`.
//! KEY is a registry (`ghcr.io`), a registry with a repository namespace (`ghcr.io/org`,
//! podman's most-specific-first match), or a URL as old Docker wrote it
//! (`https://index.docker.io/v1/`). Docker may instead name a credential helper
//! (`credHelpers.REGISTRY`, or `credsStore` with an empty `auths` entry): cagerun runs no
//! helper programs, so that is reported as [`Found::Helper`] for the caller to explain.
//!
//! Which files are read, and in what order, is the caller's business (cage-runtime's
//! `credentials` module); this module only decides what one file's bytes say. It also parses
//! a registry's `WWW-Authenticate` challenge (RFC 7235), which `cagerun login` follows.

use std::fmt;

use base64::Engine;
use serde_json::{Map, Value};

/// The largest credentials file read (a real one is a few hundred bytes).
pub const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a credentials file says about a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Credentials(Credentials),
    /// The credentials are kept by `docker-credential-NAME`.
    Helper(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthFileError {
    #[error("not a credentials file (expected a JSON object with \"auths\"): {0}")]
    Json(String),
    #[error("the entry {key:?} has an \"auth\" that is not base64 of USER:PASSWORD")]
    BadAuth { key: String },
}

/// The registry part of a file's key, as cagerun names registries: no scheme, no `/v1/`
/// suffix, and Docker Hub's several names as `docker.io`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    let (host, rest) = match k.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (k, None),
    };
    let host = canonical_registry(host);
    match rest {
        Some(r) => format!("{host}/{r}"),
        None => host.to_string(),
    }
}

/// Docker Hub answers to several names; credentials are filed under any of them.
pub fn canonical_registry(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        r => r,
    }
}

/// The keys that may hold `registry`'s credentials for `repository`, most specific first
/// (`ghcr.io/org/app`, `ghcr.io/org`, `ghcr.io`), as podman matches them.
pub fn keys_for(registry: &str, repository: &str) -> Vec<String> {
    let registry = canonical_registry(registry);
    let mut keys = Vec::new();
    let mut repo = repository;
    while !repo.is_empty() {
        keys.push(format!("{registry}/{repo}"));
        repo = repo
            .rsplit_once('/')
            .map(|(parent, _)| parent)
            .unwrap_or("");
    }
    keys.push(registry.to_string());
    keys
}

fn parse(content: &[u8]) -> Result<Map<String, Value>, AuthFileError> {
    match serde_json::from_slice::<Value>(content) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AuthFileError::Json("the top level is not an object".into())),
        Err(e) => Err(AuthFileError::Json(e.to_string())),
    }
}

fn decode_auth(key: &str, auth: &str) -> Result<Credentials, AuthFileError> {
    let bad = || AuthFileError::BadAuth {
        key: key.to_string(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (username, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// What `content` (an auth.json or a Docker config.json) says about `registry`'s
/// credentials for `repository`: `None` when it has no entry for them.
pub fn lookup(
    content: &[u8],
    registry: &str,
    repository: &str,
) -> Result<Option<Found>, AuthFileError> {
    let top = parse(content)?;
    let keys = keys_for(registry, repository);
    let registry = canonical_registry(registry);
    if let Some(Value::Object(helpers)) = top.get("credHelpers") {
        if let Some((_, Value::String(helper))) =
            helpers.iter().find(|(k, _)| normalize_key(k) == registry)
        {
            return Ok(Some(Found::Helper(helper.clone())));
        }
    }
    let store = match top.get("credsStore") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let Some(Value::Object(auths)) = top.get("auths") else {
        return Ok(None);
    };
    for want in &keys {
        let Some((key, entry)) = auths.iter().find(|(k, _)| &normalize_key(k) == want) else {
            continue;
        };
        match entry.get("auth") {
            Some(Value::String(a)) if !a.is_empty() => {
                return decode_auth(key, a).map(|c| Some(Found::Credentials(c)))
            }
            _ => {}
        }
        if let (Some(Value::String(u)), Some(Value::String(p))) =
            (entry.get("username"), entry.get("password"))
        {
            return Ok(Some(Found::Credentials(Credentials {
                username: u.clone(),
                password: p.clone(),
            })));
        }
        // `docker login` with a credsStore leaves an empty entry: the secret is in the store.
        if let Some(helper) = &store {
            return Ok(Some(Found::Helper(helper.clone())));
        }
    }
    Ok(None)
}

/// `content` (or a new file when `None`) with `registry`'s entry set to `creds`; every other
/// entry and field is kept.
pub fn with_entry(
    content: Option<&[u8]>,
    registry: &str,
    creds: &Credentials,
) -> Result<Vec<u8>, AuthFileError> {
    let mut top = match content {
        Some(c) if !c.iter().all(u8::is_ascii_whitespace) => parse(c)?,
        _ => Map::new(),
    };
    let auths = top
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        return Err(AuthFileError::Json("\"auths\" is not an object".into()));
    }
    let auths = auths.as_object_mut().expect("checked above");
    let registry = canonical_registry(registry);
    auths.retain(|k, _| normalize_key(k) != registry);
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    auths.insert(registry.to_string(), serde_json::json!({ "auth": auth }));
    Ok(to_bytes(&top))
}

/// `content` without `registry`'s entry; `None` when it had none.
pub fn without_entry(content: &[u8], registry: &str) -> Result<Option<Vec<u8>>, AuthFileError> {
    let mut top = parse(content)?;
    let registry = canonical_registry(registry);
    let Some(Value::Object(auths)) = top.get_mut("auths") else {
        return Ok(None);
    };
    let before = auths.len();
    auths.retain(|k, _| normalize_key(k) != registry);
    if auths.len() == before {
        return Ok(None);
    }
    Ok(Some(to_bytes(&top)))
}

fn to_bytes(top: &Map<String, Value>) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(top).expect("a JSON map serializes");
    out.push(b'\n');
    out
}

/// A registry's `WWW-Authenticate` challenge: `Basic realm="…"` or
/// `Bearer realm="…",service="…",scope="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }
}

/// Parse a `WWW-Authenticate` value (its first challenge).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((name.to_ascii_lowercase(), value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Option<Found> {
        Some(Found::Credentials(Credentials {
            username: u.into(),
            password: p.into(),
        }))
    }

    #[test]
    fn podman_auth_json_entry_is_found_by_registry() {
        let f = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            b64("me:s3:cr3t")
        );
        assert_eq!(
            lookup(f.as_bytes(), "ghcr.io", "openclaw/openclaw").unwrap(),
            creds("me", "s3:cr3t"),
            "the password is everything after the first colon"
        );
        assert_eq!(lookup(f.as_bytes(), "quay.io", "x/y").unwrap(), None);
    }

    #[test]
    fn the_most_specific_namespace_wins() {
        let f = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}},"ghcr.io/org":{{"auth":"{}"}}}}}}"#,
            b64("all:a"),
            b64("org:o")
        );
        assert_eq!(
            lookup(f.as_bytes(), "ghcr.io", "org/app").unwrap(),
            creds("org", "o")
        );
        assert_eq!(
            lookup(f.as_bytes(), "ghcr.io", "other/app").unwrap(),
            creds("all", "a")
        );
        assert_eq!(
            keys_for("ghcr.io", "a/b/c"),
            ["ghcr.io/a/b/c", "ghcr.io/a/b", "ghcr.io/a", "ghcr.io"]
        );
    }

    #[test]
    fn docker_hub_s_legacy_key_is_docker_io() {
        let f = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("hub:pw")
        );
        assert_eq!(
            lookup(f.as_bytes(), "docker.io", "ollama/ollama").unwrap(),
            creds("hub", "pw")
        );
        assert_eq!(
            lookup(f.as_bytes(), "index.docker.io", "library/busybox").unwrap(),
            creds("hub", "pw")
        );
        let url_key = format!(
            r#"{{"auths":{{"http://127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64("u:p")
        );
        assert_eq!(
            lookup(url_key.as_bytes(), "127.0.0.1:5000", "x").unwrap(),
            creds("u", "p")
        );
    }

    #[test]
    fn credential_helpers_are_reported_not_run() {
        let f = r#"{"auths":{},"credHelpers":{"ghcr.io":"pass"}}"#;
        assert_eq!(
            lookup(f.as_bytes(), "ghcr.io", "a/b").unwrap(),
            Some(Found::Helper("pass".into()))
        );
        // A store with an empty entry (what `docker login` leaves) names the store...
        let f = r#"{"auths":{"https://index.docker.io/v1/":{}},"credsStore":"desktop"}"#;
        assert_eq!(
            lookup(f.as_bytes(), "docker.io", "library/x").unwrap(),
            Some(Found::Helper("desktop".into()))
        );
        // ...but a registry the file does not mention is pulled anonymously.
        assert_eq!(lookup(f.as_bytes(), "ghcr.io", "a/b").unwrap(), None);
    }

    #[test]
    fn broken_files_are_errors_not_anonymous() {
        assert!(matches!(
            lookup(b"{not json", "ghcr.io", "a"),
            Err(AuthFileError::Json(_))
        ));
        assert!(matches!(
            lookup(b"[]", "ghcr.io", "a"),
            Err(AuthFileError::Json(_))
        ));
        let f = r#"{"auths":{"ghcr.io":{"auth":"!!!"}}}"#;
        assert_eq!(
            lookup(f.as_bytes(), "ghcr.io", "a"),
            Err(AuthFileError::BadAuth {
                key: "ghcr.io".into()
            })
        );
        let no_colon = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            b64("nocolon")
        );
        assert!(lookup(no_colon.as_bytes(), "ghcr.io", "a").is_err());
        assert_eq!(lookup(b"{}", "ghcr.io", "a").unwrap(), None);
    }

    #[test]
    fn writing_an_entry_keeps_the_others() {
        let before = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}},"credHelpers":{{"x.io":"y"}}}}"#,
            b64("q:1"),
            b64("old:0")
        );
        let c = Credentials {
            username: "new".into(),
            password: "2".into(),
        };
        let after = with_entry(Some(before.as_bytes()), "docker.io", &c).unwrap();
        assert_eq!(
            lookup(&after, "docker.io", "library/busybox").unwrap(),
            creds("new", "2")
        );
        assert_eq!(lookup(&after, "quay.io", "a").unwrap(), creds("q", "1"));
        let v: Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(v["credHelpers"]["x.io"], "y");
        assert_eq!(
            v["auths"].as_object().unwrap().len(),
            2,
            "the legacy Docker Hub key was replaced, not kept beside: {v}"
        );
        let fresh = with_entry(None, "ghcr.io", &c).unwrap();
        assert_eq!(lookup(&fresh, "ghcr.io", "a").unwrap(), creds("new", "2"));

        let removed = without_entry(&after, "docker.io").unwrap().unwrap();
        assert_eq!(lookup(&removed, "docker.io", "library/x").unwrap(), None);
        assert_eq!(lookup(&removed, "quay.io", "a").unwrap(), creds("q", "1"));
        assert_eq!(without_entry(&removed, "docker.io").unwrap(), None);
        assert!(with_entry(Some(b"{\"auths\":[]}"), "a.io", &c).is_err());
    }

    #[test]
    fn challenges_parse_as_registries_send_them() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull"));
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert!(!b.is_bearer());
        assert_eq!(b.param("realm"), Some("Registry Realm"));
        let odd = parse_challenge(r#"Bearer realm=plain, error="a\"b""#).unwrap();
        assert_eq!(odd.param("realm"), Some("plain"));
        assert_eq!(odd.param("error"), Some("a\"b"));
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
