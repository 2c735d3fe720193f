//! The detection socket: a Unix stream socket server on its own thread ("publisher"), fed by the pipeline's
//! sink stage through a bounded channel it never blocks on.
//!
//! Each subscriber has its own bounded queue of encoded messages; the server writes with non-blocking I/O, so a
//! slow subscriber only delays itself: when its queue is full the oldest message is dropped and counted (the
//! next message it gets is a `missed` notice with the count), and once it has taken nothing for `max_lag_ms`
//! while messages wait it is disconnected. What clients send is read and discarded (a `{"format":…}` line
//! switches that subscriber's format), at most 64 KiB per client per loop, lines capped at 4 KiB. A `status`
//! heartbeat goes out every `status_interval_ms` whatever the pipeline does.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Deserialize;
use thiserror::Error;

use crate::metrics::Metrics;
use crate::sink::{Sink, SinkError};
use crate::status::StatusTracker;
use kestrel_core::check::{within, Invalid};
use kestrel_core::published::Published;
use kestrel_protocol::{self as protocol, Format, Hello, Status};

/// `[publish]` in the config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Serve detections on the socket (default true).
    pub enabled: bool,
    /// Socket path (its directory must exist; systemd's `RuntimeDirectory=kestrel` makes /run/kestrel).
    pub socket: PathBuf,
    /// Group that may connect (the socket is mode 0660); empty: the daemon's own group.
    pub group: String,
    /// Format of new subscribers (each can switch by sending `{"format":"binary"}`).
    pub format: Format,
    /// Subscribers at once; more are refused with an `error` message.
    pub max_subscribers: usize,
    /// Messages queued per subscriber before the oldest is dropped.
    pub queue_messages: usize,
    /// A subscriber that takes no data for this long while messages wait for it is disconnected.
    pub max_lag_ms: u64,
    /// `status` heartbeat interval.
    pub status_interval_ms: u64,
    /// No frame published for this long (with the camera streaming) is reported as `stalled`.
    pub stall_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: PathBuf::from("/run/kestrel/detections.sock"),
            group: String::new(),
            format: Format::Json,
            max_subscribers: 16,
            queue_messages: 64,
            max_lag_ms: 2000,
            status_interval_ms: 1000,
            stall_ms: 2000,
        }
    }
}

impl PublishConfig {
    /// Range checks: `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.enabled && self.socket.as_os_str().is_empty() {
            return Err(("publish.socket", "required when publish.enabled".into()));
        }
        within("publish.max_subscribers", self.max_subscribers, 1..=1024)?;
        within("publish.queue_messages", self.queue_messages, 2..=10_000)?;
        within("publish.max_lag_ms", self.max_lag_ms, 100..=60_000)?;
        within("publish.status_interval_ms", self.status_interval_ms, 100..=1000)
            .map_err(|(f, why)| (f, format!("{why} (status must come at least once a second)")))?;
        within("publish.stall_ms", self.stall_ms, 100..=600_000)
    }
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("socket {path}: {reason}")]
    Socket {
        path: PathBuf,
        #[source]
        reason: SocketError,
    },
    #[error("cannot start the publisher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why the subscriber socket cannot be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    #[error("another server is listening on it (is kestrel already running?)")]
    InUse,
    #[error("cannot remove the stale socket: {0}")]
    RemoveStale(#[source] std::io::Error),
    #[error(
        "exists and is not a socket ({}); refusing to replace it",
        if *.is_dir { "a directory" } else { "a regular file or other" }
    )]
    NotASocket { is_dir: bool },
    #[error("directory {0} does not exist (systemd: RuntimeDirectory=kestrel)")]
    NoDirectory(PathBuf),
    #[error("cannot bind: {0}")]
    Bind(#[source] std::io::Error),
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("chown to {group}: {source}")]
    Chown {
        group: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rename into place: {0}")]
    Rename(#[source] std::io::Error),
    /// Looking at the path, setting the mode, making the listener non-blocking.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Counters of the server (also in `status`).
#[derive(Debug, Default)]
pub struct PublishStats {
    pub connected: AtomicU64,
    pub refused: AtomicU64,
    pub disconnected_slow: AtomicU64,
    pub messages_missed: AtomicU64,
    /// Frames the sink could not hand to the server thread (it was behind): not sent to anyone.
    pub frames_dropped: AtomicU64,
    pub subscribers: AtomicU64,
}

/// One frame, encoded once in both formats.
struct Outgoing {
    json: Arc<[u8]>,
    binary: Arc<[u8]>,
}

/// The pipeline side: encodes each frame once and hands it to the server thread without blocking.
pub struct SocketSink {
    tx: Sender<Outgoing>,
    wake: UnixStream,
    json: Vec<u8>,
    binary: Vec<u8>,
    stats: Arc<PublishStats>,
}

impl Sink for SocketSink {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        if self.stats.subscribers.load(Relaxed) == 0 {
            return Ok(());
        }
        self.json.clear();
        self.binary.clear();
        protocol::write_detections_json(f, &mut self.json)?;
        protocol::write_detections_binary(f, &mut self.binary);
        let out = Outgoing {
            json: self.json.as_slice().into(),
            binary: self.binary.as_slice().into(),
        };
        match self.tx.try_send(out) {
            Ok(()) => {
                // A byte on the wake pipe interrupts the server's poll; a full pipe means it is awake anyway.
                let _ = (&self.wake).write(&[1]);
            }
            Err(TrySendError::Full(_)) => {
                self.stats.frames_dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(SinkError::Io(std::io::Error::other("publisher thread ended")));
            }
        }
        Ok(())
    }
}

/// What the server needs to say in `hello`.
#[derive(Clone, Debug)]
pub struct HelloInfo {
    pub hello: Hello,
}

/// The running server. Dropping it stops the thread and removes the socket file.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<PublishStats>,
    path: PathBuf,
    /// (dev, ino) of the socket we created, so we never remove someone else's.
    ident: (u64, u64),
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove socket {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Look up a group id in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split(':');
        (it.next()? == name).then_some(())?;
        it.nth(1)?.parse().ok()
    })
}

