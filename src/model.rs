//! The detector model: an ONNX Runtime session, its validated input/output geometry and labels.
//! One owner thread (an `ort::Session` is `Send`, not `Sync`).

use half::f16;
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::labels::{self, LabelsError};
use crate::runtime::Runtime;
use crate::yolo::{self, Candidate, OutputLayout, YoloError};

/// Input size used when a model's spatial input dimensions are dynamic and its metadata does not say.
pub const DEFAULT_DYNAMIC_SIZE: u32 = 640;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model file {0} not found (run scripts/setup.sh to build the default model, or pass --model)")]
    NotFound(PathBuf),
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("model {path}: unsupported input: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("model {path}: unsupported output: {source}")]
    Output { path: PathBuf, source: YoloError },
    #[error("model {path}: unsupported output: {reason}")]
    OutputType { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error(transparent)]
    Labels(#[from] LabelsError),
}

/// Element type of the model's input (and output) tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
}

/// ONNX Runtime session settings.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Let ONNX Runtime's idle worker threads spin (burns CPU other stages could use).
    pub spinning: bool,
}

/// What the loaded model is and how to feed it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub input_name: String,
    pub output_name: String,
    pub input_width: u32,
    pub input_height: u32,
    pub input_precision: Precision,
    pub output_precision: Precision,
    pub layout: OutputLayout,
    pub labels: Vec<String>,
    /// Where the labels came from (file path, "model metadata" or "none").
    pub labels_source: String,
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: input {}x{} {:?}, output {:?}, {} labels ({})",
            self.path.display(),
            self.input_width,
            self.input_height,
            self.input_precision,
            self.layout,
            self.labels.len(),
            self.labels_source
        )
    }
}

/// A model input tensor in the precision the model wants, CHW, batch 1.
#[derive(Clone, Debug)]
pub enum InputTensor {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl InputTensor {
    /// A zeroed tensor of the model's input size and precision.
    pub fn for_model(info: &ModelInfo) -> Self {
        let n = 3 * info.input_width as usize * info.input_height as usize;
        match info.input_precision {
            Precision::F32 => Self::F32(vec![0.0; n]),
            Precision::F16 => Self::F16(vec![f16::ZERO; n]),
        }
    }
}

impl InputTensor {
    /// Write as a NumPy `.npy` file of shape `[1, 3, height, width]` (what the model saw; for debugging and
    /// for the reference tests).
    pub fn write_npy(&self, path: &Path, width: u32, height: u32) -> std::io::Result<()> {
        let (descr, bytes): (&str, Vec<u8>) = match self {
            Self::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Self::F16(v) => ("<f2", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1, 3, {height}, {width}), }}");
        // Magic (6) + version (2) + length (2) + header must be a multiple of 64, header ends in '\n'.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + bytes.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&bytes);
        std::fs::write(path, out)
    }
}

/// How long [`Detector::infer`] spent in ONNX Runtime and in YOLO decoding.
#[derive(Clone, Copy, Debug, Default)]
pub struct InferTimes {
    pub run: Duration,
    pub decode: Duration,
}

pub struct Detector {
    session: Session,
    pub info: ModelInfo,
}

fn precision_of(ty: TensorElementType) -> Option<Precision> {
    match ty {
        TensorElementType::Float32 => Some(Precision::F32),
        TensorElementType::Float16 => Some(Precision::F16),
        _ => None,
    }
}

/// `"[640, 640]"` or `"640"` (Ultralytics `imgsz` metadata) → (height, width).
fn parse_imgsz(text: &str) -> Option<(u32, u32)> {
    let nums: Vec<u32> = text
        .trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')')
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    match nums[..] {
        [s] => Some((s, s)),
        [h, w] => Some((h, w)),
        _ => None,
    }
}

