//! Just-in-time preprocessing: when a worker should take the newest frame so that it is prepared just as
//! inference wants it, and the inference stage's side of that protocol.
//!
//! The protocol (every store of `busy_since_ns` and `ahead` is `SeqCst`):
//! - A worker that holds a free input tensor asks [`Pace::claim`]. It commits to a frame (counted in `ahead`)
//!   once inference will want one about a preprocessing time from now (the average, plus a lead that
//!   [`Pace::observe`] adapts to the waits of frames and of inference), and sleeps until then otherwise.
//! - The inference stage takes frames through a [`Feed`]: it says that it is busy ([`Pace::took`]) before
//!   the frame it took leaves `ahead`, and it gives the tensor of its last inference back to the pool only
//!   after that. So a worker that receives that tensor, or reads `ahead` without the frame, reads what
//!   inference does now.
//!
//! What went wrong before this protocol (issue 13): inference gave its tensor back when an inference ended
//! and only announced the next one when it started it. A worker woken by the tensor in between (a few
//! microseconds, more often on some hosts than others) read "idle" while a prepared frame was already
//! queued, prepared another frame at once, and that frame then waited for the whole next inference. The
//! same happened at start-up, when the pool held a spare tensor that nobody had yet spent.

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};

/// Slack against jitter at the start: a worker aims to finish this long before inference wants the frame.
/// From then on the lead adapts (see [`Pace::observe`]).
const MARGIN_NS: u64 = 1_000_000;
/// Freshness budget: how long a prepared frame should wait for its inference, and inference for its frame,
/// at most.
const FRESH_NS: u64 = 1_250_000;
/// Frames that waited longer than [`FRESH_NS`] settle at one in this many more than inferences that did.
const LATE_ONE_IN: i64 = 20;
/// How much the lead moves after a wait over [`FRESH_NS`] (and up by a `LATE_ONE_IN - 1`th of it after a
/// frame within the budget both ways).
const LEAD_STEP_NS: i64 = 300_000;
/// How often a worker looks again while inference is busy but no cycle has been measured yet.
const UNKNOWN_RECHECK: Duration = Duration::from_millis(1);

/// What the inference stage is doing, how many frames are on their way to it, and timing estimates
/// (nanoseconds; EWMA), shared by the inference stage and the workers.
pub(super) struct Pace {
    /// Monotonic nanoseconds; [`kestrel_core::clock::monotonic_ns`] except in tests.
    clock: fn() -> u64,
    /// When inference took the frame it runs now (or is about to run: it already holds it); 0 while it waits
    /// for a prepared frame.
    busy_since_ns: AtomicU64,
    /// Frames a worker has committed to (being prepared, or prepared and queued) that inference has not
    /// taken yet.
    ahead: AtomicUsize,
    /// One inference cycle: from taking a frame to being ready for the next one, i.e. the inference itself
    /// and handing its result downstream (which waits when postprocess or the sink is behind). Workers plan
    /// with the longer of the average and the last cycle: a cycle that grows (a slower sink, a heavier
    /// scene) is planned for at once instead of after several frames prepared too early; one that shrinks
    /// costs at most a preprocessing time, because inference going idle wakes the workers (`wake`).
    cycle_ewma_ns: AtomicU64,
    cycle_last_ns: AtomicU64,
    /// Preparing a frame, on average (it varies: preprocessing competes for the cores with ONNX Runtime, or
    /// with another worker).
    prep_ewma_ns: AtomicU64,
    /// How long before inference wants a frame a worker aims to have it ready: the slack against a
    /// preparation slower, or an inference shorter, than planned. Negative: plan with less than the average
    /// preparation. Adapted to the waits that happen (see [`Self::observe`]), so no machine's jitter is
    /// guessed at.
    lead_ns: AtomicI64,
    /// A worker committed to a frame before the source had one: inference then waits for the camera, not
    /// for preparation, and that wait says nothing about the lead.
    source_late: AtomicBool,
    /// Waiting workers sleep on `wake`. A change that makes a frame wanted sooner than they planned (idle,
    /// a frame on its way dropped) is made under `lock` and then wakes them, so no wake-up is lost between a
    /// worker's look at the state and its sleep.
    lock: Mutex<()>,
    wake: Condvar,
}

