//! Frame → model tensor: decode (JPEG with libjpeg-turbo, DCT-scaled when the model input is much smaller;
//! YUYV/NV12 converted BT.601 limited range; RGB as is) then letterbox. Owns its buffers; after the first
//! frame of a given size it allocates nothing.

use std::time::{Duration, Instant};
use thiserror::Error;
use turbojpeg::{Decompressor, Image, PixelFormat as TjFormat, ScalingFactor};

use crate::letterbox::{Letterbox, LetterboxError, Resampler, TensorElement};
use crate::tensor::TensorMut;
use crate::yuv::{nv12_row_to_rgb, nv12_rows, yuyv_row_to_rgb, Coeffs, YuvSpec};
use kestrel_core::frame::{Frame, PixelFormat};

/// libjpeg-turbo could not take a JPEG.
#[derive(Debug, Error)]
pub enum JpegError {
    #[error(transparent)]
    Turbo(#[from] turbojpeg::Error),
    #[error("unsupported size {width}x{height}")]
    Size { width: u32, height: u32 },
}

#[derive(Debug, Error)]
pub enum PreprocessError {
    #[error("JPEG decode failed: {0}")]
    Jpeg(#[source] JpegError),
    #[error("{format:?} frame of {width}x{height} has {got} bytes, expected {want}")]
    FrameSize {
        format: PixelFormat,
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
    #[error("{format:?} frame of {width}x{height}: chroma subsampling needs even sides")]
    OddSize {
        format: PixelFormat,
        width: u32,
        height: u32,
    },
    #[error(transparent)]
    Letterbox(#[from] LetterboxError),
}

/// Largest DCT scale-down `1/d` (d in 8, 4, 2, 1) that still leaves at least `need_w`×`need_h` pixels.
pub fn jpeg_scale_denominator(w: u32, h: u32, need_w: u32, need_h: u32) -> u32 {
    [8u32, 4, 2]
        .into_iter()
        .find(|d| w.div_ceil(*d) >= need_w && h.div_ceil(*d) >= need_h)
        .unwrap_or(1)
}

/// Borrowed pixels of one image: an encoded JPEG (`width`/`height` 0) or a raw frame.
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub data: &'a [u8],
    /// How YUYV/NV12 samples map to RGB.
    pub yuv: YuvSpec,
}

impl<'a> Pixels<'a> {
    pub fn jpeg(data: &'a [u8]) -> Self {
        Self {
            format: PixelFormat::Jpeg,
            width: 0,
            height: 0,
            data,
            yuv: YuvSpec::BT601_LIMITED,
        }
    }
}

pub struct FramePreprocessor {
    jpeg: Decompressor,
    rgb: Vec<u8>,
    letterbox: Resampler,
    /// Use DCT-domain downscaling for JPEGs larger than twice the model input.
    pub scaled_jpeg: bool,
    /// Time the last [`Self::prepare`] spent decoding/converting, and letterboxing.
    pub last_decode: Duration,
    pub last_letterbox: Duration,
}

impl FramePreprocessor {
    pub fn new(scaled_jpeg: bool) -> Result<Self, PreprocessError> {
        let jerr = |e: turbojpeg::Error| PreprocessError::Jpeg(JpegError::Turbo(e));
        let mut jpeg = Decompressor::new().map_err(jerr)?;
        // The fast path also takes libjpeg-turbo's fast chroma upsampling (~10 % of decode time at 1080p).
        jpeg.set_fast_upsample(scaled_jpeg).map_err(jerr)?;
        Ok(Self {
            jpeg,
            rgb: Vec::new(),
            letterbox: Resampler::new(),
            scaled_jpeg,
            last_decode: Duration::ZERO,
            last_letterbox: Duration::ZERO,
        })
    }

    /// Decode and letterbox one encoded image or raw frame into `out` (CHW, the model's precision).
    /// Returns the letterbox geometry relative to the full-size frame.
    pub fn prepare(
        &mut self,
        src: Pixels<'_>,
        out: TensorMut<'_>,
        dst_w: u32,
        dst_h: u32,
    ) -> Result<Letterbox, PreprocessError> {
        match out {
            TensorMut::F32(t) => self.prepare_typed(src, t, dst_w, dst_h),
            TensorMut::F16(t) => self.prepare_typed(src, t, dst_w, dst_h),
        }
    }

    /// [`Self::prepare`] for a [`Frame`].
    pub fn prepare_frame(
        &mut self,
        f: &Frame,
        out: TensorMut<'_>,
        dst_w: u32,
        dst_h: u32,
    ) -> Result<Letterbox, PreprocessError> {
        self.prepare(
            Pixels {
                format: f.format,
                width: f.width,
                height: f.height,
                data: &f.data,
                yuv: f.yuv,
            },
            out,
            dst_w,
            dst_h,
        )
    }

    fn prepare_typed<T: TensorElement>(
        &mut self,
        src: Pixels<'_>,
        out: &mut [T],
        dst_w: u32,
        dst_h: u32,
    ) -> Result<Letterbox, PreprocessError> {
        let Pixels {
            format,
            width,
            height,
            data,
            yuv,
        } = src;
        let t0 = Instant::now();
        let (w, h) = (width as usize, height as usize);
        let check = |want: usize| {
            if data.len() == want && w > 0 && h > 0 {
                Ok(())
            } else {
                Err(PreprocessError::FrameSize {
                    format,
                    width,
                    height,
                    got: data.len(),
                    want,
                })
            }
        };
        let even = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(PreprocessError::OddSize { format, width, height })
            }
        };
        let lb = match format {
            PixelFormat::Jpeg => return self.prepare_jpeg(data, out, dst_w, dst_h),
            PixelFormat::Rgb => {
                check(w * h * 3)?;
                let lb = Letterbox::new(width, height, dst_w, dst_h)?;
                self.letterbox.letterbox_into(data, &lb, out)?;
                self.last_decode = Duration::ZERO;
                self.last_letterbox = t0.elapsed();
                return Ok(lb);
            }
            PixelFormat::Yuyv => {
                even(w % 2 == 0)?;
                check(w * h * 2)?;
                let lb = Letterbox::new(width, height, dst_w, dst_h)?;
                let k = Coeffs::of(yuv);
                // Converted row by row inside the resampler: no full-size RGB copy.
                self.letterbox.letterbox_rows_into(width, height, &lb, out, |y, dst| {
                    yuyv_row_to_rgb(&data[y * w * 2..(y + 1) * w * 2], &k, dst)
                })?;
                lb
            }
            PixelFormat::Nv12 => {
                even(w % 2 == 0 && h % 2 == 0)?;
                check(w * h * 3 / 2)?;
                let lb = Letterbox::new(width, height, dst_w, dst_h)?;
                let k = Coeffs::of(yuv);
                self.letterbox.letterbox_rows_into(width, height, &lb, out, |y, dst| {
                    let (l, c) = nv12_rows(w, h, y);
                    nv12_row_to_rgb(&data[l], &data[c], &k, dst)
                })?;
                lb
            }
        };
        // YUV conversion is fused into the resize, so it all counts as letterbox time.
        self.last_decode = Duration::ZERO;
        self.last_letterbox = t0.elapsed();
        Ok(lb)
    }

