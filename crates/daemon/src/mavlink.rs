//! MAVLink output for precision landing: the best detection of one class, per frame, as a `LANDING_TARGET`
//! (the angles of the target from the optical axis, from the camera intrinsics), plus a `HEARTBEAT` so the
//! autopilot and the ground station see the component.
//!
//! [`MavlinkSink`] never blocks the pipeline: `publish` builds the message (a pure function,
//! [`landing_target`]) and offers it to a small bounded queue, dropping the oldest queued message when the
//! queue is full (latest wins). A dedicated thread, named `mavlink`, owns the connection, sends what the
//! queue brings and a `HEARTBEAT` at `heartbeat_hz`, counts send errors (logged at most once per 5 s; they
//! are never fatal) and stops within ~100 ms of the sink being dropped.
//!
//! Endpoints are the mavlink crate's connection strings, restricted to the transports whose every call is
//! bounded in time: `udpout:IP:PORT` (e.g. to mavlink-router or the autopilot's UDP port), `udpbcast:IP:PORT`,
//! and `serial:/dev/PATH:BAUD` (8N1, no flow control, each write bounded by a 50 ms timeout). TCP is refused
//! (the crate connects and accepts without a time limit) and so are `udpin` (the crate only learns its peer
//! from received packets, which this sink never reads) and `file`.
//!
//! `LANDING_TARGET` as sent:
//! - `time_usec`: the frame's capture time, CLOCK_MONOTONIC in microseconds, i.e. time since this
//!   computer booted (MAVLink lets the receiver tell boot time from Unix time by the magnitude; it is not the
//!   autopilot's boot time).
//! - `frame` = `MAV_FRAME_BODY_FRD`; `angle_x`, `angle_y`: radians of the box centre from the optical axis in
//!   the image's axes (x to the right of the image, y towards its bottom), as [`kestrel_vision::angles`] computes them
//!   (undistorted). The autopilot maps them to the body: ArduPilot's companion precision-landing backend
//!   takes the line of sight as `(-tan angle_y, tan angle_x, 1)` in FRD, i.e. it assumes a downward camera
//!   whose image top points to the vehicle's nose.
//! - `size_x`, `size_y`: the angular size of the box (angle of the right edge's centre minus the left's,
//!   bottom minus top), radians.
//! - `distance` = 0 (unknown), `target_num` from the config.
//! - MAVLink 2 extensions: `type` = `LANDING_TARGET_TYPE_VISION_OTHER`, `position_valid` = false, `x y z q`
//!   zero. MAVLink 1 frames carry no extensions.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mavlink::dialects::common::{
    LandingTargetType, MavAutopilot, MavBool, MavFrame, MavMessage, MavModeFlag, MavState, MavType, HEARTBEAT_DATA,
    LANDING_TARGET_DATA,
};
use mavlink::{Connectable, ConnectionAddress, MavConnection, MavHeader, MavlinkVersion};
use serde::Deserialize;
use thiserror::Error;

use crate::sink::{Sink, SinkError};
use kestrel_core::check::{within, Invalid};
use kestrel_core::published::Published;
use kestrel_core::ratelog::RateLimitedLog;
use kestrel_vision::angles::Intrinsics;

/// Messages waiting for the sender thread; when full the oldest is dropped.
const QUEUE: usize = 4;
/// Longest the sender thread waits before looking at the stop flag again.
const POLL: Duration = Duration::from_millis(20);
/// Write timeout of serial links (each write of a message is bounded by it).
const SERIAL_WRITE_TIMEOUT: Duration = Duration::from_millis(50);
/// At most one send-error log line per this interval.
const HEARTBEAT_HZ: std::ops::RangeInclusive<f64> = 0.2..=50.0;

