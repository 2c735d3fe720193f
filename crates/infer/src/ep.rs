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

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

use kestrel_core::check::{at_most, within, Invalid};

use crate::engine_cache::{CacheError, EngineCache, EngineKey, Lookup, Staging};

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

/// `[runtime.tensorrt]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtConfig {
    pub device_id: u32,
    /// Let TensorRT pick FP16 kernels (the FP32 model is given; TensorRT converts). The Jetson default.
    pub fp16: bool,
    /// INT8 kernels: needs a QDQ-quantised model or `int8_calibration_table`.
    pub int8: bool,
    /// TensorRT calibration table for INT8 (relative paths are relative to the config file).
    pub int8_calibration_table: Option<PathBuf>,
    /// Builder workspace limit in MiB (0: TensorRT's default).
    pub workspace_mb: u64,
    /// Run on this Deep Learning Accelerator core (Jetson Xavier/Orin: 0 or 1); unset: the GPU.
    pub dla_core: Option<u32>,
    /// Keep TensorRT's kernel timing cache (shared by all models on this GPU + TensorRT): later engine builds
    /// are much faster.
    pub timing_cache: bool,
    /// TensorRT builder optimisation level 0..=5 (higher: longer builds, maybe faster engines).
    pub builder_optimization_level: u8,
    /// Smallest subgraph handed to TensorRT (smaller ones stay on CUDA/CPU).
    pub min_subgraph_size: usize,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self {
            device_id: 0,
            fp16: true,
            int8: false,
            int8_calibration_table: None,
            workspace_mb: 0,
            dla_core: None,
            timing_cache: true,
            builder_optimization_level: 3,
            min_subgraph_size: 1,
        }
    }
}

impl TensorRtConfig {
    /// The engine precision this config builds ("int8", "fp16" or "fp32").
    pub fn precision(&self) -> &'static str {
        if self.int8 {
            "int8"
        } else if self.fp16 {
            "fp16"
        } else {
            "fp32"
        }
    }
}

/// cuDNN convolution algorithm search.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConvSearch {
    /// Benchmark every algorithm on the first run (slow first inference, fastest kernels).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics (fast start).
    Heuristic,
    /// The default algorithm.
    Default,
}

/// CUDA memory arena growth.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArenaGrowth {
    #[default]
    NextPowerOfTwo,
    SameAsRequested,
}

/// `[runtime.cuda]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    pub device_id: u32,
    pub cudnn_conv_algo_search: ConvSearch,
    /// Arena limit in MiB (0: no limit). On a Jetson the GPU shares the board's RAM.
    pub gpu_mem_limit_mb: u64,
    pub arena_extend_strategy: ArenaGrowth,
}

/// `[runtime.cpu]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// ONNX Runtime's CPU memory arena.
    pub arena: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self { arena: true }
    }
}

/// What to do when TensorRT is selected but no valid engine is cached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MissingEngine {
    /// Build it now (start-up takes minutes on a Jetson; status says so).
    #[default]
    Build,
    /// Run on the next provider in the list until `kestrel build-engine` has built one.
    NextEp,
}

/// Everything that decides how sessions are made on which provider.
#[derive(Clone, Debug, PartialEq)]
pub struct EpOptions {
    pub providers: Vec<EpKind>,
    pub require: Option<EpKind>,
    pub tensorrt: TensorRtConfig,
    pub cuda: CudaConfig,
    pub cpu: CpuConfig,
    /// Engine-cache root (default: [`crate::engine_cache::root_from_env`]).
    pub engine_cache_dir: Option<PathBuf>,
    pub missing_engine: MissingEngine,
}

impl Default for EpOptions {
    fn default() -> Self {
        Self {
            providers: vec![EpKind::Cpu],
            require: None,
            tensorrt: TensorRtConfig::default(),
            cuda: CudaConfig::default(),
            cpu: CpuConfig::default(),
            engine_cache_dir: None,
            missing_engine: MissingEngine::Build,
        }
    }
}

