//! Letterbox preprocessing, exactly as Ultralytics defines it: scale to fit keeping the aspect ratio, centre,
//! pad with grey 114, RGB, scaled to 0..1, CHW. [`Letterbox`] is the geometry; it travels with the frame so
//! boxes found in model coordinates can be mapped back with [`Letterbox::image_from_model`].

use half::f16;
use thiserror::Error;

use kestrel_core::geometry::{ImageBox, ImagePoint, ModelBox, ModelPoint};

/// The grey Ultralytics pads with.
pub const PAD_VALUE: u8 = 114;

#[derive(Debug, Error)]
pub enum LetterboxError {
    #[error("image has zero size ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("model input has zero size ({width}x{height})")]
    EmptyTarget { width: u32, height: u32 },
    #[error("RGB buffer holds {got} bytes, {width}x{height} needs {want}")]
    BufferSize {
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
    #[error("tensor holds {got} elements, 3x{height}x{width} needs {want}")]
    TensorSize {
        width: u32,
        height: u32,
        got: usize,
        want: usize,
    },
}

/// Where a `src_w`×`src_h` image lands inside a `dst_w`×`dst_h` model input.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Letterbox {
    pub src_w: u32,
    pub src_h: u32,
    pub dst_w: u32,
    pub dst_h: u32,
    /// Model pixels per image pixel along x and y: `new_w / src_w`, `new_h / src_h`. These are the scales
    /// the resize really applied; Ultralytics' `scale_boxes` uses the unrounded `r` for both and recomputes
    /// the padding from it, which can put boxes up to ~1.5 image pixels off. We map with what was applied.
    pub scale_x: f64,
    pub scale_y: f64,
    /// Size of the resized image inside the model input.
    pub new_w: u32,
    pub new_h: u32,
    /// Padding on the left and top; odd padding puts the extra pixel right/bottom.
    pub pad_left: u32,
    pub pad_top: u32,
}

impl Letterbox {
    /// Ultralytics `LetterBox(auto=False, scaleup=True, center=True)`:
    /// `r = min(dh/h, dw/w)`, `new = round(w*r), round(h*r)` (round half to even, as Python does),
    /// `left = round(dw/2 - 0.1)`, `top = round(dh/2 - 0.1)`.
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Result<Self, LetterboxError> {
        if src_w == 0 || src_h == 0 {
            return Err(LetterboxError::EmptyImage {
                width: src_w,
                height: src_h,
            });
        }
        if dst_w == 0 || dst_h == 0 {
            return Err(LetterboxError::EmptyTarget {
                width: dst_w,
                height: dst_h,
            });
        }
        let scale = (f64::from(dst_h) / f64::from(src_h)).min(f64::from(dst_w) / f64::from(src_w));
        let fit = |src: u32, dst: u32| ((f64::from(src) * scale).round_ties_even() as u32).clamp(1, dst);
        let (new_w, new_h) = (fit(src_w, dst_w), fit(src_h, dst_h));
        // round(d/2 - 0.1) for integer d is floor(d/2).
        let (pad_left, pad_top) = ((dst_w - new_w) / 2, (dst_h - new_h) / 2);
        Ok(Self {
            src_w,
            src_h,
            dst_w,
            dst_h,
            scale_x: f64::from(new_w) / f64::from(src_w),
            scale_y: f64::from(new_h) / f64::from(src_h),
            new_w,
            new_h,
            pad_left,
            pad_top,
        })
    }

    /// A point in source-image pixels → model-input pixels.
    pub fn model_from_image(&self, p: ImagePoint) -> ModelPoint {
        ModelPoint::new([
            (f64::from(p.x()) * self.scale_x + f64::from(self.pad_left)) as f32,
            (f64::from(p.y()) * self.scale_y + f64::from(self.pad_top)) as f32,
        ])
    }

    /// A point in model-input pixels → source-image pixels (not clipped).
    pub fn image_from_model(&self, p: ModelPoint) -> ImagePoint {
        ImagePoint::new([
            ((f64::from(p.x()) - f64::from(self.pad_left)) / self.scale_x) as f32,
            ((f64::from(p.y()) - f64::from(self.pad_top)) / self.scale_y) as f32,
        ])
    }

