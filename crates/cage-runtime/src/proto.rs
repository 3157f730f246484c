//! What the engine's processes say to each other, named once: the descriptor numbers a
//! parent hands its child, and the typed messages on each control channel.
//!
//! Channels (each message one JSON value; [`crate::ipc`] carries the datagram ones):
//! - supervisor ↔ **holder** ([`crate::holder`], client [`crate::services::holder_client`]),
//!   SOCK_SEQPACKET at [`fds::CONTROL`]: the holder says [`HolderEvent::Unshared`], the
//!   supervisor writes the id maps and answers [`SupervisorToHolder::Mapped`], the holder says
//!   [`HolderEvent::Ready`]; then each [`HolderRequest`] gets one [`HolderReply`] (a namespace
//!   or a socket travels beside it by SCM_RIGHTS).
//! - supervisor ↔ **monitor** ([`crate::monitor`]), SOCK_SEQPACKET at [`fds::CONTROL`]: the
//!   monitor reports [`MonitorEvent`]s, the supervisor sends [`MonitorCommand`]s.
//! - `docker` **shim** → **broker** ([`crate::shim`], [`crate::services::broker`]),
//!   SOCK_SEQPACKET bound into the service: one [`ShimRequest`] with the shim's stdin, stdout
//!   and stderr attached, one [`ShimReply`].
//! - the **control socket** ([`crate::services::control`]), a stream: one [`Request`] line,
//!   one [`Reply`] line. Unlike the others its peers may be different builds (a new `cagerun
//!   ps` asking an old supervisor), so its JSON shape stays as it is.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Descriptor numbers a child finds at exec.
pub mod fds {
    /// The control socket (holder, monitor) or the ready pipe (a detached `up`).
    pub const CONTROL: i32 = 3;
    /// The monitor's second descriptor: the service's network namespace. The spec names it
    /// `/proc/self/fd/4`, which libcontainer's init (the monitor's child) inherits.
    pub const NETNS: i32 = 4;
}

/// The largest datagram between the supervisor and its helpers.
pub const MAX_MESSAGE: usize = 4096;
/// Error texts in a message are cut to this many bytes, so that the message always fits.
pub const MAX_ERROR_TEXT: usize = 2048;

/// A message of one datagram channel: [`crate::ipc::send`] and [`crate::ipc::recv`] take
/// these.
pub trait Message: Serialize + DeserializeOwned {
    /// What a receiver expects, for its errors ("a holder request").
    const WHAT: &'static str;
    /// The largest encoded message: a longer one is refused when sent and when received.
    const MAX_BYTES: usize = MAX_MESSAGE;
}

/// Holder → supervisor, while it starts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum HolderEvent {
    /// It has its own user namespace: the supervisor may write its id maps now.
    Unshared,
    /// The router namespace and its bridge are up: requests may come.
    Ready,
}

impl Message for HolderEvent {
    const WHAT: &'static str = "a holder event";
}

/// Supervisor → holder, while it starts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum SupervisorToHolder {
    /// The holder's user namespace has the cage's uid and gid maps.
    Mapped,
}

impl Message for SupervisorToHolder {
    const WHAT: &'static str = "the supervisor's id-map notice";
}

/// Supervisor → holder, once it is ready; each is answered by one [`HolderReply`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum HolderRequest {
    /// A service network namespace with a veth into the bridge at `address` (slot `slot`);
    /// `route`: a default route through the router (an internet service). Answered
    /// [`HolderReply::Netns`] with the namespace attached.
    AddService {
        slot: usize,
        address: Ipv4Addr,
        route: bool,
    },
    /// A TCP socket connecting (non-blocking, in progress) to 127.0.0.1:`port` inside the
    /// namespace the holder named `netns`. Answered [`HolderReply::Socket`] with it attached.
    Connect { netns: i32, port: u16 },
    /// Forget the namespace named `netns` (it goes once no container is inside).
    Drop { netns: i32 },
    /// Exactly these service addresses may use the uplink (none: internet off).
    Internet { allowed: Vec<Ipv4Addr> },
    /// The router's end of the uplink veth the supervisor moved in (as root): rename it, give
    /// it `address/prefix` and a default route through `gateway`.
    Uplink {
        link: String,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    },
    /// Egress by name: the router's egress table, and the sockets of the egress proxy made in
    /// the router namespace. Answered [`HolderReply::EgressSockets`] with them attached.
    Egress,
    /// Exactly these addresses are egress sources (services and sandboxes with a list).
    EgressSources { addresses: Vec<Ipv4Addr> },
}

