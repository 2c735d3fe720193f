//! Kestrel's inference layer, everything that touches ONNX Runtime: [`runtime`] finds and loads the
//! library, [`gpu`] probes CUDA and TensorRT, [`ep`] plans and registers execution providers, [`engine_cache`]
//! keeps TensorRT engines, [`model`] owns a session and its input/output tensors (from a model file or a
//! [`package`], `.onnx.zst` with its sha256 beside it), [`detect`] runs the whole chain on still images, and
//! [`selftest`] checks a provider and precision against golden detections.
//!
//! It depends on the vision crate for the pure per-frame maths and on nothing above it: a model-compression
//! tool can build on it without the daemon.

pub mod detect;
pub mod engine_cache;
pub mod ep;
pub mod gpu;
pub mod model;
pub mod package;
pub mod runtime;
pub mod selftest;
