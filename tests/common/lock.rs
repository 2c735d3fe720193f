//! One lock for all the tests of a test binary. The tests that measure time (latency, fps, freshness, a
//! stop against a wall-clock bound, watchdog intervals; most of them starting daemons) run on a 2-core
//! machine: each takes the lock alone (`timing_lock`), so that no other test of its binary runs beside it.
//! Every other test takes it shared (`shared_lock`): those run beside each other, never beside a timing test.
//! That is how the suites ran when each was its own binary, the binaries one after the other: a timing test
//! had its binary to itself, or shared it only with tests that took the same care.
//!
//! A test that panics poisons the lock; the next ones take it all the same (their results are their own).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static TIMING: RwLock<()> = RwLock::new(());

/// For a test that measures time: no other test of this binary runs until the guard is dropped.
pub fn timing_lock() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().unwrap_or_else(|e| e.into_inner())
}

/// For a test that measures no time: it may run beside other such tests, never beside a `timing_lock` one.
pub fn shared_lock() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|e| e.into_inner())
}
