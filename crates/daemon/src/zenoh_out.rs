//! Zenoh output: the protocol-v1 messages (docs/protocol.md) published over Zenoh, for a ground station or a
//! fleet, under a key prefix (`kestrel/<hostname>` by default):
//!
//! | key | what |
//! |---|---|
//! | `<prefix>/detections` | one sample per published frame |
//! | `<prefix>/status` | one sample every `status_interval_ms`, whatever happens; also a queryable (the latest) |
//! | `<prefix>/hello` | one put when the output starts; also a queryable, for a station that joins late |
//! | `<prefix>/alive` | a liveliness token: it exists exactly while this daemon's Zenoh session does |
//!
//! A sample's payload is one message: the JSON object without its newline (encoding `application/json`), or
//! the binary payload without the socket's 4-byte length (encoding `application/octet-stream;kestrel-v1`):
//! Zenoh frames samples itself.
//!
//! [`ZenohSink`] never blocks the pipeline: `publish` encodes the frame and offers it to a bounded queue of
//! two, dropping the oldest when it is full (latest wins; counted as `behind`). The thread `zenoh` owns the
//! session and everything declared on it. It puts what the queue brings and sends `status` on time. It answers
//! the queries, and keeps the counters that `status` reports (its `zenoh` object).
//!
//! Congestion: detections are put with `CongestionControl::Drop` and `express` (no batching delay). When
//! Zenoh's transmission queue towards a peer is full (the link or the peer is slower than we publish), a put
//! waits at most `transport/link/tx/queue/congestion_control/drop/wait_before_drop` (Zenoh's default 1 ms)
//! and then drops that sample. `CongestionControl::Block` would instead wait for room, for up to
//! `wait_before_close` (5 s), and then close the link: a station that stops reading would stall this thread.
//! Status and hello use `Drop` too, at a higher priority (`InteractiveHigh`, its own queue), so detections
//! never hold them back. Nothing is stored to be sent later: what was not sent while no subscriber matched is
//! counted (`unmatched`, and `last_outage.missed` for the outage it fell in), never replayed.
//!
//! Link faults: Zenoh retries the `connect` endpoints every `reconnect_ms`. A link that breaks silently is
//! declared dead after `lease_ms` without a keep-alive (Zenoh sends 4 per lease); a closed one at once.
//! A peer's session opens whether or not its endpoints answer. A client's open needs its router. When the
//! router is out of reach at start, the daemon starts anyway, and the thread tries to open the session
//! again every `reconnect_ms`, each try bounded by a 2 s connect timeout. Until then detections count as
//! `unmatched`.

use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Deserialize;
use thiserror::Error;
use zenoh::bytes::Encoding;
use zenoh::handlers::{RingChannel, RingChannelHandler};
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Publisher;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::query::{Query, Queryable};
use zenoh::{Session, Wait};

use crate::publish::PublishStats;
use crate::sink::{Sink, SinkError};
use crate::status::StatusTracker;
use kestrel_core::check::{within, Invalid};
use kestrel_core::published::Published;
use kestrel_core::ratelog::RateLimitedLog;
use kestrel_protocol::{self as protocol, Format, Hello, Outage, ZenohStatus};

/// Encoded detections waiting for the `zenoh` thread; when full the oldest is dropped.
const QUEUE: usize = 2;
/// Longest the thread waits for a frame before it looks at the clock, the queries and the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Queries waiting to be answered (more are dropped, oldest first: a station asks again).
const QUERIES: usize = 16;
/// The transports this build has (cargo features of the `zenoh` dependency).
const PROTOCOLS: [&str; 2] = ["tcp", "udp"];
/// Longest a client's attempt to reach its router may take (the session's open waits for it).
const CLIENT_CONNECT_TIMEOUT_MS: u64 = 2000;
/// The message kinds `[zenoh] messages` may list.
const MESSAGES: [&str; 3] = ["detections", "status", "hello"];

