//! Image decoding: encoded bytes (JPEG, PNG) → packed RGB8. Pure; never panics on bad input.

use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;
use thiserror::Error;

/// Largest image side we accept (a decompression-bomb guard; cameras top out far below this).
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation we accept.
pub const MAX_ALLOC_BYTES: u64 = 1 << 30;

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("empty input (0 bytes)")]
    Empty,
    #[error("not a JPEG or PNG image (first bytes {0})")]
    UnknownFormat(String),
    #[error("truncated {0}: the data ends before the end-of-image marker")]
    Truncated(&'static str),
    /// The `image` crate's decoder refused it (its message, trimmed).
    #[error("corrupt {format}: {}", source.to_string().trim())]
    Corrupt {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
    /// libjpeg-turbo refused it.
    #[error("corrupt JPEG: {0}")]
    Jpeg(#[source] crate::preprocess::JpegError),
    #[error("corrupt {format}: zero-sized image {width}x{height}")]
    ZeroSized {
        format: &'static str,
        width: u32,
        height: u32,
    },
    #[error("image too large (limits: {MAX_SIDE} pixels per side, {MAX_ALLOC_BYTES} bytes decoded)")]
    TooLarge,
}

/// A decoded image, packed RGB8, row-major, no padding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => "image",
    }
}

/// A JPEG must end with EOI (FF D9); some cameras pad frames with zero bytes after it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    end >= 4 && bytes[end - 2..end] == [0xFF, 0xD9]
}

/// An encoded image format Kestrel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoded {
    Jpeg,
    Png,
}

/// Identify JPEG or PNG bytes, refusing empty, unknown and truncated (JPEG without EOI) input.
pub fn sniff(bytes: &[u8]) -> Result<Encoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) if jpeg_is_complete(bytes) => Ok(Encoded::Jpeg),
        Ok(ImageFormat::Jpeg) => Err(DecodeError::Truncated("JPEG")),
        Ok(ImageFormat::Png) => Ok(Encoded::Png),
        _ => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(DecodeError::UnknownFormat(head.join(" ")))
        }
    }
}

/// Decode JPEG or PNG bytes to RGB8 (grey, alpha and 16-bit inputs are converted; alpha is dropped).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let format = match sniff(bytes)? {
        Encoded::Jpeg => ImageFormat::Jpeg,
        Encoded::Png => ImageFormat::Png,
    };
    let name = format_name(format);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge,
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated(name)
        }
        other => DecodeError::Corrupt {
            format: name,
            source: other,
        },
    })?;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSized {
            format: name,
            width,
            height,
        });
    }
    Ok(RgbImage {
        width,
        height,
        data: img.into_rgb8().into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_exactly_and_jpeg_approximately() {
        let png = decode_image(&encode(ImageFormat::Png, 17, 9)).unwrap();
        assert_eq!((png.width, png.height, png.data.len()), (17, 9, 17 * 9 * 3));
        assert_eq!(&png.data[3..6], &[7, 0, 128]);
        let jpg = decode_image(&encode(ImageFormat::Jpeg, 32, 16)).unwrap();
        assert_eq!((jpg.width, jpg.height), (32, 16));
        assert!((i32::from(jpg.data[2]) - 128).abs() < 8);
    }

    #[test]
    fn rejects_bad_inputs_with_named_errors() {
        assert!(matches!(decode_image(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_image(b"hello, world\n"),
            Err(DecodeError::UnknownFormat(_))
        ));
        let jpg = encode(ImageFormat::Jpeg, 64, 64);
        assert!(matches!(
            decode_image(&jpg[..jpg.len() / 2]),
            Err(DecodeError::Truncated("JPEG"))
        ));
        let png = encode(ImageFormat::Png, 64, 64);
        assert!(decode_image(&png[..png.len() / 2]).is_err());
        let mut corrupt = jpg.clone();
        for b in corrupt[20..jpg.len() - 2].iter_mut() {
            *b = 0x5A;
        }
        assert!(decode_image(&corrupt).is_err());
    }

    #[test]
    fn refuses_images_beyond_the_size_limit() {
        // A valid PNG header claiming 20000x20000 pixels: refused before any pixel is allocated.
        let img = image::GrayImage::new(1, 1);
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, ImageFormat::Png).unwrap();
        let mut png = png.into_inner();
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes()); // IHDR width
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes()); // IHDR height
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(
            matches!(decode_image(&png), Err(DecodeError::TooLarge)),
            "{:?}",
            decode_image(&png)
        );
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn accepts_zero_padding_after_jpeg_eoi() {
        let mut jpg = encode(ImageFormat::Jpeg, 8, 8);
        jpg.extend_from_slice(&[0; 32]);
        assert!(decode_image(&jpg).is_ok());
    }
}
