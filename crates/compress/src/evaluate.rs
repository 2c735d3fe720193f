//! Detection fidelity: how well one model's detections agree with ground truth, the truth being either a
//! reference model's confident detections ([`truth_from_reference`]) or labels read from disk (YOLO text
//! files, [`load_yolo_labels`]; a COCO instances file, [`CocoLabels`]).
//!
//! The metric is COCO's box mAP, computed the way `pycocotools`' `COCOeval` (iouType `bbox`) computes its
//! first two summary numbers (AP@[.50:.95] and AP@.50, area range "all", `maxDets` 100), closely enough to
//! agree with it to 1e-3 (tests/reference/test_evaluate.py checks this):
//!
//! - boxes become `[x, y, w, h]` with `w = x2 - x1`, areas are `w * h` (no `+1`), and IoU is pycocotools'
//!   `bbIou` to the operation, in `f64`;
//! - per image and class, detections are sorted by score, highest first (a stable sort: ties keep their
//!   input order), and only the first [`MAX_DETECTIONS`] are kept: like COCOeval, the cap of 100 applies per
//!   image *and class*;
//! - for each IoU threshold `t` of 0.50:0.05:0.95 (numpy's `linspace` values, bit for bit), each detection in
//!   turn is matched to the not-yet-matched truth of its class with the highest IoU `>= t` (on equal IoU the
//!   later truth wins, as in COCOeval's loop); there are no crowd regions and nothing is ignored by area;
//! - per class, the detections of all images are ranked by score (stable, images in the order given),
//!   precision and recall are accumulated, the precision is made monotone (the envelope) and read at the
//!   101 recall points 0:0.01:1 (`searchsorted` left; a recall point beyond the last recall reached reads 0);
//!   AP is the mean of those 101 values;
//! - a class counts only if it has ground truth (COCOeval's `-1` classes are left out of the mean); a class
//!   with truth but no detections has AP 0. With no truth at all both mAPs are 0 (pycocotools says -1).

use std::path::PathBuf;

use kestrel_core::geometry::ImageBox;
use kestrel_infer::detect::LabelledDetection;
use kestrel_vision::labels::label_for;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod labels;

pub use labels::{load_yolo_labels, parse_yolo_labels, yolo_label_path, CocoLabels};

/// Detections kept per image and class (COCOeval's `maxDets[-1]`).
pub const MAX_DETECTIONS: usize = 100;
/// Number of IoU thresholds, 0.50:0.05:0.95.
const IOU_THRESHOLDS: usize = 10;
/// Number of recall points, 0:0.01:1.
const RECALL_POINTS: usize = 101;

/// Everything that can go wrong reading ground truth. Each message names the file.
#[derive(Debug, Error)]
pub enum EvaluateError {
    #[error("cannot read labels {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("labels {path}, line {line}: {reason}")]
    YoloLine { path: PathBuf, line: usize, reason: String },
    #[error("labels {path}: not a COCO instances file: {source}")]
    CocoJson { path: PathBuf, source: serde_json::Error },
    #[error("labels {path}: {reason}")]
    Coco { path: PathBuf, reason: String },
    #[error("labels {path} have no image named {image}")]
    MissingImage { path: PathBuf, image: String },
}

/// A ground-truth box in image pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Class index into the model's labels.
    pub class_id: u32,
    /// `[x1, y1, x2, y2]` in source-image pixels.
    #[serde(rename = "box")]
    pub bbox: ImageBox,
    /// The reference model's score when the truth is a reference detection; `None` for labels.
    pub score: Option<f32>,
}

impl Truth {
    /// The truth as a detection (score 1 for labels), e.g. to draw it.
    pub fn to_detection(&self, labels: &[String]) -> LabelledDetection {
        LabelledDetection {
            class_id: self.class_id,
            label: label_for(labels, self.class_id),
            score: self.score.unwrap_or(1.0),
            bbox: self.bbox,
        }
    }
}

/// The reference detections scoring at least `min_score`, as ground truth that remembers the score.
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

/// One class's average precision.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ClassAp {
    pub class_id: u32,
    pub label: String,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP averaged over IoU 0.50:0.05:0.95.
    pub ap50_95: f64,
    /// Ground-truth boxes of this class, all images.
    pub truths: usize,
    /// Detections of this class, all images, before the per-image cap of [`MAX_DETECTIONS`].
    pub detections: usize,
}

