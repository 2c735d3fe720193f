//! ONNX Runtime provider registrations built from the config.

use std::path::Path;

use super::config::{ArenaGrowth, ConvSearch, CudaConfig, TensorRtConfig};

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
