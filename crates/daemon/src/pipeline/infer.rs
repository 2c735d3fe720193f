//! The inference stage: the newest prepared frame through the model, never one older than the last it ran,
//! so results leave in strictly increasing sequence. [`Feed`] hands it frames and keeps the workers' pace.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::published::FrameTimes;
use kestrel_infer::model::InputTensor;
use kestrel_vision::letterbox::Letterbox;
use kestrel_vision::yolo::Candidate;

use super::pace::Feed;
use super::prepare::Prepared;
use super::{ms, send_blocking, Inference, LiveThresholds, PipelineError, Stop};
use crate::metrics::{DropReason, Metrics, Stage};

/// One frame's candidates, in model pixels, before NMS.
pub(super) struct Inferred {
    pub seq: u64,
    pub capture_ns: u64,
    pub lb: Letterbox,
    pub candidates: Pooled<Vec<Candidate>>,
    pub times: FrameTimes,
}

pub(super) struct Infer {
    pub inference: Box<dyn Inference>,
    pub feed: Feed<Pooled<InputTensor>>,
    pub rx: Receiver<Prepared>,
    pub tx: Sender<Inferred>,
    pub candidates: Pool<Vec<Candidate>>,
    pub live: Arc<LiveThresholds>,
    pub metrics: Arc<Metrics>,
    pub paced: bool,
    pub poll: Duration,
    pub stop: Stop,
}

impl Infer {
    pub fn run(mut self) -> Result<(), PipelineError> {
        let stopped = self.stop.flag();
        let (m, poll) = (&self.metrics, self.poll);
        let mut last_seq = 0u64;
        // Live sources: the newest prepared frame wins. Unpaced files: every frame, in arrival order.
        while let Some(item) = self.feed.next(&self.rx, self.paced, poll, &stopped, &mut || {
            m.dropped(DropReason::Stale)
        }) {
            if item.seq <= last_seq {
                m.dropped(DropReason::OutOfOrder);
                continue;
            }
            last_seq = item.seq;
            let Some(mut candidates) = self.candidates.take_timeout(poll) else {
                m.dropped(DropReason::Stale);
                continue;
            };
            self.feed.start();
            m.record(Stage::InferWait, self.feed.last_wait);
            m.record(Stage::PreparedWait, self.feed.last_frame_wait);
            m.record(
                Stage::AgeAtInfer,
                Duration::from_nanos(monotonic_ns().saturating_sub(item.capture_ns)),
            );
            let run = self
                .inference
                .infer(&item.tensor, self.live.get().conf, &mut candidates)?
                .run;
            m.record(Stage::Infer, run);
            m.inferred();
            let Prepared {
                seq,
                capture_ns,
                ready_ns: _,
                lb,
                tensor,
                mut times,
            } = item;
            times.infer_ms = ms(run);
            self.feed.done(tensor);
            let out = Inferred {
                seq,
                capture_ns,
                lb,
                candidates,
                times,
            };
            if !send_blocking(&self.tx, out, poll, &stopped) {
                return Ok(());
            }
        }
        Ok(())
    }
}