#[derive(Debug, Error)]
pub enum ZenohError {
    #[error("zenoh config: field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    /// Zenoh refused a setting we derived from the config (a bug if it happens).
    #[error("zenoh config: `{key}`: {source}")]
    Setting {
        key: &'static str,
        #[source]
        source: zenoh::Error,
    },
    #[error("cannot open the Zenoh session ({mode}): {source}")]
    Open {
        mode: String,
        #[source]
        source: zenoh::Error,
    },
    #[error("cannot declare {what} on the Zenoh session: {source}")]
    Declare {
        what: String,
        #[source]
        source: zenoh::Error,
    },
    #[error("cannot start the zenoh thread: {0}")]
    Thread(#[source] io::Error),
}

/// `[zenoh]` in the config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ZenohConfig {
    pub enabled: bool,
    /// `"peer"` (default: talks to peers and routers, reachable by others) or `"client"` (talks through one
    /// router, which must be in `connect` or found by scouting).
    pub mode: String,
    /// Zenoh endpoints to connect to, e.g. `"tcp/192.168.1.10:7447"` (tried again every `reconnect_ms`).
    pub connect: Vec<String>,
    /// Endpoints to listen on, e.g. `"tcp/0.0.0.0:7447"`. Empty (the default): none; the daemon only
    /// connects out (Zenoh's own default would listen on a random port on every interface).
    pub listen: Vec<String>,
    /// Messages go to `<key_prefix>/detections`, `/status`, `/hello`; empty: `kestrel/<hostname>`. No
    /// wildcards.
    pub key_prefix: String,
    /// Payload format: `"json"` or `"binary"` (docs/protocol.md).
    pub format: Format,
    /// What to publish, any of `"detections"`, `"status"`, `"hello"` (default all three).
    pub messages: Vec<String>,
    /// `status` interval (100 to 1000 ms).
    pub status_interval_ms: u64,
    /// Find peers and routers by UDP multicast (224.0.0.224:7446), as Zenoh does by default.
    pub multicast_scouting: bool,
    /// Retry period of the `connect` endpoints after a link is lost or could not be made.
    pub reconnect_ms: u64,
    /// Zenoh lease: a link that carries nothing (not even a keep-alive) for this long is closed.
    pub lease_ms: u64,
}

impl Default for ZenohConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: "peer".into(),
            connect: Vec::new(),
            listen: Vec::new(),
            key_prefix: String::new(),
            format: Format::Json,
            messages: MESSAGES.iter().map(|m| m.to_string()).collect(),
            status_interval_ms: 1000,
            multicast_scouting: true,
            reconnect_ms: 500,
            lease_ms: 3000,
        }
    }
}

/// Why an endpoint string cannot be used, or `None`.
fn endpoint_problem(endpoint: &str) -> Option<String> {
    if let Err(e) = zenoh::config::EndPoint::from_str(endpoint) {
        return Some(format!(
            "{endpoint:?} is not a Zenoh endpoint (PROTOCOL/ADDRESS, e.g. tcp/192.168.1.10:7447): {e}"
        ));
    }
    let (protocol, rest) = endpoint.split_once('/')?;
    if !PROTOCOLS.contains(&protocol) {
        return Some(format!(
            "{endpoint:?}: protocol {protocol:?} is not built in (this build has {})",
            PROTOCOLS.join(", ")
        ));
    }
    // ADDRESS[?metadata][#config]
    let address = rest.split(['?', '#']).next().unwrap_or_default();
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(format!("{endpoint:?}: {address:?} is not HOST:PORT"));
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')));
    if !host_ok {
        return Some(format!("{endpoint:?}: {host:?} is not an IP address or a host name"));
    }
    if port.parse::<u16>().is_err() {
        return Some(format!("{endpoint:?}: {port:?} is not a port number"));
    }
    None
}

/// Why a key prefix cannot be used, or `None`.
fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.contains('*') || prefix.contains('$') {
        return Some(format!(
            "{prefix:?} has a wildcard; a daemon publishes under one concrete prefix (subscribers use wildcards)"
        ));
    }
    if let Err(e) = zenoh::key_expr::KeyExpr::try_from(prefix.to_string()) {
        return Some(format!("{prefix:?} is not a Zenoh key expression: {e}"));
    }
    None
}