#[derive(Debug, Error)]
pub enum MavlinkError {
    #[error("mavlink.target_class {name:?} is not a label of the model (labels: {known})")]
    UnknownClass { name: String, known: String },
    #[error("mavlink config: field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("mavlink config: field `mavlink.endpoint`: {0}")]
    Endpoint(#[source] EndpointError),
    #[error("cannot open MAVLink endpoint {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("cannot start the mavlink thread: {0}")]
    Thread(#[source] io::Error),
}

/// Why a `mavlink.endpoint` string cannot be used; every message quotes it.
#[derive(Debug, Error)]
pub enum EndpointError {
    #[error("{endpoint:?} is not KIND:ADDRESS (udpout:IP:PORT, udpbcast:IP:PORT, serial:PATH:BAUD)")]
    NotKindAddress { endpoint: String },
    #[error("{endpoint:?}: {rest:?} is not IP:PORT (an IP literal, no host names)")]
    NotIpPort { endpoint: String, rest: String },
    #[error("{endpoint:?}: port 0")]
    PortZero { endpoint: String },
    #[error("{endpoint:?} is not serial:PATH:BAUD")]
    NotSerial { endpoint: String },
    #[error("{endpoint:?}: the serial device must be an absolute path")]
    RelativeDevice { endpoint: String },
    #[error("{endpoint:?}: {baud:?} is not a baud rate")]
    Baud { endpoint: String, baud: String },
    #[error("{endpoint:?}: TCP is not supported (the MAVLink library connects without a timeout); use udpout")]
    Tcp { endpoint: String },
    #[error("{endpoint:?}: udpin is not supported (it sends only after a peer has written); use udpout")]
    UdpIn { endpoint: String },
    #[error("{endpoint:?}: unsupported kind {kind:?} (udpout:IP:PORT, udpbcast:IP:PORT, serial:PATH:BAUD)")]
    Kind { endpoint: String, kind: String },
    /// The mavlink crate refused the address.
    #[error("{endpoint:?}: {source}")]
    Address {
        endpoint: String,
        #[source]
        source: io::Error,
    },
}

/// `[mavlink]` in the config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MavlinkConfig {
    pub enabled: bool,
    /// A mavlink-crate connection string: `udpout:IP:PORT`, `udpbcast:IP:PORT` or `serial:/dev/PATH:BAUD`
    /// (e.g. `serial:/dev/ttyTHS1:921600`). IP literals only (no name lookup).
    pub endpoint: String,
    /// The label (from the model's labels) of the landing target. No default on purpose: it must name the
    /// class the model was trained to find as a landing marker; required when `enabled`.
    pub target_class: String,
    /// `LANDING_TARGET.target_num`.
    pub target_num: u8,
    /// Our MAVLink system id: normally the vehicle's (the autopilot's `SYSID_THISMAV` / `MAV_SYS_ID`).
    pub system_id: u8,
    /// Our component id: 191 = `MAV_COMP_ID_ONBOARD_COMPUTER`.
    pub component_id: u8,
    /// HEARTBEAT rate, Hz (0.2 to 50; MAVLink expects 1).
    pub heartbeat_hz: f64,
    /// 2 (default) or 1 (no extension fields: `type`, `position_valid`, `x y z q` are not sent).
    pub mavlink_version: u8,
}

impl Default for MavlinkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "udpout:127.0.0.1:14550".into(),
            target_class: String::new(),
            target_num: 0,
            system_id: 1,
            component_id: 191,
            heartbeat_hz: 1.0,
            mavlink_version: 2,
        }
    }
}

impl MavlinkConfig {
    /// Range checks: `Err((field, reason))`. (MAVLink also needs `[intrinsics]`; the config layer checks
    /// that.)
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Err(e) = parse_endpoint(&self.endpoint) {
            return Err(("mavlink.endpoint", e.to_string()));
        }
        if self.enabled && self.target_class.trim().is_empty() {
            return Err((
                "mavlink.target_class",
                "required when mavlink.enabled: the label of the landing-target class".into(),
            ));
        }
        if self.system_id == 0 {
            return Err(("mavlink.system_id", "0 is the broadcast id; use 1 to 255".into()));
        }
        if self.component_id == 0 {
            return Err(("mavlink.component_id", "0 is the broadcast id; use 1 to 255".into()));
        }
        within("mavlink.heartbeat_hz", self.heartbeat_hz, HEARTBEAT_HZ)?;
        if !matches!(self.mavlink_version, 1 | 2) {
            return Err((
                "mavlink.mavlink_version",
                format!("{} is not 1 or 2", self.mavlink_version),
            ));
        }
        Ok(())
    }

    fn version(&self) -> MavlinkVersion {
        if self.mavlink_version == 1 {
            MavlinkVersion::V1
        } else {
            MavlinkVersion::V2
        }
    }
}