/// The fidelity of a set of detections against ground truth.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// COCO mAP at IoU 0.5, the mean over classes with ground truth.
    pub map50: f64,
    /// COCO mAP averaged over IoU 0.50:0.05:0.95, the mean over classes with ground truth.
    pub map50_95: f64,
    /// Classes with ground truth, by class id.
    pub per_class: Vec<ClassAp>,
    /// Mean IoU of the (detection, truth) pairs matched at IoU 0.5; 0 with no pair.
    pub matched_mean_iou: f64,
    /// Mean `|score - truth score|` over the pairs matched at IoU 0.5 whose truth has a score (a reference
    /// model's detection); 0 with no such pair.
    pub mean_abs_delta_score: f64,
    pub images: usize,
    pub truths: usize,
    /// All detections given, before the per-image cap.
    pub detections: usize,
    /// Pairs matched at IoU 0.5.
    pub matched: usize,
}

/// COCOeval's `iouThrs`: `np.linspace(.5, .95, 10)`, i.e. `i * step + start` with the last set to `stop`.
fn iou_thresholds() -> [f64; IOU_THRESHOLDS] {
    let step = (0.95 - 0.5) / (IOU_THRESHOLDS - 1) as f64;
    let mut t = [0.0; IOU_THRESHOLDS];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * step + 0.5;
    }
    t[IOU_THRESHOLDS - 1] = 0.95;
    t
}

/// COCOeval's `recThrs`: `np.linspace(0, 1, 101)`.
fn recall_points() -> [f64; RECALL_POINTS] {
    let step = 1.0 / (RECALL_POINTS - 1) as f64;
    let mut r = [0.0; RECALL_POINTS];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * step;
    }
    r[RECALL_POINTS - 1] = 1.0;
    r
}

/// `[x, y, w, h]` in `f64`, as pycocotools holds a box.
fn xywh(b: &ImageBox) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.xyxy().map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

/// pycocotools' `bbIou` for a non-crowd truth `g` and a detection `d`, both `[x, y, w, h]`.
fn coco_iou(d: &[f64; 4], g: &[f64; 4]) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    i / (d[2] * d[3] + g[2] * g[3] - i)
}

/// One image and class after matching: per kept detection its score and, per threshold, whether it matched.
struct ImageClass {
    scores: Vec<f64>,
    /// `matched[t][d]`.
    matched: [Vec<bool>; IOU_THRESHOLDS],
}

/// Running sums for the IoU-0.5 pair statistics.
#[derive(Default)]
struct PairStats {
    matched: usize,
    iou_sum: f64,
    delta_sum: f64,
    delta_n: usize,
}

/// COCOeval's `evaluateImg` for one image and class: sort and cap the detections, match at each threshold.
fn match_image_class(
    truths: &[&Truth],
    dets: &[&LabelledDetection],
    thresholds: &[f64; IOU_THRESHOLDS],
    stats: &mut PairStats,
) -> ImageClass {
    let mut dets = dets.to_vec();
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(MAX_DETECTIONS);
    let g: Vec<[f64; 4]> = truths.iter().map(|t| xywh(&t.bbox)).collect();
    let ious: Vec<Vec<f64>> = dets
        .iter()
        .map(|d| {
            let d = xywh(&d.bbox);
            g.iter().map(|g| coco_iou(&d, g)).collect()
        })
        .collect();
    let matched = std::array::from_fn(|tind| {
        let mut truth_taken = vec![false; truths.len()];
        let mut det_matched = vec![false; dets.len()];
        for (dind, row) in ious.iter().enumerate() {
            let mut best = thresholds[tind].min(1.0 - 1e-10);
            let mut m = None;
            for (gind, &iou) in row.iter().enumerate() {
                if truth_taken[gind] || iou < best {
                    continue;
                }
                best = iou;
                m = Some(gind);
            }
            if let Some(m) = m {
                truth_taken[m] = true;
                det_matched[dind] = true;
                if tind == 0 {
                    stats.matched += 1;
                    stats.iou_sum += row[m];
                    if let Some(s) = truths[m].score {
                        stats.delta_sum += f64::from((dets[dind].score - s).abs());
                        stats.delta_n += 1;
                    }
                }
            }
        }
        det_matched
    });
    ImageClass {
        scores: dets.iter().map(|d| f64::from(d.score)).collect(),
        matched,
    }
}

