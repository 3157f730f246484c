//! The control socket (`<runtime>/control.sock`, mode 0600 inside a 0700 directory): one
//! request per connection, one reply, each a line of JSON: [`Request`] and [`Reply`], typed in
//! [`crate::proto`] with the engine's other messages. [`Request::Events`] keeps its
//! connection: after the reply, one [`Event`] line per event (a broadcast channel per
//! supervisor, bounded: a subscriber that reads too slowly loses events and is told how
//! many, it never holds the supervisor up).

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

pub use crate::proto::{Event, EventKind, InternetStatus, Reply, Request};

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

/// Events a subscriber may fall behind by before it loses some.
pub const EVENT_BUFFER: usize = 256;
/// Subscribers at once; more are refused.
pub const MAX_SUBSCRIBERS: usize = 16;

/// Subscribe to the supervisor's events: each `Ok` is one event, until it ends.
pub fn subscribe(paths: &CagePaths) -> Result<Subscription> {
    let mut s =
        UnixStream::connect(paths.control_socket()).context("connecting to the supervisor")?;
    s.write_all(format!("{}\n", serde_json::to_string(&Request::Events)?).as_bytes())?;
    let stream = s.try_clone()?;
    let mut lines = BufReader::new(s).lines();
    let first = lines
        .next()
        .context("the supervisor closed the connection")??;
    let reply: Reply = serde_json::from_str(&first).context("reading the supervisor's reply")?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_default());
    }
    Ok(Subscription { stream, lines })
}

/// The events of one subscription, in order.
pub struct Subscription {
    stream: UnixStream,
    lines: std::io::Lines<BufReader<UnixStream>>,
}

impl Subscription {
    /// Ends the subscription from elsewhere (another thread): its iterator then ends.
    pub fn closer(&self) -> Result<impl FnOnce()> {
        let s = self.stream.try_clone()?;
        Ok(move || {
            let _ = s.shutdown(std::net::Shutdown::Both);
        })
    }
}

impl Iterator for Subscription {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        let l = self.lines.next()?;
        Some(l.context("reading an event").and_then(|l| {
            serde_json::from_str::<Event>(&l)
                .with_context(|| format!("an event that does not parse: {l:?}"))
        }))
    }
}

/// What answers the control socket's requests (the supervisor).
pub trait Answer: Send + Sync + 'static {
    fn answer(self: Arc<Self>, request: Request) -> impl Future<Output = Reply> + Send;
    /// A new subscription to the events, or why not.
    fn subscribe(&self) -> Result<tokio::sync::broadcast::Receiver<Event>, String>;
}

/// The reply line, then each event as a line until the channel closes or the subscriber
/// goes. A subscriber that fell behind gets one `dropped` line per gap, with the count.
async fn stream_events(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut rx: tokio::sync::broadcast::Receiver<Event>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let ok = Reply {
        ok: true,
        ..Default::default()
    };
    let mut line = serde_json::to_string(&ok).unwrap_or_default();
    loop {
        line.push('\n');
        if w.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(count)) => Event {
                time_ms: super::state::unix_now_ms(),
                service: String::new(),
                kind: EventKind::Dropped { count },
            },
            Err(RecvError::Closed) => return,
        };
        line = serde_json::to_string(&event).unwrap_or_default();
    }
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
                    Ok(Request::Events) => match answer.subscribe() {
                        Ok(rx) => {
                            // Only the receiver stays with a subscriber: it must not keep the
                            // supervisor alive.
                            drop(answer);
                            return stream_events(&mut w, rx).await;
                        }
                        Err(why) => refused(why),
                    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast;

    /// Answers every subscription from one channel, as the supervisor does.
    struct Publisher(broadcast::Sender<Event>);

    impl Answer for Publisher {
        async fn answer(self: Arc<Self>, _: Request) -> Reply {
            refused("only events here")
        }
        fn subscribe(&self) -> Result<broadcast::Receiver<Event>, String> {
            Ok(self.0.subscribe())
        }
    }

    fn exit(code: i32) -> Event {
        Event {
            time_ms: 1,
            service: "web".into(),
            kind: EventKind::Exit { code },
        }
    }

    #[test]
    fn a_subscriber_that_does_not_read_loses_events_is_told_and_never_holds_up_the_publisher() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("cagerun-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let tx = broadcast::channel(EVENT_BUFFER).0;
        let server = {
            let _in = rt.enter();
            serve(&path, Arc::new(Publisher(tx.clone()))).unwrap()
        };
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"events\"}\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut lines = BufReader::new(s).lines();
        // The reply comes once the subscription exists.
        let reply: Reply = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(reply.ok, "{reply:?}");
        // Far more than the buffer and the socket hold, while nobody reads: every send
        // returns at once.
        const TOTAL: i32 = 100_000;
        let begun = std::time::Instant::now();
        for code in 0..TOTAL {
            tx.send(exit(code)).unwrap();
        }
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "publishing waited for the subscriber: {:?}",
            begun.elapsed()
        );
        // Now it reads: what it got and what it was told it lost add up, and the last
        // event arrives.
        let (mut got, mut dropped, mut notices) = (0u64, 0u64, 0);
        for line in lines {
            let e: Event = serde_json::from_str(&line.unwrap()).unwrap();
            match e.kind {
                EventKind::Dropped { count } => {
                    assert!(e.service.is_empty());
                    dropped += count;
                    notices += 1;
                }
                EventKind::Exit { code } => {
                    got += 1;
                    if code == TOTAL - 1 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(notices >= 1 && dropped > 0, "no drop was reported");
        assert_eq!(got + dropped, TOTAL as u64);
        assert!(got < TOTAL as u64);
        server.abort();
        drop(rt);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_keep_their_json_shape() {
        let e = Event {
            time_ms: 1700000000123,
            service: "web".into(),
            kind: EventKind::Health {
                health: cage_spec::lifecycle::Health::Unhealthy,
                previous: cage_spec::lifecycle::Health::Healthy,
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time_ms":1700000000123,"service":"web","event":"health","health":"unhealthy","previous":"healthy"}"#
        );
        let start: Event =
            serde_json::from_str(r#"{"time_ms":1,"service":"a","event":"start","pid":42}"#)
                .unwrap();
        assert_eq!(start.kind, EventKind::Start { pid: 42 });
        assert_eq!(
            serde_json::to_string(&Request::Events).unwrap(),
            r#"{"op":"events"}"#
        );
    }
}
