//! What NVIDIA GPU software is present, probed through `dlopen` without linking anything: the CUDA driver
//! (`libcuda.so.1`: driver version, devices, names, compute capabilities) and TensorRT (`libnvinfer`'s
//! version). Used to say why a GPU execution provider cannot be used and to key TensorRT engine caches.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("CUDA driver library not found (tried {}: {source}); is the NVIDIA driver installed?", .tried.join(", "))]
    DriverMissing {
        tried: Vec<String>,
        #[source]
        source: libloading::Error,
    },
    #[error("{call} failed: {} ({code})", .name.as_deref().unwrap_or("CUDA error"))]
    Cuda {
        call: &'static str,
        code: i32,
        name: Option<String>,
    },
    #[error("no CUDA device found")]
    NoDevice,
    #[error("TensorRT library not found (tried {}: {source})", .tried.join(", "))]
    TensorRtMissing {
        tried: Vec<String>,
        #[source]
        source: libloading::Error,
    },
    #[error("{library}: symbol {symbol} missing: {source}")]
    Symbol {
        library: String,
        symbol: &'static str,
        #[source]
        source: libloading::Error,
    },
}

/// One CUDA device.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuDevice {
    pub ordinal: u32,
    pub name: String,
    pub compute_capability: (u32, u32),
    pub total_memory_bytes: u64,
}

impl GpuDevice {
    /// "8.7".
    pub fn compute_capability_string(&self) -> String {
        format!("{}.{}", self.compute_capability.0, self.compute_capability.1)
    }
}

/// The CUDA driver and its devices.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaInfo {
    pub library: String,
    /// "12.2".
    pub driver_version: String,
    pub devices: Vec<GpuDevice>,
}

/// TensorRT's library and version.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRtInfo {
    pub library: String,
    /// "10.3.0".
    pub version: String,
}

const CUDA_LIBS: [&str; 2] = ["libcuda.so.1", "libcuda.so"];
const TRT_LIBS: [&str; 3] = ["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"];

/// The first of `names` that loads; else every name tried and the last one's error.
fn open_first(names: &[&str]) -> Result<(libloading::Library, String), (Vec<String>, libloading::Error)> {
    let mut last = libloading::Error::DlOpenUnknown;
    for n in names {
        // SAFETY: loading a shared library runs its initialisers; the CUDA driver and TensorRT libraries are
        // designed to be dlopen()ed by applications (ONNX Runtime's providers do the same).
        match unsafe { libloading::Library::new(*n) } {
            Ok(lib) => return Ok((lib, n.to_string())),
            Err(e) => last = e,
        }
    }
    Err((names.iter().map(|s| s.to_string()).collect(), last))
}

