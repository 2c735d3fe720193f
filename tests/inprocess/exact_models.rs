//! Exact tests of YOLO decoding, NMS and letterbox mapping through ONNX Runtime, with tiny constant-output
//! models whose outputs are known (tests/fixtures/make_fixtures.py), plus model validation at load.

use crate::common;

use kestrel_infer::detect::LabelledDetection as Detection;
use kestrel_infer::detect::{ImageDetector, StageTimes, Thresholds};
use kestrel_infer::model::{Detector, ModelError, Precision, SessionOptions};
use kestrel_vision::decode::RgbImage;
use kestrel_vision::yolo::OutputLayout;

fn load(name: &str) -> Result<Detector, ModelError> {
    Detector::load(
        common::runtime(),
        &common::fixture(name),
        None,
        &SessionOptions::default(),
    )
}

fn detect(name: &str, width: u32, height: u32, thresholds: Thresholds) -> Vec<Detection> {
    let mut d = ImageDetector::new(load(name).unwrap(), thresholds).unwrap();
    let img = RgbImage {
        width,
        height,
        data: vec![90; (width * height * 3) as usize],
    };
    d.detect_rgb(&img, &mut StageTimes::default()).unwrap()
}

fn summary(d: &[Detection]) -> Vec<(String, f32, [f32; 4])> {
    d.iter().map(|d| (d.label.clone(), d.score, d.bbox.xyxy())).collect()
}

fn assert_close(got: &[Detection], want: &[(&str, f32, [f32; 4])], tol: f32) {
    assert_eq!(got.len(), want.len(), "got {:?}", summary(got));
    for (g, (label, score, bbox)) in got.iter().zip(want) {
        assert_eq!(g.label, *label, "got {:?}", summary(got));
        assert!(
            (g.score - score).abs() <= tol,
            "score {} vs {score}: {:?}",
            g.score,
            summary(got)
        );
        for k in 0..4 {
            assert!(
                (g.bbox[k] - bbox[k]).abs() <= tol * 100.0,
                "box {:?} vs {bbox:?}",
                g.bbox
            );
        }
    }
}

/// Expected result of the v5/v8 constant models on a square 64x64 image (identity letterbox).
const SQUARE: [(&str, f32, [f32; 4]); 5] = [
    ("c0", 0.81, [12.0, 28.0, 20.0, 36.0]),
    ("c1", 0.80, [13.0, 28.0, 21.0, 36.0]),
    ("c0", 0.70, [0.0, 54.0, 10.0, 64.0]), // crosses the left and bottom borders: clipped
    ("c0", 0.30, [43.0, 17.0, 53.0, 23.0]),
    ("c0", 0.30, [27.0, 5.0, 33.0, 11.0]), // equal score: the earlier row wins, its overlapping twin goes
];

#[test]
fn yolov5_layout_exact() {
    let _g = common::shared_lock();
    let d = load("v5_const.onnx").unwrap();
    assert_eq!(d.info.layout, OutputLayout::Yolov5 { rows: 9, classes: 2 });
    assert_eq!(d.info.labels, ["c0", "c1"]);
    assert_close(&detect("v5_const.onnx", 64, 64, Thresholds::default()), &SQUARE, 1e-6);
}

#[test]
fn yolov8_layout_exact() {
    let _g = common::shared_lock();
    let d = load("v8_const.onnx").unwrap();
    assert_eq!(d.info.layout, OutputLayout::Yolov8 { rows: 9, classes: 2 });
    assert_close(&detect("v8_const.onnx", 64, 64, Thresholds::default()), &SQUARE, 1e-6);
}

#[test]
fn fp16_model_gets_fp16_input_and_decodes() {
    let _g = common::shared_lock();
    let d = load("v5_const_fp16.onnx").unwrap();
    assert_eq!(
        (d.info.input_precision, d.info.output_precision),
        (Precision::F16, Precision::F16)
    );
    assert_close(
        &detect("v5_const_fp16.onnx", 64, 64, Thresholds::default()),
        &SQUARE,
        1e-3,
    );
}

#[test]
fn letterbox_with_padding_maps_boxes_back() {
    let _g = common::shared_lock();
    // 128x64 image: scale 0.5, 64x32 inside the 64x64 input, 16 rows of padding on top.
    let got = detect("v5_const.onnx", 128, 64, Thresholds::default());
    let want = [
        ("c0", 0.81, [24.0, 24.0, 40.0, 40.0]),
        ("c1", 0.80, [26.0, 24.0, 42.0, 40.0]),
        ("c0", 0.70, [0.0, 64.0, 20.0, 64.0]), // entirely in the bottom padding: clipped to a flat box
        ("c0", 0.30, [86.0, 2.0, 106.0, 14.0]),
        ("c0", 0.30, [54.0, 0.0, 66.0, 0.0]), // in the top padding
    ];
    assert_close(&got, &want, 1e-6);
}

