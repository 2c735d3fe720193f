//! The detector model: an ONNX Runtime session, its validated input/output geometry and labels.
//! One owner thread (an `ort::Session` is `Send`, not `Sync`).

use half::f16;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{builder::GraphOptimizationLevel, builder::SessionBuilder, Session};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

use kestrel_vision::tensor::{TensorData, TensorMut};

use crate::ep::{EpError, EpKind, EpOptions, Selection, SkipReason, Skipped};
use crate::package::{self, PackageError};
use crate::runtime::Runtime;
use kestrel_vision::labels::{self, LabelsError};
use kestrel_vision::yolo::{self, Candidate, OutputLayout, YoloError};

/// Input size used when a model's spatial input dimensions are dynamic and its metadata does not say.
pub const DEFAULT_DYNAMIC_SIZE: u32 = 640;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model file {0} not found (run scripts/setup.sh to build the default model, or pass --model)")]
    NotFound(PathBuf),
    #[error("cannot load model {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: SessionError,
    },
    #[error("model {path}: unsupported input: {reason}")]
    Input { path: PathBuf, reason: Unsupported },
    #[error("model {path}: unsupported output: {source}")]
    Output { path: PathBuf, source: YoloError },
    #[error("model {path}: unsupported output: {reason}")]
    OutputType { path: PathBuf, reason: Unsupported },
    #[error("inference failed: {0}")]
    Run(#[source] ort::Error),
    #[error("inference failed: output {0} missing")]
    MissingOutput(String),
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error(transparent)]
    Ep(#[from] EpError),
}

/// Why ONNX Runtime could not make a session of a model file (or read its input shape).
#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Ort(#[from] ort::Error),
    /// A `.zst` model package that failed its checks ([`crate::package`]). Boxed: the error types that carry a
    /// model error stay small.
    #[error(transparent)]
    Package(Box<PackageError>),
    #[error("the model's first input is not a tensor")]
    InputNotTensor,
    #[error("input of rank {0}, expected 4")]
    InputRank(usize),
}

impl From<PackageError> for SessionError {
    fn from(e: PackageError) -> Self {
        Self::Package(Box::new(e))
    }
}

/// What a model's input or output has that Kestrel cannot use.
#[derive(Debug, Error)]
pub enum Unsupported {
    #[error("expected exactly one input, the model has {0}")]
    InputCount(usize),
    #[error("the model has no outputs")]
    NoOutputs,
    #[error("input and output must be tensors")]
    NotTensors,
    #[error("element type {0:?}, expected float32 or float16")]
    ElementType(TensorElementType),
    #[error("shape {0:?}; expected [1, 3, H, W] (NCHW RGB, fixed H and W, or both dynamic)")]
    InputShape(Vec<i64>),
}

/// Element type of the model's input (and output) tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
}

impl Precision {
    /// "fp32" / "fp16".
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "fp32",
            Self::F16 => "fp16",
        }
    }
}

/// ONNX Runtime session settings.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// Inter-op threads (parallel branches of the graph); 0 lets ONNX Runtime choose.
    pub inter_threads: usize,
    /// Let ONNX Runtime's idle worker threads spin (burns CPU other stages could use).
    pub spinning: bool,
    /// Execution providers, in order of preference (default: the CPU).
    pub ep: EpOptions,
    /// Bind input and output through an `IoBinding`, inputs in memory allocated by ONNX Runtime (pinned host
    /// memory under CUDA/TensorRT: DMA to the GPU without a staging copy; plain CPU memory on the CPU).
    pub io_binding: bool,
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

