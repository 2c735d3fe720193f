//! Pipeline metrics: counters, drops by reason, and per-stage latency percentiles over each reporting
//! interval. Recording is allocation-free (fixed sample rings) and cheap enough for every frame.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use kestrel_core::status::{SourceSnapshot, SourceState, SourceStatus};
use std::time::{Duration, Instant};

/// Samples kept per stage per interval; beyond that the ring overwrites the oldest.
const RING: usize = 4096;

/// Latency-measured stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Capture until a worker starts on the frame.
    Queue,
    /// JPEG decode / YUV conversion.
    Decode,
    /// Resize + pad + normalise.
    Letterbox,
    /// Capture until inference starts on the frame: its age then (freshness).
    AgeAtInfer,
    /// Prepared until inference took the frame: how long a prepared frame waited.
    PreparedWait,
    /// Inference ready for its next frame until it has one: time it waited for preprocessing.
    InferWait,
    /// ONNX Runtime `run`.
    Infer,
    /// YOLO decoding + NMS + mapping.
    Postprocess,
    /// Capture until the result is written by the sink.
    CaptureToPublish,
}

pub const STAGES: [Stage; 9] = [
    Stage::Queue,
    Stage::Decode,
    Stage::Letterbox,
    Stage::AgeAtInfer,
    Stage::PreparedWait,
    Stage::InferWait,
    Stage::Infer,
    Stage::Postprocess,
    Stage::CaptureToPublish,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Decode => "decode",
            Self::Letterbox => "letterbox",
            Self::AgeAtInfer => "age_at_infer",
            Self::PreparedWait => "prepared_wait",
            Self::InferWait => "infer_wait",
            Self::Infer => "infer",
            Self::Postprocess => "postprocess",
            Self::CaptureToPublish => "capture_to_publish",
        }
    }
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The capture queue was full: the oldest waiting frame made room for the newest.
    CaptureOverrun,
    /// The inference queue was full: the oldest prepared frame made room for the newest.
    PreparedOverrun,
    /// A newer prepared frame was waiting, so inference skipped this one.
    Stale,
    /// It finished preprocessing after a newer frame had been inferred.
    OutOfOrder,
    /// Decoding or converting it failed.
    BadFrame,
}

pub const DROPS: [DropReason; 5] = [
    DropReason::CaptureOverrun,
    DropReason::PreparedOverrun,
    DropReason::Stale,
    DropReason::OutOfOrder,
    DropReason::BadFrame,
];

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::CaptureOverrun => "capture_overrun",
            Self::PreparedOverrun => "prepared_overrun",
            Self::Stale => "stale",
            Self::OutOfOrder => "out_of_order",
            Self::BadFrame => "bad_frame",
        }
    }
}

struct Ring {
    samples: Vec<f32>,
    next: usize,
    count: u64,
    max: f32,
}

impl Ring {
    fn new() -> Self {
        Self {
            samples: Vec::with_capacity(RING),
            next: 0,
            count: 0,
            max: 0.0,
        }
    }
    fn push(&mut self, ms: f32) {
        if self.samples.len() < RING {
            self.samples.push(ms);
        } else {
            self.samples[self.next] = ms;
            self.next = (self.next + 1) % RING;
        }
        self.count += 1;
        self.max = self.max.max(ms);
    }
}

/// Latency summary of one stage over an interval, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f32,
    pub p99_ms: f32,
    pub max_ms: f32,
}

/// A point-in-time view of the pipeline, for logs and the publisher's status message.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Snapshot {
    pub uptime_s: f64,
    pub interval_s: f64,
    pub frames_captured: u64,
    pub frames_inferred: u64,
    pub frames_published: u64,
    /// Rates over the last interval.
    pub fps_in: f64,
    pub fps_out: f64,
    /// Totals since start, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Per stage, over the last interval.
    pub latency: Vec<(&'static str, Latency)>,
    /// Camera health, for sources that have a device.
    pub source: Option<SourceSnapshot>,
}