/// CUDA's 12020 → "12.2".
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// `getInferLibVersion()` → "major.minor.patch": TensorRT 10 encodes MAJOR*10000+MINOR*100+PATCH,
/// TensorRT 8 MAJOR*1000+MINOR*100+PATCH.
pub fn trt_version_string(v: i32) -> String {
    if v >= 10000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

type CuInit = unsafe extern "C" fn(u32) -> c_int;
type CuIntOut = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
type CuGetErrorName = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

fn symbol<T: Copy>(lib: &libloading::Library, library: &str, name: &'static str) -> Result<T, GpuError> {
    let cname = format!("{name}\0");
    // SAFETY: every `T` used here is the exact C signature of the named CUDA driver / TensorRT entry point.
    unsafe { lib.get::<T>(cname.as_bytes()) }
        .map(|s| *s)
        .map_err(|source| GpuError::Symbol {
            library: library.to_string(),
            symbol: name,
            source,
        })
}

/// Probe the CUDA driver (not cached; see [`cuda`]).
pub fn probe_cuda() -> Result<CudaInfo, GpuError> {
    let (lib, library) = open_first(&CUDA_LIBS).map_err(|(tried, source)| GpuError::DriverMissing { tried, source })?;
    // Never unloaded, on success or failure: once cuInit has run, the driver has threads and state that a
    // dlclose would pull the code from under (and ONNX Runtime's CUDA provider uses the same library).
    let lib = std::mem::ManuallyDrop::new(lib);
    let init: CuInit = symbol(&lib, &library, "cuInit")?;
    let driver_version: CuIntOut = symbol(&lib, &library, "cuDriverGetVersion")?;
    let count: CuIntOut = symbol(&lib, &library, "cuDeviceGetCount")?;
    let device_get: CuDeviceGet = symbol(&lib, &library, "cuDeviceGet")?;
    let get_name: CuDeviceGetName = symbol(&lib, &library, "cuDeviceGetName")?;
    let get_attr: CuDeviceGetAttribute = symbol(&lib, &library, "cuDeviceGetAttribute")?;
    let total_mem: CuDeviceTotalMem = symbol(&lib, &library, "cuDeviceTotalMem_v2")?;
    let error_name: Option<CuGetErrorName> = symbol(&lib, &library, "cuGetErrorName").ok();
    let check = |call: &'static str, code: c_int| -> Result<(), GpuError> {
        if code == 0 {
            return Ok(());
        }
        let name = error_name.and_then(|f| {
            let mut p: *const c_char = std::ptr::null();
            // SAFETY: cuGetErrorName writes a pointer to a static string (or returns an error).
            let r = unsafe { f(code, &mut p) };
            // SAFETY: on success `p` points to a static NUL-terminated string owned by the driver.
            (r == 0 && !p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        });
        Err(GpuError::Cuda { call, code, name })
    };
    // SAFETY: cuInit(0) is the documented first call of the driver API; flags must be 0.
    check("cuInit", unsafe { init(0) })?;
    let mut v: c_int = 0;
    // SAFETY: the out-pointer is valid for one int.
    check("cuDriverGetVersion", unsafe { driver_version(&mut v) })?;
    let mut n: c_int = 0;
    // SAFETY: the out-pointer is valid for one int.
    check("cuDeviceGetCount", unsafe { count(&mut n) })?;
    let mut devices = Vec::new();
    for ordinal in 0..n.max(0) {
        let mut dev: c_int = 0;
        // SAFETY: `ordinal` < the device count; the out-pointer is valid.
        check("cuDeviceGet", unsafe { device_get(&mut dev, ordinal) })?;
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 chars and we pass its length; the driver NUL-terminates.
        check("cuDeviceGetName", unsafe {
            get_name(buf.as_mut_ptr(), buf.len() as c_int, dev)
        })?;
        // SAFETY: the buffer is NUL-terminated (zero-initialised and written by the driver within its length).
        let name = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        let (mut major, mut minor) = (0, 0);
        // SAFETY: valid out-pointers, a valid device and documented attribute ids.
        check("cuDeviceGetAttribute", unsafe {
            get_attr(&mut major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        })?;
        // SAFETY: as above.
        check("cuDeviceGetAttribute", unsafe {
            get_attr(&mut minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        })?;
        let mut bytes: usize = 0;
        // SAFETY: valid out-pointer and device.
        check("cuDeviceTotalMem", unsafe { total_mem(&mut bytes, dev) })?;
        devices.push(GpuDevice {
            ordinal: ordinal as u32,
            name,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
            total_memory_bytes: bytes as u64,
        });
    }
    if devices.is_empty() {
        return Err(GpuError::NoDevice);
    }
    Ok(CudaInfo {
        library,
        driver_version: cuda_version_string(v),
        devices,
    })
}

/// The CUDA probe, done once per process.
pub fn cuda() -> &'static Result<CudaInfo, GpuError> {
    static CUDA: OnceLock<Result<CudaInfo, GpuError>> = OnceLock::new();
    CUDA.get_or_init(probe_cuda)
}

/// Probe TensorRT's library and version (not cached; see [`tensorrt`]).
pub fn probe_tensorrt() -> Result<TensorRtInfo, GpuError> {
    let (lib, library) =
        open_first(&TRT_LIBS).map_err(|(tried, source)| GpuError::TensorRtMissing { tried, source })?;
    // Kept loaded: libnvinfer is large (loading it again costs seconds on a Jetson) and ONNX Runtime's TensorRT
    // provider loads the same library; unloading it between the two gains nothing.
    let lib = std::mem::ManuallyDrop::new(lib);
    let version: unsafe extern "C" fn() -> i32 = symbol(&lib, &library, "getInferLibVersion")?;
    // SAFETY: getInferLibVersion takes no arguments and returns the library's version number.
    let v = unsafe { version() };
    Ok(TensorRtInfo {
        library,
        version: trt_version_string(v),
    })
}

/// The TensorRT probe, done once per process.
pub fn tensorrt() -> &'static Result<TensorRtInfo, GpuError> {
    static TRT: OnceLock<Result<TensorRtInfo, GpuError>> = OnceLock::new();
    TRT.get_or_init(probe_tensorrt)
}

/// One line for logs and bench headers.
pub fn describe() -> String {
    let cuda = match cuda() {
        Ok(c) => {
            let devs: Vec<String> = c
                .devices
                .iter()
                .map(|d| {
                    format!(
                        "GPU {}: {} (sm {}, {:.1} GiB)",
                        d.ordinal,
                        d.name,
                        d.compute_capability_string(),
                        d.total_memory_bytes as f64 / (1u64 << 30) as f64
                    )
                })
                .collect();
            format!("CUDA driver {}, {}", c.driver_version, devs.join(", "))
        }
        Err(e) => format!("no CUDA: {e}"),
    };
    let trt = match tensorrt() {
        Ok(t) => format!("TensorRT {}", t.version),
        Err(e) => format!("no TensorRT: {e}"),
    };
    format!("{cuda}; {trt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_decode() {
        assert_eq!(trt_version_string(100300), "10.3.0");
        assert_eq!(trt_version_string(100013), "10.0.13");
        assert_eq!(trt_version_string(8602), "8.6.2");
        assert_eq!(trt_version_string(8201), "8.2.1");
        assert_eq!(cuda_version_string(12020), "12.2");
        assert_eq!(cuda_version_string(11040), "11.4");
    }

    #[test]
    fn probes_fail_cleanly_or_describe_real_hardware() {
        match probe_cuda() {
            Ok(info) => {
                assert!(!info.devices.is_empty());
                assert!(info
                    .devices
                    .iter()
                    .all(|d| !d.name.is_empty() && d.compute_capability.0 > 0));
            }
            Err(GpuError::DriverMissing { tried, source }) => {
                assert_eq!(tried[0], "libcuda.so.1");
                let msg = GpuError::DriverMissing { tried, source }.to_string();
                assert!(msg.contains("libcuda.so.1") && msg.contains("NVIDIA driver"), "{msg}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match probe_tensorrt() {
            Ok(t) => assert!(t.version.split('.').count() == 3, "{}", t.version),
            Err(e) => assert!(e.to_string().contains("libnvinfer.so.10"), "{e}"),
        }
        assert!(describe().contains("; "));
    }
}