/// A model input tensor in the precision the model wants, CHW, batch 1. Preprocessing writes it in place: an
/// FP16 model gets FP16 values directly, with no FP32 intermediate.
#[derive(Debug)]
pub enum InputTensor {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Allocated by ONNX Runtime for an `IoBinding` ([`Detector::new_input`]): pinned (page-locked) host memory
    /// under CUDA/TensorRT, ordinary CPU memory on the CPU provider.
    BoundF32(Tensor<f32>),
    BoundF16(Tensor<f16>),
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
    /// The values.
    pub fn data(&self) -> TensorData<'_> {
        match self {
            Self::F32(v) => TensorData::F32(v),
            Self::F16(v) => TensorData::F16(v),
            Self::BoundF32(t) => TensorData::F32(t.extract_tensor().1),
            Self::BoundF16(t) => TensorData::F16(t.extract_tensor().1),
        }
    }

    /// The values, writable.
    pub fn data_mut(&mut self) -> TensorMut<'_> {
        match self {
            Self::F32(v) => TensorMut::F32(v),
            Self::F16(v) => TensorMut::F16(v),
            Self::BoundF32(t) => TensorMut::F32(t.extract_tensor_mut().1),
            Self::BoundF16(t) => TensorMut::F16(t.extract_tensor_mut().1),
        }
    }

    /// Write as a NumPy `.npy` file of shape `[1, 3, height, width]` (what the model saw; for debugging and
    /// for the reference tests).
    pub fn write_npy(&self, path: &Path, width: u32, height: u32) -> std::io::Result<()> {
        let (descr, bytes): (&str, Vec<u8>) = match self.data() {
            TensorData::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::F16(v) => ("<f2", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
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

/// IoBinding state: the binding, the allocator input tensors come from, where outputs go.
struct Binding {
    io: ort::session::IoBinding,
    allocator: Allocator,
    /// Kept for the binding's lifetime (outputs are bound to it).
    _output_memory: MemoryInfo<'static>,
    /// "pinned host memory" or "CPU memory", for the log.
    kind: &'static str,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

pub struct Detector {
    session: Session,
    pub info: ModelInfo,
    /// Which execution provider runs the model, what was skipped and why.
    pub selection: Selection,
    binding: Option<Binding>,
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

/// The session builder with the thread settings (no providers yet).
fn base_builder(rt: &Runtime, opts: &SessionOptions) -> ort::Result<SessionBuilder> {
    let mut builder = Session::builder(&rt.env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_op_spinning(opts.spinning)?
        .with_inter_op_spinning(opts.spinning)?;
    if opts.intra_threads > 0 {
        builder = builder.with_intra_threads(opts.intra_threads)?;
    }
    if opts.inter_threads > 0 {
        builder = builder.with_inter_threads(opts.inter_threads)?;
    }
    Ok(builder)
}

/// Where a session's model comes from: a model file, or the bytes of a `.zst` package, checked and
/// decompressed in memory ([`package::read`]).
enum ModelBytes<'a> {
    File(&'a Path),
    Memory(Vec<u8>),
}

impl<'a> ModelBytes<'a> {
    /// A path ending in `.zst` is a package; anything else is given to ONNX Runtime as a file.
    fn open(path: &'a Path) -> Result<Self, SessionError> {
        if package::is_package(path) {
            Ok(Self::Memory(package::read(path)?))
        } else {
            Ok(Self::File(path))
        }
    }

    fn commit(&self, mut builder: SessionBuilder) -> ort::Result<Session> {
        match self {
            Self::File(p) => builder.commit_from_file(p),
            Self::Memory(bytes) => builder.commit_from_memory(bytes),
        }
    }
}

/// The model's input shape as the engine-cache key wants it (N, C, H, W; 0 for dynamic), read from a
/// session without optimisation (cheap: no kernels are prepared). `path` may be a `.zst` package.
pub fn input_shape_of(rt: &Runtime, path: &Path) -> Result<[u32; 4], SessionError> {
    input_shape_from(rt, &ModelBytes::open(path)?)
}

fn input_shape_from(rt: &Runtime, model: &ModelBytes<'_>) -> Result<[u32; 4], SessionError> {
    let s = Session::builder(&rt.env)
        .and_then(|b| {
            b.with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(Into::into)
        })
        .and_then(|b| model.commit(b))?;
    let Some(ValueType::Tensor { shape, .. }) = s.inputs().first().map(|i| i.dtype()) else {
        return Err(SessionError::InputNotTensor);
    };
    let d: Vec<u32> = shape.iter().map(|v| u32::try_from(*v).unwrap_or(0)).collect();
    match d[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(SessionError::InputRank(d.len())),
    }
}

/// Create the session on the configured providers: register each checked provider explicitly (errors on),
/// and if session creation fails with a GPU provider, drop that provider (with its reason) and try again.
fn open_session(
    rt: &Runtime,
    path: &Path,
    opts: &SessionOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(Session, Selection), ModelError> {
    let load_err = |e: SessionError| ModelError::Load {
        path: path.to_path_buf(),
        source: e,
    };
    let ep = &opts.ep;
    let available = crate::ep::available_providers();
    let facts = crate::ep::probe_facts(&available, &rt.library, &ep.providers);
    let needs_shape = ep.providers.contains(&EpKind::Tensorrt) && crate::ep::precheck(EpKind::Tensorrt, &facts).is_ok();
    // A package is checked and decompressed once, here, and every try below builds from those bytes.
    let bytes = ModelBytes::open(path).map_err(load_err)?;
    let input_shape = if needs_shape {
        input_shape_from(rt, &bytes).map_err(load_err)?
    } else {
        [0; 4]
    };
    let model = crate::ep::ModelFacts { path, input_shape };
    let mut plan = crate::ep::plan(ep, &facts, &rt.version, &model)?;
    let mut skipped = std::mem::take(&mut plan.skipped);
    let mut entries = plan.entries;
    let skip = |skipped: &mut Vec<Skipped>, kind: EpKind, reason: SkipReason| -> Result<(), ModelError> {
        Ok(ep.skip(skipped, kind, reason)?)
    };
    let building = plan
        .engine
        .as_ref()
        .is_some_and(|e| matches!(e.state, crate::ep::EngineState::Building { .. }));
    let _ticker = building.then(|| {
        progress("building TensorRT engine (minutes on a Jetson; `kestrel build-engine` does it ahead of flight)");
        crate::ep::Ticker::start("building TensorRT engine".into(), std::time::Duration::from_secs(10))
    });
    loop {
        let mut builder = base_builder(rt, opts).map_err(|e| load_err(e.into()))?;
        let mut registered = Vec::new();
        let mut failed = None;
        for (kind, dispatch) in &entries {
            match builder.with_execution_providers([dispatch.clone()]) {
                Ok(b) => {
                    builder = b;
                    registered.push(*kind);
                }
                Err(e) => {
                    // The builder comes back only by giving the error up: keep a copy of it.
                    let reason = SkipReason::Registration(ort::Error::new_with_code(e.code(), e.message()));
                    builder = e.recover();
                    failed = Some((*kind, reason));
                    break;
                }
            }
        }
        if let Some((kind, reason)) = failed {
            skip(&mut skipped, kind, reason)?;
            entries.retain(|(k, _)| *k != kind);
            continue;
        }
        match bytes.commit(builder) {
            Ok(session) => {
                // Nothing registered (e.g. `["cuda"]` alone, skipped): ONNX Runtime's implicit CPU provider runs
                // it, and the skips say why.
                let active = registered.first().copied().unwrap_or(EpKind::Cpu);
                let engine = plan.engine.take().filter(|_| active == EpKind::Tensorrt);
                let selection = Selection {
                    active,
                    registered,
                    skipped,
                    precision: String::new(),
                    engine,
                };
                return Ok((session, selection));
            }
            Err(e) => match entries.iter().position(|(k, _)| *k != EpKind::Cpu) {
                Some(i) => {
                    let kind = entries.remove(i).0;
                    skip(&mut skipped, kind, SkipReason::SessionCreation(e))?;
                }
                None => return Err(load_err(e.into())),
            },
        }
    }
}

/// A session on `path` with no detector validation, on the configured execution providers (registered and
/// checked as for a detector): for tools that run or time arbitrary models, such as one-layer models.
pub fn plain_session(rt: &Runtime, path: &Path, opts: &SessionOptions) -> Result<(Session, Selection), ModelError> {
    open_session(rt, path, opts, &mut |_| {})
}

impl Detector {
    /// Load and validate a YOLO detection model: an ONNX file, or a `.zst` package (checked against the sha256
    /// beside it and decompressed in memory, [`crate::package`]). `labels_path` overrides the labels the model
    /// carries.
    pub fn load(
        rt: &Runtime,
        path: &Path,
        labels_path: Option<&Path>,
        opts: &SessionOptions,
    ) -> Result<Self, ModelError> {
        Self::load_with(rt, path, labels_path, opts, &mut |_| {})
    }

    /// [`Self::load`], telling `progress` about long steps (a TensorRT engine build).
    pub fn load_with(
        rt: &Runtime,
        path: &Path,
        labels_path: Option<&Path>,
        opts: &SessionOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::NotFound(path.to_path_buf()));
        }
        let (session, mut selection) = open_session(rt, path, opts, progress)?;
        let input_err = |reason: Unsupported| ModelError::Input {
            path: path.to_path_buf(),
            reason,
        };
        let out_err = |reason: Unsupported| ModelError::OutputType {
            path: path.to_path_buf(),
            reason,
        };
        let [input] = session.inputs() else {
            return Err(input_err(Unsupported::InputCount(session.inputs().len())));
        };
        let Some(output) = session.outputs().first() else {
            return Err(out_err(Unsupported::NoOutputs));
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
            return Err(input_err(Unsupported::NotTensors));
        };
        let in_shape: Vec<i64> = in_shape.iter().copied().collect();
        let input_precision = precision_of(*in_ty).ok_or_else(|| input_err(Unsupported::ElementType(*in_ty)))?;
        let output_precision = precision_of(*out_ty).ok_or_else(|| out_err(Unsupported::ElementType(*out_ty)))?;

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
            _ => return Err(input_err(Unsupported::InputShape(in_shape))),
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
        selection.precision = match selection.active {
            EpKind::Tensorrt => opts.ep.tensorrt.precision().to_string(),
            _ => input_precision.name().to_string(),
        };
        let binding = if opts.io_binding {
            Some(
                Binding::new(&session, selection.active, &opts.ep).map_err(|e| ModelError::Load {
                    path: path.to_path_buf(),
                    source: e.into(),
                })?,
            )
        } else {
            None
        };
        let mut detector = Self {
            session,
            info: info.clone(),
            selection,
            binding,
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
        let sel = &detector.selection;
        let io = detector
            .binding
            .as_ref()
            .map_or("plain run".into(), |b| format!("IoBinding, inputs in {}", b.kind));
        match sel.fallback_note() {
            None => log::info!(
                "execution provider {} ({}; registered: {}; {io})",
                sel.active,
                sel.precision,
                crate::ep::names_of(&sel.registered)
            ),
            Some(note) => log::warn!("execution provider {} ({}; {io}): {note}", sel.active, sel.precision),
        }
        if matches!(
            detector.selection.engine.as_ref().map(|e| &e.state),
            Some(crate::ep::EngineState::Building { .. })
        ) {
            // TensorRT may defer part of the build to the first run: run once, then commit the engine files.
            let _ticker = crate::ep::Ticker::start(
                "building TensorRT engine (first run)".into(),
                std::time::Duration::from_secs(10),
            );
            detector.warm_up(1)?;
            detector.selection.commit_engine();
        }
        Ok(detector)
    }

    /// A blank input tensor for this detector: allocated by ONNX Runtime when IoBinding is on (pinned memory
    /// under CUDA/TensorRT), else a plain vector.
    pub fn new_input(&self) -> InputTensor {
        match &self.binding {
            None => InputTensor::for_model(&self.info),
            Some(b) => b.new_tensor(&self.info).unwrap_or_else(|e| {
                log::warn!("cannot allocate a bound input tensor ({e}); using plain memory for this one");
                InputTensor::for_model(&self.info)
            }),
        }
    }

    /// True when inference goes through an `IoBinding`.
    pub fn io_binding(&self) -> bool {
        self.binding.is_some()
    }

    fn probe_output_shape(&mut self) -> Result<Vec<i64>, ModelError> {
        let input = self.new_input();
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
        let run_err = ModelError::Run;
        let name = self.info.input_name.as_str();
        let outputs = match (input, self.binding.as_mut()) {
            (InputTensor::BoundF32(t), Some(b)) => {
                b.io.bind_input(name, t).map_err(run_err)?;
                self.session.run_binding(&b.io)
            }
            (InputTensor::BoundF16(t), Some(b)) => {
                b.io.bind_input(name, t).map_err(run_err)?;
                self.session.run_binding(&b.io)
            }
            (InputTensor::BoundF32(t), None) => self.session.run(ort::inputs![name => t]),
            (InputTensor::BoundF16(t), None) => self.session.run(ort::inputs![name => t]),
            (InputTensor::F32(v), _) => {
                let t = TensorRef::from_array_view((shape, v.as_slice())).map_err(run_err)?;
                self.session.run(ort::inputs![name => t])
            }
            (InputTensor::F16(v), _) => {
                let t = TensorRef::from_array_view((shape, v.as_slice())).map_err(run_err)?;
                self.session.run(ort::inputs![name => t])
            }
        }
        .map_err(run_err)?;
        let value = outputs
            .get(self.info.output_name.as_str())
            .ok_or_else(|| ModelError::MissingOutput(self.info.output_name.clone()))?;
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
        let input = self.new_input();
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

impl Binding {
    fn new(session: &Session, active: EpKind, ep: &EpOptions) -> ort::Result<Self> {
        let mut io = session.create_binding()?;
        let (allocator, output_memory, kind) = match active {
            EpKind::Cuda | EpKind::Tensorrt => {
                let device = match active {
                    EpKind::Tensorrt => ep.tensorrt.device_id,
                    _ => ep.cuda.device_id,
                } as i32;
                let input = MemoryInfo::new(
                    AllocationDevice::CUDA_PINNED,
                    device,
                    AllocatorType::Device,
                    MemoryType::CPUInput,
                )?;
                let output = MemoryInfo::new(
                    AllocationDevice::CUDA_PINNED,
                    device,
                    AllocatorType::Device,
                    MemoryType::CPUOutput,
                )?;
                (Allocator::new(session, input)?, output, "pinned host memory")
            }
            EpKind::Cpu => (
                Allocator::default(),
                MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)?,
                "CPU memory",
            ),
        };
        for o in session.outputs() {
            io.bind_output_to_device(o.name(), &output_memory)?;
        }
        Ok(Self {
            io,
            allocator,
            _output_memory: output_memory,
            kind,
        })
    }

    fn new_tensor(&self, info: &ModelInfo) -> ort::Result<InputTensor> {
        let shape = [1usize, 3, info.input_height as usize, info.input_width as usize];
        Ok(match info.input_precision {
            Precision::F32 => {
                let mut t = Tensor::<f32>::new(&self.allocator, shape)?;
                t.extract_tensor_mut().1.fill(0.0);
                InputTensor::BoundF32(t)
            }
            Precision::F16 => {
                let mut t = Tensor::<f16>::new(&self.allocator, shape)?;
                t.extract_tensor_mut().1.fill(f16::ZERO);
                InputTensor::BoundF16(t)
            }
        })
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
