//! A named thread that logs progress while a long step (a TensorRT engine build) runs.

use std::time::{Duration, Instant};

/// Logs "still building" every 10 s until dropped.
pub struct Ticker {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    /// Log `what` with the elapsed time every `every` until dropped.
    pub fn start(what: String, every: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let t0 = Instant::now();
        let thread = std::thread::Builder::new()
            .name("build-ticker".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    log::info!("{what}: {:.0} s so far", t0.elapsed().as_secs_f64());
                }
            })
            .ok();
        Self { stop: Some(tx), thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
