//! The capture stage: the source's frames into the frame queue. A live (paced) source never waits for the
//! rest of the pipeline: when the queue is full the oldest waiting frame is dropped (`capture_overrun`). An
//! unpaced source (files) waits instead, so that every frame is processed.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use kestrel_camera::Source;
use kestrel_core::frame::Frame;
use kestrel_core::latest::push_latest;

use super::{send_blocking, PipelineError, Stop};
use crate::metrics::{DropReason, Metrics};

pub(super) struct Capture {
    pub source: Box<dyn Source>,
    pub tx: Sender<Frame>,
    /// The queue's receiving end, to drop the oldest frame from when it is full.
    pub rx: Receiver<Frame>,
    pub metrics: Arc<Metrics>,
    pub paced: bool,
    pub poll: Duration,
    pub stop: Stop,
}

impl Capture {
    pub fn run(mut self) -> Result<(), PipelineError> {
        let stopped = self.stop.flag();
        let m = &self.metrics;
        while let Some(frame) = self.source.next_frame(&stopped)? {
            m.captured();
            let sent = if self.paced {
                push_latest(&self.tx, &self.rx, frame, &|| m.dropped(DropReason::CaptureOverrun))
            } else {
                send_blocking(&self.tx, frame, self.poll, &stopped)
            };
            if !sent {
                break;
            }
        }
        log::debug!("capture: source {} ended", self.source.name());
        Ok(())
    }
}