impl Detector {
    /// Load and validate a YOLO detection model. `labels_path` overrides the labels the model carries.
    pub fn load(
        rt: &Runtime,
        path: &Path,
        labels_path: Option<&Path>,
        opts: &SessionOptions,
    ) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let load_err = |e: &dyn std::fmt::Display| ModelError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(&rt.env)
            .map_err(|e| load_err(&e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(&e))?
            .with_intra_op_spinning(opts.spinning)
            .map_err(|e| load_err(&e))?
            .with_inter_op_spinning(opts.spinning)
            .map_err(|e| load_err(&e))?;
        if opts.intra_threads > 0 {
            builder = builder
                .with_intra_threads(opts.intra_threads)
                .map_err(|e| load_err(&e))?;
        }
        let session = builder.commit_from_file(path).map_err(|e| load_err(&e))?;

        let input_err = |reason: String| ModelError::Input {
            path: path.to_path_buf(),
            reason,
        };
        let out_err = |reason: String| ModelError::OutputType {
            path: path.to_path_buf(),
            reason,
        };
        let [input] = session.inputs() else {
            return Err(input_err(format!(
                "expected exactly one input, the model has {}",
                session.inputs().len()
            )));
        };
        let Some(output) = session.outputs().first() else {
            return Err(out_err("the model has no outputs".into()));
        };
        let (
            ValueType::Tensor {
                ty: in_ty,
                shape: in_shape,
                ..
            },
            ValueType::Tensor {
                ty: out_ty,
                shape: out_shape,
                ..
            },
        ) = (input.dtype(), output.dtype())
        else {
            return Err(input_err("input and output must be tensors".into()));
        };
        let in_shape: Vec<i64> = in_shape.iter().copied().collect();
        let input_precision = precision_of(*in_ty)
            .ok_or_else(|| input_err(format!("element type {in_ty:?}, expected float32 or float16")))?;
        let output_precision = precision_of(*out_ty)
            .ok_or_else(|| out_err(format!("element type {out_ty:?}, expected float32 or float16")))?;

        let (meta_imgsz, meta_names) = match session.metadata() {
            Ok(m) => (m.custom("imgsz"), m.custom("names")),
            Err(_) => (None, None),
        };
        let (input_height, input_width) = match in_shape[..] {
            [1 | -1, 3, h, w] if h > 0 && w > 0 => (h as u32, w as u32),
            [1 | -1, 3, -1, -1] => {
                let (h, w) = meta_imgsz
                    .as_deref()
                    .and_then(parse_imgsz)
                    .unwrap_or((DEFAULT_DYNAMIC_SIZE, DEFAULT_DYNAMIC_SIZE));
                log::info!("model input is dynamic {in_shape:?}; using {w}x{h}");
                (h, w)
            }
            _ => {
                return Err(input_err(format!(
                    "shape {in_shape:?}; expected [1, 3, H, W] (NCHW RGB, fixed H and W, or both dynamic)"
                )))
            }
        };

        let (labels, labels_source) = match labels_path {
            Some(p) => (labels::read_names_file(p)?, p.display().to_string()),
            None => match meta_names.as_deref().and_then(labels::parse_names_metadata) {
                Some(names) => (names, "model metadata".to_string()),
                None => (Vec::new(), "none".to_string()),
            },
        };
        let hint = (!labels.is_empty()).then_some(labels.len());

        let out_dims: Vec<i64> = out_shape.iter().copied().collect();
        let mut info = ModelInfo {
            path: path.to_path_buf(),
            input_name: input.name().to_string(),
            output_name: output.name().to_string(),
            input_width,
            input_height,
            input_precision,
            output_precision,
            layout: OutputLayout::Yolov5 { rows: 0, classes: 0 },
            labels,
            labels_source,
        };
        let mut detector = Self {
            session,
            info: info.clone(),
        };
        // A fully static output shape settles the layout; otherwise run once on a blank input and look.
        let dims = if out_dims.iter().all(|d| *d > 0) {
            out_dims
        } else {
            detector.probe_output_shape()?
        };
        info.layout = OutputLayout::from_shape(&dims, hint)
            .or_else(|e| {
                if hint.is_some() {
                    OutputLayout::from_shape(&dims, None).map_err(|_| e)
                } else {
                    Err(e)
                }
            })
            .map_err(|source| ModelError::Output {
                path: path.to_path_buf(),
                source,
            })?;
        if !info.labels.is_empty() && info.labels.len() != info.layout.classes() {
            log::warn!(
                "{} labels from {} but the model has {} classes; unnamed classes are reported as class<N>",
                info.labels.len(),
                info.labels_source,
                info.layout.classes()
            );
        }
        detector.info = info;
        Ok(detector)
    }

