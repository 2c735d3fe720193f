//! V4L2 camera source: format negotiation, mmap streaming, kernel timestamps and sequence numbers, and riding
//! through unplugs, fatal stream errors and stalls.
//!
//! State machine (all inside [`V4l2Source::next_frame`], on the capture thread):
//! - *starting / camera lost*: try to open the device every backoff step (`reconnect_min_ms` doubling to
//!   `reconnect_max_ms`); the device path is resolved again on every attempt, so a `/dev/v4l/by-id/…` link
//!   follows the camera to whatever `/dev/videoN` it comes back as.
//! - *streaming*: wait for a buffer in [`POLL`] slices (so a stop is noticed promptly); copy it out (packing
//!   away any line padding) into a pooled frame buffer and hand the driver its buffer back at once.
//!   `ENODEV` → camera lost; any other stream error (`EIO` after a fatal streaming error, …) → the stream is
//!   torn down and reopened; no frame for `dequeue_timeout_ms` → counted, then the same restart.
//!
//! While waiting, the directory holding the device path (`/dev`, `/dev/v4l/by-id`, …) is watched with inotify,
//! so a camera that reappears is opened at once rather than at the next backoff step.
//!
//! Configuration problems that retrying cannot fix (not a capture device, none of the wanted pixel formats)
//! end the source with an error, so the process exits non-zero.

mod colour;
pub mod devices;
pub mod negotiate;
pub mod stream;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use thiserror::Error;
use v4l::v4l_sys::{V4L2_CAP_STREAMING, V4L2_CAP_VIDEO_CAPTURE};
use v4l::video::Capture;
use v4l::{Device, FourCC, Fraction};

use self::negotiate::{Backoff, FormatOffer, LateCapture, SequenceGaps, SizeOffer};
use self::stream::{BufferInfo, MmapStream, PixFormat};
use super::{take_buffer, Cause, Source, SourceError, POLL};
use crate::config::{CameraFormat, SourceConfig};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::frame::{Frame, PixelFormat};
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::status::{SourceState, SourceStatus};
use kestrel_vision::yuv::YuvSpec;

/// errno values that mean "the device is not (yet, or no longer) there, or not ready": retry.
const RETRYABLE: [Errno; 11] = [
    Errno::PERM,   // } a node that just appeared is root-only until udev applies its rules; a wrong
    Errno::ACCESS, // } group stays visible in the "still waiting" warnings
    Errno::NOENT,  // no such node (yet)
    Errno::IO,
    Errno::NXIO,
    Errno::AGAIN,
    Errno::BUSY,  // another process streams from it
    Errno::NODEV, // unplugged
    Errno::PROTO, // UVC control transfer failed
    Errno::TIMEDOUT,
    Errno::INTR,
];

