//! One worker's connections still in their HTTP phase, oldest first, and
//! the bound on how many there are (`--max-pending-handshakes`).
//!
//! A connection in its HTTP phase can hold a request head of up to
//! `--max-request-header-size` bytes, so bounding their number bounds what
//! the phase can make a worker hold: at most this many times the header cap,
//! plus a few hundred bytes each. At the bound, a new connection closes the
//! one that has been in its HTTP phase longest, rather than the worker
//! stopping to accept: an honest client sends its whole request at once and
//! leaves the phase within a round trip, so the oldest connection is the one
//! most likely to be trickling (slowloris) or stalled, and the worker keeps
//! accepting, so Knative's probes and new clients still get in while an
//! attack lasts. Had it stopped accepting instead, a thousand connections
//! that send nothing would hold every worker's accept for a whole
//! `--handshake-timeout` and fail the pod's probes.
//!
//! The list is intrusive in a slab (each entry links to its neighbours), so
//! entering, leaving and evicting cost O(1) and allocate nothing once the
//! slab has grown.

use std::cell::{Cell, RefCell};
use std::task::{Context, Waker};

use slab::Slab;

/// No neighbour.
const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Entry {
    prev: usize,
    next: usize,
    waker: Option<Waker>,
    /// Closed to make room: no longer linked.
    evicted: bool,
}

/// The connections of one worker in their HTTP phase (single-threaded).
#[derive(Debug)]
pub struct Handshakes {
    entries: RefCell<Slab<Entry>>,
    /// Oldest linked entry.
    head: Cell<usize>,
    /// Newest linked entry.
    tail: Cell<usize>,
    /// Linked entries (not evicted).
    linked: Cell<usize>,
    limit: usize,
}

impl Handshakes {
    /// An empty list that holds at most `limit` connections (at least one).
    pub fn new(limit: usize) -> Self {
        Handshakes {
            entries: RefCell::default(),
            head: Cell::new(NIL),
            tail: Cell::new(NIL),
            linked: Cell::new(0),
            limit: limit.max(1),
        }
    }

    /// Connections in their HTTP phase, not counting those evicted that have
    /// not ended yet.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.linked.get()
    }

    /// Adds a connection as the newest; returns its key and whether the
    /// oldest one was evicted to make room. Pair with [`Handshakes::leave`].
    pub fn enter(&self) -> (usize, bool) {
        let evicted = self.linked.get() >= self.limit && self.evict_oldest();
        let mut entries = self.entries.borrow_mut();
        let tail = self.tail.get();
        let key = entries.insert(Entry {
            prev: tail,
            next: NIL,
            waker: None,
            evicted: false,
        });
        match tail {
            NIL => self.head.set(key),
            t => entries[t].next = key,
        }
        self.tail.set(key);
        self.linked.set(self.linked.get() + 1);
        (key, evicted)
    }

    /// Removes connection `key` (its HTTP phase ended, however).
    pub fn leave(&self, key: usize) {
        let entry = self.entries.borrow_mut().remove(key);
        if !entry.evicted {
            self.unlink(&entry);
        }
    }

    /// True if connection `key` was evicted; otherwise records the waker
    /// that eviction would wake.
    pub fn evicted(&self, key: usize, cx: &Context<'_>) -> bool {
        let mut entries = self.entries.borrow_mut();
        let entry = &mut entries[key];
        if entry.evicted {
            return true;
        }
        match &entry.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
        false
    }

    /// Evicts the oldest linked connection and wakes it (it ends when
    /// polled). False if there is none.
    fn evict_oldest(&self) -> bool {
        let waker = {
            let mut entries = self.entries.borrow_mut();
            let key = self.head.get();
            let Some(entry) = entries.get_mut(key) else {
                return false;
            };
            entry.evicted = true;
            let (prev, next) = (entry.prev, entry.next);
            let waker = entry.waker.take();
            self.unlink_keys(&mut entries, prev, next);
            waker
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn unlink(&self, entry: &Entry) {
        let mut entries = self.entries.borrow_mut();
        self.unlink_keys(&mut entries, entry.prev, entry.next);
    }

    /// Joins `prev` and `next`, the neighbours of an entry leaving the list.
    fn unlink_keys(&self, entries: &mut Slab<Entry>, prev: usize, next: usize) {
        match prev {
            NIL => self.head.set(next),
            p => entries[p].next = next,
        }
        match next {
            NIL => self.tail.set(prev),
            n => entries[n].prev = prev,
        }
        self.linked.set(self.linked.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;

    #[test]
    fn the_oldest_is_evicted_at_the_limit() {
        let list = Handshakes::new(3);
        let (count, waker) = WakeCount::new();
        let cx = Context::from_waker(&waker);
        let keys: Vec<usize> = (0..3).map(|_| list.enter().0).collect();
        for &k in &keys {
            assert!(!list.evicted(k, &cx));
        }
        // The second leaves early: the first is still the oldest.
        list.leave(keys[1]);
        let (d, evicted) = list.enter();
        assert!(!evicted, "room was left by the one that left");
        let (e, evicted) = list.enter();
        assert!(evicted);
        assert!(list.evicted(keys[0], &cx), "the oldest went first");
        assert!(!list.evicted(keys[2], &cx));
        assert_eq!(count.get(), 1, "and was woken");
        assert_eq!(list.pending(), 3);
        let (_, evicted) = list.enter();
        assert!(evicted);
        assert!(list.evicted(keys[2], &cx), "then the next oldest");
        // Evicted entries leave without unlinking twice.
        list.leave(keys[0]);
        list.leave(keys[2]);
        assert_eq!(list.pending(), 3);
        list.leave(d);
        list.leave(e);
        assert_eq!(list.pending(), 1);
    }

    #[test]
    fn leaving_from_the_middle_and_the_ends_keeps_the_order() {
        let list = Handshakes::new(10);
        let keys: Vec<usize> = (0..5).map(|_| list.enter().0).collect();
        list.leave(keys[4]);
        list.leave(keys[0]);
        list.leave(keys[2]);
        let order = |list: &Handshakes| {
            let entries = list.entries.borrow();
            let mut out = Vec::new();
            let mut k = list.head.get();
            while k != NIL {
                out.push(k);
                k = entries[k].next;
            }
            out
        };
        assert_eq!(order(&list), [keys[1], keys[3]]);
        let (f, _) = list.enter();
        assert_eq!(order(&list), [keys[1], keys[3], f]);
    }
}
