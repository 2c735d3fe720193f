//! Y'CbCr → RGB8 for the raw camera formats (YUYV 4:2:2 packed, NV12 4:2:0 semi-planar). Pure functions.
//!
//! The matrix (BT.601 or BT.709) and the quantisation range (limited 16–235/240 or full 0–255) come from the
//! driver's format description ([`YuvSpec::from_v4l2`]); without one, BT.601 limited range, what UVC webcams
//! and V4L2's defaults for SDTV/sRGB use. Chroma is taken from the pair (4:2:2) or the 2×2 block (4:2:0) a
//! pixel belongs to, without interpolation. Conversion is integer arithmetic (16.16 fixed point) and is within
//! one level of the floating-point definition (tested against it for every sampled input).

use serde::Serialize;

/// The Y'CbCr → R'G'B' matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matrix {
    #[default]
    Bt601,
    Bt709,
}

/// The quantisation range of Y'CbCr samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Range {
    /// Y' 16–235, Cb/Cr 16–240 ("studio", "limited", V4L2_QUANTIZATION_LIM_RANGE).
    #[default]
    Limited,
    /// 0–255 (V4L2_QUANTIZATION_FULL_RANGE, JPEG).
    Full,
}

/// How a frame's Y'CbCr samples map to RGB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct YuvSpec {
    pub matrix: Matrix,
    pub range: Range,
}

// V4L2 enum values (videodev2.h), so this module needs no bindings (the V4L2 source's tests check them against
// the bindings).
const V4L2_COLORSPACE_SMPTE170M: u32 = 1;
const V4L2_COLORSPACE_REC709: u32 = 3;
const V4L2_COLORSPACE_JPEG: u32 = 7;
const V4L2_COLORSPACE_SRGB: u32 = 8;
const V4L2_YCBCR_ENC_DEFAULT: u32 = 0;
const V4L2_YCBCR_ENC_601: u32 = 1;
const V4L2_YCBCR_ENC_709: u32 = 2;
const V4L2_YCBCR_ENC_XV601: u32 = 3;
const V4L2_YCBCR_ENC_XV709: u32 = 4;
const V4L2_QUANTIZATION_DEFAULT: u32 = 0;
const V4L2_QUANTIZATION_FULL_RANGE: u32 = 1;

impl YuvSpec {
    pub const BT601_LIMITED: Self = Self {
        matrix: Matrix::Bt601,
        range: Range::Limited,
    };

    /// From a V4L2 format's `colorspace`, `ycbcr_enc` and `quantization`, resolving the "default" values as
    /// the kernel's `V4L2_MAP_YCBCR_ENC_DEFAULT` / `V4L2_MAP_QUANTIZATION_DEFAULT` do for Y'CbCr formats.
    /// Encodings other than 601/709 (BT.2020, SMPTE 240M, …) fall back to the closest, BT.709.
    pub fn from_v4l2(colorspace: u32, ycbcr_enc: u32, quantization: u32) -> Self {
        let enc = if ycbcr_enc == V4L2_YCBCR_ENC_DEFAULT {
            match colorspace {
                V4L2_COLORSPACE_REC709 => V4L2_YCBCR_ENC_709,
                c if c == V4L2_COLORSPACE_SMPTE170M || c == V4L2_COLORSPACE_SRGB || c == V4L2_COLORSPACE_JPEG => {
                    V4L2_YCBCR_ENC_601
                }
                0 => V4L2_YCBCR_ENC_601,
                _ => V4L2_YCBCR_ENC_709,
            }
        } else {
            ycbcr_enc
        };
        let matrix = match enc {
            V4L2_YCBCR_ENC_601 | V4L2_YCBCR_ENC_XV601 => Matrix::Bt601,
            V4L2_YCBCR_ENC_709 | V4L2_YCBCR_ENC_XV709 => Matrix::Bt709,
            _ => Matrix::Bt709,
        };
        let range = match quantization {
            V4L2_QUANTIZATION_FULL_RANGE => Range::Full,
            V4L2_QUANTIZATION_DEFAULT if colorspace == V4L2_COLORSPACE_JPEG => Range::Full,
            _ => Range::Limited,
        };
        Self { matrix, range }
    }

    /// (Kr, Kb) of the matrix.
    pub fn kr_kb(self) -> (f64, f64) {
        match self.matrix {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
        }
    }

