//! Golden vectors of protocol v1 (docs/protocol.md): `tests/golden/stream.bin` (binary framing) and
//! `tests/golden/stream.jsonl` (the same messages as JSON Lines) must be exactly what the encoder writes, and
//! must decode to the same messages. The Python and C example clients are tested on the same files.
//! Regenerate (after a deliberate protocol change) with
//! `KESTREL_WRITE_GOLDEN=1 cargo test --test inprocess golden::`.

use crate::common;
use kestrel_core::detection::Detection;
use kestrel_core::published::{FrameTimes, Published};
use kestrel_protocol::{
    decode_binary, decode_json, next_binary_frame, write_detections_binary, write_detections_json, write_json_message,
    Format, Hello, Message, ModelHello,
};

fn labels() -> Vec<String> {
    vec!["person".into(), "car".into(), "dog".into()]
}

fn hello(format: Format) -> Hello {
    Hello {
        protocol: 1,
        kestrel: "0.1.0".into(),
        model: ModelHello {
            path: "models/yolov3-tiny-416.onnx".into(),
            input_width: 416,
            input_height: 416,
            precision: "f32".into(),
            layout: "yolov5".into(),
        },
        labels: labels(),
        camera: "v4l2:/dev/video0".into(),
        execution_provider: "cpu".into(),
        execution_provider_fallback: None,
        execution_precision: None,
        intrinsics: true,
        format,
        status_interval_ms: 1000,
        zenoh_key: None,
    }
}

fn encode(format: Format) -> Vec<u8> {
    let labels = labels();
    let mut out = Vec::new();
    write_json_message("hello", &hello(format), format, &mut out);
    let dets = [
        Detection {
            class_id: 0,
            score: 0.875,
            bbox: kestrel_core::geometry::ImageBox::new([412.5, 200.0, 530.25, 610.0]),
        },
        Detection {
            class_id: 2,
            score: 0.5,
            bbox: kestrel_core::geometry::ImageBox::new([0.0, 360.0, 64.0, 720.0]),
        },
    ];
    let angles = [[0.125f32, -0.25], [-0.5, 0.0625]];
    for (seq, d, a) in [
        (41u64, &dets[..], &angles[..]),
        (42, &dets[..1], &[][..]),
        (43, &[][..], &[][..]),
    ] {
        let f = Published {
            seq,
            capture_ns: 81_234_567_890_123 + seq * 40_000_000,
            capture_realtime_ns: 1_764_342_000_123_456_789 + seq * 40_000_000,
            publish_ns: 81_234_599_890_123 + seq * 40_000_000,
            times: FrameTimes {
                queue_ms: 0.5,
                decode_ms: 1.5,
                letterbox_ms: 0.75,
                infer_ms: 27.25,
                postprocess_ms: 0.125,
            },
            width: 1280,
            height: 720,
            detections: d,
            angles: a,
            labels: &labels,
            fps: 25.0,
        };
        match format {
            Format::Json => write_detections_json(&f, &mut out).unwrap(),
            Format::Binary => write_detections_binary(&f, &mut out),
        }
    }
    #[derive(serde::Serialize)]
    struct Missed {
        count: u64,
    }
    write_json_message("missed", &Missed { count: 3 }, format, &mut out);
    let status = serde_json::json!({
        "time_ns": 81_236_000_000_000u64, "health": "camera_lost", "reason": "camera lost 2.4 s ago; reconnecting",
        "uptime_s": 3600.5, "fps_in": 0.0, "fps_out": 0.0, "frames_captured": 107_400, "frames_published": 107_391,
        "drops": {"driver": 2, "stale": 5}, "latency_ms": {"p50": 31.25, "p99": 38.0}, "last_publish_age_s": 2.5,
        "camera": {"state": "camera_lost", "state_s": 2.4, "losses": 1, "driver_drops": 2, "corrupt_frames": 0,
                   "dequeue_timeouts": 0, "restarts": 0, "last_outage_ms": 0},
        "execution_provider": "cpu", "subscribers": 2
    });
    write_json_message("status", &status, format, &mut out);
    out
}

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn golden_vectors_match_the_encoder_and_decode_identically() {
    let _g = common::shared_lock();
    let (bin, jsonl) = (encode(Format::Binary), encode(Format::Json));
    if std::env::var_os("KESTREL_WRITE_GOLDEN").is_some() {
        std::fs::write(golden("stream.bin"), &bin).unwrap();
        std::fs::write(golden("stream.jsonl"), &jsonl).unwrap();
    }
    assert_eq!(
        std::fs::read(golden("stream.bin")).unwrap(),
        bin,
        "stream.bin differs from the encoder"
    );
    assert_eq!(
        std::fs::read(golden("stream.jsonl")).unwrap(),
        jsonl,
        "stream.jsonl differs from the encoder"
    );
    // Decode both; same messages (labels for binary come from its hello).
    let from_json: Vec<Message> = jsonl
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| decode_json(l).unwrap())
        .collect();
    let mut from_bin = Vec::new();
    let (mut rest, mut labels) = (&bin[..], Vec::new());
    while let Some((range, used)) = next_binary_frame(rest).unwrap() {
        let m = decode_binary(&rest[range], &labels).unwrap();
        if let Message::Hello(h) = &m {
            labels = h.labels.clone();
        }
        from_bin.push(m);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!((from_json.len(), from_bin.len()), (6, 6));
    for (a, b) in from_json.iter().zip(&from_bin) {
        match (a, b) {
            (Message::Hello(x), Message::Hello(y)) => assert_eq!(x.labels, y.labels),
            _ => assert_eq!(a, b),
        }
    }
}