    /// A box in model-input pixels → source-image pixels, clipped to the image.
    pub fn image_box_from_model(&self, b: ModelBox) -> ImageBox {
        let [x1, y1] = self.image_from_model(b.top_left()).0;
        let [x2, y2] = self.image_from_model(b.bottom_right()).0;
        let (w, h) = (self.src_w as f32, self.src_h as f32);
        ImageBox::new([x1.clamp(0.0, w), y1.clamp(0.0, h), x2.clamp(0.0, w), y2.clamp(0.0, h)])
    }
}

/// An element type a model input can have.
pub trait TensorElement: Copy + Default + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
}

impl TensorElement for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl TensorElement for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// The bilinear resampler behind [`letterbox_into`] (RGB rows → the model tensor), with its reusable plan and
/// scratch rows. [`crate::preprocess::FramePreprocessor`] wraps it with decoding for whole frames.
#[derive(Default)]
pub struct Resampler {
    plan: Option<BilinearPlan>,
    /// One vertically blended source row (fixed point, ×2048).
    vrow: Vec<u32>,
    row: Vec<u8>,
    /// Two source rows produced on demand by [`Resampler::letterbox_rows_into`].
    src_rows: [Vec<u8>; 2],
}

/// Fixed-point weight scale of the resampler (11 bits, as OpenCV's `INTER_RESIZE_COEF_BITS`).
const COEF_BITS: u32 = 11;
const COEF_ONE: u32 = 1 << COEF_BITS;

/// Precomputed bilinear taps for one (source size → destination size), OpenCV `INTER_LINEAR` geometry:
/// source coordinate `(d + 0.5) * src/dst - 0.5`, clamped to the edge pixels, 2 taps per axis. Built once per
/// geometry, so resizing allocates nothing per frame (fast_image_resize recomputes and allocates its tables on
/// every call, hundreds of allocations per frame).
#[derive(Debug)]
struct BilinearPlan {
    key: (u32, u32, u32, u32),
    /// Per destination column: byte offsets of the two source pixels and their weights.
    xs: Vec<(u32, u32, u32, u32)>,
    /// Per destination row: the two source rows and their weights.
    ys: Vec<(usize, usize, u32, u32)>,
}

fn taps(src: u32, dst: u32) -> impl Iterator<Item = (u32, u32, u32, u32)> {
    let scale = f64::from(src) / f64::from(dst);
    (0..dst).map(move |d| {
        let f = (f64::from(d) + 0.5) * scale - 0.5;
        let (mut i, mut frac) = (f.floor(), f - f.floor());
        if i < 0.0 {
            (i, frac) = (0.0, 0.0);
        }
        let last = f64::from(src - 1);
        if i >= last {
            (i, frac) = (last, 0.0);
        }
        let (i, w1) = (i as u32, (frac * f64::from(COEF_ONE)).round() as u32);
        if i + 1 == src && src >= 2 {
            // The last pixel: the same value as taking all of it from the pair (src-2, src-1), which lets every
            // tap read two adjacent pixels.
            return (i - 1, i, 0, COEF_ONE);
        }
        (i, (i + 1).min(src - 1), COEF_ONE - w1, w1)
    })
}

impl BilinearPlan {
    fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        Self {
            key: (src_w, src_h, dst_w, dst_h),
            xs: taps(src_w, dst_w)
                .map(|(a, b, w0, w1)| (a * 3, b * 3, w0, w1))
                .collect(),
            ys: taps(src_h, dst_h)
                .map(|(a, b, w0, w1)| (a as usize, b as usize, w0, w1))
                .collect(),
        }
    }
}

/// Blend two source rows: `w0 * a + w1 * b` (contiguous, so the compiler vectorises it).
fn vblend(a: &[u8], b: &[u8], w0: u32, w1: u32, out: &mut [u32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = w0 * u32::from(*x) + w1 * u32::from(*y);
    }
}

