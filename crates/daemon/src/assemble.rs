//! Assemble a running pipeline from a [`Config`]: runtime, model, source, sink, thread budget.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::config::{Config, OutputFormat, OutputKind};
use crate::mavlink::MavlinkError;
use crate::metrics::Metrics;
use crate::pipeline::PipelineError;
use crate::pipeline::{default_workers, Options, Pipeline};
use crate::publish::PublishError;
use crate::publish::TeeSink;
use crate::sink::{JsonLinesSink, NullSink, Sink, SinkSwap, SwappableSink, TextSink};
use crate::startup::StartupTestError;
use kestrel_camera::SourceError;
use kestrel_infer::detect::Thresholds;
use kestrel_infer::model::ModelError;
use kestrel_infer::model::{Detector, SessionOptions};
use kestrel_infer::runtime;
use kestrel_infer::runtime::RuntimeError;
use kestrel_protocol::{Hello, ModelHello};
use kestrel_vision::angles::IntrinsicsError;

/// Why the daemon could not start (each keeps the error it came from).
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    SelfTest(#[from] StartupTestError),
    #[error("model warm-up failed: {0}")]
    WarmUp(#[source] ModelError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("mavlink.enabled needs [intrinsics]")]
    MavlinkWithoutIntrinsics,
    #[error("intrinsics: {0}")]
    Intrinsics(#[from] IntrinsicsError),
    #[error(transparent)]
    Mavlink(#[from] MavlinkError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[cfg(feature = "zenoh")]
    #[error(transparent)]
    Zenoh(#[from] crate::zenoh_out::ZenohError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Why the configured output could not be opened.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("output.path is required for output.kind = \"file\"")]
    MissingPath,
    #[error("cannot open output file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// CPU cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// ONNX Runtime session settings for a config, with `intra` intra-op threads.
pub fn session_options(cfg: &Config, intra: usize) -> SessionOptions {
    SessionOptions {
        intra_threads: intra,
        inter_threads: cfg.runtime.inter_threads,
        spinning: cfg.runtime.spinning,
        ep: cfg.runtime.ep_options(),
        io_binding: cfg.runtime.io_binding,
    }
}

/// Worker and ONNX Runtime thread counts for a config (0 means automatic).
pub fn thread_budget(cfg: &Config) -> (usize, usize) {
    let workers = if cfg.pipeline.workers == 0 {
        default_workers(cores())
    } else {
        cfg.pipeline.workers
    };
    // ONNX Runtime gets every core: with spinning off its threads sleep while workers run, and
    // inference is the bottleneck the workers feed.
    let intra = if cfg.runtime.intra_threads == 0 {
        cores()
    } else {
        cfg.runtime.intra_threads
    };
    (workers, intra)
}

pub fn pipeline_options(cfg: &Config, workers: usize) -> Options {
    Options {
        workers,
        queue_depth: cfg.pipeline.queue_depth,
        poll: Duration::from_millis(cfg.pipeline.poll_ms),
        thresholds: Thresholds {
            conf: cfg.model.conf,
            iou: cfg.model.iou,
            max_detections: cfg.model.max_detections,
        },
        scaled_jpeg: cfg.pipeline.scaled_jpeg_decode,
        intrinsics: cfg
            .intrinsics
            .as_ref()
            .and_then(|i| kestrel_vision::angles::Intrinsics::new(i).ok()),
    }
}

/// The sink a config asks for.
pub fn open_sink(cfg: &Config) -> Result<Box<dyn Sink>, OutputError> {
    let writer: Box<dyn Write + Send> = match cfg.output.kind {
        OutputKind::None => return Ok(Box::new(NullSink)),
        OutputKind::Stdout => Box::new(std::io::stdout()),
        OutputKind::File => {
            let path = cfg.output.path.as_deref().ok_or(OutputError::MissingPath)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| OutputError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            Box::new(BufWriter::new(f))
        }
    };
    Ok(match cfg.output.format {
        OutputFormat::Json => Box::new(JsonLinesSink::new(writer)),
        OutputFormat::Text => Box::new(TextSink::new(writer)),
    })
}

/// A running daemon: the pipeline, and the detection socket while it runs.
pub struct Daemon {
    pub pipeline: Pipeline,
    /// Dropped after the pipeline: stops the server and removes the socket file.
    pub publisher: Option<crate::publish::Publisher>,
    /// Applies a reloaded configuration (SIGHUP).
    pub reload: Reload,
    /// The source's name (for status lines).
    pub source_name: String,
}

/// Load everything the config names and start the pipeline (and the socket server). `progress` hears
/// what start-up is doing (for systemd's `STATUS=`).
pub fn start(
    cfg: &Config,
    cli_ort: Option<&Path>,
    stop: Arc<AtomicBool>,
    progress: &mut dyn FnMut(&str),
) -> Result<Daemon, StartError> {
    progress("loading ONNX Runtime");
    let rt = runtime::init(cli_ort.or(cfg.runtime.ort_lib.as_deref()))?;
    let (workers, intra) = thread_budget(cfg);
    let opts = session_options(cfg, intra);
    progress(&format!("loading model {}", cfg.model.path.display()));
    let mut detector = Detector::load_with(rt, &cfg.model.path, cfg.model.labels.as_deref(), &opts, progress)?;
    log::info!(
        "model {}; ONNX Runtime {} ({}, {}, {intra} threads); {workers} preprocessing workers",
        detector.info,
        rt.version,
        detector.selection.active,
        detector.selection.precision
    );
    if cfg.selftest.enabled {
        detector = crate::startup::at_start(rt, cfg, &opts, detector, progress)?;
    }
    let runs = cfg.runtime.warmup_runs as usize;
    if runs > 0 {
        progress(&format!("warming up the model ({runs} runs)"));
        let times = detector.warm_up(runs).map_err(StartError::WarmUp)?;
        let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t.as_secs_f64() * 1e3)).collect();
        log::info!("warm-up: {runs} runs, {} ms", ms.join(", "));
    }
    let info = &detector.info;
    let labels: Arc<[String]> = info.labels.clone().into();
    let pool = kestrel_camera::buffer_pool_size(workers, cfg.pipeline.queue_depth);
    progress(&format!("opening source {}", source_label(cfg)));
    let src = kestrel_camera::open(&cfg.source, pool)?;
    log::info!("source {}", src.name());
    let source_name = src.name().to_string();
    let metrics = Arc::new(Metrics::new());
    let (primary, output) = SwappableSink::new(open_sink(cfg)?);
    let mut sink: Box<dyn Sink> = Box::new(primary);
    if cfg.mavlink.enabled {
        let Some(intrinsics) = cfg.intrinsics.as_ref() else {
            return Err(StartError::MavlinkWithoutIntrinsics);
        };
        let intrinsics = kestrel_vision::angles::Intrinsics::new(intrinsics)?;
        let m = crate::mavlink::MavlinkSink::new(&cfg.mavlink, intrinsics, &info.labels)?;
        log::info!(
            "MAVLink LANDING_TARGET for class {:?} (id {}) to {}",
            cfg.mavlink.target_class,
            m.class_id(),
            cfg.mavlink.endpoint
        );
        sink = Box::new(TeeSink(vec![sink, Box::new(m)]));
    }
    let hello = hello(cfg, info, src.name(), &detector.selection);
    let publisher = if cfg.publish.enabled {
        let (publisher, socket_sink) = crate::publish::start(&cfg.publish, hello.clone(), metrics.clone())?;
        sink = Box::new(TeeSink(vec![sink, Box::new(socket_sink)]));
        Some(publisher)
    } else {
        None
    };
    #[cfg(feature = "zenoh")]
    if cfg.zenoh.enabled {
        progress("opening the Zenoh session");
        let status = crate::zenoh_out::StatusSource {
            tracker: crate::status::StatusTracker::new(
                metrics.clone(),
                cfg.publish.stall_ms,
                hello.execution_provider.clone(),
                hello.execution_provider_fallback.clone(),
            ),
            socket: publisher.as_ref().map(|p| p.stats.clone()),
        };
        let z = crate::zenoh_out::ZenohSink::new(&cfg.zenoh, hello, status)?;
        sink = Box::new(TeeSink(vec![sink, Box::new(z)]));
    }
    let pipeline = Pipeline::start_with_metrics(
        src,
        Box::new(detector),
        sink,
        labels,
        pipeline_options(cfg, workers),
        stop,
        metrics,
    )?;
    let reload = Reload {
        running: cfg.clone(),
        thresholds: pipeline.thresholds.clone(),
        output,
    };
    Ok(Daemon {
        pipeline,
        publisher,
        reload,
        source_name,
    })
}

/// The `hello` every output sends first (each sets its own `format` and status interval).
fn hello(
    cfg: &Config,
    info: &kestrel_infer::model::ModelInfo,
    camera: &str,
    selection: &kestrel_infer::ep::Selection,
) -> Hello {
    Hello {
        protocol: kestrel_protocol::VERSION,
        kestrel: env!("CARGO_PKG_VERSION").into(),
        model: ModelHello {
            path: info.path.display().to_string(),
            input_width: info.input_width,
            input_height: info.input_height,
            precision: format!("{:?}", info.input_precision).to_lowercase(),
            layout: match info.layout {
                kestrel_vision::yolo::OutputLayout::Yolov5 { .. } => "yolov5".into(),
                kestrel_vision::yolo::OutputLayout::Yolov8 { .. } => "yolov8".into(),
            },
        },
        labels: info.labels.clone(),
        camera: camera.to_string(),
        execution_provider: selection.active.name().into(),
        execution_provider_fallback: selection.fallback_note(),
        execution_precision: Some(selection.precision.clone()),
        intrinsics: cfg.intrinsics.is_some(),
        format: cfg.publish.format,
        status_interval_ms: cfg.publish.status_interval_ms,
        zenoh_key: None,
    }
}

fn source_label(cfg: &Config) -> String {
    use crate::config::SourceKind;
    match cfg.source.kind {
        SourceKind::V4l2 => format!("camera {}", cfg.source.device.display()),
        SourceKind::Synthetic => "synthetic".into(),
        SourceKind::Images | SourceKind::Mjpeg => cfg.source.path.display().to_string(),
    }
}

/// What a reload (SIGHUP) may change in a running daemon: the detection thresholds (`model.conf`,
/// `model.iou`, `model.max_detections`) and the output (`[output]`; a file output is reopened on every
/// reload, for log rotation). Everything else is only read at start: a change there is logged as needing a
/// restart and the running value is kept.
pub struct Reload {
    running: Config,
    thresholds: Arc<crate::pipeline::LiveThresholds>,
    output: SinkSwap,
}

impl Reload {
    /// Apply `new` (loaded and validated). All or nothing: if the new output cannot be opened, nothing
    /// changes. Returns one line per change (empty: nothing to do).
    pub fn apply(&mut self, new: Config) -> Result<Vec<String>, OutputError> {
        let old = &self.running;
        let mut changes = Vec::new();
        if new.output != old.output || new.output.kind == OutputKind::File {
            let sink = open_sink(&new)?;
            self.output.replace(sink);
            if new.output == old.output {
                changes.push("output file reopened".to_string());
            } else {
                changes.push(format!("output {} -> {}", describe_output(old), describe_output(&new)));
            }
        }
        let fields: [(&str, String, String); 3] = [
            ("model.conf", old.model.conf.to_string(), new.model.conf.to_string()),
            ("model.iou", old.model.iou.to_string(), new.model.iou.to_string()),
            (
                "model.max_detections",
                old.model.max_detections.to_string(),
                new.model.max_detections.to_string(),
            ),
        ];
        for (name, a, b) in fields {
            if a != b {
                changes.push(format!("{name} {a} -> {b}"));
            }
        }
        self.thresholds.set(Thresholds {
            conf: new.model.conf,
            iou: new.model.iou,
            max_detections: new.model.max_detections,
        });
        let mut kept = new.clone();
        kept.model.conf = old.model.conf;
        kept.model.iou = old.model.iou;
        kept.model.max_detections = old.model.max_detections;
        kept.output = old.output.clone();
        for section in restart_only_changes(old, &kept) {
            log::warn!("reload: {section} changed: takes effect after a restart (running with the old value)");
        }
        // Remember what runs: the reloadable fields from `new`, the rest as started.
        let mut running = old.clone();
        running.model.conf = new.model.conf;
        running.model.iou = new.model.iou;
        running.model.max_detections = new.model.max_detections;
        running.output = new.output;
        self.running = running;
        Ok(changes)
    }
}

fn describe_output(cfg: &Config) -> String {
    let format = match cfg.output.format {
        OutputFormat::Json => "json",
        OutputFormat::Text => "text",
    };
    match (cfg.output.kind, &cfg.output.path) {
        (OutputKind::File, Some(p)) => format!("file {} ({format})", p.display()),
        (OutputKind::Stdout, _) => format!("stdout ({format})"),
        (OutputKind::None, _) => "none".into(),
        (OutputKind::File, None) => "file (no path)".into(),
    }
}

/// The parts of `a` and `b` that differ, by section (fields of `[model]` named one by one).
fn restart_only_changes(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("[source]", a.source == b.source);
    check("model.path", a.model.path == b.model.path);
    check("model.labels", a.model.labels == b.model.labels);
    check("[runtime]", a.runtime == b.runtime);
    check("[pipeline]", a.pipeline == b.pipeline);
    check("[metrics]", a.metrics == b.metrics);
    check("[intrinsics]", a.intrinsics == b.intrinsics);
    check("[publish]", a.publish == b.publish);
    check("[mavlink]", a.mavlink == b.mavlink);
    check("[zenoh]", a.zenoh == b.zenoh);
    check("[service]", a.service == b.service);
    check("[log]", a.log == b.log);
    check("[selftest]", a.selftest == b.selftest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::LiveThresholds;

    fn reload_for(cfg: &Config) -> (Reload, Arc<LiveThresholds>) {
        let live = Arc::new(LiveThresholds::new(pipeline_options(cfg, 1).thresholds));
        let (_sink, output) = SwappableSink::new(Box::new(NullSink));
        (
            Reload {
                running: cfg.clone(),
                thresholds: live.clone(),
                output,
            },
            live,
        )
    }

    #[test]
    fn reload_applies_thresholds_and_reports_restart_only_changes() {
        let mut cfg = Config::default();
        cfg.output.kind = OutputKind::None;
        let (mut reload, live) = reload_for(&cfg);
        let mut new = cfg.clone();
        new.model.conf = 0.6;
        new.model.max_detections = 10;
        new.pipeline.workers = 3; // restart only: kept
        let changes = reload.apply(new).unwrap();
        assert_eq!(changes, ["model.conf 0.25 -> 0.6", "model.max_detections 300 -> 10"]);
        assert_eq!((live.get().conf, live.get().max_detections), (0.6, 10));
        assert_eq!(reload.running.pipeline.workers, cfg.pipeline.workers);
        assert_eq!(restart_only_changes(&cfg, &reload.running), Vec::<&str>::new());
        let mut other = cfg.clone();
        other.source.fps_hz = 5.0;
        other.mavlink.heartbeat_hz = 2.0;
        assert_eq!(restart_only_changes(&cfg, &other), ["[source]", "[mavlink]"]);
    }

    #[test]
    fn a_reload_whose_output_cannot_be_opened_changes_nothing() {
        let mut cfg = Config::default();
        cfg.output.kind = OutputKind::None;
        let (mut reload, live) = reload_for(&cfg);
        let mut new = cfg.clone();
        new.model.conf = 0.9;
        new.output.kind = OutputKind::File;
        new.output.path = Some("/nonexistent-dir/out.jsonl".into());
        let e = reload.apply(new).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent-dir/out.jsonl"), "{e:#}");
        assert_eq!(live.get().conf, 0.25);
        assert_eq!(reload.running.output.kind, OutputKind::None);
    }
}
