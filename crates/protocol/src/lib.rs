//! Protocol v1 of the detection socket (specified in docs/protocol.md): message types, JSON Lines and the
//! length-prefixed little-endian binary framing, encoders (allocation-free into reused buffers) and decoders
//! (for [`client`], `kestrel subscribe`, tests and fuzzing). Pure functions, plus the socket [`client`].
//!
//! It depends only on the core crate (and on the vision crate for label names): a flight-control program
//! can link it to read detections without pulling in ONNX Runtime or the daemon.

pub mod client;

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use kestrel_core::published::{FrameTimes, Published};
use kestrel_vision::labels::label_for_str;

/// Protocol major version: bumped only for changes old clients cannot ignore.
pub const VERSION: u8 = 1;

/// Binary message types (payload byte 0).
pub const TYPE_HELLO: u8 = 1;
pub const TYPE_DETECTIONS: u8 = 2;
pub const TYPE_STATUS: u8 = 3;
pub const TYPE_MISSED: u8 = 4;
pub const TYPE_ERROR: u8 = 5;
pub const TYPE_FORMAT: u8 = 6;

/// Fixed part of a binary `detections` payload and of one detection record, v1.
pub const DETECTIONS_HEADER_LEN: usize = 68;
pub const DETECTION_RECORD_LEN: usize = 32;
/// Header of the JSON-carrying binary payloads (hello, status, error): type, version, header length.
pub const JSON_PAYLOAD_HEADER_LEN: usize = 4;
/// Largest binary payload a reader should accept (a frame with 65 535 detections fits).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Record flag: `angle_x`/`angle_y` are valid (camera intrinsics configured).
pub const FLAG_ANGLES: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Binary,
}

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("message is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("binary payload too short: {got} bytes, need {need}")]
    Short { got: usize, need: usize },
    #[error("binary payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("bad binary header: header {header} / record {record} bytes")]
    HeaderSizes { header: usize, record: usize },
    #[error("bad binary header: header length {0}")]
    HeaderLength(usize),
}

/// Stage times in a message, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StagesMs {
    pub queue: f32,
    pub decode: f32,
    pub letterbox: f32,
    pub infer: f32,
    pub postprocess: f32,
}

impl From<FrameTimes> for StagesMs {
    fn from(t: FrameTimes) -> Self {
        Self {
            queue: t.queue_ms,
            decode: t.decode_ms,
            letterbox: t.letterbox_ms,
            infer: t.infer_ms,
            postprocess: t.postprocess_ms,
        }
    }
}

/// One detection as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class_id: u32,
    /// Empty in the binary format (labels come in `hello`); the client fills it in.
    #[serde(default)]
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The box divided by the image size: 0..1.
    pub box_norm: [f32; 4],
    /// Radians from the optical axis, right/down positive; absent without camera intrinsics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle_x: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angle_y: Option<f32>,
}

/// A `detections` message, decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detections {
    pub seq: u64,
    pub capture_ns: u64,
    pub capture_realtime_ns: u64,
    pub publish_ns: u64,
    pub latency_ms: f64,
    pub stages_ms: StagesMs,
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
}

/// The model a daemon runs (in `hello`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelHello {
    pub path: String,
    pub input_width: u32,
    pub input_height: u32,
    pub precision: String,
    pub layout: String,
}

/// Sent first on every connection (and again after a format switch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u8,
    pub kestrel: String,
    pub model: ModelHello,
    pub labels: Vec<String>,
    /// The source, e.g. `v4l2:/dev/video0`.
    pub camera: String,
    /// The ONNX Runtime execution provider actually in use: "tensorrt", "cuda" or "cpu".
    pub execution_provider: String,
    /// Present when a provider listed before it could not be used: which, and why (the WARN of the start-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider_fallback: Option<String>,
    /// What the provider computes in: "fp32", "fp16" (an FP16 model, or a TensorRT FP16 engine built from an
    /// FP32 model) or "int8". `model.precision` is the model's input type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_precision: Option<String>,
    pub intrinsics: bool,
    pub format: Format,
    /// Interval of `status` messages.
    pub status_interval_ms: u64,
    /// Over Zenoh: the key prefix this daemon publishes under (`<zenoh_key>/detections`, …); absent on the
    /// socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zenoh_key: Option<String>,
}

