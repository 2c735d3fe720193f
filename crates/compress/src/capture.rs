//! The layers' real inputs: run the original model in ONNX Runtime (CPU, float32) with the convolutions'
//! input tensors exposed as extra outputs, on each calibration frame, and fold them into [`PatchStats`].

use std::collections::HashMap;

use ort::session::Session;
use ort::value::TensorRef;
use prost::Message as _;
use thiserror::Error;

use crate::graph::{with_outputs, Conv};
use crate::onnx::ModelProto;
use crate::stats::PatchStats;
use kestrel_infer::runtime::Runtime;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("cannot open the model with its intermediate tensors exposed: {0}")]
    Session(#[source] ort::Error),
    #[error("running the model on a calibration frame: {0}")]
    Run(#[source] ort::Error),
    #[error("the model did not output `{0}`")]
    Missing(String),
    #[error("`{name}` has shape {shape:?}, not [1, {channels}, H, W]")]
    Shape {
        name: String,
        shape: Vec<i64>,
        channels: usize,
    },
}

/// What a layer saw: its input size and statistics.
pub struct Captured {
    /// Input height and width.
    pub size: (usize, usize),
    pub stats: PatchStats,
}

/// Runs the model with every listed convolution's input exposed.
pub struct Capture {
    session: Session,
    input_name: String,
    convs: Vec<Conv>,
    /// Per conv (same order): input size and statistics so far.
    pub layers: Vec<Option<Captured>>,
    pub frames: usize,
}

impl Capture {
    pub fn new(rt: &Runtime, model: &ModelProto, convs: &[Conv]) -> Result<Self, CaptureError> {
        let mut names: Vec<String> = convs.iter().map(|c| c.input.clone()).collect();
        names.sort();
        names.dedup();
        let bytes = with_outputs(model, &names).encode_to_vec();
        let session = Session::builder(&rt.env)
            .and_then(|mut b| b.commit_from_memory(&bytes))
            .map_err(CaptureError::Session)?;
        let input_name = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        Ok(Self {
            session,
            input_name,
            convs: convs.to_vec(),
            layers: convs.iter().map(|_| None).collect(),
            frames: 0,
        })
    }

    /// Run one preprocessed frame (1×3×h×w float32) and add what each layer saw.
    pub fn add_frame(&mut self, tensor: &[f32], h: usize, w: usize) -> Result<(), CaptureError> {
        let t = TensorRef::from_array_view(([1usize, 3, h, w], tensor)).map_err(CaptureError::Run)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => t])
            .map_err(CaptureError::Run)?;
        let mut seen: HashMap<&str, (Vec<i64>, &[f32])> = HashMap::new();
        for conv in &self.convs {
            if seen.contains_key(conv.input.as_str()) {
                continue;
            }
            let v = outputs
                .get(conv.input.as_str())
                .ok_or_else(|| CaptureError::Missing(conv.input.clone()))?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(CaptureError::Run)?;
            seen.insert(conv.input.as_str(), (shape.to_vec(), data));
        }
        for (conv, layer) in self.convs.iter().zip(self.layers.iter_mut()) {
            let Some((shape, data)) = seen.get(conv.input.as_str()) else {
                continue;
            };
            let bad = || CaptureError::Shape {
                name: conv.input.clone(),
                shape: shape.clone(),
                channels: conv.in_channels(),
            };
            let [1, c, lh, lw] = shape[..] else {
                return Err(bad());
            };
            if usize::try_from(c).ok() != Some(conv.in_channels()) {
                return Err(bad());
            }
            let (lh, lw) = (
                usize::try_from(lh).map_err(|_| bad())?,
                usize::try_from(lw).map_err(|_| bad())?,
            );
            let l = layer.get_or_insert_with(|| Captured {
                size: (lh, lw),
                stats: PatchStats::new(conv.in_channels() * conv.taps()),
            });
            if l.size != (lh, lw) {
                return Err(bad());
            }
            l.stats.add_image(conv, data, lh, lw);
        }
        self.frames += 1;
        Ok(())
    }
}

/// A C×H×W tensor mirrored left to right (a calibration frame's mirror image is as natural a frame).
pub fn mirror(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * h * w);
    for row in x.chunks_exact(w).take(c * h) {
        out.extend(row.iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mirror_reverses_rows() {
        assert_eq!(
            super::mirror(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1, 2, 3),
            vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]
        );
    }
}