/// Camera settings taken from the `[source]` section.
#[derive(Clone, Debug)]
pub struct CameraConfig {
    pub device: PathBuf,
    pub pixel_formats: Vec<CameraFormat>,
    pub width: u32,
    pub height: u32,
    /// 0: the driver's default rate.
    pub fps_hz: f64,
    pub buffers: u32,
    pub dequeue_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl CameraConfig {
    pub fn from_source(cfg: &SourceConfig) -> Self {
        Self {
            device: cfg.device.clone(),
            pixel_formats: cfg.pixel_formats.clone(),
            width: cfg.width,
            height: cfg.height,
            fps_hz: cfg.fps_hz,
            buffers: cfg.buffers,
            dequeue_timeout: Duration::from_millis(cfg.dequeue_timeout_ms),
            reconnect_min: Duration::from_millis(cfg.reconnect_min_ms),
            reconnect_max: Duration::from_millis(cfg.reconnect_max_ms),
        }
    }
}

/// Why a camera could not be opened.
#[derive(Debug, Error)]
pub enum CameraError {
    /// A system call on the device failed (`what`: the call, or `open <path>`).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} ({card}, driver {driver}) is not a streaming video capture device (caps {caps:#x}); \
         multi-planar-only devices are not supported",
        device.display()
    )]
    NotCapture {
        device: PathBuf,
        card: String,
        driver: String,
        caps: u32,
    },
    #[error(
        "{} offers none of the pixel formats {wanted:?} (it offers {offered:?}); set source.pixel_formats",
        device.display()
    )]
    NoFormat {
        device: PathBuf,
        wanted: Vec<&'static str>,
        offered: Vec<String>,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// The format the driver set is not one we can read.
#[derive(Debug, Error, PartialEq)]
pub enum FormatError {
    #[error("asked for {} but the driver set {}", asked.name(), String::from_utf8_lossy(got))]
    Substituted { asked: CameraFormat, got: [u8; 4] },
    #[error("driver set an unusable size {width}x{height}")]
    Size { width: u32, height: u32 },
    #[error("driver set {width}x{height}, odd sides cannot be chroma-subsampled")]
    OddSides { width: u32, height: u32 },
}

/// Why one driver buffer holds no usable frame.
#[derive(Debug, Error, PartialEq)]
pub enum PackError {
    #[error("driver flagged the buffer as corrupt")]
    Flagged,
    #[error("{0} bytes is no JPEG")]
    NotJpeg(usize),
    #[error("buffer holds {len} bytes, {lines} lines need {need}")]
    Short { len: usize, lines: usize, need: usize },
    #[error("buffer holds {len} bytes, the luma plane needs {need}")]
    ShortLuma { len: usize, need: usize },
}

/// Why opening failed, and whether to try again.
#[derive(Debug)]
enum OpenError {
    /// Not there or not ready: try again later.
    Retry(CameraError),
    /// Retrying will not help (not a capture device, no usable format).
    Fatal(CameraError),
}

fn io_open_error(what: &str, e: io::Error) -> OpenError {
    let retry = matches!(Errno::from_io_error(&e), Some(code) if RETRYABLE.contains(&code));
    let err = CameraError::Io {
        what: what.to_string(),
        source: e,
    };
    if retry {
        OpenError::Retry(err)
    } else {
        OpenError::Fatal(err)
    }
}

/// The format the driver actually set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Negotiated {
    pub format: CameraFormat,
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    /// Bytes per line of the (first) plane as the driver lays it out.
    pub stride: u32,
    pub yuv: YuvSpec,
    /// Frame rate the driver reports after our request (0 if it cannot say).
    pub fps: f64,
}

struct Camera {
    /// Keeps the file descriptor open (the stream holds the handle too).
    _device: Device,
    stream: MmapStream,
    fmt: Negotiated,
    gaps: SequenceGaps,
    late: LateCapture,
    /// When the capture last dequeued a buffer (or opened the stream).
    last_frame: Instant,
    /// When it came back to wait on the driver after that (`None`: not yet).
    waiting_since: Option<Instant>,
}

pub struct V4l2Source {
    cfg: CameraConfig,
    name: String,
    pool: Pool<Vec<u8>>,
    spare: Option<Pooled<Vec<u8>>>,
    camera: Option<Camera>,
    status: Arc<SourceStatus>,
    backoff: Backoff,
    retry_at: Instant,
    /// When the current outage began (`None` while streaming and before the first open).
    outage_since: Option<Instant>,
    attempts: u32,
    last_wait_log: Instant,
    /// inotify on the device's directory while waiting for it (`None` if it cannot be watched).
    watch: Option<DirWatch>,
    /// The driver stamped a frame later than the time we dequeued it (vivid does); logged once.
    warned_future_ts: bool,
    /// Capture time of the previous frame (across reconnects), to keep capture times monotonic.
    last_capture_ns: u64,
    seq: u64,
    corrupt_log: kestrel_core::ratelog::RateLimitedLog,
    late_log: kestrel_core::ratelog::RateLimitedLog,
}

