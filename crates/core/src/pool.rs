//! Fixed-size object pools: buffers are allocated once, handed out as [`Pooled`] and come back on drop, so the
//! per-frame path allocates nothing in steady state. The free list is a bounded crossbeam channel.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// A pool of `T`s. Cloning shares the pool.
pub struct Pool<T> {
    free_tx: Sender<T>,
    free_rx: Receiver<T>,
    capacity: usize,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Self {
            free_tx: self.free_tx.clone(),
            free_rx: self.free_rx.clone(),
            capacity: self.capacity,
        }
    }
}

impl<T> Pool<T> {
    /// A pool holding `capacity` items made by `make`.
    pub fn new(capacity: usize, mut make: impl FnMut() -> T) -> Self {
        let (free_tx, free_rx) = bounded(capacity);
        for _ in 0..capacity {
            // Cannot fail: the channel has room for exactly `capacity` items and we hold the receiver.
            let _ = free_tx.try_send(make());
        }
        Self {
            free_tx,
            free_rx,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items currently free.
    pub fn available(&self) -> usize {
        self.free_rx.len()
    }

    /// Take a free item, or `None` if none is free.
    pub fn try_take(&self) -> Option<Pooled<T>> {
        self.free_rx.try_recv().ok().map(|item| Pooled {
            item: Some(item),
            home: self.free_tx.clone(),
        })
    }

    /// Take a free item, waiting up to `timeout` for one to come back.
    pub fn take_timeout(&self, timeout: Duration) -> Option<Pooled<T>> {
        self.free_rx.recv_timeout(timeout).ok().map(|item| Pooled {
            item: Some(item),
            home: self.free_tx.clone(),
        })
    }
}

/// An item on loan from a [`Pool`]; returns itself when dropped.
pub struct Pooled<T> {
    item: Option<T>,
    home: Sender<T>,
}

impl<T> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Only `Drop` takes the item out.
        self.item
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled item present until drop"))
    }
}

impl<T> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item
            .as_mut()
            .unwrap_or_else(|| unreachable!("pooled item present until drop"))
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            // The pool has room for every item it made; if the pool is gone the item is simply freed.
            let _ = self.home.try_send(item);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.item.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_on_drop_and_are_reused() {
        let pool = Pool::new(2, || Vec::<u8>::with_capacity(16));
        let mut a = pool.try_take().unwrap();
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        let b = pool.try_take().unwrap();
        assert!(pool.try_take().is_none());
        assert!(pool.take_timeout(Duration::from_millis(5)).is_none());
        drop(a);
        assert_eq!(pool.available(), 1);
        let c = pool.try_take().unwrap();
        assert_eq!(c.as_ptr(), ptr, "the same buffer comes back");
        assert_eq!(&c[..], b"abc", "contents are the caller's business");
        drop((b, c));
        assert_eq!(pool.available(), 2);
    }
}
