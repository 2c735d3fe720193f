//! Kestrel's model compression, built on the inference layer and not on the daemon: ONNX models read and
//! written through the vendored `onnx.proto` ([`onnx`]), detection fidelity of one model against another or
//! against labels ([`evaluate`], [`annotate`]).

pub mod annotate;
pub mod evaluate;

/// The ONNX protobuf messages, generated from `proto/onnx.proto` at build time.
pub mod onnx {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
