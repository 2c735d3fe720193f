//! Still-image detection (`kestrel detect`): decode → letterbox → infer → YOLO decode → NMS → image pixels.

use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::decode::{decode_image, DecodeError, RgbImage};
use crate::labels::label_for;
use crate::letterbox::{Letterbox, LetterboxError, Preprocessor};
use crate::model::{Detector, InputTensor, ModelError};
use crate::nms::nms;
use crate::yolo::Candidate;
use crate::Detection;

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot decode {path}: {source}")]
    Decode { path: String, source: DecodeError },
    #[error(transparent)]
    Letterbox(#[from] LetterboxError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Post-processing thresholds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Thresholds {
    /// Minimum score (strictly greater), 0..1.
    pub conf: f32,
    /// NMS IoU above which a same-class box is suppressed, 0..1.
    pub iou: f32,
    /// At most this many detections per image.
    pub max_detections: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            conf: 0.25,
            iou: 0.45,
            max_detections: 300,
        }
    }
}

/// Per-stage wall times of one image, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    pub decode: f64,
    pub preprocess: f64,
    pub infer: f64,
    pub postprocess: f64,
    pub total: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The JSON object `kestrel detect` prints per image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageReport {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub model: String,
    pub times_ms: StageTimes,
    pub detections: Vec<Detection>,
}

/// NMS the candidates (model pixels) and map the survivors to source-image pixels. Pure.
pub fn finish_detections(
    candidates: &mut [Candidate],
    lb: &Letterbox,
    thresholds: &Thresholds,
    labels: &[String],
) -> Vec<Detection> {
    nms(candidates, thresholds.iou, thresholds.max_detections)
        .into_iter()
        .map(|c| Detection {
            class_id: c.class_id,
            label: label_for(labels, c.class_id),
            score: c.score,
            bbox: lb.image_box_from_model(c.bbox),
        })
        .collect()
}

/// A detector plus the reusable buffers it needs for still images.
pub struct ImageDetector {
    pub detector: Detector,
    pub thresholds: Thresholds,
    pre: Preprocessor,
    input: InputTensor,
    candidates: Vec<Candidate>,
}

impl ImageDetector {
    pub fn new(detector: Detector, thresholds: Thresholds) -> Self {
        let input = InputTensor::for_model(&detector.info);
        Self {
            detector,
            thresholds,
            pre: Preprocessor::new(),
            input,
            candidates: Vec::new(),
        }
    }

    /// Run the model `n` times on a blank input so that later timings are steady-state.
    pub fn warm_up(&mut self, n: usize) -> Result<(), ModelError> {
        for _ in 0..n {
            self.detector
                .infer(&self.input, 1.0, &mut self.candidates)?;
        }
        Ok(())
    }

    /// Detect on a decoded image. Fills `times` except `decode` and `total`.
    pub fn detect_rgb(
        &mut self,
        rgb: &RgbImage,
        times: &mut StageTimes,
    ) -> Result<Vec<Detection>, DetectError> {
        let t0 = Instant::now();
        let info = &self.detector.info;
        let lb = Letterbox::new(rgb.width, rgb.height, info.input_width, info.input_height)?;
        match &mut self.input {
            InputTensor::F32(t) => self.pre.letterbox_into(&rgb.data, &lb, t)?,
            InputTensor::F16(t) => self.pre.letterbox_into(&rgb.data, &lb, t)?,
        }
        let t1 = Instant::now();
        let it = self
            .detector
            .infer(&self.input, self.thresholds.conf, &mut self.candidates)?;
        let t2 = Instant::now();
        let dets = finish_detections(
            &mut self.candidates,
            &lb,
            &self.thresholds,
            &self.detector.info.labels,
        );
        times.preprocess = ms(t1 - t0);
        times.infer = ms(it.run);
        times.postprocess = ms(it.decode + t2.elapsed());
        Ok(dets)
    }

    /// The input tensor of the last image (what the model saw).
    pub fn last_input(&self) -> &InputTensor {
        &self.input
    }

    /// Read, decode and detect one image file.
    pub fn detect_file(&mut self, path: &Path) -> Result<ImageReport, DetectError> {
        let name = path.display().to_string();
        let t0 = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| DetectError::Read {
            path: name.clone(),
            source,
        })?;
        let rgb = decode_image(&bytes).map_err(|source| DetectError::Decode {
            path: name.clone(),
            source,
        })?;
        let mut times = StageTimes {
            decode: ms(t0.elapsed()),
            ..Default::default()
        };
        let detections = self.detect_rgb(&rgb, &mut times)?;
        times.total = ms(t0.elapsed());
        Ok(ImageReport {
            image: name,
            width: rgb.width,
            height: rgb.height,
            model: self.detector.info.path.display().to_string(),
            times_ms: times,
            detections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_maps_to_image_pixels_and_labels() {
        let lb = Letterbox::new(640, 424, 416, 416).unwrap();
        let mut c = vec![
            Candidate {
                class_id: 1,
                score: 0.9,
                bbox: [0.0, 70.0, 208.0, 346.0],
            },
            Candidate {
                class_id: 1,
                score: 0.8,
                bbox: [1.0, 70.0, 208.0, 346.0],
            },
            Candidate {
                class_id: 5,
                score: 0.3,
                bbox: [0.0, 0.0, 10.0, 10.0],
            },
        ];
        let labels = vec!["a".to_string(), "b".to_string()];
        let d = finish_detections(&mut c, &lb, &Thresholds::default(), &labels);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "b");
        assert_eq!(d[0].bbox, [0.0, 0.0, 320.0, 424.0]);
        assert_eq!(d[1].label, "class5");
        assert_eq!(d[1].bbox[1], 0.0); // clipped: the box lies in the top padding
    }
}
