//! Running under systemd (`Type=notify`, sd_notify(3)): `STATUS=` lines that say what the daemon is doing,
//! `READY=1` once the model is warm and the source is open, `WATCHDOG=1` only while frames make progress,
//! `RELOADING=1` around a SIGHUP reload, `STOPPING=1` on shutdown.
//!
//! The watchdog rule ([`assess`]): after `READY=1`, the watchdog is fed while a frame was published within
//! half the watchdog interval, or — with `service.watchdog_in_camera_outage` — while the camera is lost
//! and the source's reconnect loop is itself alive. Anything else (inference hung, capture hung, a stage
//! blocked) stops the pings; systemd then kills and restarts the service at most 1.5 × `WatchdogSec=` after
//! the last frame.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) nothing is sent, but stalls are still logged.

use std::time::{Duration, Instant};

use crate::config::ServiceConfig;
use crate::metrics::{Metrics, Stage};
use kestrel_core::status::SourceState;

/// Without a watchdog, a pipeline is called stalled (in `STATUS=` and the log) after this long.
const STALL_WITHOUT_WATCHDOG: Duration = Duration::from_secs(5);

/// What the notifier sees of the pipeline at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Seconds since the last published frame, or since the daemon became ready if that is later.
    pub progress_age_s: f64,
    /// A camera source: its state, seconds in that state, seconds since its loop last ran.
    pub camera: Option<(SourceState, f64, f64)>,
}

/// The pipeline's condition, as the watchdog sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Frames are being published.
    Running,
    /// The camera is gone and the source is reconnecting; `feeds` says whether the watchdog is fed anyway.
    CameraOutage { for_s: f64, feeds: bool },
    /// Nothing published for `for_s` seconds and nothing that explains it: the watchdog is not fed.
    Stalled { for_s: f64 },
}

impl Verdict {
    pub fn feeds_watchdog(self) -> bool {
        match self {
            Verdict::Running => true,
            Verdict::CameraOutage { feeds, .. } => feeds,
            Verdict::Stalled { .. } => false,
        }
    }
}

/// The watchdog rule (pure): `stall_after_s` is half the watchdog interval.
pub fn assess(o: &Observation, stall_after_s: f64, feed_in_outage: bool) -> Verdict {
    if let Some((state, for_s, heartbeat_age_s)) = o.camera {
        // A lost camera whose reconnect loop still runs is handled in-process; a loop that stopped running
        // is a hang like any other.
        if state != SourceState::Streaming && heartbeat_age_s < stall_after_s {
            return Verdict::CameraOutage {
                for_s,
                feeds: feed_in_outage,
            };
        }
    }
    if o.progress_age_s < stall_after_s {
        Verdict::Running
    } else {
        Verdict::Stalled {
            for_s: o.progress_age_s,
        }
    }
}

