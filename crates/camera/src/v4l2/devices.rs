//! `kestrel devices`: every V4L2 node with its stable names, driver, and for capture devices each pixel
//! format with its sizes and frame rates — what to look at first when a camera misbehaves.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use v4l::v4l_sys::{V4L2_CAP_STREAMING, V4L2_CAP_VIDEO_CAPTURE};
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::negotiate::SizeOffer;
use super::stream;
use crate::config::CameraFormat;

#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub path: PathBuf,
    /// `/dev/v4l/by-id/…` and `/dev/v4l/by-path/…` links to this node (stable across replugs).
    pub links: Vec<PathBuf>,
    /// Why the node could not be queried, if it could not.
    pub error: Option<String>,
    pub driver: String,
    pub card: String,
    pub bus: String,
    pub capture: bool,
    pub formats: Vec<FormatInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    /// Whether Kestrel can take it (`source.pixel_formats` name), else null.
    pub kestrel: Option<CameraFormat>,
    pub sizes: Vec<SizeInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SizeInfo {
    /// "640x480", or "16-1920/16 x 16-1080/8" for ranges.
    pub size: String,
    /// Frame rates offered at that size, fps (discrete sizes only; empty if the driver cannot say).
    pub fps: Vec<f64>,
    /// "1-60 fps" style range when the driver gives one.
    pub fps_range: Option<String>,
}

/// `/dev/videoN` nodes in numeric order.
pub fn video_nodes(dev_dir: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// Symlinks under `/dev/v4l/by-*` that resolve to `node`.
fn links_to(node: &Path) -> Vec<PathBuf> {
    let target = std::fs::canonicalize(node).unwrap_or_else(|_| node.to_path_buf());
    let mut out = Vec::new();
    for dir in ["/dev/v4l/by-id", "/dev/v4l/by-path"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if std::fs::canonicalize(e.path()).is_ok_and(|t| t == target) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn fraction_fps(num: u32, den: u32) -> f64 {
    if num == 0 {
        0.0
    } else {
        (f64::from(den) / f64::from(num) * 100.0).round() / 100.0
    }
}

/// Query one node. Never fails: problems are reported in `error`.
pub fn describe(path: &Path) -> DeviceInfo {
    let mut info = DeviceInfo {
        path: path.to_path_buf(),
        links: links_to(path),
        error: None,
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        capture: false,
        formats: Vec::new(),
    };
    let dev = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => {
            info.error = Some(format!("cannot open: {e}"));
            return info;
        }
    };
    let handle = dev.handle();
    match stream::query_caps(&handle) {
        Ok(c) => {
            info.capture = c.device_caps & V4L2_CAP_VIDEO_CAPTURE != 0 && c.device_caps & V4L2_CAP_STREAMING != 0;
            (info.driver, info.card, info.bus) = (c.driver, c.card, c.bus);
        }
        Err(e) => {
            info.error = Some(format!("VIDIOC_QUERYCAP: {e}"));
            return info;
        }
    }
    if !info.capture {
        return info;
    }
    let formats = match stream::enum_formats(&handle) {
        Ok(f) => f,
        Err(e) => {
            info.error = Some(format!("VIDIOC_ENUM_FMT: {e}"));
            return info;
        }
    };
    for (fourcc, description) in formats {
        let fcc = FourCC::new(&fourcc);
        let mut sizes = Vec::new();
        for offer in super::size_offers(&dev, fourcc) {
            let mut si = SizeInfo {
                size: String::new(),
                fps: Vec::new(),
                fps_range: None,
            };
            match offer {
                SizeOffer::Discrete { width, height } => {
                    si.size = format!("{width}x{height}");
                    for fi in dev.enum_frameintervals(fcc, width, height).unwrap_or_default() {
                        match fi.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(f) => {
                                si.fps.push(fraction_fps(f.numerator, f.denominator))
                            }
                            v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                                si.fps_range = Some(format!(
                                    "{}-{} fps",
                                    fraction_fps(s.max.numerator, s.max.denominator),
                                    fraction_fps(s.min.numerator, s.min.denominator)
                                ))
                            }
                        }
                    }
                }
                SizeOffer::Stepwise {
                    min_width,
                    max_width,
                    step_width,
                    min_height,
                    max_height,
                    step_height,
                } => {
                    si.size = format!("{min_width}-{max_width}/{step_width} x {min_height}-{max_height}/{step_height}");
                }
            }
            sizes.push(si);
        }
        info.formats.push(FormatInfo {
            fourcc: String::from_utf8_lossy(&fourcc).into_owned(),
            description,
            kestrel: CameraFormat::from_fourcc(fourcc),
            sizes,
        });
    }
    info
}

/// Human-readable listing.
pub fn render(devices: &[DeviceInfo]) -> String {
    let mut s = String::new();
    if devices.is_empty() {
        s.push_str("no V4L2 devices (/dev/video*) found\n");
    }
    for d in devices {
        let _ = writeln!(s, "{}", d.path.display());
        for l in &d.links {
            let _ = writeln!(s, "  link    {}", l.display());
        }
        if let Some(e) = &d.error {
            let _ = writeln!(s, "  error   {e}");
        }
        if !d.driver.is_empty() {
            let _ = writeln!(s, "  card    {} (driver {}, bus {})", d.card, d.driver, d.bus);
        }
        if !d.capture && d.error.is_none() {
            let _ = writeln!(s, "  (not a streaming video capture node)");
        }
        for f in &d.formats {
            let usable = f.kestrel.map_or("not usable by kestrel".to_string(), |k| {
                format!("kestrel: {}", k.name())
            });
            let _ = writeln!(s, "  {}  {} ({usable})", f.fourcc, f.description);
            for sz in &f.sizes {
                let rates = if !sz.fps.is_empty() {
                    let r: Vec<String> = sz.fps.iter().map(|f| format!("{f}")).collect();
                    format!(" @ {} fps", r.join(", "))
                } else {
                    sz.fps_range.as_ref().map_or(String::new(), |r| format!(" @ {r}"))
                };
                let _ = writeln!(s, "      {}{rates}", sz.size);
            }
        }
    }
    s
}

/// Every `/dev/video*` node, described.
pub fn list() -> Vec<DeviceInfo> {
    video_nodes(Path::new("/dev")).iter().map(|p| describe(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_numeric_order_and_non_devices_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["video10", "video2", "video0", "videoX", "vbi0"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let nodes = video_nodes(dir.path());
        let names: Vec<_> = nodes
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["video0", "video2", "video10"]);
        let d = describe(&nodes[0]);
        assert!(d.error.as_deref().unwrap().contains("VIDIOC_QUERYCAP"), "{d:?}");
        let text = render(&[d]);
        assert!(text.contains("video0") && text.contains("error"), "{text}");
        assert_eq!(render(&[]), "no V4L2 devices (/dev/video*) found\n");
    }
}