    fn prepare_jpeg<T: TensorElement>(
        &mut self,
        data: &[u8],
        out: &mut [T],
        dst_w: u32,
        dst_h: u32,
    ) -> Result<Letterbox, PreprocessError> {
        let t0 = Instant::now();
        let jerr = |e: turbojpeg::Error| PreprocessError::Jpeg(JpegError::Turbo(e));
        let header = self.jpeg.read_header(data).map_err(jerr)?;
        let (w, h) = (
            u32::try_from(header.width).unwrap_or(0),
            u32::try_from(header.height).unwrap_or(0),
        );
        if w == 0 || h == 0 || w > crate::decode::MAX_SIDE || h > crate::decode::MAX_SIDE {
            return Err(PreprocessError::Jpeg(JpegError::Size { width: w, height: h }));
        }
        let lb = Letterbox::new(w, h, dst_w, dst_h)?;
        let d = if self.scaled_jpeg {
            jpeg_scale_denominator(w, h, lb.new_w, lb.new_h)
        } else {
            1
        };
        let factor = ScalingFactor::new(1, d as usize);
        self.jpeg.set_scaling_factor(factor).map_err(jerr)?;
        let scaled = header.scaled(factor);
        self.rgb.resize(scaled.width * scaled.height * 3, 0);
        let image = Image {
            pixels: &mut self.rgb[..],
            width: scaled.width,
            pitch: scaled.width * 3,
            height: scaled.height,
            format: TjFormat::RGB,
        };
        self.jpeg.decompress(data, image).map_err(jerr)?;
        let t1 = Instant::now();
        self.letterbox
            .letterbox_scaled_into(&self.rgb, scaled.width as u32, scaled.height as u32, &lb, out)?;
        self.last_decode = t1 - t0;
        self.last_letterbox = t1.elapsed();
        Ok(lb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{render_rgb, rgb_to_nv12, rgb_to_yuyv};
    use crate::yuv::{nv12_to_rgb, yuyv_to_rgb};

    #[test]
    fn scale_denominator_never_upsamples() {
        assert_eq!(jpeg_scale_denominator(1920, 1080, 640, 360), 2);
        assert_eq!(jpeg_scale_denominator(3840, 2160, 640, 360), 4);
        assert_eq!(jpeg_scale_denominator(640, 424, 416, 276), 1);
        assert_eq!(jpeg_scale_denominator(1920, 1080, 416, 234), 4);
        assert_eq!(jpeg_scale_denominator(10, 10, 1, 1), 8);
    }

    /// The fused YUV → tensor path equals converting the whole frame with the reference conversion and then
    /// letterboxing, bit for bit, for down- and upscaling, odd output sizes, both matrices and f16.
    #[test]
    fn fused_yuv_letterbox_equals_reference_conversion_then_letterbox() {
        let specs = [
            YuvSpec::BT601_LIMITED,
            YuvSpec {
                matrix: crate::yuv::Matrix::Bt709,
                range: crate::yuv::Range::Full,
            },
        ];
        for (w, h, dw, dh) in [
            (64u32, 48u32, 32u32, 32u32),
            (640, 480, 416, 416),
            (96, 54, 250, 190),
            (8, 6, 8, 6),
        ] {
            let mut rgb = Vec::new();
            render_rgb(7, w, h, &mut rgb);
            let (mut yuyv, mut nv12) = (Vec::new(), Vec::new());
            rgb_to_yuyv(&rgb, &mut yuyv);
            rgb_to_nv12(&rgb, w as usize, h as usize, &mut nv12);
            for spec in specs {
                for (format, data) in [(PixelFormat::Yuyv, &yuyv), (PixelFormat::Nv12, &nv12)] {
                    let mut reference = Vec::new();
                    match format {
                        PixelFormat::Yuyv => yuyv_to_rgb(data, w as usize, h as usize, spec, &mut reference),
                        _ => nv12_to_rgb(data, w as usize, h as usize, spec, &mut reference),
                    }
                    let lb = Letterbox::new(w, h, dw, dh).unwrap();
                    let mut want = vec![0f32; (3 * dw * dh) as usize];
                    Resampler::new().letterbox_into(&reference, &lb, &mut want).unwrap();
                    let mut fp = FramePreprocessor::new(true).unwrap();
                    let px = Pixels {
                        format,
                        width: w,
                        height: h,
                        data,
                        yuv: spec,
                    };
                    let mut got = vec![0.0; want.len()];
                    assert_eq!(fp.prepare(px, TensorMut::F32(&mut got), dw, dh).unwrap(), lb);
                    // twice: cached taps and row cache state must not leak between frames
                    fp.prepare(px, TensorMut::F32(&mut got), dw, dh).unwrap();
                    assert!(got == want, "{format:?} {w}x{h}->{dw}x{dh} {spec:?}");
                    let mut got16 = vec![half::f16::ZERO; want.len()];
                    fp.prepare(px, TensorMut::F16(&mut got16), dw, dh).unwrap();
                    assert!(got16.iter().zip(&want).all(|(a, b)| *a == half::f16::from_f32(*b)));
                }
            }
        }
    }

    #[test]
    fn yuv_round_trip_of_a_rendered_frame_stays_close() {
        let (w, h) = (64usize, 32usize);
        let mut rgb = Vec::new();
        render_rgb(3, w as u32, h as u32, &mut rgb);
        let (mut yuyv, mut nv12, mut back) = (Vec::new(), Vec::new(), Vec::new());
        let close = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .filter(|(x, y)| (i32::from(**x) - i32::from(**y)).abs() > 6)
                .count()
        };
        rgb_to_yuyv(&rgb, &mut yuyv);
        yuyv_to_rgb(&yuyv, w, h, YuvSpec::BT601_LIMITED, &mut back);
        assert!(close(&rgb, &back) < rgb.len() / 20, "{}", close(&rgb, &back));
        rgb_to_nv12(&rgb, w, h, &mut nv12);
        nv12_to_rgb(&nv12, w, h, YuvSpec::BT601_LIMITED, &mut back);
        assert!(close(&rgb, &back) < rgb.len() / 10, "{}", close(&rgb, &back));
    }

    #[test]
    fn jpeg_path_matches_the_image_crate_path_closely() {
        let (w, h) = (320u32, 200u32);
        let mut rgb = Vec::new();
        render_rgb(5, w, h, &mut rgb);
        let img = image::RgbImage::from_raw(w, h, rgb).unwrap();
        let mut jpg = std::io::Cursor::new(Vec::new());
        img.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
        let jpg = jpg.into_inner();
        let mut fp = FramePreprocessor::new(false).unwrap();
        let mut a = vec![0.0; 3 * 160 * 160];
        let lb = fp
            .prepare(Pixels::jpeg(&jpg), TensorMut::F32(&mut a), 160, 160)
            .unwrap();
        assert_eq!(
            (lb.src_w, lb.src_h, lb.new_w, lb.new_h, lb.pad_top),
            (320, 200, 160, 100, 30)
        );
        let decoded = crate::decode::decode_image(&jpg).unwrap();
        let mut b = vec![0f32; 3 * 160 * 160];
        Resampler::new().letterbox_into(&decoded.data, &lb, &mut b).unwrap();
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max * 255.0 <= 6.0, "max diff {} levels", max * 255.0);
        // DCT-scaled decoding keeps the geometry.
        let mut fp = FramePreprocessor::new(true).unwrap();
        let mut c = vec![0.0; 3 * 64 * 64];
        let lb2 = fp.prepare(Pixels::jpeg(&jpg), TensorMut::F32(&mut c), 64, 64).unwrap();
        assert_eq!((lb2.new_w, lb2.new_h, lb2.pad_top), (64, 40, 12));
    }