/// Overall health in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Frames flow; nothing abnormal in the last interval.
    Ok,
    /// Frames flow, but the last interval saw bad/corrupt frames, driver drops or stream restarts.
    Degraded,
    /// The camera is gone or not opened yet; the daemon is reconnecting.
    CameraLost,
    /// The camera is there but nothing has been published for `stall_ms`.
    Stalled,
}

/// Latency summary in `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f32,
    pub p99: f32,
}

/// Heartbeat, every `status_interval_ms`, whatever else happens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// CLOCK_MONOTONIC ns when it was made.
    pub time_ns: u64,
    pub health: Health,
    /// Why, in words (empty when ok).
    pub reason: String,
    pub uptime_s: f64,
    pub fps_in: f64,
    pub fps_out: f64,
    pub frames_captured: u64,
    pub frames_published: u64,
    /// Totals since start, by reason (pipeline drops and camera counters).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Capture → publish over the last interval.
    pub latency_ms: LatencyMs,
    /// Seconds since the last published frame (null before the first).
    pub last_publish_age_s: Option<f64>,
    pub camera: Option<kestrel_core::status::SourceSnapshot>,
    pub execution_provider: String,
    /// As in `hello`: present while running on a fallback provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider_fallback: Option<String>,
    pub subscribers: usize,
    /// Over Zenoh: the state of the Zenoh output (absent on the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zenoh: Option<ZenohStatus>,
}

/// The Zenoh output's state, in the `status` it publishes (docs/protocol.md, "Over Zenoh").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZenohStatus {
    /// The key prefix: messages go to `<key_prefix>/detections`, `/status`, `/hello`.
    pub key_prefix: String,
    /// `"peer"` or `"client"`.
    pub mode: String,
    /// Zenoh peers and routers this daemon has a session with now.
    pub sessions: usize,
    /// Whether some subscriber matches `<key_prefix>/detections` now.
    pub matching: bool,
    /// Detections messages put while a subscriber matched.
    pub sent: u64,
    /// Detections messages made while no subscriber matched (link down, or nobody listening): sent to no one.
    pub unmatched: u64,
    /// Detections messages dropped by the output's own latest-wins queue (its thread was behind).
    pub behind: u64,
    /// Puts that Zenoh refused.
    pub put_errors: u64,
    /// Times the last matching subscriber went away (link lost, station gone).
    pub outages: u64,
    /// How long no subscriber has matched, ms; null while one does.
    pub down_ms: Option<u64>,
    /// The last outage that ended: how long it lasted and how many detections messages it missed.
    pub last_outage: Option<Outage>,
}

/// A finished Zenoh outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub ms: u64,
    /// Detections messages made during it (none of them is sent later).
    pub missed: u64,
}

/// Everything a client can receive.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Hello(Box<Hello>),
    Detections(Detections),
    Status(Box<Status>),
    /// This subscriber fell behind and lost `count` messages just before the next one.
    Missed {
        count: u64,
    },
    /// The server refuses or ends the connection (e.g. too many subscribers).
    Error {
        error: String,
    },
    /// The last message in the old format after a format switch: what follows is in `format`.
    FormatSwitch {
        format: Format,
    },
    /// A message type this client does not know (newer server): skip it.
    Unknown {
        kind: String,
    },
}

// ---------------------------------------------------------------------------------------------- encoding

struct Dets<'a>(&'a Published<'a>);