/// Resample a vertically blended row horizontally and round back to u8.
fn hresample(plan: &BilinearPlan, vrow: &[u32], out: &mut [u8]) {
    const ROUND: u32 = 1 << (2 * COEF_BITS - 1);
    let px = |v: u32| ((v + ROUND) >> (2 * COEF_BITS)).min(255) as u8;
    if plan.key.0 >= 2 {
        // Every tap reads two adjacent pixels (see `taps`): one 6-value window per output pixel.
        for (o, &(x0, _, w0, w1)) in out.chunks_exact_mut(3).zip(&plan.xs) {
            let p = &vrow[x0 as usize..x0 as usize + 6];
            o[0] = px(w0 * p[0] + w1 * p[3]);
            o[1] = px(w0 * p[1] + w1 * p[4]);
            o[2] = px(w0 * p[2] + w1 * p[5]);
        }
        return;
    }
    for (o, &(x0, x1, w0, w1)) in out.chunks_exact_mut(3).zip(&plan.xs) {
        let (a, b) = (&vrow[x0 as usize..x0 as usize + 3], &vrow[x1 as usize..x1 as usize + 3]);
        o[0] = px(w0 * a[0] + w1 * b[0]);
        o[1] = px(w0 * a[1] + w1 * b[1]);
        o[2] = px(w0 * a[2] + w1 * b[2]);
    }
}

impl Resampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Letterbox a packed RGB8 image (`width*height*3` bytes) into `out`, a CHW tensor of
    /// `3 * lb.dst_h * lb.dst_w` elements, values in 0..1. Resizing is bilinear with OpenCV's
    /// `INTER_LINEAR` geometry (half-pixel centres, fixed 2×2 support), as Ultralytics uses.
    pub fn letterbox_into<T: TensorElement>(
        &mut self,
        rgb: &[u8],
        lb: &Letterbox,
        out: &mut [T],
    ) -> Result<(), LetterboxError> {
        self.letterbox_scaled_into(rgb, lb.src_w, lb.src_h, lb, out)
    }

    /// As [`Self::letterbox_into`], for a source that was already downscaled while decoding (JPEG DCT
    /// scaling): `rgb` is `src_w`×`src_h`, covering the same field of view as the `lb.src_w`×`lb.src_h`
    /// image that `lb` describes. The output geometry is `lb`'s exactly.
    pub fn letterbox_scaled_into<T: TensorElement>(
        &mut self,
        rgb: &[u8],
        src_w: u32,
        src_h: u32,
        lb: &Letterbox,
        out: &mut [T],
    ) -> Result<(), LetterboxError> {
        let want = src_w as usize * src_h as usize * 3;
        if rgb.len() != want || src_w == 0 || src_h == 0 {
            return Err(LetterboxError::BufferSize {
                width: src_w,
                height: src_h,
                got: rgb.len(),
                want,
            });
        }
        check_tensor(lb, out.len())?;
        let lut = unit_lut::<T>();
        let nw = lb.new_w as usize;
        self.row.resize(nw * 3, 0);
        if (lb.new_w, lb.new_h) == (src_w, src_h) {
            let mut row = std::mem::take(&mut self.row);
            write_chw(lb, out, &lut, &mut row, |y, dst| {
                dst.copy_from_slice(&rgb[y * nw * 3..(y + 1) * nw * 3])
            });
            self.row = row;
            return Ok(());
        }
        let plan = plan_for(&mut self.plan, src_w, src_h, lb);
        let stride = src_w as usize * 3;
        self.vrow.resize(stride, 0);
        let (vrow, mut row) = (&mut self.vrow, std::mem::take(&mut self.row));
        write_chw(lb, out, &lut, &mut row, |y, dst| {
            let (y0, y1, w0, w1) = plan.ys[y];
            vblend(
                &rgb[y0 * stride..(y0 + 1) * stride],
                &rgb[y1 * stride..(y1 + 1) * stride],
                w0,
                w1,
                vrow,
            );
            hresample(plan, vrow, dst);
        });
        self.row = row;
        Ok(())
    }
}