/// Bind the socket: a stale socket file from a crash is replaced, a live server's socket or any other kind of
/// file is refused. Created under a temporary name, given mode 0660 (and the group), then renamed into
/// place, so it never exists with other permissions.
fn bind(cfg: &PublishConfig) -> Result<(UnixListener, (u64, u64)), PublishError> {
    let path = &cfg.socket;
    let err = |reason: SocketError| PublishError::Socket {
        path: path.clone(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(err(SocketError::InUse)),
            Err(_) => {
                log::warn!("replacing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(|e| err(SocketError::RemoveStale(e)))?;
            }
        },
        Ok(m) => return Err(err(SocketError::NotASocket { is_dir: m.is_dir() })),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.into())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(err(SocketError::NoDirectory(dir.to_path_buf())));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| err(SocketError::Bind(e)))?;
    let cleanup = |e: SocketError| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660)).map_err(|e| cleanup(e.into()))?;
    if !cfg.group.is_empty() {
        let gid = group_id(&cfg.group).ok_or_else(|| cleanup(SocketError::UnknownGroup(cfg.group.clone())))?;
        let current = std::fs::symlink_metadata(&tmp).map_err(|e| cleanup(e.into()))?.gid();
        // Already ours (the usual case under systemd, where the service's own group is the socket group): no
        // chown, which the unit's system-call filter (`~@privileged` includes `@chown`) would refuse.
        if current != gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(|source| {
                cleanup(SocketError::Chown {
                    group: cfg.group.clone(),
                    source,
                })
            })?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| cleanup(SocketError::Rename(e)))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| err(e.into()))?;
    listener.set_nonblocking(true).map_err(|e| err(e.into()))?;
    Ok((listener, (m.dev(), m.ino())))
}

/// Start the server; returns it and the sink the pipeline publishes into.
pub fn start(
    cfg: &PublishConfig,
    hello: Hello,
    metrics: Arc<Metrics>,
) -> Result<(Publisher, SocketSink), PublishError> {
    let (listener, ident) = bind(cfg)?;
    let (wake_tx, wake_rx) = UnixStream::pair().map_err(PublishError::Thread)?;
    for s in [&wake_tx, &wake_rx] {
        s.set_nonblocking(true).map_err(PublishError::Thread)?;
    }
    let (tx, rx) = bounded::<Outgoing>(8);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PublishStats::default());
    let tracker = StatusTracker::new(
        metrics,
        cfg.stall_ms,
        hello.execution_provider.clone(),
        hello.execution_provider_fallback.clone(),
    );
    let mut server = Server {
        cfg: cfg.clone(),
        listener,
        wake: wake_rx,
        rx,
        subs: Vec::new(),
        hello,
        stats: stats.clone(),
        next_status: Instant::now(),
        tracker,
        next_id: 0,
    };
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || server.run(&stop))
            .map_err(PublishError::Thread)?
    };
    log::info!(
        "publishing on {} (mode 0660{}), {} subscribers max",
        cfg.socket.display(),
        if cfg.group.is_empty() {
            String::new()
        } else {
            format!(", group {}", cfg.group)
        },
        cfg.max_subscribers
    );
    Ok((
        Publisher {
            stop,
            thread: Some(thread),
            stats: stats.clone(),
            path: cfg.socket.clone(),
            ident,
        },
        SocketSink {
            tx,
            wake: wake_tx,
            json: Vec::with_capacity(8192),
            binary: Vec::with_capacity(8192),
            stats,
        },
    ))
}