/// `kestrel/<hostname>`, with the characters a key may not hold replaced by `_`.
pub fn default_prefix() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host: String = host
        .chars()
        .map(|c| {
            if matches!(c, '*' | '$' | '#' | '?' | '/' | ' ') {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("kestrel/{}", if host.is_empty() { "unnamed" } else { &host })
}

impl ZenohConfig {
    /// Range and syntax checks: `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !matches!(self.mode.as_str(), "peer" | "client") {
            return Err((
                "zenoh.mode",
                format!(
                    "{:?} is not \"peer\" or \"client\" (a router is a separate process, zenohd)",
                    self.mode
                ),
            ));
        }
        for e in &self.connect {
            if let Some(why) = endpoint_problem(e) {
                return Err(("zenoh.connect", why));
            }
        }
        for e in &self.listen {
            if let Some(why) = endpoint_problem(e) {
                return Err(("zenoh.listen", why));
            }
        }
        if !self.key_prefix.is_empty() {
            if let Some(why) = prefix_problem(&self.key_prefix) {
                return Err(("zenoh.key_prefix", why));
            }
        }
        for (i, m) in self.messages.iter().enumerate() {
            if !MESSAGES.contains(&m.as_str()) {
                return Err(("zenoh.messages", format!("{m:?} is not one of {}", MESSAGES.join(", "))));
            }
            if self.messages[..i].contains(m) {
                return Err(("zenoh.messages", format!("{m:?} is listed twice")));
            }
        }
        if self.enabled && self.messages.is_empty() {
            return Err(("zenoh.messages", "empty: nothing to publish".into()));
        }
        if self.enabled && !self.multicast_scouting {
            if self.mode == "client" && self.connect.is_empty() {
                return Err((
                    "zenoh.connect",
                    "client mode without multicast scouting needs a router to connect to".into(),
                ));
            }
            if self.mode == "peer" && self.connect.is_empty() && self.listen.is_empty() {
                return Err((
                    "zenoh.connect",
                    "peer mode without multicast scouting needs connect or listen endpoints (nobody could \
                     find this daemon)"
                        .into(),
                ));
            }
        }
        within("zenoh.status_interval_ms", self.status_interval_ms, 100..=1000)
            .map_err(|(f, why)| (f, format!("{why} (status must come at least once a second)")))?;
        within("zenoh.reconnect_ms", self.reconnect_ms, 50..=60_000)?;
        within("zenoh.lease_ms", self.lease_ms, 500..=600_000)?;
        Ok(())
    }

    /// The key prefix in use: `key_prefix`, or `kestrel/<hostname>`.
    pub fn prefix(&self) -> String {
        if self.key_prefix.is_empty() {
            default_prefix()
        } else {
            self.key_prefix.clone()
        }
    }

    fn sends(&self, kind: &str) -> bool {
        self.messages.iter().any(|m| m == kind)
    }

    /// The Zenoh session configuration.
    fn session_config(&self) -> Result<zenoh::Config, ZenohError> {
        let mut c = zenoh::Config::default();
        let mut set = |key: &'static str, value: serde_json::Value| {
            c.insert_json5(key, &value.to_string())
                .map_err(|source| ZenohError::Setting { key, source })
        };
        set("mode", self.mode.clone().into())?;
        set("connect/endpoints", self.connect.clone().into())?;
        // Always ours, also when empty: Zenoh's own default would have a peer listen on a random port on every
        // interface.
        set("listen/endpoints", self.listen.clone().into())?;
        // Never give up on an endpoint, and retry at a steady pace (Zenoh's default backs off to 4 s).
        set("connect/exit_on_failure", false.into())?;
        if self.mode == "client" {
            // Bounds one attempt to reach the router (a client's open waits for it; the thread tries again).
            set("connect/timeout_ms", CLIENT_CONNECT_TIMEOUT_MS.into())?;
        }
        set(
            "connect/retry",
            serde_json::json!({
                "period_init_ms": self.reconnect_ms,
                "period_max_ms": self.reconnect_ms,
                "period_increase_factor": 1.0,
            }),
        )?;
        set("scouting/multicast/enabled", self.multicast_scouting.into())?;
        set("transport/link/tx/lease", self.lease_ms.into())?;
        set("transport/link/tx/keep_alive", 4.into())?;
        Ok(c)
    }

    fn encoding(&self) -> Encoding {
        match self.format {
            Format::Json => Encoding::APPLICATION_JSON,
            Format::Binary => Encoding::APPLICATION_OCTET_STREAM.with_schema("kestrel-v1"),
        }
    }
}

