//! The `synthetic` source: generated frames of a configured size and pixel format with shapes moving across
//! a gradient, for load tests without a camera. JPEG frames come from a ring of frames encoded at start
//! (encoding per frame would cost more than the pipeline under test); raw formats are drawn per frame.

use std::io::Cursor;

use kestrel_vision::pattern::{render_rgb, rgb_to_nv12, rgb_to_yuyv};

use super::{Cause, Pacer, SourceError};
use crate::config::{SourceConfig, SyntheticFormat};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::frame::{Frame, PixelFormat};
use kestrel_core::pool::Pool;

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
                        source: Box::new(Cause::FrameSize),
                    })?;
                let mut out = Cursor::new(Vec::new());
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                    .encode_image(&img)
                    .map_err(|e| SourceError::Open {
                        what: "synthetic".into(),
                        source: Box::new(Cause::Encode(e)),
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
            yuv: kestrel_vision::yuv::YuvSpec::BT601_LIMITED,
            data: buf,
        }))
    }
}