impl Pace {
    pub(super) fn new(clock: fn() -> u64) -> Self {
        Self {
            clock,
            busy_since_ns: AtomicU64::new(0),
            ahead: AtomicUsize::new(0),
            cycle_ewma_ns: AtomicU64::new(0),
            cycle_last_ns: AtomicU64::new(0),
            prep_ewma_ns: AtomicU64::new(0),
            lead_ns: AtomicI64::new(MARGIN_NS as i64),
            source_late: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Inference took a queued frame and will run it: busy from now. Stored before the frame leaves `ahead`:
    /// a worker that reads `ahead` without it then reads this start, never "idle".
    fn took(&self) {
        self.busy_since_ns.store(self.now().max(1), SeqCst);
        self.forget_one();
    }

    /// Inference really starts now (re-stamps [`Self::took`]).
    fn begin(&self, now_ns: u64) {
        self.busy_since_ns.store(now_ns.max(1), SeqCst);
    }

    fn forget_one(&self) {
        let _ = self.ahead.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }

    /// A frame on its way was dropped (stale, overrun, bad): the next one is wanted sooner.
    pub(super) fn dropped_one(&self) {
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.forget_one();
        }
        self.wake.notify_all();
    }

    /// Inference is about to wait for a prepared frame.
    fn idle(&self) {
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.busy_since_ns.store(0, SeqCst);
        }
        self.wake.notify_all();
    }

    fn cycle(&self, ns: u64) {
        ewma(&self.cycle_ewma_ns, ns);
        self.cycle_last_ns.store(ns.max(1), Relaxed);
    }

