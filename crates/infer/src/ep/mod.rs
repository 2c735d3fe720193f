//! Execution providers: which ONNX Runtime backend runs the model, chosen from the config, registered
//! explicitly and checked, never silently.
//!
//! `runtime.execution_providers` is an ordered preference list (`["tensorrt", "cuda", "cpu"]`). Each GPU
//! provider is first checked against what is actually there (is it compiled into the loaded ONNX Runtime? is
//! the CUDA driver loadable, is there a device? is TensorRT's library there?), then registered with ONNX
//! Runtime's error reporting on (`ort` otherwise ignores a failed registration). A provider that cannot be
//! used is skipped with a WARN naming the reason, and the reason stays in the [`Selection`] that the daemon
//! reports in its `hello`/`status` messages. `runtime.require_ep` turns a skip of that provider into a refusal
//! to start ([`EpError::Required`]).
//!
//! Registered together, ONNX Runtime gives each node to the first provider that supports it (TensorRT takes
//! the subgraphs it can build, CUDA the rest, the CPU whatever neither supports): the provider "in use" is the
//! first one registered.
//!
//! TensorRT engines are cached per [`EngineKey`] under the engine-cache root (systemd's `CacheDirectory`):
//! see [`crate::engine_cache`]. With no valid engine, `runtime.missing_engine` decides: `"build"` builds it
//! now (minutes on a Jetson; logged every 10 s and in systemd's status), `"next_ep"` runs on the next provider
//! until `kestrel build-engine` has made one.
//!
//! The pieces: `config` (the `[runtime]` provider options), `probe` (what this machine and the loaded ONNX
//! Runtime offer), `register` (the registrations ONNX Runtime is given), `key` (the engine-cache key), `plan`
//! (what to register for one session), `ticker` (progress while an engine builds); the provider kinds, the
//! errors and the [`Selection`] a session ends up with are here.

mod config;
mod key;
mod plan;
mod probe;
mod register;
mod ticker;

pub use config::{ArenaGrowth, ConvSearch, CpuConfig, CudaConfig, EpOptions, MissingEngine, TensorRtConfig};
pub use key::{engine_key, ModelFacts};
pub use plan::{plan, Plan};
pub use probe::{available_providers, precheck, probe_facts, Facts};
pub use register::{cuda_dispatch, tensorrt_dispatch};
pub use ticker::Ticker;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use thiserror::Error;

use crate::engine_cache::{CacheError, EngineKey, Staging};

/// An execution provider, in the names the config uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EpKind {
    /// NVIDIA TensorRT (through ONNX Runtime's TensorRT EP): builds an optimised engine per model and GPU.
    Tensorrt,
    /// NVIDIA CUDA (cuDNN kernels).
    Cuda,
    /// ONNX Runtime's CPU kernels (MLAS). Always available; ONNX Runtime's last resort for every node.
    Cpu,
}

impl EpKind {
    /// The config / protocol name (`"tensorrt"`, `"cuda"`, `"cpu"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tensorrt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }

    /// ONNX Runtime's identifier (`GetAvailableProviders`).
    pub fn ort_name(self) -> &'static str {
        match self {
            Self::Tensorrt => "TensorrtExecutionProvider",
            Self::Cuda => "CUDAExecutionProvider",
            Self::Cpu => "CPUExecutionProvider",
        }
    }

    /// Parse a config / command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Some(Self::Tensorrt),
            "cuda" => Some(Self::Cuda),
            "cpu" => Some(Self::Cpu),
            _ => None,
        }
    }
}

impl std::fmt::Display for EpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn names(p: &[EpKind]) -> Vec<&'static str> {
    p.iter().map(|k| k.name()).collect()
}

/// "tensorrt, cuda" (or "none").
pub fn names_of(p: &[EpKind]) -> String {
    if p.is_empty() {
        "none".into()
    } else {
        names(p).join(", ")
    }
}

#[derive(Debug, Error)]
pub enum EpError {
    #[error(
        "runtime.require_ep = \"{kind}\": the {kind} execution provider cannot be used: {reason}. Refusing to start \
         (remove require_ep to run on the next provider instead)"
    )]
    Required {
        kind: EpKind,
        #[source]
        reason: SkipReason,
    },
    #[error("engine cache: {0}")]
    Cache(#[from] CacheError),
}

