//! The streaming engine with stand-in inference stages: ordering, latest-frame-wins drop policy, freshness,
//! prompt shutdown. (The real model runs through the same code in tests/processes/daemon.rs.)
//!
//! Timing bounds here are properties of the design (a frame interval, the stand-in's inference time, the
//! poll interval) or come from what the same run measured (each frame's own preprocessing time, how fast
//! this host generates the synthetic frames), never from how fast the host is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kestrel_camera::{self, Source};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::published::Published;
use kestrel_daemon::config::{SourceConfig, SourceKind, SyntheticFormat};
use kestrel_daemon::metrics::{DropReason, Stage};
use kestrel_daemon::pipeline::{Inference, Options, Pipeline, SleepInference};
use kestrel_daemon::sink::{Sink, SinkError};
use kestrel_infer::model::{InferTimes, InputTensor, ModelError};
use kestrel_vision::yolo::Candidate;

use crate::common;

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
            bbox: kestrel_core::geometry::ModelBox::new([8.0, 8.0, 24.0, 24.0]),
        });
        Ok(InferTimes {
            run: self.delay,
            decode: Duration::ZERO,
        })
    }
}

/// One published frame: seq, capture_ns, and its own preprocessing time (decode + letterbox, ms).
#[derive(Clone, Copy, Debug)]
struct Out {
    seq: u64,
    capture_ns: u64,
    prep_ms: f64,
}

/// Records everything published; takes `delay` per frame (a slow consumer downstream).
struct Collect {
    out: Arc<Mutex<Vec<Out>>>,
    delay: Duration,
}

impl Collect {
    fn new(out: Arc<Mutex<Vec<Out>>>) -> Self {
        Self {
            out,
            delay: Duration::ZERO,
        }
    }
}

