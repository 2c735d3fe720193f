//! Kestrel's frame sources behind one trait, so the V4L2 camera ([`v4l2`]) slots in beside the file
//! ([`images`], [`mjpeg`]) and [`synthetic`] sources. A source owns its buffers (a [`Pool`]) and its
//! health counters ([`SourceStatus`]); the daemon's capture thread drives it.

pub mod config;
#[cfg(test)]
mod hand_constants;
pub mod images;
pub mod mjpeg;
pub mod synthetic;
pub mod v4l2;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::config::{SourceConfig, SourceKind};
use kestrel_core::frame::Frame;
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::status::SourceStatus;

/// How long any blocking wait inside a source may last before it re-checks the stop flag.
pub const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot open source {what}: {source}")]
    Open {
        what: String,
        #[source]
        source: Box<Cause>,
    },
    #[error("source {what} failed: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<Cause>,
    },
}

/// Why a source could not open, or stopped for good.
#[derive(Debug, Error)]
pub enum Cause {
    /// Reading the file, or listing the directory, the source was given.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// One file of an `images` directory.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// One image that does not decode.
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: kestrel_vision::decode::DecodeError,
    },
    #[error("no .jpg, .jpeg or .png files")]
    NoImages,
    #[error("no complete JPEG frame in the file")]
    NoJpegFrame,
    /// A synthetic frame's pixels do not fill its size.
    #[error("frame buffer size")]
    FrameSize,
    /// Encoding a synthetic JPEG frame.
    #[error(transparent)]
    Encode(#[from] image::ImageError),
    #[error(transparent)]
    Camera(#[from] v4l2::CameraError),
}

/// Something that produces frames. `next_frame` blocks until the next frame is due (pacing), but returns
/// within [`POLL`] of `stop()` turning true. `Ok(None)` means the source has ended (or was stopped).
pub trait Source: Send {
    fn name(&self) -> &str;
    /// True when frames arrive on their own clock (a camera, or a file source paced at `fps_hz`): then the
    /// newest frame wins and older ones are dropped. False for an unpaced file source, which delivers frames
    /// only as fast as the pipeline takes them (nothing dropped, no busy loop).
    fn paced(&self) -> bool;
    fn next_frame(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Frame>, SourceError>;
    /// Live health of a source that can lose its device (a camera); `None` for file and synthetic sources.
    fn status(&self) -> Option<Arc<SourceStatus>> {
        None
    }
}

/// Frame buffers in flight at once: capture queue + worker inputs + one being filled, with slack.
pub fn buffer_pool_size(workers: usize, queue_depth: usize) -> usize {
    workers + queue_depth + 3
}

/// Build the source a config describes.
pub fn open(cfg: &SourceConfig, pool_size: usize) -> Result<Box<dyn Source>, SourceError> {
    Ok(match cfg.kind {
        SourceKind::Images => Box::new(images::ImagesSource::open(
            &cfg.path,
            cfg.fps_hz,
            cfg.loop_frames,
            pool_size,
        )?),
        SourceKind::Mjpeg => Box::new(mjpeg::MjpegSource::open(
            &cfg.path,
            cfg.fps_hz,
            cfg.loop_frames,
            pool_size,
        )?),
        SourceKind::Synthetic => Box::new(synthetic::SyntheticSource::new(cfg, pool_size)?),
        SourceKind::V4l2 => Box::new(v4l2::V4l2Source::open(cfg, pool_size)?),
    })
}

/// Frame pacing at a fixed rate on the monotonic clock. Late frames are not made up for: after a stall the
/// schedule restarts from now, so a source never bursts.
pub struct Pacer {
    interval: Option<Duration>,
    next_due: Option<Instant>,
}

impl Pacer {
    pub fn is_paced(&self) -> bool {
        self.interval.is_some()
    }

    pub fn new(fps_hz: f64) -> Self {
        let interval = (fps_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / fps_hz));
        Self {
            interval,
            next_due: None,
        }
    }

    /// Sleep until the next frame is due. Returns false if `stop()` turned true meanwhile.
    pub fn wait(&mut self, stop: &dyn Fn() -> bool) -> bool {
        let Some(interval) = self.interval else {
            return !stop();
        };
        let now = Instant::now();
        let due = match self.next_due {
            Some(d) if d + interval > now => d,
            _ => now, // first frame, or we fell more than a frame behind
        };
        loop {
            if stop() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(POLL));
        }
        self.next_due = Some(due + interval);
        true
    }
}

/// Playback state shared by the file sources: which stored frame is next, looping, pacing, buffers.
pub(crate) struct Playback {
    next: usize,
    len: usize,
    seq: u64,
    loop_frames: bool,
    pacer: Pacer,
    pool: Pool<Vec<u8>>,
}

impl Playback {
    /// `len` stored frames of at most `largest` bytes.
    pub(crate) fn new(len: usize, largest: usize, fps_hz: f64, loop_frames: bool, pool_size: usize) -> Self {
        let pool = Pool::new(pool_size, || Vec::with_capacity(largest));
        Self {
            next: 0,
            len,
            seq: 0,
            loop_frames,
            pacer: Pacer::new(fps_hz),
            pool,
        }
    }

    pub(crate) fn paced(&self) -> bool {
        self.pacer.is_paced()
    }

    /// Wait for the next frame's turn: (stored frame index, sequence number, an empty buffer), or `None`
    /// when the frames ran out (not looping) or `stop()` turned true.
    pub(crate) fn advance(&mut self, stop: &dyn Fn() -> bool) -> Option<(usize, u64, Pooled<Vec<u8>>)> {
        if self.next == self.len {
            if !self.loop_frames {
                return None;
            }
            self.next = 0;
        }
        if !self.pacer.wait(stop) {
            return None;
        }
        let mut buf = take_buffer(&self.pool, stop)?;
        buf.clear();
        let index = self.next;
        self.next += 1;
        self.seq += 1;
        Some((index, self.seq, buf))
    }
}

/// Take a frame buffer, waiting (in [`POLL`] slices) while every buffer is in flight.
pub(crate) fn take_buffer(pool: &Pool<Vec<u8>>, stop: &dyn Fn() -> bool) -> Option<Pooled<Vec<u8>>> {
    loop {
        if stop() {
            return None;
        }
        if let Some(b) = pool.take_timeout(POLL) {
            return Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_the_rate_and_stops_promptly() {
        let mut p = Pacer::new(100.0);
        let t0 = Instant::now();
        for _ in 0..11 {
            assert!(p.wait(&|| false));
        }
        let e = t0.elapsed();
        assert!(
            e >= Duration::from_millis(100) && e < Duration::from_millis(400),
            "{e:?}"
        );
        let mut slow = Pacer::new(0.5);
        assert!(slow.wait(&|| false));
        let t0 = Instant::now();
        assert!(!slow.wait(&|| t0.elapsed() > Duration::from_millis(30)));
        assert!(t0.elapsed() < Duration::from_millis(200));
    }
}
