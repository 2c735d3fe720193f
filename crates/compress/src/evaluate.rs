//! Detection fidelity (placeholder until the evaluation lands: same API).
use kestrel_core::geometry::ImageBox;
use kestrel_infer::detect::LabelledDetection;

#[derive(Clone, Debug)]
pub struct Truth {
    pub class_id: u32,
    pub bbox: ImageBox,
    pub score: Option<f32>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Evaluation {
    pub map50: f64,
    pub map50_95: f64,
}

pub fn truth_from_reference(dets: &[LabelledDetection], min_score: f32) -> Vec<Truth> {
    dets.iter()
        .filter(|d| d.score >= min_score)
        .map(|d| Truth {
            class_id: d.class_id,
            bbox: d.bbox,
            score: Some(d.score),
        })
        .collect()
}

pub fn evaluate(images: &[(Vec<Truth>, Vec<LabelledDetection>)], _labels: &[String]) -> Evaluation {
    let (mut hit, mut n) = (0usize, 0usize);
    for (t, d) in images {
        for x in t {
            n += 1;
            if d.iter().any(|y| y.class_id == x.class_id && y.bbox.iou(&x.bbox) >= 0.5) {
                hit += 1;
            }
        }
    }
    let r = if n == 0 { 1.0 } else { hit as f64 / n as f64 };
    Evaluation { map50: r, map50_95: r }
}