impl Serialize for Dets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct D<'b> {
            class_id: u32,
            label: &'b str,
            score: f32,
            #[serde(rename = "box")]
            bbox: [f32; 4],
            box_norm: [f32; 4],
            #[serde(skip_serializing_if = "Option::is_none")]
            angle_x: Option<f32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            angle_y: Option<f32>,
        }
        let f = self.0;
        let (w, h) = (f.width.max(1) as f32, f.height.max(1) as f32);
        let mut seq = s.serialize_seq(Some(f.detections.len()))?;
        for (i, c) in f.detections.iter().enumerate() {
            let a = f.angles.get(i);
            let b = c.bbox;
            seq.serialize_element(&D {
                class_id: c.class_id,
                label: label_for_str(f.labels, c.class_id),
                score: c.score,
                bbox: b.xyxy(),
                box_norm: [b[0] / w, b[1] / h, b[2] / w, b[3] / h],
                angle_x: a.map(|a| a[0]),
                angle_y: a.map(|a| a[1]),
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct DetectionsLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    v: u8,
    seq: u64,
    capture_ns: u64,
    capture_realtime_ns: u64,
    publish_ns: u64,
    latency_ms: f64,
    stages_ms: StagesMs,
    width: u32,
    height: u32,
    detections: Dets<'a>,
}

/// Append one `detections` JSON line (with `\n`) to `buf`. Allocation-free once `buf` has grown.
pub fn write_detections_json(f: &Published<'_>, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    serde_json::to_writer(
        &mut *buf,
        &DetectionsLine {
            kind: "detections",
            v: VERSION,
            seq: f.seq,
            capture_ns: f.capture_ns,
            capture_realtime_ns: f.capture_realtime_ns,
            publish_ns: f.publish_ns,
            latency_ms: f.publish_ns.saturating_sub(f.capture_ns) as f64 / 1e6,
            stages_ms: f.times.into(),
            width: f.width,
            height: f.height,
            detections: Dets(f),
        },
    )?;
    buf.push(b'\n');
    Ok(())
}

/// Append one binary `detections` frame (u32 LE length, then the payload) to `buf`.
pub fn write_detections_binary(f: &Published<'_>, buf: &mut Vec<u8>) {
    let count = f.detections.len().min(usize::from(u16::MAX));
    let len = DETECTIONS_HEADER_LEN + count * DETECTION_RECORD_LEN;
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(TYPE_DETECTIONS);
    buf.push(VERSION);
    buf.extend_from_slice(&(DETECTIONS_HEADER_LEN as u16).to_le_bytes());
    buf.extend_from_slice(&(DETECTION_RECORD_LEN as u16).to_le_bytes());
    buf.extend_from_slice(&(count as u16).to_le_bytes());
    for v in [f.seq, f.capture_ns, f.capture_realtime_ns, f.publish_ns] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&f.width.to_le_bytes());
    buf.extend_from_slice(&f.height.to_le_bytes());
    let t = f.times;
    for v in [t.queue_ms, t.decode_ms, t.letterbox_ms, t.infer_ms, t.postprocess_ms] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    for (i, c) in f.detections.iter().take(count).enumerate() {
        let angles = f.angles.get(i);
        buf.extend_from_slice(&(c.class_id.min(u32::from(u16::MAX)) as u16).to_le_bytes());
        buf.extend_from_slice(&(if angles.is_some() { FLAG_ANGLES } else { 0 }).to_le_bytes());
        buf.extend_from_slice(&c.score.to_le_bytes());
        for v in c.bbox.xyxy() {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        let [ax, ay] = angles.copied().unwrap_or([f32::NAN, f32::NAN]);
        buf.extend_from_slice(&ax.to_le_bytes());
        buf.extend_from_slice(&ay.to_le_bytes());
    }
}

/// Append a JSON message (`hello`, `status`, `error`, `missed`) in the given format. `kind` is its `type`.
pub fn write_json_message<T: Serialize>(kind: &str, body: &T, format: Format, buf: &mut Vec<u8>) {
    // {"type":…,"v":1, …fields of body…}
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        #[serde(rename = "type")]
        kind: &'a str,
        v: u8,
        #[serde(flatten)]
        body: &'a T,
    }
    let env = Envelope { kind, v: VERSION, body };
    match format {
        Format::Json => {
            // Serialising plain data structs into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, &env);
            buf.push(b'\n');
        }
        Format::Binary => {
            let type_byte = match kind {
                "hello" => TYPE_HELLO,
                "status" => TYPE_STATUS,
                "missed" => TYPE_MISSED,
                "format" => TYPE_FORMAT,
                _ => TYPE_ERROR,
            };
            let start = buf.len();
            buf.extend_from_slice(&[0; 4]);
            buf.push(type_byte);
            buf.push(VERSION);
            buf.extend_from_slice(&(JSON_PAYLOAD_HEADER_LEN as u16).to_le_bytes());
            let _ = serde_json::to_writer(&mut *buf, &env);
            let len = (buf.len() - start - 4) as u32;
            buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------- decoding

#[derive(Deserialize)]
struct Tagged {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    v: Option<u8>,
}

fn from_json<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ProtocolError> {
    Ok(serde_json::from_slice(line)?)
}

/// Decode one JSON message (a line, with or without its `\n`).
pub fn decode_json(line: &[u8]) -> Result<Message, ProtocolError> {
    let tag: Tagged = from_json(line)?;
    if let Some(v) = tag.v {
        if v != VERSION {
            return Err(ProtocolError::Version(v));
        }
    }
    #[derive(Deserialize)]
    struct Missed {
        count: u64,
    }
    #[derive(Deserialize)]
    struct Err_ {
        error: String,
    }
    Ok(match tag.kind.as_str() {
        "hello" => Message::Hello(Box::new(from_json(line)?)),
        "detections" => Message::Detections(from_json(line)?),
        "status" => Message::Status(Box::new(from_json(line)?)),
        "missed" => Message::Missed {
            count: from_json::<Missed>(line)?.count,
        },
        "error" => Message::Error {
            error: from_json::<Err_>(line)?.error,
        },
        "format" => {
            #[derive(Deserialize)]
            struct F {
                format: Format,
            }
            Message::FormatSwitch {
                format: from_json::<F>(line)?.format,
            }
        }
        other => Message::Unknown {
            kind: other.to_string(),
        },
    })
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([p[at], p[at + 1]])
}
fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}
fn u64_at(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}
fn f32_at(p: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(p, at))
}

/// Decode one binary payload (the bytes after the 4-byte length). Labels are filled from `labels` (from
/// `hello`) when given.
pub fn decode_binary(p: &[u8], labels: &[String]) -> Result<Message, ProtocolError> {
    let short = |need: usize| ProtocolError::Short { got: p.len(), need };
    if p.len() > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(p.len()));
    }
    if p.len() < 4 {
        return Err(short(4));
    }
    if p[1] != VERSION {
        return Err(ProtocolError::Version(p[1]));
    }
    let header = usize::from(u16_at(p, 2));
    match p[0] {
        TYPE_DETECTIONS => {
            if p.len() < DETECTIONS_HEADER_LEN {
                return Err(short(DETECTIONS_HEADER_LEN));
            }
            let rec = usize::from(u16_at(p, 4));
            let count = usize::from(u16_at(p, 6));
            if header < DETECTIONS_HEADER_LEN || rec < DETECTION_RECORD_LEN {
                return Err(ProtocolError::HeaderSizes { header, record: rec });
            }
            let need = header + count * rec;
            if p.len() < need {
                return Err(short(need));
            }
            let (width, height) = (u32_at(p, 40), u32_at(p, 44));
            let (w, h) = (width.max(1) as f32, height.max(1) as f32);
            let (capture_ns, publish_ns) = (u64_at(p, 16), u64_at(p, 32));
            let detections = (0..count)
                .map(|i| {
                    let r = header + i * rec;
                    let class_id = u32::from(u16_at(p, r));
                    let flags = u16_at(p, r + 2);
                    let bbox = [
                        f32_at(p, r + 8),
                        f32_at(p, r + 12),
                        f32_at(p, r + 16),
                        f32_at(p, r + 20),
                    ];
                    let angles = flags & FLAG_ANGLES != 0;
                    Detection {
                        class_id,
                        label: label_for_str(labels, class_id).to_string(),
                        score: f32_at(p, r + 4),
                        bbox,
                        box_norm: [bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h],
                        angle_x: angles.then(|| f32_at(p, r + 24)),
                        angle_y: angles.then(|| f32_at(p, r + 28)),
                    }
                })
                .collect();
            Ok(Message::Detections(Detections {
                seq: u64_at(p, 8),
                capture_ns,
                capture_realtime_ns: u64_at(p, 24),
                publish_ns,
                latency_ms: publish_ns.saturating_sub(capture_ns) as f64 / 1e6,
                stages_ms: StagesMs {
                    queue: f32_at(p, 48),
                    decode: f32_at(p, 52),
                    letterbox: f32_at(p, 56),
                    infer: f32_at(p, 60),
                    postprocess: f32_at(p, 64),
                },
                width,
                height,
                detections,
            }))
        }
        TYPE_HELLO | TYPE_STATUS | TYPE_MISSED | TYPE_ERROR | TYPE_FORMAT => {
            if header < JSON_PAYLOAD_HEADER_LEN || header > p.len() {
                return Err(ProtocolError::HeaderLength(header));
            }
            decode_json(&p[header..])
        }
        other => Ok(Message::Unknown {
            kind: format!("binary type {other}"),
        }),
    }
}

