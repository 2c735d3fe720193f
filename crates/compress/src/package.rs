//! `kestrel compress --package`: the written model also as `OUT.zst` and `OUT.zst.sha256`, in the format that
//! [`kestrel_infer::package`] reads (zstd with the frame checksum; the sidecar in `sha256sum` format), each
//! file written atomically. The package first, then its checksum: a reader that meets a new package with the
//! old checksum refuses it (sha256 mismatch); it never loads a model that was not checked.

use std::path::Path;

use thiserror::Error;

use crate::model::{write_atomic, ModelFileError};
use kestrel_infer::package::{self, PackageError};

#[derive(Debug, Error)]
pub enum PackError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    File(#[from] ModelFileError),
}

/// What `--package` wrote.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Packaged {
    /// `OUT.zst`.
    pub path: String,
    /// `OUT.zst.sha256`.
    pub sidecar: String,
    /// Size of `OUT.zst`.
    pub bytes: u64,
    /// SHA-256 of `OUT.zst` (what the sidecar records).
    pub sha256: String,
    /// Size of the model it decompresses to.
    pub model_bytes: u64,
    pub zstd_level: i32,
}

/// Compress `model` (the bytes written to `out`) at [`package::LEVEL`] and write the package beside `out`.
pub fn write_package(out: &Path, model: &[u8]) -> Result<Packaged, PackError> {
    let zst = package::encode(model, package::LEVEL)?;
    Ok(write_encoded(out, model.len(), &zst, package::LEVEL)?)
}

/// Write `zst` (already [`package::encode`]d from a model of `model_bytes` bytes at `level`) as the package
/// of `out`, then its checksum file.
pub fn write_encoded(out: &Path, model_bytes: usize, zst: &[u8], level: i32) -> Result<Packaged, ModelFileError> {
    let path = package::package_path(out);
    let sidecar = package::sidecar_path(&path);
    let sha256 = package::sha256_hex(zst);
    write_atomic(&path, zst)?;
    write_atomic(&sidecar, package::sidecar_text(&sha256, &path).as_bytes())?;
    Ok(Packaged {
        path: path.display().to_string(),
        sidecar: sidecar.display().to_string(),
        bytes: zst.len() as u64,
        sha256,
        model_bytes: model_bytes as u64,
        zstd_level: level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_package_reads_back_and_sha256sum_format() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m.onnx");
        let model: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        let p = write_package(&out, &model).unwrap();
        assert_eq!(p.path, d.path().join("m.onnx.zst").display().to_string());
        assert_eq!(kestrel_infer::package::read(Path::new(&p.path)).unwrap(), model);
        let text = std::fs::read_to_string(&p.sidecar).unwrap();
        assert_eq!(text, format!("{}  m.onnx.zst\n", p.sha256));
        assert_eq!(p.bytes, std::fs::metadata(&p.path).unwrap().len());
        // Only the two files (no temporary file left); the model itself is the caller's to write.
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["m.onnx.zst", "m.onnx.zst.sha256"]);
    }
}
