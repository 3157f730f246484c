//! Pulling images from registries: the distribution API through oci-client (anonymous and
//! bearer-token auth, Docker Hub's `library/` default), manifest lists and OCI indexes
//! resolved to this machine's platform, every blob streamed into the store, verified, and
//! resumed with a range request when an earlier pull was cut off.
//!
//! Plain HTTP only for a registry on this machine (localhost, 127.0.0.0/8, ::1) or one the
//! user names as insecure.
//!
//! Auth is oci-client's: on a `Bearer realm=…,service=…` challenge it asks the realm for a
//! `repository:NAME:pull` token, anonymously or with the caller's credentials as Basic (Docker
//! Hub, ghcr.io, distribution's `auth: token`); on a Basic challenge it sends the credentials
//! with each request. It is called once up front so that its errors surface (inside a request
//! it drops them). Login checks ([`verify_login`]) follow the challenge themselves, as podman
//! does: oci-client only asks for repository-scoped tokens and checks nothing on Basic.
//!
//! Failures become typed [`ImageError`]s that name the cause and the fix: the network ones
//! (DNS, refused, TLS, timeout) are told apart by the error types in reqwest's cause chain;
//! 401/403/404 by status and the distribution error codes.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::auth::{parse_challenge, Credentials};
use crate::digest::Digest;
use crate::error::{ImageError, Result, Sent, TagOrDigest, Unreachable, Wanted};
use crate::layout::{host_arch, host_platform_entry, Image};
use crate::store::Store;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Layers a registry does not serve: their blobs live elsewhere (Windows base layers) and
/// may not be redistributed, so a pull leaves them out (as containerd and podman do).
const FOREIGN_LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

pub use crate::error::TIMEOUT_ENV;
/// How long a connect or a single read may take by default; not the whole download.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest token or error body read from a registry's auth server.
const MAX_AUTH_BODY: usize = 64 << 10;

/// Credentials and the file they came from (named in errors).
#[derive(Debug, Clone)]
pub struct FiledCredentials {
    pub credentials: Credentials,
    pub from: String,
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (host[:port]) spoken to over plain HTTP besides this machine's own.
    pub insecure_registries: Vec<String>,
    pub concurrent_layers: usize,
    /// Sent to the registry (or its token server) when set; anonymous otherwise.
    pub credentials: Option<FiledCredentials>,
    /// Connect timeout and read timeout (each read, not the whole download).
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            concurrent_layers: 3,
            credentials: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a pull reports as it goes (the CLI draws progress bars from it).
pub trait PullProgress: Send + Sync {
    fn blob_started(&self, digest: &Digest, size: u64, resumed_at: u64);
    fn blob_advanced(&self, digest: &Digest, bytes: u64);
    fn blob_done(&self, digest: &Digest);
    /// A layer the registry does not serve (foreign, non-distributable) was left out.
    fn layer_skipped(&self, digest: &Digest, media_type: &str) {
        tracing::warn!(%digest, media_type, "skipped a foreign (non-distributable) layer");
    }
}

/// Reports nothing.
pub struct Quiet;

impl PullProgress for Quiet {
    fn blob_started(&self, _: &Digest, _: u64, _: u64) {}
    fn blob_advanced(&self, _: &Digest, _: u64) {}
    fn blob_done(&self, _: &Digest) {}
    fn layer_skipped(&self, _: &Digest, _: &str) {}
}

pub(crate) fn registry_err(reference: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Format(format!("{reference}: {e}"))
}

pub(crate) fn is_local(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        })
        .unwrap_or(registry);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Where an image reference points, as credentials are filed: the registry as the user
/// names it (`docker.io`, not its API host) and the repository (`library/busybox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub registry: String,
    pub repository: String,
}

pub fn locate(reference: &str) -> Result<Location> {
    let r = parse_reference(reference)?;
    Ok(Location {
        registry: r.registry().to_string(),
        repository: r.repository().to_string(),
    })
}

fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse()
        .map_err(|e| ImageError::Format(format!("invalid image reference {reference:?}: {e}")))
}

/// Pull `reference` into the store; returns the canonical reference and the image.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
) -> Result<(String, Image)> {
    block_on(pull_async(store, reference, opts, progress))?
}

/// One pull on a single-threaded runtime: the rest of cagerun stays synchronous.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ImageError::Format(format!("starting the downloader: {e}")))?;
    Ok(rt.block_on(future))
}

