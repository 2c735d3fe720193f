//! The provider plan for one session: which providers to register, in order, what was skipped and why, and
//! the engine each TensorRT session uses.

use std::time::Instant;

use super::config::{EpOptions, MissingEngine};
use super::key::{engine_key, ModelFacts};
use super::probe::{precheck, Facts};
use super::register::{cuda_dispatch, tensorrt_dispatch};
use super::{EngineState, EngineUse, EpError, EpKind, SkipReason, Skipped};
use crate::engine_cache::{EngineCache, Lookup};

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