    /// Fixed-point coefficients for [`Coeffs::rgb`].
    pub fn coeffs(self) -> Coeffs {
        let (kr, kb) = self.kr_kb();
        let kg = 1.0 - kr - kb;
        let (y_off, y_scale, c_scale) = match self.range {
            Range::Limited => (16, 255.0 / 219.0, 255.0 / 224.0),
            Range::Full => (0, 1.0, 1.0),
        };
        let fx = |v: f64| (v * 65_536.0).round() as i32;
        Coeffs {
            y_off,
            y: fx(y_scale),
            r_v: fx(2.0 * (1.0 - kr) * c_scale),
            g_u: fx(2.0 * (1.0 - kb) * kb / kg * c_scale),
            g_v: fx(2.0 * (1.0 - kr) * kr / kg * c_scale),
            b_u: fx(2.0 * (1.0 - kb) * c_scale),
        }
    }
}

/// 16.16 fixed-point conversion coefficients of one [`YuvSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coeffs {
    y_off: i32,
    y: i32,
    r_v: i32,
    g_u: i32,
    g_v: i32,
    b_u: i32,
}

impl Coeffs {
    /// One pixel: Y', Cb (`u`), Cr (`v`) → RGB8, rounded and clamped.
    #[inline(always)]
    pub fn rgb(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let c = (i32::from(y) - self.y_off) * self.y + 32_768;
        let d = i32::from(u) - 128;
        let e = i32::from(v) - 128;
        let clamp = |x: i32| (x >> 16).clamp(0, 255) as u8;
        [
            clamp(c + self.r_v * e),
            clamp(c - self.g_u * d - self.g_v * e),
            clamp(c + self.b_u * d),
        ]
    }
}

/// The floating-point definition (for tests and reference conversions): R', G', B' in 0..255, unclamped.
pub fn reference_rgb(spec: YuvSpec, y: u8, u: u8, v: u8) -> [f64; 3] {
    let (kr, kb) = spec.kr_kb();
    let kg = 1.0 - kr - kb;
    let (yn, pb, pr) = match spec.range {
        Range::Limited => (
            (f64::from(y) - 16.0) / 219.0,
            (f64::from(u) - 128.0) / 224.0,
            (f64::from(v) - 128.0) / 224.0,
        ),
        Range::Full => (
            f64::from(y) / 255.0,
            (f64::from(u) - 128.0) / 255.0,
            (f64::from(v) - 128.0) / 255.0,
        ),
    };
    let r = yn + 2.0 * (1.0 - kr) * pr;
    let b = yn + 2.0 * (1.0 - kb) * pb;
    let g = (yn - kr * r - kb * b) / kg;
    [r * 255.0, g * 255.0, b * 255.0]
}

/// One row of YUYV (`Y0 U Y1 V`, `2*w` bytes) → packed RGB8 (`3*w` bytes). `w` is even.
pub fn yuyv_row_to_rgb(src: &[u8], k: &Coeffs, out: &mut [u8]) {
    for (quad, px) in src.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
        let (u, v) = (quad[1], quad[3]);
        px[..3].copy_from_slice(&k.rgb(quad[0], u, v));
        px[3..].copy_from_slice(&k.rgb(quad[2], u, v));
    }
}

/// One row of NV12: its luma row (`w` bytes) and the interleaved CbCr row it shares with its neighbour
/// (`w` bytes) → packed RGB8 (`3*w` bytes). `w` is even.
pub fn nv12_row_to_rgb(luma: &[u8], chroma: &[u8], k: &Coeffs, out: &mut [u8]) {
    for ((ys, uv), px) in luma
        .chunks_exact(2)
        .zip(chroma.chunks_exact(2))
        .zip(out.chunks_exact_mut(6))
    {
        let (u, v) = (uv[0], uv[1]);
        px[..3].copy_from_slice(&k.rgb(ys[0], u, v));
        px[3..].copy_from_slice(&k.rgb(ys[1], u, v));
    }
}

/// Byte offsets of row `y`'s luma and chroma in a tightly packed `w`-wide NV12 frame of height `h`.
#[inline]
pub fn nv12_rows(w: usize, h: usize, y: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let uv = w * h + (y / 2) * w;
    (y * w..(y + 1) * w, uv..uv + w)
}

/// Whole YUYV frame → RGB8 (`out` resized to `w*h*3`): the straightforward reference the fused path is
/// tested against.
pub fn yuyv_to_rgb(src: &[u8], w: usize, h: usize, spec: YuvSpec, out: &mut Vec<u8>) {
    let k = spec.coeffs();
    out.resize(w * h * 3, 0);
    for (row, px) in src.chunks_exact(w * 2).zip(out.chunks_exact_mut(w * 3)).take(h) {
        yuyv_row_to_rgb(row, &k, px);
    }
}

