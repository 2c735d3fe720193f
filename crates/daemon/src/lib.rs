//! Kestrel's daemon, the top library layer: [`config`] aggregates every section and validates it,
//! [`assemble`] builds a running pipeline from it, [`pipeline`] runs the stages (capture, prepare, infer,
//! publish: one named thread each, bounded channels between them), [`metrics`] times them, [`sink`],
//! [`publish`] (the Unix socket), [`mavlink`] and [`zenoh_out`] are the outputs (each `status` from [`status`]), [`service`] speaks systemd's notify
//! protocol and feeds the watchdog, [`startup`] runs the precision self-test, and [`supervisor`] owns
//! signals, reloads and the stop order.

pub mod assemble;
pub mod config;
pub mod mavlink;
pub mod metrics;
pub mod pipeline;
pub mod publish;
pub mod service;
pub mod sink;
pub mod startup;
pub mod status;
pub mod supervisor;
#[cfg(feature = "zenoh")]
pub mod zenoh_out;
#[cfg(not(feature = "zenoh"))]
#[path = "zenoh_off.rs"]
pub mod zenoh_out;
