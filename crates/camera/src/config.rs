//! The `[source]` section of the configuration (the daemon's config file aggregates it; it validates the
//! values and names the field when one is wrong).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Image files (a file or a directory of JPEG/PNG files), looped.
    Images,
    /// A file of concatenated JPEG frames (what MJPEG cameras produce).
    #[default]
    Mjpeg,
    /// Generated frames with moving shapes, for load tests.
    Synthetic,
    /// A V4L2 camera (`device`).
    V4l2,
}

/// Camera pixel formats Kestrel can take, in the names the config uses.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// Motion JPEG (`MJPG`, also `JPEG`): the camera compresses, least USB bandwidth.
    Mjpeg,
    /// Packed 4:2:2 (`YUYV`).
    Yuyv,
    /// Semi-planar 4:2:0 (`NV12`).
    Nv12,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticFormat {
    #[default]
    Jpeg,
    Rgb,
    Yuyv,
    Nv12,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// `images`: a file or directory; `mjpeg`: a file. Relative paths are relative to the config file.
    pub path: PathBuf,
    /// Frame pacing in frames per second; 0 delivers frames as fast as the pipeline takes them.
    pub fps_hz: f64,
    /// Start again at the first frame after the last (`images`, `mjpeg`); otherwise the source ends.
    pub loop_frames: bool,
    /// `synthetic`: frame size and pixel format.
    pub width: u32,
    pub height: u32,
    pub format: SyntheticFormat,
    /// `synthetic`: stop after this many frames (0: never).
    pub frames: u64,
    /// `synthetic`, for tests: after this many frames deliver nothing more but do not end (0: never) — a hung
    /// camera, to check that the watchdog fires.
    pub stall_after_frames: u64,
    /// `v4l2`: the device, by path; a stable `/dev/v4l/by-id/…` or `/dev/v4l/by-path/…` name survives the
    /// camera coming back as another `/dev/videoN`. Used as given (not relative to the config file).
    pub device: PathBuf,
    /// `v4l2`: pixel formats in order of preference; the first one the camera offers is used.
    pub pixel_formats: Vec<CameraFormat>,
    /// `v4l2`: mmap buffers the driver cycles through.
    pub buffers: u32,
    /// `v4l2`: no frame for this long while streaming counts as a dequeue timeout and restarts the stream.
    pub dequeue_timeout_ms: u64,
    /// `v4l2`: after losing the camera, retry opening it after this long, doubling up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Mjpeg,
            path: PathBuf::from("demo/clip.mjpeg"),
            fps_hz: 15.0,
            loop_frames: true,
            width: 1920,
            height: 1080,
            format: SyntheticFormat::Jpeg,
            frames: 0,
            stall_after_frames: 0,
            device: PathBuf::from("/dev/video0"),
            pixel_formats: vec![CameraFormat::Mjpeg, CameraFormat::Yuyv, CameraFormat::Nv12],
            buffers: 4,
            dequeue_timeout_ms: 2000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 2000,
        }
    }
}
