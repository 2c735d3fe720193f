//! YOLO output decoding: raw model output → scored candidate boxes in model-input pixels. Pure.
//!
//! Two layouts are supported, chosen once from the model's output shape:
//! - YOLOv5 (also YOLOv3/v7 exports): `[1, N, 5 + nc]`, rows `cx, cy, w, h, objectness, class probs…`,
//!   score = objectness × class probability;
//! - YOLOv8/YOLO11: `[1, 4 + nc, N]`, columns `cx, cy, w, h, class scores…`, no objectness.

use thiserror::Error;

use kestrel_core::geometry::ModelBox;

#[derive(Debug, Error, PartialEq)]
pub enum YoloError {
    #[error("output shape {shape:?} is not a YOLO detection output: expected [1, N, 5+nc] (YOLOv5) or [1, 4+nc, N] (YOLOv8/11){hint}")]
    UnknownLayout { shape: Vec<i64>, hint: String },
    #[error("output holds {got} values, layout {layout:?} needs {want}")]
    Size {
        got: usize,
        want: usize,
        layout: OutputLayout,
    },
}

/// How a detection output tensor is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutputLayout {
    /// `[1, rows, 5 + classes]`
    Yolov5 { rows: usize, classes: usize },
    /// `[1, 4 + classes, rows]`
    Yolov8 { rows: usize, classes: usize },
}

impl OutputLayout {
    /// Pick the layout from the output shape. `classes_hint` (from the model's class names, when it has
    /// them) settles shapes that fit both layouts; without it the longer axis is taken as the rows.
    pub fn from_shape(shape: &[i64], classes_hint: Option<usize>) -> Result<Self, YoloError> {
        let err = |hint: &str| YoloError::UnknownLayout {
            shape: shape.to_vec(),
            hint: hint.to_string(),
        };
        let (a, b) = match shape {
            [1 | -1, a, b] if *a > 0 && *b > 0 => (*a as usize, *b as usize),
            [_, _, _] => return Err(err(" (dynamic or zero dimensions other than the batch)")),
            _ => return Err(err("")),
        };
        let v5 = (b >= 6).then(|| Self::Yolov5 {
            rows: a,
            classes: b - 5,
        });
        let v8 = (a >= 5).then(|| Self::Yolov8 {
            rows: b,
            classes: a - 4,
        });
        let chosen = match classes_hint {
            Some(nc) => match (v5, v8) {
                (Some(l @ Self::Yolov5 { classes, .. }), _) if classes == nc => Some(l),
                (_, Some(l @ Self::Yolov8 { classes, .. })) if classes == nc => Some(l),
                _ => return Err(err(&format!(" with {nc} classes named in the model"))),
            },
            None if a > b => v5,
            None if b > a => v8,
            None => None,
        };
        chosen.ok_or_else(|| err(""))
    }

    pub fn rows(&self) -> usize {
        match *self {
            Self::Yolov5 { rows, .. } | Self::Yolov8 { rows, .. } => rows,
        }
    }

    pub fn classes(&self) -> usize {
        match *self {
            Self::Yolov5 { classes, .. } | Self::Yolov8 { classes, .. } => classes,
        }
    }

