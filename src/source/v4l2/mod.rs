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

pub mod devices;
pub mod negotiate;
pub mod stream;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use v4l::v4l_sys::{V4L2_CAP_STREAMING, V4L2_CAP_VIDEO_CAPTURE};
use v4l::video::Capture;
use v4l::{Device, FourCC, Fraction};

use self::negotiate::{Backoff, FormatOffer, LateCapture, SequenceGaps, SizeOffer};
use self::stream::{BufferInfo, MmapStream, PixFormat};
use super::{take_buffer, Source, SourceError, SourceState, SourceStatus, POLL};
use crate::config::{CameraFormat, SourceConfig};
use crate::frame::{monotonic_ns, Frame, PixelFormat};
use crate::pool::{Pool, Pooled};
use crate::yuv::YuvSpec;

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

/// Why opening failed.
#[derive(Debug)]
enum OpenError {
    /// Not there or not ready: try again later.
    Retry(String),
    /// Retrying will not help (not a capture device, no usable format).
    Fatal(String),
}

fn io_open_error(what: &str, e: io::Error) -> OpenError {
    match Errno::from_io_error(&e) {
        Some(code) if RETRYABLE.contains(&code) => OpenError::Retry(format!("{what}: {e}")),
        _ => OpenError::Fatal(format!("{what}: {e}")),
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
    corrupt_log: crate::pipeline::RateLimitedLog,
    late_log: crate::pipeline::RateLimitedLog,
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
            corrupt_log: crate::pipeline::RateLimitedLog::new("corrupt camera frame skipped"),
            late_log: crate::pipeline::RateLimitedLog::new("camera frames lost to a late capture"),
        };
        match s.try_open() {
            Ok(()) => {}
            Err(OpenError::Fatal(reason)) => {
                return Err(SourceError::Open {
                    what: s.name.clone(),
                    reason,
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
            Err(OpenError::Fatal(reason)) => Err(SourceError::Failed {
                what: self.name.clone(),
                reason,
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
        return Err(OpenError::Fatal(format!(
            "{} ({}, driver {}) is not a streaming video capture device (caps {:#x}); \
             multi-planar-only devices are not supported",
            path.display(),
            caps.card,
            caps.driver,
            caps.device_caps
        )));
    }
    let offers = enumerate(&dev).map_err(|e| io_open_error("VIDIOC_ENUM_FMT", e))?;
    let Some(req) = negotiate::choose(&cfg.pixel_formats, &offers, (cfg.width, cfg.height)) else {
        let offered: Vec<String> = offers
            .iter()
            .map(|o| String::from_utf8_lossy(&o.fourcc).into_owned())
            .collect();
        let wanted: Vec<&str> = cfg.pixel_formats.iter().map(|f| f.name()).collect();
        return Err(OpenError::Fatal(format!(
            "{} offers none of the pixel formats {wanted:?} (it offers {offered:?}); set source.pixel_formats",
            path.display()
        )));
    };
    let pix =
        stream::set_format(&handle, req.fourcc, req.width, req.height).map_err(|e| io_open_error("VIDIOC_S_FMT", e))?;
    let fmt = accept_format(req.format, &pix).map_err(OpenError::Fatal)?;
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
fn accept_format(asked: CameraFormat, pix: &PixFormat) -> Result<Negotiated, String> {
    let got = CameraFormat::from_fourcc(pix.fourcc);
    if got != Some(asked) {
        return Err(format!(
            "asked for {} but the driver set {}",
            asked.name(),
            String::from_utf8_lossy(&pix.fourcc)
        ));
    }
    let (w, h) = (pix.width, pix.height);
    if w == 0 || h == 0 || w > crate::decode::MAX_SIDE || h > crate::decode::MAX_SIDE {
        return Err(format!("driver set an unusable size {w}x{h}"));
    }
    let min_stride = match asked {
        CameraFormat::Mjpeg => 0,
        CameraFormat::Yuyv => w * 2,
        CameraFormat::Nv12 => w,
    };
    if asked != CameraFormat::Mjpeg && (w % 2 != 0 || (asked == CameraFormat::Nv12 && h % 2 != 0)) {
        return Err(format!("driver set {w}x{h}, odd sides cannot be chroma-subsampled"));
    }
    let stride = pix.bytesperline.max(min_stride);
    Ok(Negotiated {
        format: asked,
        fourcc: pix.fourcc,
        width: w,
        height: h,
        stride,
        yuv: YuvSpec::from_v4l2(pix.colorspace, pix.ycbcr_enc, pix.quantization),
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
pub fn pack_frame(fmt: &Negotiated, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let (w, h, stride) = (fmt.width as usize, fmt.height as usize, fmt.stride as usize);
    out.clear();
    let rows = |out: &mut Vec<u8>, plane: &[u8], row_bytes: usize, n: usize| -> Result<(), String> {
        let need = if n == 0 { 0 } else { stride * (n - 1) + row_bytes };
        if plane.len() < need {
            return Err(format!("buffer holds {} bytes, {n} lines need {need}", plane.len()));
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
                return Err(format!("{} bytes is no JPEG", data.len()));
            }
            out.extend_from_slice(data);
            Ok(())
        }
        CameraFormat::Yuyv => rows(out, data, w * 2, h),
        CameraFormat::Nv12 => {
            // Single-planar NV12: the CbCr plane follows the luma plane, same pitch.
            let luma_bytes = stride * h;
            if data.len() < luma_bytes {
                return Err(format!(
                    "buffer holds {} bytes, the luma plane needs {luma_bytes}",
                    data.len()
                ));
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
                    Err("driver flagged the buffer as corrupt".to_string())
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
        assert!(accept_format(CameraFormat::Yuyv, &pix(b"RGB3", 640, 480, 0))
            .unwrap_err()
            .contains("RGB3"));
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

    /// yuv.rs keeps its own copies of the colorspace values (so the pixel maths needs no bindings); they agree
    /// with the bindings wherever a value decides something.
    #[test]
    fn yuv_reads_the_kernels_colorspace_values() {
        use crate::yuv::{Matrix, Range};
        use v4l::v4l_sys::*;
        let spec = |cs, enc, q| {
            let s = YuvSpec::from_v4l2(cs, enc, q);
            (s.matrix, s.range)
        };
        let enc = v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_DEFAULT;
        let q = v4l2_quantization_V4L2_QUANTIZATION_DEFAULT;
        let (srgb, jpeg) = (
            v4l2_colorspace_V4L2_COLORSPACE_SRGB,
            v4l2_colorspace_V4L2_COLORSPACE_JPEG,
        );
        let rec709 = v4l2_colorspace_V4L2_COLORSPACE_REC709;
        assert_eq!(
            spec(v4l2_colorspace_V4L2_COLORSPACE_SMPTE170M, enc, q),
            (Matrix::Bt601, Range::Limited)
        );
        assert_eq!(spec(srgb, enc, q), (Matrix::Bt601, Range::Limited));
        assert_eq!(spec(jpeg, enc, q), (Matrix::Bt601, Range::Full));
        assert_eq!(spec(rec709, enc, q), (Matrix::Bt709, Range::Limited));
        for e in [
            v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_601,
            v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_XV601,
        ] {
            assert_eq!(spec(rec709, e, q).0, Matrix::Bt601);
        }
        for e in [
            v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_709,
            v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_XV709,
        ] {
            assert_eq!(spec(srgb, e, q).0, Matrix::Bt709);
        }
        assert_eq!(
            spec(srgb, enc, v4l2_quantization_V4L2_QUANTIZATION_FULL_RANGE).1,
            Range::Full
        );
        assert_eq!(
            spec(jpeg, enc, v4l2_quantization_V4L2_QUANTIZATION_LIM_RANGE).1,
            Range::Limited
        );
    }

    // Kernel numbers (errno values, ioctl requests, V4L2 flags and enum values, mmap/poll flags) come from the
    // bindings (`v4l::v4l_sys`, `v4l::v4l2::vidioc`) and `rustix`, never from copies: a copy compiles and works
    // until the architecture or kernel where it is wrong. The test below scans this crate's sources for the
    // shapes such copies take.

    /// errno names, as they appear in a hand-written table or its comments.
    const ERRNO_NAMES: &str = "EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG EBADF EAGAIN EWOULDBLOCK ENOMEM EACCES \
        EFAULT EBUSY EEXIST ENODEV ENOTDIR EISDIR EINVAL ENFILE EMFILE ENOTTY ENOSPC ESPIPE EROFS EPIPE ERANGE \
        ENOSYS ENODATA ETIME EPROTO EOVERFLOW ENOTSUP EOPNOTSUPP EADDRINUSE ECONNABORTED ECONNRESET ECONNREFUSED \
        ENOTCONN ETIMEDOUT EHOSTUNREACH EINPROGRESS EALREADY ECANCELED ENOBUFS EMSGSIZE";

    fn is_errno_name(name: &str) -> bool {
        ERRNO_NAMES.split_whitespace().any(|e| e == name)
    }

    /// Prefixes of the kernel's own names for V4L2, mmap, poll and open(2) numbers.
    const KERNEL_PREFIXES: &str = "V4L2_ VIDIOC_ CAP_ BUF_ MEMORY_ FIELD_ PIX_FMT_ COLORSPACE_ YCBCR_ENC_ \
        QUANTIZATION_ MAP_ PROT_ POLLIN POLLOUT POLLPRI POLLERR POLLHUP O_";

    const INT_TYPES: &[&str] = &[
        "i8", "i16", "i32", "i64", "isize", "u8", "u16", "u32", "u64", "usize", "c_int", "c_uint", "c_long", "c_ulong",
        "c_short", "c_ushort",
    ];

    /// Copies kept on purpose, (file name, constant-name prefix): yuv.rs holds the colorspace values so that
    /// the pixel maths needs no bindings (checked against them above).
    const ALLOWED: &[(&str, &str)] = &[
        ("yuv.rs", "V4L2_COLORSPACE_"),
        ("yuv.rs", "V4L2_YCBCR_ENC_"),
        ("yuv.rs", "V4L2_QUANTIZATION_"),
    ];

    /// Each line of a Rust source as (code, comment), with the contents of string literals blanked out of the
    /// code (so a pattern quoted in a string, like the samples below, is not code). Char literals are kept.
    fn code_and_comments(src: &str) -> Vec<(String, String)> {
        enum St {
            Code,
            Line,
            Block(u32),
            Str,
            Raw(usize),
        }
        let c: Vec<char> = src.chars().collect();
        let at = |i: usize| c.get(i).copied().unwrap_or('\0');
        let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
        let mut lines = vec![(String::new(), String::new())];
        let mut st = St::Code;
        let mut i = 0;
        while i < c.len() {
            let (ch, next) = (c[i], at(i + 1));
            if ch == '\n' {
                if let St::Line = st {
                    st = St::Code;
                }
                lines.push((String::new(), String::new()));
                i += 1;
                continue;
            }
            let (code, comment) = lines.last_mut().unwrap();
            match st {
                St::Code => {
                    let prev = if i > 0 { at(i - 1) } else { ' ' };
                    // r"…", r#"…"#, br"…" (not the `r` ending an identifier)
                    let raw_start = ch == 'r'
                        && (!ident(prev) || (prev == 'b' && (i < 2 || !ident(at(i - 2)))))
                        && (next == '"' || next == '#');
                    let hashes = if raw_start {
                        c[i + 1..].iter().take_while(|&&h| h == '#').count()
                    } else {
                        0
                    };
                    if ch == '/' && next == '/' {
                        st = St::Line;
                        i += 2;
                    } else if ch == '/' && next == '*' {
                        st = St::Block(1);
                        i += 2;
                    } else if raw_start && at(i + 1 + hashes) == '"' {
                        code.push_str("r\"");
                        st = St::Raw(hashes);
                        i += 2 + hashes;
                    } else if ch == '"' {
                        code.push('"');
                        st = St::Str;
                        i += 1;
                    } else if ch == '\'' && (next == '\\' || at(i + 2) == '\'') {
                        // a char literal ('V', '"', '\n', '\u{…}'), kept whole; otherwise a lifetime
                        let from = if next == '\\' { i + 3 } else { i + 2 };
                        let end = (from..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len() - 1);
                        code.extend(&c[i..=end]);
                        i = end + 1;
                    } else {
                        code.push(ch);
                        i += 1;
                    }
                }
                St::Line => {
                    comment.push(ch);
                    i += 1;
                }
                St::Block(depth) => {
                    if ch == '*' && next == '/' {
                        st = if depth == 1 { St::Code } else { St::Block(depth - 1) };
                        i += 2;
                    } else if ch == '/' && next == '*' {
                        st = St::Block(depth + 1);
                        i += 2;
                    } else {
                        comment.push(ch);
                        i += 1;
                    }
                }
                St::Str => {
                    if ch == '\\' && next != '\n' {
                        code.push_str("  ");
                        i += 2;
                    } else if ch == '"' {
                        code.push('"');
                        st = St::Code;
                        i += 1;
                    } else {
                        code.push(' ');
                        i += 1;
                    }
                }
                St::Raw(n) => {
                    if ch == '"' && (1..=n).all(|k| at(i + k) == '#') {
                        code.push('"');
                        st = St::Code;
                        i += 1 + n;
                    } else {
                        code.push(' ');
                        i += 1;
                    }
                }
            }
        }
        lines
    }

    /// Identifiers, numbers (with their `_` and suffixes) and punctuation (`::`, `==`, `!=` as one token).
    fn tokens(code: &str) -> Vec<String> {
        let c: Vec<char> = code.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < c.len() {
            if c[i].is_alphanumeric() || c[i] == '_' {
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(c[start..i].iter().collect());
            } else if !c[i].is_whitespace() {
                let two: String = c[i..(i + 2).min(c.len())].iter().collect();
                if ["::", "==", "!="].contains(&two.as_str()) {
                    out.push(two);
                    i += 2;
                } else {
                    out.push(c[i].to_string());
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// The value of an integer literal token (`0x8000_0000`, `19`, `0x01i32`), if it is one.
    fn int_value(t: &str) -> Option<u64> {
        if !t.starts_with(|ch: char| ch.is_ascii_digit()) {
            return None;
        }
        let t = t.replace('_', "");
        let t = INT_TYPES.iter().find_map(|s| t.strip_suffix(s)).unwrap_or(&t);
        match t.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => t.parse().ok(),
        }
    }

    /// A V4L2 ioctl request number: `_IOR`/`_IOW`/`_IOWR` (direction bits 30–31, argument size in bits 16–29)
    /// of type `'V'` (bits 8–15).
    fn is_v4l2_ioctl(v: u64) -> bool {
        v <= u64::from(u32::MAX) && v >> 30 != 0 && (v >> 16) & 0x3fff != 0 && (v >> 8) & 0xff == u64::from(b'V')
    }

    /// The lines of `src` (1-based) that look like kernel numbers written by hand, and why.
    fn hand_constants(file_name: &str, src: &str) -> Vec<(usize, String)> {
        let mentions_v4l = src.contains("v4l");
        let uses_raw_errors = src.contains("raw_os_error");
        let mut found = Vec::new();
        let mut depth = 0i64;
        // brace depth at which a `match` on a raw OS error started (its arms are checked for numbers)
        let mut errno_match: Option<i64> = None;
        for (n, (code, comment)) in code_and_comments(src).iter().enumerate() {
            let t = tokens(code);
            let mut why = |w: String| found.push((n + 1, w));
            let has = |s: &str| t.iter().any(|x| x == s);
            let int_after = |k: usize| t.get(k).and_then(|x| int_value(x)).is_some();
            // `const NAME: <integer type>` with a kernel name
            for (k, x) in t.iter().enumerate() {
                if (x == "const" || x == "static") && t.get(k + 2).is_some_and(|x| x == ":") {
                    let name = &t[k + 1];
                    let ty: Vec<&String> = t[k + 3..].iter().take_while(|x| *x != "=").collect();
                    let int_ty = ty.iter().any(|x| INT_TYPES.contains(&x.as_str()));
                    let errno_like = is_errno_name(name)
                        || (name.len() > 2
                            && name.starts_with('E')
                            && name[1..].chars().all(|ch| ch.is_ascii_uppercase())
                            && ty.iter().any(|x| *x == "i32" || *x == "c_int"));
                    let kernel = KERNEL_PREFIXES.split_whitespace().any(|p| name.starts_with(p));
                    let allowed = ALLOWED.iter().any(|(f, p)| *f == file_name && name.starts_with(p));
                    // `[i32; N]` where OS errors are looked at: a table of errno numbers
                    let errno_table = ty.first().is_some_and(|x| *x == "[")
                        && ty.iter().any(|x| *x == "i32" || *x == "c_int")
                        && uses_raw_errors;
                    if int_ty && (errno_like || kernel) && !allowed {
                        why(format!("`{name}` copies a kernel constant"));
                    } else if errno_table {
                        why(format!("`{name}` is a table of errno numbers"));
                    }
                }
            }
            // raw OS errors compared with numbers
            if has("raw_os_error") {
                for (k, x) in t.iter().enumerate() {
                    if (x == "Some" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2))
                        || ((x == "==" || x == "!=") && int_after(k + 1))
                    {
                        why("a raw OS error compared with a number".into());
                        break;
                    }
                }
                if has("match") && errno_match.is_none() {
                    errno_match = Some(depth);
                }
            } else if errno_match.is_some() {
                for (k, x) in t.iter().enumerate() {
                    if x == "Some" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2) {
                        why("a match arm on a raw OS error with a number".into());
                        break;
                    }
                }
            }
            for (k, x) in t.iter().enumerate() {
                if x == "from_raw_os_error" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2) {
                    why("an OS error made from a number".into());
                }
            }
            // ioctl request numbers, literal or built from 'V'
            if t.iter().filter_map(|x| int_value(x)).any(is_v4l2_ioctl) {
                why("a V4L2 ioctl request number".into());
            }
            if t.iter().any(|x| x.starts_with("_IO")) && code.contains("'V'") {
                why("a V4L2 ioctl request built by hand".into());
            }
            if t.windows(2).any(|w| w[0] == "libc" && w[1] == "::") {
                why("libc (use rustix)".into());
            }
            // numbers stored into (or tested against) V4L2 struct fields
            if mentions_v4l {
                let fields = [
                    "type_",
                    "memory",
                    "field",
                    "pixelformat",
                    "capabilities",
                    "device_caps",
                    "flags",
                ];
                for (k, x) in t.iter().enumerate() {
                    let op = t
                        .get(k + 1)
                        .is_some_and(|x| ["=", ":", "&", "==", "!="].contains(&x.as_str()));
                    let nonzero = t.get(k + 2).and_then(|x| int_value(x)).is_some_and(|v| v != 0);
                    if fields.contains(&x.as_str()) && op && nonzero {
                        why(format!("a number written into or tested against `{x}`"));
                        break;
                    }
                }
            }
            // a number whose comment names it as an errno or a V4L2 constant
            let named = tokens(comment)
                .iter()
                .any(|w| is_errno_name(w) || w.starts_with("V4L2_") || w.starts_with("VIDIOC_"));
            if named && t.iter().any(|x| int_value(x).is_some()) {
                why("a number named as a kernel constant in its comment".into());
            }
            for x in &t {
                match x.as_str() {
                    "{" => depth += 1,
                    "}" => depth -= 1,
                    _ => {}
                }
            }
            if errno_match.is_some_and(|d| depth <= d) {
                errno_match = None;
            }
        }
        found
    }

    /// Every `.rs` file under `dir`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn kernel_constants_are_not_copied_by_hand() {
        // This crate's sources, wherever the crate lives.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        rust_files(&root.join("src"), &mut files);
        files.sort();
        // Not vacuous: the scan holds this very file (file!() is relative to the workspace, the scan's paths
        // to the crate) and its neighbours.
        let this = Path::new(file!());
        let here: Vec<&PathBuf> = files
            .iter()
            .filter(|p| this.ends_with(p.strip_prefix(root).unwrap()))
            .collect();
        assert_eq!(here.len(), 1, "{} not found under {}", this.display(), root.display());
        for sibling in ["stream.rs", "negotiate.rs", "devices.rs"] {
            assert!(
                files.contains(&here[0].with_file_name(sibling)),
                "{sibling} not scanned"
            );
        }
        let mut report = String::new();
        for f in &files {
            let src = std::fs::read_to_string(f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy();
            for (line, why) in hand_constants(&name, &src) {
                let text = src.lines().nth(line - 1).unwrap_or("").trim();
                report.push_str(&format!(
                    "{}:{line}: {why}: {text}\n",
                    f.strip_prefix(root).unwrap().display()
                ));
            }
        }
        assert!(
            report.is_empty(),
            "kernel constants written by hand; take them from v4l::v4l_sys, v4l::v4l2::vidioc or rustix:\n{report}"
        );
    }

    #[test]
    fn the_hand_constant_scan_catches_what_it_should_and_nothing_else() {
        // What the V4L2 code once held (and the other shapes such copies take).
        let bad = [
            "const ENODEV: i32 = 19;",
            "pub const EINVAL: i32 = 22;",
            "const EFOO: std::os::raw::c_int = 5;",
            "const RETRYABLE: [i32; 2] = [1, 13];\nlet r = e.raw_os_error();",
            "const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;",
            "const MEMORY_MMAP: u32 = 1;",
            "const FIELD_NONE: u32 = 1;",
            "pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;",
            "pub const CAP_STREAMING: u32 = 0x0400_0000;",
            "const CAP_DEVICE_CAPS: u32 = 0x8000_0000;",
            "const MAP_SHARED: i32 = 0x01;",
            "    const PROT_READ: i32 = 0x1;",
            "const V4L2_BUF_FLAG_ERROR: u32 = 0x40;",
            "const VIDIOC_DQBUF: u64 = 0xc058_5611;",
            "ioctl(fd, 0xc0585611, &mut b)",
            "ioctl(fd, 3227014673, &mut b)",
            "let req = _IOWR('V', 17, 88);",
            "    5,   // EIO",
            "let unplugged = e.raw_os_error() == Some(19);",
            "if e.raw_os_error() != Some(22) {",
            "match e.raw_os_error() {\n    Some(11) | Some(4) => {}\n    _ => {}\n}",
            "return Err(io::Error::from_raw_os_error(19));",
            "let p = libc::PROT_READ;",
            "b.type_ = 1;",
            "let mut req = v4l2_requestbuffers { count, type_: 1, memory: 1 };",
            "if caps.device_caps & 0x0400_0000 == 0 {",
        ];
        for b in bad {
            let src = format!("use v4l::Device;\n{b}\n");
            assert!(!hand_constants("stream.rs", &src).is_empty(), "not caught: {b}");
        }
        let good = [
            "const RETRYABLE: [Errno; 11] = [Errno::PERM, Errno::INTR];",
            "Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => break,",
            "let unplugged = Errno::from_io_error(&e) == Some(Errno::NODEV);",
            "match e.raw_os_error() {\n    Some(code) if RETRYABLE.contains(&code) => {}\n    _ => {}\n}\nlet x = Some(4);",
            "(ProtFlags::READ | ProtFlags::WRITE).bits() as i32,",
            "const POLL: Duration = Duration::from_millis(20);",
            "const MAX_SIDE: u32 = 16_384;",
            "let mut crc = 0xFFFF_FFFFu32;",
            "b.index = index;",
            "let msg = \"const ENODEV: i32 = 19; 0xc0585611 libc::\"; // a quote, not code",
            "let s = r#\"const EINVAL: i32 = 22;\"#;",
            "// const ENODEV: i32 = 19;",
            "/* b.type_ = 1; */",
            "let q = '\"'; const N: usize = 4;",
            "fn f<'a>(x: &'a str) -> usize { x.len() }",
            "std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))",
        ];
        for g in good {
            let src = format!("use v4l::Device;\n{g}\n");
            assert_eq!(hand_constants("stream.rs", &src), [], "flagged: {g}");
        }
        // The colorspace copies are allowed in yuv.rs only.
        let yuv = "const V4L2_COLORSPACE_SRGB: u32 = 8;\n";
        assert_eq!(hand_constants("yuv.rs", yuv), []);
        assert!(!hand_constants("stream.rs", yuv).is_empty());
    }
}