struct Subscriber {
    id: u64,
    stream: UnixStream,
    format: Format,
    queue: VecDeque<(Instant, Arc<[u8]>)>,
    /// Bytes of the front message already written.
    written: usize,
    missed: u64,
    /// Last time the socket took bytes (or had nothing to take).
    progress: Instant,
    input: Vec<u8>,
    /// The client's current input line exceeded the limit: discard until the next newline.
    discarding: bool,
    closed: bool,
}

const READ_PER_LOOP: usize = 64 << 10;
const MAX_LINE: usize = 4096;

impl Subscriber {
    fn push(&mut self, msg: Arc<[u8]>, cap: usize, stats: &PublishStats) {
        if self.missed > 0 {
            let mut m = Vec::new();
            #[derive(serde::Serialize)]
            struct Missed {
                count: u64,
            }
            protocol::write_json_message("missed", &Missed { count: self.missed }, self.format, &mut m);
            self.queue.push_back((Instant::now(), m.into()));
            self.missed = 0;
        }
        while self.queue.len() >= cap {
            // Keep a partly written message (the stream must stay framed); drop the next oldest.
            let at = usize::from(self.written > 0);
            if self.queue.remove(at).is_none() {
                break;
            }
            self.missed += 1;
            stats.messages_missed.fetch_add(1, Relaxed);
        }
        self.queue.push_back((Instant::now(), msg));
    }

    /// Write as much as the socket takes.
    fn flush(&mut self) {
        if self.queue.is_empty() {
            self.progress = Instant::now();
        }
        while let Some((_, front)) = self.queue.front() {
            match (&self.stream).write(&front[self.written..]) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.written += n;
                    self.progress = Instant::now();
                    if self.written == front.len() {
                        self.queue.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Read (bounded) and act on what the client sent; returns a requested format switch.
    fn read_input(&mut self) -> Option<Format> {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        let mut switch = None;
        while total < READ_PER_LOOP {
            match (&self.stream).read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            if !self.discarding {
                                if let Ok(cmd) = serde_json::from_slice::<Command>(&self.input) {
                                    if let Some(f) = cmd.format {
                                        switch = Some(f);
                                    }
                                }
                            }
                            self.input.clear();
                            self.discarding = false;
                        } else if !self.discarding {
                            if self.input.len() >= MAX_LINE {
                                self.input.clear();
                                self.discarding = true;
                            } else {
                                self.input.push(b);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        switch
    }
}

fn queue_hello(hello: &Hello, cfg: &PublishConfig, stats: &PublishStats, s: &mut Subscriber) {
    let mut h = hello.clone();
    h.format = s.format;
    h.status_interval_ms = cfg.status_interval_ms;
    let mut m = Vec::new();
    protocol::write_json_message("hello", &h, s.format, &mut m);
    s.push(m.into(), cfg.queue_messages, stats);
}

/// What a client may send (one JSON object per line); unknown fields are ignored.
#[derive(Deserialize)]
struct Command {
    format: Option<Format>,
}

struct Server {
    cfg: PublishConfig,
    listener: UnixListener,
    wake: UnixStream,
    rx: Receiver<Outgoing>,
    subs: Vec<Subscriber>,
    hello: Hello,
    stats: Arc<PublishStats>,
    next_status: Instant,
    tracker: StatusTracker,
    next_id: u64,
}

impl Server {
    fn run(&mut self, stop: &AtomicBool) {
        let poll_ms = Duration::from_millis(20);
        while !stop.load(Relaxed) {
            self.wait(poll_ms);
            let mut buf = [0u8; 256];
            while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
            self.accept();
            while let Ok(out) = self.rx.try_recv() {
                let cap = self.cfg.queue_messages;
                for s in &mut self.subs {
                    let msg = match s.format {
                        Format::Json => out.json.clone(),
                        Format::Binary => out.binary.clone(),
                    };
                    s.push(msg, cap, &self.stats);
                }
            }
            if Instant::now() >= self.next_status {
                self.next_status = Instant::now() + Duration::from_millis(self.cfg.status_interval_ms);
                self.send_status();
            }
            self.service();
        }
        // Stopping: a last best-effort flush, then close everyone.
        for s in &mut self.subs {
            s.flush();
        }
    }

    /// Sleep until a socket is ready, the sink wakes us, or `timeout`.
    fn wait(&self, timeout: Duration) {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.subs.len() + 2);
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        fds.push(PollFd::new(&self.wake, PollFlags::IN));
        for s in &self.subs {
            let mut f = PollFlags::IN;
            if !s.queue.is_empty() {
                f |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(s.stream.as_fd(), f));
        }
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: timeout.as_nanos() as _,
        };
        let _ = poll(&mut fds, Some(&ts));
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.subs.len() >= self.cfg.max_subscribers {
                        self.stats.refused.fetch_add(1, Relaxed);
                        let mut m = Vec::new();
                        #[derive(serde::Serialize)]
                        struct E {
                            error: String,
                        }
                        let error = format!(
                            "too many subscribers ({} max); try again later",
                            self.cfg.max_subscribers
                        );
                        protocol::write_json_message("error", &E { error }, Format::Json, &mut m);
                        let _ = (&stream).write(&m);
                        log::debug!("subscriber refused: {} connected already", self.subs.len());
                        continue;
                    }
                    self.next_id += 1;
                    let mut s = Subscriber {
                        id: self.next_id,
                        stream,
                        format: self.cfg.format,
                        queue: VecDeque::new(),
                        written: 0,
                        missed: 0,
                        progress: Instant::now(),
                        input: Vec::new(),
                        discarding: false,
                        closed: false,
                    };
                    queue_hello(&self.hello, &self.cfg, &self.stats, &mut s);
                    self.subs.push(s);
                    self.stats.connected.fetch_add(1, Relaxed);
                    self.stats.subscribers.store(self.subs.len() as u64, Relaxed);
                    log::debug!("subscriber {} connected ({} now)", self.next_id, self.subs.len());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: try again next loop rather than spin.
                    log::warn!("accept on the detection socket failed: {e}");
                    return;
                }
            }
        }
    }

