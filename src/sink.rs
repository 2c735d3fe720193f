//! Where results go. For now JSON Lines (stdout or a file), a human-readable text line, or nowhere; the
//! socket publisher implements the same trait later.

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::io::Write;
use thiserror::Error;

use crate::labels::label_for_str;
use crate::yolo::Candidate;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot write results: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot serialise results: {0}")]
    Json(#[from] serde_json::Error),
}

/// One published frame.
#[derive(Debug)]
pub struct Published<'a> {
    pub seq: u64,
    /// CLOCK_MONOTONIC ns.
    pub capture_ns: u64,
    pub publish_ns: u64,
    pub width: u32,
    pub height: u32,
    /// Boxes in image pixels, best first.
    pub detections: &'a [Candidate],
    pub labels: &'a [String],
    /// Published frames per second over the last metrics interval.
    pub fps: f64,
}

pub trait Sink: Send {
    fn publish(&mut self, frame: &Published<'_>) -> Result<(), SinkError>;
}

struct Dets<'a>(&'a [Candidate], &'a [String]);

impl Serialize for Dets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct D<'b> {
            class_id: u32,
            label: &'b str,
            score: f32,
            #[serde(rename = "box")]
            bbox: [f32; 4],
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for c in self.0 {
            seq.serialize_element(&D {
                class_id: c.class_id,
                label: label_for_str(self.1, c.class_id),
                score: c.score,
                bbox: c.bbox,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    capture_ns: u64,
    publish_ns: u64,
    latency_ms: f64,
    width: u32,
    height: u32,
    detections: Dets<'a>,
}

/// JSON Lines: one object per frame, flushed per line. The line buffer is reused.
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
        let line = Line {
            seq: f.seq,
            capture_ns: f.capture_ns,
            publish_ns: f.publish_ns,
            latency_ms: f.publish_ns.saturating_sub(f.capture_ns) as f64 / 1e6,
            width: f.width,
            height: f.height,
            detections: Dets(f.detections, f.labels),
        };
        serde_json::to_writer(&mut self.buf, &line)?;
        self.buf.push(b'\n');
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

    #[test]
    fn json_line_has_the_documented_fields() {
        let mut out = Vec::new();
        let dets = [Candidate {
            class_id: 1,
            score: 0.5,
            bbox: [1.0, 2.0, 3.0, 4.0],
        }];
        let labels = vec!["a".to_string()];
        let f = Published {
            seq: 7,
            capture_ns: 1_000_000,
            publish_ns: 3_500_000,
            width: 64,
            height: 48,
            detections: &dets,
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