/// A checked endpoint, ready for the mavlink crate.
fn parse_endpoint(endpoint: &str) -> Result<ConnectionAddress, EndpointError> {
    let endpoint_ = || endpoint.to_string();
    let (kind, rest) = endpoint
        .split_once(':')
        .ok_or_else(|| EndpointError::NotKindAddress { endpoint: endpoint_() })?;
    match kind {
        "udpout" | "udpbcast" => {
            // The parser's own error says less than this one ("invalid socket address syntax").
            let addr: SocketAddr = rest.parse().map_err(|_| EndpointError::NotIpPort {
                endpoint: endpoint_(),
                rest: rest.to_string(),
            })?;
            if addr.port() == 0 {
                return Err(EndpointError::PortZero { endpoint: endpoint_() });
            }
        }
        "serial" => {
            let (path, baud) = rest
                .split_once(':')
                .ok_or_else(|| EndpointError::NotSerial { endpoint: endpoint_() })?;
            if !path.starts_with('/') {
                return Err(EndpointError::RelativeDevice { endpoint: endpoint_() });
            }
            if !matches!(baud.parse::<u32>(), Ok(b) if b > 0) {
                return Err(EndpointError::Baud {
                    endpoint: endpoint_(),
                    baud: baud.to_string(),
                });
            }
        }
        "tcpout" | "tcpin" => return Err(EndpointError::Tcp { endpoint: endpoint_() }),
        "udpin" => return Err(EndpointError::UdpIn { endpoint: endpoint_() }),
        _ => {
            return Err(EndpointError::Kind {
                endpoint: endpoint_(),
                kind: kind.to_string(),
            })
        }
    }
    let address = ConnectionAddress::parse_address(endpoint).map_err(|source| EndpointError::Address {
        endpoint: endpoint_(),
        source,
    })?;
    Ok(match address {
        ConnectionAddress::Serial(serial) => ConnectionAddress::Serial(serial.timeout(SERIAL_WRITE_TIMEOUT)),
        other => other,
    })
}

/// The class id of label `name`.
pub fn resolve_class(labels: &[String], name: &str) -> Result<u32, MavlinkError> {
    labels
        .iter()
        .position(|l| l == name)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| {
            let mut known: Vec<&str> = labels.iter().take(12).map(String::as_str).collect();
            if labels.len() > known.len() {
                known.push("…");
            }
            MavlinkError::UnknownClass {
                name: name.to_string(),
                known: known.join(", "),
            }
        })
}

/// `LANDING_TARGET` for the best (first) detection of `class_id` in `frame`, or `None` when the frame has
/// none. Angles come from `frame.angles` when the pipeline computed them, else from `intrinsics`.
pub fn landing_target(
    frame: &Published<'_>,
    intrinsics: &Intrinsics,
    class_id: u32,
    target_num: u8,
) -> Option<LANDING_TARGET_DATA> {
    let i = frame.detections.iter().position(|d| d.class_id == class_id)?;
    let b = &frame.detections[i].bbox;
    let (w, h) = (frame.width, frame.height);
    let [angle_x, angle_y] = match frame.angles.get(i) {
        Some(a) => *a,
        None => intrinsics.box_angles(b, w, h),
    };
    let (cu, cv) = (
        (f64::from(b[0]) + f64::from(b[2])) / 2.0,
        (f64::from(b[1]) + f64::from(b[3])) / 2.0,
    );
    let size_x = intrinsics.angles(f64::from(b[2]), cv, w, h)[0] - intrinsics.angles(f64::from(b[0]), cv, w, h)[0];
    let size_y = intrinsics.angles(cu, f64::from(b[3]), w, h)[1] - intrinsics.angles(cu, f64::from(b[1]), w, h)[1];
    Some(LANDING_TARGET_DATA {
        time_usec: frame.capture_ns / 1000,
        angle_x,
        angle_y,
        distance: 0.0,
        size_x,
        size_y,
        target_num,
        frame: MavFrame::MAV_FRAME_BODY_FRD,
        x: 0.0,
        y: 0.0,
        z: 0.0,
        q: [0.0; 4],
        mavtype: LandingTargetType::LANDING_TARGET_TYPE_VISION_OTHER,
        position_valid: MavBool::MAV_BOOL_FALSE,
    })
}