    fn service(&mut self) {
        let max_lag = Duration::from_millis(self.cfg.max_lag_ms);
        let mut i = 0;
        while i < self.subs.len() {
            let s = &mut self.subs[i];
            if let Some(f) = s.read_input() {
                if f != s.format {
                    // Switch at a message boundary: drop what is queued in the old format but not started; the
                    // last message in the old format is a `format` notice, then a hello in the new one.
                    s.queue.truncate(usize::from(s.written > 0));
                    #[derive(serde::Serialize)]
                    struct Switch {
                        format: Format,
                    }
                    let mut m = Vec::new();
                    protocol::write_json_message("format", &Switch { format: f }, s.format, &mut m);
                    s.queue.push_back((Instant::now(), m.into()));
                    s.format = f;
                    queue_hello(&self.hello, &self.cfg, &self.stats, s);
                }
            }
            let s = &mut self.subs[i];
            if !s.closed {
                s.flush();
            }
            // Stalled: messages wait and the socket has taken nothing for max_lag. (A slow reader that makes
            // progress stays, losing messages as its queue overflows.)
            let lagging = !s.queue.is_empty() && s.progress.elapsed() > max_lag;
            if s.closed || lagging {
                if lagging {
                    self.stats.disconnected_slow.fetch_add(1, Relaxed);
                    log::warn!(
                        "subscriber {} disconnected: took nothing for more than {} ms ({} messages queued)",
                        s.id,
                        self.cfg.max_lag_ms,
                        s.queue.len()
                    );
                } else {
                    log::debug!("subscriber {} disconnected", s.id);
                }
                self.subs.swap_remove(i);
                self.stats.subscribers.store(self.subs.len() as u64, Relaxed);
                continue;
            }
            i += 1;
        }
    }

    fn send_status(&mut self) {
        let status = self.status();
        let (mut j, mut b) = (Vec::new(), Vec::new());
        protocol::write_json_message("status", &status, Format::Json, &mut j);
        protocol::write_json_message("status", &status, Format::Binary, &mut b);
        let (j, b): (Arc<[u8]>, Arc<[u8]>) = (j.into(), b.into());
        let cap = self.cfg.queue_messages;
        for s in &mut self.subs {
            let m = if s.format == Format::Json { j.clone() } else { b.clone() };
            s.push(m, cap, &self.stats);
        }
    }

    fn status(&mut self) -> Status {
        self.tracker.next(Some(&self.stats), self.subs.len())
    }
}

/// Several sinks in one (e.g. the socket and a JSON Lines file).
pub struct TeeSink(pub Vec<Box<dyn Sink>>);

impl Sink for TeeSink {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        for s in &mut self.0 {
            s.publish(f)?;
        }
        Ok(())
    }
}
