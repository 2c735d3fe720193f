//! What this machine offers: the providers compiled into the loaded ONNX Runtime (an FFI call), the CUDA
//! driver and devices, TensorRT; and whether a provider can be used here.

use std::path::Path;

use super::{EpKind, PrecheckError};

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