/// Sends sd_notify messages (when `NOTIFY_SOCKET` is set) and keeps the watchdog rule.
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    active: bool,
    /// `WATCHDOG_USEC` (for this process).
    watchdog: Option<Duration>,
    cfg: ServiceConfig,
    ready_at: Option<Instant>,
    last_ping: Option<Instant>,
    last_status: Option<Instant>,
    /// (when, published, captured) at the last running status, for the rates.
    rates: (Instant, u64, u64),
    verdict: Verdict,
    send_failed: bool,
    /// What the source is called in status lines.
    source_name: String,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env(cfg: &ServiceConfig) -> Self {
        let active = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let mut usec = 0;
        let watchdog =
            (active && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec));
        if let Some(w) = watchdog {
            log::info!(
                "systemd watchdog: {} ms; fed every {} ms while frames are published",
                w.as_millis(),
                (w / 4).as_millis()
            );
        }
        Self {
            active,
            watchdog,
            cfg: cfg.clone(),
            ready_at: None,
            last_ping: None,
            last_status: None,
            rates: (Instant::now(), 0, 0),
            verdict: Verdict::Running,
            send_failed: false,
            source_name: String::new(),
        }
    }

    /// True under systemd's notify protocol.
    pub fn active(&self) -> bool {
        self.active
    }

    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&mut self, states: &[sd_notify::NotifyState<'_>]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            if !self.send_failed {
                self.send_failed = true;
                log::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
            }
        }
    }

    /// `STATUS=`: what the daemon is doing (shown by `systemctl status`).
    pub fn status(&mut self, text: &str) {
        log::debug!("status: {text}");
        self.send(&[sd_notify::NotifyState::Status(text)]);
    }

    /// The source the pipeline reads, for status lines.
    pub fn set_source_name(&mut self, name: &str) {
        self.source_name = name.to_string();
    }

    /// `RELOADING=1` (a SIGHUP reload starts).
    pub fn reloading(&mut self) {
        let now = sd_notify::NotifyState::monotonic_usec_now();
        match now {
            Ok(now) => self.send(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => self.send(&[sd_notify::NotifyState::Reloading]),
        }
    }

    /// `READY=1` again after a reload (accepted or rejected), with a status line.
    pub fn reloaded(&mut self, text: &str) {
        self.send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(text)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self, text: &str) {
        self.send(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status(text)]);
    }

    pub fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }

    /// Call often (every ~10 ms) while the pipeline runs: sends `READY=1` once the source is open, refreshes
    /// `STATUS=`, and pings the watchdog while [`assess`] says so.
    pub fn tick(&mut self, m: &Metrics) {
        let now = Instant::now();
        let camera = m.source_status();
        let Some(ready_at) = self.ready_at else {
            match camera.as_ref().map(|c| (c.state(), c.snapshot().state_s)) {
                Some((SourceState::Streaming, _)) | None => {
                    self.ready_at = Some(now);
                    self.rates = (now, m.published_total(), m.captured_total());
                    let text = format!("running: source {} open, waiting for the first frame", self.source_name);
                    log::info!("ready: {text}");
                    self.send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&text)]);
                    self.last_status = Some(now);
                }
                Some((_, waited_s)) => {
                    if self.status_due(now, Duration::from_secs(1)) {
                        let text = format!("waiting for camera {} ({waited_s:.0} s)", self.source_name);
                        self.status(&text);
                    }
                }
            }
            return;
        };
        let last_pub = m.last_publish_ns.load(std::sync::atomic::Ordering::Relaxed);
        let since_ready_s = now.duration_since(ready_at).as_secs_f64();
        let progress_age_s = if last_pub == 0 {
            since_ready_s
        } else {
            (kestrel_core::clock::monotonic_ns().saturating_sub(last_pub) as f64 * 1e-9).min(since_ready_s)
        };
        let obs = Observation {
            progress_age_s,
            camera: camera
                .as_ref()
                .map(|c| (c.state(), c.snapshot().state_s, c.heartbeat_age_s())),
        };
        let stall_after = self.watchdog.map_or(STALL_WITHOUT_WATCHDOG, |w| w / 2);
        let verdict = assess(&obs, stall_after.as_secs_f64(), self.cfg.watchdog_in_camera_outage);
        self.log_transition(verdict);
        if let Some(w) = self.watchdog {
            if verdict.feeds_watchdog() && self.last_ping.is_none_or(|t| now.duration_since(t) >= w / 4) {
                self.last_ping = Some(now);
                self.send(&[sd_notify::NotifyState::Watchdog]);
            }
        }
        let changed = std::mem::discriminant(&verdict) != std::mem::discriminant(&self.verdict);
        self.verdict = verdict;
        if changed || self.status_due(now, Duration::from_millis(self.cfg.status_interval_ms)) {
            let text = self.status_text(verdict, m, now);
            self.status(&text);
        }
    }

    fn status_due(&mut self, now: Instant, every: Duration) -> bool {
        if self.last_status.is_some_and(|t| now.duration_since(t) < every) {
            return false;
        }
        self.last_status = Some(now);
        true
    }

    fn log_transition(&self, verdict: Verdict) {
        let watchdog = if self.watchdog.is_some() {
            "; not feeding the systemd watchdog"
        } else {
            ""
        };
        match (self.verdict, verdict) {
            (Verdict::Stalled { .. }, Verdict::Stalled { .. }) => {}
            (_, Verdict::Stalled { for_s }) => {
                log::error!("pipeline stalled: no frame published for {for_s:.1} s{watchdog}");
            }
            (Verdict::Stalled { for_s }, _) => log::warn!("pipeline moving again after a {for_s:.1} s stall"),
            (Verdict::Running, Verdict::CameraOutage { feeds: false, .. }) if self.watchdog.is_some() => {
                log::warn!("camera lost and service.watchdog_in_camera_outage = false{watchdog}");
            }
            _ => {}
        }
    }

    fn status_text(&mut self, verdict: Verdict, m: &Metrics, now: Instant) -> String {
        match verdict {
            Verdict::Running => {
                let (published, captured) = (m.published_total(), m.captured_total());
                let dt = now.duration_since(self.rates.0).as_secs_f64().max(1e-3);
                let fps_out = published.saturating_sub(self.rates.1) as f64 / dt;
                let fps_in = captured.saturating_sub(self.rates.2) as f64 / dt;
                self.rates = (now, published, captured);
                let lat = m.peek(Stage::CaptureToPublish);
                format!(
                    "running at {fps_out:.1} fps (source {fps_in:.1} fps), capture to publish p50 {:.0} ms, {} frames",
                    lat.p50_ms, published
                )
            }
            Verdict::CameraOutage { for_s, feeds } => format!(
                "camera {} lost {for_s:.0} s ago; reconnecting{}",
                self.source_name,
                if feeds { "" } else { " (watchdog not fed)" }
            ),
            Verdict::Stalled { for_s } => format!(
                "stalled: no frame published for {for_s:.1} s{}",
                if self.watchdog.is_some() {
                    " (watchdog not fed)"
                } else {
                    ""
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(age: f64, camera: Option<(SourceState, f64, f64)>) -> Observation {
        Observation {
            progress_age_s: age,
            camera,
        }
    }

    #[test]
    fn frames_flowing_feed_the_watchdog() {
        assert_eq!(assess(&obs(0.1, None), 5.0, true), Verdict::Running);
        let streaming = Some((SourceState::Streaming, 30.0, 0.01));
        assert_eq!(assess(&obs(4.9, streaming), 5.0, true), Verdict::Running);
    }

    #[test]
    fn no_frames_without_a_camera_outage_is_a_stall() {
        assert_eq!(assess(&obs(5.0, None), 5.0, true), Verdict::Stalled { for_s: 5.0 });
        // A camera that says it streams but delivers nothing (hung driver, hung inference): stalled.
        let streaming = Some((SourceState::Streaming, 30.0, 0.01));
        assert!(!assess(&obs(6.0, streaming), 5.0, true).feeds_watchdog());
    }

    #[test]
    fn a_camera_outage_feeds_only_while_the_reconnect_loop_runs_and_only_if_configured() {
        let lost = Some((SourceState::CameraLost, 12.0, 0.02));
        assert_eq!(
            assess(&obs(12.0, lost), 5.0, true),
            Verdict::CameraOutage {
                for_s: 12.0,
                feeds: true
            }
        );
        assert!(!assess(&obs(12.0, lost), 5.0, false).feeds_watchdog());
        // The source's own loop stopped running: a hang, whatever its state says.
        let hung = Some((SourceState::CameraLost, 12.0, 6.0));
        assert_eq!(assess(&obs(12.0, hung), 5.0, true), Verdict::Stalled { for_s: 12.0 });
    }
}
