//! Latest-wins queues: a producer that must never block (camera capture, outputs fed by the pipeline) drops
//! the oldest queued item instead of waiting.

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Queue `item`; when the queue is full, drop the oldest queued item (counted as `why`) to make room.
pub fn push_latest<T>(tx: &Sender<T>, rx: &Receiver<T>, mut item: T, on_drop: &dyn Fn()) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) => {
                if rx.try_recv().is_ok() {
                    on_drop();
                }
                item = back;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}