    /// A worker prepared a frame in `d`.
    pub(super) fn prepared(&self, d: Duration) {
        ewma(&self.prep_ewma_ns, d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Inference took a frame that had waited `frame_waited` since it was prepared, after it had itself
    /// waited `inference_waited` for it. Either wait over [`FRESH_NS`] moves the lead by [`LEAD_STEP_NS`]:
    /// down when the frame waited (it was prepared too early), up when inference did (too late); a frame
    /// within the budget both ways nudges it up by a `LATE_ONE_IN - 1`th of a step. So the lead settles
    /// where frames that waited too long are one in [`LATE_ONE_IN`] more than inferences that did: on a
    /// steady host (a GPU) just under the budget, with every frame in time; where preparation or inference
    /// varies by more than the budget, in between, trading freshness and throughput evenly rather than
    /// buying either with all of the other; this covers an inference time that varies too (the cycle is
    /// planned with the longer of its average and the last one). A frame the source did not have yet when
    /// a worker committed to it ([`Self::source_was_late`]) leaves the lead as it is: inference waited for
    /// the camera, not for preparation. The lead is kept within one cycle either side.
    fn observe(&self, frame_waited: Duration, inference_waited: Duration) {
        if self.source_late.swap(false, Relaxed) {
            return;
        }
        let budget = Duration::from_nanos(FRESH_NS);
        let step = if inference_waited > budget {
            LEAD_STEP_NS
        } else if frame_waited > budget {
            -LEAD_STEP_NS
        } else {
            LEAD_STEP_NS / (LATE_ONE_IN - 1)
        };
        let cycle = self.cycle_ewma_ns.load(Relaxed).max(MARGIN_NS) as i64;
        let lead = self.lead_ns.load(Relaxed).saturating_add(step).clamp(-cycle, cycle);
        self.lead_ns.store(lead, Relaxed);
    }

    /// A worker that committed to a frame found none from the source and waits for one.
    pub(super) fn source_was_late(&self) {
        self.source_late.store(true, Relaxed);
    }

    /// The preparation time to plan with, lead included.
    fn prep_plan_ns(&self) -> u64 {
        let plan = self.prep_ewma_ns.load(Relaxed) as i64 + self.lead_ns.load(Relaxed);
        u64::try_from(plan).unwrap_or(0)
    }

    /// How long a worker should wait now before it takes the newest frame (`None`: take it now).
    fn wait(&self, ahead: usize) -> Option<Duration> {
        let busy_since_ns = self.busy_since_ns.load(SeqCst);
        let cycle = self.cycle_ewma_ns.load(Relaxed).max(self.cycle_last_ns.load(Relaxed));
        start_in(busy_since_ns, ahead, cycle, self.prep_plan_ns(), self.now())
    }

    /// One look: commit to a frame (`None`) or how long to wait before looking again.
    fn try_claim(&self) -> Option<Duration> {
        loop {
            // `ahead` first: see `took`.
            let ahead = self.ahead.load(SeqCst);
            match self.wait(ahead) {
                None => {
                    if self.ahead.compare_exchange(ahead, ahead + 1, SeqCst, SeqCst).is_ok() {
                        return None;
                    }
                    // another worker committed meanwhile: look again
                }
                Some(wait) => return Some(wait),
            }
        }
    }

    /// A worker holding a free tensor: wait (at most `poll` at a time, watching `stopped`) until the frame it
    /// would prepare is about to be wanted, then commit to it. False when stopped first.
    pub(super) fn claim(&self, poll: Duration, stopped: &dyn Fn() -> bool) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !stopped() {
            match self.try_claim() {
                None => return true,
                Some(wait) => {
                    guard = match self.wake.wait_timeout(guard, wait.min(poll)) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                }
            }
        }
        false
    }
}

/// The pacing rule, pure: how long a worker should wait before it takes the newest frame (`None`: take it
/// now), at `now_ns`. The frame is wanted once inference has finished what it runs (`busy_since_ns`, 0 when
/// idle) and the `ahead` frames already on their way, one `cycle_ns` each; preparing it (`prep_ns`, the
/// lead included) starts that much earlier. Nothing running or on its way: now.
/// Something is, but no cycle has been measured yet (`cycle_ns` 0): look again shortly rather than guess,
/// since a frame prepared too early waits a whole inference.
fn start_in(busy_since_ns: u64, ahead: usize, cycle_ns: u64, prep_ns: u64, now_ns: u64) -> Option<Duration> {
    let before_ours = ahead as u64 + u64::from(busy_since_ns != 0);
    if before_ours == 0 {
        return None;
    }
    if cycle_ns == 0 {
        return Some(UNKNOWN_RECHECK);
    }
    let from = if busy_since_ns == 0 { now_ns } else { busy_since_ns };
    let wanted = from.saturating_add(cycle_ns.saturating_mul(before_ours));
    let due = wanted.saturating_sub(prep_ns);
    (now_ns < due).then(|| Duration::from_nanos(due - now_ns))
}

fn ewma(slot: &AtomicU64, sample_ns: u64) {
    let s = sample_ns.max(1);
    let old = slot.load(Relaxed);
    slot.store(if old == 0 { s } else { old - old / 8 + s / 8 }, Relaxed);
}

/// Prepared frames as inference sees them.
pub(super) trait Sequenced {
    /// The frame's sequence number.
    fn seq(&self) -> u64;
    /// When it was prepared (the clock's nanoseconds).
    fn ready_ns(&self) -> u64;
}

/// The inference stage's side of the protocol. `S` is the input tensor on loan from the pool: the one of
/// the last inference is kept ("spent") until the next frame has been taken, and given back only then.
/// While inference waits for a frame, the workers hold or can take every other tensor, so keeping it costs
/// nothing.
pub(super) struct Feed<S> {
    pace: Arc<Pace>,
    spent: Option<S>,
    cycle_start_ns: Option<u64>,
    /// When inference became ready for its next frame (the end of the last cycle).
    wanted_since_ns: Option<u64>,
    /// How long inference waited for the frame [`Self::next`] gave last (0 when one was queued, and for the
    /// first frame: that wait is the start-up).
    pub(super) last_wait: Duration,
    /// How long that frame had waited since it was prepared.
    pub(super) last_frame_wait: Duration,
}

impl<S> Feed<S> {
    /// `spent`: a tensor taken from the pool before the workers start, as if inference had just finished
    /// with it, so the workers start with one tensor per prepared-ahead slot, not one more.
    pub(super) fn new(pace: Arc<Pace>, spent: Option<S>) -> Self {
        Self {
            pace,
            spent,
            cycle_start_ns: None,
            wanted_since_ns: None,
            last_wait: Duration::ZERO,
            last_frame_wait: Duration::ZERO,
        }
    }