/// A client for `registry` (host[:port]); plain HTTP only when `plain`. (`Client::new`
/// would fall back to a default client that panics on a host without CA certificates.)
pub(crate) fn client_for(registry: &str, plain: bool, timeout: Duration) -> Result<Client> {
    let protocol = if plain {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(timeout),
        read_timeout: Some(timeout),
        ..Default::default()
    })
    .map_err(|e| {
        // reqwest's own message is "builder error"; the cause is further down the chain.
        let e = chain_text(&e);
        let hint = if e.contains("CA certificates") {
            ": install the host's CA certificates (apt-get install ca-certificates)"
        } else {
            ""
        };
        ImageError::Format(format!("setting up the registry client: {e}{hint}"))
    })
}

fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// A registry's text (an error body) as one bounded line.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the registry's certificate is not trusted (unknown issuer: self-signed, or signed by a CA this host does not trust)".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the registry's certificate is for another name".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the registry's certificate has expired".into()
        }
        // webpki's word for a self-signed certificate made as a CA (`openssl req -x509`).
        rustls::Error::InvalidCertificate(C::Other(other))
            if format!("{other:?}").contains("CaUsedAsEndEntity") =>
        {
            "the registry's certificate is not trusted (self-signed: a CA certificate serving as the registry's own)".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("the registry's certificate is not valid ({other})")
        }
        other => other.to_string(),
    }
}

/// Why a request never got an answer, when it is a network failure: DNS, a refused
/// connection, TLS or a timeout, told apart by the error types in the cause chain.
pub(crate) fn network_cause(
    e: &(dyn StdError + 'static),
    host: &str,
    timeout: Duration,
) -> Option<Unreachable> {
    let mut current = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
        {
            return Some(Unreachable::Timeout { after: timeout });
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(Unreachable::Tls {
                detail: describe_tls(tls),
            });
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(Unreachable::Refused { host: host.into() })
                }
                std::io::ErrorKind::TimedOut => {
                    return Some(Unreachable::Timeout { after: timeout })
                }
                _ => {}
            }
            // An io::Error hides what it wraps from source(): look inside.
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return Some(Unreachable::Tls {
                        detail: describe_tls(tls),
                    });
                }
                if let Some(found) = network_cause(inner, host, timeout) {
                    return Some(found);
                }
            }
        }
        // hyper-util's connector names a failed lookup "dns error" (a private type).
        if err.to_string() == "dns error" {
            let detail = err
                .source()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no address".into());
            return Some(Unreachable::Dns {
                host: host.split(':').next().unwrap_or(host).into(),
                detail,
            });
        }
        current = err.source();
    }
    None
}

/// What a pull is after, to name it in errors.
pub(crate) struct Target {
    /// As the user names it (docker.io).
    pub registry: String,
    /// host[:port] actually spoken to.
    pub host: String,
    pub repository: String,
    pub tag: TagOrDigest,
    pub sent: Sent,
    pub timeout: Duration,
}

impl Target {
    pub fn of(r: &Reference, sent: Sent, timeout: Duration) -> Target {
        Target {
            registry: r.registry().to_string(),
            host: r.resolve_registry().to_string(),
            repository: r.repository().to_string(),
            tag: TagOrDigest(r.digest().or(r.tag()).unwrap_or("latest").to_string()),
            sent,
            timeout,
        }
    }

