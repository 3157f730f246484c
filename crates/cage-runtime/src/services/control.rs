//! The control socket (`<runtime>/control.sock`, mode 0600 inside a 0700 directory): one
//! request per connection, one reply, each a line of JSON: [`Request`] and [`Reply`], typed in
//! [`crate::proto`] with the engine's other messages.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::state::CagePaths;

pub use crate::proto::{InternetStatus, Reply, Request};

/// A request line is read up to this many bytes; a longer one does not parse.
const MAX_REQUEST_LINE: u64 = 64 << 10;

pub fn request(paths: &CagePaths, req: &Request) -> Result<Reply> {
    let mut s =
        UnixStream::connect(paths.control_socket()).context("connecting to the supervisor")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let reply: Reply = serde_json::from_str(&line).context("reading the supervisor's reply")?;
    if !reply.ok {
        bail!("{}", reply.error.clone().unwrap_or_default());
    }
    Ok(reply)
}

/// What answers the control socket's requests (the supervisor).
pub trait Answer: Send + Sync + 'static {
    fn answer(self: Arc<Self>, request: Request) -> impl Future<Output = Reply> + Send;
}

/// A refusal, with its reason, as the control socket answers it.
pub fn refused(error: impl std::fmt::Display) -> Reply {
    Reply {
        ok: false,
        error: Some(error.to_string()),
        ..Default::default()
    }
}

/// Listen on `path` (replacing a stale socket), mode 0600; each connection's one request is
/// answered by `answer`.
pub fn serve<A: Answer>(path: &Path, answer: Arc<A>) -> Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut line = String::new();
                if tokio::io::BufReader::new(r.take(MAX_REQUEST_LINE))
                    .read_line(&mut line)
                    .await
                    .is_err()
                {
                    return;
                }
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => answer.answer(request).await,
                    Err(e) => refused(format!("bad request: {e}")),
                };
                let _ = w
                    .write_all(
                        format!("{}\n", serde_json::to_string(&reply).unwrap_or_default())
                            .as_bytes(),
                    )
                    .await;
            });
        }
    }))
}
