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
//!
//! Each stage is a struct that owns its state and runs on its own named thread: [`capture`], [`prepare`]
//! (the workers), [`infer`], [`postprocess`] and [`publish`]; this module wires them together.

mod capture;
mod infer;
mod pace;
mod postprocess;
mod prepare;
mod publish;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use thiserror::Error;

use crate::metrics::Metrics;
use crate::sink::{Sink, SinkError};
use kestrel_camera::{Source, SourceError};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::detection::Detection;
use kestrel_core::frame::Frame;
use kestrel_core::pool::Pool;
use kestrel_infer::detect::Thresholds;
use kestrel_infer::model::{Detector, InferTimes, InputTensor, ModelError};
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
    #[error("cannot start thread {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
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

/// Milliseconds, for the per-frame times published with each frame.
fn ms(d: Duration) -> f32 {
    d.as_secs_f32() * 1e3
}

/// The run's stop flag, as the stages poll it.
#[derive(Clone)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    /// `stopped()` for the blocking helpers.
    fn flag(&self) -> impl Fn() -> bool + '_ {
        || self.0.load(Relaxed)
    }
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
        source: Box<dyn Source>,
        inference: Box<dyn Inference>,
        sink: Box<dyn Sink>,
        labels: Arc<[String]>,
        opts: Options,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PipelineError> {
        let workers = opts.workers.max(1);
        let depth = opts.queue_depth.max(1);
        let poll = opts.poll;
        let dst = inference.input_size();
        let tensors = Pool::new(depth.max(workers) + 1, || inference.new_input());
        let pace = Arc::new(pace::Pace::new(monotonic_ns));
        let feed = pace::Feed::new(pace.clone(), tensors.try_take());

        let (frames_tx, frames_rx) = bounded::<Frame>(depth);
        let (prepared_tx, prepared_rx) = bounded::<prepare::Prepared>(depth);
        let (inferred_tx, inferred_rx) = bounded::<infer::Inferred>(4);
        let (finished_tx, finished_rx) = bounded::<postprocess::Finished>(4);

        let live = Arc::new(LiveThresholds::new(opts.thresholds));
        let mut p = Self {
            stop: stop.clone(),
            threads: Vec::new(),
            metrics: metrics.clone(),
            thresholds: live.clone(),
        };
        let stop = Stop(stop);

        let paced = source.paced();
        if let Some(status) = source.status() {
            metrics.attach_source(status);
        }
        let capture = capture::Capture {
            source,
            tx: frames_tx,
            rx: frames_rx.clone(),
            metrics: metrics.clone(),
            paced,
            poll,
            stop: stop.clone(),
        };
        p.spawn("capture", move || capture.run())?;

        for i in 0..workers {
            let worker = prepare::Worker {
                frames: frames_rx.clone(),
                tx: prepared_tx.clone(),
                rx_old: prepared_rx.clone(),
                tensors: tensors.clone(),
                pace: pace.clone(),
                prep: FramePreprocessor::new(opts.scaled_jpeg)?,
                metrics: metrics.clone(),
                dst,
                paced,
                poll,
                stop: stop.clone(),
            };
            p.spawn(&format!("preprocess-{i}"), move || worker.run())?;
        }
        drop((frames_rx, prepared_tx));

        let infer = infer::Infer {
            inference,
            feed,
            rx: prepared_rx,
            tx: inferred_tx,
            candidates: Pool::new(8, || Vec::<Candidate>::with_capacity(1024)),
            live: live.clone(),
            metrics: metrics.clone(),
            paced,
            poll,
            stop: stop.clone(),
        };
        p.spawn("inference", move || infer.run())?;

        let max_detections = opts.thresholds.max_detections;
        let postprocess = postprocess::Postprocess {
            rx: inferred_rx,
            tx: finished_tx,
            detections: Pool::new(8, || Vec::<Detection>::with_capacity(max_detections)),
            kept: Vec::with_capacity(max_detections),
            live,
            metrics: metrics.clone(),
            poll,
            stop: stop.clone(),
        };
        p.spawn("postprocess", move || postprocess.run())?;

        let publish = publish::Publish {
            rx: finished_rx,
            sink,
            labels,
            intrinsics: opts.intrinsics,
            angles: Vec::with_capacity(max_detections),
            metrics,
            poll,
            stop,
        };
        p.spawn("sink", move || publish.run())?;
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
            .map_err(|source| PipelineError::Spawn {
                name: name.to_string(),
                source,
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
