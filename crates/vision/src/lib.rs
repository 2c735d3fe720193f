//! Kestrel's per-frame maths, pure functions with no ONNX Runtime: [`decode`] (bytes → RGB), [`yuv`]
//! (camera Y'CbCr → RGB), [`letterbox`] (RGB → model tensor, and the geometry that maps boxes back),
//! [`preprocess`] (any frame → tensor, allocation-free), [`yolo`] (model output → candidates in model
//! pixels), [`nms`] (candidates → the kept few), [`labels`] and [`angles`] (a box → bearing angles through
//! the camera's intrinsics). [`pattern`] draws test frames.
//!
//! `cargo test -p kestrel-vision` needs no ONNX Runtime.

pub mod angles;
pub mod decode;
pub mod labels;
pub mod letterbox;
pub mod nms;
pub mod pattern;
pub mod preprocess;
pub mod tensor;
pub mod yolo;
pub mod yuv;
