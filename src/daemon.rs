//! Assemble a running pipeline from a [`Config`]: runtime, model, source, sink, thread budget.

use anyhow::Context as _;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, OutputFormat, OutputKind};
use crate::detect::Thresholds;
use crate::metrics::Metrics;
use crate::model::{Detector, SessionOptions};
use crate::pipeline::{default_workers, Options, Pipeline};
use crate::publish::protocol::{Hello, ModelHello};
use crate::publish::TeeSink;
use crate::sink::{JsonLinesSink, NullSink, Sink, TextSink};
use crate::{runtime, source};

/// CPU cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
            .and_then(|i| crate::angles::Intrinsics::new(i).ok()),
    }
}

/// The sink a config asks for.
pub fn open_sink(cfg: &Config) -> anyhow::Result<Box<dyn Sink>> {
    let writer: Box<dyn Write + Send> = match cfg.output.kind {
        OutputKind::None => return Ok(Box::new(NullSink)),
        OutputKind::Stdout => Box::new(std::io::stdout()),
        OutputKind::File => {
            let path = cfg
                .output
                .path
                .as_deref()
                .context("output.path is required for output.kind = \"file\"")?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open output file {}", path.display()))?;
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
}

/// Load everything the config names and start the pipeline (and the socket server).
pub fn start(cfg: &Config, cli_ort: Option<&Path>, stop: Arc<AtomicBool>) -> anyhow::Result<Daemon> {
    let rt = runtime::init(cli_ort.or(cfg.runtime.ort_lib.as_deref()))?;
    let (workers, intra) = thread_budget(cfg);
    let opts = SessionOptions {
        intra_threads: intra,
        spinning: cfg.runtime.spinning,
    };
    let detector = Detector::load(rt, &cfg.model.path, cfg.model.labels.as_deref(), &opts)?;
    let info = &detector.info;
    log::info!(
        "model {info}; ONNX Runtime {} (CPU, {intra} threads); {workers} preprocessing workers",
        rt.version
    );
    let labels: Arc<[String]> = info.labels.clone().into();
    let pool = source::buffer_pool_size(workers, cfg.pipeline.queue_depth);
    let src = source::open(&cfg.source, pool)?;
    log::info!("source {}", src.name());
    let metrics = Arc::new(Metrics::new());
    let mut sink = open_sink(cfg)?;
    if cfg.mavlink.enabled {
        let Some(intrinsics) = cfg.intrinsics.as_ref() else {
            anyhow::bail!("mavlink.enabled needs [intrinsics]");
        };
        let intrinsics = crate::angles::Intrinsics::new(intrinsics).map_err(anyhow::Error::msg)?;
        let m = crate::mavlink::MavlinkSink::new(&cfg.mavlink, intrinsics, &info.labels)?;
        log::info!(
            "MAVLink LANDING_TARGET for class {:?} (id {}) to {}",
            cfg.mavlink.target_class,
            m.class_id(),
            cfg.mavlink.endpoint
        );
        sink = Box::new(TeeSink(vec![sink, Box::new(m)]));
    }
    let publisher = if cfg.publish.enabled {
        let hello = Hello {
            protocol: crate::publish::protocol::VERSION,
            kestrel: env!("CARGO_PKG_VERSION").into(),
            model: ModelHello {
                path: info.path.display().to_string(),
                input_width: info.input_width,
                input_height: info.input_height,
                precision: format!("{:?}", info.input_precision).to_lowercase(),
                layout: match info.layout {
                    crate::yolo::OutputLayout::Yolov5 { .. } => "yolov5".into(),
                    crate::yolo::OutputLayout::Yolov8 { .. } => "yolov8".into(),
                },
            },
            labels: info.labels.clone(),
            camera: src.name().to_string(),
            execution_provider: "cpu".into(),
            intrinsics: cfg.intrinsics.is_some(),
            format: cfg.publish.format,
            status_interval_ms: cfg.publish.status_interval_ms,
        };
        let (publisher, socket_sink) = crate::publish::start(&cfg.publish, hello, metrics.clone())?;
        sink = Box::new(TeeSink(vec![sink, Box::new(socket_sink)]));
        Some(publisher)
    } else {
        None
    };
    let pipeline = Pipeline::start_with_metrics(
        src,
        Box::new(detector),
        sink,
        labels,
        pipeline_options(cfg, workers),
        stop,
        metrics,
    )?;
    Ok(Daemon { pipeline, publisher })
}