impl Message for HolderRequest {
    const WHAT: &'static str = "a holder request";
}

/// Holder → supervisor: the answer to one [`HolderRequest`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum HolderReply {
    /// The new service namespace is attached; `netns` is the holder's name for it in later
    /// requests.
    Netns {
        netns: i32,
    },
    /// The connecting socket is attached.
    Socket,
    /// Attached, in this order: the resolver's UDP socket (router:53), the proxy's TCP
    /// listener, the NFLOG socket of the router's drops.
    EgressSockets,
    Ok,
    /// The request failed; the text is what the supervisor reports.
    Error(String),
}

impl HolderReply {
    /// A failure, its text cut to fit one message.
    pub fn error(e: &anyhow::Error) -> Self {
        HolderReply::Error(clip(format!("{e:#}")))
    }
}

impl Message for HolderReply {
    const WHAT: &'static str = "a holder reply";
}

/// Supervisor → egress proxy: the whole live policy, each time it changes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum SupervisorToEgress {
    Policy(cage_spec::egress::EgressPolicy),
}

impl Message for SupervisorToEgress {
    const WHAT: &'static str = "an egress policy";
    /// Lists of many entries for many sources.
    const MAX_BYTES: usize = 192 << 10;
}

/// Egress proxy → supervisor: one audit log entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub enum EgressEvent {
    Entry(cage_net::egress::Entry),
}

impl Message for EgressEvent {
    const WHAT: &'static str = "an egress log entry";
}

/// Monitor → supervisor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum MonitorEvent {
    /// The container runs; `pid` is its init on the host.
    Started { pid: i32 },
    /// It ended with this code (128+signal when killed).
    Exited { code: i32 },
    /// It could not be created or started, or watching it failed.
    Failed { error: String },
}

impl MonitorEvent {
    /// A failure, its text cut to fit one message.
    pub fn failed(e: &anyhow::Error) -> Self {
        MonitorEvent::Failed {
            error: clip(format!("{e:#}")),
        }
    }
}

impl Message for MonitorEvent {
    const WHAT: &'static str = "a monitor event";
}

/// Supervisor → monitor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum MonitorCommand {
    /// SIGTERM now, SIGKILL after `grace_ms` if it still runs.
    Stop { grace_ms: u64 },
}

impl Message for MonitorCommand {
    const WHAT: &'static str = "a monitor command";
}

/// Upper bound on one [`ShimRequest`] (argv + env files).
pub const MAX_SHIM_REQUEST: usize = 256 << 10;

/// `docker` shim → broker: its argv and the `--env-file`s it names, with its stdin, stdout
/// and stderr attached (in that order).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct ShimRequest {
    pub argv: Vec<String>,
    /// `--env-file` path → its contents, read by the shim.
    pub files: BTreeMap<String, String>,
}

impl Message for ShimRequest {
    const WHAT: &'static str = "a docker shim request";
    const MAX_BYTES: usize = MAX_SHIM_REQUEST;
}

/// Broker → `docker` shim: how the call ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub enum ShimReply {
    /// The call ran (its output went to the shim's own stdout and stderr): exit with `code`.
    Exit { code: i32 },
    /// The broker refused the call before it could answer on the shim's stderr: print this,
    /// exit 125.
    Refused(String),
}

impl Message for ShimReply {
    const WHAT: &'static str = "the sandbox broker's reply";
    const MAX_BYTES: usize = 1024;
}

