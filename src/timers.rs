//! Deadlines without threads: a min-heap of (when, connection) that sets the poll timeout.
//!
//! Entries are never removed early. A connection remembers the one deadline it has in the heap;
//! when an entry comes due the reactor checks it still matches (the slot may hold a newer
//! connection, or the deadline may have moved) and asks the connection what is due now. Activity
//! therefore costs nothing here: a keepalive deadline that moved later is simply re-armed when its
//! old entry fires.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One armed deadline: `key` is the slab key, `id` tells apart connections that reuse a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub at: Instant,
    pub key: usize,
    pub id: u64,
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub fn arm(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(t)| t.at)
    }

    /// Removes and returns one timer due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(t)) if t.at <= now => {
                let due = self.heap.pop().map(|Reverse(t)| t);
                // After a burst of connections the heap empties again: give the memory back.
                if self.heap.capacity() > 4096 && self.heap.len() < self.heap.capacity() / 4 {
                    self.heap.shrink_to(self.heap.len() * 2);
                }
                due
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_come_due_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for (secs, key) in [(3, 30), (1, 10), (2, 20)] {
            timers.arm(Timer {
                at: t0 + Duration::from_secs(secs),
                key,
                id: 0,
            });
        }
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let due: Vec<usize> = std::iter::from_fn(|| timers.pop_due(t0 + Duration::from_secs(2)))
            .map(|t| t.key)
            .collect();
        assert_eq!(due, [10, 20]);
        assert_eq!(timers.len(), 1);
    }
}
