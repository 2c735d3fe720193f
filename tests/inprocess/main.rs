//! The integration tests that run the library in this process: fixture and real models through ONNX
//! Runtime, the protocol's golden vectors, the streaming engine with stand-in inference, the MAVLink sink
//! against pymavlink. One module per suite (tests named `exact_models::…`, `pipeline::…`); the tests that
//! measure time take `common::timing_lock()`, the others `common::shared_lock()`.
//!
//! tests/alloc.rs is a binary of its own: its counting global allocator sees every thread of its process.

// Tests may unwrap and expect: a failure should stop the test loudly (the workspace denies both elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod compress;
mod exact_models;
mod golden;
mod mavlink;
mod photos;
mod pipeline;
