//! A camera source's health, shared lock-free with metrics, the service and the publisher.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::clock::monotonic_ns;

/// Where a camera source stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Not streamed yet (opening, or waiting for the device to appear).
    Starting,
    Streaming,
    /// The device went away or failed; reconnecting with backoff.
    CameraLost,
}

/// Counters and state a camera source shares with metrics, the service and the publisher. Lock-free.
#[derive(Debug)]
pub struct SourceStatus {
    state: AtomicU8,
    /// CLOCK_MONOTONIC ns of the last state change.
    since_ns: AtomicU64,
    /// Times the camera was lost (unplug, fatal streaming error, dequeue timeout).
    pub losses: AtomicU64,
    /// Frames the driver skipped (gaps in its sequence numbers).
    pub driver_drops: AtomicU64,
    /// Of `driver_drops`, those kestrel caused: the capture thread stayed away from the driver until its queued
    /// buffers ran out (see `v4l2::negotiate::LateCapture`). Should stay 0.
    pub capture_late_drops: AtomicU64,
    /// Buffers the driver flagged as corrupt, or shorter than the format needs; skipped.
    pub corrupt_frames: AtomicU64,
    /// Waits for a frame that hit `dequeue_timeout_ms`.
    pub dequeue_timeouts: AtomicU64,
    /// Stream restarts after errors (each reopens the device).
    pub restarts: AtomicU64,
    /// Duration of the last completed outage, ms (0: none yet).
    pub last_outage_ms: AtomicU64,
    /// CLOCK_MONOTONIC ns when the source's own loop last ran (streaming or reconnecting): proof that a
    /// camera outage is being handled, not hung.
    heartbeat_ns: AtomicU64,
}

impl Default for SourceStatus {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(SourceState::Starting as u8),
            since_ns: AtomicU64::new(monotonic_ns()),
            losses: AtomicU64::new(0),
            driver_drops: AtomicU64::new(0),
            capture_late_drops: AtomicU64::new(0),
            corrupt_frames: AtomicU64::new(0),
            dequeue_timeouts: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            last_outage_ms: AtomicU64::new(0),
            heartbeat_ns: AtomicU64::new(monotonic_ns()),
        }
    }
}

/// A copy of [`SourceStatus`] at one moment.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceSnapshot {
    pub state: SourceState,
    /// Seconds in the current state.
    pub state_s: f64,
    pub losses: u64,
    pub driver_drops: u64,
    /// Of `driver_drops`, those caused by kestrel's capture being late (absent from older messages: 0).
    #[serde(default)]
    pub capture_late_drops: u64,
    pub corrupt_frames: u64,
    pub dequeue_timeouts: u64,
    pub restarts: u64,
    pub last_outage_ms: u64,
}

impl SourceStatus {
    pub fn state(&self) -> SourceState {
        match self.state.load(Relaxed) {
            1 => SourceState::Streaming,
            2 => SourceState::CameraLost,
            _ => SourceState::Starting,
        }
    }

    pub fn set_state(&self, s: SourceState) {
        if self.state.swap(s as u8, Relaxed) != s as u8 {
            self.since_ns.store(monotonic_ns(), Relaxed);
        }
    }

    /// The source's loop is alive (call on every pass).
    pub fn beat(&self) {
        self.heartbeat_ns.store(monotonic_ns(), Relaxed);
    }

    /// Seconds since [`Self::beat`] last ran.
    pub fn heartbeat_age_s(&self) -> f64 {
        monotonic_ns().saturating_sub(self.heartbeat_ns.load(Relaxed)) as f64 * 1e-9
    }

    pub fn snapshot(&self) -> SourceSnapshot {
        let since = self.since_ns.load(Relaxed);
        SourceSnapshot {
            state: self.state(),
            state_s: monotonic_ns().saturating_sub(since) as f64 * 1e-9,
            losses: self.losses.load(Relaxed),
            driver_drops: self.driver_drops.load(Relaxed),
            capture_late_drops: self.capture_late_drops.load(Relaxed),
            corrupt_frames: self.corrupt_frames.load(Relaxed),
            dequeue_timeouts: self.dequeue_timeouts.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            last_outage_ms: self.last_outage_ms.load(Relaxed),
        }
    }
}