/// One message as a Zenoh payload: `write` appends a socket message (a JSON line, or a length-prefixed binary
/// frame); the newline or the length is taken off.
fn payload(format: Format, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    write(&mut buf);
    match format {
        Format::Json => {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            buf
        }
        Format::Binary => buf.split_off(4.min(buf.len())),
    }
}

/// A JSON-carrying message (`hello`, `status`) as a payload.
fn json_message_payload<T: serde::Serialize>(kind: &str, body: &T, format: Format) -> Vec<u8> {
    payload(format, |b| protocol::write_json_message(kind, body, format, b))
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    unmatched: AtomicU64,
    behind: AtomicU64,
    put_errors: AtomicU64,
    statuses: AtomicU64,
}

/// What the output has done so far (for tests and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZenohCounters {
    pub sent: u64,
    pub unmatched: u64,
    pub behind: u64,
    pub put_errors: u64,
    pub statuses: u64,
}

/// A handle on the output's counters that outlives it.
#[derive(Clone, Debug, Default)]
pub struct ZenohStats(Arc<Counters>);

impl ZenohStats {
    pub fn get(&self) -> ZenohCounters {
        let c = &self.0;
        ZenohCounters {
            sent: c.sent.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            behind: c.behind.load(Ordering::Relaxed),
            put_errors: c.put_errors.load(Ordering::Relaxed),
            statuses: c.statuses.load(Ordering::Relaxed),
        }
    }
}

/// What the output's `status` needs from the rest of the daemon.
pub struct StatusSource {
    pub tracker: StatusTracker,
    /// The detection socket's counters, when it runs.
    pub socket: Option<Arc<PublishStats>>,
}

/// Publishes over Zenoh; see the module docs.
pub struct ZenohSink {
    tx: Option<Sender<Vec<u8>>>,
    rx: Receiver<Vec<u8>>,
    format: Format,
    detections: bool,
    stop: Arc<AtomicBool>,
    stats: ZenohStats,
    thread: Option<JoinHandle<()>>,
    prefix: String,
}

impl ZenohSink {
    /// Validate `cfg`, open the session, declare the publishers, the queryables and the liveliness token,
    /// and start the `zenoh` thread. `hello` is sent as it is but for `format`, `status_interval_ms` and
    /// `zenoh_key`.
    pub fn new(cfg: &ZenohConfig, mut hello: Hello, status: StatusSource) -> Result<Self, ZenohError> {
        cfg.validate()
            .map_err(|(field, reason)| ZenohError::Config { field, reason })?;
        let prefix = cfg.prefix();
        if let Some(reason) = prefix_problem(&prefix) {
            return Err(ZenohError::Config {
                field: "zenoh.key_prefix",
                reason: format!("the default from the host name: {reason}"),
            });
        }
        hello.format = cfg.format;
        hello.status_interval_ms = cfg.status_interval_ms;
        hello.zenoh_key = Some(prefix.clone());
        let live = match Live::open(cfg, &prefix) {
            Ok(live) => Some(live),
            // A client with its router out of reach (a drone that boots before the ground link): keep
            // running, and let the thread open the session when the router answers.
            Err(e @ ZenohError::Open { .. }) if cfg.mode == "client" => {
                log::warn!("{e}; trying again every {} ms", cfg.reconnect_ms);
                None
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = ZenohStats::default();
        let hello_payload = json_message_payload("hello", &hello, cfg.format);
        let mut link = Link {
            live,
            cfg: cfg.clone(),
            next_open: Instant::now() + Duration::from_millis(cfg.reconnect_ms),
            open_errors: RateLimitedLog::new("Zenoh: cannot open the session"),
            format: cfg.format,
            mode: cfg.mode.clone(),
            prefix: prefix.clone(),
            period: Duration::from_millis(cfg.status_interval_ms),
            hello: hello_payload,
            latest_status: Vec::new(),
            status,
            counters: stats.0.clone(),
            outage: OutageClock::new(Instant::now()),
            errors: RateLimitedLog::new("Zenoh: cannot put"),
        };
        if cfg.sends("hello") {
            link.put_hello();
        }
        let thread = {
            let (rx, stop) = (rx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("zenoh".into())
                .spawn(move || link.run(&rx, &stop))
                .map_err(ZenohError::Thread)?
        };
        log::info!(
            "Zenoh: {} mode, publishing {} ({:?}) under {prefix}/, connect [{}], listen [{}], multicast scouting {}",
            cfg.mode,
            cfg.messages.join(", "),
            cfg.format,
            cfg.connect.join(", "),
            cfg.listen.join(", "),
            if cfg.multicast_scouting { "on" } else { "off" },
        );
        Ok(Self {
            tx: Some(tx),
            rx,
            format: cfg.format,
            detections: cfg.sends("detections"),
            stop,
            stats,
            thread: Some(thread),
            prefix,
        })
    }

    pub fn stats(&self) -> ZenohStats {
        self.stats.clone()
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Sink for ZenohSink {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        let Some(tx) = self.tx.as_ref().filter(|_| self.detections) else {
            return Ok(());
        };
        let msg = match self.format {
            Format::Json => {
                let mut buf = Vec::with_capacity(512);
                protocol::write_detections_json(f, &mut buf)?;
                buf.pop(); // the newline
                buf
            }
            Format::Binary => payload(Format::Binary, |b| protocol::write_detections_binary(f, b)),
        };
        let behind = &self.stats.0.behind;
        let count = || {
            behind.fetch_add(1, Ordering::Relaxed);
        };
        if !kestrel_core::latest::push_latest(tx, &self.rx, msg, &count) {
            count(); // the thread is gone: this one is lost too
        }
        Ok(())
    }
}

impl Drop for ZenohSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None; // wakes the thread at once
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the zenoh thread panicked");
            }
        }
        let c = self.stats.get();
        log::debug!(
            "Zenoh stopped: {} detections sent, {} unmatched, {} behind, {} put errors, {} statuses",
            c.sent,
            c.unmatched,
            c.behind,
            c.put_errors,
            c.statuses
        );
    }
}

