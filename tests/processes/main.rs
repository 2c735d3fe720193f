//! The integration tests that start the `kestrel` binary: bad input on the command line, `kestrel run` with
//! real signals, execution providers, the detection socket, the precision self-test, the systemd service
//! protocol. One module per suite (tests named `cli::…`, `service::…`); the tests that measure time take
//! `common::timing_lock()`, the others `common::shared_lock()`.

// Tests may unwrap and expect: a failure should stop the test loudly (the workspace denies both elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod daemon;
mod ep;
mod publish;
mod selftest;
mod service;