    fn unreachable(&self, e: &(dyn StdError + 'static)) -> Option<ImageError> {
        network_cause(e, &self.host, self.timeout).map(|why| ImageError::Unreachable {
            registry: self.registry.clone(),
            why,
        })
    }

    fn wanted(&self) -> Box<Wanted> {
        Box::new(Wanted {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            sent: self.sent.clone(),
        })
    }

    fn unauthorized(&self) -> ImageError {
        ImageError::Unauthorized(self.wanted())
    }

    fn denied(&self, status: &'static str) -> ImageError {
        ImageError::Denied {
            at: self.wanted(),
            status,
        }
    }

    fn rejected(&self, message: &str) -> ImageError {
        match &self.sent {
            Sent::Nothing => self.unauthorized(),
            Sent::Credentials { user, from } => ImageError::CredentialsRejected {
                registry: self.registry.clone(),
                user: user.clone(),
                from: from.clone(),
                message: one_line(message),
            },
        }
    }

    fn status(&self, status: String, message: &str) -> ImageError {
        ImageError::RegistryStatus {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            status,
            message: one_line(message),
        }
    }

    /// An oci-client error as the user's problem. `bearer`: a token was obtained before the
    /// request (so a 401 with credentials means they grant no pull, not that they are wrong);
    /// `manifest`: a 404 says which of repository or tag is missing.
    pub fn explain(&self, e: OciDistributionError, bearer: bool, manifest: bool) -> ImageError {
        // RequestError is transparent: its source() skips the reqwest::Error itself.
        let cause: &(dyn StdError + 'static) = match &e {
            OciDistributionError::RequestError(re) => re,
            other => other,
        };
        if let Some(found) = self.unreachable(cause) {
            return found;
        }
        match e {
            OciDistributionError::AuthenticationFailure(body) => self.rejected(&body),
            OciDistributionError::UnauthorizedError { .. } => match (&self.sent, bearer) {
                (Sent::Nothing, _) => self.unauthorized(),
                (Sent::Credentials { .. }, true) => {
                    self.denied("401 Unauthorized with a token for the credentials sent")
                }
                (Sent::Credentials { .. }, false) => self.rejected("401 Unauthorized"),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = envelope
                    .errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                if manifest && codes.contains(&&OciErrorCode::NameUnknown) {
                    ImageError::NoSuchRepository {
                        registry: self.registry.clone(),
                        repository: self.repository.clone(),
                    }
                } else if manifest && codes.contains(&&OciErrorCode::ManifestUnknown) {
                    ImageError::NoSuchTag(self.wanted())
                } else if codes.contains(&&OciErrorCode::Denied) {
                    self.denied("403 DENIED")
                } else if codes.contains(&&OciErrorCode::Unauthorized) {
                    self.unauthorized()
                } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                    self.status(
                        "429 Too Many Requests (wait, or log in for a higher limit)".into(),
                        &message,
                    )
                } else {
                    let names: Vec<String> = envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}", e.code))
                        .collect();
                    self.status(names.join(", "), &message)
                }
            }
            OciDistributionError::ServerError { code: 403, .. } => self.denied("403 Forbidden"),
            OciDistributionError::ServerError { code, message, .. } => {
                self.status(format!("HTTP {code}"), &message)
            }
            other => registry_err(
                &format!("{}/{}", self.registry, self.repository),
                one_line(&chain_text(&other)),
            ),
        }
    }
}

async fn pull_async(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
) -> Result<(String, Image)> {
    let image_ref = parse_reference(reference)?;
    let registry = image_ref.resolve_registry().to_string();
    let client = client_for(
        &registry,
        is_local(&registry) || opts.insecure_registries.contains(&registry),
        opts.timeout,
    )?;
    let (auth, sent) = match &opts.credentials {
        Some(c) => (
            RegistryAuth::Basic(
                c.credentials.username.clone(),
                c.credentials.password.clone(),
            ),
            Sent::Credentials {
                user: c.credentials.username.clone(),
                from: c.from.clone(),
            },
        ),
        None => (RegistryAuth::Anonymous, Sent::Nothing),
    };
    let target = Target::of(&image_ref, sent, opts.timeout);
    let canonical = image_ref.whole();

    // Authenticate first, explicitly: oci-client would otherwise fetch the token inside
    // each request and drop its errors (a wrong password would look like a missing one).
    // On a Bearer challenge it asks the realm for a `repository:NAME:pull` token, sending
    // the credentials as Basic when there are any; on a Basic challenge it sends them with
    // every request.
    let bearer = client
        .auth(&image_ref, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| target.explain(e, false, false))?
        .is_some();

    // The manifest, through an index if need be; stored and verified like any blob.
    let (mut bytes, mut digest) = match client
        .pull_manifest_raw(&image_ref, &auth, MANIFEST_TYPES)
        .await
    {
        Ok(found) => found,
        Err(e) => {
            return Err(match target.explain(e, bearer, true) {
                // distribution answers MANIFEST_UNKNOWN for a repository it does not have
                // too; its tag list tells the two apart (NAME_UNKNOWN).
                missing @ ImageError::NoSuchTag(_) => {
                    match client.list_tags(&image_ref, &auth, Some(1), None).await {
                        Err(e) => match target.explain(e, bearer, true) {
                            no_repo @ ImageError::NoSuchRepository { .. } => no_repo,
                            _ => missing,
                        },
                        Ok(_) => missing,
                    }
                }
                other => other,
            });
        }
    };
    let mut at = image_ref.clone();
    loop {
        let d = Digest::parse(&digest)?;
        if Digest::of(&bytes) != d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: Digest::of(&bytes).to_string(),
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| registry_err(&canonical, e))?;
        if value.get("manifests").is_none() {
            break;
        }
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| registry_err(&canonical, e))?;
        let entry = host_platform_entry(&index).ok_or_else(|| {
            registry_err(
                &canonical,
                format!("no linux/{} image in the index", host_arch()),
            )
        })?;
        at = at.clone_with_digest(entry.digest().to_string());
        (bytes, digest) = client
            .pull_manifest_raw(&at, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| target.explain(e, bearer, true))?;
    }
    let manifest_digest = store.put_bytes(&bytes)?;
    let manifest =
        ImageManifest::from_reader(&bytes[..]).map_err(|e| registry_err(&canonical, e))?;

    let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
    fetch_blob(
        &client,
        &at,
        store,
        &config_digest,
        manifest.config().size(),
        progress.as_ref(),
        &target,
    )
    .await?;
    let config = ImageConfiguration::from_reader(&store.read_verified(&config_digest)?[..])
        .map_err(|e| registry_err(&canonical, e))?;

    // The config's diff_ids name every layer, foreign ones too: the counts must agree
    // before the foreign ones are left out.
    if manifest.layers().len() != config.rootfs().diff_ids().len() {
        return Err(registry_err(
            &canonical,
            "the manifest's layers and the config's diff_ids disagree",
        ));
    }
    let mut layers: Vec<(Digest, u64)> = Vec::new();
    for l in manifest.layers() {
        let d = Digest::parse(l.digest().as_ref())?;
        let media_type = l.media_type().to_string();
        if FOREIGN_LAYER_TYPES
            .iter()
            .any(|t| media_type.starts_with(t))
        {
            progress.layer_skipped(&d, &media_type);
            continue;
        }
        layers.push((d, l.size()));
    }
    futures_util::stream::iter(
        layers
            .iter()
            .map(|(d, size)| fetch_blob(&client, &at, store, d, *size, progress.as_ref(), &target)),
    )
    .buffer_unordered(opts.concurrent_layers.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    let image = Image {
        manifest: manifest_digest,
        config_digest,
        config,
        layers: layers.into_iter().map(|(d, _)| d).collect(),
    };
    Ok((canonical, image))
}