/// The session and what is declared on it. Dropping it undeclares everything and closes the session (the
/// liveliness token goes with it).
struct Live {
    session: Session,
    detections: Option<Publisher<'static>>,
    status: Option<Publisher<'static>>,
    hello: Option<Publisher<'static>>,
    hello_queries: Option<Queryable<RingChannelHandler<Query>>>,
    status_queries: Option<Queryable<RingChannelHandler<Query>>>,
    _alive: LivelinessToken,
    /// Whether a subscriber matches the detections key (set by Zenoh's matching listener).
    matching: Arc<AtomicBool>,
}

impl Live {
    /// Open the session and declare everything on it.
    fn open(cfg: &ZenohConfig, prefix: &str) -> Result<Self, ZenohError> {
        let session = zenoh::open(cfg.session_config()?)
            .wait()
            .map_err(|source| ZenohError::Open {
                mode: cfg.mode.clone(),
                source,
            })?;
        Self::declare(session, cfg, prefix)
    }

    fn declare(session: Session, cfg: &ZenohConfig, prefix: &str) -> Result<Self, ZenohError> {
        let declare = |what: String| move |source| ZenohError::Declare { what, source };
        let encoding = cfg.encoding();
        let publisher = |name: &str, priority: Priority, express: bool| {
            let key = format!("{prefix}/{name}");
            session
                .declare_publisher(key.clone())
                .encoding(encoding.clone())
                .congestion_control(CongestionControl::Drop)
                .priority(priority)
                .express(express)
                .wait()
                .map_err(declare(format!("the publisher {key}")))
        };
        let queryable = |name: &str| {
            let key = format!("{prefix}/{name}");
            session
                .declare_queryable(key.clone())
                .complete(true)
                .with(RingChannel::new(QUERIES))
                .wait()
                .map_err(declare(format!("the queryable {key}")))
        };
        let matching = Arc::new(AtomicBool::new(false));
        let detections = if cfg.sends("detections") {
            let p = publisher("detections", Priority::DataHigh, true)?;
            let flag = matching.clone();
            p.matching_listener()
                .callback(move |s| flag.store(s.matching(), Ordering::Relaxed))
                .background()
                .wait()
                .map_err(declare("the matching listener".into()))?;
            Some(p)
        } else {
            None
        };
        let (status, status_queries) = if cfg.sends("status") {
            (
                Some(publisher("status", Priority::InteractiveHigh, true)?),
                Some(queryable("status")?),
            )
        } else {
            (None, None)
        };
        let (hello, hello_queries) = if cfg.sends("hello") {
            (
                Some(publisher("hello", Priority::InteractiveHigh, true)?),
                Some(queryable("hello")?),
            )
        } else {
            (None, None)
        };
        let alive_key = format!("{prefix}/alive");
        let alive = session
            .liveliness()
            .declare_token(alive_key.clone())
            .wait()
            .map_err(declare(format!("the liveliness token {alive_key}")))?;
        Ok(Self {
            session,
            detections,
            status,
            hello,
            hello_queries,
            status_queries,
            _alive: alive,
            matching,
        })
    }

