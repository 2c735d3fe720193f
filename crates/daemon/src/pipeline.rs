//! The streaming engine: named stage threads joined by bounded channels.
//!
//! ```text
//! capture ──frames (latest wins)──▶ preprocess-N ──prepared (latest wins)──▶ inference ──▶ postprocess ──▶ sink
//! ```
//!
//! - **Capture never blocks on the rest**: when the frame queue is full the oldest waiting frame is dropped
//!   (`capture_overrun`) and the new one queued.
//! - **Just-in-time preprocessing**: input tensors come from a small pool (one per prepared-ahead slot plus the
//!   one being inferred), so workers never prepare frames that inference cannot take; and a worker that got a
//!   tensor while inference is busy waits until inference is about one preprocessing time from wanting its
//!   next frame before it takes the newest one. A frame thus enters inference about one preprocessing time
//!   after capture, not a queue's worth of frames later. How much earlier than the average preprocessing time
//!   a worker starts is adapted to the waits that happen: on a steady host no frame waits more than a
//!   millisecond and a quarter once prepared and inference never waits; where preprocessing or inference
//!   varies by more, frames and inference wait over that about equally often. The protocol between the
//!   workers and inference is in [`pace`].
//! - **Newest first, in order**: inference takes the newest prepared frame (older ones: `stale`) and never one
//!   older than the last it ran (`out_of_order`), so results leave in strictly increasing sequence.
//! - Frame buffers, tensors and detection vectors are pooled: nothing is allocated per frame in steady state.
//! - Every blocking call has a timeout of `poll`, so a stop is seen within one poll interval by every thread.

mod pace;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use thiserror::Error;

use crate::metrics::{DropReason, Metrics, Stage};
use crate::sink::{Sink, SinkError};
use kestrel_camera::{Source, SourceError};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::clock::realtime_ns;
use kestrel_core::detection::Detection;
use kestrel_core::frame::Frame;
use kestrel_core::latest::push_latest;
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::published::{FrameTimes, Published};
use kestrel_core::ratelog::RateLimitedLog;
use kestrel_infer::detect::Thresholds;
use kestrel_infer::model::{Detector, InferTimes, InputTensor, ModelError};
use kestrel_vision::letterbox::Letterbox;
use kestrel_vision::nms::nms_into;
use kestrel_vision::preprocess::{FramePreprocessor, PreprocessError};
use kestrel_vision::yolo::Candidate;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot start thread {name}: {reason}")]
    Spawn { name: String, reason: String },
    #[error("thread {0} panicked")]
    Panicked(String),
}

/// The inference stage's contract: [`Detector`] in production, stand-ins in tests.
pub trait Inference: Send {
    /// Model input width and height.
    fn input_size(&self) -> (u32, u32);
    /// A blank input tensor of the model's size and precision.
    fn new_input(&self) -> InputTensor;
    /// Run on `input`; candidates above `conf` in model pixels into `out`.
    fn infer(&mut self, input: &InputTensor, conf: f32, out: &mut Vec<Candidate>) -> Result<InferTimes, ModelError>;
}

impl Inference for Detector {
    fn input_size(&self) -> (u32, u32) {
        (self.info.input_width, self.info.input_height)
    }
    fn new_input(&self) -> InputTensor {
        Detector::new_input(self)
    }
    fn infer(&mut self, input: &InputTensor, conf: f32, out: &mut Vec<Candidate>) -> Result<InferTimes, ModelError> {
        Detector::infer(self, input, conf, out)
    }
}

/// Inference that holds no CPU: it sleeps `per_frame` and finds nothing, the way a GPU leaves the host's cores
/// to preprocessing. `kestrel bench --gpu-like` and the tests use it to show the pipeline's own overhead.
pub struct SleepInference {
    pub width: u32,
    pub height: u32,
    pub precision: kestrel_infer::model::Precision,
    pub per_frame: Duration,
}

