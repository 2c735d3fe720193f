//! The `mjpeg` source: a file of concatenated JPEG frames, as MJPEG cameras produce, delivered in order and
//! paced. [`split_jpeg_stream`] is the pure, fuzzable frame splitter.

use std::ops::Range;
use std::path::Path;

use super::{Cause, Playback, SourceError};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::frame::{Frame, PixelFormat};

/// Result of splitting a byte stream into JPEG frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Byte ranges of complete frames (SOI … EOI).
    pub frames: Vec<Range<usize>>,
    /// Frames that started but never ended (cut off by the end of the data, or a new SOI inside).
    pub truncated: usize,
    /// Bytes outside any frame (garbage between frames).
    pub skipped_bytes: usize,
}

/// Split concatenated JPEGs by walking their marker structure: segment lengths are honoured (so JPEGs
/// embedded in EXIF thumbnails don't cut a frame short) and entropy-coded data is scanned for the next real
/// marker (`FF 00` stuffing and `RSTn` are skipped). Never panics, whatever the input.
pub fn split_jpeg_stream(data: &[u8]) -> Split {
    let mut out = Split::default();
    let mut pos = 0;
    while pos < data.len() {
        let Some(start) = find_soi(data, pos) else {
            out.skipped_bytes += data.len() - pos;
            break;
        };
        out.skipped_bytes += start - pos;
        match frame_end(data, start) {
            FrameEnd::Complete(end) => {
                out.frames.push(start..end);
                pos = end;
            }
            FrameEnd::Broken(resume) => {
                out.truncated += 1;
                pos = resume.max(start + 2);
            }
        }
    }
    out
}

fn find_soi(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(3)
        .position(|w| w == [0xFF, 0xD8, 0xFF])
        .map(|i| from + i)
}

enum FrameEnd {
    /// One past the EOI marker.
    Complete(usize),
    /// The frame is unusable; resume scanning here.
    Broken(usize),
}

fn frame_end(data: &[u8], start: usize) -> FrameEnd {
    let mut p = start + 2; // past SOI
    loop {
        // Expect a marker: FF, optional FF fill bytes, then the code.
        if data.get(p) != Some(&0xFF) {
            return FrameEnd::Broken(p);
        }
        while data.get(p) == Some(&0xFF) {
            p += 1;
        }
        let Some(&code) = data.get(p) else {
            return FrameEnd::Broken(data.len());
        };
        p += 1;
        match code {
            0xD9 => return FrameEnd::Complete(p),
            0xD8 => return FrameEnd::Broken(p - 2), // a new frame starts inside this one
            0x01 | 0xD0..=0xD7 => continue,         // no length
            _ => {
                let Some(len) = data
                    .get(p..p + 2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                else {
                    return FrameEnd::Broken(data.len());
                };
                if len < 2 {
                    return FrameEnd::Broken(p);
                }
                p += len;
                if p > data.len() {
                    return FrameEnd::Broken(data.len());
                }
                if code == 0xDA {
                    // Entropy-coded data up to the next marker that is not stuffing or a restart.
                    loop {
                        let Some(i) = data.get(p..).and_then(|d| d.iter().position(|b| *b == 0xFF)) else {
                            return FrameEnd::Broken(data.len());
                        };
                        p += i;
                        match data.get(p + 1) {
                            None => return FrameEnd::Broken(data.len()),
                            Some(0x00 | 0xD0..=0xD7 | 0xFF) => p += if data[p + 1] == 0xFF { 1 } else { 2 },
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Frames of an MJPEG file, looped or not, paced.
pub struct MjpegSource {
    data: Vec<u8>,
    frames: Vec<Range<usize>>,
    playback: Playback,
    name: String,
}

impl MjpegSource {
    pub fn open(path: &Path, fps_hz: f64, loop_frames: bool, pool_size: usize) -> Result<Self, SourceError> {
        let data = std::fs::read(path).map_err(|e| SourceError::Open {
            what: path.display().to_string(),
            source: Box::new(Cause::Io(e)),
        })?;
        let split = split_jpeg_stream(&data);
        if split.frames.is_empty() {
            return Err(SourceError::Open {
                what: path.display().to_string(),
                source: Box::new(Cause::NoJpegFrame),
            });
        }
        if split.truncated > 0 || split.skipped_bytes > 0 {
            log::warn!(
                "{}: {} truncated frames and {} stray bytes skipped",
                path.display(),
                split.truncated,
                split.skipped_bytes
            );
        }
        let largest = split.frames.iter().map(|r| r.len()).max().unwrap_or(0);
        log::info!(
            "mjpeg source {}: {} frames, {:.1} MB",
            path.display(),
            split.frames.len(),
            data.len() as f64 / 1e6
        );
        Ok(Self {
            name: format!("mjpeg:{}", path.display()),
            playback: Playback::new(split.frames.len(), largest, fps_hz, loop_frames, pool_size),
            frames: split.frames,
            data,
        })
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl super::Source for MjpegSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn paced(&self) -> bool {
        self.playback.paced()
    }

    fn next_frame(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Frame>, SourceError> {
        let Some((index, seq, mut buf)) = self.playback.advance(stop) else {
            return Ok(None);
        };
        buf.extend_from_slice(&self.data[self.frames[index].clone()]);
        Ok(Some(Frame {
            seq,
            capture_ns: monotonic_ns(),
            format: PixelFormat::Jpeg,
            width: 0,
            height: 0,
            yuv: kestrel_vision::yuv::YuvSpec::BT601_LIMITED,
            data: buf,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, shade: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([shade, (x * 3) as u8, (y * 5) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn splits_concatenated_frames_exactly() {
        let (a, b, c) = (jpeg(32, 16, 10), jpeg(16, 16, 200), jpeg(64, 8, 90));
        let mut stream = b"garbage".to_vec();
        let starts = [stream.len(), stream.len() + a.len(), stream.len() + a.len() + b.len()];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&b);
        stream.extend_from_slice(&c);
        let s = split_jpeg_stream(&stream);
        assert_eq!(
            s.frames,
            vec![starts[0]..starts[1], starts[1]..starts[2], starts[2]..stream.len()]
        );
        assert_eq!((s.truncated, s.skipped_bytes), (0, 7));
        for r in s.frames {
            assert!(kestrel_vision::decode::decode_image(&stream[r]).is_ok());
        }
    }

    #[test]
    fn truncated_last_frame_is_counted_not_returned() {
        let a = jpeg(32, 16, 10);
        let mut stream = a.clone();
        stream.extend_from_slice(&a[..a.len() - 100]);
        let s = split_jpeg_stream(&stream);
        assert_eq!(s.frames, vec![0..a.len()]);
        assert_eq!(s.truncated, 1);
    }

    #[test]
    fn embedded_thumbnail_does_not_end_the_frame() {
        // An APP1 segment whose payload is a whole JPEG (as EXIF thumbnails are).
        let thumb = jpeg(8, 8, 1);
        let main = jpeg(32, 32, 2);
        let mut f = vec![0xFF, 0xD8, 0xFF, 0xE1];
        f.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        f.extend_from_slice(&thumb);
        f.extend_from_slice(&main[2..]);
        let s = split_jpeg_stream(&f);
        assert_eq!(s.frames, vec![0..f.len()]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678u32;
        for len in 0..2000 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    [0xFF, 0xD8, 0xD9, 0xDA, 0x00, (x >> 8) as u8][(x % 6) as usize]
                })
                .collect();
            let s = split_jpeg_stream(&data);
            assert!(s.frames.iter().all(|r| r.end <= data.len() && r.start < r.end));
        }
    }
}
