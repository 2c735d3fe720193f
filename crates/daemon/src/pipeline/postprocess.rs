//! The postprocess stage: NMS over one frame's candidates (model pixels), and the survivors mapped into
//! image pixels, the detections every output receives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use kestrel_core::detection::Detection;
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::published::FrameTimes;
use kestrel_vision::nms::nms_into;
use kestrel_vision::yolo::Candidate;

use super::infer::Inferred;
use super::{ms, recv_or_stop, send_blocking, LiveThresholds, PipelineError, Stop};
use crate::metrics::{Metrics, Stage};

/// One frame's detections, ready to publish.
pub(super) struct Finished {
    pub seq: u64,
    pub capture_ns: u64,
    pub width: u32,
    pub height: u32,
    pub detections: Pooled<Vec<Detection>>,
    pub times: FrameTimes,
}

pub(super) struct Postprocess {
    pub rx: Receiver<Inferred>,
    pub tx: Sender<Finished>,
    pub detections: Pool<Vec<Detection>>,
    /// NMS keeps candidates in model pixels here (reused: no allocation per frame).
    pub kept: Vec<Candidate>,
    pub live: Arc<LiveThresholds>,
    pub metrics: Arc<Metrics>,
    pub poll: Duration,
    pub stop: Stop,
}

impl Postprocess {
    pub fn run(mut self) -> Result<(), PipelineError> {
        let stopped = self.stop.flag();
        let poll = self.poll;
        loop {
            let Some(mut item) = recv_or_stop(&self.rx, poll, &stopped) else {
                return Ok(());
            };
            let Some(mut dets) = self.detections.take_timeout(poll) else {
                continue;
            };
            let t0 = Instant::now();
            let th = self.live.get();
            nms_into(&mut item.candidates, th.iou, th.max_detections, &mut self.kept);
            dets.clear();
            dets.extend(self.kept.iter().map(|c| Detection {
                class_id: c.class_id,
                score: c.score,
                bbox: item.lb.image_box_from_model(c.bbox),
            }));
            let post = t0.elapsed();
            self.metrics.record(Stage::Postprocess, post);
            let out = Finished {
                seq: item.seq,
                capture_ns: item.capture_ns,
                width: item.lb.src_w,
                height: item.lb.src_h,
                detections: dets,
                times: FrameTimes {
                    postprocess_ms: ms(post),
                    ..item.times
                },
            };
            drop(item);
            if !send_blocking(&self.tx, out, poll, &stopped) {
                return Ok(());
            }
        }
    }
}