/// Whole NV12 frame → RGB8 (`out` resized to `w*h*3`), pixel by pixel.
pub fn nv12_to_rgb(src: &[u8], w: usize, h: usize, spec: YuvSpec, out: &mut Vec<u8>) {
    let k = spec.coeffs();
    out.resize(w * h * 3, 0);
    let (luma, chroma) = src.split_at(w * h);
    for y in 0..h {
        for x in 0..w {
            let c = (y / 2) * w + (x / 2) * 2;
            let at = (y * w + x) * 3;
            out[at..at + 3].copy_from_slice(&k.rgb(luma[y * w + x], chroma[c], chroma[c + 1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [YuvSpec; 4] = [
        YuvSpec::BT601_LIMITED,
        YuvSpec {
            matrix: Matrix::Bt601,
            range: Range::Full,
        },
        YuvSpec {
            matrix: Matrix::Bt709,
            range: Range::Limited,
        },
        YuvSpec {
            matrix: Matrix::Bt709,
            range: Range::Full,
        },
    ];

    #[test]
    fn fixed_point_is_within_one_level_of_the_definition() {
        for spec in ALL {
            let k = spec.coeffs();
            let mut worst = 0f64;
            for y in (0..=255u16).step_by(3) {
                for u in (0..=255u16).step_by(5) {
                    for v in (0..=255u16).step_by(5) {
                        let (y, u, v) = (y as u8, u as u8, v as u8);
                        let got = k.rgb(y, u, v);
                        let want = reference_rgb(spec, y, u, v);
                        for c in 0..3 {
                            let d = (f64::from(got[c]) - want[c].clamp(0.0, 255.0)).abs();
                            worst = worst.max(d);
                        }
                    }
                }
            }
            assert!(worst <= 1.0, "{spec:?}: worst {worst}");
        }
    }

    #[test]
    fn black_white_and_primaries() {
        let lim = YuvSpec::BT601_LIMITED.coeffs();
        assert_eq!(lim.rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(lim.rgb(235, 128, 128), [255, 255, 255]);
        let red = lim.rgb(81, 90, 240); // BT.601 studio red
        assert!(red[0] >= 254 && red[1] <= 1 && red[2] <= 1, "{red:?}");
        let full = ALL[1].coeffs();
        assert_eq!(full.rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(full.rgb(255, 128, 128), [255, 255, 255]);
        // BT.709 limited green (Y 173, Cb 42, Cr 26).
        let g = ALL[2].coeffs().rgb(173, 42, 26);
        assert!(g[0] <= 1 && g[1] >= 254 && g[2] <= 1, "{g:?}");
    }

    #[test]
    fn v4l2_defaults_resolve_like_the_kernel() {
        assert_eq!(YuvSpec::from_v4l2(V4L2_COLORSPACE_SRGB, 0, 0), YuvSpec::BT601_LIMITED);
        assert_eq!(
            YuvSpec::from_v4l2(V4L2_COLORSPACE_SMPTE170M, 0, 0),
            YuvSpec::BT601_LIMITED
        );
        assert_eq!(YuvSpec::from_v4l2(V4L2_COLORSPACE_REC709, 0, 0), ALL[2]);
        assert_eq!(YuvSpec::from_v4l2(V4L2_COLORSPACE_JPEG, 0, 0), ALL[1]);
        assert_eq!(YuvSpec::from_v4l2(V4L2_COLORSPACE_SRGB, V4L2_YCBCR_ENC_709, 1), ALL[3]);
        assert_eq!(YuvSpec::from_v4l2(0, 0, 0), YuvSpec::BT601_LIMITED);
    }

    #[test]
    fn row_converters_match_the_pixel_formula() {
        let (w, h) = (6usize, 4usize);
        let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 37 % 251) as u8).collect();
        let k = YuvSpec::BT601_LIMITED.coeffs();
        let mut rgb = Vec::new();
        yuyv_to_rgb(&yuyv, w, h, YuvSpec::BT601_LIMITED, &mut rgb);
        // pixel (x=3, y=2): Y1 of the second quad in row 2
        let q = 2 * w * 2 + 4;
        assert_eq!(
            &rgb[(2 * w + 3) * 3..][..3],
            k.rgb(yuyv[q + 2], yuyv[q + 1], yuyv[q + 3])
        );
        let nv12: Vec<u8> = (0..w * h * 3 / 2).map(|i| (i * 53 % 241) as u8).collect();
        nv12_to_rgb(&nv12, w, h, YuvSpec::BT601_LIMITED, &mut rgb);
        let mut row = vec![0u8; w * 3];
        for y in 0..h {
            let (l, c) = nv12_rows(w, h, y);
            nv12_row_to_rgb(&nv12[l], &nv12[c], &k, &mut row);
            assert_eq!(&rgb[y * w * 3..(y + 1) * w * 3], &row[..], "row {y}");
        }
    }
}