    fn probe_output_shape(&mut self) -> Result<Vec<i64>, ModelError> {
        let input = InputTensor::for_model(&self.info);
        self.with_output(&input, |shape, _| Ok(shape.to_vec()))
    }

    /// Run the session on `input` and hand the first output (shape, values) to `f`.
    fn with_output<R>(
        &mut self,
        input: &InputTensor,
        f: impl FnOnce(&[i64], OutputSlice<'_>) -> Result<R, ModelError>,
    ) -> Result<R, ModelError> {
        let shape = [
            1usize,
            3,
            self.info.input_height as usize,
            self.info.input_width as usize,
        ];
        let run_err = |e: ort::Error| ModelError::Run(e.to_string());
        let outputs = match input {
            InputTensor::F32(v) => {
                let t = TensorRef::from_array_view((shape, v.as_slice())).map_err(run_err)?;
                self.session.run(ort::inputs![self.info.input_name.as_str() => t])
            }
            InputTensor::F16(v) => {
                let t = TensorRef::from_array_view((shape, v.as_slice())).map_err(run_err)?;
                self.session.run(ort::inputs![self.info.input_name.as_str() => t])
            }
        }
        .map_err(run_err)?;
        let value = outputs
            .get(self.info.output_name.as_str())
            .ok_or_else(|| ModelError::Run(format!("output {} missing", self.info.output_name)))?;
        match self.info.output_precision {
            Precision::F32 => {
                let (s, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
                f(s, OutputSlice::F32(data))
            }
            Precision::F16 => {
                let (s, data) = value.try_extract_tensor::<f16>().map_err(run_err)?;
                f(s, OutputSlice::F16(data))
            }
        }
    }

    /// Run the model and decode its output into `candidates` (model-input pixels, score > `conf`).
    pub fn infer(
        &mut self,
        input: &InputTensor,
        conf: f32,
        candidates: &mut Vec<Candidate>,
    ) -> Result<InferTimes, ModelError> {
        let layout = self.info.layout;
        let path = self.info.path.clone();
        let t0 = Instant::now();
        let mut times = InferTimes::default();
        self.with_output(input, |_, out| {
            let t1 = Instant::now();
            times.run = t1 - t0;
            let r = match out {
                OutputSlice::F32(d) => yolo::decode(layout, d, conf, candidates),
                OutputSlice::F16(d) => yolo::decode(layout, d, conf, candidates),
            };
            times.decode = t1.elapsed();
            r.map_err(|source| ModelError::Output { path, source })
        })?;
        Ok(times)
    }

    /// Run the model `n` times on a blank input (the first runs allocate and pick kernels; a GPU execution
    /// provider builds its engine): later runs take their steady-state time. Returns each run's time.
    pub fn warm_up(&mut self, n: usize) -> Result<Vec<std::time::Duration>, ModelError> {
        let input = InputTensor::for_model(&self.info);
        let mut candidates = Vec::new();
        (0..n)
            .map(|_| {
                let t0 = Instant::now();
                self.infer(&input, 1.0, &mut candidates)?;
                Ok(t0.elapsed())
            })
            .collect()
    }

    /// Raw first output, converted to f32 (for tests and tools; allocates).
    pub fn raw_output(&mut self, input: &InputTensor) -> Result<(Vec<i64>, Vec<f32>), ModelError> {
        self.with_output(input, |shape, out| Ok((shape.to_vec(), out.to_f32_vec())))
    }
}

/// A borrowed model output in its own precision.
enum OutputSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl OutputSlice<'_> {
    fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Self::F32(d) => d.to_vec(),
            Self::F16(d) => d.iter().map(|v| v.to_f32()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imgsz_metadata() {
        assert_eq!(parse_imgsz("[640, 480]"), Some((640, 480)));
        assert_eq!(parse_imgsz("416"), Some((416, 416)));
        assert_eq!(parse_imgsz("[a, b]"), None);
        assert_eq!(parse_imgsz("[1, 2, 3]"), None);
    }
}
