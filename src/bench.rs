//! `kestrel bench`: on the same model, execution provider, thread budget and frames, measure side by side
//! (a) bare `session.run` on a fixed preprocessed tensor, (b) decode + letterbox alone per frame, and (c) the
//! full pipeline, repeated and interleaved (a, b, c, a, b, c, …) so that the host's speed changes hit all three
//! alike. Prints a table and optionally writes JSON. Reports numbers; never judges them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::{Config, SourceKind};
use crate::daemon::{cores, pipeline_options};
use crate::model::{Detector, InputTensor, SessionOptions};
use crate::pipeline::{default_workers, Pipeline};
use crate::preprocess::{FramePreprocessor, Pixels};
use crate::sink::NullSink;
use crate::source::images::ImagesSource;
use crate::{runtime, source};

/// `eprintln!` that never panics (stderr may be a closed pipe).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Models to measure (repeat the flag for several; one row each).
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
    /// Preprocessing workers in (c) (0: automatic).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
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
    pub per_rep: Vec<(f64, f64, f64)>,
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

fn bench_model(ort: Option<&Path>, a: &BenchArgs, model: &Path, frames: &[Vec<u8>]) -> anyhow::Result<Row> {
    let rt = runtime::init(ort)?;
    let intra = if a.threads == 0 { cores() } else { a.threads };
    let workers = if a.workers == 0 {
        default_workers(cores())
    } else {
        a.workers
    };
    let opts = SessionOptions {
        intra_threads: intra,
        spinning: false,
    };
    let mut bare = Detector::load(rt, model, None, &opts)?;
    let (w, h) = (bare.info.input_width, bare.info.input_height);
    let mut prep = FramePreprocessor::new(true)?;
    let mut tensor = InputTensor::for_model(&bare.info);
    prep.prepare(Pixels::jpeg(&frames[0]), &mut tensor, w, h)?;
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

    let (mut fa, mut fb, mut fc) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..a.reps {
        // (a) bare inference
        let t = Instant::now();
        for _ in 0..a.n {
            bare.infer(&tensor, 0.25, &mut cands)?;
        }
        fa.push(a.n as f64 / t.elapsed().as_secs_f64());
        // (b) decode + letterbox, one thread
        let t = Instant::now();
        for i in 0..a.n {
            let f = &frames[i % frames.len()];
            prep.prepare(Pixels::jpeg(f), &mut tensor, w, h)?;
        }
        fb.push(t.elapsed().as_secs_f64() * 1e3 / a.n as f64);
        // (c) the full pipeline; the first frames (start-up) are not counted
        let det = Detector::load(rt, model, None, &opts)?;
        let pool = source::buffer_pool_size(workers, cfg.pipeline.queue_depth);
        let src = ImagesSource::open(&a.frames, 0.0, true, pool)?;
        let stop = Arc::new(AtomicBool::new(false));
        let p = Pipeline::start(
            Box::new(src),
            Box::new(det),
            Box::new(NullSink),
            labels.clone(),
            pipeline_options(&cfg, workers),
            stop.clone(),
        )?;
        let skip = 3u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while p.metrics.published_total() < skip && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (t, start_count) = (Instant::now(), p.metrics.published_total());
        while p.metrics.published_total() < start_count + a.n as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let done = p.metrics.published_total() - start_count;
        fc.push(done as f64 / t.elapsed().as_secs_f64());
        stop.store(true, Ordering::SeqCst);
        p.wait(None)?;
        let r = fc[rep] / fa[rep];
        report!(
            "  rep {}/{}: bare {:.1} fps | preprocess {:.2} ms | pipeline {:.1} fps | ratio {r:.3}",
            rep + 1,
            a.reps,
            fa[rep],
            fb[rep],
            fc[rep]
        );
    }
    let ratios: Vec<f64> = fc.iter().zip(&fa).map(|(c, a)| c / a).collect();
    let (t_inf, t_pre) = (1.0 / Spread::of(&fa).median, Spread::of(&fb).median / 1e3);
    Ok(Row {
        model: model.display().to_string(),
        input: format!("{w}x{h}"),
        precision: format!("{:?}", bare.info.input_precision).to_lowercase(),
        ort_threads: intra,
        workers,
        frames: a.frames.display().to_string(),
        frame_size: format!("{}x{}", header.width, header.height),
        bare_fps: Spread::of(&fa),
        preprocess_ms: Spread::of(&fb),
        pipeline_fps: Spread::of(&fc),
        ratio: Spread::of(&ratios),
        ratio_limit: t_inf / (t_inf + t_pre / cores() as f64),
        per_rep: fa.iter().zip(&fb).zip(&fc).map(|((a, b), c)| (*a, *b, *c)).collect(),
    })
}

fn spread(s: &Spread, digits: usize) -> String {
    format!("{:.d$} [{:.d$}–{:.d$}]", s.median, s.min, s.max, d = digits)
}

pub fn run(ort: Option<&Path>, a: &BenchArgs) -> ExitCode {
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
        let mut rows = Vec::new();
        for m in &a.models {
            report!("{}:", m.display());
            rows.push(bench_model(ort, a, m, &frames)?);
        }
        Ok(rows)
    })();
    let rows = match result {
        Ok(r) => r,
        Err(e) => {
            report!("kestrel: error: {e:#}");
            return ExitCode::from(3);
        }
    };
    outln!(
        "| model | input | prec | frames | ORT thr | workers | (a) bare fps | (b) decode+letterbox ms | (c) pipeline fps | (c)/(a) | limit |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        outln!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
            Path::new(&r.model)
                .file_name()
                .map_or(r.model.clone(), |n| n.to_string_lossy().into_owned()),
            r.input,
            r.precision,
            r.frame_size,
            r.ort_threads,
            r.workers,
            spread(&r.bare_fps, 1),
            spread(&r.preprocess_ms, 2),
            spread(&r.pipeline_fps, 1),
            spread(&r.ratio, 3),
            r.ratio_limit
        );
    }
    outln!("median [min–max] over interleaved repetitions; limit = T_inf / (T_inf + T_pre / cores)");
    if let Some(path) = &a.json {
        let out = serde_json::json!({ "cores": cores(), "reps": a.reps, "n": a.n, "rows": rows });
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap_or_default()) {
            report!("kestrel: error: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_series() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let s = Spread::of(&[5.0]);
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
    }
}