impl EpOptions {
    /// `kind` cannot be used because of `reason`: a refusal ([`EpError::Required`]) when it is `require_ep`,
    /// else a WARN and a record in `skipped`.
    pub fn skip(&self, skipped: &mut Vec<Skipped>, kind: EpKind, reason: SkipReason) -> Result<(), EpError> {
        if self.require == Some(kind) {
            return Err(EpError::Required { kind, reason });
        }
        log::warn!("execution provider {kind} skipped: {reason}");
        skipped.push(Skipped {
            kind,
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Check the list and per-provider settings; `Err((field, reason))` names the `runtime.*` field.
    pub fn validate(&self) -> Result<(), Invalid> {
        let p = &self.providers;
        if p.is_empty() {
            return Err((
                "runtime.execution_providers",
                "list at least one of tensorrt, cuda, cpu".into(),
            ));
        }
        if let Some((_, k)) = p.iter().enumerate().find(|(i, k)| p[..*i].contains(k)) {
            return Err(("runtime.execution_providers", format!("{k} is listed twice")));
        }
        if let Some(i) = p.iter().position(|k| *k == EpKind::Cpu) {
            if i + 1 != p.len() {
                return Err((
                    "runtime.execution_providers",
                    "cpu must come last (ONNX Runtime always runs what no other provider takes on the CPU)".into(),
                ));
            }
        }
        if let Some(r) = self.require {
            if !p.contains(&r) {
                return Err((
                    "runtime.require_ep",
                    format!("{r} is not in runtime.execution_providers {:?}", names(p)),
                ));
            }
        }
        let t = &self.tensorrt;
        at_most("runtime.tensorrt.device_id", t.device_id, 63)?;
        within(
            "runtime.tensorrt.builder_optimization_level",
            t.builder_optimization_level,
            0..=5,
        )?;
        if t.dla_core.is_some_and(|c| c > 7) {
            return Err((
                "runtime.tensorrt.dla_core",
                "must be 0..=7 (Orin has cores 0 and 1)".into(),
            ));
        }
        if t.workspace_mb > 1 << 20 {
            return Err((
                "runtime.tensorrt.workspace_mb",
                format!("{} MiB is more than 1 TiB", t.workspace_mb),
            ));
        }
        if t.int8_calibration_table.is_some() && !t.int8 {
            return Err((
                "runtime.tensorrt.int8_calibration_table",
                "is set but runtime.tensorrt.int8 is false".into(),
            ));
        }
        at_most("runtime.cuda.device_id", self.cuda.device_id, 63)?;
        if self.cuda.gpu_mem_limit_mb > 1 << 24 {
            return Err((
                "runtime.cuda.gpu_mem_limit_mb",
                format!("{} MiB is implausibly large", self.cuda.gpu_mem_limit_mb),
            ));
        }
        Ok(())
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

/// What a provider's pre-check needs to know about the machine (injected for tests).
pub struct Facts<'a> {
    /// `GetAvailableProviders()` of the loaded ONNX Runtime.
    pub available: &'a [String],
    /// Where ONNX Runtime was loaded from (for messages).
    pub library: &'a Path,
    /// The CUDA driver ("driver 12.2") or why not.
    pub cuda: Result<String, String>,
    /// TensorRT's version ("10.3.0") or why not.
    pub tensorrt: Result<String, String>,
    /// CUDA devices: (ordinal, name, compute capability "8.7").
    pub gpus: Vec<(u32, String, String)>,
}

/// Can `kind` be used here? `Err` says why not, in words a user can act on. Pure.
pub fn precheck(kind: EpKind, f: &Facts<'_>) -> Result<(), PrecheckError> {
    if kind == EpKind::Cpu {
        return Ok(());
    }
    if !f.available.iter().any(|a| a == kind.ort_name()) {
        return Err(PrecheckError::NotBuiltIn {
            library: f.library.to_path_buf(),
            kind,
            available: f.available.to_vec(),
        });
    }
    f.cuda.as_ref().map_err(|e| PrecheckError::Cuda(e.clone()))?;
    if kind == EpKind::Tensorrt {
        f.tensorrt.as_ref().map_err(|e| PrecheckError::TensorRt(e.clone()))?;
    }
    Ok(())
}

/// `GetAvailableProviders()` of the loaded ONNX Runtime: the providers compiled into it.
pub fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: both out-pointers are valid for writes; ONNX Runtime fills them with a list it owns until
    // ReleaseAvailableProviders.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut n) };
    if !status.0.is_null() {
        // SAFETY: a non-null status returned by the API is ours to release.
        unsafe { (api.ReleaseStatus)(status.0) };
        return vec![EpKind::Cpu.ort_name().to_string()];
    }
    if list.is_null() {
        return Vec::new();
    }
    let out = (0..n.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: `list` holds `n` pointers to NUL-terminated strings (checked non-null before reading).
            let p = unsafe { *list.add(i) };
            // SAFETY: non-null entries are NUL-terminated strings owned by the list.
            (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect();
    // SAFETY: releases the list obtained above exactly once; it is not used afterwards.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, n) };
    if !status.0.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    out
}

/// The machine's facts, probed (CUDA driver and TensorRT only when a GPU provider is asked for).
pub fn probe_facts<'a>(available: &'a [String], library: &'a Path, providers: &[EpKind]) -> Facts<'a> {
    let gpu = providers.iter().any(|k| *k != EpKind::Cpu);
    let mut gpus = Vec::new();
    let cuda = if gpu {
        match crate::gpu::cuda() {
            Ok(info) => {
                gpus = info
                    .devices
                    .iter()
                    .map(|d| (d.ordinal, d.name.clone(), d.compute_capability_string()))
                    .collect();
                Ok(format!("driver {}", info.driver_version))
            }
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err("not probed".into())
    };
    let tensorrt = if providers.contains(&EpKind::Tensorrt) {
        crate::gpu::tensorrt()
            .as_ref()
            .map(|t| t.version.clone())
            .map_err(|e| e.to_string())
    } else {
        Err("not probed".into())
    };
    Facts {
        available,
        library,
        cuda,
        tensorrt,
        gpus,
    }
}

fn conv_search(c: ConvSearch) -> ort::ep::cuda::ConvAlgorithmSearch {
    match c {
        ConvSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
        ConvSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
        ConvSearch::Default => ort::ep::cuda::ConvAlgorithmSearch::Default,
    }
}

/// ONNX Runtime's CUDA provider for a config, erroring on failure.
pub fn cuda_dispatch(c: &CudaConfig) -> ort::ep::ExecutionProviderDispatch {
    let mut ep = ort::ep::CUDA::default()
        .with_device_id(c.device_id as i32)
        .with_conv_algorithm_search(conv_search(c.cudnn_conv_algo_search))
        .with_arena_extend_strategy(match c.arena_extend_strategy {
            ArenaGrowth::NextPowerOfTwo => ort::ep::ArenaExtendStrategy::NextPowerOfTwo,
            ArenaGrowth::SameAsRequested => ort::ep::ArenaExtendStrategy::SameAsRequested,
        });
    if c.gpu_mem_limit_mb > 0 {
        ep = ep.with_memory_limit((c.gpu_mem_limit_mb as usize).saturating_mul(1 << 20));
    }
    ep.build().error_on_failure()
}

/// ONNX Runtime's TensorRT provider for a config, with its engine (and timing) cache in `engine_dir`.
pub fn tensorrt_dispatch(
    t: &TensorRtConfig,
    engine_dir: &Path,
    timing_dir: &Path,
) -> ort::ep::ExecutionProviderDispatch {
    let mut ep = ort::ep::TensorRT::default()
        .with_device_id(t.device_id as i32)
        .with_fp16(t.fp16)
        .with_int8(t.int8)
        .with_engine_cache(true)
        .with_engine_cache_path(engine_dir.display())
        .with_builder_optimization_level(t.builder_optimization_level)
        .with_min_subgraph_size(t.min_subgraph_size);
    if t.timing_cache {
        ep = ep.with_timing_cache(true).with_timing_cache_path(timing_dir.display());
    }
    if t.workspace_mb > 0 {
        ep = ep.with_max_workspace_size((t.workspace_mb as usize).saturating_mul(1 << 20));
    }
    if let Some(core) = t.dla_core {
        ep = ep.with_dla(true).with_dla_core(core);
    }
    if let Some(table) = &t.int8_calibration_table {
        ep = ep.with_int8_calibration_table_name(table.display());
    }
    ep.build().error_on_failure()
}

/// How the engine-cache key's model-dependent parts are found: the model file and its input shape.
pub struct ModelFacts<'a> {
    pub path: &'a Path,
    /// N, C, H, W (0 for a dynamic dimension).
    pub input_shape: [u32; 4],
}

/// The TensorRT engine-cache key for this machine (`facts`), model and config.
pub fn engine_key(
    t: &TensorRtConfig,
    ort_version: &str,
    m: &ModelFacts<'_>,
    facts: &Facts<'_>,
) -> Result<EngineKey, KeyError> {
    let (_, gpu_name, cc) = facts
        .gpus
        .iter()
        .find(|g| g.0 == t.device_id)
        .ok_or(KeyError::NoDevice {
            device: t.device_id,
            found: facts.gpus.len(),
        })?;
    let tensorrt_version = facts.tensorrt.clone().map_err(KeyError::TensorRt)?;
    let model_sha256 = crate::engine_cache::sha256_file(m.path).map_err(|source| KeyError::Model {
        path: m.path.to_path_buf(),
        source,
    })?;
    Ok(EngineKey {
        model_sha256,
        ort_version: ort_version.to_string(),
        tensorrt_version,
        gpu_name: gpu_name.clone(),
        compute_capability: cc.clone(),
        precision: t.precision().to_string(),
        input_shape: m.input_shape,
        dla_core: t.dla_core,
    })
}

/// Logs "still building" every 10 s until dropped.
pub struct Ticker {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    /// Log `what` with the elapsed time every `every` until dropped.
    pub fn start(what: String, every: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let t0 = Instant::now();
        let thread = std::thread::Builder::new()
            .name("build-ticker".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    log::info!("{what}: {:.0} s so far", t0.elapsed().as_secs_f64());
                }
            })
            .ok();
        Self { stop: Some(tx), thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The provider plan for one session: what to register, in order, and the engine (TensorRT).
pub struct Plan {
    pub entries: Vec<(EpKind, ort::ep::ExecutionProviderDispatch)>,
    pub skipped: Vec<Skipped>,
    pub engine: Option<EngineUse>,
}

/// Decide what to register: pre-check every listed provider, look up / stage the TensorRT engine.
/// `require_ep` failures return [`EpError::Required`].
pub fn plan(opts: &EpOptions, facts: &Facts<'_>, ort_version: &str, model: &ModelFacts<'_>) -> Result<Plan, EpError> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut engine = None;
    let skip = |skipped: &mut Vec<Skipped>, kind: EpKind, reason: SkipReason| opts.skip(skipped, kind, reason);
    for &kind in &opts.providers {
        if let Err(reason) = precheck(kind, facts) {
            skip(&mut skipped, kind, reason.into())?;
            continue;
        }
        match kind {
            EpKind::Cpu => entries.push((
                kind,
                ort::ep::CPU::default()
                    .with_arena_allocator(opts.cpu.arena)
                    .build()
                    .error_on_failure(),
            )),
            EpKind::Cuda => entries.push((kind, cuda_dispatch(&opts.cuda))),
            EpKind::Tensorrt => {
                let key = match engine_key(&opts.tensorrt, ort_version, model, facts) {
                    Ok(k) => k,
                    Err(reason) => {
                        skip(&mut skipped, kind, SkipReason::EngineKey(reason))?;
                        continue;
                    }
                };
                let cache = EngineCache::new(
                    opts.engine_cache_dir
                        .clone()
                        .unwrap_or_else(crate::engine_cache::root_from_env),
                );
                let timing = cache.timing_cache_dir(&key);
                if opts.tensorrt.timing_cache {
                    if let Err(e) = std::fs::create_dir_all(&timing) {
                        log::warn!(
                            "TensorRT timing cache {}: {e} (builds will be slower)",
                            timing.display()
                        );
                    }
                }
                let state = match cache.lookup(&key) {
                    Lookup::Ready { dir, .. } => {
                        log::info!("TensorRT engine from the cache: {} ({})", dir.display(), key.describe());
                        EngineState::Cached { dir }
                    }
                    Lookup::Missing | Lookup::Discarded { .. } if opts.missing_engine == MissingEngine::NextEp => {
                        skip(&mut skipped, kind, SkipReason::NoEngine(Box::new(key)))?;
                        continue;
                    }
                    Lookup::Missing | Lookup::Discarded { .. } => {
                        let staging = cache.begin(&key)?;
                        log::warn!(
                            "no cached TensorRT engine for {}: building it now (minutes on a Jetson; \
                             `kestrel build-engine` does this ahead of flight)",
                            key.describe()
                        );
                        EngineState::Building {
                            staging: Box::new(staging),
                            started: Instant::now(),
                        }
                    }
                };
                let dir = match &state {
                    EngineState::Cached { dir } | EngineState::Built { dir, .. } => dir.clone(),
                    EngineState::Building { staging, .. } => staging.dir().to_path_buf(),
                };
                entries.push((kind, tensorrt_dispatch(&opts.tensorrt, &dir, &timing)));
                engine = Some(EngineUse { key, state });
            }
        }
    }
    Ok(Plan {
        entries,
        skipped,
        engine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