/// Check `creds` against `registry` as `podman login` does: ask `/v2/` and follow its
/// challenge (a token from the realm for Bearer, the credentials themselves for Basic)
/// until the registry answers 200. Nothing is written here.
pub fn verify_login(
    registry: &str,
    creds: &FiledCredentials,
    insecure_registries: &[String],
    timeout: Duration,
) -> Result<()> {
    block_on(verify_login_async(
        registry,
        creds,
        insecure_registries,
        timeout,
    ))?
}

async fn verify_login_async(
    registry: &str,
    creds: &FiledCredentials,
    insecure_registries: &[String],
    timeout: Duration,
) -> Result<()> {
    // The API host behind the name (docker.io answers at index.docker.io), as pulls use.
    let probe: Reference = parse_reference(&format!("{registry}/cagerun/login:check"))?;
    let host = probe.resolve_registry().to_string();
    let plain = is_local(&host)
        || insecure_registries
            .iter()
            .any(|r| r == registry || *r == host);
    let scheme = if plain { "http" } else { "https" };
    let base = format!("{scheme}://{host}/v2/");
    let target = Target {
        registry: registry.to_string(),
        host: host.clone(),
        repository: String::new(),
        tag: TagOrDigest(String::new()),
        sent: Sent::Credentials {
            user: creds.credentials.username.clone(),
            from: creds.from.clone(),
        },
        timeout,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| {
            ImageError::Format(format!(
                "setting up the registry client: {}",
                chain_text(&e)
            ))
        })?;
    let net = |e: reqwest::Error| {
        target
            .unreachable(&e)
            .unwrap_or_else(|| registry_err(registry, one_line(&chain_text(&e))))
    };
    let first = http.get(&base).send().await.map_err(net)?;
    let status = first.status();
    if status.is_success() {
        // An open registry: it takes anything, as podman login accepts then.
        return Ok(());
    }
    if status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(target.status(status.to_string(), ""));
    }
    let challenge = first
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge)
        .ok_or_else(|| {
            target.status(
                "401 without a WWW-Authenticate challenge".into(),
                "the registry does not say how to log in",
            )
        })?;
    let c = &creds.credentials;
    let authorized = if challenge.is_bearer() {
        let realm = challenge.param("realm").ok_or_else(|| {
            target.status("401 with a Bearer challenge without a realm".into(), "")
        })?;
        let mut url = reqwest::Url::parse(realm).map_err(|e| {
            target.status(
                format!("a Bearer realm that is no URL ({realm:?})"),
                &e.to_string(),
            )
        })?;
        // The credentials go to the realm: never in clear text to a remote host.
        if url.scheme() != "https"
            && !(url.scheme() == "http" && (plain || is_local(url.authority())))
        {
            return Err(target.status(
                format!("a token server at {realm}"),
                "refusing to send credentials there without TLS",
            ));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("account", &c.username);
        }
        let answer = http
            .get(url)
            .basic_auth(&c.username, Some(&c.password))
            .send()
            .await
            .map_err(net)?;
        let status = answer.status();
        let body = read_bounded(answer).await.map_err(net)?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(target.rejected(&format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        if !status.is_success() {
            return Err(target.status(
                format!("{status} from its token server"),
                &String::from_utf8_lossy(&body),
            ));
        }
        let token: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| target.status("a token answer that is no JSON".into(), &e.to_string()))?;
        let token = token
            .get("token")
            .or_else(|| token.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| target.status("a token answer without a token".into(), ""))?
            .to_string();
        http.get(&base)
            .bearer_auth(token)
            .send()
            .await
            .map_err(net)?
    } else {
        http.get(&base)
            .basic_auth(&c.username, Some(&c.password))
            .send()
            .await
            .map_err(net)?
    };
    match authorized.status() {
        s if s.is_success() => Ok(()),
        s @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
            Err(target.rejected(s.as_str()))
        }
        s => Err(target.status(s.to_string(), "")),
    }
}