impl V4l2Source {
    /// Set up the source and try the camera once. A camera that is not there yet is not an error (the
    /// source keeps trying, `status()` says `starting`); one that can never work is.
    pub fn open(cfg: &SourceConfig, pool_size: usize) -> Result<Self, SourceError> {
        let cam = CameraConfig::from_source(cfg);
        let largest = cam.width as usize * cam.height as usize * 2;
        let mut s = Self {
            name: format!("v4l2:{}", cam.device.display()),
            backoff: Backoff::new(cam.reconnect_min, cam.reconnect_max),
            cfg: cam,
            pool: Pool::new(pool_size, || Vec::with_capacity(largest)),
            spare: None,
            camera: None,
            status: Arc::new(SourceStatus::default()),
            retry_at: Instant::now(),
            outage_since: None,
            attempts: 0,
            last_wait_log: Instant::now(),
            watch: None,
            warned_future_ts: false,
            last_capture_ns: 0,
            seq: 0,
            corrupt_log: kestrel_core::ratelog::RateLimitedLog::new("corrupt camera frame skipped"),
            late_log: kestrel_core::ratelog::RateLimitedLog::new("camera frames lost to a late capture"),
        };
        match s.try_open() {
            Ok(()) => {}
            Err(OpenError::Fatal(e)) => {
                return Err(SourceError::Open {
                    what: s.name.clone(),
                    source: Box::new(Cause::Camera(e)),
                })
            }
            Err(OpenError::Retry(reason)) => {
                log::warn!(
                    "camera {} not available yet ({reason}); waiting for it",
                    s.cfg.device.display()
                );
                s.outage_since = Some(Instant::now());
                s.retry_at = Instant::now() + s.backoff.next_delay();
            }
        }
        Ok(s)
    }

    fn try_open(&mut self) -> Result<(), OpenError> {
        self.attempts += 1;
        let camera = open_camera(&self.cfg)?;
        let f = camera.fmt;
        let node = resolve(&self.cfg.device);
        log::info!(
            "camera {} ({}): {} {}x{} (asked {}x{}), {}, {} buffers, {:?} {:?}",
            self.cfg.device.display(),
            node.display(),
            String::from_utf8_lossy(&f.fourcc),
            f.width,
            f.height,
            self.cfg.width,
            self.cfg.height,
            if f.fps > 0.0 {
                format!("{:.2} fps (asked {})", f.fps, fps_text(self.cfg.fps_hz))
            } else {
                format!("driver gives no frame rate (asked {})", fps_text(self.cfg.fps_hz))
            },
            camera.stream.buffer_count(),
            f.yuv.matrix,
            f.yuv.range,
        );
        if let Some(since) = self.outage_since.take() {
            let ms = since.elapsed().as_millis() as u64;
            self.status.last_outage_ms.store(ms, Relaxed);
            if self.status.losses.load(Relaxed) > 0 {
                log::warn!(
                    "camera back: {} after {ms} ms ({} attempts)",
                    self.cfg.device.display(),
                    self.attempts
                );
            }
        }
        self.attempts = 0;
        self.backoff.reset();
        self.watch = None;
        self.camera = Some(camera);
        self.status.set_state(SourceState::Streaming);
        Ok(())
    }

    /// Drop the camera (never panics) and schedule the reconnect.
    fn lose(&mut self, why: &str, unplugged: bool) {
        self.camera = None;
        self.status.losses.fetch_add(1, Relaxed);
        if !unplugged {
            self.status.restarts.fetch_add(1, Relaxed);
        }
        self.status.set_state(SourceState::CameraLost);
        self.outage_since = Some(Instant::now());
        self.last_wait_log = Instant::now();
        self.attempts = 0;
        self.backoff.reset();
        // A stream error is retried at once (the device is still there); an unplug after the first delay.
        self.retry_at = Instant::now()
            + if unplugged {
                self.backoff.next_delay()
            } else {
                Duration::ZERO
            };
        log::warn!(
            "camera lost: {}: {why}; {}",
            self.cfg.device.display(),
            if unplugged {
                format!(
                    "reconnecting every {}..{} ms",
                    self.cfg.reconnect_min.as_millis(),
                    self.cfg.reconnect_max.as_millis()
                )
            } else {
                "restarting the stream".to_string()
            }
        );
    }

