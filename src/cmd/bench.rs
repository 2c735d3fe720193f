//! `kestrel bench`: on the same model, execution provider, thread budget and frames, measure side by side
//! (a) bare `session.run` on a fixed preprocessed tensor, (b) decode + letterbox alone per frame, and (c) the
//! full pipeline, repeated and interleaved (a, b, c, a, b, c, …) so that the host's speed changes hit all three
//! alike. Prints a table and optionally writes JSON. Reports numbers; never judges them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use kestrel_camera::images::ImagesSource;
use kestrel_daemon::assemble::{cores, pipeline_options};
use kestrel_daemon::config::{Config, SourceKind};
use kestrel_daemon::metrics::Stage;
use kestrel_daemon::pipeline::{default_workers, Inference, Pipeline, SleepInference};
use kestrel_daemon::sink::NullSink;
use kestrel_infer::ep::{EpKind, EpOptions};
use kestrel_infer::model::{Detector, SessionOptions};
use kestrel_infer::runtime;
use kestrel_vision::preprocess::{FramePreprocessor, Pixels};

use crate::exit::{Exit, Failure, OrExit as _};

/// `println!` that never panics (stdout may be a closed pipe).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Models to measure (repeat the flag for several; one row each); .onnx or a .onnx.zst package.
    #[arg(long = "model", value_name = "PATH", default_value = "models/yolov3-tiny-416.onnx")]
    models: Vec<PathBuf>,
    /// Directory of JPEG frames (default: the 1080p frames scripts/setup.sh makes).
    #[arg(long, value_name = "DIR", default_value = ".cache/bench/1080p")]
    frames: PathBuf,
    /// Interleaved repetitions of (a), (b), (c).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Frames per measurement.
    #[arg(long, default_value_t = 60)]
    n: usize,
    /// ONNX Runtime intra-op threads (0: all cores), used by (a) and (c) alike.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Preprocessing workers in (c), one row each (comma-separated; 0: automatic).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "0")]
    workers: Vec<usize>,
    /// Source rate in (c): 0 reads the frames as fast as the pipeline takes them (each frame captured when a
    /// worker takes it); a rate paces them like a camera (the newest frame wins, older ones are dropped).
    #[arg(long, value_name = "HZ", default_value_t = 0.0)]
    source_fps: f64,
    /// Also measure (d): the same pipeline, frames and workers with inference that holds no CPU for the time
    /// (a) measured per frame (a sleep), the way a GPU leaves the cores to preprocessing, against that
    /// stand-in's own bare rate: the pipeline's own overhead.
    #[arg(long)]
    gpu_like: bool,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Execution providers, one row each (comma-separated): cpu, cuda, tensorrt.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "cpu")]
    ep: Vec<super::Ep>,
    /// Precisions, one row each (comma-separated): fp32, fp16. fp16 on TensorRT builds an FP16 engine from the
    /// FP32 model; on CUDA and the CPU it runs the model's FP16 variant (`<stem>-fp16.onnx` beside it).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "fp32")]
    precision: Vec<String>,
    /// Feed inference through an IoBinding (what the daemon does by default); `true,false` gives one row each.
    #[arg(long, value_name = "BOOLS", value_delimiter = ',', default_value = "true")]
    io_binding: Vec<bool>,
}

/// The model file and TensorRT precision flag for a (model, provider, precision) row.
pub fn model_for(model: &Path, ep: EpKind, precision: &str) -> anyhow::Result<(PathBuf, bool)> {
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let is_fp16_file = ["-fp16", "_fp16", "-f16", "_f16"].iter().any(|s| stem.ends_with(s));
    match (precision, ep) {
        ("fp32", _) if is_fp16_file => anyhow::bail!("{} is an FP16 model; pass the FP32 one", model.display()),
        ("fp32", _) => Ok((model.to_path_buf(), false)),
        ("fp16", EpKind::Tensorrt) if !is_fp16_file => Ok((model.to_path_buf(), true)),
        ("fp16", _) if is_fp16_file => Ok((model.to_path_buf(), false)),
        ("fp16", _) => {
            let v = model.with_file_name(format!("{stem}-fp16.onnx"));
            anyhow::ensure!(
                v.is_file(),
                "no FP16 variant of {} (looked for {}; scripts/make-models.sh makes one)",
                model.display(),
                v.display()
            );
            Ok((v, false))
        }
        (other, _) => anyhow::bail!("--precision {other}: expected fp32 or fp16"),
    }
}