/// COCOeval's `accumulate` for one class and threshold: the 101-point interpolated AP.
fn average_precision(ranked: &[bool], n_truth: usize, recall_at: &[f64; RECALL_POINTS]) -> f64 {
    let npig = n_truth as f64;
    let mut tp = 0.0f64;
    let mut fp = 0.0f64;
    let mut recall = Vec::with_capacity(ranked.len());
    let mut precision = Vec::with_capacity(ranked.len());
    for &m in ranked {
        if m {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        recall.push(tp / npig);
        precision.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..precision.len()).rev() {
        if precision[i] > precision[i - 1] {
            precision[i - 1] = precision[i];
        }
    }
    let sum: f64 = recall_at
        .iter()
        .map(|&r| {
            let i = recall.partition_point(|&x| x < r);
            precision.get(i).copied().unwrap_or(0.0)
        })
        .sum();
    sum / RECALL_POINTS as f64
}

/// Evaluate detections against ground truth. `images[i]` is one image's `(truths, detections)`; for mAP the
/// detections should come from a low confidence threshold (COCO uses 0.001). `labels` name the classes in
/// [`ClassAp::label`]. See the module documentation for the exact semantics.
pub fn evaluate(images: &[(Vec<Truth>, Vec<LabelledDetection>)], labels: &[String]) -> Evaluation {
    let thresholds = iou_thresholds();
    let recall_at = recall_points();
    let mut classes: Vec<u32> = images
        .iter()
        .flat_map(|(t, d)| t.iter().map(|t| t.class_id).chain(d.iter().map(|d| d.class_id)))
        .collect();
    classes.sort_unstable();
    classes.dedup();
    let mut stats = PairStats::default();
    let mut per_class = Vec::new();
    for &class in &classes {
        let mut n_truth = 0usize;
        let mut n_dets = 0usize;
        let mut evaluated = Vec::new();
        for (truths, dets) in images {
            let t: Vec<&Truth> = truths.iter().filter(|t| t.class_id == class).collect();
            let d: Vec<&LabelledDetection> = dets.iter().filter(|d| d.class_id == class).collect();
            n_truth += t.len();
            n_dets += d.len();
            if !t.is_empty() || !d.is_empty() {
                evaluated.push(match_image_class(&t, &d, &thresholds, &mut stats));
            }
        }
        if n_truth == 0 {
            continue;
        }
        // Rank every kept detection of the class by score; the stable sort keeps image order on ties.
        let mut order: Vec<(f64, usize, usize)> = evaluated
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.scores.iter().enumerate().map(move |(d, &s)| (s, i, d)))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0));
        let aps: Vec<f64> = (0..IOU_THRESHOLDS)
            .map(|t| {
                let ranked: Vec<bool> = order.iter().map(|&(_, i, d)| evaluated[i].matched[t][d]).collect();
                average_precision(&ranked, n_truth, &recall_at)
            })
            .collect();
        per_class.push(ClassAp {
            class_id: class,
            label: label_for(labels, class),
            ap50: aps[0],
            ap50_95: aps.iter().sum::<f64>() / IOU_THRESHOLDS as f64,
            truths: n_truth,
            detections: n_dets,
        });
    }
    let mean = |f: fn(&ClassAp) -> f64| {
        if per_class.is_empty() {
            0.0
        } else {
            per_class.iter().map(f).sum::<f64>() / per_class.len() as f64
        }
    };
    let ratio = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    Evaluation {
        map50: mean(|c| c.ap50),
        map50_95: mean(|c| c.ap50_95),
        matched_mean_iou: ratio(stats.iou_sum, stats.matched),
        mean_abs_delta_score: ratio(stats.delta_sum, stats.delta_n),
        images: images.len(),
        truths: images.iter().map(|(t, _)| t.len()).sum(),
        detections: images.iter().map(|(_, d)| d.len()).sum(),
        matched: stats.matched,
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn det(class_id: u32, score: f32, b: [f32; 4]) -> LabelledDetection {
        LabelledDetection {
            class_id,
            label: format!("c{class_id}"),
            score,
            bbox: ImageBox::new(b),
        }
    }

    fn truth(class_id: u32, b: [f32; 4]) -> Truth {
        Truth {
            class_id,
            bbox: ImageBox::new(b),
            score: None,
        }
    }

    /// COCO's precision is `tp / (tp + fp + eps)`: a perfect AP is 1 - 1e-16, not 1.
    fn assert_close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-12, "{got} != {want}");
    }

    fn labels() -> Vec<String> {
        (0..5).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn thresholds_are_numpys_linspace_bit_for_bit() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[8], 0.8999999999999999);
        assert_eq!(t[9], 0.95);
        let r = recall_points();
        assert_eq!(r[57], 0.5700000000000001);
        assert_eq!(r[58], 0.58);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn identical_detections_are_perfect() {
        let dets = vec![
            det(0, 0.9, [10.0, 10.0, 50.0, 80.0]),
            det(2, 0.6, [100.0, 20.0, 140.0, 60.0]),
            det(0, 0.4, [60.0, 10.0, 90.0, 30.0]),
        ];
        let truths = truth_from_reference(&dets, 0.25);
        assert_eq!(truths.len(), 3);
        let e = evaluate(&[(truths, dets)], &labels());
        assert_close(e.map50, 1.0);
        assert_close(e.map50_95, 1.0);
        assert_close(e.matched_mean_iou, 1.0);
        assert_eq!(e.mean_abs_delta_score, 0.0);
        assert_eq!((e.images, e.truths, e.detections, e.matched), (1, 3, 3, 3));
        assert_eq!(e.per_class.len(), 2);
        assert_eq!(e.per_class[1].label, "c2");
    }

    #[test]
    fn reference_threshold_selects_the_truth() {
        let dets = vec![det(0, 0.9, [0.0, 0.0, 1.0, 1.0]), det(0, 0.1, [0.0, 0.0, 1.0, 1.0])];
        let t = truth_from_reference(&dets, 0.25);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].score, Some(0.9));
    }

    #[test]
    fn a_missing_detection_lowers_recall() {
        // Four truths, three found with precision 1: recall 0.75, so the recall points 0.00..=0.75 (76 of
        // 101) read precision 1 and the rest 0.
        let truths: Vec<Truth> = (0..4)
            .map(|i| truth(1, [i as f32 * 100.0, 0.0, i as f32 * 100.0 + 50.0, 50.0]))
            .collect();
        let dets: Vec<_> = truths[..3]
            .iter()
            .enumerate()
            .map(|(i, t)| det(1, 0.9 - i as f32 * 0.1, t.bbox.xyxy()))
            .collect();
        let e = evaluate(&[(truths, dets)], &labels());
        assert!((e.map50 - 76.0 / 101.0).abs() < 1e-12, "{}", e.map50);
        assert!((e.map50_95 - 76.0 / 101.0).abs() < 1e-12);
        assert_eq!(e.matched, 3);
    }

    #[test]
    fn a_higher_scoring_false_positive_halves_precision() {
        // Ranked: FP (0.9), TP (0.8): precision [0, 0.5], envelope [0.5, 0.5], recall reaches 1: AP 0.5.
        let truths = vec![truth(0, [0.0, 0.0, 10.0, 10.0])];
        let dets = vec![
            det(0, 0.9, [50.0, 50.0, 60.0, 60.0]),
            det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
        ];
        let e = evaluate(&[(truths, dets)], &labels());
        assert!((e.map50 - 0.5).abs() < 1e-12, "{}", e.map50);
    }

    #[test]
    fn a_box_shifted_below_iou_half_does_not_match() {
        // Shifted by 6 of 10 px: IoU 40/160 = 0.25.
        let truths = vec![truth(0, [0.0, 0.0, 10.0, 10.0])];
        let dets = vec![det(0, 0.9, [6.0, 0.0, 16.0, 10.0])];
        let e = evaluate(&[(truths, dets)], &labels());
        assert_eq!(e.map50, 0.0);
        assert_eq!(e.matched, 0);
        assert_eq!(e.matched_mean_iou, 0.0);
        // Shifted by 2 px: IoU 80/120 = 2/3, a match at 0.50..=0.65 only: 4 of 10 thresholds.
        let truths = vec![truth(0, [0.0, 0.0, 10.0, 10.0])];
        let dets = vec![det(0, 0.9, [2.0, 0.0, 12.0, 10.0])];
        let e = evaluate(&[(truths, dets)], &labels());
        assert_close(e.map50, 1.0);
        assert!((e.map50_95 - 0.4).abs() < 1e-12, "{}", e.map50_95);
        assert!((e.matched_mean_iou - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn class_confusion_does_not_match() {
        let truths = vec![truth(0, [0.0, 0.0, 10.0, 10.0])];
        let dets = vec![det(3, 0.9, [0.0, 0.0, 10.0, 10.0])];
        let e = evaluate(&[(truths, dets)], &labels());
        assert_eq!(e.map50, 0.0);
        assert_eq!(e.matched, 0);
        // Only the class with truth counts; the confused detection's class has none.
        assert_eq!(e.per_class.len(), 1);
        assert_eq!(e.per_class[0].class_id, 0);
        assert_eq!(e.per_class[0].detections, 0);
    }

    #[test]
    fn a_class_with_truth_and_no_detection_scores_zero() {
        let images = vec![(
            vec![truth(0, [0.0, 0.0, 10.0, 10.0]), truth(1, [0.0, 0.0, 10.0, 10.0])],
            vec![det(0, 0.9, [0.0, 0.0, 10.0, 10.0])],
        )];
        let e = evaluate(&images, &labels());
        assert_close(e.map50, 0.5);
        assert_eq!(e.per_class[1].ap50, 0.0);
    }

    #[test]
    fn score_deltas_are_averaged_over_matches() {
        let reference = vec![
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(1, 0.5, [20.0, 0.0, 30.0, 10.0]),
        ];
        let model = vec![
            det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            det(1, 0.8, [20.0, 0.0, 30.0, 10.0]),
        ];
        let e = evaluate(&[(truth_from_reference(&reference, 0.25), model)], &labels());
        assert!(
            (e.mean_abs_delta_score - 0.2).abs() < 1e-6,
            "{}",
            e.mean_abs_delta_score
        );
    }

    #[test]
    fn only_a_hundred_detections_per_image_and_class_count() {
        // 100 higher-scoring false positives push the true positive out of the cap.
        let truths = vec![truth(0, [0.0, 0.0, 10.0, 10.0])];
        let mut dets: Vec<_> = (0..100)
            .map(|i| det(0, 0.9, [100.0 + i as f32 * 20.0, 0.0, 110.0 + i as f32 * 20.0, 10.0]))
            .collect();
        dets.push(det(0, 0.5, [0.0, 0.0, 10.0, 10.0]));
        let e = evaluate(&[(truths.clone(), dets.clone())], &labels());
        assert_eq!(e.map50, 0.0);
        assert_eq!(e.detections, 101);
        // Another class's detections do not count against this one's cap.
        dets.truncate(99);
        dets.push(det(1, 0.95, [0.0, 0.0, 10.0, 10.0]));
        dets.push(det(0, 0.5, [0.0, 0.0, 10.0, 10.0]));
        let e = evaluate(&[(truths, dets)], &labels());
        assert!(e.map50 > 0.0);
    }

    #[test]
    fn no_truth_gives_zero() {
        let e = evaluate(&[(vec![], vec![det(0, 0.9, [0.0, 0.0, 1.0, 1.0])])], &labels());
        assert_eq!((e.map50, e.map50_95, e.truths), (0.0, 0.0, 0));
        assert!(e.per_class.is_empty());
    }

    fn arb_box() -> impl Strategy<Value = [f32; 4]> {
        (0.0f32..500.0, 0.0f32..500.0, 1.0f32..200.0, 1.0f32..200.0).prop_map(|(x, y, w, h)| [x, y, x + w, y + h])
    }

    fn arb_truths() -> impl Strategy<Value = Vec<Truth>> {
        prop::collection::vec((0u32..4, arb_box()), 0..12)
            .prop_map(|v| v.into_iter().map(|(c, b)| truth(c, b)).collect())
    }

    fn arb_dets() -> impl Strategy<Value = Vec<LabelledDetection>> {
        prop::collection::vec((0u32..4, 0.0f32..1.0, arb_box()), 0..12)
            .prop_map(|v| v.into_iter().map(|(c, s, b)| det(c, s, b)).collect())
    }

    proptest! {
        #[test]
        fn map_is_a_fraction(images in prop::collection::vec((arb_truths(), arb_dets()), 1..5)) {
            let e = evaluate(&images, &labels());
            prop_assert!((0.0..=1.0).contains(&e.map50));
            prop_assert!((0.0..=1.0).contains(&e.map50_95));
            prop_assert!((0.0..=1.0).contains(&e.matched_mean_iou));
            prop_assert!(e.matched <= e.truths.min(e.detections));
        }

        #[test]
        fn truth_against_itself_is_perfect(
            images in prop::collection::vec(arb_truths(), 1..5),
            score in 0.01f32..1.0,
        ) {
            let images: Vec<_> = images
                .into_iter()
                .map(|t| {
                    let d = t.iter().map(|t| det(t.class_id, score, t.bbox.xyxy())).collect();
                    (t, d)
                })
                .collect();
            let e = evaluate(&images, &labels());
            if e.truths > 0 {
                prop_assert!((e.map50 - 1.0).abs() < 1e-12, "{}", e.map50);
                prop_assert!((e.map50_95 - 1.0).abs() < 1e-12, "{}", e.map50_95);
                prop_assert_eq!(e.matched, e.truths);
                prop_assert!((e.matched_mean_iou - 1.0).abs() < 1e-12);
            }
        }
    }
}
