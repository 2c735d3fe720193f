//! Kestrel's model compression, built on the inference layer and not on the daemon.
//!
//! - [`model`]: ONNX models read and written through the vendored `onnx.proto` ([`onnx`]), atomically.
//! - [`graph`]: which convolutions can be decomposed, BatchNormalization folding, replacing a convolution.
//! - [`tucker`]: Tucker-2 factors (HOSVD, HOOI, data-aware), pure maths on `faer`.
//! - [`stats`]: a layer's input statistics, from which the output error of any candidate follows exactly.
//! - [`search`]: the rank ladder and the binary search under the error bound.
//! - [`evaluate`], [`annotate`]: detection fidelity of one model against another or against labels.
//! - [`prune`]: structured channel pruning through the whole graph (dependency groups, L1 or data-aware
//!   channels with the next layers refitted), alone or before Tucker.
//! - [`zeros`]: magnitude pruning that only writes zeros (`--method zeros`), and what that does (and does not)
//!   change: parameters, file size, zstd size, fps.
//! - [`package`]: `--package`, the model as `.onnx.zst` with its sha256 beside it.

pub mod annotate;
pub mod capture;
pub mod compress;
pub mod evaluate;
pub mod graph;
pub mod model;
pub mod package;
pub mod prune;
pub mod search;
pub mod stats;
pub mod timing;
pub mod tucker;
pub mod zeros;

/// The ONNX protobuf messages, generated from `proto/onnx.proto` at build time.
pub mod onnx {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
