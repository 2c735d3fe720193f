//! The TensorRT engine-cache key: what makes an engine valid for a model, provider settings, runtime and GPU.

use std::path::Path;

use super::config::TensorRtConfig;
use super::probe::Facts;
use super::KeyError;
use crate::engine_cache::EngineKey;

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