/// Median, min and max of a series.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Self {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() {
            0.0
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        Self {
            median,
            min: s.first().copied().unwrap_or(0.0),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// Execution provider in use (after any fallback) and what was asked for.
    pub ep: String,
    pub ep_requested: String,
    pub io_binding: bool,
    pub model: String,
    pub input: String,
    pub precision: String,
    pub ort_threads: usize,
    pub workers: usize,
    pub frames: String,
    pub frame_size: String,
    /// (a) frames per second of bare `session.run`.
    pub bare_fps: Spread,
    /// (b) milliseconds per frame of decode + letterbox on one thread.
    pub preprocess_ms: Spread,
    /// (c) frames per second published by the full pipeline.
    pub pipeline_fps: Spread,
    /// (c)/(a) within each repetition.
    pub ratio: Spread,
    /// T_inf / (T_inf + T_pre / cores), from the medians: what the pipeline could at best reach.
    pub ratio_limit: f64,
    /// (c) a frame's age when its inference started (capture until then), p50 and p99 within each
    /// repetition, ms: freshness, to be read beside the fps.
    pub age_at_infer_p50_ms: Spread,
    pub age_at_infer_p99_ms: Spread,
    /// (c) p95 within each repetition, ms.
    pub age_at_infer_p95_ms: Spread,
    /// (c) how long a prepared frame waited for its inference (prepared until inference took it), p95 within
    /// each repetition, ms: with an unpaced source a frame's age at inference start is its own preparation
    /// plus this.
    pub prepared_wait_p95_ms: Spread,
    /// (c) one inference inside the pipeline (median within each repetition), ms: beside 1/(a), what
    /// preprocessing running at the same time costs inference.
    pub pipeline_infer_p50_ms: Spread,
    /// (c) how long inference waited for a prepared frame, p50 and p99 within each repetition, ms.
    pub infer_wait_p50_ms: Spread,
    pub infer_wait_p99_ms: Spread,
    /// (c) decode + letterbox of one frame inside the pipeline, median within each repetition, ms.
    pub pipeline_preprocess_p50_ms: Spread,
    /// (c) capture until the sink wrote the result, p50 and p99 within each repetition, ms.
    pub capture_to_publish_p50_ms: Spread,
    pub capture_to_publish_p99_ms: Spread,
    /// (c) source rate (0: unpaced).
    pub source_fps: f64,
    /// (d), with `--gpu-like`: pipeline fps with inference that sleeps 1/(a) per frame, that stand-in's bare
    /// fps, their ratio within each repetition, and the frame age at inference start (p50, p99).
    pub gpu_like: Option<GpuLike>,
    pub per_rep: Vec<(f64, f64, f64)>,
}

#[derive(Debug, serde::Serialize)]
pub struct GpuLike {
    pub pipeline_fps: Spread,
    pub bare_fps: Spread,
    pub ratio: Spread,
    pub age_at_infer_p50_ms: Spread,
    pub age_at_infer_p99_ms: Spread,
}

fn load_frames(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "frames directory {} (run scripts/setup.sh, or pass --frames)",
                dir.display()
            )
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .jpg frames in {}", dir.display());
    files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
        .collect()
}

/// One row's state: the bare detector, its tensor, the preprocessor and the pipeline config.
struct RowBench {
    ep: EpKind,
    model: PathBuf,
    opts: SessionOptions,
    bare: Detector,
    prep: FramePreprocessor,
    tensor: kestrel_infer::model::InputTensor,
    cands: Vec<kestrel_vision::yolo::Candidate>,
    cfg: Config,
    workers: usize,
    intra: usize,
    labels: Arc<[String]>,
    frame_size: String,
    fa: Vec<f64>,
    fb: Vec<f64>,
    fc: Vec<f64>,
    /// (c) per repetition: what the pipeline run measured besides its fps.
    runs: Vec<PipelineRun>,
    /// (d) per repetition: (pipeline fps, stand-in bare fps, age p50, age p99).
    gpu: Vec<(f64, f64, f64, f64)>,
}

/// What one pipeline run measured.
struct PipelineRun {
    fps: f64,
    age: kestrel_daemon::metrics::Latency,
    age_p95_ms: f64,
    prepared_wait_p95_ms: f64,
    latency: kestrel_daemon::metrics::Latency,
    infer_p50_ms: f64,
    infer_wait: kestrel_daemon::metrics::Latency,
    /// Decode p50 + letterbox p50.
    preprocess_p50_ms: f64,
}