pub struct Metrics {
    started: Instant,
    captured: AtomicU64,
    inferred: AtomicU64,
    published: AtomicU64,
    drops: [AtomicU64; DROPS.len()],
    rings: Mutex<Vec<Ring>>,
    last: Mutex<(Instant, u64, u64)>,
    scratch: Mutex<Vec<f32>>,
    source: OnceLock<Arc<SourceStatus>>,
    /// CLOCK_MONOTONIC ns of the last published frame (0: none yet).
    pub last_publish_ns: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            captured: AtomicU64::new(0),
            inferred: AtomicU64::new(0),
            published: AtomicU64::new(0),
            drops: Default::default(),
            rings: Mutex::new(STAGES.iter().map(|_| Ring::new()).collect()),
            last: Mutex::new((now, 0, 0)),
            scratch: Mutex::new(Vec::with_capacity(RING)),
            source: OnceLock::new(),
            last_publish_ns: AtomicU64::new(0),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Drop totals by reason.
    pub fn drop_totals(&self) -> Vec<(&'static str, u64)> {
        DROPS.iter().map(|d| (d.name(), self.drops(*d))).collect()
    }

    /// One stage's latency over the current interval, without starting a new one.
    pub fn peek(&self, stage: Stage) -> Latency {
        let (mut samples, count, max_ms) = self.samples(stage);
        Latency {
            count,
            p50_ms: percentile(&mut samples, 0.50),
            p99_ms: percentile(&mut samples, 0.99),
            max_ms,
        }
    }

    /// One stage's `q`-quantile (0..=1) in ms over the current interval, without starting a new one.
    pub fn peek_quantile(&self, stage: Stage, q: f64) -> f32 {
        percentile(&mut self.samples(stage).0, q)
    }

    /// A copy of one stage's samples of the current interval, its count and its maximum.
    fn samples(&self, stage: Stage) -> (Vec<f32>, u64, f32) {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let r = &rings[stage as usize];
        (r.samples.clone(), r.count, r.max)
    }

    /// Include a source's health in snapshots (set once, at pipeline start).
    pub fn attach_source(&self, status: Arc<SourceStatus>) {
        let _ = self.source.set(status);
    }

    /// The attached source's live status (a camera), if any.
    pub fn source_status(&self) -> Option<&Arc<SourceStatus>> {
        self.source.get()
    }

    /// The attached source's health now.
    pub fn source(&self) -> Option<SourceSnapshot> {
        self.source.get().map(|s| s.snapshot())
    }

    pub fn captured(&self) {
        self.captured.fetch_add(1, Relaxed);
    }
    pub fn inferred(&self) {
        self.inferred.fetch_add(1, Relaxed);
    }
    pub fn published(&self) {
        self.published.fetch_add(1, Relaxed);
        self.last_publish_ns.store(kestrel_core::clock::monotonic_ns(), Relaxed);
    }
    pub fn dropped(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }
    pub fn drops(&self, why: DropReason) -> u64 {
        self.drops[why as usize].load(Relaxed)
    }
    pub fn published_total(&self) -> u64 {
        self.published.load(Relaxed)
    }
    pub fn captured_total(&self) -> u64 {
        self.captured.load(Relaxed)
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        let ms = d.as_secs_f32() * 1e3;
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings[stage as usize].push(ms);
    }