    /// One reconnect attempt if it is due; otherwise sleep towards it (at most [`POLL`]).
    fn reconnect_step(&mut self) -> Result<(), SourceError> {
        let now = Instant::now();
        if now < self.retry_at {
            if self.watch.is_none() {
                self.watch = DirWatch::new(&self.cfg.device);
            }
            let wait = (self.retry_at - now).min(POLL);
            let changed = match self.watch.as_mut() {
                Some(w) => w.wait(wait),
                None => {
                    std::thread::sleep(wait);
                    false
                }
            };
            if !changed {
                return Ok(());
            }
            log::debug!(
                "camera {}: device directory changed, retrying now",
                self.cfg.device.display()
            );
        }
        match self.try_open() {
            Ok(()) => Ok(()),
            Err(OpenError::Retry(reason)) => {
                let delay = self.backoff.next_delay();
                self.retry_at = Instant::now() + delay;
                log::debug!(
                    "camera {}: attempt {} failed: {reason}",
                    self.cfg.device.display(),
                    self.attempts
                );
                if self.last_wait_log.elapsed() >= Duration::from_secs(10) {
                    self.last_wait_log = Instant::now();
                    log::warn!(
                        "still waiting for camera {} ({} attempts, {:.1} s; last: {reason})",
                        self.cfg.device.display(),
                        self.attempts,
                        self.outage_since.map_or(0.0, |t| t.elapsed().as_secs_f64())
                    );
                }
                Ok(())
            }
            Err(OpenError::Fatal(e)) => Err(SourceError::Failed {
                what: self.name.clone(),
                source: Box::new(Cause::Camera(e)),
            }),
        }
    }
}

fn fps_text(fps: f64) -> String {
    if fps > 0.0 {
        format!("{fps}")
    } else {
        "driver default".into()
    }
}

/// Open the device, check it can stream video, negotiate format/size/rate, map buffers, start streaming.
fn open_camera(cfg: &CameraConfig) -> Result<Camera, OpenError> {
    let path = &cfg.device;
    let dev = Device::with_path(path).map_err(|e| io_open_error(&format!("open {}", path.display()), e))?;
    let handle = dev.handle();
    let caps = stream::query_caps(&handle).map_err(|e| io_open_error("VIDIOC_QUERYCAP", e))?;
    if caps.device_caps & V4L2_CAP_VIDEO_CAPTURE == 0 || caps.device_caps & V4L2_CAP_STREAMING == 0 {
        return Err(OpenError::Fatal(CameraError::NotCapture {
            device: path.clone(),
            card: caps.card,
            driver: caps.driver,
            caps: caps.device_caps,
        }));
    }
    let offers = enumerate(&dev).map_err(|e| io_open_error("VIDIOC_ENUM_FMT", e))?;
    let Some(req) = negotiate::choose(&cfg.pixel_formats, &offers, (cfg.width, cfg.height)) else {
        let offered: Vec<String> = offers
            .iter()
            .map(|o| String::from_utf8_lossy(&o.fourcc).into_owned())
            .collect();
        let wanted: Vec<&'static str> = cfg.pixel_formats.iter().map(|f| f.name()).collect();
        return Err(OpenError::Fatal(CameraError::NoFormat {
            device: path.clone(),
            wanted,
            offered,
        }));
    };
    let pix =
        stream::set_format(&handle, req.fourcc, req.width, req.height).map_err(|e| io_open_error("VIDIOC_S_FMT", e))?;
    let fmt = accept_format(req.format, &pix).map_err(|e| OpenError::Fatal(e.into()))?;
    let fps = set_rate(&dev, cfg.fps_hz);
    let mut stream = MmapStream::new(handle, cfg.buffers).map_err(|e| io_open_error("VIDIOC_REQBUFS/mmap", e))?;
    stream.start().map_err(|e| io_open_error("VIDIOC_STREAMON", e))?;
    Ok(Camera {
        _device: dev,
        stream,
        fmt: Negotiated { fps, ..fmt },
        gaps: SequenceGaps::default(),
        late: LateCapture::default(),
        last_frame: Instant::now(),
        waiting_since: None,
    })
}

