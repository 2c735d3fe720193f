//! Finding and loading ONNX Runtime (`libonnxruntime.so`) at run time.
//!
//! Search order (the first library that loads wins):
//! 1. `--ort-lib PATH` (binding: if it fails, nothing else is tried);
//! 2. `ORT_DYLIB_PATH` (binding likewise);
//! 3. beside the executable (`<exe dir>/libonnxruntime.so*`, `<exe dir>/lib/…`, `<exe dir>/../lib/…`,
//!    `<exe dir>/../lib/kestrel/…`: the .deb's copy);
//! 4. the project-local cache written by `scripts/fetch-onnxruntime.sh`:
//!    `.cache/onnxruntime/<version>/<arch>/` under the working directory or any ancestor of the executable;
//! 5. an installed Python `onnxruntime` / `onnxruntime-gpu` package (`onnxruntime/capi/libonnxruntime.so*`
//!    in `$VIRTUAL_ENV`, `~/.local`, `/usr/local` and `/usr` site/dist-packages: where JetPack puts it).
//!
//! ONNX Runtime allows one environment per process, so the loaded runtime is a process-wide singleton.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use thiserror::Error;

/// The ONNX Runtime release this build is made and tested for.
pub const ORT_VERSION: &str = "1.31.1";
/// The C API level `ort` is built against (`api-31`); older libraries are refused.
pub const ORT_API_LEVEL: u32 = 31;

/// Where one candidate came from, for the error report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    EnvVar,
    BesideExecutable,
    ProjectCache,
    PythonPackage,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "--ort-lib",
            Self::EnvVar => "ORT_DYLIB_PATH",
            Self::BesideExecutable => "beside the executable",
            Self::ProjectCache => "project cache",
            Self::PythonPackage => "Python onnxruntime package",
        })
    }
}

/// One place looked at and what happened there.
#[derive(Debug)]
pub struct Attempt {
    pub origin: Origin,
    pub path: PathBuf,
    pub outcome: LibraryError,
}

/// Why one candidate library was not loaded.
#[derive(Debug, Error)]
pub enum LibraryError {
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Load(#[from] ort::LoadDynamicError),
}

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{}", not_found_message(.attempts))]
    NotFound { attempts: Vec<Attempt> },
    #[error("ONNX Runtime loaded from {path} but could not create its environment: {source}")]
    Environment {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

fn not_found_message(attempts: &[Attempt]) -> String {
    let mut s = String::from("ONNX Runtime (libonnxruntime.so) could not be loaded. Places tried, in order:\n");
    for a in attempts {
        let _ = writeln!(s, "  - {} [{}]: {}", a.path.display(), a.origin, a.outcome);
    }
    let _ = write!(
        s,
        "Fix: run `scripts/fetch-onnxruntime.sh` (puts ONNX Runtime {ORT_VERSION} in the project cache), or pass \
         --ort-lib /path/to/libonnxruntime.so, or set ORT_DYLIB_PATH. The library must be ONNX Runtime 1.{ORT_API_LEVEL} or newer."
    );
    s
}

/// A loaded ONNX Runtime: the library path, its version and the process's environment.
pub struct Runtime {
    pub library: PathBuf,
    pub version: String,
    pub env: ort::environment::Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// CPU architecture directory name used by the cache (`x86_64`, `aarch64`).
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// `.cache/onnxruntime/<version>/<arch>` relative to a project root.
pub fn cache_subdir() -> PathBuf {
    Path::new(".cache").join("onnxruntime").join(ORT_VERSION).join(arch())
}

/// Every `libonnxruntime.so*` in `dir`, best first: the fully versioned name, then shorter ones.
fn libs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "libonnxruntime.so" || n.starts_with("libonnxruntime.so."))
        })
        .collect();
    v.sort_by(|a, b| b.as_os_str().len().cmp(&a.as_os_str().len()).then_with(|| b.cmp(a)));
    v
}

/// The ordered list of candidate libraries from the search locations (steps 3–5 of the module docs).
pub fn search_candidates(
    exe: Option<&Path>,
    cwd: Option<&Path>,
    home: Option<&Path>,
    venv: Option<&Path>,
) -> Vec<(Origin, PathBuf)> {
    let mut out = Vec::new();
    let exe_dir = exe.and_then(Path::parent);
    if let Some(d) = exe_dir {
        // `../lib/kestrel`: where the .deb installs its CPU build (/usr/bin/kestrel -> /usr/lib/kestrel).
        for dir in [
            d.to_path_buf(),
            d.join("lib"),
            d.join("..").join("lib"),
            d.join("..").join("lib").join("kestrel"),
        ] {
            push_dir(&mut out, Origin::BesideExecutable, &dir);
        }
    }
    let mut roots: Vec<PathBuf> = cwd.map(Path::to_path_buf).into_iter().collect();
    if let Some(d) = exe_dir {
        roots.extend(d.ancestors().take(5).map(Path::to_path_buf));
    }
    for root in roots {
        push_dir(&mut out, Origin::ProjectCache, &root.join(cache_subdir()));
    }
    let mut prefixes: Vec<PathBuf> = venv.map(Path::to_path_buf).into_iter().collect();
    if let Some(h) = home {
        prefixes.push(h.join(".local"));
    }
    prefixes.extend([PathBuf::from("/usr/local"), PathBuf::from("/usr")]);
    for prefix in prefixes {
        let Ok(rd) = std::fs::read_dir(prefix.join("lib")) else {
            continue;
        };
        let mut pydirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pydirs.sort();
        for py in pydirs.iter().rev() {
            for pkgs in ["site-packages", "dist-packages"] {
                push_dir(
                    &mut out,
                    Origin::PythonPackage,
                    &py.join(pkgs).join("onnxruntime").join("capi"),
                );
            }
        }
    }
    out
}

