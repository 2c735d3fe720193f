//! Criterion micro-benchmarks of the per-frame CPU work: JPEG decode (full and DCT-scaled) and letterbox,
//! on the 1080p frames scripts/setup.sh makes. `cargo bench --bench preprocess`.

use criterion::{criterion_group, criterion_main, Criterion};
use kestrel::letterbox::{Letterbox, Preprocessor};
use kestrel::model::InputTensor;
use kestrel::preprocess::{FramePreprocessor, Pixels};

fn frame() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/bench/1080p/00-person.jpg");
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
        let mut t = InputTensor::F32(vec![0.0; 3 * size * size]);
        g.bench_function(name, |b| {
            b.iter(|| {
                fp.prepare(Pixels::jpeg(&jpg), &mut t, size as u32, size as u32)
                    .unwrap()
            })
        });
    }
    // Letterbox alone: 960x540 RGB (what a DCT-scaled 1080p decode gives) into 640x640.
    let rgb: Vec<u8> = (0..960 * 540 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let lb = Letterbox::new(960, 540, 640, 640).unwrap();
    let mut pre = Preprocessor::new();
    let mut out = vec![0f32; 3 * 640 * 640];
    g.bench_function("letterbox_960x540_to_640", |b| {
        b.iter(|| pre.letterbox_into(&rgb, &lb, &mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
