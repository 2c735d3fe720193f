//! The `[runtime]` options of each execution provider, with their range checks.

use serde::Deserialize;
use std::path::PathBuf;

use kestrel_core::check::{at_most, within, Invalid};

use super::{names, EpError, EpKind, SkipReason, Skipped};

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