    /// Zenoh peers and routers connected now.
    fn sessions(&self) -> usize {
        let info = self.session.info();
        info.peers_zid().wait().count() + info.routers_zid().wait().count()
    }
}

/// When no subscriber matches the detections key: the outages (a match lost) and what they missed. Pure, so
/// that its rules are tested without a network.
#[derive(Debug)]
struct OutageClock {
    matching: bool,
    /// Since when nothing matches (the start, or the last outage's start).
    unmatched_since: Option<Instant>,
    /// Detections made since the current outage began.
    missed_now: u64,
    outages: u64,
    last: Option<Outage>,
}

impl OutageClock {
    fn new(now: Instant) -> Self {
        Self {
            matching: false,
            unmatched_since: Some(now),
            missed_now: 0,
            outages: 0,
            last: None,
        }
    }

    /// Take the matching state seen now.
    fn observe(&mut self, matching: bool, now: Instant) {
        if matching == self.matching {
            return;
        }
        self.matching = matching;
        if matching {
            // An outage ends (not the wait for a first subscriber, which is no outage).
            if let Some(since) = self.unmatched_since.take() {
                if self.outages > 0 {
                    self.last = Some(Outage {
                        ms: now.duration_since(since).as_millis() as u64,
                        missed: self.missed_now,
                    });
                }
            }
        } else {
            self.outages += 1;
            self.unmatched_since = Some(now);
        }
        self.missed_now = 0;
    }

    /// A detections message was made while nothing matched.
    fn missed(&mut self) {
        self.missed_now += 1;
    }

    fn down_ms(&self, now: Instant) -> Option<u64> {
        self.unmatched_since.map(|s| now.duration_since(s).as_millis() as u64)
    }
}

/// The `zenoh` thread's state.
struct Link {
    /// `None` while a client's session could not be opened yet.
    live: Option<Live>,
    cfg: ZenohConfig,
    /// When to try opening the session again (while `live` is `None`).
    next_open: Instant,
    open_errors: RateLimitedLog,
    format: Format,
    mode: String,
    prefix: String,
    period: Duration,
    hello: Vec<u8>,
    latest_status: Vec<u8>,
    status: StatusSource,
    counters: Arc<Counters>,
    outage: OutageClock,
    errors: RateLimitedLog,
}

impl Link {
    fn run(&mut self, rx: &Receiver<Vec<u8>>, stop: &AtomicBool) {
        let mut next_status = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let timeout = next_status.saturating_duration_since(Instant::now()).min(POLL);
            match rx.recv_timeout(timeout) {
                Ok(msg) => self.put_detections(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self.live.is_none() && now >= self.next_open {
                self.open(now);
            }
            let matching = self.live.as_ref().is_some_and(|l| l.matching.load(Ordering::Relaxed));
            self.outage.observe(matching, now);
            if now >= next_status {
                // Steady cadence; after a long stall, start again from now rather than send a burst.
                next_status = (next_status + self.period).max(now);
                self.put_status(now);
            }
            self.answer_queries();
        }
    }

    /// Try to open the session (bounded by the client's connect timeout).
    fn open(&mut self, now: Instant) {
        match Live::open(&self.cfg, &self.prefix) {
            Ok(live) => {
                log::info!("Zenoh: session opened ({} mode)", self.cfg.mode);
                self.live = Some(live);
                self.put_hello();
            }
            Err(e) => {
                self.open_errors.warn(&e);
                self.next_open = now.max(Instant::now()) + Duration::from_millis(self.cfg.reconnect_ms);
            }
        }
    }

    fn put_detections(&mut self, msg: Vec<u8>) {
        let Some(live) = &self.live else {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            self.outage.missed();
            return;
        };
        let Some(p) = &live.detections else { return };
        let matching = live.matching.load(Ordering::Relaxed);
        self.outage.observe(matching, Instant::now());
        if !matching {
            // Nobody would get it: counted, not stored.
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            self.outage.missed();
            return;
        }
        match p.put(msg).wait() {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.put_errors.fetch_add(1, Ordering::Relaxed);
                self.errors.warn(&e.to_string());
            }
        }
    }