impl Inference for SleepInference {
    fn input_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
    fn new_input(&self) -> InputTensor {
        let n = 3 * self.width as usize * self.height as usize;
        match self.precision {
            kestrel_infer::model::Precision::F16 => InputTensor::F16(vec![half::f16::ZERO; n]),
            kestrel_infer::model::Precision::F32 => InputTensor::F32(vec![0.0; n]),
        }
    }
    fn infer(&mut self, _: &InputTensor, _: f32, out: &mut Vec<Candidate>) -> Result<InferTimes, ModelError> {
        let t0 = Instant::now();
        std::thread::sleep(self.per_frame);
        out.clear();
        Ok(InferTimes {
            run: t0.elapsed(),
            decode: Duration::ZERO,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Preprocessing worker threads (at least 1).
    pub workers: usize,
    /// Prepared frames allowed ahead of inference (at least 1).
    pub queue_depth: usize,
    /// Timeout of every blocking call.
    pub poll: Duration,
    pub thresholds: Thresholds,
    /// DCT-scaled JPEG decoding.
    pub scaled_jpeg: bool,
    /// Camera intrinsics: detections get angles from the optical axis.
    pub intrinsics: Option<kestrel_vision::angles::Intrinsics>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            queue_depth: 1,
            poll: Duration::from_millis(20),
            thresholds: Thresholds::default(),
            scaled_jpeg: true,
            intrinsics: None,
        }
    }
}

/// Default worker count for `cores` CPUs: preprocessing is ~10 % of inference, so one worker per four cores
/// (at least one) leaves the rest to ONNX Runtime.
pub fn default_workers(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

struct Prepared {
    seq: u64,
    capture_ns: u64,
    /// When the worker finished preparing it.
    ready_ns: u64,
    lb: Letterbox,
    tensor: Pooled<InputTensor>,
    times: FrameTimes,
}

impl pace::Sequenced for Prepared {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn ready_ns(&self) -> u64 {
        self.ready_ns
    }
}

struct Inferred {
    seq: u64,
    capture_ns: u64,
    lb: Letterbox,
    candidates: Pooled<Vec<Candidate>>,
    times: FrameTimes,
}

struct Finished {
    seq: u64,
    capture_ns: u64,
    width: u32,
    height: u32,
    detections: Pooled<Vec<Detection>>,
    times: FrameTimes,
}

fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1e3
}

/// The next item, waiting in `poll` slices; `None` once `stopped()` or every sender is gone.
fn recv_or_stop<T>(rx: &Receiver<T>, poll: Duration, stopped: &dyn Fn() -> bool) -> Option<T> {
    loop {
        if stopped() {
            return None;
        }
        match rx.recv_timeout(poll) {
            Ok(item) => return Some(item),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Queue `item`, waiting (in `poll` slices) while the queue is full. False if stopped or disconnected.
fn send_blocking<T>(tx: &Sender<T>, mut item: T, poll: Duration, stopped: &dyn Fn() -> bool) -> bool {
    loop {
        match tx.send_timeout(item, poll) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) if !stopped() => item = back,
            Err(_) => return false,
        }
    }
}

/// Thresholds the running pipeline reads for every frame; a configuration reload stores new ones (no lock:
/// each value is one atomic, and a frame that sees a mix of old and new values is harmless).
#[derive(Debug)]
pub struct LiveThresholds {
    conf: AtomicU32,
    iou: AtomicU32,
    max_detections: AtomicUsize,
}

impl LiveThresholds {
    pub fn new(t: Thresholds) -> Self {
        Self {
            conf: AtomicU32::new(t.conf.to_bits()),
            iou: AtomicU32::new(t.iou.to_bits()),
            max_detections: AtomicUsize::new(t.max_detections),
        }
    }

    pub fn get(&self) -> Thresholds {
        Thresholds {
            conf: f32::from_bits(self.conf.load(Relaxed)),
            iou: f32::from_bits(self.iou.load(Relaxed)),
            max_detections: self.max_detections.load(Relaxed),
        }
    }

    pub fn set(&self, t: Thresholds) {
        self.conf.store(t.conf.to_bits(), Relaxed);
        self.iou.store(t.iou.to_bits(), Relaxed);
        self.max_detections.store(t.max_detections, Relaxed);
    }
}

/// A running pipeline.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, JoinHandle<Result<(), PipelineError>>)>,
    pub metrics: Arc<Metrics>,
    /// What the inference and postprocess stages use now (see [`LiveThresholds`]).
    pub thresholds: Arc<LiveThresholds>,
}

/// How a pipeline run ended.
#[derive(Debug)]
pub struct Summary {
    pub elapsed: Duration,
    pub frames_published: u64,
    /// True when `stop` ended the run, false when the source ran out.
    pub stopped: bool,
}

impl Pipeline {
    /// Start every stage. `stop` ends the run when set (signal handlers set it); the source ending drains
    /// the pipeline and ends it too.
    pub fn start(
        source: Box<dyn Source>,
        inference: Box<dyn Inference>,
        sink: Box<dyn Sink>,
        labels: Arc<[String]>,
        opts: Options,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, PipelineError> {
        Self::start_with_metrics(source, inference, sink, labels, opts, stop, Arc::new(Metrics::new()))
    }

    /// [`Self::start`] recording into `metrics` (shared with the publisher's status messages).
    pub fn start_with_metrics(
        mut source: Box<dyn Source>,
        mut inference: Box<dyn Inference>,
        mut sink: Box<dyn Sink>,
        labels: Arc<[String]>,
        opts: Options,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PipelineError> {
        let workers = opts.workers.max(1);
        let depth = opts.queue_depth.max(1);
        let poll = opts.poll;
        let (dst_w, dst_h) = inference.input_size();
        let tensors = Pool::new(depth.max(workers) + 1, || inference.new_input());
        let pace = Arc::new(pace::Pace::new(monotonic_ns));
        let mut feed = pace::Feed::new(pace.clone(), tensors.try_take());
        let candidate_pool = Pool::new(8, || Vec::<Candidate>::with_capacity(1024));
        let detection_pool = Pool::new(8, || Vec::<Detection>::with_capacity(opts.thresholds.max_detections));

        let (frames_tx, frames_rx) = bounded::<Frame>(depth);
        let (prepared_tx, prepared_rx) = bounded::<Prepared>(depth);
        let (inferred_tx, inferred_rx) = bounded::<Inferred>(4);
        let (finished_tx, finished_rx) = bounded::<Finished>(4);

        let live = Arc::new(LiveThresholds::new(opts.thresholds));
        let mut p = Self {
            stop: stop.clone(),
            threads: Vec::new(),
            metrics: metrics.clone(),
            thresholds: live.clone(),
        };
        let stopped = {
            let stop = stop.clone();
            move || stop.load(Relaxed)
        };

        let paced = source.paced();
        if let Some(status) = source.status() {
            metrics.attach_source(status);
        }
        // capture
        {
            let (m, rx, stopped) = (metrics.clone(), frames_rx.clone(), stopped.clone());
            p.spawn("capture", move || {
                while let Some(frame) = source.next_frame(&stopped)? {
                    m.captured();
                    let sent = if paced {
                        push_latest(&frames_tx, &rx, frame, &|| m.dropped(DropReason::CaptureOverrun))
                    } else {
                        send_blocking(&frames_tx, frame, poll, &stopped)
                    };
                    if !sent {
                        break;
                    }
                }
                log::debug!("capture: source {} ended", source.name());
                Ok(())
            })?;
        }

        // preprocessing workers
        for i in 0..workers {
            let (m, frames_rx, tx, rx_old) = (
                metrics.clone(),
                frames_rx.clone(),
                prepared_tx.clone(),
                prepared_rx.clone(),
            );
            let (tensors, pace, stopped) = (tensors.clone(), pace.clone(), stopped.clone());
            let mut prep = FramePreprocessor::new(opts.scaled_jpeg)?;
            p.spawn(&format!("preprocess-{i}"), move || {
                let mut bad = RateLimitedLog::new("bad frame skipped");
                loop {
                    // A tensor first: it is the credit that says inference will want another frame.
                    let mut tensor = loop {
                        if stopped() {
                            return Ok(());
                        }
                        if let Some(t) = tensors.take_timeout(poll) {
                            break t;
                        }
                    };
                    if !pace.claim(poll, &stopped) {
                        return Ok(());
                    }
                    let next = match frames_rx.try_recv() {
                        Ok(frame) => Some(frame),
                        Err(_) => {
                            pace.source_was_late();
                            recv_or_stop(&frames_rx, poll, &stopped)
                        }
                    };
                    let Some(mut frame) = next else {
                        // The source ended (or a stop): the frame committed to will never be on its way, and
                        // a worker still waiting must not plan behind it.
                        pace.dropped_one();
                        return Ok(());
                    };
                    let t0 = Instant::now();
                    let t0_ns = monotonic_ns();
                    // An unpaced source (files, as fast as the pipeline takes them) has no moment of capture
                    // of its own; it reads one frame ahead only to hide its I/O. Its frame is captured when a
                    // worker takes it, as from a camera that delivered a frame the moment one was wanted.
                    if !paced {
                        frame.capture_ns = t0_ns;
                    }
                    m.record(
                        Stage::Queue,
                        Duration::from_nanos(t0_ns.saturating_sub(frame.capture_ns)),
                    );
                    match prep.prepare_frame(&frame, tensor.data_mut(), dst_w, dst_h) {
                        Ok(lb) => {
                            m.record(Stage::Decode, prep.last_decode);
                            m.record(Stage::Letterbox, prep.last_letterbox);
                            pace.prepared(t0.elapsed());
                            let item = Prepared {
                                seq: frame.seq,
                                capture_ns: frame.capture_ns,
                                ready_ns: monotonic_ns(),
                                lb,
                                tensor,
                                times: FrameTimes {
                                    queue_ms: ms(Duration::from_nanos(t0_ns.saturating_sub(frame.capture_ns))),
                                    decode_ms: ms(prep.last_decode),
                                    letterbox_ms: ms(prep.last_letterbox),
                                    ..FrameTimes::default()
                                },
                            };
                            let sent = if paced {
                                push_latest(&tx, &rx_old, item, &|| {
                                    m.dropped(DropReason::PreparedOverrun);
                                    pace.dropped_one();
                                })
                            } else {
                                send_blocking(&tx, item, poll, &stopped)
                            };
                            if !sent {
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            m.dropped(DropReason::BadFrame);
                            pace.dropped_one();
                            bad.warn(&format_args!("frame {}: {e}", frame.seq));
                        }
                    }
                }
            })?;
        }
        drop((frames_rx, prepared_tx));

        // inference
        {
            let (m, rx, tx, stopped) = (metrics.clone(), prepared_rx, inferred_tx, stopped.clone());
            let live = live.clone();
            p.spawn("inference", move || {
                let mut last_seq = 0u64;
                // Live sources: the newest prepared frame wins. Unpaced files: every frame, in arrival order.
                while let Some(item) = feed.next(&rx, paced, poll, &stopped, &mut || m.dropped(DropReason::Stale)) {
                    if item.seq <= last_seq {
                        m.dropped(DropReason::OutOfOrder);
                        continue;
                    }
                    last_seq = item.seq;
                    let Some(mut candidates) = candidate_pool.take_timeout(poll) else {
                        m.dropped(DropReason::Stale);
                        continue;
                    };
                    feed.start();
                    m.record(Stage::InferWait, feed.last_wait);
                    m.record(Stage::PreparedWait, feed.last_frame_wait);
                    m.record(
                        Stage::AgeAtInfer,
                        Duration::from_nanos(monotonic_ns().saturating_sub(item.capture_ns)),
                    );
                    let times = inference.infer(&item.tensor, live.get().conf, &mut candidates)?;
                    m.record(Stage::Infer, times.run);
                    let times_run = times.run;
                    m.inferred();
                    let Prepared {
                        seq,
                        capture_ns,
                        ready_ns: _,
                        lb,
                        tensor,
                        mut times,
                    } = item;
                    times.infer_ms = ms(times_run);
                    feed.done(tensor);
                    if !send_blocking(
                        &tx,
                        Inferred {
                            seq,
                            capture_ns,
                            lb,
                            candidates,
                            times,
                        },
                        poll,
                        &stopped,
                    ) {
                        return Ok(());
                    }
                }
                Ok(())
            })?;
        }

        // postprocess
        {
            let (m, rx, tx, stopped) = (metrics.clone(), inferred_rx, finished_tx, stopped.clone());
            // NMS keeps candidates in model pixels here; the published detections are in image pixels.
            let mut kept = Vec::<Candidate>::with_capacity(opts.thresholds.max_detections);
            p.spawn("postprocess", move || loop {
                let Some(mut item) = recv_or_stop(&rx, poll, &stopped) else {
                    return Ok(());
                };
                let Some(mut dets) = detection_pool.take_timeout(poll) else {
                    continue;
                };
                let t0 = Instant::now();
                let th = live.get();
                nms_into(&mut item.candidates, th.iou, th.max_detections, &mut kept);
                dets.clear();
                dets.extend(kept.iter().map(|c| Detection {
                    class_id: c.class_id,
                    score: c.score,
                    bbox: item.lb.image_box_from_model(c.bbox),
                }));
                let post = t0.elapsed();
                m.record(Stage::Postprocess, post);
                let out = Finished {
                    seq: item.seq,
                    capture_ns: item.capture_ns,
                    width: item.lb.src_w,
                    height: item.lb.src_h,
                    detections: dets,
                    times: FrameTimes {
                        postprocess_ms: ms(post),
                        ..item.times
                    },
                };
                drop(item);
                if !send_blocking(&tx, out, poll, &stopped) {
                    return Ok(());
                }
            })?;
        }

        // sink
        {
            let (m, rx, stopped) = (metrics.clone(), finished_rx, stopped);
            p.spawn("sink", move || {
                let mut fps = FpsMeter::new();
                let mut angles: Vec<[f32; 2]> = Vec::with_capacity(opts.thresholds.max_detections);
                while let Some(item) = recv_or_stop(&rx, poll, &stopped) {
                    angles.clear();
                    if let Some(cam) = &opts.intrinsics {
                        angles.extend(
                            item.detections
                                .iter()
                                .map(|d| cam.box_angles(&d.bbox, item.width, item.height)),
                        );
                    }
                    let publish_ns = monotonic_ns();
                    // The capture instant on the wall clock: now on CLOCK_REALTIME minus the frame's age.
                    let capture_realtime_ns =
                        realtime_ns().saturating_sub(monotonic_ns().saturating_sub(item.capture_ns));
                    sink.publish(&Published {
                        seq: item.seq,
                        capture_ns: item.capture_ns,
                        capture_realtime_ns,
                        publish_ns,
                        times: item.times,
                        width: item.width,
                        height: item.height,
                        detections: &item.detections,
                        angles: &angles,
                        labels: &labels,
                        fps: fps.tick(),
                    })?;
                    m.published();
                    m.record(
                        Stage::CaptureToPublish,
                        Duration::from_nanos(publish_ns.saturating_sub(item.capture_ns)),
                    );
                }
                Ok(())
            })?;
        }
        Ok(p)
    }

    fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<(), PipelineError> + Send + 'static,
    ) -> Result<(), PipelineError> {
        let stop = self.stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let r = f();
                if r.is_err() {
                    stop.store(true, SeqCst); // a failed stage ends the run
                }
                r
            })
            .map_err(|e| PipelineError::Spawn {
                name: name.to_string(),
                reason: e.to_string(),
            });
        match handle {
            Ok(h) => {
                self.threads.push((name.to_string(), h));
                Ok(())
            }
            Err(e) => {
                self.stop.store(true, SeqCst);
                Err(e)
            }
        }
    }

