//! The streaming engine with stand-in inference stages: ordering, latest-frame-wins drop policy, freshness,
//! prompt shutdown. (The real model runs through the same code in tests/daemon.rs.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kestrel::config::{SourceConfig, SourceKind, SyntheticFormat};
use kestrel::frame::monotonic_ns;
use kestrel::metrics::DropReason;
use kestrel::model::{InferTimes, InputTensor, ModelError};
use kestrel::pipeline::{Inference, Options, Pipeline};
use kestrel::sink::{Published, Sink, SinkError};
use kestrel::source::{self, Source};
use kestrel::yolo::Candidate;

/// These tests measure timing on a 2-core machine: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps `delay` per frame, records when each inference started, returns one box.
struct SlowInference {
    delay: Duration,
    log: Arc<Mutex<Vec<u64>>>,
}

impl Inference for SlowInference {
    fn input_size(&self) -> (u32, u32) {
        (64, 64)
    }
    fn new_input(&self) -> InputTensor {
        InputTensor::F32(vec![0.0; 3 * 64 * 64])
    }
    fn infer(&mut self, _: &InputTensor, _: f32, out: &mut Vec<Candidate>) -> Result<InferTimes, ModelError> {
        self.log.lock().unwrap().push(monotonic_ns());
        std::thread::sleep(self.delay);
        out.clear();
        out.push(Candidate {
            class_id: 0,
            score: 0.9,
            bbox: [8.0, 8.0, 24.0, 24.0],
        });
        Ok(InferTimes {
            run: self.delay,
            decode: Duration::ZERO,
        })
    }
}

/// Records (seq, capture_ns) of everything published.
struct Collect(Arc<Mutex<Vec<(u64, u64)>>>);

impl Sink for Collect {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        assert_eq!(f.detections.len(), 1);
        self.0.lock().unwrap().push((f.seq, f.capture_ns));
        Ok(())
    }
}

fn synthetic(fps_hz: f64, frames: u64, format: SyntheticFormat, w: u32, h: u32) -> Box<dyn Source> {
    let cfg = SourceConfig {
        kind: SourceKind::Synthetic,
        fps_hz,
        frames,
        width: w,
        height: h,
        format,
        ..Default::default()
    };
    source::open(&cfg, source::buffer_pool_size(3, 1)).unwrap()
}

struct Run {
    published: Vec<(u64, u64)>,
    infer_starts: Vec<u64>,
    pipeline_metrics: Arc<kestrel::metrics::Metrics>,
}

fn run(src: Box<dyn Source>, delay: Duration, workers: usize, for_at_most: Duration) -> Run {
    let (log, out) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let stop = Arc::new(AtomicBool::new(false));
    let p = Pipeline::start(
        src,
        Box::new(SlowInference {
            delay,
            log: log.clone(),
        }),
        Box::new(Collect(out.clone())),
        Arc::from(vec!["thing".to_string()]),
        Options {
            workers,
            ..Default::default()
        },
        stop.clone(),
    )
    .unwrap();
    let metrics = p.metrics.clone();
    let s2 = stop.clone();
    let timer = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < for_at_most && !s2.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        s2.store(true, Ordering::SeqCst);
    });
    p.wait(None).unwrap();
    stop.store(true, Ordering::SeqCst);
    timer.join().unwrap();
    let published = out.lock().unwrap().clone();
    let infer_starts = log.lock().unwrap().clone();
    Run {
        published,
        infer_starts,
        pipeline_metrics: metrics,
    }
}

#[test]
fn unpaced_source_delivers_every_frame_in_order() {
    let _serial = serial();
    for workers in [1, 3] {
        let r = run(
            synthetic(0.0, 300, SyntheticFormat::Rgb, 320, 240),
            Duration::ZERO,
            workers,
            Duration::from_secs(60),
        );
        let seqs: Vec<u64> = r.published.iter().map(|p| p.0).collect();
        let m = &r.pipeline_metrics;
        // With several workers a frame can finish after a newer one; it is dropped, never published late.
        assert_eq!(
            seqs.len() as u64 + m.drops(DropReason::OutOfOrder),
            300,
            "workers {workers}"
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "results must leave in strictly increasing sequence"
        );
        assert_eq!(
            r.pipeline_metrics.drops(DropReason::CaptureOverrun),
            0,
            "an unpaced source is never overrun"
        );
        if workers == 1 {
            assert_eq!(
                seqs,
                (1..=300).collect::<Vec<_>>(),
                "one worker, unpaced: nothing dropped"
            );
        }
    }
}

