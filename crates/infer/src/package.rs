//! Model packages for transfer (an over-the-air model update): `MODEL.onnx.zst`, the model compressed with
//! zstd (frame checksum on), and beside it `MODEL.onnx.zst.sha256`, the SHA-256 of the `.zst` bytes in
//! `sha256sum` format (`<hex>  MODEL.onnx.zst`), so that `sha256sum -c` checks it on the receiving side too.
//!
//! Reading one ([`read`]) checks, in order: the checksum file exists and is in that format, the `.zst` bytes
//! hash to what it records, the zstd stream decodes (its own frame checksum included) to at most
//! [`MAX_MODEL_BYTES`]. Each refusal names the file. The model is decompressed in memory; nothing is written.
//! [`crate::model::Detector`] loads a path ending in `.zst` this way, so `run`, `detect`, `bench` and
//! `evaluate` take a package wherever they take a model.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The largest decompressed model accepted (2 GiB, ONNX's protobuf limit): a package that claims or
/// decodes to more is refused before it is held in memory.
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// The zstd level of packages (and of the sizes `kestrel compress` reports): 19, the highest of the normal
/// levels, slow to compress (seconds for a 35 MB model), as fast as any to decompress.
pub const LEVEL: i32 = 19;

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("cannot read model package {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "model package {package}: its checksum file {sidecar} is missing (a package is loaded only with the \
         sha256 recorded beside it; `kestrel compress --package` writes both)"
    )]
    MissingSidecar { package: PathBuf, sidecar: PathBuf },
    #[error("cannot read the checksum file {path}: {source}")]
    ReadSidecar { path: PathBuf, source: std::io::Error },
    #[error("checksum file {path} is not in sha256sum format (`<64 hex digits>  <file name>`): {reason}")]
    BadSidecar { path: PathBuf, reason: String },
    #[error("model package {package}: sha256 mismatch: the file's sha256 is {actual}, {sidecar} records {expected}")]
    Mismatch {
        package: PathBuf,
        sidecar: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("model package {path} is not a valid zstd stream (corrupted or truncated): {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model package {path} decompresses to {size}, more than the limit of {limit} bytes")]
    TooLarge { path: PathBuf, size: String, limit: u64 },
    #[error("model package {path} decompresses to nothing")]
    Empty { path: PathBuf },
    #[error("compressing with zstd: {0}")]
    Compress(#[source] std::io::Error),
}

/// True for a path that names a package (ends in `.zst`).
pub fn is_package(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}

/// `PATH.sha256`: where a package's checksum is recorded.
pub fn sidecar_path(package: &Path) -> PathBuf {
    let mut s = package.as_os_str().to_os_string();
    s.push(".sha256");
    PathBuf::from(s)
}

/// `OUT.zst`: the package of the model file `out`.
pub fn package_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".zst");
    PathBuf::from(s)
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::engine_cache::sha256_hex(bytes)
}

/// The model bytes compressed as a package: one zstd frame at `level`, with the content size and the frame
/// checksum (XXH64 of the content, checked on decompression).
pub fn encode(model: &[u8], level: i32) -> Result<Vec<u8>, PackageError> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).map_err(PackageError::Compress)?;
    c.set_parameter(CParameter::ChecksumFlag(true))
        .map_err(PackageError::Compress)?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(PackageError::Compress)?;
    c.compress(model).map_err(PackageError::Compress)
}

/// The checksum file's text for a package whose bytes hash to `sha256`: `sha256sum`'s format, the package's
/// file name only (the two files travel together; `sha256sum -c` runs in their directory).
pub fn sidecar_text(sha256: &str, package: &Path) -> String {
    let name = package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{sha256}  {name}\n")
}

/// The hash a checksum file records (lower case): the first line's first field, 64 hex digits, then the
/// file name (`  name`, or ` *name` in binary mode). `sidecar` names the file in errors.
pub fn parse_sidecar(sidecar: &Path, text: &str) -> Result<String, PackageError> {
    let bad = |reason: &str| PackageError::BadSidecar {
        path: sidecar.to_path_buf(),
        reason: reason.to_string(),
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| bad("it is empty"))?;
    let hex = line.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(&format!("`{}` is not 64 hex digits", truncate(hex, 80))));
    }
    let rest = &line[hex.len()..];
    if !(rest.starts_with("  ") || rest.starts_with(" *")) || rest[2..].trim().is_empty() {
        return Err(bad("the hash is not followed by two spaces and the file name"));
    }
    Ok(hex.to_ascii_lowercase())
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Read the package at `path`: check the sha256 its checksum file records, then decompress (at most
/// [`MAX_MODEL_BYTES`]). Returns the model bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, PackageError> {
    read_limited(path, MAX_MODEL_BYTES)
}

/// [`read`] with another limit on the decompressed size.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, PackageError> {
    let sidecar = sidecar_path(path);
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackageError::MissingSidecar {
                package: path.to_path_buf(),
                sidecar,
            })
        }
        Err(source) => return Err(PackageError::ReadSidecar { path: sidecar, source }),
    };
    let bytes = std::fs::read(path).map_err(|source| PackageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    verify(path, &bytes, &sidecar, &text)?;
    decompress(path, &bytes, limit)
}

/// Check that `bytes` (of the package `path`) hash to what the checksum file `sidecar` (its `text`) records.
pub fn verify(path: &Path, bytes: &[u8], sidecar: &Path, text: &str) -> Result<(), PackageError> {
    let expected = parse_sidecar(sidecar, text)?;
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(PackageError::Mismatch {
            package: path.to_path_buf(),
            sidecar: sidecar.to_path_buf(),
            actual,
            expected,
        });
    }
    Ok(())
}

