//! The preprocessing workers: a frame into a model input tensor (decode, colour conversion, letterbox), just
//! in time for inference. A worker first takes a tensor from the pool (the credit that says inference will
//! want another frame), then waits for its turn in [`Pace`], then takes the newest frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use kestrel_core::clock::monotonic_ns;
use kestrel_core::frame::Frame;
use kestrel_core::latest::push_latest;
use kestrel_core::pool::{Pool, Pooled};
use kestrel_core::published::FrameTimes;
use kestrel_core::ratelog::RateLimitedLog;
use kestrel_infer::model::InputTensor;
use kestrel_vision::letterbox::Letterbox;
use kestrel_vision::preprocess::FramePreprocessor;

use super::pace::{self, Pace};
use super::{ms, recv_or_stop, send_blocking, PipelineError, Stop};
use crate::metrics::{DropReason, Metrics, Stage};

/// A frame ready for inference.
pub(super) struct Prepared {
    pub seq: u64,
    pub capture_ns: u64,
    /// When the worker finished preparing it.
    pub ready_ns: u64,
    pub lb: Letterbox,
    pub tensor: Pooled<InputTensor>,
    pub times: FrameTimes,
}

impl pace::Sequenced for Prepared {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn ready_ns(&self) -> u64 {
        self.ready_ns
    }
}

pub(super) struct Worker {
    pub frames: Receiver<Frame>,
    pub tx: Sender<Prepared>,
    /// The prepared queue's receiving end, to drop the oldest prepared frame from when it is full.
    pub rx_old: Receiver<Prepared>,
    pub tensors: Pool<InputTensor>,
    pub pace: Arc<Pace>,
    pub prep: FramePreprocessor,
    pub metrics: Arc<Metrics>,
    /// The model's input size.
    pub dst: (u32, u32),
    pub paced: bool,
    pub poll: Duration,
    pub stop: Stop,
}

impl Worker {
    pub fn run(mut self) -> Result<(), PipelineError> {
        let stopped = self.stop.flag();
        let (m, pace, poll, paced) = (&self.metrics, &self.pace, self.poll, self.paced);
        let (dst_w, dst_h) = self.dst;
        let mut bad = RateLimitedLog::new("bad frame skipped");
        loop {
            // A tensor first: it is the credit that says inference will want another frame.
            let mut tensor = loop {
                if stopped() {
                    return Ok(());
                }
                if let Some(t) = self.tensors.take_timeout(poll) {
                    break t;
                }
            };
            if !pace.claim(poll, &stopped) {
                return Ok(());
            }
            let next = match self.frames.try_recv() {
                Ok(frame) => Some(frame),
                Err(_) => {
                    pace.source_was_late();
                    recv_or_stop(&self.frames, poll, &stopped)
                }
            };
            let Some(mut frame) = next else {
                // The source ended (or a stop): the frame committed to will never be on its way, and a worker
                // still waiting must not plan behind it.
                pace.dropped_one();
                return Ok(());
            };
            let t0 = Instant::now();
            let t0_ns = monotonic_ns();
            // An unpaced source (files, as fast as the pipeline takes them) has no moment of capture of its
            // own; it reads one frame ahead only to hide its I/O. Its frame is captured when a worker takes it,
            // as from a camera that delivered a frame the moment one was wanted.
            if !paced {
                frame.capture_ns = t0_ns;
            }
            m.record(
                Stage::Queue,
                Duration::from_nanos(t0_ns.saturating_sub(frame.capture_ns)),
            );
            let prep = &mut self.prep;
            match prep.prepare_frame(&frame, tensor.data_mut(), dst_w, dst_h) {
                Ok(lb) => {
                    m.record(Stage::Decode, prep.last_decode);
                    m.record(Stage::Letterbox, prep.last_letterbox);
                    pace.prepared(t0.elapsed());
                    let item = Prepared {
                        seq: frame.seq,
                        capture_ns: frame.capture_ns,
                        ready_ns: monotonic_ns(),
                        lb,
                        tensor,
                        times: FrameTimes {
                            queue_ms: ms(Duration::from_nanos(t0_ns.saturating_sub(frame.capture_ns))),
                            decode_ms: ms(prep.last_decode),
                            letterbox_ms: ms(prep.last_letterbox),
                            ..FrameTimes::default()
                        },
                    };
                    let sent = if paced {
                        push_latest(&self.tx, &self.rx_old, item, &|| {
                            m.dropped(DropReason::PreparedOverrun);
                            pace.dropped_one();
                        })
                    } else {
                        send_blocking(&self.tx, item, poll, &stopped)
                    };
                    if !sent {
                        return Ok(());
                    }
                }
                Err(e) => {
                    m.dropped(DropReason::BadFrame);
                    pace.dropped_one();
                    bad.warn(&format_args!("frame {}: {e}", frame.seq));
                }
            }
        }
    }
}