impl Resampler {
    /// Letterbox an image that is produced row by row: `row(y, dst)` writes source row `y` (0..`src_h`) as
    /// packed RGB8 (`src_w*3` bytes) into `dst`. Only the rows the resampler reads are produced, each at most
    /// once per call (a two-row cache), so a YUV frame is converted and resized in one pass without a
    /// full-size RGB copy. Output is identical to converting the whole image first and calling
    /// [`Self::letterbox_into`].
    pub fn letterbox_rows_into<T: TensorElement>(
        &mut self,
        src_w: u32,
        src_h: u32,
        lb: &Letterbox,
        out: &mut [T],
        mut row: impl FnMut(usize, &mut [u8]),
    ) -> Result<(), LetterboxError> {
        if src_w == 0 || src_h == 0 {
            return Err(LetterboxError::EmptyImage {
                width: src_w,
                height: src_h,
            });
        }
        check_tensor(lb, out.len())?;
        let lut = unit_lut::<T>();
        let stride = src_w as usize * 3;
        self.row.resize(lb.new_w as usize * 3, 0);
        let mut out_row = std::mem::take(&mut self.row);
        if (lb.new_w, lb.new_h) == (src_w, src_h) {
            write_chw(lb, out, &lut, &mut out_row, |y, dst| row(y, dst));
            self.row = out_row;
            return Ok(());
        }
        let plan = plan_for(&mut self.plan, src_w, src_h, lb);
        self.vrow.resize(stride, 0);
        for r in &mut self.src_rows {
            r.resize(stride, 0);
        }
        let (vrow, rows) = (&mut self.vrow, &mut self.src_rows);
        // Which source row each cache slot holds; reset per call (the producer's frame changes).
        let mut held: [Option<usize>; 2] = [None, None];
        write_chw(lb, out, &lut, &mut out_row, |y, dst| {
            let (y0, y1, w0, w1) = plan.ys[y];
            let keep = held.iter().position(|h| *h == Some(y1));
            let a = cached_row(&mut held, rows, y0, keep, &mut row);
            let b = cached_row(&mut held, rows, y1, Some(a), &mut row);
            vblend(&rows[a], &rows[b], w0, w1, vrow);
            hresample(plan, vrow, dst);
        });
        self.row = out_row;
        Ok(())
    }
}

/// The cache slot holding source row `want`, producing it into a slot other than `keep` if needed.
fn cached_row(
    held: &mut [Option<usize>; 2],
    rows: &mut [Vec<u8>; 2],
    want: usize,
    keep: Option<usize>,
    produce: &mut impl FnMut(usize, &mut [u8]),
) -> usize {
    if let Some(i) = held.iter().position(|h| *h == Some(want)) {
        return i;
    }
    let i = usize::from(keep == Some(0));
    held[i] = Some(want);
    produce(want, &mut rows[i]);
    i
}

/// The tensor must hold exactly 3 planes of the model input.
fn check_tensor(lb: &Letterbox, len: usize) -> Result<(), LetterboxError> {
    let want = 3 * lb.dst_w as usize * lb.dst_h as usize;
    if len == want {
        Ok(())
    } else {
        Err(LetterboxError::TensorSize {
            width: lb.dst_w,
            height: lb.dst_h,
            got: len,
            want,
        })
    }
}

/// The cached taps for `src_w`×`src_h` → `lb`'s resized size, rebuilt only when the geometry changes.
fn plan_for<'a>(cache: &'a mut Option<BilinearPlan>, src_w: u32, src_h: u32, lb: &Letterbox) -> &'a BilinearPlan {
    let key = (src_w, src_h, lb.new_w, lb.new_h);
    if cache.as_ref().is_none_or(|p| p.key != key) {
        *cache = None;
    }
    cache.get_or_insert_with(|| BilinearPlan::new(src_w, src_h, lb.new_w, lb.new_h))
}

/// Lookup table u8 → normalised tensor value.
fn unit_lut<T: TensorElement>() -> [T; 256] {
    let mut lut = [T::default(); 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = T::from_f32(i as f32 / 255.0);
    }
    lut
}

