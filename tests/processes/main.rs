//! The integration tests that start the `kestrel` binary: bad input on the command line, `kestrel run` with
//! real signals, execution providers, the detection socket, the precision self-test, the systemd service
//! protocol. One module per suite (tests named `cli::…`, `service::…`); the tests that measure time take
//! `common::timing_lock()`, the others `common::shared_lock()`.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod daemon;
mod ep;
mod publish;
mod selftest;
mod service;
