//! Criterion micro-benchmarks of the per-frame CPU work: JPEG decode (full and DCT-scaled) and letterbox,
//! on the 1080p frames scripts/setup.sh makes. `cargo bench --bench preprocess`.

// A benchmark harness, like a test: a missing frame or a failed call should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use kestrel_vision::letterbox::{Letterbox, Resampler};
use kestrel_vision::preprocess::{FramePreprocessor, Pixels};
use kestrel_vision::tensor::TensorMut;

fn frame() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/bench/1080p/00-person.jpg");
    std::fs::read(path).expect("1080p frames (run scripts/setup.sh)")
}

fn preprocess(c: &mut Criterion) {
    let jpg = frame();
    let mut g = c.benchmark_group("1080p_jpeg");
    for (name, size, scaled) in [
        ("to_640_scaled", 640, true),
        ("to_640_full", 640, false),
        ("to_416_scaled", 416, true),
    ] {
        let mut fp = FramePreprocessor::new(scaled).unwrap();
        let mut t = vec![0f32; 3 * size * size];
        g.bench_function(name, |b| {
            b.iter(|| {
                fp.prepare(Pixels::jpeg(&jpg), TensorMut::F32(&mut t), size as u32, size as u32)
                    .unwrap()
            })
        });
    }
    // Letterbox alone: 960x540 RGB (what a DCT-scaled 1080p decode gives) into 640x640.
    let rgb: Vec<u8> = (0..960 * 540 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let lb = Letterbox::new(960, 540, 640, 640).unwrap();
    let mut pre = Resampler::new();
    let mut out = vec![0f32; 3 * 640 * 640];
    g.bench_function("letterbox_960x540_to_640", |b| {
        b.iter(|| pre.letterbox_into(&rgb, &lb, &mut out).unwrap())
    });
    g.finish();
}

/// Raw camera frames → 416 tensor: the fused path (rows converted inside the resampler) against converting the
/// whole frame to RGB first and letterboxing that (what the fused path replaced).
fn raw_camera(c: &mut Criterion) {
    use kestrel_core::frame::PixelFormat;
    use kestrel_vision::pattern::{render_rgb, rgb_to_nv12, rgb_to_yuyv};
    use kestrel_vision::yuv::{nv12_to_rgb, yuyv_to_rgb, YuvSpec};
    let mut g = c.benchmark_group("camera_to_416");
    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let mut rgb = Vec::new();
        render_rgb(3, w, h, &mut rgb);
        let (mut yuyv, mut nv12) = (Vec::new(), Vec::new());
        rgb_to_yuyv(&rgb, &mut yuyv);
        rgb_to_nv12(&rgb, w as usize, h as usize, &mut nv12);
        for (format, data, name) in [(PixelFormat::Yuyv, &yuyv, "yuyv"), (PixelFormat::Nv12, &nv12, "nv12")] {
            let mut fp = FramePreprocessor::new(true).unwrap();
            let mut t = vec![0f32; 3 * 416 * 416];
            let px = Pixels {
                format,
                width: w,
                height: h,
                data,
                yuv: YuvSpec::BT601_LIMITED,
            };
            g.bench_function(format!("{name}_{w}x{h}_fused"), |b| {
                b.iter(|| fp.prepare(px, TensorMut::F32(&mut t), 416, 416).unwrap())
            });
            let lb = Letterbox::new(w, h, 416, 416).unwrap();
            let mut pre = Resampler::new();
            let (mut full, mut out) = (Vec::new(), vec![0f32; 3 * 416 * 416]);
            g.bench_function(format!("{name}_{w}x{h}_convert_then_letterbox"), |b| {
                b.iter(|| {
                    match format {
                        PixelFormat::Yuyv => {
                            yuyv_to_rgb(data, w as usize, h as usize, YuvSpec::BT601_LIMITED, &mut full)
                        }
                        _ => nv12_to_rgb(data, w as usize, h as usize, YuvSpec::BT601_LIMITED, &mut full),
                    }
                    pre.letterbox_into(&full, &lb, &mut out).unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, preprocess, raw_camera);
criterion_main!(benches);
