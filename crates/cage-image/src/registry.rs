//! Pulling images from registries: the distribution API through oci-client (anonymous and
//! bearer-token auth, Docker Hub's `library/` default), manifest lists and OCI indexes
//! resolved to this machine's platform, every blob streamed into the store, verified, and
//! resumed with a range request when an earlier pull was cut off.
//!
//! Plain HTTP only for a registry on this machine (localhost, 127.0.0.0/8, ::1) or one the
//! user names as insecure.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::layout::{host_arch, host_platform_entry, Image};
use crate::store::Store;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (host[:port]) spoken to over plain HTTP besides this machine's own.
    pub insecure_registries: Vec<String>,
    pub concurrent_layers: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            concurrent_layers: 3,
        }
    }
}

/// What a pull reports as it goes (the CLI draws progress bars from it).
pub trait PullProgress: Send + Sync {
    fn blob_started(&self, digest: &Digest, size: u64, resumed_at: u64);
    fn blob_advanced(&self, digest: &Digest, bytes: u64);
    fn blob_done(&self, digest: &Digest);
}

/// Reports nothing.
pub struct Quiet;

impl PullProgress for Quiet {
    fn blob_started(&self, _: &Digest, _: u64, _: u64) {}
    fn blob_advanced(&self, _: &Digest, _: u64) {}
    fn blob_done(&self, _: &Digest) {}
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
pub(crate) fn client_for(registry: &str, plain: bool) -> Result<Client> {
    let protocol = if plain {
        ClientProtocol::HttpsExcept(vec![registry.to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        ..Default::default()
    })
    .map_err(|e| {
        // reqwest's own message is "builder error"; the cause is further down the chain.
        let mut e_msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            e_msg = format!("{e_msg}: {s}");
            source = s.source();
        }
        let e = e_msg;
        let hint = if e.contains("CA certificates") {
            ": install the host's CA certificates (apt-get install ca-certificates)"
        } else {
            ""
        };
        ImageError::Format(format!("setting up the registry client: {e}{hint}"))
    })
}

async fn pull_async(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
) -> Result<(String, Image)> {
    let image_ref: Reference = reference
        .parse()
        .map_err(|e| ImageError::Format(format!("invalid image reference {reference:?}: {e}")))?;
    let registry = image_ref.resolve_registry().to_string();
    let client = client_for(
        &registry,
        is_local(&registry) || opts.insecure_registries.contains(&registry),
    )?;
    let auth = RegistryAuth::Anonymous;
    let canonical = image_ref.whole();

    // The manifest, through an index if need be; stored and verified like any blob.
    let (mut bytes, mut digest) = client
        .pull_manifest_raw(&image_ref, &auth, MANIFEST_TYPES)
        .await
        .map_err(|e| registry_err(&canonical, e))?;
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
            .map_err(|e| registry_err(&canonical, e))?;
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
    )
    .await?;
    let config = ImageConfiguration::from_reader(&store.read_verified(&config_digest)?[..])
        .map_err(|e| registry_err(&canonical, e))?;

    let layers: Vec<(Digest, u64)> = manifest
        .layers()
        .iter()
        .map(|l| Ok((Digest::parse(l.digest().as_ref())?, l.size())))
        .collect::<Result<_>>()?;
    futures_util::stream::iter(
        layers
            .iter()
            .map(|(d, size)| fetch_blob(&client, &at, store, d, *size, progress.as_ref())),
    )
    .buffer_unordered(opts.concurrent_layers.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    if layers.len() != config.rootfs().diff_ids().len() {
        return Err(registry_err(
            &canonical,
            "the manifest's layers and the config's diff_ids disagree",
        ));
    }
    let image = Image {
        manifest: manifest_digest,
        config_digest,
        config,
        layers: layers.into_iter().map(|(d, _)| d).collect(),
    };
    Ok((canonical, image))
}

pub(crate) async fn fetch_blob(
    client: &Client,
    at: &Reference,
    store: &Store,
    d: &Digest,
    size: u64,
    progress: &dyn PullProgress,
) -> Result<()> {
    if store.has(d) {
        progress.blob_started(d, size, size);
        progress.blob_done(d);
        return Ok(());
    }
    let resumed_from = store.partial_len(d);
    match download(client, at, store, d, size, progress).await {
        // What an earlier pull left was bad, or the registry answered the range with more
        // than asked (the partial is deleted now): fetch the whole blob once more.
        Err(ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. })
            if resumed_from > 0 =>
        {
            download(client, at, store, d, size, progress).await
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
        .map_err(|e| registry_err(&at.whole(), e))?;
    let mut stream = match response {
        BlobResponse::Partial(s) => s.stream,
        BlobResponse::Full(s) => {
            ingest.restart()?;
            s.stream
        }
    };
    progress.blob_started(d, size, ingest.offset());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| registry_err(&at.whole(), e))?;
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
}