/// What one row measures.
struct RowSpec<'a> {
    model: &'a Path,
    ep: EpKind,
    /// TensorRT builds an FP16 engine.
    trt_fp16: bool,
    io_binding: bool,
    /// Preprocessing workers (0: automatic).
    workers: usize,
}

impl RowBench {
    fn new(ort: Option<&Path>, a: &BenchArgs, spec: RowSpec<'_>, frames: &[Vec<u8>]) -> anyhow::Result<Self> {
        let RowSpec {
            model,
            ep,
            trt_fp16,
            io_binding,
            workers,
        } = spec;
        let rt = runtime::init(ort)?;
        let intra = if a.threads == 0 { cores() } else { a.threads };
        let workers = if workers == 0 {
            default_workers(cores())
        } else {
            workers
        };
        let mut ep_opts = EpOptions {
            providers: vec![ep],
            require: Some(ep),
            ..EpOptions::default()
        };
        ep_opts.tensorrt.fp16 = trt_fp16;
        let opts = SessionOptions {
            intra_threads: intra,
            spinning: false,
            ep: ep_opts,
            io_binding,
            ..SessionOptions::default()
        };
        let mut bare = Detector::load(rt, model, None, &opts)?;
        let (w, h) = (bare.info.input_width, bare.info.input_height);
        let mut prep = FramePreprocessor::new(true)?;
        let mut tensor = bare.new_input();
        prep.prepare(Pixels::jpeg(&frames[0]), tensor.data_mut(), w, h)?;
        let header = turbojpeg::read_header(&frames[0]).context("reading the first frame's header")?;
        let mut cands = Vec::new();
        for _ in 0..3 {
            bare.infer(&tensor, 0.25, &mut cands)?;
        }
        let mut cfg = Config::default();
        cfg.source.kind = SourceKind::Images;
        cfg.source.path = a.frames.clone();
        cfg.source.fps_hz = 0.0;
        cfg.pipeline.workers = workers;
        let labels: Arc<[String]> = bare.info.labels.clone().into();
        Ok(Self {
            ep,
            model: model.to_path_buf(),
            opts,
            bare,
            prep,
            tensor,
            cands,
            cfg,
            workers,
            intra,
            labels,
            frame_size: format!("{}x{}", header.width, header.height),
            fa: Vec::new(),
            fb: Vec::new(),
            fc: Vec::new(),
            runs: Vec::new(),
            gpu: Vec::new(),
        })
    }

    /// One repetition of (a), (b), (c).
    fn rep(&mut self, ort: Option<&Path>, a: &BenchArgs, frames: &[Vec<u8>]) -> anyhow::Result<()> {
        let rt = runtime::init(ort)?;
        let (w, h) = (self.bare.info.input_width, self.bare.info.input_height);
        // (a) bare inference
        let t = Instant::now();
        for _ in 0..a.n {
            self.bare.infer(&self.tensor, 0.25, &mut self.cands)?;
        }
        self.fa.push(a.n as f64 / t.elapsed().as_secs_f64());
        // (b) decode + letterbox, one thread
        let t = Instant::now();
        for i in 0..a.n {
            let f = &frames[i % frames.len()];
            self.prep.prepare(Pixels::jpeg(f), self.tensor.data_mut(), w, h)?;
        }
        self.fb.push(t.elapsed().as_secs_f64() * 1e3 / a.n as f64);
        // (c) the full pipeline
        let det = Detector::load(rt, &self.model, None, &self.opts)?;
        let run = self.pipeline(a, Box::new(det), a.source_fps)?;
        self.fc.push(run.fps);
        let i = self.fa.len() - 1;
        report!(
            "  rep {}/{} {} {} {} worker(s): bare {:.1} fps | preprocess {:.2} ms | pipeline {:.1} fps | ratio {:.3} \
             | age at infer p50 {:.1} p95 {:.1} p99 {:.1} ms | prepared→infer p95 {:.2} ms | capture→publish p50 \
             {:.1} p99 {:.1} ms | in the pipeline: inference {:.1} ms (bare {:.1}), preprocessing {:.1} ms, \
             inference waited p50 {:.2} p99 {:.2} ms",
            i + 1,
            a.reps,
            short_name(&self.model.display().to_string()),
            self.ep,
            self.workers,
            self.fa[i],
            self.fb[i],
            self.fc[i],
            self.fc[i] / self.fa[i],
            run.age.p50_ms,
            run.age_p95_ms,
            run.age.p99_ms,
            run.prepared_wait_p95_ms,
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.infer_p50_ms,
            1e3 / self.fa[i],
            run.preprocess_p50_ms,
            run.infer_wait.p50_ms,
            run.infer_wait.p99_ms,
        );
        self.runs.push(run);
        // (d) the same with inference that holds no CPU for (a)'s time per frame
        if a.gpu_like {
            let mut stand_in = SleepInference {
                width: w,
                height: h,
                precision: self.bare.info.input_precision,
                per_frame: Duration::from_secs_f64(1.0 / self.fa[i]),
            };
            let n = a.n.min(20);
            let t = Instant::now();
            for _ in 0..n {
                stand_in.infer(&self.tensor, 0.25, &mut self.cands)?;
            }
            let bare = n as f64 / t.elapsed().as_secs_f64();
            let run = self.pipeline(a, Box::new(stand_in), a.source_fps)?;
            let (fps, age) = (run.fps, run.age);
            self.gpu.push((fps, bare, f64::from(age.p50_ms), f64::from(age.p99_ms)));
            report!(
                "  rep {}/{} gpu-like ({:.1} ms sleep per frame): bare {bare:.1} fps | pipeline {fps:.1} fps | ratio \
                 {:.3} | age at infer p50 {:.1} p99 {:.1} ms",
                i + 1,
                a.reps,
                1e3 / self.fa[i],
                fps / bare,
                age.p50_ms,
                age.p99_ms
            );
        }
        Ok(())
    }