fn push_dir(out: &mut Vec<(Origin, PathBuf)>, origin: Origin, dir: &Path) {
    let libs = libs_in(dir);
    if libs.is_empty() {
        out.push((origin, dir.join("libonnxruntime.so*")));
    } else {
        out.extend(libs.into_iter().map(|p| (origin.clone(), p)));
    }
}

fn try_load(path: &Path) -> Result<(), LibraryError> {
    if !path.exists() {
        return Err(LibraryError::NotFound);
    }
    ort::init_from(path)?;
    Ok(())
}

/// Load ONNX Runtime once per process (later calls return the same runtime).
pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let mut attempts = Vec::new();
    let env_path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let binding: Option<(Origin, PathBuf)> = match (explicit, env_path) {
        (Some(p), _) => Some((Origin::Flag, p.to_path_buf())),
        (None, Some(p)) => Some((Origin::EnvVar, p)),
        (None, None) => None,
    };
    let candidates = match binding {
        Some(c) => vec![c],
        None => {
            let exe = std::env::current_exe().ok();
            let cwd = std::env::current_dir().ok();
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let venv = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
            search_candidates(exe.as_deref(), cwd.as_deref(), home.as_deref(), venv.as_deref())
        }
    };
    for (origin, path) in candidates {
        match try_load(&path) {
            Ok(()) => {
                let env = ort::init()
                    .with_name("kestrel")
                    .build()
                    .map_err(|source| RuntimeError::Environment {
                        path: path.clone(),
                        source,
                    })?;
                let version = library_version(&path).unwrap_or_else(|| "unknown".into());
                log::info!("ONNX Runtime {version} loaded from {} ({origin})", path.display());
                return Ok(RUNTIME.get_or_init(|| Runtime {
                    library: path,
                    version,
                    env,
                }));
            }
            Err(outcome) => attempts.push(Attempt { origin, path, outcome }),
        }
    }
    Err(RuntimeError::NotFound { attempts })
}

/// The version string the library reports (`OrtGetApiBase()->GetVersionString()`, e.g. "1.31.1").
fn library_version(path: &Path) -> Option<String> {
    // SAFETY: `path` was just loaded successfully by `ort::init_from`, so opening it again only bumps the
    // loader's reference count and runs no new initialisers.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: `OrtGetApiBase` is ONNX Runtime's stable C entry point with exactly this signature.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.ok()?;
    // SAFETY: the function takes no arguments and returns a pointer to a static struct (or null).
    let base = unsafe { get_base() };
    if base.is_null() {
        return None;
    }
    // SAFETY: `base` is non-null and points to the library's static OrtApiBase; GetVersionString returns a
    // static NUL-terminated string that outlives `lib` (the library stays loaded by ort).
    let version = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) };
    Some(version.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_documented_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let exe_dir = root.join("proj/target/release");
        std::fs::create_dir_all(&exe_dir).unwrap();
        let cache = root.join("proj").join(cache_subdir());
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join(format!("libonnxruntime.so.{ORT_VERSION}")), b"x").unwrap();
        std::fs::write(cache.join("libonnxruntime.so"), b"x").unwrap();
        let venv = root.join("venv");
        let capi = venv.join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.20.0"), b"x").unwrap();

        let c = search_candidates(Some(&exe_dir.join("kestrel")), None, None, Some(&venv));
        let origins: Vec<&Origin> = c.iter().map(|(o, _)| o).collect();
        let first_cache = origins.iter().position(|o| **o == Origin::ProjectCache).unwrap();
        let first_py = origins.iter().position(|o| **o == Origin::PythonPackage).unwrap();
        assert_eq!(origins[0], &Origin::BesideExecutable);
        assert!(first_cache < first_py);
        let found: Vec<&PathBuf> = c.iter().map(|(_, p)| p).filter(|p| p.exists()).collect();
        assert_eq!(found.len(), 3);
        assert!(
            found[0].ends_with(format!("libonnxruntime.so.{ORT_VERSION}")),
            "versioned name first: {found:?}"
        );
        assert!(found[2].ends_with("capi/libonnxruntime.so.1.20.0"));
    }

    #[test]
    fn not_found_message_lists_every_place_and_the_fix() {
        let attempts = vec![
            Attempt {
                origin: Origin::EnvVar,
                path: "/nope/libonnxruntime.so".into(),
                outcome: LibraryError::NotFound,
            },
            Attempt {
                origin: Origin::PythonPackage,
                path: "/usr/lib/x".into(),
                outcome: LibraryError::Load(ort::LoadDynamicError::MissingApi {
                    path: "/usr/lib/x".into(),
                }),
            },
        ];
        let msg = RuntimeError::NotFound { attempts }.to_string();
        assert!(
            msg.contains("/nope/libonnxruntime.so [ORT_DYLIB_PATH]: not found"),
            "{msg}"
        );
        assert!(
            msg.contains("/usr/lib/x [Python onnxruntime package]: /usr/lib/x does not export `OrtGetApiBase`"),
            "{msg}"
        );
        assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
    }
}