/// Check what the driver set is something we can read: the asked-for format (drivers may substitute), a
/// usable size and line pitch.
fn accept_format(asked: CameraFormat, pix: &PixFormat) -> Result<Negotiated, FormatError> {
    let got = CameraFormat::from_fourcc(pix.fourcc);
    if got != Some(asked) {
        return Err(FormatError::Substituted { asked, got: pix.fourcc });
    }
    let (w, h) = (pix.width, pix.height);
    if w == 0 || h == 0 || w > kestrel_vision::decode::MAX_SIDE || h > kestrel_vision::decode::MAX_SIDE {
        return Err(FormatError::Size { width: w, height: h });
    }
    let min_stride = match asked {
        CameraFormat::Mjpeg => 0,
        CameraFormat::Yuyv => w * 2,
        CameraFormat::Nv12 => w,
    };
    if asked != CameraFormat::Mjpeg && (w % 2 != 0 || (asked == CameraFormat::Nv12 && h % 2 != 0)) {
        return Err(FormatError::OddSides { width: w, height: h });
    }
    let stride = pix.bytesperline.max(min_stride);
    Ok(Negotiated {
        format: asked,
        fourcc: pix.fourcc,
        width: w,
        height: h,
        stride,
        yuv: colour::yuv_spec_from_v4l2(pix.colorspace, pix.ycbcr_enc, pix.quantization),
        fps: 0.0,
    })
}

/// Ask for a frame rate (0: leave the driver's); return the rate the driver reports.
fn set_rate(dev: &Device, fps: f64) -> f64 {
    let params = if fps > 0.0 {
        // interval = 1/fps as a fraction with millisecond-of-a-frame precision (30000/1001 style rates too)
        let den = (fps * 1000.0).round() as u32;
        match dev.set_params(&v4l::video::capture::Parameters::new(Fraction::new(1000, den))) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("camera does not take a frame rate ({e}); using its default");
                dev.params().ok()
            }
        }
    } else {
        dev.params().ok()
    };
    params
        .map(|p| p.interval)
        .filter(|i| i.numerator > 0 && i.denominator > 0)
        .map_or(0.0, |i| f64::from(i.denominator) / f64::from(i.numerator))
}

/// Formats and their sizes, as the device offers them.
pub fn enumerate(dev: &Device) -> io::Result<Vec<FormatOffer>> {
    let handle = dev.handle();
    stream::enum_formats(&handle)?
        .into_iter()
        .map(|(fourcc, _)| {
            Ok(FormatOffer {
                fourcc,
                sizes: size_offers(dev, fourcc),
            })
        })
        .collect()
}

/// The frame sizes a device offers for a format (`VIDIOC_ENUM_FRAMESIZES`; empty if it cannot say).
pub fn size_offers(dev: &Device, fourcc: [u8; 4]) -> Vec<SizeOffer> {
    dev.enum_framesizes(FourCC::new(&fourcc))
        .unwrap_or_default()
        .into_iter()
        .map(|s| match s.size {
            v4l::framesize::FrameSizeEnum::Discrete(d) => SizeOffer::Discrete {
                width: d.width,
                height: d.height,
            },
            v4l::framesize::FrameSizeEnum::Stepwise(s) => SizeOffer::Stepwise {
                min_width: s.min_width,
                max_width: s.max_width,
                step_width: s.step_width,
                min_height: s.min_height,
                max_height: s.max_height,
                step_height: s.step_height,
            },
        })
        .collect()
}

/// Copy one driver buffer into `out` as a tightly packed frame (line padding removed). Pure.
pub fn pack_frame(fmt: &Negotiated, data: &[u8], out: &mut Vec<u8>) -> Result<(), PackError> {
    let (w, h, stride) = (fmt.width as usize, fmt.height as usize, fmt.stride as usize);
    out.clear();
    let rows = |out: &mut Vec<u8>, plane: &[u8], row_bytes: usize, n: usize| -> Result<(), PackError> {
        let need = if n == 0 { 0 } else { stride * (n - 1) + row_bytes };
        if plane.len() < need {
            return Err(PackError::Short {
                len: plane.len(),
                lines: n,
                need,
            });
        }
        if stride == row_bytes {
            out.extend_from_slice(&plane[..row_bytes * n]);
        } else {
            for r in 0..n {
                out.extend_from_slice(&plane[r * stride..r * stride + row_bytes]);
            }
        }
        Ok(())
    };
    match fmt.format {
        CameraFormat::Mjpeg => {
            if data.len() < 4 {
                return Err(PackError::NotJpeg(data.len()));
            }
            out.extend_from_slice(data);
            Ok(())
        }
        CameraFormat::Yuyv => rows(out, data, w * 2, h),
        CameraFormat::Nv12 => {
            // Single-planar NV12: the CbCr plane follows the luma plane, same pitch.
            let luma_bytes = stride * h;
            if data.len() < luma_bytes {
                return Err(PackError::ShortLuma {
                    len: data.len(),
                    need: luma_bytes,
                });
            }
            rows(out, &data[..luma_bytes], w, h)?;
            rows(out, &data[luma_bytes..], w, h / 2)
        }
    }
}