    /// Run the pipeline with `inference` on the frames (paced at `source_fps`, 0: unpaced), over `a.n` frames
    /// after the first 3 (start-up).
    fn pipeline(&self, a: &BenchArgs, inference: Box<dyn Inference>, source_fps: f64) -> anyhow::Result<PipelineRun> {
        let pool = kestrel_camera::buffer_pool_size(self.workers, self.cfg.pipeline.queue_depth);
        let src = ImagesSource::open(&a.frames, source_fps, true, pool)?;
        let stop = Arc::new(AtomicBool::new(false));
        let p = Pipeline::start(
            Box::new(src),
            inference,
            Box::new(NullSink),
            self.labels.clone(),
            pipeline_options(&self.cfg, self.workers),
            stop.clone(),
        )?;
        let skip = 3u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while p.metrics.published_total() < skip && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A new metrics interval: the latencies below are of the measured frames only.
        let _ = p.metrics.snapshot();
        let (t, start_count) = (Instant::now(), p.metrics.published_total());
        while p.metrics.published_total() < start_count + a.n as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let done = p.metrics.published_total() - start_count;
        let m = &p.metrics;
        let run = PipelineRun {
            fps: done as f64 / t.elapsed().as_secs_f64(),
            age: m.peek(Stage::AgeAtInfer),
            age_p95_ms: f64::from(m.peek_quantile(Stage::AgeAtInfer, 0.95)),
            prepared_wait_p95_ms: f64::from(m.peek_quantile(Stage::PreparedWait, 0.95)),
            latency: m.peek(Stage::CaptureToPublish),
            infer_p50_ms: f64::from(m.peek(Stage::Infer).p50_ms),
            infer_wait: m.peek(Stage::InferWait),
            preprocess_p50_ms: f64::from(m.peek(Stage::Decode).p50_ms + m.peek(Stage::Letterbox).p50_ms),
        };
        stop.store(true, Ordering::SeqCst);
        p.wait(None)?;
        Ok(run)
    }

    /// One measure of (c) over the repetitions.
    fn col(&self, f: fn(&PipelineRun) -> f64) -> Spread {
        Spread::of(&self.runs.iter().map(f).collect::<Vec<_>>())
    }

