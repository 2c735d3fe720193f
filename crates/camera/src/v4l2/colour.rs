//! A V4L2 format's colour description → the [`YuvSpec`] its Y'CbCr samples are converted with.

use kestrel_core::frame::{Matrix, Range, YuvSpec};
use v4l::v4l_sys::{
    v4l2_colorspace_V4L2_COLORSPACE_DEFAULT as COLORSPACE_DEFAULT,
    v4l2_colorspace_V4L2_COLORSPACE_JPEG as COLORSPACE_JPEG,
    v4l2_colorspace_V4L2_COLORSPACE_REC709 as COLORSPACE_REC709,
    v4l2_colorspace_V4L2_COLORSPACE_SMPTE170M as COLORSPACE_SMPTE170M,
    v4l2_colorspace_V4L2_COLORSPACE_SRGB as COLORSPACE_SRGB,
    v4l2_quantization_V4L2_QUANTIZATION_DEFAULT as QUANTIZATION_DEFAULT,
    v4l2_quantization_V4L2_QUANTIZATION_FULL_RANGE as QUANTIZATION_FULL_RANGE,
    v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_601 as YCBCR_ENC_601, v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_709 as YCBCR_ENC_709,
    v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_DEFAULT as YCBCR_ENC_DEFAULT,
    v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_XV601 as YCBCR_ENC_XV601,
    v4l2_ycbcr_encoding_V4L2_YCBCR_ENC_XV709 as YCBCR_ENC_XV709,
};

/// From a V4L2 format's `colorspace`, `ycbcr_enc` and `quantization`, resolving the "default" values as the
/// kernel's `V4L2_MAP_YCBCR_ENC_DEFAULT` / `V4L2_MAP_QUANTIZATION_DEFAULT` do for Y'CbCr formats. Encodings
/// other than 601/709 (BT.2020, SMPTE 240M, …) fall back to the closest, BT.709.
pub fn yuv_spec_from_v4l2(colorspace: u32, ycbcr_enc: u32, quantization: u32) -> YuvSpec {
    let enc = if ycbcr_enc == YCBCR_ENC_DEFAULT {
        match colorspace {
            COLORSPACE_REC709 => YCBCR_ENC_709,
            COLORSPACE_DEFAULT | COLORSPACE_SMPTE170M | COLORSPACE_SRGB | COLORSPACE_JPEG => YCBCR_ENC_601,
            _ => YCBCR_ENC_709,
        }
    } else {
        ycbcr_enc
    };
    let matrix = match enc {
        YCBCR_ENC_601 | YCBCR_ENC_XV601 => Matrix::Bt601,
        YCBCR_ENC_709 | YCBCR_ENC_XV709 => Matrix::Bt709,
        _ => Matrix::Bt709,
    };
    let range = match quantization {
        QUANTIZATION_FULL_RANGE => Range::Full,
        QUANTIZATION_DEFAULT if colorspace == COLORSPACE_JPEG => Range::Full,
        _ => Range::Limited,
    };
    YuvSpec { matrix, range }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4l2_defaults_resolve_like_the_kernel() {
        let spec = |matrix, range| YuvSpec { matrix, range };
        assert_eq!(yuv_spec_from_v4l2(COLORSPACE_SRGB, 0, 0), YuvSpec::BT601_LIMITED);
        assert_eq!(yuv_spec_from_v4l2(COLORSPACE_SMPTE170M, 0, 0), YuvSpec::BT601_LIMITED);
        assert_eq!(
            yuv_spec_from_v4l2(COLORSPACE_REC709, 0, 0),
            spec(Matrix::Bt709, Range::Limited)
        );
        assert_eq!(
            yuv_spec_from_v4l2(COLORSPACE_JPEG, 0, 0),
            spec(Matrix::Bt601, Range::Full)
        );
        assert_eq!(
            yuv_spec_from_v4l2(COLORSPACE_SRGB, YCBCR_ENC_709, QUANTIZATION_FULL_RANGE),
            spec(Matrix::Bt709, Range::Full)
        );
        assert_eq!(yuv_spec_from_v4l2(0, 0, 0), YuvSpec::BT601_LIMITED);
        // An explicit XV709 encoding and limited quantisation.
        assert_eq!(
            yuv_spec_from_v4l2(COLORSPACE_SRGB, YCBCR_ENC_XV709, 2),
            spec(Matrix::Bt709, Range::Limited)
        );
    }
}
