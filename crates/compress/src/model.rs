//! ONNX models in and out: decode with clear errors, float initializers, metadata, and atomic writes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use sha2::Digest as _;
use thiserror::Error;

use crate::onnx::{tensor_proto, ModelProto, StringStringEntryProto, TensorProto};

/// ONNX's `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = tensor_proto::DataType::Float as i32;
/// ONNX's `TensorProto.DataType.INT64`.
pub const INT64: i32 = tensor_proto::DataType::Int64 as i32;

#[derive(Debug, Error)]
pub enum ModelFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("{path} is not an ONNX model (truncated or not protobuf): {source}")]
    Decode { path: PathBuf, source: prost::DecodeError },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the output {0} is the input model: write the compressed model to another file")]
    SameFile(PathBuf),
    #[error("the output's directory {dir} does not exist")]
    NoDirectory { dir: PathBuf },
}

/// An initializer's float values could not be read.
#[derive(Debug, Error)]
pub enum TensorError {
    #[error("initializer `{name}` is {kind}, not float32")]
    NotFloat { name: String, kind: String },
    #[error("initializer `{name}` is stored outside the model file (external data is not supported)")]
    External { name: String },
    #[error("initializer `{name}` has {got} values for shape {dims:?}")]
    Size { name: String, dims: Vec<i64>, got: usize },
}

/// A decoded model and the SHA-256 of the file it came from.
pub struct OnnxModel {
    pub path: PathBuf,
    pub sha256: String,
    pub proto: ModelProto,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl OnnxModel {
    /// Read and decode `path`, checking that it is a model with a graph.
    pub fn load(path: &Path) -> Result<Self, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(path, &bytes)
    }

    /// Decode bytes read from `path` (named in errors).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, ModelFileError> {
        let not = |reason: &str| ModelFileError::NotOnnx {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.is_empty() {
            return Err(not("the file is empty"));
        }
        let proto = ModelProto::decode(bytes).map_err(|source| ModelFileError::Decode {
            path: path.to_path_buf(),
            source,
        })?;
        // Protobuf decodes many byte strings without error; a model has an IR version, an opset and a graph
        // with at least one node and one output.
        if proto.ir_version.unwrap_or(0) <= 0 {
            return Err(not("no IR version"));
        }
        if proto.opset_import.is_empty() {
            return Err(not("no operator set"));
        }
        let Some(graph) = &proto.graph else {
            return Err(not("no graph"));
        };
        if graph.node.is_empty() || graph.output.is_empty() {
            return Err(not("the graph has no nodes or no outputs"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            sha256: sha256_hex(bytes),
            proto,
        })
    }

    /// The encoded model.
    pub fn encode(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.proto
            .metadata_props
            .iter()
            .find(|p| p.key.as_deref() == Some(key))
            .and_then(|p| p.value.as_deref())
    }

    /// Set (or replace) a metadata value.
    pub fn set_metadata(&mut self, key: &str, value: String) {
        let props = &mut self.proto.metadata_props;
        match props.iter_mut().find(|p| p.key.as_deref() == Some(key)) {
            Some(p) => p.value = Some(value),
            None => props.push(StringStringEntryProto {
                key: Some(key.to_string()),
                value: Some(value),
            }),
        }
    }
}

/// The float32 values of an initializer (raw little-endian bytes or `float_data`).
pub fn floats(t: &TensorProto) -> Result<Vec<f32>, TensorError> {
    let name = t.name().to_string();
    if t.data_location() == tensor_proto::DataLocation::External {
        return Err(TensorError::External { name });
    }
    if t.data_type() != FLOAT {
        let kind = tensor_proto::DataType::try_from(t.data_type())
            .map(|d| d.as_str_name().to_lowercase())
            .unwrap_or_else(|_| format!("data type {}", t.data_type()));
        return Err(TensorError::NotFloat { name, kind });
    }
    let v: Vec<f32> = match &t.raw_data {
        Some(raw) if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => t.float_data.clone(),
    };
    let want: i64 = t.dims.iter().product();
    if usize::try_from(want).ok() != Some(v.len()) {
        return Err(TensorError::Size {
            name,
            dims: t.dims.clone(),
            got: v.len(),
        });
    }
    Ok(v)
}

/// The int64 values of an initializer (raw little-endian bytes or `int64_data`), `None` if it is not int64.
pub fn int64s(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type() != INT64 || t.data_location() == tensor_proto::DataLocation::External {
        return None;
    }
    match &t.raw_data {
        Some(raw) if !raw.is_empty() => Some(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        _ => Some(t.int64_data.clone()),
    }
}

/// A 1-D int64 initializer.
pub fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(INT64),
        name: Some(name.to_string()),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A float32 initializer stored as raw little-endian bytes.
pub fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(FLOAT),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// Check that `out` may be written for input `input`: not the same file, and its directory exists.
pub fn check_output(input: &Path, out: &Path) -> Result<(), ModelFileError> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(out)) {
        (Ok(a), Ok(b)) => a == b,
        _ => input == out,
    };
    if same {
        return Err(ModelFileError::SameFile(out.to_path_buf()));
    }
    let dir = parent_dir(out);
    if !dir.is_dir() {
        return Err(ModelFileError::NoDirectory { dir });
    }
    Ok(())
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, synced, then renamed over
/// `path`. A reader never sees a partial file, and a failure leaves nothing behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelFileError> {
    let werr = |source| ModelFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(ModelFileError::NoDirectory { dir });
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".kestrel-compress-")
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(werr)?;
    tmp.write_all(bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_and_size_is_checked() {
        let t = float_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!(floats(&t).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        let mut bad = t.clone();
        bad.dims = vec![7];
        assert!(matches!(floats(&bad), Err(TensorError::Size { .. })));
        let mut int = t;
        int.data_type = Some(tensor_proto::DataType::Int64 as i32);
        let e = floats(&int).unwrap_err().to_string();
        assert!(e.contains("int64"), "{e}");
    }

    #[test]
    fn garbage_and_empty_files_are_not_models() {
        let p = Path::new("x.onnx");
        assert!(matches!(OnnxModel::decode(p, b""), Err(ModelFileError::NotOnnx { .. })));
        let e = OnnxModel::decode(p, b"hello, I am not a model\n").err().unwrap();
        assert!(e.to_string().contains("x.onnx"), "{e}");
    }

    #[test]
    fn atomic_write_refuses_missing_directory_and_leaves_no_partial_file() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("no/such/dir/out.onnx");
        assert!(matches!(
            write_atomic(&missing, b"x"),
            Err(ModelFileError::NoDirectory { .. })
        ));
        let out = d.path().join("out.onnx");
        write_atomic(&out, b"abc").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abc");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(matches!(check_output(&out, &out), Err(ModelFileError::SameFile(_))));
    }
}
