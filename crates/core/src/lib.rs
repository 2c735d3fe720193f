//! Kestrel's shared vocabulary, the bottom layer every other crate builds on: frames and their pixel
//! formats ([`frame`]), clocks ([`clock`]), buffer pools ([`pool`]), boxes typed by coordinate space
//! ([`geometry`]), the published detection ([`detection`]) and frame ([`published`]), a camera's health
//! ([`status`]), latest-wins queues ([`latest`]), rate-limited per-frame logs ([`ratelog`]) and the range
//! checks every configuration section uses ([`check`]).
//!
//! Nothing here knows about models, cameras or sockets; see `docs/architecture.md` for the layers.

pub mod check;
pub mod clock;
pub mod detection;
pub mod frame;
pub mod geometry;
pub mod latest;
pub mod pool;
pub mod published;
pub mod ratelog;
pub mod status;