    /// Number of values in one output tensor.
    pub fn len(&self) -> usize {
        match *self {
            Self::Yolov5 { rows, classes } => rows * (5 + classes),
            Self::Yolov8 { rows, classes } => rows * (4 + classes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }
}

/// A scored box in model-input pixels, before NMS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub class_id: u32,
    pub score: f32,
    pub bbox: ModelBox,
}

/// Values a model can output.
pub trait OutputElement: Copy {
    fn to_f32(self) -> f32;
}

impl OutputElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl OutputElement for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Append every candidate whose score is above `conf` (strictly, as Ultralytics filters) to `out`, best
/// class only. NaN scores never pass. `out` is cleared first and reused.
pub fn decode<T: OutputElement>(
    layout: OutputLayout,
    data: &[T],
    conf: f32,
    out: &mut Vec<Candidate>,
) -> Result<(), YoloError> {
    out.clear();
    if data.len() != layout.len() {
        return Err(YoloError::Size {
            got: data.len(),
            want: layout.len(),
            layout,
        });
    }
    match layout {
        OutputLayout::Yolov5 { classes, .. } => {
            for row in data.chunks_exact(5 + classes) {
                let obj = row[4].to_f32();
                // score = obj * cls <= obj; `<=` is false for NaN, so test the passing case.
                let obj_passes = obj > conf;
                if !obj_passes {
                    continue;
                }
                let (best, cls) = argmax(row[5..].iter().map(|v| v.to_f32()));
                let score = obj * cls;
                if score > conf {
                    let b = ModelBox::from_cxcywh(row[0].to_f32(), row[1].to_f32(), row[2].to_f32(), row[3].to_f32());
                    out.push(Candidate {
                        class_id: best,
                        score,
                        bbox: b,
                    });
                }
            }
        }
        OutputLayout::Yolov8 { rows, classes } => {
            let at = |c: usize, i: usize| data[c * rows + i].to_f32();
            for i in 0..rows {
                let (best, score) = argmax((0..classes).map(|c| at(4 + c, i)));
                if score > conf {
                    out.push(Candidate {
                        class_id: best,
                        score,
                        bbox: ModelBox::from_cxcywh(at(0, i), at(1, i), at(2, i), at(3, i)),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Index and value of the largest element; the first one wins ties; NaN never wins.
fn argmax(values: impl Iterator<Item = f32>) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i as u32, v);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_from_shape() {
        assert_eq!(
            OutputLayout::from_shape(&[1, 25200, 85], None),
            Ok(OutputLayout::Yolov5 {
                rows: 25200,
                classes: 80
            })
        );
        assert_eq!(
            OutputLayout::from_shape(&[1, 84, 8400], None),
            Ok(OutputLayout::Yolov8 {
                rows: 8400,
                classes: 80
            })
        );
        assert_eq!(
            OutputLayout::from_shape(&[1, 3, 7], Some(2)),
            Ok(OutputLayout::Yolov5 { rows: 3, classes: 2 })
        );
        assert_eq!(
            OutputLayout::from_shape(&[1, 6, 3], Some(2)),
            Ok(OutputLayout::Yolov8 { rows: 3, classes: 2 })
        );
        assert!(OutputLayout::from_shape(&[1, 6, 3], Some(5)).is_err());
        assert!(OutputLayout::from_shape(&[1, 85], None).is_err());
        assert!(OutputLayout::from_shape(&[1, 2535, 85, 1], None).is_err());
        assert!(OutputLayout::from_shape(&[1, -1, 85], None).is_err());
        assert!(OutputLayout::from_shape(&[1, 7, 7], None).is_err());
        assert!(OutputLayout::from_shape(&[2, 25200, 85], None).is_err());
    }

    #[test]
    fn v5_scores_are_objectness_times_class_and_threshold_is_strict() {
        let layout = OutputLayout::Yolov5 { rows: 3, classes: 2 };
        #[rustfmt::skip]
        let data: [f32; 21] = [
            10.0, 20.0, 4.0, 6.0, 0.9, 0.2, 0.8,  // class 1, 0.72
            50.0, 50.0, 10.0, 10.0, 0.5, 0.5, 0.5, // 0.25 == conf: dropped (strict)
            0.0, 0.0, 2.0, 2.0, 0.2, 1.0, 0.0,    // obj below conf
        ];
        let mut out = Vec::new();
        decode(layout, &data, 0.25, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].class_id, 1);
        assert!((out[0].score - 0.72).abs() < 1e-6);
        assert_eq!(out[0].bbox.xyxy(), [8.0, 17.0, 12.0, 23.0]);
    }

    #[test]
    fn v8_reads_columns() {
        let layout = OutputLayout::Yolov8 { rows: 2, classes: 2 };
        // channel-major: cx[2], cy[2], w[2], h[2], c0[2], c1[2]
        let data: [f32; 12] = [1.0, 100.0, 2.0, 200.0, 2.0, 20.0, 4.0, 40.0, 0.1, 0.3, 0.6, 0.3];
        let mut out = Vec::new();
        decode(layout, &data, 0.25, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].class_id, out[0].score, out[0].bbox.xyxy()),
            (1, 0.6, [0.0, 0.0, 2.0, 4.0])
        );
        // tie between classes: the first wins
        assert_eq!(
            (out[1].class_id, out[1].score, out[1].bbox.xyxy()),
            (0, 0.3, [90.0, 180.0, 110.0, 220.0])
        );
    }

    #[test]
    fn nan_and_wrong_sizes() {
        let layout = OutputLayout::Yolov5 { rows: 1, classes: 1 };
        let mut out = Vec::new();
        decode(layout, &[0.0, 0.0, 1.0, 1.0, f32::NAN, 1.0], 0.25, &mut out).unwrap();
        assert!(out.is_empty());
        decode(layout, &[0.0, 0.0, 1.0, 1.0, 1.0, f32::NAN], 0.25, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(matches!(
            decode(layout, &[0.0f32; 5], 0.25, &mut out),
            Err(YoloError::Size { .. })
        ));
    }
}