    fn row(&self, a: &BenchArgs) -> Row {
        let (fa, fb, fc) = (&self.fa, &self.fb, &self.fc);
        let ratios: Vec<f64> = fc.iter().zip(fa).map(|(c, a)| c / a).collect();
        let (t_inf, t_pre) = (1.0 / Spread::of(fa).median, Spread::of(fb).median / 1e3);
        Row {
            ep: self.bare.selection.active.name().into(),
            ep_requested: self.ep.name().into(),
            io_binding: self.bare.io_binding(),
            model: self.model.display().to_string(),
            input: format!("{}x{}", self.bare.info.input_width, self.bare.info.input_height),
            precision: self.bare.selection.precision.clone(),
            ort_threads: self.intra,
            workers: self.workers,
            frames: a.frames.display().to_string(),
            frame_size: self.frame_size.clone(),
            bare_fps: Spread::of(fa),
            preprocess_ms: Spread::of(fb),
            pipeline_fps: Spread::of(fc),
            ratio: Spread::of(&ratios),
            ratio_limit: t_inf / (t_inf + t_pre / cores() as f64),
            age_at_infer_p50_ms: self.col(|r| f64::from(r.age.p50_ms)),
            age_at_infer_p99_ms: self.col(|r| f64::from(r.age.p99_ms)),
            age_at_infer_p95_ms: self.col(|r| r.age_p95_ms),
            prepared_wait_p95_ms: self.col(|r| r.prepared_wait_p95_ms),
            pipeline_infer_p50_ms: self.col(|r| r.infer_p50_ms),
            infer_wait_p50_ms: self.col(|r| f64::from(r.infer_wait.p50_ms)),
            infer_wait_p99_ms: self.col(|r| f64::from(r.infer_wait.p99_ms)),
            pipeline_preprocess_p50_ms: self.col(|r| r.preprocess_p50_ms),
            capture_to_publish_p50_ms: self.col(|r| f64::from(r.latency.p50_ms)),
            capture_to_publish_p99_ms: self.col(|r| f64::from(r.latency.p99_ms)),
            source_fps: a.source_fps,
            gpu_like: (!self.gpu.is_empty()).then(|| {
                let col = |f: fn(&(f64, f64, f64, f64)) -> f64| Spread::of(&self.gpu.iter().map(f).collect::<Vec<_>>());
                GpuLike {
                    pipeline_fps: col(|g| g.0),
                    bare_fps: col(|g| g.1),
                    ratio: col(|g| g.0 / g.1),
                    age_at_infer_p50_ms: col(|g| g.2),
                    age_at_infer_p99_ms: col(|g| g.3),
                }
            }),
            per_rep: fa.iter().zip(fb).zip(fc).map(|((a, b), c)| (*a, *b, *c)).collect(),
        }
    }
}

fn row_label(r: &Row) -> String {
    format!(
        "{} {}{} {}",
        short_name(&r.model),
        r.ep,
        if r.io_binding { "+iob" } else { "" },
        r.precision
    )
}

fn short_name(model: &str) -> String {
    Path::new(model)
        .file_name()
        .map_or(model.to_string(), |n| n.to_string_lossy().into_owned())
}

fn spread(s: &Spread, digits: usize) -> String {
    format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
}

