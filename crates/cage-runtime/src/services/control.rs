//! The control socket (`<runtime>/control.sock`, mode 0600 inside a 0700 directory): one
//! request per connection, one reply, each a line of JSON: [`Request`] and [`Reply`], typed in
//! [`crate::proto`] with the engine's other messages.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::state::CagePaths;
use super::supervisor::Supervisor;

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

pub fn serve(sup: Arc<Supervisor>) -> Result<tokio::task::JoinHandle<()>> {
    let path = sup.paths.control_socket();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let sup = sup.clone();
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
                    Ok(Request::Ps) => {
                        let services = sup.statuses();
                        Reply {
                            ok: true,
                            services: Some(services),
                            cgroup: Some(sup.cgroup_path()),
                            ..Default::default()
                        }
                    }
                    Ok(Request::Internet { on }) => {
                        let result = match on {
                            Some(on) => sup.set_internet(on).await,
                            None => Ok(()),
                        };
                        match result {
                            Ok(()) => Reply {
                                ok: true,
                                internet: Some(sup.internet_status()),
                                ..Default::default()
                            },
                            Err(e) => Reply {
                                ok: false,
                                error: Some(format!("{e:#}")),
                                ..Default::default()
                            },
                        }
                    }
                    Ok(Request::Restart { service }) => match sup.restart(&service) {
                        Ok(()) => Reply {
                            ok: true,
                            ..Default::default()
                        },
                        Err(e) => Reply {
                            ok: false,
                            error: Some(format!("{e:#}")),
                            ..Default::default()
                        },
                    },
                    Ok(Request::Down) => {
                        sup.teardown().await;
                        sup.stop.notify_one();
                        Reply {
                            ok: true,
                            ..Default::default()
                        }
                    }
                    Err(e) => Reply {
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                        ..Default::default()
                    },
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
