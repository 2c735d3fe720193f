//! Frames as they travel from a source into the pipeline.

use crate::pool::Pooled;
use crate::yuv::YuvSpec;

/// Pixel layout of a frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// One encoded JPEG image (size known after decoding its header).
    Jpeg,
    /// Packed 4:2:2 Y0 U Y1 V, `width * height * 2` bytes.
    Yuyv,
    /// Planar Y then interleaved UV at half resolution, `width * height * 3 / 2` bytes.
    Nv12,
    /// Packed RGB8, `width * height * 3` bytes.
    Rgb,
}

/// One captured frame. `data` is a pooled buffer: dropping the frame returns it.
#[derive(Debug)]
pub struct Frame {
    /// Source sequence number, strictly increasing.
    pub seq: u64,
    /// Capture time, CLOCK_MONOTONIC nanoseconds.
    pub capture_ns: u64,
    pub format: PixelFormat,
    /// Pixel size; 0 for JPEG until decoded.
    pub width: u32,
    pub height: u32,
    /// How YUYV/NV12 samples map to RGB (from the driver's format; ignored for JPEG and RGB).
    pub yuv: YuvSpec,
    pub data: Pooled<Vec<u8>>,
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock V4L2 timestamps use).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME now, in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
