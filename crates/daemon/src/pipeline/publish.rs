//! The publish stage: each finished frame to the sink (and through it to every output), with its capture
//! instant on the wall clock, bearing angles when the camera's intrinsics are known, and the published rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use kestrel_core::clock::{monotonic_ns, realtime_ns};
use kestrel_core::published::Published;
use kestrel_vision::angles::Intrinsics;

use super::postprocess::Finished;
use super::{recv_or_stop, PipelineError, Stop};
use crate::metrics::{Metrics, Stage};
use crate::sink::Sink;

pub(super) struct Publish {
    pub rx: Receiver<Finished>,
    pub sink: Box<dyn Sink>,
    pub labels: Arc<[String]>,
    pub intrinsics: Option<Intrinsics>,
    /// Angles of the current frame's detections (reused).
    pub angles: Vec<[f32; 2]>,
    pub metrics: Arc<Metrics>,
    pub poll: Duration,
    pub stop: Stop,
}

impl Publish {
    pub fn run(mut self) -> Result<(), PipelineError> {
        let stopped = self.stop.flag();
        let m = &self.metrics;
        let mut fps = FpsMeter::new();
        while let Some(item) = recv_or_stop(&self.rx, self.poll, &stopped) {
            self.angles.clear();
            if let Some(cam) = &self.intrinsics {
                self.angles.extend(
                    item.detections
                        .iter()
                        .map(|d| cam.box_angles(&d.bbox, item.width, item.height)),
                );
            }
            let publish_ns = monotonic_ns();
            // The capture instant on the wall clock: now on CLOCK_REALTIME minus the frame's age.
            let capture_realtime_ns = realtime_ns().saturating_sub(monotonic_ns().saturating_sub(item.capture_ns));
            self.sink.publish(&Published {
                seq: item.seq,
                capture_ns: item.capture_ns,
                capture_realtime_ns,
                publish_ns,
                times: item.times,
                width: item.width,
                height: item.height,
                detections: &item.detections,
                angles: &self.angles,
                labels: &self.labels,
                fps: fps.tick(),
            })?;
            m.published();
            m.record(
                Stage::CaptureToPublish,
                Duration::from_nanos(publish_ns.saturating_sub(item.capture_ns)),
            );
        }
        Ok(())
    }
}

/// Published frames per second: frame intervals over (about) the last second; before the first full second,
/// an estimate from the frames so far.
struct FpsMeter {
    window_start: Option<Instant>,
    intervals: u32,
    settled: bool,
    fps: f64,
}

impl FpsMeter {
    fn new() -> Self {
        Self {
            window_start: None,
            intervals: 0,
            settled: false,
            fps: 0.0,
        }
    }

    fn tick(&mut self) -> f64 {
        let now = Instant::now();
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return self.fps;
        };
        self.intervals += 1;
        let e = now.duration_since(start).as_secs_f64();
        if e >= 1.0 || !self.settled {
            self.fps = f64::from(self.intervals) / e.max(1e-6);
        }
        if e >= 1.0 {
            (self.window_start, self.intervals, self.settled) = (Some(now), 0, true);
        }
        self.fps
    }
}
