//! Where results go: the [`Sink`] trait every output implements (the socket publisher and MAVLink too), and
//! the simple ones: JSON Lines (stdout or a file), a human-readable text line, or nowhere.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

use kestrel_core::published::Published;
use kestrel_vision::labels::label_for_str;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot write results: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot serialise results: {0}")]
    Json(#[from] serde_json::Error),
}

pub trait Sink: Send {
    fn publish(&mut self, frame: &Published<'_>) -> Result<(), SinkError>;
}

type Pending = Arc<(AtomicBool, Mutex<Option<Box<dyn Sink>>>)>;

/// A sink that can be replaced while the pipeline runs (a configuration reload): the replacement is handed
/// over through a [`SinkSwap`] and taken by the sink thread before its next frame; the old one is dropped
/// there (which flushes it). Costs one relaxed atomic load per frame otherwise.
pub struct SwappableSink {
    current: Box<dyn Sink>,
    pending: Pending,
}

/// The handle that replaces a [`SwappableSink`]'s sink.
#[derive(Clone)]
pub struct SinkSwap(Pending);

impl SwappableSink {
    pub fn new(sink: Box<dyn Sink>) -> (Self, SinkSwap) {
        let pending: Pending = Arc::new((AtomicBool::new(false), Mutex::new(None)));
        (
            Self {
                current: sink,
                pending: pending.clone(),
            },
            SinkSwap(pending),
        )
    }
}

impl SinkSwap {
    /// Frames from the next one on go to `sink`.
    pub fn replace(&self, sink: Box<dyn Sink>) {
        *self.0 .1.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        self.0 .0.store(true, Ordering::Release);
    }
}

impl Sink for SwappableSink {
    fn publish(&mut self, frame: &Published<'_>) -> Result<(), SinkError> {
        if self.pending.0.load(Ordering::Relaxed) && self.pending.0.swap(false, Ordering::Acquire) {
            if let Some(next) = self.pending.1.lock().unwrap_or_else(|e| e.into_inner()).take() {
                self.current = next;
            }
        }
        self.current.publish(frame)
    }
}

/// JSON Lines: one object per frame — the protocol's `detections` message (docs/protocol.md) — flushed per
/// line. The line buffer is reused.
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write + Send> JsonLinesSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(4096),
        }
    }
}

impl<W: Write + Send> Sink for JsonLinesSink<W> {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        self.buf.clear();
        kestrel_protocol::write_detections_json(f, &mut self.buf)?;
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(())
    }
}

/// One human-readable line per frame: sequence, live fps, latency and the detections.
pub struct TextSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for TextSink<W> {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        let latency = f.publish_ns.saturating_sub(f.capture_ns) as f64 / 1e6;
        write!(
            self.out,
            "frame {:>6} | {:5.1} fps | {:6.1} ms |",
            f.seq, f.fps, latency
        )?;
        if f.detections.is_empty() {
            write!(self.out, " -")?;
        }
        for c in f.detections.iter().take(8) {
            write!(self.out, " {} {:.2}", label_for_str(f.labels, c.class_id), c.score)?;
        }
        if f.detections.len() > 8 {
            write!(self.out, " (+{})", f.detections.len() - 8)?;
        }
        writeln!(self.out)?;
        self.out.flush()?;
        Ok(())
    }
}

/// Discards everything (benchmarks).
pub struct NullSink;

impl Sink for NullSink {
    fn publish(&mut self, _: &Published<'_>) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_core::detection::Detection;
    use kestrel_core::published::FrameTimes;

    #[test]
    fn json_line_has_the_documented_fields() {
        let mut out = Vec::new();
        let dets = [Detection {
            class_id: 1,
            score: 0.5,
            bbox: kestrel_core::geometry::ImageBox::new([1.0, 2.0, 3.0, 4.0]),
        }];
        let labels = vec!["a".to_string()];
        let f = Published {
            seq: 7,
            capture_ns: 1_000_000,
            capture_realtime_ns: 1_700_000_000_000_000_000,
            publish_ns: 3_500_000,
            times: FrameTimes::default(),
            width: 64,
            height: 48,
            detections: &dets,
            angles: &[],
            labels: &labels,
            fps: 1.0,
        };
        JsonLinesSink::new(&mut out).publish(&f).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["latency_ms"], 2.5);
        assert_eq!(v["detections"][0]["label"], "class1");
        assert_eq!(v["detections"][0]["box"][3], 4.0);
        let mut text = Vec::new();
        TextSink::new(&mut text).publish(&f).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("frame      7 |") && text.contains("class1 0.50"),
            "{text}"
        );
    }
}
