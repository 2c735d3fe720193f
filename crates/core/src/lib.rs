//! Kestrel: an on-device YOLO object detector for drones.
//!
//! The crate is organised one module per pipeline stage. The per-frame stages are pure functions:
//! [`decode`] (bytes → RGB), [`letterbox`] (RGB → model tensor, with the geometry that maps boxes back),
//! [`yolo`] (model output → candidate boxes) and [`nms`] (candidates → detections). [`runtime`] finds and
//! loads ONNX Runtime, [`model`] owns an inference session, and [`detect`] wires the stages together for
//! still images (`kestrel detect`).

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod decode;
pub mod detect;
pub mod engine_cache;
pub mod ep;
pub mod gpu;
pub mod labels;
pub mod letterbox;
pub mod mavlink;
pub mod model;
pub mod nms;
pub mod runtime;
pub mod yolo;

/// An axis-aligned box `[x1, y1, x2, y2]`.
pub type BoxXyxy = [f32; 4];

/// One detection in source-image pixels.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Detection {
    pub class_id: u32,
    pub label: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in source-image pixels, clipped to the image.
    #[serde(rename = "box")]
    pub bbox: BoxXyxy,
}
pub mod angles;
pub mod bench;
pub mod client;
pub mod config;
pub mod daemon;
pub mod frame;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod preprocess;
pub mod publish;
pub mod selftest;
pub mod service;
pub mod sink;
pub mod source;
pub mod yuv;
