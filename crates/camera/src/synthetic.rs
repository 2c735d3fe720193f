//! The `synthetic` source: generated frames of a configured size and pixel format with shapes moving across
//! a gradient, for load tests without a camera. JPEG frames come from a ring of frames encoded at start
//! (encoding per frame would cost more than the pipeline under test); raw formats are drawn per frame.

use std::io::Cursor;

use super::{Pacer, SourceError};
use crate::config::{SourceConfig, SyntheticFormat};
use crate::frame::{monotonic_ns, Frame, PixelFormat};
use crate::pool::Pool;

/// Distinct pre-encoded JPEG frames (the motion repeats with this period).
const JPEG_RING: u64 = 24;

pub struct SyntheticSource {
    width: u32,
    height: u32,
    format: SyntheticFormat,
    jpegs: Vec<Vec<u8>>,
    /// RGB drawing surface for the YUV formats (reused).
    scratch: Vec<u8>,
    limit: u64,
    stall_after: u64,
    seq: u64,
    pacer: Pacer,
    pool: Pool<Vec<u8>>,
    name: String,
}

/// Draw frame `t` as packed RGB8 into `out` (resized to `w*h*3`).
pub fn render_rgb(t: u64, w: u32, h: u32, out: &mut Vec<u8>) {
    let (w, h) = (w as usize, h as usize);
    out.resize(w * h * 3, 0);
    let (bx, by, bs) = ((t as usize * 17) % w, (t as usize * 5) % h, (h / 4).max(2));
    let (cx, cy, r) = (w - 1 - (t as usize * 11) % w, h / 2, (h / 6).max(2) as i64);
    for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
        let shade = (40 + 160 * y / h) as u8;
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            let rgb = if x >= bx && x < bx + bs && y >= by && y < by + bs {
                [220, 40, 40]
            } else if dx * dx + dy * dy <= r * r {
                [30, 60, 210]
            } else {
                [shade, shade, (shade / 2).saturating_add(60)]
            };
            px.copy_from_slice(&rgb);
        }
    }
}

/// BT.601 limited-range RGB → (Y, U, V).
fn yuv(rgb: &[u8]) -> (u8, u8, u8) {
    let (r, g, b) = (f32::from(rgb[0]), f32::from(rgb[1]), f32::from(rgb[2]));
    let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
    let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
    let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
    (y.round() as u8, u.round() as u8, v.round() as u8)
}

/// RGB8 → YUYV (4:2:2, chroma from the left pixel of each pair). `w` must be even.
pub fn rgb_to_yuyv(rgb: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for pair in rgb.chunks_exact(6) {
        let (y0, u, v) = yuv(&pair[..3]);
        let (y1, _, _) = yuv(&pair[3..]);
        out.extend_from_slice(&[y0, u, y1, v]);
    }
}

/// RGB8 → NV12 (4:2:0, chroma from the top-left pixel of each 2×2 block). `w`, `h` must be even.
pub fn rgb_to_nv12(rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend(rgb.chunks_exact(3).map(|p| yuv(p).0));
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let (_, u, v) = yuv(&rgb[(y * w + x) * 3..]);
            out.extend_from_slice(&[u, v]);
        }
    }
}

impl SyntheticSource {
    pub fn new(cfg: &SourceConfig, pool_size: usize) -> Result<Self, SourceError> {
        let (w, h) = (cfg.width, cfg.height);
        let mut jpegs = Vec::new();
        if cfg.format == SyntheticFormat::Jpeg {
            let mut rgb = Vec::new();
            for t in 0..JPEG_RING {
                render_rgb(t, w, h, &mut rgb);
                let img =
                    image::RgbImage::from_raw(w, h, std::mem::take(&mut rgb)).ok_or_else(|| SourceError::Open {
                        what: "synthetic".into(),
                        reason: "frame buffer size".into(),
                    })?;
                let mut out = Cursor::new(Vec::new());
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                    .encode_image(&img)
                    .map_err(|e| SourceError::Open {
                        what: "synthetic".into(),
                        reason: e.to_string(),
                    })?;
                jpegs.push(out.into_inner());
                rgb = img.into_raw();
            }
        }
        let frame_bytes = match cfg.format {
            SyntheticFormat::Jpeg => jpegs.iter().map(Vec::len).max().unwrap_or(0),
            SyntheticFormat::Rgb => (w * h * 3) as usize,
            SyntheticFormat::Yuyv => (w * h * 2) as usize,
            SyntheticFormat::Nv12 => (w * h * 3 / 2) as usize,
        };
        Ok(Self {
            name: format!("synthetic:{w}x{h}:{:?}", cfg.format).to_lowercase(),
            width: w,
            height: h,
            format: cfg.format,
            jpegs,
            scratch: Vec::new(),
            limit: cfg.frames,
            stall_after: cfg.stall_after_frames,
            seq: 0,
            pacer: Pacer::new(cfg.fps_hz),
            pool: Pool::new(pool_size, || Vec::with_capacity(frame_bytes)),
        })
    }
}

impl super::Source for SyntheticSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn paced(&self) -> bool {
        self.pacer.is_paced()
    }

    fn next_frame(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Frame>, SourceError> {
        if self.limit > 0 && self.seq >= self.limit {
            return Ok(None);
        }
        if self.stall_after > 0 && self.seq >= self.stall_after {
            // A hung camera: nothing more, but no end either (returns only when stopped).
            if self.seq == self.stall_after {
                log::warn!(
                    "synthetic source: stalling after {} frames (stall_after_frames)",
                    self.seq
                );
                self.seq += 1; // log once; `seq` is not used for frames any more
            }
            while !stop() {
                std::thread::sleep(super::POLL);
            }
            return Ok(None);
        }
        if !self.pacer.wait(stop) {
            return Ok(None);
        }
        let Some(mut buf) = super::take_buffer(&self.pool, stop) else {
            return Ok(None);
        };
        let t = self.seq;
        let (w, h) = (self.width, self.height);
        let format = match self.format {
            SyntheticFormat::Jpeg => {
                buf.clear();
                buf.extend_from_slice(&self.jpegs[(t % JPEG_RING) as usize]);
                PixelFormat::Jpeg
            }
            SyntheticFormat::Rgb => {
                render_rgb(t, w, h, &mut buf);
                PixelFormat::Rgb
            }
            SyntheticFormat::Yuyv => {
                render_rgb(t, w, h, &mut self.scratch);
                rgb_to_yuyv(&self.scratch, &mut buf);
                PixelFormat::Yuyv
            }
            SyntheticFormat::Nv12 => {
                render_rgb(t, w, h, &mut self.scratch);
                rgb_to_nv12(&self.scratch, w as usize, h as usize, &mut buf);
                PixelFormat::Nv12
            }
        };
        self.seq += 1;
        Ok(Some(Frame {
            seq: self.seq,
            capture_ns: monotonic_ns(),
            format,
            width: w,
            height: h,
            yuv: crate::yuv::YuvSpec::BT601_LIMITED,
            data: buf,
        }))
    }
}
