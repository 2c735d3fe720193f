//! One frame's results as every output (socket, MAVLink, files) receives them.

use crate::detection::Detection;

/// Per-frame stage times, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct FrameTimes {
    /// Capture until a preprocessing worker took the frame.
    pub queue_ms: f32,
    pub decode_ms: f32,
    pub letterbox_ms: f32,
    pub infer_ms: f32,
    pub postprocess_ms: f32,
}

/// One published frame.
#[derive(Debug)]
pub struct Published<'a> {
    pub seq: u64,
    /// CLOCK_MONOTONIC ns.
    pub capture_ns: u64,
    /// The same instant on CLOCK_REALTIME (ns since the Unix epoch).
    pub capture_realtime_ns: u64,
    /// CLOCK_MONOTONIC ns.
    pub publish_ns: u64,
    pub times: FrameTimes,
    pub width: u32,
    pub height: u32,
    /// Boxes in image pixels, best first.
    pub detections: &'a [Detection],
    /// `[angle_x, angle_y]` (radians) of each detection's box centre when camera intrinsics are configured;
    /// empty otherwise.
    pub angles: &'a [[f32; 2]],
    pub labels: &'a [String],
    /// Published frames per second over the last metrics interval.
    pub fps: f64,
}