/// A response body, at most [`MAX_AUTH_BODY`] bytes of it.
async fn read_bounded(
    mut response: reqwest::Response,
) -> std::result::Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_AUTH_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_AUTH_BODY {
            break;
        }
    }
    Ok(body)
}

pub(crate) async fn fetch_blob(
    client: &Client,
    at: &Reference,
    store: &Store,
    d: &Digest,
    size: u64,
    progress: &dyn PullProgress,
    target: &Target,
) -> Result<()> {
    if store.has(d) {
        progress.blob_started(d, size, size);
        progress.blob_done(d);
        return Ok(());
    }
    let resumed_from = store.partial_len(d);
    match download(client, at, store, d, size, progress, target).await {
        // What an earlier pull left was bad, or the registry answered the range with more
        // than asked (the partial is deleted now): fetch the whole blob once more.
        Err(ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. })
            if resumed_from > 0 =>
        {
            download(client, at, store, d, size, progress, target).await
        }
        other => other,
    }
}

async fn download(
    client: &Client,
    at: &Reference,
    store: &Store,
    d: &Digest,
    size: u64,
    progress: &dyn PullProgress,
    target: &Target,
) -> Result<()> {
    let mut ingest = store.begin(d, Some(size))?;
    if ingest.offset() == size {
        // Everything arrived before an interruption: nothing to ask for (a range from the
        // end is one some registries answer with the whole blob), only to verify.
        progress.blob_started(d, size, size);
        ingest.finish()?;
        progress.blob_done(d);
        return Ok(());
    }
    let name = d.to_string();
    let response = client
        .pull_blob_stream_partial(at, name.as_str(), ingest.offset(), None)
        .await
        .map_err(|e| target.explain(e, true, false))?;
    let mut stream = match response {
        BlobResponse::Partial(s) => s.stream,
        BlobResponse::Full(s) => {
            ingest.restart()?;
            s.stream
        }
    };
    progress.blob_started(d, size, ingest.offset());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            target
                .unreachable(&e)
                .unwrap_or_else(|| registry_err(&at.whole(), e))
        })?;
        ingest.write(&chunk)?;
        progress.blob_advanced(d, chunk.len() as u64);
    }
    ingest.finish()?;
    progress.blob_done(d);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_docker_hubs_defaults() {
        let r = |s: &str| s.parse::<Reference>().unwrap().whole();
        assert_eq!(r("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(r("ollama/ollama:0.12.3"), "docker.io/ollama/ollama:0.12.3");
        assert_eq!(r("localhost:5000/x:1"), "localhost:5000/x:1");
        assert!(is_local("127.0.0.1:5000") && is_local("localhost") && !is_local("ghcr.io"));
    }

    #[test]
    fn credentials_are_looked_up_under_the_registry_users_name() {
        let at = locate("busybox").unwrap();
        assert_eq!(
            (at.registry.as_str(), at.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let at = locate("ghcr.io/openclaw/openclaw:2026.9.6").unwrap();
        assert_eq!(
            (at.registry.as_str(), at.repository.as_str()),
            ("ghcr.io", "openclaw/openclaw")
        );
    }

    #[test]
    fn registry_text_in_errors_is_one_bounded_line() {
        let long = format!("a\nb\r\tc{}", "x".repeat(500));
        let line = one_line(&long);
        assert!(line.starts_with("a b c") && !line.contains('\n') && line.len() <= 200);
    }
}