/// Pad + HWC→CHW + normalise. `fill(y, row)` writes row `y` (0..new_h) of the resized RGB8 image.
fn write_chw<T: TensorElement>(
    lb: &Letterbox,
    out: &mut [T],
    lut: &[T; 256],
    row: &mut [u8],
    mut fill: impl FnMut(usize, &mut [u8]),
) {
    let pad = lut[usize::from(PAD_VALUE)];
    let (dw, dh) = (lb.dst_w as usize, lb.dst_h as usize);
    let (nw, left, top) = (lb.new_w as usize, lb.pad_left as usize, lb.pad_top as usize);
    let plane = dw * dh;
    let (r_plane, rest) = out.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for y in 0..dh {
        let at = y * dw;
        let (r, g, b) = (
            &mut r_plane[at..at + dw],
            &mut g_plane[at..at + dw],
            &mut b_plane[at..at + dw],
        );
        if y < top || y >= top + lb.new_h as usize {
            r.fill(pad);
            g.fill(pad);
            b.fill(pad);
            continue;
        }
        fill(y - top, row);
        for plane_row in [&mut *r, &mut *g, &mut *b] {
            plane_row[..left].fill(pad);
            plane_row[left + nw..].fill(pad);
        }
        let (r, g, b) = (
            &mut r[left..left + nw],
            &mut g[left..left + nw],
            &mut b[left..left + nw],
        );
        for (x, px) in row.chunks_exact(3).enumerate() {
            r[x] = lut[usize::from(px[0])];
            g[x] = lut[usize::from(px[1])];
            b[x] = lut[usize::from(px[2])];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn geometry_matches_ultralytics_for_landscape_photo() {
        // person.jpg is 640x424; at 416: r = 0.65, new 416x276 (275.6 -> 276), pad top 70, bottom 70.
        let lb = Letterbox::new(640, 424, 416, 416).unwrap();
        assert_eq!((lb.new_w, lb.new_h, lb.pad_left, lb.pad_top), (416, 276, 0, 70));
    }

    #[test]
    fn odd_padding_puts_extra_pixel_bottom_right() {
        // 100x51 into 100x100: new 100x51, 49 rows of padding -> 24 top, 25 bottom.
        let lb = Letterbox::new(100, 51, 100, 100).unwrap();
        assert_eq!((lb.new_h, lb.pad_top), (51, 24));
        let rgb = vec![200u8; 100 * 51 * 3];
        let mut out = vec![0f32; 3 * 100 * 100];
        Resampler::new().letterbox_into(&rgb, &lb, &mut out).unwrap();
        let pad = 114.0 / 255.0;
        let px = |c: usize, y: usize, x: usize| out[c * 10_000 + y * 100 + x];
        assert_eq!(px(0, 23, 50), pad);
        assert_eq!(px(0, 24, 50), 200.0 / 255.0);
        assert_eq!(px(2, 74, 0), 200.0 / 255.0);
        assert_eq!(px(1, 75, 99), pad);
        assert_eq!(px(1, 99, 99), pad);
    }

    #[test]
    fn channels_are_rgb_planes_and_f16_matches_f32() {
        let lb = Letterbox::new(2, 2, 2, 2).unwrap();
        let rgb = [10u8, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120];
        let mut out = vec![0f32; 12];
        let mut pre = Resampler::new();
        pre.letterbox_into(&rgb, &lb, &mut out).unwrap();
        let want: Vec<f32> = [10, 40, 70, 100, 20, 50, 80, 110, 30, 60, 90, 120]
            .iter()
            .map(|v| *v as f32 / 255.0)
            .collect();
        assert_eq!(out, want);
        let mut out16 = vec![f16::ZERO; 12];
        pre.letterbox_into(&rgb, &lb, &mut out16).unwrap();
        for (a, b) in out16.iter().zip(&want) {
            assert_eq!(*a, f16::from_f32(*b));
        }
    }

    #[test]
    fn wrong_buffer_sizes_are_errors() {
        let lb = Letterbox::new(4, 4, 8, 8).unwrap();
        let mut pre = Resampler::new();
        assert!(matches!(
            pre.letterbox_into(&[0u8; 5], &lb, &mut [0f32; 192]),
            Err(LetterboxError::BufferSize { .. })
        ));
        assert!(matches!(
            pre.letterbox_into(&[0u8; 48], &lb, &mut [0f32; 10]),
            Err(LetterboxError::TensorSize { .. })
        ));
        assert!(Letterbox::new(0, 4, 8, 8).is_err());
        assert!(Letterbox::new(4, 4, 0, 8).is_err());
    }

    #[test]
    fn boxes_map_back_and_clip() {
        let lb = Letterbox::new(640, 424, 416, 416).unwrap();
        let b = lb.image_box_from_model(ModelBox::new([-5.0, 60.0, 420.0, 346.0]));
        assert_eq!(b[0], 0.0);
        assert_eq!(b[1], 0.0);
        assert_eq!(b[2], 640.0);
        assert!((b[3] - 424.0).abs() < 1e-3, "{b:?}");
    }

    /// Exact bilinear (OpenCV INTER_LINEAR geometry) in f64, the definition our fixed-point code implements.
    fn reference_resize(rgb: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f64> {
        let coord = |d: usize, s: usize, dd: usize| {
            let f = (d as f64 + 0.5) * s as f64 / dd as f64 - 0.5;
            let i = f.floor().clamp(0.0, (s - 1) as f64);
            let frac = if f < 0.0 || f >= (s - 1) as f64 {
                0.0
            } else {
                f - f.floor()
            };
            (i as usize, (i as usize + 1).min(s - 1), frac)
        };
        let mut out = Vec::with_capacity(dw * dh * 3);
        for y in 0..dh {
            let (y0, y1, fy) = coord(y, sh, dh);
            for x in 0..dw {
                let (x0, x1, fx) = coord(x, sw, dw);
                for c in 0..3 {
                    let p = |xx: usize, yy: usize| f64::from(rgb[(yy * sw + xx) * 3 + c]);
                    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
                    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
                    out.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
        out
    }

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((i % 97) as u32 * 2 + (x % 40)) as u8
            })
            .collect()
    }

    #[test]
    fn resampler_matches_fast_image_resize_within_one_level() {
        use fast_image_resize as fr;
        let (sw, sh) = (1920u32, 1080u32);
        let rgb = noise((sw * sh * 3) as usize, 7);
        let lb = Letterbox::new(sw, sh, 640, 640).unwrap();
        let mut ours = vec![0f32; 3 * 640 * 640];
        Resampler::new().letterbox_into(&rgb, &lb, &mut ours).unwrap();
        let src = fr::images::ImageRef::new(sw, sh, &rgb, fr::PixelType::U8x3).unwrap();
        let mut dst = fr::images::Image::new(lb.new_w, lb.new_h, fr::PixelType::U8x3);
        let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear));
        fr::Resizer::new().resize(&src, &mut dst, &opts).unwrap();
        let theirs = dst.buffer();
        let mut worst = 0f32;
        for y in 0..lb.new_h as usize {
            for x in 0..lb.new_w as usize {
                for c in 0..3 {
                    let o = ours[c * 640 * 640 + (y + lb.pad_top as usize) * 640 + x] * 255.0;
                    worst = worst.max((o - f32::from(theirs[(y * lb.new_w as usize + x) * 3 + c])).abs());
                }
            }
        }
        assert!(worst <= 1.0 + 1e-3, "worst difference {worst} levels");
    }

    proptest! {
        #[test]
        fn resampler_is_the_bilinear_definition_within_rounding(
            sw in 1usize..90, sh in 1usize..90, dw in 1u32..64, seed in 1u32..1000,
        ) {
            let rgb = noise(sw * sh * 3, seed);
            let lb = Letterbox::new(sw as u32, sh as u32, dw, dw).unwrap();
            let mut out = vec![0f32; 3 * (dw * dw) as usize];
            Resampler::new().letterbox_into(&rgb, &lb, &mut out).unwrap();
            let want = reference_resize(&rgb, sw, sh, lb.new_w as usize, lb.new_h as usize);
            let (nw, d) = (lb.new_w as usize, dw as usize);
            for y in 0..lb.new_h as usize {
                for x in 0..nw {
                    for c in 0..3 {
                        let got = f64::from(out[c * d * d + (y + lb.pad_top as usize) * d + x + lb.pad_left as usize]) * 255.0;
                        let w = want[(y * nw + x) * 3 + c];
                        // Rounding (0.5) plus 11-bit weight quantisation (at most 255 / 2048 per axis pair).
                        prop_assert!((got - w).abs() <= 0.5 + 255.0 / 2048.0, "({x},{y},{c}): {got} vs {w}");
                    }
                }
            }
        }

        #[test]
        fn image_from_model_inverts_model_from_image(
            src_w in 1u32..5000, src_h in 1u32..5000, dst in prop::sample::select(vec![160u32, 320, 416, 640, 1280]),
            fx in 0f32..1.0, fy in 0f32..1.0,
        ) {
            let lb = Letterbox::new(src_w, src_h, dst, dst).unwrap();
            prop_assert!(lb.new_w <= dst && lb.new_h <= dst);
            prop_assert!(lb.new_w == dst || lb.new_h == dst);
            let p = ImagePoint::new([fx * src_w as f32, fy * src_h as f32]);
            let q = lb.image_from_model(lb.model_from_image(p));
            let tol = 1e-4 * (src_w.max(src_h) as f32).max(1.0);
            prop_assert!((q[0] - p[0]).abs() <= tol && (q[1] - p[1]).abs() <= tol, "{:?} -> {:?}", p, q);
            // The image maps inside the model input.
            let m = lb.model_from_image(p);
            prop_assert!(m[0] >= 0.0 && m[0] <= dst as f32 + 1e-3 && m[1] >= 0.0 && m[1] <= dst as f32 + 1e-3);
        }
    }
}