/// Decompress the zstd stream `bytes` (read from `path`, named in errors), refusing more than `limit` bytes
/// of output: a declared content size over the limit before decoding anything, else as soon as the output
/// passes it. zstd checks each frame's checksum at its end.
pub fn decompress(path: &Path, bytes: &[u8], limit: u64) -> Result<Vec<u8>, PackageError> {
    let corrupt = |source| PackageError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size: String| PackageError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    let declared = zstd::zstd_safe::get_frame_content_size(bytes).ok().flatten();
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(too_large(format!("{n} bytes (its declared size)")));
    }
    let decoder = zstd::stream::read::Decoder::new(bytes).map_err(corrupt)?;
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n.min(limit)) as usize);
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > limit {
        return Err(too_large("more".into()));
    }
    if out.is_empty() {
        return Err(PackageError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model-like payload: repetitive enough to compress, long enough for several zstd blocks.
    fn payload() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| ((i % 251) as f32 * 0.5).to_le_bytes())
            .collect()
    }

    fn write_package(dir: &Path, model: &[u8]) -> PathBuf {
        let p = dir.join("m.onnx.zst");
        let z = encode(model, 3).unwrap();
        std::fs::write(&p, &z).unwrap();
        std::fs::write(sidecar_path(&p), sidecar_text(&sha256_hex(&z), &p)).unwrap();
        p
    }

    #[test]
    fn paths() {
        let p = Path::new("/d/m.onnx");
        assert_eq!(package_path(p), Path::new("/d/m.onnx.zst"));
        assert_eq!(sidecar_path(&package_path(p)), Path::new("/d/m.onnx.zst.sha256"));
        assert!(is_package(Path::new("m.onnx.zst")) && !is_package(p) && !is_package(Path::new("zst")));
        let text = sidecar_text(&"ab".repeat(32), Path::new("/d/m.onnx.zst"));
        assert_eq!(text, format!("{}  m.onnx.zst\n", "ab".repeat(32)));
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let model = payload();
        let p = write_package(d.path(), &model);
        assert!(std::fs::metadata(&p).unwrap().len() < model.len() as u64 / 4);
        assert_eq!(read(&p).unwrap(), model);
        // The frame records its content size and carries a checksum (frame header descriptor bit 2).
        let z = std::fs::read(&p).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).unwrap(),
            Some(model.len() as u64)
        );
        assert_eq!(z[4] & 0b100, 0b100, "checksum flag");
    }

    #[test]
    fn missing_or_malformed_sidecar_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write_package(d.path(), &payload());
        let side = sidecar_path(&p);
        std::fs::remove_file(&side).unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, PackageError::MissingSidecar { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&side.display().to_string()) && msg.contains("missing"),
            "{msg}"
        );
        for text in ["", "not a hash  m.onnx.zst\n", &format!("{}\n", "a".repeat(64))] {
            std::fs::write(&side, text).unwrap();
            let e = read(&p).unwrap_err();
            assert!(matches!(e, PackageError::BadSidecar { .. }), "{text:?}: {e}");
        }
        // Binary-mode marker and upper-case hex are sha256sum's too.
        let z = std::fs::read(&p).unwrap();
        std::fs::write(&side, format!("{} *m.onnx.zst\n", sha256_hex(&z).to_uppercase())).unwrap();
        assert!(read(&p).is_ok());
    }

    #[test]
    fn sha256_mismatch_names_both_hashes() {
        let d = tempfile::tempdir().unwrap();
        let p = write_package(d.path(), &payload());
        let side = sidecar_path(&p);
        let actual = sha256_hex(&std::fs::read(&p).unwrap());
        let wrong = "0".repeat(64);
        std::fs::write(&side, format!("{wrong}  m.onnx.zst\n")).unwrap();
        let e = read(&p).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, PackageError::Mismatch { .. }), "{msg}");
        assert!(
            msg.contains(&actual) && msg.contains(&wrong) && msg.contains("mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_stream_is_refused_even_with_a_matching_sidecar() {
        let d = tempfile::tempdir().unwrap();
        let model = payload();
        let p = write_package(d.path(), &model);
        let good = std::fs::read(&p).unwrap();
        let side = sidecar_path(&p);
        let mid = good.len() / 2;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("flipped bytes in the middle", {
                let mut z = good.clone();
                for b in &mut z[mid..mid + 8] {
                    *b ^= 0xa5;
                }
                z
            }),
            ("truncated", good[..mid].to_vec()),
            ("last byte (the checksum) changed", {
                let mut z = good.clone();
                if let Some(b) = z.last_mut() {
                    *b ^= 1;
                }
                z
            }),
            ("not zstd at all", b"hello, I am not zstd".to_vec()),
            (
                "trailing garbage",
                [good.as_slice(), b"garbage after the frame"].concat(),
            ),
        ];
        for (what, z) in cases {
            std::fs::write(&p, &z).unwrap();
            std::fs::write(&side, sidecar_text(&sha256_hex(&z), &p)).unwrap();
            match read(&p) {
                Err(e @ PackageError::Corrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&p.display().to_string()) && msg.contains("zstd"),
                        "{what}: {msg}"
                    );
                    assert!(
                        std::error::Error::source(&e).is_some(),
                        "{what}: the zstd error is kept"
                    );
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn decompressed_size_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let model = payload();
        let p = write_package(d.path(), &model);
        // Declared in the frame header: refused before decoding.
        let e = read_limited(&p, 1000).unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("declared"), "{e}");
        // Not declared (a streamed frame): refused once the output passes the limit.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &model).unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&z).unwrap(), None);
        let e = decompress(&p, &z, 1000).unwrap_err();
        assert!(matches!(e, PackageError::TooLarge { .. }), "{e}");
        assert_eq!(decompress(&p, &z, model.len() as u64).unwrap(), model);
    }
}