    /// The next prepared frame, waiting (in `poll` slices) for one; with `newest`, the newest queued one,
    /// each older one dropped (`on_stale`). `None` once stopped or every worker is gone.
    pub(super) fn next<T: Sequenced>(
        &mut self,
        rx: &Receiver<T>,
        newest: bool,
        poll: Duration,
        stopped: &dyn Fn() -> bool,
        on_stale: &mut dyn FnMut(),
    ) -> Option<T> {
        // Ready for the next frame: that ends the cycle begun when the last one started.
        if let Some(t0) = self.cycle_start_ns.take() {
            let now = self.pace.now();
            self.pace.cycle(now.saturating_sub(t0));
            self.wanted_since_ns = Some(now);
        }
        let mut item = match rx.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Empty) => {
                self.pace.idle();
                super::recv_or_stop(rx, poll, stopped)?
            }
            Err(TryRecvError::Disconnected) => return None,
        };
        // Busy from now on: tensors given back from here (stale frames', the spent one) are for a frame
        // wanted a cycle from now, and the workers that take them read that.
        self.pace.took();
        if newest {
            while let Ok(newer) = rx.try_recv() {
                on_stale();
                self.pace.dropped_one();
                if newer.seq() > item.seq() {
                    item = newer;
                }
            }
        }
        let now = self.pace.now();
        let inference_waited = self.wanted_since_ns.take().map_or(0, |t| now.saturating_sub(t));
        self.last_wait = Duration::from_nanos(inference_waited);
        self.last_frame_wait = Duration::from_nanos(now.saturating_sub(item.ready_ns()));
        self.pace.observe(self.last_frame_wait, self.last_wait);
        Some(item)
    }

    /// Inference starts on the frame [`Self::next`] gave: the tensor of the last one goes back to the pool.
    pub(super) fn start(&mut self) {
        let now = self.pace.now();
        self.cycle_start_ns = Some(now);
        self.pace.begin(now);
        self.spent = None;
    }

    /// Inference is done with its input `tensor`: kept until the next frame has been taken.
    pub(super) fn done(&mut self, tensor: S) {
        self.spent = Some(tensor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use kestrel_core::pool::{Pool, Pooled};
    use std::cell::Cell;

    thread_local! {
        /// The test's clock (ns): each test thread has its own.
        static NOW: Cell<u64> = const { Cell::new(1_000_000_000) };
    }
    fn clock() -> u64 {
        NOW.with(|c| c.get())
    }
    fn advance_ms(ms: f64) {
        NOW.with(|c| c.set(c.get() + (ms * 1e6) as u64));
    }
    const MS: u64 = 1_000_000;

    #[test]
    fn the_rule_plans_from_the_running_inference_and_the_frames_ahead() {
        // preparing takes 2 ms, planned with a lead of 1 ms
        let (cycle, prep) = (40 * MS, 3 * MS);
        // idle, nothing on its way: now (whatever is known)
        assert_eq!(start_in(0, 0, 0, 0, 5 * MS), None);
        assert_eq!(start_in(0, 0, cycle, prep, 5 * MS), None);
        // busy or a frame on its way, cycle not yet measured: look again soon, never "now"
        assert_eq!(start_in(100 * MS, 0, 0, prep, 100 * MS), Some(UNKNOWN_RECHECK));
        assert_eq!(start_in(0, 1, 0, prep, 100 * MS), Some(UNKNOWN_RECHECK));
        // busy since 100 ms: wanted at 140, start at 140 - 2 - 1 = 137
        assert_eq!(
            start_in(100 * MS, 0, cycle, prep, 100 * MS),
            Some(Duration::from_millis(37))
        );
        assert_eq!(
            start_in(100 * MS, 0, cycle, prep, 130 * MS),
            Some(Duration::from_millis(7))
        );
        assert_eq!(start_in(100 * MS, 0, cycle, prep, 137 * MS), None);
        assert_eq!(start_in(100 * MS, 0, cycle, prep, 500 * MS), None, "overdue: now");
        // one frame already on its way behind the running one: ours is wanted a cycle later
        assert_eq!(
            start_in(100 * MS, 1, cycle, prep, 137 * MS),
            Some(Duration::from_millis(40))
        );
        // idle with one on its way (queued, about to be taken): wanted a cycle from now
        assert_eq!(start_in(0, 1, cycle, prep, 100 * MS), Some(Duration::from_millis(37)));
        // preparing takes longer than a cycle: no waiting
        assert_eq!(start_in(100 * MS, 0, cycle, 50 * MS, 100 * MS), None);
    }

    struct Item {
        seq: u64,
        ready_ns: u64,
        _tensor: Pooled<u32>,
    }
    impl Sequenced for Item {
        fn seq(&self) -> u64 {
            self.seq
        }
        fn ready_ns(&self) -> u64 {
            self.ready_ns
        }
    }

    /// Each inference in the simulation takes this long, preparing a frame 2 ms.
    const INFER_MS: f64 = 40.0;
    const PREP_MS: f64 = 2.0;

    /// Plays one worker against the inference side, step by step on a controlled clock, and after every
    /// step asks: if a worker woke now (it can when a tensor is free), would it take a frame that inference
    /// will not want for longer than a preparation? That is the moment a frame gets prepared too early and
    /// then waits for an inference. Any order of give-back and announcement that opens such a moment fails
    /// here, on any machine, because no thread scheduling is involved.
    struct Sim {
        pace: Arc<Pace>,
        pool: Pool<u32>,
        feed: Feed<Pooled<u32>>,
        tx: crossbeam_channel::Sender<Item>,
        rx: Receiver<Item>,
        /// The frame inference runs and when that inference ends (ns).
        running: Option<(Item, u64)>,
        step: Vec<String>,
        /// The next inference's length (ms).
        infer_ms: f64,
    }

    impl Sim {
        fn new(workers: usize) -> Self {
            let pace = Arc::new(Pace::new(clock));
            let pool = Pool::new(workers + 1, || 0u32);
            let feed = Feed::new(pace.clone(), pool.try_take());
            let (tx, rx) = bounded(1);
            Self {
                pace,
                pool,
                feed,
                tx,
                rx,
                running: None,
                step: Vec::new(),
                infer_ms: INFER_MS,
            }
        }

        /// When inference will really want a frame that a worker starts preparing now: after the running
        /// inference and one inference for each frame on its way (queued or being prepared).
        fn truly_wanted_at(&self) -> u64 {
            let on_its_way = self.pace.ahead.load(SeqCst) as u64;
            let from = self.running.as_ref().map_or(clock(), |r| r.1);
            from + on_its_way * (INFER_MS * 1e6) as u64
        }

        fn check(&mut self, what: &str) {
            self.step.push(what.to_string());
            if self.pool.available() > 0 && self.pace.wait(self.pace.ahead.load(SeqCst)).is_none() {
                let early_ms = (self.truly_wanted_at().saturating_sub(clock())) as f64 / 1e6;
                assert!(
                    early_ms <= PREP_MS + 1.5,
                    "after {:?}: a worker would take a frame now that inference wants only in {early_ms} ms",
                    self.step,
                );
            }
        }

        /// The worker: take a tensor, wait (on the clock) until the frame is due, prepare it (2 ms), queue it.
        fn worker_prepares(&mut self, seq: u64) {
            let tensor = self.pool.try_take().expect("the worker has a tensor");
            self.check("worker took a tensor");
            let mut looks = 0;
            while let Some(wait) = self.pace.try_claim() {
                looks += 1;
                assert!(looks < 1000, "the worker waits for ever: {:?}", self.step);
                advance_ms(wait.as_secs_f64() * 1e3);
                self.check("worker waited");
            }
            advance_ms(PREP_MS);
            self.pace.prepared(Duration::from_secs_f64(PREP_MS / 1e3));
            self.tx
                .try_send(Item {
                    seq,
                    ready_ns: clock(),
                    _tensor: tensor,
                })
                .unwrap_or_else(|_| panic!("queue full"));
            self.check("worker queued a frame");
        }

        /// One whole cycle with a preparation of `prep_ms` that may come late: the worker takes a tensor
        /// and waits until its frame is due, then prepares it while the running inference goes on; inference
        /// ends, takes the frame (waiting for it when it is not ready yet) and starts it. Returns how long the
        /// frame waited after it was prepared and how long inference waited for it (ms).
        fn cycle_with_prep(&mut self, seq: u64, prep_ms: f64) -> (f64, f64) {
            let tensor = self.pool.try_take().expect("the worker has a tensor");
            let (item, end) = self.running.take().expect("running");
            let mut spent = Some(item._tensor);
            // Inference ends (and, with nothing queued, goes idle and wakes the worker) at `end`.
            let mut finish = |s: &mut Self| {
                NOW.with(|c| c.set(end));
                s.feed.done(spent.take().expect("finishes once"));
                s.inference_finds_nothing();
            };
            let mut ended = false;
            while let Some(wait) = self.pace.try_claim() {
                let until = clock() + wait.as_nanos() as u64;
                if until >= end && !ended {
                    finish(self);
                    ended = true;
                } else {
                    NOW.with(|c| c.set(until));
                }
            }
            let ready = clock() + (prep_ms * 1e6) as u64;
            let queue = |s: &mut Self, tensor| {
                NOW.with(|c| c.set(ready));
                s.pace.prepared(Duration::from_secs_f64(prep_ms / 1e3));
                s.tx.try_send(Item {
                    seq,
                    ready_ns: ready,
                    _tensor: tensor,
                })
                .unwrap_or_else(|_| panic!("queue full"));
            };
            let waits = if !ended && ready <= end {
                queue(self, tensor);
                NOW.with(|c| c.set(end));
                self.feed.done(spent.take().expect("finishes once"));
                ((end - ready) as f64 / 1e6, 0.0)
            } else {
                if !ended {
                    finish(self);
                }
                queue(self, tensor);
                (0.0, (ready - end) as f64 / 1e6)
            };
            self.inference_takes_and_starts();
            waits
        }

        fn inference_takes_and_starts(&mut self) {
            let item = self
                .feed
                .next(&self.rx, true, Duration::ZERO, &|| true, &mut || {})
                .expect("a queued frame");
            self.check("inference took a frame");
            self.running = Some((item, clock() + (self.infer_ms * 1e6) as u64));
            self.feed.start();
            self.check("inference started");
        }

        /// The running inference ends (the clock moves to its end).
        fn inference_finishes(&mut self) {
            let (item, end) = self.running.take().expect("running");
            assert!(end >= clock(), "the simulation ran past an inference's end");
            advance_ms((end - clock()) as f64 / 1e6);
            let free = self.pool.available();
            self.feed.done(item._tensor);
            assert_eq!(
                self.pool.available(),
                free,
                "the spent tensor stays with inference until it has taken its next frame"
            );
            self.check("inference finished");
        }

        /// Inference finds nothing queued: it says so and would wait.
        fn inference_finds_nothing(&mut self) {
            let none = self.feed.next(&self.rx, true, Duration::ZERO, &|| true, &mut || {});
            assert!(none.is_none(), "nothing was queued");
            self.check("inference waits");
        }
    }

    #[test]
    fn no_moment_lets_a_worker_prepare_a_frame_that_must_wait_for_an_inference() {
        let mut s = Sim::new(1);
        assert_eq!(s.pool.available(), 1, "inference starts out holding its own tensor");
        s.worker_prepares(1);
        s.inference_takes_and_starts();
        // The first inference's length is unknown: the worker does not guess, it waits for the end.
        let _t = s.pool.try_take().expect("the worker's tensor");
        assert_eq!(s.pace.try_claim(), Some(UNKNOWN_RECHECK));
        drop(_t);
        s.inference_finishes();
        s.inference_finds_nothing();
        s.worker_prepares(2);
        s.inference_takes_and_starts();
        for seq in 3..=8 {
            // While inference runs, the worker prepares the next frame just in time.
            s.worker_prepares(seq);
            let t_queued = clock();
            s.inference_finishes();
            s.inference_takes_and_starts();
            let waited = (clock() - t_queued) as f64 / 1e6;
            assert!(waited <= 1.5, "frame {seq} waited {waited} ms in the queue");
        }
        // Inference finishes with nothing queued: idle, and a worker goes at once.
        s.inference_finishes();
        s.inference_finds_nothing();
        assert_eq!(s.pace.wait(0), None, "idle, nothing on its way: prepare now");
        assert_eq!(
            s.pool.available(),
            1,
            "the worker's tensor is free, the spent one stays with inference"
        );
    }

    /// Cycles of `prep_ms(seq)` preparation against 40 ms inference, after a first one: (the frames' waits
    /// after preparation, inference's waits for them), ms.
    fn run_cycles(frames: u64, prep_ms: impl Fn(u64) -> f64) -> (Sim, Vec<f64>, Vec<f64>) {
        run_cycles_with(frames, prep_ms, |_| INFER_MS)
    }

    /// [`run_cycles`] with inference taking `infer_ms(seq)` for frame `seq`.
    fn run_cycles_with(
        frames: u64,
        prep_ms: impl Fn(u64) -> f64,
        infer_ms: impl Fn(u64) -> f64,
    ) -> (Sim, Vec<f64>, Vec<f64>) {
        let mut s = Sim::new(1);
        s.worker_prepares(1);
        s.inference_takes_and_starts();
        s.inference_finishes();
        s.inference_finds_nothing();
        s.worker_prepares(2);
        s.inference_takes_and_starts();
        let (mut frame_waits, mut inference_waits) = (Vec::new(), Vec::new());
        for seq in 3..3 + frames {
            s.infer_ms = infer_ms(seq);
            let (f, i) = s.cycle_with_prep(seq, prep_ms(seq));
            frame_waits.push(f);
            inference_waits.push(i);
        }
        (s, frame_waits, inference_waits)
    }

    fn p95(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() * 95 / 100]
    }

    #[test]
    fn on_a_steady_host_the_lead_settles_just_under_the_freshness_budget() {
        let (s, frame_waits, inference_waits) = run_cycles(600, |_| PREP_MS);
        let lead = s.pace.lead_ns.load(Relaxed);
        // Every frame ready in time, none waiting longer than the budget (plus one step of the tracker).
        assert!(inference_waits.iter().all(|w| *w == 0.0), "{inference_waits:?}");
        let budget_ms = (FRESH_NS as i64 + LEAD_STEP_NS) as f64 / 1e6;
        assert!(p95(&frame_waits) <= budget_ms, "{frame_waits:?}");
        // It moved from where it started (1 ms) to the budget: no slack wasted that freshness allows.
        assert!(
            lead > FRESH_NS as i64 - 2 * LEAD_STEP_NS && lead <= FRESH_NS as i64 + LEAD_STEP_NS,
            "lead {lead} ns"
        );
    }

    /// Of the cycles after the first 200: the share of frames that waited longer than the budget, their mean
    /// wait, the same for inference (ms).
    fn tails(frame_waits: &[f64], inference_waits: &[f64]) -> (f64, f64, f64, f64) {
        let (f, i) = (&frame_waits[200..], &inference_waits[200..]);
        let budget_ms = FRESH_NS as f64 / 1e6;
        let share = |v: &[f64]| v.iter().filter(|w| **w > budget_ms).count() as f64 / v.len() as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let t = (share(f), mean(f), share(i), mean(i));
        eprintln!(
            "frames over the budget {:.1} %, mean wait {:.2} ms; inference over it {:.1} %, mean wait {:.2} ms",
            t.0 * 100.0,
            t.1,
            t.2 * 100.0,
            t.3
        );
        t
    }

    #[test]
    fn when_preparation_varies_by_more_than_the_budget_the_lead_trades_evenly() {
        // Preparation 2..6 ms (a fixed pseudo-random sequence), as when it competes for the cores: no lead
        // keeps every frame within the budget and inference busy.
        let prep = |seq: u64| 2.0 + 4.0 * ((seq as f64 * 0.618_034).fract());
        let (_, frame_waits, inference_waits) = run_cycles(1000, prep);
        let (frames_over, frame_mean, inference_over, inference_mean) = tails(&frame_waits, &inference_waits);
        // The two tails balance (the frames' a twentieth more), and neither side waits more than half the
        // spread of preparation on average.
        assert!((frames_over - inference_over - 0.05).abs() <= 0.1, "uneven");
        assert!(frame_mean <= 2.0 && inference_mean <= 2.0);
    }

    #[test]
    fn when_inference_varies_by_more_than_the_budget_the_lead_trades_evenly() {
        // Inference 30..50 ms, preparation a steady 2 ms: no lead keeps every frame fresh and inference
        // busy; the lead must not give up either wholly (planning at the floor would make inference wait
        // for nearly every frame, a whole preparation each time).
        let infer = |seq: u64| 30.0 + 20.0 * ((seq as f64 * 0.754_877).fract());
        let (_, frame_waits, inference_waits) = run_cycles_with(1000, |_| PREP_MS, infer);
        let (frames_over, frame_mean, inference_over, inference_mean) = tails(&frame_waits, &inference_waits);
        assert!((frames_over - inference_over - 0.05).abs() <= 0.1, "uneven");
        // Half the spread of inference (10 ms) would be giving up one side wholly.
        assert!(frame_mean <= 6.0 && inference_mean <= 6.0);
    }

    #[test]
    fn the_lead_stays_within_one_cycle_and_ignores_waits_for_the_camera() {
        let pace = Pace::new(clock);
        pace.prepared(Duration::from_millis(4));
        pace.cycle(40 * MS);
        // Inference waiting long for every frame: the lead grows, to one cycle at most.
        for _ in 0..10_000 {
            pace.observe(Duration::ZERO, Duration::from_millis(30));
        }
        assert_eq!(pace.lead_ns.load(Relaxed), 40 * MS as i64);
        // ... unless the frame was not there yet when the worker committed: then it waited for the camera.
        pace.source_was_late();
        pace.observe(Duration::from_millis(30), Duration::ZERO);
        assert_eq!(
            pace.lead_ns.load(Relaxed),
            40 * MS as i64,
            "a wait for the camera moves nothing"
        );
        // Every frame waiting far too long: down to minus a cycle, planning with no preparation at all.
        for _ in 0..10_000 {
            pace.observe(Duration::from_millis(30), Duration::ZERO);
        }
        assert_eq!(pace.lead_ns.load(Relaxed), -40 * (MS as i64));
        assert_eq!(pace.prep_plan_ns(), 0);
    }

    #[test]
    fn with_two_workers_the_second_plans_one_cycle_later_and_a_dropped_frame_brings_it_forward() {
        let mut s = Sim::new(2);
        s.worker_prepares(1);
        s.inference_takes_and_starts();
        s.inference_finishes();
        s.inference_finds_nothing();
        s.worker_prepares(2);
        s.inference_takes_and_starts(); // one cycle measured
        s.worker_prepares(3); // queued just before frame 2's inference ends
                              // The second worker's frame comes after frame 3: wanted about a cycle after frame 3 starts.
        let second = s.pool.try_take().expect("second worker's tensor");
        let wait = s.pace.try_claim().expect("must wait");
        assert!(wait > Duration::from_millis(30), "{wait:?}");
        // Frame 3 is dropped (say it turned out stale): the second worker's frame is wanted sooner.
        drop(s.rx.try_recv());
        s.pace.dropped_one();
        assert_eq!(
            s.pace.try_claim(),
            None,
            "frame 2's inference is about to end: prepare now"
        );
        drop(second);
    }

    #[test]
    fn idle_wakes_a_sleeping_worker_at_once() {
        let pace = Arc::new(Pace::new(kestrel_core::clock::monotonic_ns));
        pace.begin(pace.now());
        pace.cycle(10_000 * MS); // a 10 s inference
        let p2 = pace.clone();
        let worker = std::thread::Builder::new()
            .name("test-worker".into())
            .spawn(move || {
                let t0 = std::time::Instant::now();
                assert!(p2.claim(Duration::from_secs(60), &|| false));
                t0.elapsed()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        pace.idle();
        let waited = worker.join().unwrap();
        // Without the wake-up the worker would sleep until the inference's planned end (10 s).
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(pace.ahead.load(SeqCst), 1);
    }
}
