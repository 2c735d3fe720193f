//! Class-aware non-maximum suppression (greedy, as torchvision's `batched_nms` that Ultralytics uses). Pure.

use crate::yolo::Candidate;
use kestrel_core::geometry::BoxXyxy;

/// Ultralytics' cap on boxes entering NMS.
pub const MAX_NMS_INPUT: usize = 30_000;

/// Intersection over union; 0 for empty or degenerate boxes.
pub fn iou<S>(a: &BoxXyxy<S>, b: &BoxXyxy<S>) -> f32 {
    a.iou(b)
}

/// Keep the best-scoring boxes, dropping any box whose IoU with a kept box of the same class is above
/// `iou_threshold`. The result is sorted by score, highest first (equal scores: earlier candidate
/// first), and holds at most `max_detections` boxes. `candidates` is reordered in place.
pub fn nms(candidates: &mut [Candidate], iou_threshold: f32, max_detections: usize) -> Vec<Candidate> {
    let mut kept = Vec::with_capacity(max_detections.min(candidates.len()));
    nms_into(candidates, iou_threshold, max_detections, &mut kept);
    kept
}

/// [`nms`] into a caller-owned vector (cleared first), for the allocation-free per-frame path.
pub fn nms_into(candidates: &mut [Candidate], iou_threshold: f32, max_detections: usize, kept: &mut Vec<Candidate>) {
    kept.clear();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let considered = candidates.len().min(MAX_NMS_INPUT);
    for c in &candidates[..considered] {
        if kept.len() == max_detections {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != c.class_id || iou(&k.bbox, &c.bbox) <= iou_threshold)
        {
            kept.push(*c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(class_id: u32, score: f32, bbox: [f32; 4]) -> Candidate {
        Candidate {
            class_id,
            score,
            bbox: BoxXyxy::new(bbox),
        }
    }

    fn b(xyxy: [f32; 4]) -> kestrel_core::geometry::ModelBox {
        BoxXyxy::new(xyxy)
    }

    #[test]
    fn iou_basics() {
        assert_eq!(iou(&b([0.0, 0.0, 2.0, 2.0]), &b([0.0, 0.0, 2.0, 2.0])), 1.0);
        assert_eq!(iou(&b([0.0, 0.0, 2.0, 2.0]), &b([1.0, 0.0, 3.0, 2.0])), 1.0 / 3.0);
        assert_eq!(iou(&b([0.0, 0.0, 1.0, 1.0]), &b([1.0, 1.0, 2.0, 2.0])), 0.0); // touching corners
        assert_eq!(iou(&b([0.0, 0.0, 0.0, 0.0]), &b([0.0, 0.0, 0.0, 0.0])), 0.0);
    }

    #[test]
    fn suppresses_same_class_only_and_respects_threshold() {
        let mut c = vec![
            cand(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            cand(0, 0.9, [1.0, 0.0, 11.0, 10.0]), // IoU 0.818 with the first
            cand(1, 0.7, [0.0, 0.0, 10.0, 10.0]), // other class survives
            cand(0, 0.6, [5.0, 0.0, 15.0, 10.0]), // IoU with best = 6/14 = 0.43 <= 0.45: kept
        ];
        let kept = nms(&mut c, 0.45, 300);
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
    }

    #[test]
    fn ties_keep_the_earlier_candidate_and_empty_input_is_fine() {
        let mut c = vec![cand(2, 0.5, [0.0, 0.0, 4.0, 4.0]), cand(2, 0.5, [0.0, 0.0, 4.0, 4.1])];
        let kept = nms(&mut c, 0.45, 300);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].bbox[3], 4.0);
        assert!(nms(&mut [], 0.45, 300).is_empty());
    }

    #[test]
    fn caps_at_max_detections() {
        let mut c: Vec<Candidate> = (0..50)
            .map(|i| cand(0, i as f32 / 100.0, [i as f32 * 10.0, 0.0, i as f32 * 10.0 + 5.0, 5.0]))
            .collect();
        let kept = nms(&mut c, 0.45, 7);
        assert_eq!(kept.len(), 7);
        assert_eq!(kept[0].score, 0.49);
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (0u32..3, 0f32..1.0, 0f32..100.0, 0f32..100.0, 0.5f32..40.0, 0.5f32..40.0)
            .prop_map(|(class_id, score, x, y, w, h)| cand(class_id, score, [x, y, x + w, y + h]))
    }

    proptest! {
        #[test]
        fn output_sorted_and_no_same_class_pair_above_threshold(
            mut c in prop::collection::vec(arb_candidate(), 0..120), thr in 0.1f32..0.9,
        ) {
            let n = c.len();
            let kept = nms(&mut c, thr, 300);
            prop_assert!(kept.len() <= n);
            for w in kept.windows(2) {
                prop_assert!(w[0].score >= w[1].score);
            }
            for (i, a) in kept.iter().enumerate() {
                for b in &kept[i + 1..] {
                    prop_assert!(a.class_id != b.class_id || iou(&a.bbox, &b.bbox) <= thr);
                }
            }
            // Every dropped candidate overlaps a kept, better-or-equal box of its class.
            for d in c.iter().filter(|d| !kept.contains(d)) {
                prop_assert!(kept.iter().any(|k| k.class_id == d.class_id && k.score >= d.score && iou(&k.bbox, &d.bbox) > thr));
            }
        }
    }
}
