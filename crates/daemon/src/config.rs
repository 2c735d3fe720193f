//! Daemon configuration: TOML, `deny_unknown_fields`, defaults for everything, validation errors that name
//! the file, the field and the reason. CLI flags override fields after loading.

use kestrel_core::check::{at_most, within, Invalid};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use kestrel_camera::config::{CameraFormat, SourceConfig, SourceKind, SyntheticFormat};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/kestrel/kestrel.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config {path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub source: SourceConfig,
    pub model: ModelConfig,
    pub runtime: RuntimeConfig,
    pub pipeline: PipelineConfig,
    pub output: OutputConfig,
    pub metrics: MetricsConfig,
    /// Camera intrinsics; when set, every detection carries its angles from the optical axis.
    pub intrinsics: Option<kestrel_vision::angles::IntrinsicsConfig>,
    /// The detection socket.
    pub publish: crate::publish::PublishConfig,
    /// MAVLink LANDING_TARGET output (off by default).
    pub mavlink: crate::mavlink::MavlinkConfig,
    /// Zenoh output to a ground station or a fleet (off by default).
    pub zenoh: crate::zenoh_out::ZenohConfig,
    /// Running under systemd: readiness, watchdog.
    pub service: ServiceConfig,
    /// Logging.
    pub log: LogConfig,
    /// Start-up precision self-test against golden detections.
    pub selftest: SelfTestConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Keep feeding systemd's watchdog while the camera is lost and the source is reconnecting (the source's
    /// own loop must still be alive). `false` lets the watchdog fire during a camera outage, so systemd
    /// restarts the process (for drivers that only recover in a fresh process).
    pub watchdog_in_camera_outage: bool,
    /// How often the `STATUS=` line sent to systemd is refreshed while running.
    pub status_interval_ms: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            watchdog_in_camera_outage: true,
            status_interval_ms: 2000,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `RUST_LOG`-style filter, e.g. `"info"` or `"warn,kestrel=debug,ort=info"` (ONNX Runtime's own messages
    /// have the target `ort`). `--log` and `RUST_LOG` take precedence; default `"warn,kestrel=info"`.
    pub filter: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// ONNX model, or a `.onnx.zst` package with its `.onnx.zst.sha256` beside it; relative paths are relative
    /// to the config file.
    pub path: PathBuf,
    /// Class names file (default: the model's `names` metadata).
    pub labels: Option<PathBuf>,
    /// Minimum score, 0..1 (strictly greater passes).
    pub conf: f32,
    /// NMS IoU threshold, 0..1.
    pub iou: f32,
    /// At most this many detections per frame.
    pub max_detections: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/yolov3-tiny-416.onnx"),
            labels: None,
            conf: 0.25,
            iou: 0.45,
            max_detections: 300,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path to libonnxruntime.so (default: the search described in the README).
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: cores minus preprocessing workers, at least 1).
    pub intra_threads: usize,
    /// Let ONNX Runtime's idle threads spin (takes CPU from the preprocessing workers).
    pub spinning: bool,
    /// Inference runs on a blank input after loading, before the daemon reports ready (the first runs are
    /// slow: allocation, kernel selection, GPU engine set-up).
    pub warmup_runs: u32,
    /// ONNX Runtime inter-op threads (parallel graph branches; 0: ONNX Runtime's choice).
    pub inter_threads: usize,
    /// Execution providers in order of preference: `"tensorrt"`, `"cuda"`, `"cpu"`. One that cannot be used
    /// here is skipped with a WARN (and the reason in `status`), unless it is `require_ep`.
    pub execution_providers: Vec<kestrel_infer::ep::EpKind>,
    /// Refuse to start unless this provider is registered (e.g. `"tensorrt"` on the drone: never fly on the
    /// CPU by accident).
    pub require_ep: Option<kestrel_infer::ep::EpKind>,
    /// Feed the model through an `IoBinding` with inputs in memory ONNX Runtime allocates (pinned host memory
    /// under CUDA/TensorRT, so preprocessing writes straight into DMA-able buffers, two or more in rotation).
    pub io_binding: bool,
    /// TensorRT engine-cache root (default: `$CACHE_DIRECTORY/engines`, i.e. /var/cache/kestrel/engines under
    /// the systemd unit; else `~/.cache/kestrel/engines`).
    pub engine_cache_dir: Option<PathBuf>,
    /// With TensorRT selected and no valid cached engine: `"build"` it now, or `"next_ep"`: run on the next
    /// provider until `kestrel build-engine` has built one.
    pub missing_engine: kestrel_infer::ep::MissingEngine,
    pub tensorrt: kestrel_infer::ep::TensorRtConfig,
    pub cuda: kestrel_infer::ep::CudaConfig,
    pub cpu: kestrel_infer::ep::CpuConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            ort_lib: None,
            intra_threads: 0,
            spinning: false,
            warmup_runs: 2,
            inter_threads: 0,
            execution_providers: vec![kestrel_infer::ep::EpKind::Cpu],
            require_ep: None,
            io_binding: true,
            engine_cache_dir: None,
            missing_engine: kestrel_infer::ep::MissingEngine::Build,
            tensorrt: kestrel_infer::ep::TensorRtConfig::default(),
            cuda: kestrel_infer::ep::CudaConfig::default(),
            cpu: kestrel_infer::ep::CpuConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// The execution-provider part.
    pub fn ep_options(&self) -> kestrel_infer::ep::EpOptions {
        kestrel_infer::ep::EpOptions {
            providers: self.execution_providers.clone(),
            require: self.require_ep,
            tensorrt: self.tensorrt.clone(),
            cuda: self.cuda.clone(),
            cpu: self.cpu.clone(),
            engine_cache_dir: self.engine_cache_dir.clone(),
            missing_engine: self.missing_engine,
        }
    }
}