#[test]
fn odd_padding_puts_the_extra_row_at_the_bottom() {
    let _g = common::shared_lock();
    // 64x33 image: no scaling, 31 rows of padding: 15 on top, 16 at the bottom.
    let got = detect("v5_const.onnx", 64, 33, Thresholds::default());
    assert_eq!(got[0].bbox.xyxy(), [12.0, 13.0, 20.0, 21.0]);
    assert_eq!(got[3].bbox.xyxy(), [43.0, 2.0, 53.0, 8.0]);
}

#[test]
fn thresholds_and_caps() {
    let _g = common::shared_lock();
    assert!(
        detect("v5_low.onnx", 64, 64, Thresholds::default()).is_empty(),
        "all below threshold"
    );
    assert!(detect(
        "v5_const.onnx",
        64,
        64,
        Thresholds {
            conf: 0.9,
            ..Default::default()
        }
    )
    .is_empty());
    let top2 = detect(
        "v5_const.onnx",
        64,
        64,
        Thresholds {
            max_detections: 2,
            ..Default::default()
        },
    );
    assert_close(&top2, &SQUARE[..2], 1e-6);
    // IoU threshold 0.8: row 1 (IoU 0.78 with row 0) and row 8 (IoU 0.71 with row 7) now survive.
    let loose = detect(
        "v5_const.onnx",
        64,
        64,
        Thresholds {
            iou: 0.8,
            ..Default::default()
        },
    );
    assert_eq!(loose.len(), 7);
    assert_eq!((loose[1].label.as_str(), loose[1].score), ("c0", 0.8));
}

#[test]
fn dynamic_input_probes_the_output_shape() {
    let _g = common::shared_lock();
    let d = load("v5_dynamic.onnx").unwrap();
    assert_eq!((d.info.input_width, d.info.input_height), (640, 640));
    assert_eq!(d.info.layout, OutputLayout::Yolov5 { rows: 9, classes: 2 });
}

#[test]
fn invalid_models_are_refused_with_the_shapes_named() {
    let _g = common::shared_lock();
    let msg = |name: &str| match load(name) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string(),
    };
    let m = msg("bad_output_rank.onnx");
    assert!(m.contains("[1, 10]") && m.contains("[1, N, 5+nc]"), "{m}");
    let m = msg("bad_input_rank.onnx");
    assert!(m.contains("[1, 64, 64]") && m.contains("[1, 3, H, W]"), "{m}");
    let m = msg("bad_nonsquare_dynamic.onnx");
    assert!(m.contains("[1, 3, -1, 64]"), "{m}");
    let m = msg("bad_input_type.onnx");
    assert!(m.contains("Uint8"), "{m}");
    let missing = common::root().join("tests/fixtures/generated/nope.onnx");
    let m = Detector::load(common::runtime(), &missing, None, &SessionOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(m.contains("nope.onnx") && m.contains("not found"), "{m}");
}

/// A `.onnx.zst` package (zstd, its sha256 beside it) loads from memory and detects exactly as the file it
/// was made from; a package whose bytes no longer match its checksum does not load.
#[test]
fn package_loads_like_its_model_and_a_changed_one_is_refused() {
    use kestrel_infer::package;
    let _g = common::shared_lock();
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixture("v5_const.onnx")).unwrap();
    let zst = d.path().join("v5_const.onnx.zst");
    let z = package::encode(&bytes, 3).unwrap();
    std::fs::write(&zst, &z).unwrap();
    std::fs::write(
        package::sidecar_path(&zst),
        package::sidecar_text(&package::sha256_hex(&z), &zst),
    )
    .unwrap();
    let load_zst = || Detector::load(common::runtime(), &zst, None, &SessionOptions::default());
    let loaded = load_zst().unwrap();
    assert_eq!(loaded.info.path, zst);
    assert_eq!(loaded.info.layout, OutputLayout::Yolov5 { rows: 9, classes: 2 });
    let mut det = ImageDetector::new(loaded, Thresholds::default()).unwrap();
    let img = RgbImage {
        width: 64,
        height: 64,
        data: vec![90; 64 * 64 * 3],
    };
    assert_close(
        &det.detect_rgb(&img, &mut StageTimes::default()).unwrap(),
        &SQUARE,
        1e-6,
    );
    let mut changed = z.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&zst, &changed).unwrap();
    let e = load_zst().err().unwrap();
    let m = e.to_string();
    assert!(matches!(e, ModelError::Load { .. }), "{m}");
    assert!(m.contains("sha256 mismatch") && m.contains("v5_const.onnx.zst"), "{m}");
}