    fn put_hello(&mut self) {
        if let Some(p) = self.live.as_ref().and_then(|l| l.hello.as_ref()) {
            if let Err(e) = p.put(self.hello.clone()).wait() {
                self.counters.put_errors.fetch_add(1, Ordering::Relaxed);
                self.errors.warn(&e.to_string());
            }
        }
    }

    fn put_status(&mut self, now: Instant) {
        let Some(live) = self.live.as_ref().filter(|l| l.status.is_some()) else {
            return;
        };
        let socket_subscribers = self
            .status
            .socket
            .as_ref()
            .map_or(0, |s| s.subscribers.load(Ordering::Relaxed) as usize);
        let mut status = self
            .status
            .tracker
            .next(self.status.socket.as_deref(), socket_subscribers);
        let c = &self.counters;
        status.zenoh = Some(ZenohStatus {
            key_prefix: self.prefix.clone(),
            mode: self.mode.clone(),
            sessions: live.sessions(),
            matching: self.outage.matching,
            sent: c.sent.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            behind: c.behind.load(Ordering::Relaxed),
            put_errors: c.put_errors.load(Ordering::Relaxed),
            outages: self.outage.outages,
            down_ms: self.outage.down_ms(now),
            last_outage: self.outage.last,
        });
        self.latest_status = json_message_payload("status", &status, self.format);
        if let Some(p) = &live.status {
            match p.put(self.latest_status.clone()).wait() {
                Ok(()) => {
                    c.statuses.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    c.put_errors.fetch_add(1, Ordering::Relaxed);
                    self.errors.warn(&e.to_string());
                }
            }
        }
    }