/// Why a listed provider is not used. Its text is [`Skipped::reason`] (or the [`EpError::Required`] refusal).
#[derive(Debug, Error)]
pub enum SkipReason {
    #[error(transparent)]
    Precheck(#[from] PrecheckError),
    #[error("cannot make the engine-cache key: {0}")]
    EngineKey(#[source] KeyError),
    #[error(
        "no cached TensorRT engine for {} (runtime.missing_engine = \"next_ep\"; build one with \
         `kestrel build-engine`)",
        .0.describe()
    )]
    NoEngine(Box<EngineKey>),
    #[error("registration failed: {0}")]
    Registration(#[source] ort::Error),
    #[error("session creation failed with it: {0}")]
    SessionCreation(#[source] ort::Error),
}

/// Why a provider cannot be used on this machine ([`precheck`]), in words a user can act on.
#[derive(Debug, Error, PartialEq)]
pub enum PrecheckError {
    #[error(
        "the ONNX Runtime loaded from {} was built without the {} execution provider (it has: {}); use a \
         GPU build (onnxruntime-gpu, or JetPack's) via runtime.ort_lib",
        library.display(),
        kind.name(),
        available.join(", ")
    )]
    NotBuiltIn {
        library: PathBuf,
        kind: EpKind,
        available: Vec<String>,
    },
    /// [`Facts::cuda`]'s reason.
    #[error("CUDA is not usable: {0}")]
    Cuda(String),
    /// [`Facts::tensorrt`]'s reason.
    #[error("TensorRT is not usable: {0}")]
    TensorRt(String),
}

/// Why the TensorRT engine-cache key cannot be made ([`engine_key`]).
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("no CUDA device {device} (found {found})")]
    NoDevice { device: u32, found: usize },
    /// [`Facts::tensorrt`]'s reason.
    #[error("{0}")]
    TensorRt(String),
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A provider that was skipped and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub kind: EpKind,
    pub reason: String,
}

/// What happened to the TensorRT engine of this session.
#[derive(Debug)]
pub enum EngineState {
    /// A cached engine was valid and is used.
    Cached { dir: PathBuf },
    /// Being built into a staging directory; committed by [`Selection::commit_engine`] after the first run.
    Building { staging: Box<Staging>, started: Instant },
    /// Built and committed.
    Built { dir: PathBuf, seconds: f64 },
}

/// The engine this session uses.
#[derive(Debug)]
pub struct EngineUse {
    pub key: EngineKey,
    pub state: EngineState,
}

/// The outcome of provider selection for one session.
#[derive(Debug)]
pub struct Selection {
    /// The provider in use: the first one registered.
    pub active: EpKind,
    /// Every provider registered, in order (the CPU is always ONNX Runtime's implicit last one).
    pub registered: Vec<EpKind>,
    /// Providers asked for but not used, with the reason.
    pub skipped: Vec<Skipped>,
    /// "fp32" / "fp16" / "int8": what the active provider computes in.
    pub precision: String,
    pub engine: Option<EngineUse>,
}

