//! The `images` source: JPEG/PNG files (one file or a directory, sorted by name), looped, paced. Files are
//! read once at start; JPEGs travel encoded (decoded by the workers), PNGs are decoded up front to RGB.

use std::path::{Path, PathBuf};

use super::{Pacer, SourceError};
use crate::decode::decode_image;
use crate::frame::{monotonic_ns, Frame, PixelFormat};
use crate::pool::Pool;

struct Item {
    format: PixelFormat,
    width: u32,
    height: u32,
    bytes: Vec<u8>,
}

pub struct ImagesSource {
    items: Vec<Item>,
    next: usize,
    seq: u64,
    loop_frames: bool,
    pacer: Pacer,
    pool: Pool<Vec<u8>>,
    name: String,
}

fn is_image(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

impl ImagesSource {
    pub fn open(path: &Path, fps_hz: f64, loop_frames: bool, pool_size: usize) -> Result<Self, SourceError> {
        let err = |reason: String| SourceError::Open {
            what: path.display().to_string(),
            reason,
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| err(e.to_string()))?
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
            let bytes = std::fs::read(f).map_err(|e| err(format!("{}: {e}", f.display())))?;
            let img = decode_image(&bytes).map_err(|e| err(format!("{}: {e}", f.display())))?;
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
            return Err(err("no .jpg, .jpeg or .png files".into()));
        }
        let largest = items.iter().map(|i| i.bytes.len()).max().unwrap_or(0);
        log::info!("images source {}: {} images", path.display(), items.len());
        Ok(Self {
            name: format!("images:{}", path.display()),
            items,
            next: 0,
            seq: 0,
            loop_frames,
            pacer: Pacer::new(fps_hz),
            pool: Pool::new(pool_size, || Vec::with_capacity(largest)),
        })
    }
}

impl super::Source for ImagesSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn paced(&self) -> bool {
        self.pacer.is_paced()
    }

    fn next_frame(&mut self, stop: &dyn Fn() -> bool) -> Result<Option<Frame>, SourceError> {
        if self.next == self.items.len() {
            if !self.loop_frames {
                return Ok(None);
            }
            self.next = 0;
        }
        if !self.pacer.wait(stop) {
            return Ok(None);
        }
        let Some(mut buf) = super::take_buffer(&self.pool, stop) else {
            return Ok(None);
        };
        let item = &self.items[self.next];
        self.next += 1;
        buf.clear();
        buf.extend_from_slice(&item.bytes);
        self.seq += 1;
        Ok(Some(Frame {
            seq: self.seq,
            capture_ns: monotonic_ns(),
            format: item.format,
            width: item.width,
            height: item.height,
            data: buf,
        }))
    }
}