/// Our `HEARTBEAT`: an onboard controller, not an autopilot, active.
pub fn heartbeat() -> HEARTBEAT_DATA {
    HEARTBEAT_DATA {
        custom_mode: 0,
        mavtype: MavType::MAV_TYPE_ONBOARD_CONTROLLER,
        autopilot: MavAutopilot::MAV_AUTOPILOT_INVALID,
        base_mode: MavModeFlag::empty(),
        system_status: MavState::MAV_STATE_ACTIVE,
        ..HEARTBEAT_DATA::DEFAULT
    }
}

/// What the sink has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MavlinkCounters {
    /// `LANDING_TARGET` messages written to the link.
    pub landing_targets: u64,
    /// `HEARTBEAT` messages written to the link.
    pub heartbeats: u64,
    /// `LANDING_TARGET` messages dropped because the sender thread was behind (queue full, oldest dropped).
    pub dropped: u64,
    /// Messages that failed to send.
    pub send_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    landing_targets: AtomicU64,
    heartbeats: AtomicU64,
    dropped: AtomicU64,
    send_errors: AtomicU64,
}

/// A handle on a sink's counters that outlives the sink (for metrics after the sink moved into the
/// pipeline).
#[derive(Clone, Debug, Default)]
pub struct MavlinkStats(Arc<Counters>);

