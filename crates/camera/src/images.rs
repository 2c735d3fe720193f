//! The `images` source: JPEG/PNG files (one file or a directory, sorted by name), looped, paced. Files are
//! read once at start; JPEGs travel encoded (decoded by the workers), PNGs are decoded up front to RGB.

use std::path::{Path, PathBuf};

use super::{Cause, Playback, SourceError};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::frame::{Frame, PixelFormat};
use kestrel_vision::decode::decode_image;

struct Item {
    format: PixelFormat,
    width: u32,
    height: u32,
    bytes: Vec<u8>,
}

pub struct ImagesSource {
    items: Vec<Item>,
    playback: Playback,
    name: String,
}

fn is_image(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

impl ImagesSource {
    pub fn open(path: &Path, fps_hz: f64, loop_frames: bool, pool_size: usize) -> Result<Self, SourceError> {
        let err = |source: Cause| SourceError::Open {
            what: path.display().to_string(),
            source: Box::new(source),
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| err(Cause::Io(e)))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut items = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|source| {
                err(Cause::Read {
                    path: f.clone(),
                    source,
                })
            })?;
            let img = decode_image(&bytes).map_err(|source| {
                err(Cause::Decode {
                    path: f.clone(),
                    source,
                })
            })?;
            let item = if bytes.starts_with(&[0xFF, 0xD8]) {
                Item {
                    format: PixelFormat::Jpeg,
                    width: 0,
                    height: 0,
                    bytes,
                }
            } else {
                Item {
                    format: PixelFormat::Rgb,
                    width: img.width,
                    height: img.height,
                    bytes: img.data,
                }
            };
            items.push(item);
        }
        if items.is_empty() {
            return Err(err(Cause::NoImages));
        }
        let largest = items.iter().map(|i| i.bytes.len()).max().unwrap_or(0);
        log::info!("images source {}: {} images", path.display(), items.len());
        Ok(Self {
            name: format!("images:{}", path.display()),
            playback: Playback::new(items.len(), largest, fps_hz, loop_frames, pool_size),
            items,
        })
    }
}

impl super::Source for ImagesSource {
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
        let item = &self.items[index];
        buf.extend_from_slice(&item.bytes);
        Ok(Some(Frame {
            seq,
            capture_ns: monotonic_ns(),
            format: item.format,
            width: item.width,
            height: item.height,
            yuv: kestrel_vision::yuv::YuvSpec::BT601_LIMITED,
            data: buf,
        }))
    }
}