impl Source for V4l2Source {
    fn name(&self) -> &str {
        &self.name
    }

    fn paced(&self) -> bool {
        true
    }

    fn status(&self) -> Option<Arc<SourceStatus>> {
        Some(self.status.clone())
    }

    fn next_frame(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Frame>, SourceError> {
        loop {
            if stop() {
                return Ok(None);
            }
            self.status.beat();
            // A buffer to copy into, taken before dequeueing so the driver's buffer is never held waiting.
            let mut buf = match self.spare.take() {
                Some(b) => b,
                None => match take_buffer(&self.pool, stop) {
                    Some(b) => b,
                    None => return Ok(None),
                },
            };
            let Some(cam) = self.camera.as_mut() else {
                self.spare = Some(buf);
                self.reconnect_step()?;
                continue;
            };
            let fmt = cam.fmt;
            cam.waiting_since.get_or_insert_with(Instant::now);
            let res = cam.stream.next_with(POLL, |data, info: BufferInfo| {
                let packed = if info.error {
                    Err(PackError::Flagged)
                } else {
                    pack_frame(&fmt, data, &mut buf)
                };
                (info, packed)
            });
            match res {
                Ok(Some((info, packed))) => {
                    let now = monotonic_ns();
                    // How late this dequeue was: the time the capture spent away from the driver before it
                    // came back to wait, or — when the whole process was held up (descheduled, stopped) while
                    // "waiting" — how long the buffer had been done before we took it.
                    let away = cam
                        .waiting_since
                        .take()
                        .map_or(Duration::ZERO, |w| w.saturating_duration_since(cam.last_frame))
                        .max(Duration::from_nanos(
                            info.monotonic_ns.map_or(0, |t| now.saturating_sub(t)),
                        ));
                    cam.last_frame = Instant::now();
                    let missed = cam.gaps.observe(info.sequence);
                    let buffers = cam.stream.buffer_count() as u32;
                    let ours = cam.late.observe(now, away, missed, buffers, fmt.fps);
                    if missed > 0 {
                        self.status.driver_drops.fetch_add(missed, Relaxed);
                    }
                    if ours > 0 {
                        self.status.capture_late_drops.fetch_add(ours, Relaxed);
                        self.late_log.warn(&format!(
                            "the driver dropped {ours} frame(s) because kestrel's capture was away {} ms \
                             (longer than its {buffers} buffers last)",
                            cam.late.last_absence().as_millis()
                        ));
                    }
                    // A corrupt or short buffer still took its sequence number (so it is not a driver drop).
                    if let Err(why) = packed {
                        self.status.corrupt_frames.fetch_add(1, Relaxed);
                        self.corrupt_log.warn(&why);
                        self.spare = Some(buf);
                        continue;
                    }
                    // The kernel timestamp when it is CLOCK_MONOTONIC, but never later than now (a frame cannot be
                    // captured after we dequeued it; vivid stamps the nominal end of the frame period) nor
                    // earlier than the previous frame.
                    let stamped = info.monotonic_ns.unwrap_or(now);
                    if stamped > now && !self.warned_future_ts {
                        self.warned_future_ts = true;
                        log::info!(
                            "camera {}: driver timestamps run {:.1} ms ahead of the clock; using dequeue time for those",
                            self.cfg.device.display(),
                            (stamped - now) as f64 / 1e6
                        );
                    }
                    let capture_ns = stamped.min(now).max(self.last_capture_ns + 1);
                    self.last_capture_ns = capture_ns;
                    self.seq += 1;
                    let (format, width, height) = match fmt.format {
                        CameraFormat::Mjpeg => (PixelFormat::Jpeg, 0, 0),
                        CameraFormat::Yuyv => (PixelFormat::Yuyv, fmt.width, fmt.height),
                        CameraFormat::Nv12 => (PixelFormat::Nv12, fmt.width, fmt.height),
                    };
                    return Ok(Some(Frame {
                        seq: self.seq,
                        capture_ns,
                        format,
                        width,
                        height,
                        yuv: fmt.yuv,
                        data: buf,
                    }));
                }
                Ok(None) => {
                    self.spare = Some(buf);
                    if cam.last_frame.elapsed() >= self.cfg.dequeue_timeout {
                        self.status.dequeue_timeouts.fetch_add(1, Relaxed);
                        let why = format!(
                            "no frame for {} ms (dequeue timeout)",
                            self.cfg.dequeue_timeout.as_millis()
                        );
                        self.lose(&why, false);
                    }
                }
                Err(e) => {
                    self.spare = Some(buf);
                    let unplugged = Errno::from_io_error(&e) == Some(Errno::NODEV);
                    let why = if unplugged {
                        format!("device gone ({e})")
                    } else {
                        format!("stream error ({e})")
                    };
                    self.lose(&why, unplugged);
                }
            }
        }
    }
}

/// An inotify watch on the directory that holds the device path (e.g. `/dev/v4l/by-id`, where udev adds the
/// link) and on `/dev` (where the node appears): anything created, renamed into or changed there may be the
/// camera coming back.
struct DirWatch {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
}

impl DirWatch {
    fn new(device: &Path) -> Option<Self> {
        use rustix::fs::inotify;
        let dir = device.parent().filter(|d| !d.as_os_str().is_empty())?;
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).ok()?;
        let flags = inotify::WatchFlags::CREATE | inotify::WatchFlags::ATTRIB | inotify::WatchFlags::MOVED_TO;
        let mut watched = 0;
        for d in [dir, Path::new("/dev")] {
            if watched > 0 && d == dir {
                continue;
            }
            match inotify::add_watch(&fd, d, flags) {
                Ok(_) => watched += 1,
                Err(e) => log::debug!("cannot watch {}: {e}", d.display()),
            }
        }
        (watched > 0).then(|| Self { fd, buf: vec![0; 4096] })
    }