/// Split complete binary frames off the front of `buf`: `Some((payload range, frame length))`.
pub fn next_binary_frame(buf: &[u8]) -> Result<Option<(std::ops::Range<usize>, usize)>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((4..4 + len, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_core::detection::Detection;

    fn sample<'a>(dets: &'a [Detection], angles: &'a [[f32; 2]], labels: &'a [String]) -> Published<'a> {
        Published {
            seq: 42,
            capture_ns: 1_000_000_000,
            capture_realtime_ns: 1_764_000_000_123_456_789,
            publish_ns: 1_031_500_000,
            times: FrameTimes {
                queue_ms: 0.5,
                decode_ms: 1.25,
                letterbox_ms: 0.75,
                infer_ms: 27.0,
                postprocess_ms: 0.125,
            },
            width: 640,
            height: 480,
            detections: dets,
            angles,
            labels,
            fps: 30.0,
        }
    }

    #[test]
    fn json_and_binary_decode_to_the_same_message() {
        let labels = vec!["person".to_string(), "dog".to_string()];
        let dets = [
            Detection {
                class_id: 0,
                score: 0.9,
                bbox: kestrel_core::geometry::ImageBox::new([64.0, 48.0, 320.0, 240.0]),
            },
            Detection {
                class_id: 1,
                score: 0.5,
                bbox: kestrel_core::geometry::ImageBox::new([0.0, 0.0, 640.0, 480.0]),
            },
        ];
        for angles in [&[][..], &[[0.1f32, -0.2], [0.0, 0.0]][..]] {
            let f = sample(&dets, angles, &labels);
            let (mut j, mut b) = (Vec::new(), Vec::new());
            write_detections_json(&f, &mut j).unwrap();
            write_detections_binary(&f, &mut b);
            assert_eq!(*j.last().unwrap(), b'\n');
            let mj = decode_json(&j).unwrap();
            let (range, used) = next_binary_frame(&b).unwrap().unwrap();
            assert_eq!(used, b.len());
            assert_eq!(b.len(), 4 + DETECTIONS_HEADER_LEN + 2 * DETECTION_RECORD_LEN);
            let mb = decode_binary(&b[range], &labels).unwrap();
            assert_eq!(mj, mb);
            let Message::Detections(d) = mj else { panic!() };
            assert_eq!((d.seq, d.width, d.detections.len()), (42, 640, 2));
            assert_eq!(d.detections[0].label, "person");
            assert_eq!(d.detections[0].box_norm, [0.1, 0.1, 0.5, 0.5]);
            assert_eq!(d.latency_ms, 31.5);
            assert_eq!(d.detections[0].angle_x, angles.first().map(|a| a[0]));
        }
    }

    #[test]
    fn json_messages_in_both_formats() {
        #[derive(Serialize)]
        struct M {
            count: u64,
        }
        let (mut j, mut b) = (Vec::new(), Vec::new());
        write_json_message("missed", &M { count: 7 }, Format::Json, &mut j);
        write_json_message("missed", &M { count: 7 }, Format::Binary, &mut b);
        assert_eq!(
            std::str::from_utf8(&j).unwrap(),
            "{\"type\":\"missed\",\"v\":1,\"count\":7}\n"
        );
        let (r, _) = next_binary_frame(&b).unwrap().unwrap();
        assert_eq!(b[r.start], TYPE_MISSED);
        assert_eq!(decode_binary(&b[r], &[]).unwrap(), Message::Missed { count: 7 });
        assert_eq!(decode_json(&j).unwrap(), Message::Missed { count: 7 });
    }

    #[test]
    fn newer_and_broken_input_is_an_error_or_unknown_never_a_panic() {
        assert_eq!(
            decode_json(br#"{"type":"telemetry","v":1,"x":1}"#).unwrap(),
            Message::Unknown {
                kind: "telemetry".into()
            }
        );
        assert!(matches!(
            decode_json(br#"{"type":"status","v":2}"#),
            Err(ProtocolError::Version(2))
        ));
        assert!(matches!(decode_json(b"not json"), Err(ProtocolError::Json(_))));
        assert!(matches!(
            decode_binary(&[2, 1, 68, 0, 32, 0, 5, 0], &[]),
            Err(ProtocolError::Short { .. })
        ));
        let mut bad = [0u8; DETECTIONS_HEADER_LEN];
        bad[..8].copy_from_slice(&[2, 1, 8, 0, 32, 0, 0, 0]);
        let e = decode_binary(&bad, &[]).unwrap_err();
        assert_eq!(e.to_string(), "bad binary header: header 8 / record 32 bytes");
        assert!(decode_binary(&[2, 9, 0, 0], &[]).is_err());
        // extra trailing bytes and a longer record (a newer server) are fine
        let labels = vec!["a".to_string()];
        let dets = [Detection {
            class_id: 0,
            score: 0.5,
            bbox: kestrel_core::geometry::ImageBox::new([1.0, 2.0, 3.0, 4.0]),
        }];
        let f = sample(&dets, &[], &labels);
        let mut b = Vec::new();
        write_detections_binary(&f, &mut b);
        let mut p = b[4..].to_vec();
        p.extend_from_slice(&[0xAA; 16]);
        assert!(matches!(decode_binary(&p, &labels), Ok(Message::Detections(_))));
        assert!(next_binary_frame(&[0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes never panic any decoder (what a fuzzer would check first).
            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let labels = vec!["a".to_string()];
                let _ = decode_json(&bytes);
                let _ = decode_binary(&bytes, &labels);
                let _ = next_binary_frame(&bytes);
            }

            /// Mutated valid frames never panic either, and unmodified ones round-trip.
            #[test]
            fn mutated_frames_never_panic(
                n in 0usize..5,
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                cut in any::<usize>(),
            ) {
                let labels = vec!["person".to_string()];
                let dets: Vec<Detection> = (0..n)
                    .map(|i| Detection { class_id: i as u32, score: 0.5, bbox: kestrel_core::geometry::ImageBox::new([1.0, 2.0, 3.0, 4.0]) })
                    .collect();
                let f = sample(&dets, &[], &labels);
                let mut b = Vec::new();
                write_detections_binary(&f, &mut b);
                let ok = decode_binary(&b[4..], &labels).unwrap();
                let Message::Detections(d) = ok else { panic!("not detections") };
                prop_assert_eq!(d.detections.len(), n);
                for (at, v) in flips {
                    let i = at % b.len();
                    b[i] ^= v;
                }
                let end = 4 + cut % (b.len() - 3);
                let _ = decode_binary(&b[4.min(end)..end], &labels);
                let _ = next_binary_frame(&b);
            }
        }
    }
}