/// The control socket: what `ps`, `down`, `restart` and `internet` ask a running supervisor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Ps,
    Down,
    Restart {
        service: String,
    },
    /// Some(on) switches internet mode; None asks.
    Internet {
        on: Option<bool>,
    },
    /// Add (`allow`) or remove an entry of a service's `internet = [...]` list, live.
    EgressRule {
        service: String,
        entry: String,
        allow: bool,
    },
    /// Subscribe: the reply line is followed by one [`Event`] line per event, until the
    /// supervisor ends or the subscriber goes.
    Events,
}

/// One thing that happened to a service, as the control socket streams it to `events`
/// subscribers (and `events --json` prints it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// The service (empty for `dropped`).
    pub service: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened; `"event"` names it in the JSON.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The container runs; `pid` is its init on the host.
    Start { pid: i32 },
    /// It ended with `code` (128+signal when killed).
    Exit { code: i32 },
    /// It could not be started.
    Failed { error: String },
    /// It is about to start again (`restarts` counts the restarts so far, this one included).
    Restart { restarts: u32 },
    /// Its healthcheck's verdict changed.
    Health {
        health: cage_spec::lifecycle::Health,
        previous: cage_spec::lifecycle::Health,
    },
    /// This subscriber read too slowly: `count` events were dropped for it (the supervisor
    /// never waits for a subscriber).
    Dropped { count: u64 },
}

/// Internet mode as the control socket reports it.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct InternetStatus {
    pub on: bool,
    pub services: Vec<String>,
    pub uplink: String,
    /// The uplink's gateway address inside the cage (leads to nothing on the host).
    pub gateway: String,
    /// The live `internet = [...]` lists, by service (`SERVICE/sandboxes` for its tool
    /// sandboxes'): what they may reach while internet is on.
    #[serde(default)]
    pub lists: std::collections::BTreeMap<String, Vec<String>>,
}

/// One service as `ps` shows it (and `ps --json` prints; docs/json.md lists the fields).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub service: String,
    pub state: cage_spec::lifecycle::ServiceState,
    pub pid: Option<i32>,
    /// Unix time of the last start.
    pub started: Option<u64>,
    pub restarts: u32,
    pub health: cage_spec::lifecycle::Health,
    pub health_error: Option<String>,
    pub ports: Vec<String>,
    pub address: String,
    pub last_exit: Option<i32>,
    pub error: Option<String>,
}

/// The control socket's answer to one [`Request`].
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub services: Option<Vec<Status>>,
    pub cgroup: Option<String>,
    pub internet: Option<InternetStatus>,
}