    /// Wait up to `timeout` for a change; true if something changed (events are drained).
    fn wait(&mut self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let ready = {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
        };
        if !ready {
            return false;
        }
        while matches!(rustix::io::read(&self.fd, &mut self.buf[..]), Ok(n) if n > 0) {}
        true
    }
}

/// The node a path resolves to now (for messages).
pub fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(format: CameraFormat, w: u32, h: u32, stride: u32) -> Negotiated {
        Negotiated {
            format,
            fourcc: *b"YUYV",
            width: w,
            height: h,
            stride,
            yuv: YuvSpec::BT601_LIMITED,
            fps: 0.0,
        }
    }

    #[test]
    fn packing_removes_line_padding_and_rejects_short_buffers() {
        // YUYV 4x2 with 12-byte lines (8 used).
        let data: Vec<u8> = (0..24).collect();
        let mut out = Vec::new();
        pack_frame(&fmt(CameraFormat::Yuyv, 4, 2, 12), &data, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17, 18, 19]);
        // The last line may end right after its pixels.
        pack_frame(&fmt(CameraFormat::Yuyv, 4, 2, 12), &data[..20], &mut out).unwrap();
        assert!(pack_frame(&fmt(CameraFormat::Yuyv, 4, 2, 12), &data[..19], &mut out).is_err());
        // Tight: copied as is.
        pack_frame(&fmt(CameraFormat::Yuyv, 4, 3, 8), &data, &mut out).unwrap();
        assert_eq!(out, data);
        // NV12 4x2, pitch 6: luma lines 0..4, 6..10; chroma at 12..16.
        let data: Vec<u8> = (0..18).collect();
        pack_frame(&fmt(CameraFormat::Nv12, 4, 2, 6), &data, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]);
        assert!(pack_frame(&fmt(CameraFormat::Nv12, 4, 2, 6), &data[..15], &mut out).is_err());
        // MJPEG: bytesused as is; an empty buffer is corrupt.
        pack_frame(&fmt(CameraFormat::Mjpeg, 0, 0, 0), &[0xff, 0xd8, 0xff, 0xd9], &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert!(pack_frame(&fmt(CameraFormat::Mjpeg, 0, 0, 0), &[], &mut out).is_err());
    }

    #[test]
    fn driver_format_substitution_and_odd_sizes_are_refused() {
        let pix = |fourcc: &[u8; 4], w, h, bpl| PixFormat {
            fourcc: *fourcc,
            width: w,
            height: h,
            bytesperline: bpl,
            sizeimage: 0,
            colorspace: v4l::v4l_sys::v4l2_colorspace_V4L2_COLORSPACE_SRGB,
            ycbcr_enc: 0,
            quantization: 0,
        };
        let ok = accept_format(CameraFormat::Yuyv, &pix(b"YUYV", 640, 480, 0)).unwrap();
        assert_eq!((ok.stride, ok.yuv), (1280, YuvSpec::BT601_LIMITED));
        assert_eq!(
            accept_format(CameraFormat::Yuyv, &pix(b"YUYV", 640, 480, 1536))
                .unwrap()
                .stride,
            1536
        );
        let e = accept_format(CameraFormat::Yuyv, &pix(b"RGB3", 640, 480, 0)).unwrap_err();
        assert_eq!(
            e,
            FormatError::Substituted {
                asked: CameraFormat::Yuyv,
                got: *b"RGB3"
            }
        );
        assert_eq!(e.to_string(), "asked for yuyv but the driver set RGB3");
        assert!(accept_format(CameraFormat::Nv12, &pix(b"NV12", 640, 481, 640)).is_err());
        assert!(accept_format(CameraFormat::Yuyv, &pix(b"YUYV", 0, 480, 0)).is_err());
        let m = accept_format(CameraFormat::Mjpeg, &pix(b"MJPG", 1280, 720, 0)).unwrap();
        assert_eq!(m.format, CameraFormat::Mjpeg);
    }

    #[test]
    fn a_missing_device_is_waited_for_and_stop_is_prompt() {
        let cfg = SourceConfig {
            kind: crate::config::SourceKind::V4l2,
            device: PathBuf::from("/nonexistent/kestrel-test-video0"),
            reconnect_min_ms: 10,
            reconnect_max_ms: 40,
            ..SourceConfig::default()
        };
        let mut s = V4l2Source::open(&cfg, 4).unwrap();
        assert_eq!(s.status().unwrap().state(), SourceState::Starting);
        let t0 = Instant::now();
        let r = s.next_frame(&|| t0.elapsed() > Duration::from_millis(150)).unwrap();
        assert!(r.is_none());
        assert!(t0.elapsed() < Duration::from_millis(400), "{:?}", t0.elapsed());
        // 10, 20, 40, 40 ms… → several attempts in 150 ms, none succeeded.
        assert!(s.attempts >= 3, "{}", s.attempts);
        assert_eq!(s.status().unwrap().state(), SourceState::Starting);
    }

    #[test]
    fn a_device_appearing_in_the_watched_directory_wakes_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("video0");
        let mut w = DirWatch::new(&dev).unwrap();
        assert!(!w.wait(Duration::from_millis(20)));
        std::fs::write(&dev, b"").unwrap();
        assert!(w.wait(Duration::from_millis(500)));
        // drained: quiet again
        assert!(!w.wait(Duration::from_millis(20)));
        // A directory that does not exist: still /dev is watched.
        assert!(DirWatch::new(Path::new("/nonexistent-dir/video0")).is_some());
    }

    #[test]
    fn a_file_that_is_not_a_camera_is_fatal() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let cfg = SourceConfig {
            kind: crate::config::SourceKind::V4l2,
            device: f.path().to_path_buf(),
            ..SourceConfig::default()
        };
        let e = V4l2Source::open(&cfg, 4).err().unwrap().to_string();
        assert!(e.contains("VIDIOC_QUERYCAP"), "{e}");
    }
}
