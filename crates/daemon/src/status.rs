//! The `status` message's content, shared by every output that sends one (the socket server and Zenoh): rates
//! since the previous status, drop totals, health and its reason. Each output owns its own [`StatusTracker`],
//! so "since the previous status" means that output's previous one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Metrics, Stage};
use crate::publish::PublishStats;
use kestrel_core::clock::monotonic_ns;
use kestrel_core::status::SourceState;
use kestrel_protocol::{Health, LatencyMs, Status};

/// Counters that only grow; "degraded" when one grew since the previous status.
const DEGRADING: [&str; 5] = ["bad_frame", "driver", "corrupt", "dequeue_timeouts", "restarts"];

pub struct StatusTracker {
    metrics: Arc<Metrics>,
    /// `[publish] stall_ms`: no frame published for this long (with the camera there) is `stalled`.
    stall_ms: u64,
    execution_provider: String,
    execution_provider_fallback: Option<String>,
    last_rates: (Instant, u64, u64),
    last_counters: BTreeMap<String, u64>,
}

impl StatusTracker {
    pub fn new(
        metrics: Arc<Metrics>,
        stall_ms: u64,
        execution_provider: String,
        execution_provider_fallback: Option<String>,
    ) -> Self {
        let last_rates = (Instant::now(), metrics.captured_total(), metrics.published_total());
        Self {
            metrics,
            stall_ms,
            execution_provider,
            execution_provider_fallback,
            last_rates,
            last_counters: BTreeMap::new(),
        }
    }

    /// The next status. `socket`: the detection socket's counters when it runs (its drops are reported by
    /// every output); `subscribers`: the socket's subscribers now.
    pub fn next(&mut self, socket: Option<&PublishStats>, subscribers: usize) -> Status {
        let m = &self.metrics;
        let now = Instant::now();
        let (captured, published) = (m.captured_total(), m.published_total());
        let dt = now.duration_since(self.last_rates.0).as_secs_f64().max(1e-3);
        let fps_in = (captured - self.last_rates.1.min(captured)) as f64 / dt;
        let fps_out = (published - self.last_rates.2.min(published)) as f64 / dt;
        self.last_rates = (now, captured, published);
        let mut drops: BTreeMap<String, u64> = m.drop_totals().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let camera = m.source();
        if let Some(c) = &camera {
            drops.insert("driver".into(), c.driver_drops);
            drops.insert("capture_late".into(), c.capture_late_drops);
            drops.insert("corrupt".into(), c.corrupt_frames);
            drops.insert("dequeue_timeouts".into(), c.dequeue_timeouts);
            drops.insert("restarts".into(), c.restarts);
        }
        if let Some(s) = socket {
            drops.insert("subscriber_missed".into(), s.messages_missed.load(Relaxed));
            drops.insert("publisher_behind".into(), s.frames_dropped.load(Relaxed));
        }
        // What grew since the last status.
        let grew: Vec<String> = DEGRADING
            .iter()
            .filter_map(|k| {
                let (now, before) = (drops.get(*k).copied().unwrap_or(0), self.last_counters.get(*k).copied());
                (before.is_some_and(|b| now > b)).then(|| format!("{k} +{}", now - before.unwrap_or(0)))
            })
            .collect();
        self.last_counters = drops.clone();
        let last_pub = m.last_publish_ns.load(Relaxed);
        let age = (last_pub > 0).then(|| monotonic_ns().saturating_sub(last_pub) as f64 * 1e-9);
        let stalled_for = age.unwrap_or(m.uptime().as_secs_f64());
        let (health, reason) = match camera.as_ref().map(|c| (c.state, c.state_s)) {
            Some((SourceState::CameraLost, s)) => {
                (Health::CameraLost, format!("camera lost {s:.1} s ago; reconnecting"))
            }
            Some((SourceState::Starting, s)) => (Health::CameraLost, format!("waiting for the camera for {s:.1} s")),
            _ if stalled_for * 1e3 >= self.stall_ms as f64 => (
                Health::Stalled,
                if captured == 0 {
                    format!("no frame captured in {stalled_for:.1} s")
                } else {
                    format!("no frame published for {stalled_for:.1} s ({fps_in:.1} fps captured)")
                },
            ),
            _ if !grew.is_empty() => (Health::Degraded, grew.join(", ")),
            _ => (Health::Ok, String::new()),
        };
        let lat = m.peek(Stage::CaptureToPublish);
        Status {
            time_ns: monotonic_ns(),
            health,
            reason,
            uptime_s: m.uptime().as_secs_f64(),
            fps_in,
            fps_out,
            frames_captured: captured,
            frames_published: published,
            drops,
            latency_ms: LatencyMs {
                p50: lat.p50_ms,
                p99: lat.p99_ms,
            },
            last_publish_age_s: age,
            camera,
            execution_provider: self.execution_provider.clone(),
            execution_provider_fallback: self.execution_provider_fallback.clone(),
            subscribers,
            zenoh: None,
        }
    }
}