#[test]
fn slow_inference_drops_old_frames_and_infers_only_fresh_ones() {
    let _serial = serial();
    // Camera at 100 fps (10 ms), inference takes 40 ms: saturated, ~3 of 4 frames must go.
    let interval_ms = 10.0;
    let r = run(
        synthetic(100.0, 0, SyntheticFormat::Jpeg, 320, 240),
        Duration::from_millis(40),
        1,
        Duration::from_secs(3),
    );
    let m = &r.pipeline_metrics;
    let captured = m.captured_total();
    // Capture was never blocked: it kept the camera's pace the whole time.
    assert!(captured >= 240, "captured only {captured} frames in 3 s at 100 fps");
    let dropped =
        m.drops(DropReason::CaptureOverrun) + m.drops(DropReason::PreparedOverrun) + m.drops(DropReason::Stale);
    assert!(dropped >= captured / 2, "dropped {dropped} of {captured}");
    let seqs: Vec<u64> = r.published.iter().map(|p| p.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "no frame inferred twice, results in order"
    );
    assert!(
        r.infer_starts.len() >= 50 && r.infer_starts.len() <= 80,
        "{} inferences in 3 s",
        r.infer_starts.len()
    );
    // Freshness: age of each frame when its inference started (published frames pair up with inference starts
    // in order; skip the first two while the pacing estimates settle).
    let mut ages: Vec<f64> = r
        .published
        .iter()
        .zip(&r.infer_starts)
        .skip(2)
        .map(|((_, cap), start)| (*start as f64 - *cap as f64) / 1e6)
        .collect();
    ages.sort_by(f64::total_cmp);
    let p95 = ages[ages.len() * 95 / 100];
    eprintln!(
        "age at inference start: min {:.1} p50 {:.1} p95 {p95:.1} max {:.1} ms",
        ages[0],
        ages[ages.len() / 2],
        ages[ages.len() - 1]
    );
    assert!(ages[0] >= 0.0);
    assert!(
        p95 <= interval_ms + 5.0,
        "p95 age at inference {p95:.1} ms > one frame interval + 5 ms: {ages:?}"
    );
}

#[test]
fn stop_is_seen_promptly_by_every_thread() {
    let _serial = serial();
    for format in [SyntheticFormat::Jpeg, SyntheticFormat::Yuyv, SyntheticFormat::Nv12] {
        let stop = Arc::new(AtomicBool::new(false));
        let p = Pipeline::start(
            synthetic(30.0, 0, format, 640, 480),
            Box::new(SlowInference {
                delay: Duration::from_millis(10),
                log: Arc::default(),
            }),
            Box::new(Collect(Arc::default())),
            Arc::from(Vec::<String>::new()),
            Options::default(),
            stop.clone(),
        )
        .unwrap();
        let t0 = Instant::now();
        while p.metrics.published_total() < 5 {
            assert!(t0.elapsed() < Duration::from_secs(10), "{format:?}: nothing published");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        stop.store(true, Ordering::SeqCst);
        let summary = p.wait(None).unwrap();
        assert!(summary.stopped);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{format:?}: threads took {:?} to stop",
            t.elapsed()
        );
    }
}

#[test]
fn bad_frames_are_counted_and_skipped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // An MJPEG stream whose middle frame was cut short in transfer (EOI present, data missing).
    let good = std::fs::read(env!("CARGO_MANIFEST_DIR").to_string() + "/.cache/darknet/eagle.jpg")
        .or_else(|_| std::fs::read("/usr/share/darknet/data/eagle.jpg"))
        .expect("darknet photos (run scripts/setup.sh)");
    let mut bad = good[..good.len() / 2].to_vec();
    bad.extend_from_slice(&[0xFF, 0xD9]);
    let mut stream = good.clone();
    stream.extend_from_slice(&bad);
    stream.extend_from_slice(&good);
    let path = dir.path().join("x.mjpeg");
    std::fs::write(&path, &stream).unwrap();
    let cfg = SourceConfig {
        kind: SourceKind::Mjpeg,
        path,
        fps_hz: 0.0,
        loop_frames: false,
        ..Default::default()
    };
    let src = source::open(&cfg, 5).unwrap();
    let r = run(src, Duration::ZERO, 1, Duration::from_secs(20));
    assert_eq!(r.published.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(r.pipeline_metrics.drops(DropReason::BadFrame), 1);
}
