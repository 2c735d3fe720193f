//! Still-image detection (`kestrel detect`): decode → letterbox → infer → YOLO decode → NMS → image pixels.

use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::model::{Detector, InputTensor, ModelError};
use kestrel_core::frame::PixelFormat;
use kestrel_core::geometry::ImageBox;
use kestrel_vision::decode::{decode_image, sniff, DecodeError, Encoded, RgbImage};
use kestrel_vision::labels::label_for;
use kestrel_vision::letterbox::{Letterbox, LetterboxError};
use kestrel_vision::nms::nms;
use kestrel_vision::preprocess::{FramePreprocessor, Pixels, PreprocessError};
use kestrel_vision::yolo::Candidate;

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot decode {path}: {source}")]
    Decode { path: String, source: DecodeError },
    #[error(transparent)]
    Letterbox(#[from] LetterboxError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One detection in source-image pixels with its label resolved: what `kestrel detect` prints and the golden
/// files record (the label is for people and messages; matching uses `class_id`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledDetection {
    /// Class index into the model's labels.
    pub class_id: u32,
    pub label: String,
    /// Confidence in `0..=1`.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-image pixels, clipped to the image.
    #[serde(rename = "box")]
    pub bbox: ImageBox,
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
    pub detections: Vec<LabelledDetection>,
}

/// NMS the candidates (model pixels) and map the survivors to source-image pixels. Pure.
pub fn finish_detections(
    candidates: &mut [Candidate],
    lb: &Letterbox,
    thresholds: &Thresholds,
    labels: &[String],
) -> Vec<LabelledDetection> {
    nms(candidates, thresholds.iou, thresholds.max_detections)
        .into_iter()
        .map(|c| LabelledDetection {
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
    prep: FramePreprocessor,
    input: InputTensor,
    candidates: Vec<Candidate>,
}

impl ImageDetector {
    pub fn new(detector: Detector, thresholds: Thresholds) -> Result<Self, DetectError> {
        let input = detector.new_input();
        // Still images: full-resolution decoding, so results don't depend on how large the file is.
        let prep = FramePreprocessor::new(false)?;
        Ok(Self {
            detector,
            thresholds,
            prep,
            input,
            candidates: Vec::new(),
        })
    }

    /// Run the model `n` times on a blank input so that later timings are steady-state.
    pub fn warm_up(&mut self, n: usize) -> Result<(), ModelError> {
        self.detector.warm_up(n).map(drop)
    }

    /// Letterbox `data` (per `format`) into the input tensor, infer, and finish the detections.
    fn run(
        &mut self,
        format: PixelFormat,
        width: u32,
        height: u32,
        data: &[u8],
        times: &mut StageTimes,
    ) -> Result<(Letterbox, Vec<LabelledDetection>), DetectError> {
        let (w, h) = (self.detector.info.input_width, self.detector.info.input_height);
        let lb = self.prep.prepare(
            Pixels {
                format,
                width,
                height,
                data,
                yuv: kestrel_vision::yuv::YuvSpec::BT601_LIMITED,
            },
            self.input.data_mut(),
            w,
            h,
        )?;
        times.decode += ms(self.prep.last_decode);
        times.preprocess = ms(self.prep.last_letterbox);
        let it = self
            .detector
            .infer(&self.input, self.thresholds.conf, &mut self.candidates)?;
        let t = Instant::now();
        let dets = finish_detections(&mut self.candidates, &lb, &self.thresholds, &self.detector.info.labels);
        times.infer = ms(it.run);
        times.postprocess = ms(it.decode + t.elapsed());
        Ok((lb, dets))
    }

    /// Detect on a decoded RGB image. Fills `times` except `total`.
    pub fn detect_rgb(
        &mut self,
        rgb: &RgbImage,
        times: &mut StageTimes,
    ) -> Result<Vec<LabelledDetection>, DetectError> {
        Ok(self.run(PixelFormat::Rgb, rgb.width, rgb.height, &rgb.data, times)?.1)
    }

    /// The input tensor of the last image (what the model saw).
    pub fn last_input(&self) -> &InputTensor {
        &self.input
    }

    /// Read, decode and detect one image file. JPEGs are decoded by libjpeg-turbo, PNGs by `image`.
    pub fn detect_file(&mut self, path: &Path) -> Result<ImageReport, DetectError> {
        let name = path.display().to_string();
        let t0 = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| DetectError::Read {
            path: name.clone(),
            source,
        })?;
        let mut report = self.detect_bytes(&name, &bytes)?;
        report.times_ms.total = ms(t0.elapsed());
        Ok(report)
    }

    /// Decode and detect one encoded image (JPEG or PNG) already in memory; `name` names it in the report.
    pub fn detect_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<ImageReport, DetectError> {
        let t0 = Instant::now();
        let decode_err = |source| DetectError::Decode {
            path: name.to_string(),
            source,
        };
        let mut times = StageTimes::default();
        let (lb, detections) = match sniff(bytes).map_err(decode_err)? {
            Encoded::Jpeg => self.run(PixelFormat::Jpeg, 0, 0, bytes, &mut times),
            Encoded::Png => {
                let t = Instant::now();
                let rgb = decode_image(bytes).map_err(decode_err)?;
                times.decode = ms(t.elapsed());
                self.run(PixelFormat::Rgb, rgb.width, rgb.height, &rgb.data, &mut times)
            }
        }
        .map_err(|e| match e {
            DetectError::Preprocess(PreprocessError::Jpeg(e)) => DetectError::Decode {
                path: name.to_string(),
                source: DecodeError::Jpeg(e),
            },
            other => other,
        })?;
        times.total = ms(t0.elapsed());
        Ok(ImageReport {
            image: name.to_string(),
            width: lb.src_w,
            height: lb.src_h,
            model: self.detector.info.path.display().to_string(),
            times_ms: times,
            detections,
        })
    }

    /// Give the detector back.
    pub fn into_detector(self) -> Detector {
        self.detector
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
                bbox: kestrel_core::geometry::ModelBox::new([0.0, 70.0, 208.0, 346.0]),
            },
            Candidate {
                class_id: 1,
                score: 0.8,
                bbox: kestrel_core::geometry::ModelBox::new([1.0, 70.0, 208.0, 346.0]),
            },
            Candidate {
                class_id: 5,
                score: 0.3,
                bbox: kestrel_core::geometry::ModelBox::new([0.0, 0.0, 10.0, 10.0]),
            },
        ];
        let labels = vec!["a".to_string(), "b".to_string()];
        let d = finish_detections(&mut c, &lb, &Thresholds::default(), &labels);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "b");
        assert_eq!(
            d[0].bbox,
            kestrel_core::geometry::ImageBox::new([0.0, 0.0, 320.0, 424.0])
        );
        assert_eq!(d[1].label, "class5");
        assert_eq!(d[1].bbox[1], 0.0); // clipped: the box lies in the top padding
    }
}