/// `text`, cut at a character boundary to at most [`MAX_ERROR_TEXT`] bytes.
fn clip(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    use super::*;
    use crate::ipc::{self, IpcError};

    /// `msg` sent over a fresh socket pair with `fds` attached: what arrives.
    fn through<T: Message + PartialEq + Debug>(msg: &T, fds: &[&OwnedFd]) -> Vec<OwnedFd> {
        let (a, b) = ipc::pair().unwrap();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        ipc::send(&a, msg, &borrowed).unwrap();
        let (got, fds) = ipc::recv::<T>(&b).unwrap().expect("a message");
        assert_eq!(&got, msg);
        fds
    }

    /// The same open file: same device and inode.
    fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
        let (sa, sb) = (
            nix::sys::stat::fstat(a.as_raw_fd()).unwrap(),
            nix::sys::stat::fstat(b.as_raw_fd()).unwrap(),
        );
        (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    }

    /// `bytes` as one raw datagram, and what `recv::<T>` makes of it.
    fn receive_raw<T: Message>(bytes: &[u8]) -> Result<ipc::Received<T>, IpcError> {
        let (a, b) = ipc::pair().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), bytes, nix::sys::socket::MsgFlags::empty()).unwrap();
        ipc::recv::<T>(&b)
    }

    #[test]
    fn every_holder_request_round_trips() {
        for req in [
            HolderRequest::AddService {
                slot: 3,
                address: Ipv4Addr::new(10, 89, 7, 4),
                route: true,
            },
            HolderRequest::Connect {
                netns: 9,
                port: 8080,
            },
            HolderRequest::Drop { netns: 9 },
            HolderRequest::Internet {
                allowed: vec![Ipv4Addr::new(10, 89, 7, 4), Ipv4Addr::new(10, 89, 7, 5)],
            },
            HolderRequest::Internet { allowed: vec![] },
            HolderRequest::Uplink {
                link: "cgu-abc".into(),
                address: Ipv4Addr::new(169, 254, 1, 2),
                prefix: 30,
                gateway: Ipv4Addr::new(169, 254, 1, 1),
            },
        ] {
            assert!(through(&req, &[]).is_empty(), "{req:?} grew descriptors");
        }
        through(&HolderEvent::Unshared, &[]);
        through(&HolderEvent::Ready, &[]);
        through(&SupervisorToHolder::Mapped, &[]);
        through(&HolderReply::Ok, &[]);
        through(
            &HolderReply::Error("connect: no such namespace".into()),
            &[],
        );
    }

    #[test]
    fn a_holder_reply_carries_its_namespace_descriptor() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let got = through(&HolderReply::Netns { netns: 7 }, &[&r]);
        assert_eq!(got.len(), 1);
        assert!(same_file(&got[0], &r), "another file arrived");
        // A new descriptor in this process, not the sender's number.
        assert_ne!(got[0].as_raw_fd(), r.as_raw_fd());
        let got = through(&HolderReply::Socket, &[&r]);
        assert!(same_file(&got[0], &r));
    }

    #[test]
    fn monitor_events_and_commands_round_trip() {
        for ev in [
            MonitorEvent::Started { pid: 4242 },
            MonitorEvent::Exited { code: 137 },
            MonitorEvent::Failed {
                error: "starting the container: no such file (exec /bin/nope)".into(),
            },
        ] {
            through(&ev, &[]);
        }
        through(&MonitorCommand::Stop { grace_ms: 10_000 }, &[]);
    }

    #[test]
    fn the_shim_request_carries_its_three_stdio_descriptors_in_order() {
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3).map(|_| nix::unistd::pipe().unwrap()).collect();
        let req = ShimRequest {
            argv: vec!["exec".into(), "-i".into(), "c-1".into(), "sh".into()],
            files: [("/tmp/e.env".to_string(), "A=1\nB=two words\n".to_string())].into(),
        };
        let ends: Vec<&OwnedFd> = pipes.iter().map(|(r, _)| r).collect();
        let got = through(&req, &ends);
        assert_eq!(got.len(), 3);
        for (g, sent) in got.iter().zip(&ends) {
            assert!(same_file(g, sent), "the descriptors arrived out of order");
        }
        through(&ShimReply::Exit { code: 3 }, &[]);
        through(
            &ShimReply::Refused("docker: stdin is a directory".into()),
            &[],
        );
    }

    #[test]
    fn garbage_is_an_error_that_names_what_was_expected() {
        let e = receive_raw::<HolderRequest>(b"add 1 10.89.0.2 route").unwrap_err();
        assert!(
            matches!(
                e,
                IpcError::Malformed {
                    what: "a holder request",
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("expected a holder request, got \"add 1 10.89.0.2 route\""),
            "{text}"
        );
        // A well-formed message of another channel is no better.
        let e = receive_raw::<MonitorEvent>(br#"{"Netns":{"netns":3}}"#).unwrap_err();
        assert!(e.to_string().contains("expected a monitor event"), "{e}");
        // Nor is text that is not UTF-8.
        let e = receive_raw::<ShimReply>(&[0xff, 0xfe, b'{']).unwrap_err();
        assert!(e.to_string().contains("the sandbox broker's reply"), "{e}");
    }

    #[test]
    fn the_helpers_request_types_reject_unknown_variants_and_fields() {
        let e = receive_raw::<HolderRequest>(br#"{"Format":{"disk":"/dev/sda"}}"#).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("unknown variant `Format`"), "{text}");
        assert!(
            text.contains("AddService"),
            "the expected variants are named: {text}"
        );
        let e = receive_raw::<HolderRequest>(br#"{"Drop":{"netns":3,"all":true}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `all`"), "{e}");
        let e = receive_raw::<MonitorCommand>(br#"{"Kill":{"signal":9}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `Kill`"), "{e}");
        let e = receive_raw::<MonitorCommand>(br#""Stop""#).unwrap_err();
        assert!(
            matches!(e, IpcError::Malformed { .. }),
            "a stop needs its grace: {e:?}"
        );
        let e = receive_raw::<SupervisorToHolder>(br#""Unmapped""#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn an_oversized_datagram_is_refused() {
        // Received: over the type's bound, even if it would parse.
        let long = format!(
            "{{\"Failed\":{{\"error\":\"{}\"}}}}",
            "x".repeat(MAX_MESSAGE)
        );
        let e = receive_raw::<MonitorEvent>(long.as_bytes()).unwrap_err();
        assert!(
            matches!(
                e,
                IpcError::TooLong {
                    max: MAX_MESSAGE,
                    ..
                }
            ),
            "{e:?}"
        );
        // The shim's request has its own, larger bound.
        let mut files = BTreeMap::new();
        files.insert("/tmp/big.env".to_string(), "A".repeat(MAX_SHIM_REQUEST / 2));
        let fits = ShimRequest {
            argv: vec!["run".into()],
            files,
        };
        through(&fits, &[]);
        // Sent: refused before it leaves.
        let (a, _b) = ipc::pair().unwrap();
        let e = ipc::send(&a, &ShimReply::Refused("y".repeat(2000)), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("the sandbox broker's reply over 1024 bytes"),
            "{e}"
        );
        let huge = ShimRequest {
            argv: vec!["z".repeat(MAX_SHIM_REQUEST)],
            ..Default::default()
        };
        assert!(matches!(
            ipc::send(&a, &huge, &[]),
            Err(IpcError::TooLong {
                max: MAX_SHIM_REQUEST,
                ..
            })
        ));
    }

    #[test]
    fn a_long_error_is_cut_to_fit_one_message() {
        let why = anyhow::anyhow!("é".repeat(5000)).context("adding a service");
        let reply = HolderReply::error(&why);
        let HolderReply::Error(text) = &reply else {
            panic!("{reply:?}")
        };
        assert!(text.starts_with("adding a service: éé"), "{text}");
        assert!(text.len() <= MAX_ERROR_TEXT && text.ends_with('…'));
        through(&reply, &[]);
        through(&MonitorEvent::failed(&why), &[]);
        // A short one is untouched.
        let short = MonitorEvent::failed(&anyhow::anyhow!("no such image"));
        assert_eq!(
            short,
            MonitorEvent::Failed {
                error: "no such image".into()
            }
        );
    }

    #[test]
    fn the_control_socket_keeps_its_json_shape() {
        // A new `cagerun ps` may ask a supervisor of an older build: this shape is fixed.
        let req = Request::Restart {
            service: "web".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"restart","service":"web"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Ps).unwrap(),
            r#"{"op":"ps"}"#
        );
        let asked: Request = serde_json::from_str(r#"{"op":"internet","on":null}"#).unwrap();
        assert_eq!(asked, Request::Internet { on: None });
        let reply: Reply = serde_json::from_str(
            r#"{"ok":true,"error":null,"services":null,"cgroup":"cagerun/x","internet":{"on":true,"services":["a"],"uplink":"slirp4netns","gateway":"10.0.2.2"}}"#,
        )
        .unwrap();
        assert_eq!(reply.internet.unwrap().services, vec!["a".to_string()]);
        // The shim's request keeps its fields' names too.
        let shim: ShimRequest = serde_json::from_str(r#"{"argv":["version"],"files":{}}"#).unwrap();
        assert_eq!(shim.argv, vec!["version".to_string()]);
    }
}
