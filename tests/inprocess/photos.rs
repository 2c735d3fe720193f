//! The trained YOLOv3-tiny COCO model on real photos (Debian's darknet package), 416 input, default
//! thresholds: the classes a person sees, with boxes close to the reference boxes in
//! shared/recipes/darknet-yolov3-tiny-facts.md (seen with an independent correct conversion).

use crate::common;

use kestrel_infer::detect::{ImageDetector, ImageReport, Thresholds};
use kestrel_infer::model::{Detector, SessionOptions};
use kestrel_vision::nms::iou;

fn run(model: &str, photo: &str) -> ImageReport {
    let det = Detector::load(
        common::runtime(),
        &common::model(model),
        None,
        &SessionOptions::default(),
    )
    .unwrap();
    let mut d = ImageDetector::new(det, Thresholds::default()).unwrap();
    d.detect_file(&common::photo(photo)).unwrap()
}

fn labels(r: &ImageReport) -> Vec<&str> {
    r.detections.iter().map(|d| d.label.as_str()).collect()
}

/// The best-overlapping detection of `label` must overlap `reference` with IoU >= 0.9.
fn assert_found(r: &ImageReport, label: &str, reference: [f32; 4]) {
    let best = r
        .detections
        .iter()
        .filter(|d| d.label == label)
        .map(|d| (iou(&d.bbox, &kestrel_core::geometry::ImageBox::new(reference)), d))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((v, d)) => assert!(
            v >= 0.9,
            "{label}: best box {:?} has IoU {v:.3} with reference {reference:?}",
            d.bbox
        ),
        None => panic!("no {label} in {:?}", labels(r)),
    }
}

fn assert_person_jpg(model: &str) {
    let r = run(model, "person.jpg");
    assert_eq!((r.width, r.height), (640, 424));
    assert_found(&r, "person", [187.0, 104.0, 276.0, 381.0]);
    assert_found(&r, "dog", [69.0, 265.0, 201.0, 353.0]);
    assert_found(&r, "horse", [395.0, 135.0, 607.0, 332.0]);
    assert!(r.detections[0].score > 0.9, "{model}: {:?}", r.detections[0]);
    for d in &r.detections {
        assert!(d.bbox[0] >= 0.0 && d.bbox[1] >= 0.0 && d.bbox[2] <= 640.0 && d.bbox[3] <= 424.0);
        assert!(d.bbox[0] < d.bbox[2] && d.bbox[1] < d.bbox[3]);
    }
}

/// One real-model inference: also the one that `scripts/build-aarch64.sh --test` runs under qemu-aarch64.
#[test]
fn person_jpg_has_a_person_a_dog_and_a_horse() {
    let _g = common::shared_lock();
    assert_person_jpg("yolov3-tiny-416.onnx");
}

#[test]
fn the_fp16_model_finds_the_same_in_person_jpg() {
    let _g = common::shared_lock();
    assert_person_jpg("yolov3-tiny-416-fp16.onnx");
}

#[test]
fn dog_jpg_has_a_dog_a_bicycle_and_a_car_or_truck() {
    let _g = common::shared_lock();
    let r = run("yolov3-tiny-416.onnx", "dog.jpg");
    assert_eq!((r.width, r.height), (768, 576));
    assert_found(&r, "dog", [133.0, 188.0, 370.0, 513.0]);
    assert_found(&r, "bicycle", [205.0, 151.0, 577.0, 448.0]);
    assert_found(&r, "car", [466.0, 71.0, 680.0, 170.0]);
    let l = labels(&r);
    assert!(!l.contains(&"person") && !l.contains(&"horse"), "{l:?}");
}

#[test]
fn scores_are_sorted_and_times_reported() {
    let _g = common::shared_lock();
    let r = run("yolov3-tiny-416.onnx", "horses.jpg");
    assert!(r.detections.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(labels(&r).contains(&"horse"));
    let t = r.times_ms;
    assert!(t.decode > 0.0 && t.preprocess > 0.0 && t.infer > 0.0 && t.postprocess > 0.0);
    assert!(t.total >= t.decode + t.preprocess + t.infer);
}