/// What the start-up self-test does when the chosen provider/precision disagrees with the golden detections.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    /// Refuse to start (exit 3, the report in the log).
    #[default]
    Fail,
    /// Drop the provider that failed and try the next one in `runtime.execution_providers` (the self-test runs
    /// again there); fail when none is left.
    Fallback,
}

/// `[selftest]`: at start, run the golden images through the chosen provider + precision and compare with the
/// FP32 CPU reference detections stored beside the model (`kestrel golden` makes them).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfTestConfig {
    pub enabled: bool,
    /// The golden file (default: `<model stem>.golden.json` beside the model, or the FP32 parent's for a
    /// `-fp16` model). Set explicitly, it must exist.
    pub golden: Option<PathBuf>,
    pub on_mismatch: OnMismatch,
    /// A detection matches when it has the same class, IoU at least this…
    pub min_iou: f32,
    /// …and a score within this of the reference.
    pub score_tolerance: f32,
    /// Only detections scoring at least this (on either side) must be matched.
    pub min_score: f32,
}

impl Default for SelfTestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            golden: None,
            on_mismatch: OnMismatch::Fail,
            min_iou: 0.9,
            score_tolerance: 0.05,
            min_score: 0.3,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Decode + letterbox worker threads (0: a share of the cores that leaves room for inference).
    pub workers: usize,
    /// Frames waiting between stages before the oldest is dropped (latest frame wins).
    pub queue_depth: usize,
    /// Poll interval of every blocking call, which bounds how fast a stop is noticed.
    pub poll_ms: u64,
    /// Decode JPEG frames at 1/2, 1/4 or 1/8 scale (in the DCT domain) when the model input is that much
    /// smaller: several times cheaper, and less aliased than bilinear from full size. `false` decodes at full
    /// size and resizes exactly as Ultralytics' letterbox does.
    pub scaled_jpeg_decode: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue_depth: 1,
            poll_ms: 20,
            scaled_jpeg_decode: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// JSON Lines on standard output.
    #[default]
    Stdout,
    /// JSON Lines appended to `path`.
    File,
    /// Discard results (benchmarks).
    None,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per frame (JSON Lines).
    #[default]
    Json,
    /// One human-readable line per frame with live fps.
    Text,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub kind: OutputKind,
    pub format: OutputFormat,
    /// Required when `kind = "file"`; relative paths are relative to the config file.
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often the metrics summary is logged (0: never).
    pub log_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { log_interval_ms: 5000 }
    }
}