    #[test]
    fn wrong_sizes_and_garbage_are_errors() {
        let mut fp = FramePreprocessor::new(true).unwrap();
        let mut t = vec![0.0; 3 * 32 * 32];
        let mut raw = |format, width, height, data: &[u8]| {
            fp.prepare(
                Pixels {
                    format,
                    width,
                    height,
                    data,
                    yuv: YuvSpec::BT601_LIMITED,
                },
                TensorMut::F32(&mut t),
                32,
                32,
            )
            .map(|_| ())
        };
        assert!(matches!(
            raw(PixelFormat::Yuyv, 4, 4, &[0; 31]),
            Err(PreprocessError::FrameSize { .. })
        ));
        assert!(matches!(
            raw(PixelFormat::Nv12, 4, 4, &[0; 23]),
            Err(PreprocessError::FrameSize { .. })
        ));
        assert!(matches!(
            raw(PixelFormat::Rgb, 0, 4, &[]),
            Err(PreprocessError::FrameSize { .. })
        ));
        assert!(raw(PixelFormat::Yuyv, 4, 4, &[128; 32]).is_ok());
        assert!(matches!(
            raw(PixelFormat::Jpeg, 0, 0, b"nope"),
            Err(PreprocessError::Jpeg(_))
        ));
    }
}
