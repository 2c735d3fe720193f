//! Frames as they travel from a source into the pipeline.

use serde::Serialize;

use crate::pool::Pooled;

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

impl YuvSpec {
    pub const BT601_LIMITED: Self = Self {
        matrix: Matrix::Bt601,
        range: Range::Limited,
    };

    /// (Kr, Kb) of the matrix.
    pub fn kr_kb(self) -> (f64, f64) {
        match self.matrix {
            Matrix::Bt601 => (0.299, 0.114),
            Matrix::Bt709 => (0.2126, 0.0722),
        }
    }
}