    /// Run until the source ends and everything drains, a stage fails, or `stop` is set; log a metrics
    /// summary every `log_every` meanwhile; join every thread. The first stage error is returned.
    pub fn wait(self, log_every: Option<Duration>) -> Result<Summary, PipelineError> {
        self.wait_with(log_every, &mut || {})
    }

    /// [`Self::wait`], calling `tick` about every 10 ms meanwhile (signals, service notifications); the
    /// pipeline is already stopping when `tick` sets the stop flag.
    pub fn wait_with(mut self, log_every: Option<Duration>, tick: &mut dyn FnMut()) -> Result<Summary, PipelineError> {
        let started = Instant::now();
        let mut next_log = log_every.map(|d| started + d);
        let poll = Duration::from_millis(10);
        loop {
            // The pipeline has drained when the sink thread is done (every upstream sender is gone).
            if self.threads.iter().all(|(_, h)| h.is_finished()) || self.stop.load(Relaxed) {
                break;
            }
            if let (Some(at), Some(every)) = (next_log, log_every) {
                if Instant::now() >= at {
                    log::info!("{}", self.metrics.snapshot());
                    next_log = Some(at + every);
                }
            }
            tick();
            std::thread::sleep(poll);
        }
        tick(); // once more: it sees the stop before the stages are joined
        let stopped = self.stop.load(Relaxed);
        self.stop.store(true, SeqCst);
        let mut first_err = None;
        for (name, h) in self.threads.drain(..) {
            let r = h.join().unwrap_or_else(|_| Err(PipelineError::Panicked(name.clone())));
            if let Err(e) = r {
                log::error!("stage {name} failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(Summary {
            elapsed: started.elapsed(),
            frames_published: self.metrics.published_total(),
            stopped,
        })
    }

    /// Ask every stage to stop (also what a signal does).
    pub fn request_stop(&self) {
        self.stop.store(true, SeqCst);
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for (_, h) in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Published frames per second: frame intervals over (about) the last second; before the first full second,
/// an estimate from the frames so far.
struct FpsMeter {
    window_start: Option<Instant>,
    intervals: u32,
    settled: bool,
    fps: f64,
}

impl FpsMeter {
    fn new() -> Self {
        Self {
            window_start: None,
            intervals: 0,
            settled: false,
            fps: 0.0,
        }
    }

    fn tick(&mut self) -> f64 {
        let now = Instant::now();
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return self.fps;
        };
        self.intervals += 1;
        let e = now.duration_since(start).as_secs_f64();
        if e >= 1.0 || !self.settled {
            self.fps = f64::from(self.intervals) / e.max(1e-6);
        }
        if e >= 1.0 {
            (self.window_start, self.intervals, self.settled) = (Some(now), 0, true);
        }
        self.fps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_admits_one_line_per_5_s_and_counts_the_rest() {
        let mut log = RateLimitedLog::new("x");
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit(t0 + Duration::from_millis(4999)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(log.admit(t0 + Duration::from_secs(6)), None);
    }
}