impl Sink for Collect {
    fn publish(&mut self, f: &Published<'_>) -> Result<(), SinkError> {
        assert_eq!(f.detections.len(), 1);
        self.out.lock().unwrap().push(Out {
            seq: f.seq,
            capture_ns: f.capture_ns,
            prep_ms: f64::from(f.times.decode_ms + f.times.letterbox_ms),
        });
        std::thread::sleep(self.delay);
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
    kestrel_camera::open(&cfg, kestrel_camera::buffer_pool_size(3, 1)).unwrap()
}

/// How fast this host generates synthetic frames (frames per second, unpaced): what a paced source of this
/// kind can deliver here at most.
fn generation_fps(format: SyntheticFormat, w: u32, h: u32) -> f64 {
    let mut src = synthetic(0.0, 0, format, w, h);
    let t0 = Instant::now();
    let n = 30;
    for _ in 0..n {
        drop(src.next_frame(&|| false).unwrap().unwrap());
    }
    f64::from(n) / t0.elapsed().as_secs_f64()
}

struct Run {
    published: Vec<Out>,
    infer_starts: Vec<u64>,
    pipeline_metrics: Arc<kestrel_daemon::metrics::Metrics>,
    elapsed: Duration,
    /// The source ran out and the pipeline drained and ended on its own (not stopped by the time limit).
    ended_by_itself: bool,
}

impl Run {
    /// Per published frame, in order: (its age when its inference started, its own preprocessing time), ms.
    /// Published frames pair up with inference starts in order: every inferred frame is published, but for
    /// those still downstream when the run was stopped.
    fn ages(&self) -> Vec<(f64, f64)> {
        assert!(self.published.len() <= self.infer_starts.len());
        self.published
            .iter()
            .zip(&self.infer_starts)
            .map(|(o, start)| ((*start as f64 - o.capture_ns as f64) / 1e6, o.prep_ms))
            .collect()
    }
}

/// A pipeline with default options but for `workers`, one label.
fn start(
    src: Box<dyn Source>,
    inference: Box<dyn Inference>,
    sink: Box<dyn Sink>,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Pipeline {
    let opts = Options {
        workers,
        ..Default::default()
    };
    Pipeline::start(
        src,
        inference,
        sink,
        Arc::from(vec!["thing".to_string()]),
        opts,
        stop.clone(),
    )
    .unwrap()
}

fn run(src: Box<dyn Source>, delay: Duration, workers: usize, for_at_most: Duration) -> Run {
    run_with_sink(src, delay, workers, for_at_most, Duration::ZERO)
}

fn run_with_sink(
    src: Box<dyn Source>,
    delay: Duration,
    workers: usize,
    for_at_most: Duration,
    sink_delay: Duration,
) -> Run {
    let (log, out) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let p = start(
        src,
        Box::new(SlowInference {
            delay,
            log: log.clone(),
        }),
        Box::new(Collect {
            out: out.clone(),
            delay: sink_delay,
        }),
        workers,
        &stop,
    );
    let metrics = p.metrics.clone();
    let s2 = stop.clone();
    let timer = common::spawn("timer", move || {
        let t0 = Instant::now();
        while t0.elapsed() < for_at_most && !s2.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        s2.store(true, Ordering::SeqCst);
    });
    let summary = p.wait(None).unwrap();
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    timer.join().unwrap();
    let published = out.lock().unwrap().clone();
    let infer_starts = log.lock().unwrap().clone();
    Run {
        published,
        infer_starts,
        pipeline_metrics: metrics,
        elapsed,
        ended_by_itself: !summary.stopped,
    }
}

/// Freshness: no frame waits for an inference. At the start of its inference a frame is at most one frame
/// interval (the newest frame is at most that old when a worker takes it) plus its own preprocessing time
/// old, plus slack for hand-offs: `p95_slack_ms` for 95 % of the frames, and less than half an inference
/// (`max_slack_ms`) for every one, so a frame that was prepared while an inference ran and waited for it
/// fails whatever the host. `skip`: frames before the condition under test holds.
fn assert_fresh(r: &Run, skip: usize, interval_ms: f64, p95_slack_ms: f64, max_slack_ms: f64, what: &str) {
    let ages = r.ages();
    let mut late: Vec<f64> = ages.iter().skip(skip).map(|(age, prep)| age - prep).collect();
    assert!(late.len() >= 10, "{what}: only {} frames to judge", late.len());
    let mut by_age: Vec<f64> = ages.iter().skip(skip).map(|a| a.0).collect();
    by_age.sort_by(f64::total_cmp);
    late.sort_by(f64::total_cmp);
    let p95 = late[late.len() * 95 / 100];
    let max = late[late.len() - 1];
    eprintln!(
        "{what}: age at inference start: min {:.1} p50 {:.1} p95 {:.1} max {:.1} ms; less its own \
         preprocessing: p95 {p95:.1} max {max:.1} ms (frame interval {interval_ms} ms)",
        by_age[0],
        by_age[by_age.len() / 2],
        by_age[by_age.len() * 95 / 100],
        by_age[by_age.len() - 1]
    );
    assert!(by_age[0] >= 0.0);
    let all: Vec<String> = ages.iter().map(|(a, p)| format!("{a:.1}/{p:.1}")).collect();
    assert!(
        p95 <= interval_ms + p95_slack_ms,
        "{what}: p95 age at inference less preprocessing {p95:.1} ms > one frame interval + {p95_slack_ms} ms \
         (age/preprocessing per frame: {all:?})"
    );
    assert!(
        max <= interval_ms + max_slack_ms,
        "{what}: a frame {max:.1} ms older than its preprocessing at inference > one frame interval + \
         {max_slack_ms} ms: it waited for an inference (age/preprocessing per frame: {all:?})"
    );
}

#[test]
fn unpaced_source_delivers_every_frame_in_order() {
    let _serial = common::timing_lock();
    for workers in [1, 3] {
        let r = run(
            synthetic(0.0, 300, SyntheticFormat::Rgb, 320, 240),
            Duration::ZERO,
            workers,
            Duration::from_secs(60),
        );
        let seqs: Vec<u64> = r.published.iter().map(|p| p.seq).collect();
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
    let _serial = common::timing_lock();
    // Camera at 100 fps (10 ms), inference takes 40 ms: saturated, ~3 of 4 frames must go.
    let (interval_ms, infer_ms) = (10.0, 40.0);
    let source_fps = generation_fps(SyntheticFormat::Jpeg, 320, 240).min(100.0);
    for workers in [1, 2] {
        let r = run(
            synthetic(100.0, 0, SyntheticFormat::Jpeg, 320, 240),
            Duration::from_millis(infer_ms as u64),
            workers,
            Duration::from_secs(3),
        );
        let m = &r.pipeline_metrics;
        let captured = m.captured_total();
        // Capture was never blocked: it kept the camera's pace (or this host's pace of making the frames).
        let expected = source_fps * r.elapsed.as_secs_f64();
        assert!(
            captured as f64 >= 0.8 * expected,
            "workers {workers}: captured only {captured} frames in {:?}; the source alone makes {source_fps:.0}/s",
            r.elapsed
        );
        let dropped =
            m.drops(DropReason::CaptureOverrun) + m.drops(DropReason::PreparedOverrun) + m.drops(DropReason::Stale);
        assert!(
            dropped >= captured / 2,
            "workers {workers}: dropped {dropped} of {captured}"
        );
        let seqs: Vec<u64> = r.published.iter().map(|p| p.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "no frame inferred twice, results in order"
        );
        // Inference kept busy: back to back it would run elapsed/40 ms times; each cycle may add a hand-off
        // and, when a frame came late, its preprocessing (p99 measured in this run).
        let prep = m.peek(Stage::Decode).p99_ms + m.peek(Stage::Letterbox).p99_ms;
        let most = r.elapsed.as_secs_f64() * 1e3 / infer_ms;
        let least = 0.8 * r.elapsed.as_secs_f64() * 1e3 / (infer_ms + f64::from(prep) + 2.0);
        let n = r.infer_starts.len() as f64;
        assert!(
            n >= least && n <= most + 1.0,
            "workers {workers}: {n} inferences in {:?} (expected {least:.0}..{most:.0})",
            r.elapsed
        );
        // Every frame from the first: the start-up no longer prepares a frame while the first inference runs.
        assert_fresh(&r, 0, interval_ms, 5.0, infer_ms / 2.0, &format!("workers {workers}"));
    }
}

/// An unpaced source (files read as fast as the pipeline takes them) reads one frame ahead to hide its I/O;
/// that frame waits in the queue for a whole inference. It is captured when a worker takes it, so its age at
/// inference start is its own preparation plus the hand-off, as from a camera that delivers a frame the
/// moment one is wanted — not the 40 ms inference it waited behind (which fails `assert_fresh`'s half an
/// inference on any host). Every frame is still inferred, in order.
#[test]
fn an_unpaced_frame_is_captured_when_taken_and_never_waits_for_an_inference() {
    let _serial = common::timing_lock();
    let infer_ms = 40.0;
    for workers in [1, 2] {
        let r = run(
            synthetic(0.0, 40, SyntheticFormat::Jpeg, 320, 240),
            Duration::from_millis(infer_ms as u64),
            workers,
            Duration::from_secs(60),
        );
        // A worker that committed to a frame the source no longer had must not keep the others waiting.
        assert!(
            r.ended_by_itself,
            "workers {workers}: the pipeline did not end when the source did"
        );
        let seqs: Vec<u64> = r.published.iter().map(|p| p.seq).collect();
        let m = &r.pipeline_metrics;
        assert_eq!(
            seqs.len() as u64 + m.drops(DropReason::OutOfOrder),
            40,
            "workers {workers}: every frame inferred or, with two workers, dropped as out of order"
        );
        // The first frame is taken before any cycle is known; from the second on the pacing holds.
        assert_fresh(&r, 1, 0.0, 5.0, infer_ms / 2.0, &format!("unpaced, workers {workers}"));
    }
}

/// Downstream (a slow sink) holds inference up for 50 ms after each 10 ms inference: the moment between two
/// inferences, when the old protocol said "idle" although inference had its next frame (issue 13), made 50 ms
/// wide, so this fails on that protocol on any host. There a worker read "idle" and prepared frame after
/// frame, each replacing the last, all the while inference was held up (240 frames prepared in vain for 60
/// inferences, a core's worth of work). The workers must also plan with inference's whole cycle (taking a
/// frame to being ready for the next), not the inference alone: planned with the 10 ms, a frame was prepared
/// 50 ms before inference could take it and waited those 50 ms.
#[test]
fn a_slow_consumer_downstream_does_not_make_frames_wait_for_inference() {
    let _serial = common::timing_lock();
    let (interval_ms, infer_ms, sink_ms) = (10.0, 10.0, 60.0);
    for workers in [1, 2] {
        let r = run_with_sink(
            synthetic(100.0, 0, SyntheticFormat::Jpeg, 320, 240),
            Duration::from_millis(infer_ms as u64),
            workers,
            Duration::from_secs(3),
            Duration::from_millis(sink_ms as u64),
        );
        // The first ~10 frames fill the queues between inference and the sink (4 + 4, one in each stage) at
        // the inference's own pace; from the first cycle that waited for the sink on, every one does. The frames
        // the workers had committed to by the end of that first long cycle (one each at most) were planned with
        // the short one, as nothing could know better: judged are the frames after them.
        let first_long = r
            .infer_starts
            .windows(2)
            .position(|w| (w[1] - w[0]) as f64 / 1e6 > (infer_ms + sink_ms) / 2.0)
            .expect("inference waited for the sink");
        assert!(
            first_long < 20,
            "inference ran ahead of the sink for {first_long} frames"
        );
        assert_fresh(
            &r,
            first_long + 1 + workers,
            interval_ms,
            5.0,
            sink_ms / 3.0,
            &format!("workers {workers}, sink {sink_ms} ms, first cycle held up: {first_long}"),
        );
        // Prepared just in time, not over and over while inference is held up: the frames prepared and then
        // dropped for a newer one (overrun) or skipped by inference (stale) are few, not ~5 per cycle.
        let m = &r.pipeline_metrics;
        let wasted = m.drops(DropReason::PreparedOverrun) + m.drops(DropReason::Stale);
        eprintln!(
            "workers {workers}: {wasted} prepared frames dropped, {} inferred",
            r.infer_starts.len()
        );
        assert!(
            wasted as usize <= 3 * workers + 2,
            "workers {workers}: {wasted} frames prepared in vain for {} inferences",
            r.infer_starts.len()
        );
        let n = r.published.len() as f64;
        let most = r.elapsed.as_secs_f64() * 1e3 / sink_ms;
        assert!(n <= most + 1.0, "the sink's pace bounds the run: {n} published");
    }
}

#[test]
fn stop_is_seen_promptly_by_every_thread() {
    let _serial = common::timing_lock();
    for format in [SyntheticFormat::Jpeg, SyntheticFormat::Yuyv, SyntheticFormat::Nv12] {
        // What one stage step costs on this host: making a frame (measured here), preparing it (measured by
        // the run), the stand-in's 10 ms inference.
        let make_ms = 1e3 / generation_fps(format, 640, 480);
        let stop = Arc::new(AtomicBool::new(false));
        let p = Pipeline::start(
            synthetic(30.0, 0, format, 640, 480),
            Box::new(SlowInference {
                delay: Duration::from_millis(10),
                log: Arc::default(),
            }),
            Box::new(Collect::new(Arc::default())),
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
        let m = p.metrics.clone();
        let t = Instant::now();
        stop.store(true, Ordering::SeqCst);
        let summary = p.wait(None).unwrap();
        let took = t.elapsed();
        assert!(summary.stopped);
        // Every blocking call times out after the poll interval (20 ms): a thread sees the stop within one,
        // after finishing the step it is in. So: two polls and two of the longest steps, at least 100 ms.
        let prep_ms = f64::from(m.peek(Stage::Decode).max_ms + m.peek(Stage::Letterbox).max_ms);
        let step_ms = make_ms.max(prep_ms).max(10.0);
        let bound = Duration::from_secs_f64(((2.0 * 20.0 + 2.0 * step_ms) / 1e3).max(0.1));
        assert!(
            took < bound,
            "{format:?}: threads took {took:?} to stop (bound {bound:?}: frames take {make_ms:.1} ms to make \
             and {prep_ms:.1} ms to prepare here)"
        );
    }
}

#[test]
fn bad_frames_are_counted_and_skipped() {
    let _serial = common::timing_lock();
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
    let src = kestrel_camera::open(&cfg, 5).unwrap();
    let r = run(src, Duration::ZERO, 1, Duration::from_secs(20));
    assert_eq!(r.published.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(r.pipeline_metrics.drops(DropReason::BadFrame), 1);
}

/// With inference that holds no CPU (a GPU's case: `SleepInference`), decoding and letterboxing real 1080p
/// JPEGs beside it, the pipeline runs at the stand-in's own bare rate: its overhead, and the way it schedules
/// preprocessing against inference, cost under 2 %. The stand-in's time is 3x this host's measured
/// preprocessing time (at least 30 ms), so that a core can keep up on any host.
#[test]
fn with_inference_that_holds_no_cpu_the_pipeline_keeps_the_bare_rate() {
    use kestrel_infer::model::Precision;
    use kestrel_vision::preprocess::{FramePreprocessor, Pixels};
    let _serial = common::timing_lock();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/bench/1080p");
    let mut frames: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("1080p benchmark frames (run scripts/setup.sh)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    frames.sort();
    assert!(!frames.is_empty());
    let mut prep = FramePreprocessor::new(true).unwrap();
    let mut tensor = InputTensor::F32(vec![0.0; 3 * 416 * 416]);
    let mut prep_times: Vec<Duration> = (0..20)
        .map(|i| {
            let t0 = Instant::now();
            prep.prepare(Pixels::jpeg(&frames[i % frames.len()]), tensor.data_mut(), 416, 416)
                .unwrap();
            t0.elapsed()
        })
        .collect();
    prep_times.sort();
    let prep_p90 = prep_times[18];
    let per_frame = (3 * prep_p90).max(Duration::from_millis(30));
    let stand_in = || SleepInference {
        width: 416,
        height: 416,
        precision: Precision::F32,
        per_frame,
    };
    // Bare: the stand-in back to back.
    let mut bare = stand_in();
    let mut out = Vec::new();
    let t0 = Instant::now();
    for _ in 0..10 {
        bare.infer(&tensor, 0.25, &mut out).unwrap();
    }
    let bare_fps = 10.0 / t0.elapsed().as_secs_f64();
    for workers in [1, 2] {
        let src =
            kestrel_camera::images::ImagesSource::open(&dir, 0.0, true, kestrel_camera::buffer_pool_size(workers, 1))
                .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let p = start(
            Box::new(src),
            Box::new(stand_in()),
            Box::new(kestrel_daemon::sink::NullSink),
            workers,
            &stop,
        );
        let frames_timed = 40;
        let guard = Instant::now() + 20 * per_frame * frames_timed + Duration::from_secs(30);
        let wait_for = |n: u64| {
            while p.metrics.published_total() < n {
                assert!(Instant::now() < guard, "workers {workers}: pipeline stalled");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        wait_for(3); // start-up: the first cycles have no estimates yet
                     // Up to three consecutive windows; the best one counts. Another process on the host can only make a
                     // window slower (it steals a core from preprocessing or delays a wake-up), never faster, so one
                     // window at the bare rate shows the pipeline itself costs under 2 %; three slow ones do not happen
                     // by chance.
        let mut ratios = Vec::new();
        for _ in 0..3 {
            let (t0, n0) = (Instant::now(), p.metrics.published_total());
            wait_for(n0 + u64::from(frames_timed));
            let fps = (p.metrics.published_total() - n0) as f64 / t0.elapsed().as_secs_f64();
            ratios.push(fps / bare_fps);
            if fps / bare_fps >= 0.98 {
                break;
            }
        }
        let m = p.metrics.clone();
        stop.store(true, Ordering::SeqCst);
        p.wait(None).unwrap();
        let best = ratios.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "workers {workers}: stand-in {per_frame:?} (preprocessing p90 {prep_p90:?}): bare {bare_fps:.2} fps, \
             pipeline / bare per window {ratios:.3?}; age at infer p50 {:.1} p99 {:.1} ms",
            m.peek(Stage::AgeAtInfer).p50_ms,
            m.peek(Stage::AgeAtInfer).p99_ms
        );
        assert!(
            best >= 0.98,
            "workers {workers}: pipeline / bare = {ratios:.3?}, none >= 0.98"
        );
    }
}