impl Selection {
    /// One line for `status`/`hello` when a preferred provider was skipped; `None` when the first choice runs.
    pub fn fallback_note(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.kind, s.reason))
            .collect();
        Some(format!("running on {} because {}", self.active, parts.join("; ")))
    }

    /// After the first successful run of a session that built a TensorRT engine: commit the engine files to the
    /// cache atomically. A failure is logged (the engine is rebuilt next start), never fatal.
    pub fn commit_engine(&mut self) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let state = std::mem::replace(&mut engine.state, EngineState::Cached { dir: PathBuf::new() });
        engine.state = match state {
            EngineState::Building { staging, started } => {
                let seconds = started.elapsed().as_secs_f64();
                match staging.commit(seconds) {
                    Ok((dir, manifest)) => {
                        log::info!(
                            "TensorRT engine built in {seconds:.1} s and cached in {} ({} files, {})",
                            dir.display(),
                            manifest.files.len(),
                            engine.key.describe()
                        );
                        EngineState::Built { dir, seconds }
                    }
                    Err(e) => {
                        log::warn!("TensorRT engine built in {seconds:.1} s but not cached: {e}");
                        EngineState::Built {
                            dir: PathBuf::new(),
                            seconds,
                        }
                    }
                }
            }
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_cache::EngineCache;
    use std::path::Path;

    fn facts<'a>(available: &'a [String], cuda: Result<&str, &str>, trt: Result<&str, &str>) -> Facts<'a> {
        Facts {
            available,
            library: Path::new("/opt/ort/libonnxruntime.so"),
            cuda: cuda.map(str::to_string).map_err(str::to_string),
            tensorrt: trt.map(str::to_string).map_err(str::to_string),
            gpus: vec![(0, "Orin".into(), "8.7".into())],
        }
    }

    #[test]
    fn precheck_names_what_is_missing() {
        let cpu_only = vec!["CPUExecutionProvider".to_string()];
        let f = facts(&cpu_only, Ok("driver 12.2"), Ok("10.3.0"));
        assert_eq!(precheck(EpKind::Cpu, &f), Ok(()));
        let e = precheck(EpKind::Cuda, &f).unwrap_err().to_string();
        assert!(
            e.contains("built without the cuda execution provider") && e.contains("CPUExecutionProvider"),
            "{e}"
        );
        assert!(e.contains("/opt/ort/libonnxruntime.so"), "{e}");

        let gpu = vec![
            "TensorrtExecutionProvider".to_string(),
            "CUDAExecutionProvider".to_string(),
            "CPUExecutionProvider".to_string(),
        ];
        let f = facts(&gpu, Err("CUDA driver library not found (libcuda.so.1)"), Ok("10.3.0"));
        let e = precheck(EpKind::Cuda, &f).unwrap_err().to_string();
        assert!(e.starts_with("CUDA is not usable") && e.contains("libcuda.so.1"), "{e}");
        let f = facts(
            &gpu,
            Ok("driver 12.2"),
            Err("TensorRT library not found (libnvinfer.so.10)"),
        );
        assert_eq!(precheck(EpKind::Cuda, &f), Ok(()));
        let e = precheck(EpKind::Tensorrt, &f).unwrap_err().to_string();
        assert!(e.contains("TensorRT is not usable") && e.contains("libnvinfer"), "{e}");
        let f = facts(&gpu, Ok("driver 12.2"), Ok("10.3.0"));
        assert_eq!(precheck(EpKind::Tensorrt, &f), Ok(()));
    }

    #[test]
    fn plan_skips_with_reasons_or_refuses_when_required() {
        let cpu_only = vec!["CPUExecutionProvider".to_string()];
        let f = facts(&cpu_only, Err("no driver"), Err("no trt"));
        let m = ModelFacts {
            path: Path::new("/nonexistent.onnx"),
            input_shape: [1, 3, 416, 416],
        };
        let opts = EpOptions {
            providers: vec![EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu],
            ..EpOptions::default()
        };
        let p = plan(&opts, &f, "1.31.1", &m).unwrap();
        assert_eq!(p.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [EpKind::Cpu]);
        assert_eq!(
            p.skipped.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [EpKind::Tensorrt, EpKind::Cuda]
        );
        assert!(p.engine.is_none());
        let required = EpOptions {
            require: Some(EpKind::Cuda),
            ..opts
        };
        match plan(&required, &f, "1.31.1", &m) {
            Err(e @ EpError::Required { kind: EpKind::Cuda, .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("require_ep = \"cuda\"") && msg.contains("Refusing to start"),
                    "{msg}"
                );
                assert!(msg.contains("built without the cuda execution provider"), "{msg}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|p| p.skipped)),
        }
    }

    /// The run-time engine policy with a machine that claims TensorRT (facts injected; no GPU needed): a
    /// missing engine is built into a staging directory or skipped per `missing_engine`, a valid cached one is
    /// used, a corrupt one is discarded and rebuilt.
    #[test]
    fn engine_policy_at_run_time() {
        let t = tempfile::tempdir().unwrap();
        let model = t.path().join("m.onnx");
        std::fs::write(&model, b"model bytes").unwrap();
        let gpu = vec![
            "TensorrtExecutionProvider".to_string(),
            "CUDAExecutionProvider".to_string(),
            "CPUExecutionProvider".to_string(),
        ];
        let f = facts(&gpu, Ok("driver 12.6"), Ok("10.3.0"));
        let m = ModelFacts {
            path: &model,
            input_shape: [1, 3, 416, 416],
        };
        let opts = EpOptions {
            providers: vec![EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu],
            engine_cache_dir: Some(t.path().join("engines")),
            ..EpOptions::default()
        };
        let key = engine_key(&opts.tensorrt, "1.31.1", &m, &f).unwrap();
        assert_eq!((key.gpu_name.as_str(), key.precision.as_str()), ("Orin", "fp16"));
        let cache = EngineCache::new(t.path().join("engines"));

        // No engine, "build": TensorRT registered with a staging directory as its cache path.
        let p = plan(&opts, &f, "1.31.1", &m).unwrap();
        assert_eq!(
            p.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            [EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu]
        );
        let staging = match &p.engine.as_ref().unwrap().state {
            EngineState::Building { staging, .. } => staging.dir().to_path_buf(),
            other => panic!("{other:?}"),
        };
        assert!(staging.is_dir() && staging.starts_with(cache.root()));
        drop(p);
        assert!(!staging.exists(), "an abandoned build leaves nothing");

        // No engine, "next_ep": TensorRT skipped with the reason, CUDA first.
        let next = EpOptions {
            missing_engine: MissingEngine::NextEp,
            ..opts.clone()
        };
        let p = plan(&next, &f, "1.31.1", &m).unwrap();
        assert_eq!(p.entries[0].0, EpKind::Cuda);
        assert!(p.skipped[0].reason.contains("kestrel build-engine"), "{:?}", p.skipped);
        let required = EpOptions {
            require: Some(EpKind::Tensorrt),
            ..next
        };
        assert!(matches!(
            plan(&required, &f, "1.31.1", &m),
            Err(EpError::Required { .. })
        ));

        // A committed engine is used as it is; the same engine corrupted is discarded and rebuilt.
        let s = cache.begin(&key).unwrap();
        std::fs::write(s.dir().join("TensorrtExecutionProvider_x.engine"), b"engine").unwrap();
        let (dir, _) = s.commit(1.0).unwrap();
        let p = plan(&opts, &f, "1.31.1", &m).unwrap();
        assert!(matches!(&p.engine.as_ref().unwrap().state, EngineState::Cached { dir: d } if *d == dir));
        drop(p);
        std::fs::write(dir.join("TensorrtExecutionProvider_x.engine"), b"engina").unwrap();
        let p = plan(&opts, &f, "1.31.1", &m).unwrap();
        assert!(matches!(
            &p.engine.as_ref().unwrap().state,
            EngineState::Building { .. }
        ));
        assert!(!dir.exists(), "the corrupt entry was discarded");

        // The engine follows the model: another model file is another key.
        std::fs::write(&model, b"other model").unwrap();
        assert_ne!(engine_key(&opts.tensorrt, "1.31.1", &m, &f).unwrap().id(), key.id());
    }

    #[test]
    fn options_are_validated() {
        let ok = EpOptions {
            providers: vec![EpKind::Tensorrt, EpKind::Cuda, EpKind::Cpu],
            require: Some(EpKind::Tensorrt),
            ..EpOptions::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut EpOptions)| {
            let mut o = ok.clone();
            f(&mut o);
            o.validate().unwrap_err()
        };
        assert_eq!(bad(&|o| o.providers.clear()).0, "runtime.execution_providers");
        assert!(bad(&|o| o.providers = vec![EpKind::Cuda, EpKind::Cuda])
            .1
            .contains("twice"));
        assert!(bad(&|o| o.providers = vec![EpKind::Cpu, EpKind::Cuda])
            .1
            .contains("last"));
        let e = bad(&|o| o.providers = vec![EpKind::Cuda, EpKind::Cpu]);
        assert_eq!(e.0, "runtime.require_ep");
        assert!(e.1.contains("tensorrt"), "{}", e.1);
        assert_eq!(
            bad(&|o| o.tensorrt.builder_optimization_level = 6).0,
            "runtime.tensorrt.builder_optimization_level"
        );
        assert_eq!(bad(&|o| o.tensorrt.dla_core = Some(9)).0, "runtime.tensorrt.dla_core");
        assert_eq!(
            bad(&|o| o.tensorrt.int8_calibration_table = Some("t.cache".into())).0,
            "runtime.tensorrt.int8_calibration_table"
        );
        assert_eq!(bad(&|o| o.cuda.device_id = 99).0, "runtime.cuda.device_id");
    }

    #[test]
    fn fallback_note_says_what_runs_and_why() {
        let s = Selection {
            active: EpKind::Cpu,
            registered: vec![EpKind::Cpu],
            skipped: vec![Skipped {
                kind: EpKind::Cuda,
                reason: "no driver".into(),
            }],
            precision: "fp32".into(),
            engine: None,
        };
        assert_eq!(
            s.fallback_note().as_deref(),
            Some("running on cpu because cuda: no driver")
        );
        let s = Selection { skipped: vec![], ..s };
        assert_eq!(s.fallback_note(), None);
        assert_eq!(EpKind::parse(" TensorRT"), Some(EpKind::Tensorrt));
        assert_eq!(EpKind::parse("gpu"), None);
    }
}