pub fn run(ort: Option<&Path>, a: &BenchArgs) -> Result<Exit, Failure> {
    let result = (|| -> anyhow::Result<Vec<Row>> {
        anyhow::ensure!(a.reps > 0 && a.n > 0, "--reps and --n must be at least 1");
        let frames = load_frames(&a.frames)?;
        report!(
            "kestrel bench: {} frames from {}, {} reps x {} frames, {} cores",
            frames.len(),
            a.frames.display(),
            a.reps,
            a.n,
            cores()
        );
        let mut benches = Vec::new();
        for m in &a.models {
            for ep in a.ep.iter().map(|&e| EpKind::from(e)) {
                for p in &a.precision {
                    for &iob in &a.io_binding {
                        for &workers in &a.workers {
                            let (file, trt_fp16) = model_for(m, ep, p)?;
                            report!("loading {} on {ep} ({p}, IoBinding {iob})", file.display());
                            let spec = RowSpec {
                                model: &file,
                                ep,
                                trt_fp16,
                                io_binding: iob,
                                workers,
                            };
                            benches.push(RowBench::new(ort, a, spec, &frames)?);
                        }
                    }
                }
            }
        }
        // Rows interleaved within each repetition too, so that speed changes of the host hit every row alike.
        for _ in 0..a.reps {
            for b in &mut benches {
                b.rep(ort, a, &frames)?;
            }
        }
        let rows: Vec<Row> = benches.iter().map(|b| b.row(a)).collect();
        Ok(rows)
    })();
    let rows = result.or_exit(Exit::Setup)?;
    outln!(
        "| EP | model | input | prec | frames | ORT thr | workers | (a) bare fps | (b) decode+letterbox ms | (c) pipeline fps | (c)/(a) | limit | (c) age at infer p50/p95/p99 ms | (c) prepared→infer p95 ms | (c) capture→publish p50/p99 ms | (c) infer ms, 1/(a) ms |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        outln!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.1} / {:.1} / {:.1} | {:.2} | {:.1} / {:.1} | {:.1}, {:.1} |",
            r.ep,
            if r.io_binding { "+iob" } else { "" },
            short_name(&r.model),
            r.input,
            r.precision,
            r.frame_size,
            r.ort_threads,
            r.workers,
            spread(&r.bare_fps, 1),
            spread(&r.preprocess_ms, 2),
            spread(&r.pipeline_fps, 1),
            spread(&r.ratio, 3),
            r.ratio_limit,
            r.age_at_infer_p50_ms.median,
            r.age_at_infer_p95_ms.median,
            r.age_at_infer_p99_ms.median,
            r.prepared_wait_p95_ms.median,
            r.capture_to_publish_p50_ms.median,
            r.capture_to_publish_p99_ms.median,
            r.pipeline_infer_p50_ms.median,
            1e3 / r.bare_fps.median
        );
    }
    outln!(
        "median [min–max] over interleaved repetitions; limit = T_inf / (T_inf + T_pre / cores); +iob: IoBinding; \
         every row ran on the provider named (require_ep is set for each); the columns after the limit: medians \
         over the repetitions of each one's percentiles (spreads in --json); source in (c): {}",
        if a.source_fps > 0.0 {
            format!("paced at {} fps (the newest frame wins)", a.source_fps)
        } else {
            "unpaced (each frame captured when a worker takes it)".to_string()
        }
    );
    if rows.iter().any(|r| r.gpu_like.is_some()) {
        outln!();
        outln!(
            "| GPU-like: model | workers | sleep per frame ms | (d) stand-in bare fps | (d) pipeline fps | (d) pipeline / bare | (d) age at infer p50/p99 ms |"
        );
        outln!("|---|---|---|---|---|---|---|");
        for r in &rows {
            if let Some(g) = &r.gpu_like {
                outln!(
                    "| {} | {} | {:.1} | {} | {} | {} | {:.1} / {:.1} |",
                    short_name(&r.model),
                    r.workers,
                    1e3 / r.bare_fps.median,
                    spread(&g.bare_fps, 1),
                    spread(&g.pipeline_fps, 1),
                    spread(&g.ratio, 3),
                    g.age_at_infer_p50_ms.median,
                    g.age_at_infer_p99_ms.median
                );
            }
        }
        outln!(
            "(d): inference replaced by a sleep of (a)'s time per frame (no CPU held, as on a GPU), real decoding and \
             letterboxing of the same frames; ratio within each repetition"
        );
    }
    if rows.len() > 1 {
        for r in &rows[1..] {
            for (what, pick) in [("(a) bare fps", 0usize), ("(c) pipeline fps", 2)] {
                let get = |t: &(f64, f64, f64)| if pick == 0 { t.0 } else { t.2 };
                let ratios: Vec<f64> = r
                    .per_rep
                    .iter()
                    .zip(&rows[0].per_rep)
                    .map(|(x, y)| get(x) / get(y))
                    .collect();
                let s = Spread::of(&ratios);
                outln!(
                    "{what}, {} / {}: {:.3} [{:.3}–{:.3}] (ratio within each repetition)",
                    row_label(r),
                    row_label(&rows[0]),
                    s.median,
                    s.min,
                    s.max
                );
            }
        }
    }
    if let Some(path) = &a.json {
        let out = serde_json::json!({ "cores": cores(), "reps": a.reps, "n": a.n, "rows": rows });
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap_or_default()) {
            return Err(Failure::new(
                Exit::Failed,
                anyhow::anyhow!("cannot write {}: {e}", path.display()),
            ));
        }
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_picks_the_model_file() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("net.onnx");
        std::fs::write(&m, b"x").unwrap();
        assert_eq!(model_for(&m, EpKind::Cpu, "fp32").unwrap(), (m.clone(), false));
        assert_eq!(model_for(&m, EpKind::Tensorrt, "fp16").unwrap(), (m.clone(), true));
        let e = model_for(&m, EpKind::Cpu, "fp16").unwrap_err().to_string();
        assert!(e.contains("net-fp16.onnx"), "{e}");
        let v = t.path().join("net-fp16.onnx");
        std::fs::write(&v, b"x").unwrap();
        assert_eq!(model_for(&m, EpKind::Cuda, "fp16").unwrap(), (v.clone(), false));
        assert!(model_for(&v, EpKind::Cpu, "fp32").is_err());
        assert!(model_for(&m, EpKind::Cpu, "int4").is_err());
    }

    #[test]
    fn spread_of_series() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let s = Spread::of(&[5.0]);
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
    }
}
