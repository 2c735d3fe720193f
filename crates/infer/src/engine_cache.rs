//! TensorRT engine-cache lifecycle. ONNX Runtime's TensorRT provider writes its engine (and profile) files into
//! the directory it is given; Kestrel owns that directory's life: one entry per [`EngineKey`], built in a
//! staging directory and committed atomically with a manifest of sizes and sha256s, validated before use, and
//! discarded with a log line when unusable — never a crash, never a stale engine after an upgrade.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// The manifest's file name inside an entry.
pub const MANIFEST: &str = "manifest.json";
/// Manifest format version.
pub const FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("engine cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the TensorRT execution provider wrote no engine into {dir}")]
    Empty { dir: PathBuf },
}

/// Why a cache entry cannot be used (it is then discarded).
#[derive(Debug, Error)]
pub enum InvalidEntry {
    #[error("{MANIFEST}: {0}")]
    ReadManifest(#[source] std::io::Error),
    #[error("{MANIFEST} does not parse: {0}")]
    ParseManifest(#[source] serde_json::Error),
    #[error("{MANIFEST} format {0} (expected {FORMAT})")]
    Format(u32),
    #[error("{MANIFEST} is for another key ({})", .0.describe())]
    OtherKey(Box<EngineKey>),
    #[error("{MANIFEST} lists no files")]
    NoFiles,
    #[error("bad file name {0:?}")]
    BadName(String),
    /// A listed file cannot be read.
    #[error("{name}: {source}")]
    File {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: size {size} (manifest: {expected})")]
    Size { name: String, size: u64, expected: u64 },
    #[error("{name}: sha256 {sha256} (manifest: {expected})")]
    Sha256 {
        name: String,
        sha256: String,
        expected: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything an engine depends on. Two keys with the same [`EngineKey::id`] are the same engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineKey {
    pub model_sha256: String,
    pub ort_version: String,
    pub tensorrt_version: String,
    pub gpu_name: String,
    pub compute_capability: String,
    /// "fp32", "fp16" or "int8".
    pub precision: String,
    /// N, C, H, W (0: dynamic).
    pub input_shape: [u32; 4],
    pub dla_core: Option<u32>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl EngineKey {
    fn canonical(&self) -> String {
        let s = self.input_shape;
        format!(
            "kestrel-engine-key v1\nmodel_sha256={}\nort_version={}\ntensorrt_version={}\ngpu_name={}\n\
             compute_capability={}\nprecision={}\ninput_shape={}x{}x{}x{}\ndla_core={}\n",
            self.model_sha256,
            self.ort_version,
            self.tensorrt_version,
            self.gpu_name,
            self.compute_capability,
            self.precision,
            s[0],
            s[1],
            s[2],
            s[3],
            self.dla_core.map_or("gpu".to_string(), |c| c.to_string())
        )
    }

    /// First 32 hex digits of the SHA-256 of the canonical text: the entry's directory name.
    pub fn id(&self) -> String {
        sha256_hex(self.canonical().as_bytes())[..32].to_string()
    }

    /// Human summary for logs.
    pub fn describe(&self) -> String {
        let s = self.input_shape;
        format!(
            "model {}…, ONNX Runtime {}, TensorRT {}, {} sm {}, {}, {}x{}x{}x{}{}",
            &self.model_sha256[..self.model_sha256.len().min(12)],
            self.ort_version,
            self.tensorrt_version,
            self.gpu_name,
            self.compute_capability,
            self.precision,
            s[0],
            s[1],
            s[2],
            s[3],
            self.dla_core.map_or(String::new(), |c| format!(", DLA {c}"))
        )
    }
}

/// Streaming SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The cache root: systemd's `$CACHE_DIRECTORY` (first of a colon-separated list) + `/engines`, else
/// `$XDG_CACHE_HOME/kestrel/engines`, else `~/.cache/kestrel/engines`, else `/var/cache/kestrel/engines`. Pure.
pub fn default_root(
    cache_directory_env: Option<&OsStr>,
    xdg_cache_home: Option<&Path>,
    home: Option<&Path>,
) -> PathBuf {
    if let Some(first) = cache_directory_env
        .and_then(|v| v.to_str())
        .and_then(|v| v.split(':').next())
        .filter(|v| !v.is_empty())
    {
        return Path::new(first).join("engines");
    }
    if let Some(x) = xdg_cache_home.filter(|p| p.is_absolute()) {
        return x.join("kestrel").join("engines");
    }
    if let Some(h) = home.filter(|p| p.is_absolute()) {
        return h.join(".cache").join("kestrel").join("engines");
    }
    PathBuf::from("/var/cache/kestrel/engines")
}

/// [`default_root`] from this process's environment.
pub fn root_from_env() -> PathBuf {
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    default_root(
        std::env::var_os("CACHE_DIRECTORY").as_deref(),
        xdg.as_deref(),
        home.as_deref(),
    )
}

/// One file of an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Relative to the entry directory, '/'-separated.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.json` of an entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub key: EngineKey,
    pub files: Vec<ManifestFile>,
    pub created_unix_s: u64,
    pub build_seconds: f64,
    pub kestrel_version: String,
}

/// What [`EngineCache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    Ready {
        dir: PathBuf,
        manifest: Box<Manifest>,
    },
    Missing,
    /// An entry was there but unusable; it has been removed.
    Discarded {
        reason: InvalidEntry,
    },
}

/// Engine caches under one root.
#[derive(Clone, Debug)]
pub struct EngineCache {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Every regular file below `dir`, relative, sorted.
fn files_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let ty = e.file_type()?;
            let r = rel.join(e.file_name());
            if ty.is_dir() {
                stack.push(r);
            } else if ty.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn slash(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

impl EngineCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<key id>`.
    pub fn entry_dir(&self, key: &EngineKey) -> PathBuf {
        self.root.join(key.id())
    }

    /// TensorRT's timing cache, shared by every model on the same GPU and TensorRT version.
    pub fn timing_cache_dir(&self, key: &EngineKey) -> PathBuf {
        let id =
            sha256_hex(format!("{}\n{}\n{}", key.tensorrt_version, key.gpu_name, key.compute_capability).as_bytes());
        self.root.join(format!("timing-{}", &id[..16]))
    }

    /// Find a valid entry for `key`; an unusable one is logged, removed and reported as discarded.
    pub fn lookup(&self, key: &EngineKey) -> Lookup {
        let dir = self.entry_dir(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match validate(&dir, key) {
            Ok(manifest) => Lookup::Ready {
                dir,
                manifest: Box::new(manifest),
            },
            Err(reason) => {
                log::warn!("discarding unusable engine cache {}: {reason}", dir.display());
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    let aside = self
                        .root
                        .join(format!(".discarded-{}-{}-{}", key.id(), std::process::id(), nanos()));
                    match std::fs::rename(&dir, &aside) {
                        Ok(()) => log::warn!("could not remove it ({e}); moved it to {}", aside.display()),
                        Err(e2) => log::warn!("could not remove it ({e}) nor move it aside ({e2})"),
                    }
                }
                Lookup::Discarded { reason }
            }
        }
    }

    /// A fresh staging directory for building `key`'s engine. Staging directories left by dead processes
    /// (a crash mid-build) are removed first.
    pub fn begin(&self, key: &EngineKey) -> Result<Staging, CacheError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.root)
            .map_err(io(&self.root))?;
        self.remove_stale_staging();
        let dir = self.root.join(format!(
            ".staging-{}-{}-{}",
            key.id(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o750).create(&dir).map_err(io(&dir))?;
        Ok(Staging {
            dir: Some(dir),
            entry: self.entry_dir(key),
            root: self.root.clone(),
            key: key.clone(),
        })
    }

    /// Remove what dead processes left behind: unfinished builds (`.staging-`), entries moved aside by a commit
    /// (`.old-`) or by a discard that could not delete them (`.discarded-`). Each name carries the pid; a
    /// directory of a live process (another kestrel building right now) is left alone.
    fn remove_stale_staging(&self) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((what, pid)) = leftover(&name) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                log::info!("removing {what} left by process {pid}: {}", e.path().display());
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    log::warn!("could not remove {}: {err}", e.path().display());
                }
            }
        }
    }
}

/// `.staging-<id>-<pid>-<n>`, `.old-<id>-<pid>-<ns>`, `.discarded-<id>-<pid>-<ns>` → (what it is, pid). Pure.
fn leftover(name: &str) -> Option<(&'static str, u32)> {
    let (what, rest) = [
        (".staging-", "an unfinished engine build"),
        (".old-", "a replaced engine"),
        (".discarded-", "a discarded engine"),
    ]
    .iter()
    .find_map(|(prefix, what)| name.strip_prefix(prefix).map(|rest| (*what, rest)))?;
    let mut parts = rest.split('-');
    let id = parts.next()?;
    let pid = parts.next()?.parse::<u32>().ok()?;
    parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((what, pid))
}

fn validate(dir: &Path, key: &EngineKey) -> Result<Manifest, InvalidEntry> {
    let text = std::fs::read(dir.join(MANIFEST)).map_err(InvalidEntry::ReadManifest)?;
    let m: Manifest = serde_json::from_slice(&text).map_err(InvalidEntry::ParseManifest)?;
    if m.format != FORMAT {
        return Err(InvalidEntry::Format(m.format));
    }
    if &m.key != key {
        return Err(InvalidEntry::OtherKey(Box::new(m.key)));
    }
    if m.files.is_empty() {
        return Err(InvalidEntry::NoFiles);
    }
    for f in &m.files {
        if f.name.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(InvalidEntry::BadName(f.name.clone()));
        }
        let p = dir.join(&f.name);
        let file_err = |source| InvalidEntry::File {
            name: f.name.clone(),
            source,
        };
        let meta = std::fs::metadata(&p).map_err(file_err)?;
        if meta.len() != f.size {
            return Err(InvalidEntry::Size {
                name: f.name.clone(),
                size: meta.len(),
                expected: f.size,
            });
        }
        let sha256 = sha256_file(&p).map_err(file_err)?;
        if sha256 != f.sha256 {
            return Err(InvalidEntry::Sha256 {
                name: f.name.clone(),
                sha256,
                expected: f.sha256.clone(),
            });
        }
    }
    Ok(m)
}

/// An engine being built. Committed with [`Staging::commit`]; removed when dropped uncommitted.
#[derive(Debug)]
pub struct Staging {
    dir: Option<PathBuf>,
    entry: PathBuf,
    root: PathBuf,
    key: EngineKey,
}

impl Staging {
    /// The directory the TensorRT provider writes into.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new(""))
    }

    /// Hash what was written, write the manifest, and move the directory into place atomically (replacing an
    /// older entry). Returns the entry directory and its manifest.
    pub fn commit(mut self, build_seconds: f64) -> Result<(PathBuf, Manifest), CacheError> {
        let dir = self.dir().to_path_buf();
        let names: Vec<PathBuf> = files_below(&dir)
            .map_err(io(&dir))?
            .into_iter()
            .filter(|p| p != Path::new(MANIFEST))
            .collect();
        if names.is_empty() {
            return Err(CacheError::Empty { dir });
        }
        let mut files = Vec::new();
        for rel in &names {
            let p = dir.join(rel);
            let f = std::fs::File::open(&p).map_err(io(&p))?;
            f.sync_all().map_err(io(&p))?;
            let size = f.metadata().map_err(io(&p))?.len();
            files.push(ManifestFile {
                name: slash(rel),
                size,
                sha256: sha256_file(&p).map_err(io(&p))?,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            key: self.key.clone(),
            files,
            created_unix_s: (nanos() / 1_000_000_000) as u64,
            build_seconds,
            kestrel_version: env!("CARGO_PKG_VERSION").into(),
        };
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| CacheError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&json).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let final_manifest = dir.join(MANIFEST);
        std::fs::rename(&tmp, &final_manifest).map_err(io(&final_manifest))?;
        fsync_dir(&dir);
        let aside = self
            .root
            .join(format!(".old-{}-{}-{}", self.key.id(), std::process::id(), nanos()));
        // On failure the staging directory is still ours and is removed when `self` drops.
        replace_dir(&dir, &self.entry, &aside).map_err(io(&self.entry))?;
        self.dir = None;
        Ok((self.entry.clone(), manifest))
    }
}

/// Move `new` to `entry`, replacing a previous entry: that one is renamed to `aside` first (two directories
/// cannot be swapped atomically) and removed after the swap; if the swap fails it is renamed back.
fn replace_dir(new: &Path, entry: &Path, aside: &Path) -> std::io::Result<()> {
    let had_old = entry.exists();
    if had_old {
        std::fs::rename(entry, aside)?;
    }
    if let Err(e) = std::fs::rename(new, entry) {
        if had_old {
            if let Err(e2) = std::fs::rename(aside, entry) {
                log::warn!("could not restore the previous engine from {}: {e2}", aside.display());
            }
        }
        return Err(e);
    }
    if let Some(root) = entry.parent() {
        fsync_dir(root);
    }
    if had_old {
        if let Err(e) = std::fs::remove_dir_all(aside) {
            log::warn!("could not remove the replaced engine {}: {e}", aside.display());
        }
    }
    Ok(())
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EngineKey {
        EngineKey {
            model_sha256: "ab".repeat(32),
            ort_version: "1.31.1".into(),
            tensorrt_version: "10.3.0".into(),
            gpu_name: "Orin".into(),
            compute_capability: "8.7".into(),
            precision: "fp16".into(),
            input_shape: [1, 3, 416, 416],
            dla_core: None,
        }
    }

    #[test]
    fn the_id_changes_with_every_component_and_is_stable() {
        let k = key();
        assert_eq!(k.id(), key().id());
        assert_eq!(k.id().len(), 32);
        assert_eq!(
            k.id(),
            "324955e5134f20033238aeaed1540e2f",
            "the id must not change between releases"
        );
        type Change = Box<dyn Fn(&mut EngineKey)>;
        let changes: Vec<Change> = vec![
            Box::new(|k| k.model_sha256 = "cd".repeat(32)),
            Box::new(|k| k.ort_version = "1.32.0".into()),
            Box::new(|k| k.tensorrt_version = "10.3.1".into()),
            Box::new(|k| k.gpu_name = "Xavier".into()),
            Box::new(|k| k.compute_capability = "7.2".into()),
            Box::new(|k| k.precision = "fp32".into()),
            Box::new(|k| k.input_shape[2] = 640),
            Box::new(|k| k.input_shape[3] = 640),
            Box::new(|k| k.dla_core = Some(0)),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(k.id());
        for change in &changes {
            let mut c = key();
            change(&mut c);
            assert!(seen.insert(c.id()), "{c:?} collides");
        }
        assert!(k.describe().contains("TensorRT 10.3.0") && k.describe().contains("1x3x416x416"));
    }

    #[test]
    fn default_root_follows_systemd_then_xdg_then_home() {
        assert_eq!(
            default_root(Some(OsStr::new("/var/cache/kestrel:/other")), None, None),
            Path::new("/var/cache/kestrel/engines")
        );
        assert_eq!(
            default_root(None, Some(Path::new("/x")), Some(Path::new("/h"))),
            Path::new("/x/kestrel/engines")
        );
        assert_eq!(
            default_root(Some(OsStr::new("")), None, Some(Path::new("/h"))),
            Path::new("/h/.cache/kestrel/engines")
        );
        assert_eq!(default_root(None, None, None), Path::new("/var/cache/kestrel/engines"));
    }

    fn built(cache: &EngineCache, k: &EngineKey, content: &[u8]) -> PathBuf {
        let s = cache.begin(k).unwrap();
        std::fs::write(s.dir().join("engine.trt"), content).unwrap();
        std::fs::create_dir(s.dir().join("sub")).unwrap();
        std::fs::write(s.dir().join("sub/profile"), b"profile").unwrap();
        s.commit(1.5).unwrap().0
    }

    #[test]
    fn commit_then_lookup_and_every_corruption_is_discarded() {
        let t = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(t.path().join("engines"));
        let k = key();
        assert!(matches!(cache.lookup(&k), Lookup::Missing));
        let dir = built(&cache, &k, b"engine bytes");
        assert_eq!(dir, cache.entry_dir(&k));
        match cache.lookup(&k) {
            Lookup::Ready { manifest, .. } => {
                let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
                assert_eq!(names, ["engine.trt", "sub/profile"]);
                assert_eq!(manifest.build_seconds, 1.5);
            }
            other => panic!("{other:?}"),
        }
        type Corrupt = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Corrupt)> = vec![
            (
                "sha256",
                Box::new(|d| std::fs::write(d.join("engine.trt"), b"engine bytez").unwrap()),
            ),
            (
                "size",
                Box::new(|d| std::fs::write(d.join("engine.trt"), b"engine").unwrap()),
            ),
            (
                "does not parse",
                Box::new(|d| std::fs::write(d.join(MANIFEST), b"{garbage").unwrap()),
            ),
            (
                "sub/profile",
                Box::new(|d| std::fs::remove_file(d.join("sub/profile")).unwrap()),
            ),
            (
                "another key",
                Box::new(|d| {
                    let text = std::fs::read_to_string(d.join(MANIFEST)).unwrap();
                    std::fs::write(d.join(MANIFEST), text.replace("\"Orin\"", "\"Xavier\"")).unwrap();
                }),
            ),
        ];
        for (what, corrupt) in cases {
            let dir = built(&cache, &k, b"engine bytes");
            corrupt(&dir);
            match cache.lookup(&k) {
                Lookup::Discarded { reason } => assert!(reason.to_string().contains(what), "{what}: {reason}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(!dir.exists(), "{what}: the unusable entry is removed");
            assert!(matches!(cache.lookup(&k), Lookup::Missing));
        }
    }

    #[test]
    fn staging_is_cleaned_and_replaced() {
        let t = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(t.path());
        let k = key();
        let s = cache.begin(&k).unwrap();
        let d = s.dir().to_path_buf();
        assert!(d.is_dir());
        let e = s.commit(0.0).unwrap_err();
        assert!(matches!(e, CacheError::Empty { .. }), "{e}");
        assert!(!d.exists());
        let s = cache.begin(&k).unwrap();
        let d = s.dir().to_path_buf();
        drop(s);
        assert!(!d.exists(), "an uncommitted build is removed");

        built(&cache, &k, b"first");
        built(&cache, &k, b"second, longer");
        match cache.lookup(&k) {
            Lookup::Ready { dir, manifest } => {
                assert_eq!(std::fs::read(dir.join("engine.trt")).unwrap(), b"second, longer");
                assert_eq!(manifest.files[0].size, 14);
            }
            other => panic!("{other:?}"),
        }
        let leftovers: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let dead = t.path().join(format!(".staging-{}-999999999-0", k.id()));
        let live = t
            .path()
            .join(format!(".staging-{}-{}-9999", k.id(), std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&live).unwrap();
        let dead_old = t.path().join(format!(".old-{}-999999999-17", k.id()));
        let dead_discarded = t.path().join(format!(".discarded-{}-999999999-18", k.id()));
        let live_old = t.path().join(format!(".old-{}-{}-19", k.id(), std::process::id()));
        let not_ours = t.path().join(".old-notanid-999999999-1");
        for d in [&dead_old, &dead_discarded, &live_old, &not_ours] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("engine.trt"), b"x").unwrap();
        }
        let s = cache.begin(&k).unwrap();
        assert!(!dead.exists(), "a dead process's build is removed");
        assert!(live.exists(), "a live process's build is kept");
        assert!(
            !dead_old.exists() && !dead_discarded.exists(),
            "a dead process's moved-aside entries are removed"
        );
        assert!(live_old.exists(), "a live process's moved-aside entry is kept");
        assert!(not_ours.exists(), "a name kestrel does not write is left alone");
        drop(s);
    }

    #[test]
    fn leftover_names_parse() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            leftover(&format!(".staging-{id}-42-0")),
            Some(("an unfinished engine build", 42))
        );
        assert_eq!(
            leftover(&format!(".old-{id}-7-1700000000")),
            Some(("a replaced engine", 7))
        );
        assert_eq!(
            leftover(&format!(".discarded-{id}-9-5")),
            Some(("a discarded engine", 9))
        );
        assert_eq!(leftover(id), None, "a committed entry is never a leftover");
        assert_eq!(leftover(&format!(".staging-{id}-x-0")), None);
        assert_eq!(leftover(&format!(".staging-{id}-42")), None);
        assert_eq!(leftover(".staging-short-42-0"), None);
        assert_eq!(leftover("timing-0123456789abcdef"), None);
    }

    #[test]
    fn failed_replace_restores_the_previous_entry() {
        let t = tempfile::tempdir().unwrap();
        let entry = t.path().join("entry");
        std::fs::create_dir(&entry).unwrap();
        std::fs::write(entry.join("engine.trt"), b"first").unwrap();
        let aside = t.path().join(".old-x");
        // The new directory does not exist: the final rename fails after the old entry was moved aside.
        let e = replace_dir(&t.path().join("missing"), &entry, &aside).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert_eq!(
            std::fs::read(entry.join("engine.trt")).unwrap(),
            b"first",
            "previous entry restored"
        );
        assert!(!aside.exists());

        let new = t.path().join("new");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("engine.trt"), b"second").unwrap();
        replace_dir(&new, &entry, &aside).unwrap();
        assert_eq!(std::fs::read(entry.join("engine.trt")).unwrap(), b"second");
        assert!(
            !new.exists() && !aside.exists(),
            "the old entry is removed after the swap"
        );
        // No previous entry: a plain rename.
        std::fs::remove_dir_all(&entry).unwrap();
        std::fs::create_dir(&new).unwrap();
        replace_dir(&new, &entry, &aside).unwrap();
        assert!(entry.is_dir() && !new.exists());
    }
}