impl MavlinkStats {
    pub fn get(&self) -> MavlinkCounters {
        let c = &self.0;
        MavlinkCounters {
            landing_targets: c.landing_targets.load(Ordering::Relaxed),
            heartbeats: c.heartbeats.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// Offer `msg` to the queue without blocking; when it is full, drop the oldest queued message (counted in
/// `dropped`) so the newest gets through.
fn offer<T>(tx: &Sender<T>, rx: &Receiver<T>, msg: T, dropped: &AtomicU64) {
    let count = || {
        dropped.fetch_add(1, Ordering::Relaxed);
    };
    if !kestrel_core::latest::push_latest(tx, rx, msg, &count) {
        count(); // the thread is gone: this one is lost too
    }
}

/// Sends `LANDING_TARGET` for the configured class over MAVLink; see the module docs.
pub struct MavlinkSink {
    tx: Option<Sender<LANDING_TARGET_DATA>>,
    /// Kept to drop the oldest message when the queue is full.
    rx: Receiver<LANDING_TARGET_DATA>,
    stop: Arc<AtomicBool>,
    stats: MavlinkStats,
    thread: Option<JoinHandle<()>>,
    intrinsics: Intrinsics,
    class_id: u32,
    target_num: u8,
}

impl MavlinkSink {
    /// Validate `cfg`, resolve the target class among `labels`, open the endpoint and start the `mavlink`
    /// thread (which sends a first HEARTBEAT at once).
    pub fn new(cfg: &MavlinkConfig, intrinsics: Intrinsics, labels: &[String]) -> Result<Self, MavlinkError> {
        // The endpoint first (`validate` checks it first too), keeping its typed error.
        let address = parse_endpoint(&cfg.endpoint).map_err(MavlinkError::Endpoint)?;
        cfg.validate()
            .map_err(|(field, reason)| MavlinkError::Config { field, reason })?;
        let class_id = resolve_class(labels, &cfg.target_class)?;
        let connect_err = |source| MavlinkError::Connect {
            endpoint: cfg.endpoint.clone(),
            source,
        };
        let mut conn = address.connect::<MavMessage>().map_err(connect_err)?;
        conn.set_protocol_version(cfg.version());
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = MavlinkStats::default();
        let link = Link {
            conn,
            header: MavHeader {
                system_id: u32::from(cfg.system_id),
                component_id: cfg.component_id,
                sequence: 0,
            },
            period: Duration::from_secs_f64(1.0 / cfg.heartbeat_hz),
            endpoint: cfg.endpoint.clone(),
            counters: stats.0.clone(),
            errors: RateLimitedLog::new("MAVLink: cannot send"),
        };
        let thread = {
            let (rx, stop) = (rx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mavlink".into())
                .spawn(move || link.run(&rx, &stop))
                .map_err(MavlinkError::Thread)?
        };
        log::info!(
            "MAVLink: LANDING_TARGET for {:?} (class {class_id}) to {} as {}/{}, MAVLink {}, heartbeat {} Hz",
            cfg.target_class,
            cfg.endpoint,
            cfg.system_id,
            cfg.component_id,
            cfg.mavlink_version,
            cfg.heartbeat_hz
        );
        Ok(Self {
            tx: Some(tx),
            rx,
            stop,
            stats,
            thread: Some(thread),
            intrinsics,
            class_id,
            target_num: cfg.target_num,
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> MavlinkCounters {
        self.stats.get()
    }

    /// A handle on the counters that stays valid after the sink is moved or dropped.
    pub fn stats(&self) -> MavlinkStats {
        self.stats.clone()
    }

    /// The class id the sink looks for.
    pub fn class_id(&self) -> u32 {
        self.class_id
    }
}

impl Sink for MavlinkSink {
    fn publish(&mut self, frame: &Published<'_>) -> Result<(), SinkError> {
        if let (Some(msg), Some(tx)) = (
            landing_target(frame, &self.intrinsics, self.class_id, self.target_num),
            &self.tx,
        ) {
            offer(tx, &self.rx, msg, &self.stats.0.dropped);
        }
        Ok(())
    }
}

impl Drop for MavlinkSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None; // wakes the thread at once
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the mavlink thread panicked");
            }
        }
        let c = self.stats.get();
        log::debug!(
            "MAVLink stopped: {} landing targets, {} heartbeats, {} dropped, {} send errors",
            c.landing_targets,
            c.heartbeats,
            c.dropped,
            c.send_errors
        );
    }
}

/// The `mavlink` thread's state.
struct Link {
    conn: mavlink::Connection<MavMessage>,
    header: MavHeader,
    period: Duration,
    endpoint: String,
    counters: Arc<Counters>,
    errors: RateLimitedLog,
}

impl Link {
    fn run(mut self, rx: &Receiver<LANDING_TARGET_DATA>, stop: &AtomicBool) {
        let mut next_heartbeat = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_heartbeat {
                self.send(&MavMessage::HEARTBEAT(heartbeat()), true);
                next_heartbeat += self.period;
                if next_heartbeat <= now {
                    // Far behind (a stalled link): resume the rhythm from now rather than bursting.
                    next_heartbeat = now + self.period;
                }
            }
            let wait = next_heartbeat.saturating_duration_since(Instant::now()).min(POLL);
            match rx.recv_timeout(wait) {
                Ok(msg) => self.send(&MavMessage::LANDING_TARGET(msg), false),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn send(&mut self, msg: &MavMessage, is_heartbeat: bool) {
        match self.conn.send(&self.header, msg) {
            Ok(_) => {
                let c = if is_heartbeat {
                    &self.counters.heartbeats
                } else {
                    &self.counters.landing_targets
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.errors.admit(Instant::now()) {
                    log::warn!(
                        "MAVLink: cannot send to {}: {e} ({suppressed} more errors since the last report)",
                        self.endpoint
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_core::detection::Detection;
    use kestrel_core::published::FrameTimes;
    use kestrel_vision::angles::IntrinsicsConfig;

    fn cam() -> Intrinsics {
        Intrinsics::new(&IntrinsicsConfig {
            fx: 500.0,
            fy: 480.0,
            cx: 319.5,
            cy: 239.5,
            width: 640,
            height: 480,
            distortion: vec![],
        })
        .unwrap()
    }

    fn det(class_id: u32, score: f32, bbox: [f32; 4]) -> Detection {
        Detection {
            class_id,
            score,
            bbox: kestrel_core::geometry::ImageBox::new(bbox),
        }
    }

    fn frame<'a>(dets: &'a [Detection], angles: &'a [[f32; 2]], labels: &'a [String]) -> Published<'a> {
        Published {
            seq: 3,
            capture_ns: 12_345_678_901,
            capture_realtime_ns: 1_700_000_000_000_000_000,
            publish_ns: 12_355_678_901,
            times: FrameTimes::default(),
            width: 640,
            height: 480,
            detections: dets,
            angles,
            labels,
            fps: 30.0,
        }
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = MavlinkConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.endpoint, "udpout:127.0.0.1:14550");
        assert_eq!((c.system_id, c.component_id, c.target_num), (1, 191, 0));
        assert_eq!((c.heartbeat_hz, c.mavlink_version), (1.0, 2));
        assert_eq!(c.validate(), Ok(()));
        // An empty table is the defaults.
        let parsed: MavlinkConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, c);
        assert!(toml::from_str::<MavlinkConfig>("enabled = true\nbogus = 1").is_err());
    }

    #[test]
    fn bad_values_name_the_field() {
        let ok = MavlinkConfig {
            enabled: true,
            target_class: "pad".into(),
            ..MavlinkConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |f: &dyn Fn(&mut MavlinkConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(field(&|c| c.target_class.clear()).0, "mavlink.target_class");
        assert_eq!(field(&|c| c.system_id = 0).0, "mavlink.system_id");
        assert_eq!(field(&|c| c.component_id = 0).0, "mavlink.component_id");
        assert_eq!(field(&|c| c.heartbeat_hz = 0.0).0, "mavlink.heartbeat_hz");
        assert_eq!(field(&|c| c.heartbeat_hz = f64::NAN).0, "mavlink.heartbeat_hz");
        assert_eq!(field(&|c| c.heartbeat_hz = 51.0).0, "mavlink.heartbeat_hz");
        assert_eq!(field(&|c| c.mavlink_version = 3).0, "mavlink.mavlink_version");
        let mut v1 = ok.clone();
        v1.mavlink_version = 1;
        assert_eq!(v1.validate(), Ok(()));
        for bad in [
            "",
            "udpout",
            "udpout:localhost:14550",
            "udpout:127.0.0.1",
            "udpout:127.0.0.1:0",
            "udpin:0.0.0.0:14550",
            "tcpout:127.0.0.1:5760",
            "tcpin:0.0.0.0:5760",
            "file:/tmp/x",
            "serial:/dev/ttyS0",
            "serial:/dev/ttyS0:fast",
            "serial:ttyS0:57600",
        ] {
            let (f, reason) = field(&|c| c.endpoint = bad.into());
            assert_eq!(f, "mavlink.endpoint", "{bad}");
            assert!(reason.contains(&format!("{bad:?}")), "{bad}: {reason}");
        }
        for good in [
            "udpout:10.0.0.2:14550",
            "udpbcast:192.168.1.255:14550",
            "udpout:[::1]:14550",
            "serial:/dev/ttyTHS1:921600",
        ] {
            let mut c = ok.clone();
            c.endpoint = good.into();
            assert_eq!(c.validate(), Ok(()), "{good}");
        }
        // Disabled: the class may stay unset.
        let off = MavlinkConfig::default();
        assert!(off.target_class.is_empty() && off.validate().is_ok());
    }

    #[test]
    fn landing_target_for_the_best_detection_of_the_class() {
        let labels: Vec<String> = ["person", "pad"].iter().map(|s| s.to_string()).collect();
        let c = cam();
        // Best first: a person, then the best pad (centred 250 px right and 120 px above the axis), then a
        // worse pad.
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(1, 0.8, [520.0, 80.0, 620.0, 160.0]),
            det(1, 0.7, [300.0, 200.0, 340.0, 280.0]),
        ];
        let f = frame(&dets, &[], &labels);
        let m = landing_target(&f, &c, 1, 7).unwrap();
        assert_eq!(m.time_usec, 12_345_678);
        assert_eq!(m.target_num, 7);
        assert_eq!(m.frame, MavFrame::MAV_FRAME_BODY_FRD);
        assert!((f64::from(m.angle_x) - 0.5f64.atan()).abs() < 1e-6, "{}", m.angle_x);
        assert!((f64::from(m.angle_y) + 0.25f64.atan()).abs() < 1e-6, "{}", m.angle_y);
        // Angular size: edges at 200 and 300 px right of the axis (fx 500), 160 and 80 px above it (fy 480).
        let sx = 0.6f64.atan() - 0.4f64.atan();
        let sy = (-80.0f64 / 480.0).atan() - (-160.0f64 / 480.0).atan();
        assert!((f64::from(m.size_x) - sx).abs() < 1e-6, "{} {sx}", m.size_x);
        assert!((f64::from(m.size_y) - sy).abs() < 1e-6, "{} {sy}", m.size_y);
        assert_eq!(m.distance, 0.0);
        assert_eq!(m.mavtype, LandingTargetType::LANDING_TARGET_TYPE_VISION_OTHER);
        assert_eq!(m.position_valid, MavBool::MAV_BOOL_FALSE);
        assert_eq!((m.x, m.y, m.z, m.q), (0.0, 0.0, 0.0, [0.0; 4]));
        // The pipeline's angles, when present, are used as they are (index-matched to the detections).
        let angles = [[9.0, 9.0], [0.125, -0.25], [1.0, 1.0]];
        let m2 = landing_target(&frame(&dets, &angles, &labels), &c, 1, 7).unwrap();
        assert_eq!((m2.angle_x, m2.angle_y), (0.125, -0.25));
        assert_eq!((m2.size_x, m2.size_y), (m.size_x, m.size_y));
        // No detection of the class: nothing.
        assert!(landing_target(&frame(&dets[..1], &[], &labels), &c, 1, 0).is_none());
        assert!(landing_target(&frame(&[], &[], &labels), &c, 1, 0).is_none());
    }

    #[test]
    fn heartbeat_says_onboard_controller() {
        let h = heartbeat();
        assert_eq!(h.mavtype, MavType::MAV_TYPE_ONBOARD_CONTROLLER);
        assert_eq!(h.autopilot, MavAutopilot::MAV_AUTOPILOT_INVALID);
        assert_eq!(h.system_status, MavState::MAV_STATE_ACTIVE);
        assert_eq!((h.base_mode.bits(), h.custom_mode, h.mavlink_version), (0, 0, 3));
    }

    #[test]
    fn labels_resolve_or_are_refused() {
        let labels: Vec<String> = ["person", "pad"].iter().map(|s| s.to_string()).collect();
        assert_eq!(resolve_class(&labels, "pad").unwrap(), 1);
        let e = resolve_class(&labels, "car").unwrap_err().to_string();
        assert!(e.contains("\"car\"") && e.contains("person, pad"), "{e}");
        let cfg = MavlinkConfig {
            enabled: true,
            target_class: "car".into(),
            ..MavlinkConfig::default()
        };
        assert!(matches!(
            MavlinkSink::new(&cfg, cam(), &labels),
            Err(MavlinkError::UnknownClass { .. })
        ));
    }

    #[test]
    fn an_endpoint_that_cannot_be_opened_is_an_error() {
        let labels = vec!["pad".to_string()];
        let cfg = MavlinkConfig {
            enabled: true,
            target_class: "pad".into(),
            endpoint: "serial:/nonexistent/ttyKESTREL:57600".into(),
            ..MavlinkConfig::default()
        };
        let e = MavlinkSink::new(&cfg, cam(), &labels).err().unwrap();
        assert!(matches!(e, MavlinkError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/ttyKESTREL"), "{e}");
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let dropped = AtomicU64::new(0);
        for i in 0..QUEUE + 3 {
            offer(&tx, &rx, i, &dropped);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        let left: Vec<usize> = rx.try_iter().collect();
        assert_eq!(left, (3..QUEUE + 3).collect::<Vec<_>>());
    }
}