    fn answer_queries(&mut self) {
        let Some(live) = &self.live else { return };
        let encoding = match self.format {
            Format::Json => Encoding::APPLICATION_JSON,
            Format::Binary => Encoding::APPLICATION_OCTET_STREAM.with_schema("kestrel-v1"),
        };
        let answers = [
            (&live.hello_queries, "hello", &self.hello),
            (&live.status_queries, "status", &self.latest_status),
        ];
        for (queries, name, payload) in answers {
            let Some(q) = queries else { continue };
            while let Ok(Some(query)) = q.try_recv() {
                if payload.is_empty() {
                    continue; // no status made yet: no reply rather than an empty one
                }
                let key = format!("{}/{name}", self.prefix);
                if let Err(e) = query.reply(key, payload.clone()).encoding(encoding.clone()).wait() {
                    self.errors.warn(&format!("reply to {}: {e}", query.selector()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> ZenohConfig {
        ZenohConfig {
            enabled: true,
            connect: vec!["tcp/127.0.0.1:7447".into()],
            multicast_scouting: false,
            ..ZenohConfig::default()
        }
    }

    #[test]
    fn the_default_config_is_valid_and_off() {
        let c = ZenohConfig::default();
        assert!(!c.enabled);
        c.validate().unwrap();
        enabled().validate().unwrap();
    }

    #[test]
    fn bad_settings_name_their_field() {
        type Change = fn(&mut ZenohConfig);
        let cases: [(Change, &str, &str); 12] = [
            (|c| c.mode = "router".into(), "zenoh.mode", "\"router\""),
            (|c| c.connect = vec!["nonsense".into()], "zenoh.connect", "nonsense"),
            (
                |c| c.connect = vec!["tcp/not a host:7447".into()],
                "zenoh.connect",
                "host name",
            ),
            (
                |c| c.connect = vec!["tcp/127.0.0.1".into()],
                "zenoh.connect",
                "HOST:PORT",
            ),
            (
                |c| c.connect = vec!["tcp/127.0.0.1:70000".into()],
                "zenoh.connect",
                "port",
            ),
            (
                |c| c.connect = vec!["quic/127.0.0.1:7447".into()],
                "zenoh.connect",
                "not built in",
            ),
            (|c| c.listen = vec!["tcp/:7447".into()], "zenoh.listen", "host"),
            (|c| c.key_prefix = "kestrel/*".into(), "zenoh.key_prefix", "wildcard"),
            (|c| c.key_prefix = "kestrel/**".into(), "zenoh.key_prefix", "wildcard"),
            (
                |c| c.key_prefix = "kestrel//a".into(),
                "zenoh.key_prefix",
                "key expression",
            ),
            (|c| c.messages = vec!["images".into()], "zenoh.messages", "images"),
            (
                |c| c.status_interval_ms = 2000,
                "zenoh.status_interval_ms",
                "once a second",
            ),
        ];
        for (change, field, says) in cases {
            let mut c = enabled();
            change(&mut c);
            let (f, why) = c.validate().unwrap_err();
            assert_eq!(f, field, "{why}");
            assert!(why.contains(says), "{field}: {why:?} should say {says:?}");
        }
        let mut lonely = enabled();
        lonely.connect.clear();
        assert_eq!(lonely.validate().unwrap_err().0, "zenoh.connect");
        lonely.mode = "client".into();
        lonely.listen = vec!["tcp/127.0.0.1:7447".into()];
        assert_eq!(lonely.validate().unwrap_err().0, "zenoh.connect");
    }

    #[test]
    fn good_endpoints_pass() {
        for e in [
            "tcp/127.0.0.1:7447",
            "tcp/[::1]:7447",
            "udp/192.168.1.10:7447",
            "tcp/ground-station.local:7447",
            "tcp/0.0.0.0:0",
        ] {
            assert_eq!(endpoint_problem(e), None, "{e}");
        }
    }

    #[test]
    fn the_default_prefix_is_a_concrete_key() {
        let p = default_prefix();
        assert!(p.starts_with("kestrel/") && p.len() > "kestrel/".len(), "{p}");
        assert_eq!(prefix_problem(&p), None, "{p}");
    }

    #[test]
    fn the_session_config_is_accepted_by_zenoh() {
        let mut c = enabled();
        c.listen = vec!["tcp/127.0.0.1:0".into()];
        c.mode = "client".into();
        c.session_config().unwrap();
    }

    #[test]
    fn payloads_drop_the_socket_framing() {
        let j = json_message_payload("missed", &serde_json::json!({"count": 3}), Format::Json);
        assert_eq!(j, br#"{"type":"missed","v":1,"count":3}"#);
        let b = json_message_payload("missed", &serde_json::json!({"count": 3}), Format::Binary);
        assert_eq!(&b[..4], &[protocol::TYPE_MISSED, 1, 4, 0]);
        assert_eq!(&b[4..], &j[..]);
        let m = protocol::decode_binary(&b, &[]).unwrap();
        assert_eq!(m, protocol::Message::Missed { count: 3 });
    }

    #[test]
    fn outages_count_what_they_missed_and_not_the_first_wait() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut o = OutageClock::new(t0);
        o.missed(); // before any subscriber: no outage
        assert_eq!(o.down_ms(at(100)), Some(100));
        o.observe(true, at(100));
        assert_eq!((o.outages, o.last, o.down_ms(at(150))), (0, None, None));
        o.observe(false, at(1000));
        for _ in 0..7 {
            o.missed();
        }
        assert_eq!((o.outages, o.down_ms(at(1500))), (1, Some(500)));
        o.observe(false, at(1600)); // no change
        o.observe(true, at(3000));
        assert_eq!(o.last, Some(Outage { ms: 2000, missed: 7 }));
        assert_eq!(o.down_ms(at(3100)), None);
        o.observe(false, at(4000));
        o.observe(true, at(4100));
        assert_eq!((o.outages, o.last), (2, Some(Outage { ms: 100, missed: 0 })));
    }
}