    /// Summarise and start a new interval.
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let (captured, inferred, published) = (
            self.captured.load(Relaxed),
            self.inferred.load(Relaxed),
            self.published.load(Relaxed),
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let interval = now.duration_since(last.0).as_secs_f64().max(1e-9);
        let (fps_in, fps_out) = (
            (captured - last.1) as f64 / interval,
            (published - last.2) as f64 / interval,
        );
        *last = (now, captured, published);
        drop(last);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let latency = STAGES
            .iter()
            .zip(rings.iter_mut())
            .map(|(stage, ring)| {
                scratch.clear();
                scratch.extend_from_slice(&ring.samples);
                let l = Latency {
                    count: ring.count,
                    p50_ms: percentile(&mut scratch, 0.50),
                    p99_ms: percentile(&mut scratch, 0.99),
                    max_ms: ring.max,
                };
                ring.samples.clear();
                (ring.next, ring.count, ring.max) = (0, 0, 0.0);
                (stage.name(), l)
            })
            .collect();
        Snapshot {
            uptime_s: now.duration_since(self.started).as_secs_f64(),
            interval_s: interval,
            frames_captured: captured,
            frames_inferred: inferred,
            frames_published: published,
            fps_in,
            fps_out,
            drops: DROPS.iter().map(|d| (d.name(), self.drops(*d))).collect(),
            latency,
            source: self.source(),
        }
    }
}

/// Nearest-rank percentile; 0 for no samples.
fn percentile(v: &mut [f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    *v.select_nth_unstable_by(k, f32::total_cmp).1
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in {:.1} fps, out {:.1} fps (frames in {}, out {})",
            self.fps_in, self.fps_out, self.frames_captured, self.frames_published
        )?;
        if let Some(c) = &self.source {
            match c.state {
                SourceState::Streaming => write!(f, " | camera streaming")?,
                SourceState::Starting => write!(f, " | camera not open yet ({:.1} s)", c.state_s)?,
                SourceState::CameraLost => write!(f, " | CAMERA LOST for {:.1} s", c.state_s)?,
            }
            let counters = [
                ("losses", c.losses),
                ("restarts", c.restarts),
                ("driver drops", c.driver_drops),
                ("corrupt", c.corrupt_frames),
                ("dequeue timeouts", c.dequeue_timeouts),
            ];
            for (name, v) in counters.iter().filter(|(_, v)| *v > 0) {
                write!(f, ", {name} {v}")?;
                if *name == "driver drops" && c.capture_late_drops > 0 {
                    write!(f, " (capture late {})", c.capture_late_drops)?;
                }
            }
            if c.last_outage_ms > 0 {
                write!(f, ", last outage {} ms", c.last_outage_ms)?;
            }
        }
        for (name, l) in &self.latency {
            if l.count > 0 {
                write!(
                    f,
                    " | {name} p50 {:.1} p99 {:.1} max {:.1} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                )?;
            }
        }
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|d| d.1 > 0)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        if !drops.is_empty() {
            write!(f, " | drops: {}", drops.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_intervals() {
        let m = Metrics::new();
        for i in 1..=100 {
            m.record(Stage::Infer, Duration::from_millis(i));
        }
        m.dropped(DropReason::Stale);
        m.captured();
        let s = m.snapshot();
        let (_, infer) = s.latency.iter().find(|(n, _)| *n == "infer").copied().unwrap();
        assert_eq!(infer.count, 100);
        assert!(
            (infer.p50_ms - 50.0).abs() < 0.01
                && (infer.p99_ms - 99.0).abs() < 0.01
                && (infer.max_ms - 100.0).abs() < 0.01
        );
        assert_eq!(s.drops.iter().find(|d| d.0 == "stale").unwrap().1, 1);
        assert_eq!(s.frames_captured, 1);
        // A new interval starts empty; totals carry on.
        let s2 = m.snapshot();
        assert_eq!(s2.latency.iter().find(|(n, _)| *n == "infer").unwrap().1.count, 0);
        assert_eq!(s2.drops.iter().find(|d| d.0 == "stale").unwrap().1, 1);
        assert!(s.to_string().contains("infer p50 50.0"), "{s}");
    }

    #[test]
    fn ring_keeps_the_newest_samples() {
        let m = Metrics::new();
        for i in 0..(RING as u64 + 10) {
            m.record(Stage::Decode, Duration::from_micros(i));
        }
        let s = m.snapshot();
        let l = s.latency.iter().find(|(n, _)| *n == "decode").unwrap().1;
        assert_eq!(l.count, RING as u64 + 10);
        assert!(l.max_ms > 4.0);
    }
}