impl Config {
    /// Parse TOML text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() && base != Path::new("") {
                *p = base.join(&*p);
            }
        };
        anchor(&mut cfg.source.path);
        anchor(&mut cfg.model.path);
        if let Some(p) = cfg.model.labels.as_mut() {
            anchor(p);
        }
        if let Some(p) = cfg.output.path.as_mut() {
            anchor(p);
        }
        if let Some(p) = cfg.runtime.ort_lib.as_mut() {
            anchor(p);
        }
        if let Some(p) = cfg.runtime.engine_cache_dir.as_mut() {
            anchor(p);
        }
        if let Some(p) = cfg.runtime.tensorrt.int8_calibration_table.as_mut() {
            anchor(p);
        }
        if let Some(p) = cfg.selftest.golden.as_mut() {
            anchor(p);
        }
        anchor(&mut cfg.publish.socket);
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Check every field's range and the combinations that matter.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check().map_err(|(field, reason)| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            reason,
        })
    }

    /// Every section's rules; the first broken one.
    fn check(&self) -> Result<(), Invalid> {
        let m = &self.model;
        within("model.conf", m.conf, 0.0..=1.0)?;
        within("model.iou", m.iou, 0.0..=1.0)?;
        if m.max_detections == 0 {
            return Err(("model.max_detections", "must be at least 1".into()));
        }
        let s = &self.source;
        within("source.fps_hz", s.fps_hz, 0.0..=1000.0)?;
        match s.kind {
            SourceKind::Images | SourceKind::Mjpeg if s.path.as_os_str().is_empty() => {
                return Err(("source.path", "required for this source kind".into()))
            }
            SourceKind::Synthetic | SourceKind::V4l2 => {
                let (w, h) = (s.width, s.height);
                if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) || w % 2 != 0 || h % 2 != 0 {
                    return Err(("source.width", format!("{w}x{h}: each side must be even and 16..=8192")));
                }
            }
            _ => {}
        }
        if s.kind == SourceKind::V4l2 {
            if s.device.as_os_str().is_empty() {
                return Err(("source.device", "required for kind = \"v4l2\"".into()));
            }
            if s.device.as_os_str().as_encoded_bytes().contains(&0) {
                return Err(("source.device", "contains a NUL byte".into()));
            }
            if s.pixel_formats.is_empty() {
                return Err(("source.pixel_formats", "list at least one of mjpeg, yuyv, nv12".into()));
            }
            if let Some(d) = s
                .pixel_formats
                .iter()
                .enumerate()
                .find(|(i, f)| s.pixel_formats[..*i].contains(f))
            {
                return Err(("source.pixel_formats", format!("{:?} is listed twice", d.1)));
            }
            within("source.buffers", s.buffers, 2..=32)?;
            within("source.dequeue_timeout_ms", s.dequeue_timeout_ms, 100..=60_000)?;
            within("source.reconnect_min_ms", s.reconnect_min_ms, 10..=60_000)?;
            if s.reconnect_max_ms < s.reconnect_min_ms || s.reconnect_max_ms > 600_000 {
                return Err((
                    "source.reconnect_max_ms",
                    format!(
                        "{} must be at least reconnect_min_ms ({}) and at most 600000",
                        s.reconnect_max_ms, s.reconnect_min_ms
                    ),
                ));
            }
        }
        within("pipeline.queue_depth", self.pipeline.queue_depth, 1..=64)?;
        at_most("pipeline.workers", self.pipeline.workers, 64)?;
        within("pipeline.poll_ms", self.pipeline.poll_ms, 1..=1000)?;
        self.publish.validate()?;
        self.mavlink.validate()?;
        self.zenoh.validate()?;
        if self.mavlink.enabled && self.intrinsics.is_none() {
            return Err((
                "mavlink.enabled",
                "LANDING_TARGET needs angles: add the camera's [intrinsics]".into(),
            ));
        }
        if let Some(i) = &self.intrinsics {
            kestrel_vision::angles::Intrinsics::new(i).map_err(|e| ("intrinsics", e.to_string()))?;
        }
        at_most("runtime.warmup_runs", self.runtime.warmup_runs, 100)?;
        self.runtime.ep_options().validate()?;
        at_most("runtime.inter_threads", self.runtime.inter_threads, 256)?;
        let st = &self.selftest;
        within("selftest.min_iou", st.min_iou, 0.0..=1.0)?;
        within("selftest.score_tolerance", st.score_tolerance, 0.0..=1.0)?;
        within("selftest.min_score", st.min_score, 0.0..=1.0)?;
        within(
            "service.status_interval_ms",
            self.service.status_interval_ms,
            100..=60_000,
        )?;
        if self.log.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(("log.filter", "is empty (leave it out for the default)".into()));
        }
        if self.output.kind == OutputKind::File && self.output.path.is_none() {
            return Err(("output.path", "required when output.kind = \"file\"".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/kestrel/test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults_and_relative_paths_follow_the_file() {
        let c = parse("").unwrap();
        assert_eq!(c.model.conf, 0.25);
        assert_eq!(c.model.path, Path::new("/etc/kestrel/models/yolov3-tiny-416.onnx"));
        assert_eq!(c.source.kind, SourceKind::Mjpeg);
    }

    #[test]
    fn a_model_package_is_a_model_path() {
        // `.onnx.zst` (with its `.sha256` beside it) loads like a model file; the path is anchored the same way.
        let c = parse("[model]\npath = \"models/light.onnx.zst\"\n").unwrap();
        assert_eq!(c.model.path, Path::new("/etc/kestrel/models/light.onnx.zst"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse("[model]\nconfidence = 0.5\n").unwrap_err().to_string();
        assert!(e.contains("/etc/kestrel/test.toml") && e.contains("confidence"), "{e}");
        let e = parse("[camera]\n").unwrap_err().to_string();
        assert!(e.contains("camera"), "{e}");
    }

    #[test]
    fn bad_values_name_file_field_and_reason() {
        let e = parse("[model]\nconf = 1.5\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "config /etc/kestrel/test.toml: field `model.conf`: 1.5 is not between 0 and 1"
        );
        let e = parse("[source]\nfps_hz = -1\n").unwrap_err().to_string();
        assert!(e.contains("`source.fps_hz`"), "{e}");
        let e = parse("[source]\nkind = \"webcam\"\n").unwrap_err().to_string();
        assert!(e.contains("webcam") && e.contains("kind"), "{e}");
        let e = parse("[pipeline]\nqueue_depth = 0\n").unwrap_err().to_string();
        assert!(e.contains("`pipeline.queue_depth`"), "{e}");
        let e = parse("[output]\nkind = \"file\"\n").unwrap_err().to_string();
        assert!(e.contains("`output.path`"), "{e}");
        let e = parse("[model]\nconf = \"high\"\n").unwrap_err().to_string();
        assert!(e.contains("conf"), "{e}");
    }

    #[test]
    fn v4l2_source_fields_are_validated() {
        let c =
            parse("[source]\nkind = \"v4l2\"\ndevice = \"/dev/v4l/by-id/cam\"\nwidth = 640\nheight = 480\n").unwrap();
        assert_eq!(c.source.device, Path::new("/dev/v4l/by-id/cam"));
        assert_eq!(
            c.source.pixel_formats,
            [CameraFormat::Mjpeg, CameraFormat::Yuyv, CameraFormat::Nv12]
        );
        let e = parse("[source]\nkind = \"v4l2\"\npixel_formats = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`source.pixel_formats`"), "{e}");
        let e = parse("[source]\nkind = \"v4l2\"\npixel_formats = [\"yuyv\", \"yuyv\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = parse("[source]\nkind = \"v4l2\"\npixel_formats = [\"h264\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("h264"), "{e}");
        let e = parse("[source]\nkind = \"v4l2\"\nbuffers = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`source.buffers`"), "{e}");
        let e = parse("[source]\nkind = \"v4l2\"\nreconnect_min_ms = 500\nreconnect_max_ms = 100\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`source.reconnect_max_ms`"), "{e}");
        let e = parse("[source]\nkind = \"v4l2\"\nwidth = 641\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`source.width`"), "{e}");
    }

    #[test]
    fn service_log_and_warm_up_fields_are_validated() {
        let c = parse("[service]\nwatchdog_in_camera_outage = false\n[log]\nfilter = \"debug\"\n").unwrap();
        assert!(!c.service.watchdog_in_camera_outage);
        assert_eq!(c.log.filter.as_deref(), Some("debug"));
        assert_eq!(c.runtime.warmup_runs, 2);
        let e = parse("[service]\nstatus_interval_ms = 5\n").unwrap_err().to_string();
        assert!(e.contains("`service.status_interval_ms`"), "{e}");
        let e = parse("[log]\nfilter = \" \"\n").unwrap_err().to_string();
        assert!(e.contains("`log.filter`"), "{e}");
        let e = parse("[runtime]\nwarmup_runs = 101\n").unwrap_err().to_string();
        assert!(e.contains("`runtime.warmup_runs`"), "{e}");
        let e = parse("[service]\nwatchdog_sec = 3\n").unwrap_err().to_string();
        assert!(e.contains("watchdog_sec"), "{e}");
    }

    #[test]
    fn execution_provider_fields_are_parsed_and_validated() {
        use kestrel_infer::ep::{ConvSearch, EpKind, MissingEngine};
        let c = parse("").unwrap();
        assert_eq!(c.runtime.execution_providers, [EpKind::Cpu]);
        assert_eq!(c.runtime.require_ep, None);
        assert!(c.runtime.io_binding && c.selftest.enabled);
        let c = parse(
            "[runtime]\nexecution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\nrequire_ep = \"tensorrt\"\n\
             missing_engine = \"next_ep\"\nengine_cache_dir = \"cache\"\n\
             [runtime.tensorrt]\nfp16 = true\nworkspace_mb = 2048\ndla_core = 1\nint8 = true\n\
             int8_calibration_table = \"calib.cache\"\n\
             [runtime.cuda]\ndevice_id = 0\ncudnn_conv_algo_search = \"heuristic\"\ngpu_mem_limit_mb = 3000\n\
             [runtime.cpu]\narena = false\n[selftest]\non_mismatch = \"fallback\"\nscore_tolerance = 0.1\n",
        )
        .unwrap();
        assert_eq!(
            c.runtime.execution_providers,
            [EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu]
        );
        assert_eq!(c.runtime.require_ep, Some(EpKind::Tensorrt));
        assert_eq!(c.runtime.missing_engine, MissingEngine::NextEp);
        assert_eq!(
            c.runtime.engine_cache_dir.as_deref(),
            Some(Path::new("/etc/kestrel/cache"))
        );
        assert_eq!(c.runtime.tensorrt.dla_core, Some(1));
        assert_eq!(c.runtime.tensorrt.precision(), "int8");
        assert_eq!(
            c.runtime.tensorrt.int8_calibration_table.as_deref(),
            Some(Path::new("/etc/kestrel/calib.cache"))
        );
        assert_eq!(c.runtime.cuda.cudnn_conv_algo_search, ConvSearch::Heuristic);
        assert!(!c.runtime.cpu.arena);
        assert_eq!(c.selftest.on_mismatch, OnMismatch::Fallback);

        let err = |t: &str| parse(t).unwrap_err().to_string();
        let e = err("[runtime]\nexecution_providers = [\"gpu\"]\n");
        assert!(e.contains("gpu") && e.contains("/etc/kestrel/test.toml"), "{e}");
        let e = err("[runtime]\nexecution_providers = []\n");
        assert!(e.contains("`runtime.execution_providers`"), "{e}");
        let e = err("[runtime]\nexecution_providers = [\"cpu\", \"cuda\"]\n");
        assert!(e.contains("`runtime.execution_providers`") && e.contains("last"), "{e}");
        let e = err("[runtime]\nrequire_ep = \"cuda\"\n");
        assert!(e.contains("`runtime.require_ep`") && e.contains("not in"), "{e}");
        let e = err("[runtime.tensorrt]\nbuilder_optimization_level = 9\n");
        assert!(e.contains("`runtime.tensorrt.builder_optimization_level`"), "{e}");
        let e = err("[runtime.tensorrt]\nfp8 = true\n");
        assert!(e.contains("fp8"), "{e}");
        let e = err("[runtime.cuda]\ncudnn_conv_algo_search = \"fast\"\n");
        assert!(e.contains("fast"), "{e}");
        let e = err("[runtime]\nmissing_engine = \"wait\"\n");
        assert!(e.contains("wait"), "{e}");
        let e = err("[selftest]\nmin_iou = 1.5\n");
        assert!(e.contains("`selftest.min_iou`"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/kestrel.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/kestrel.toml") && e.contains("cannot read"),
            "{e}"
        );
    }
}
