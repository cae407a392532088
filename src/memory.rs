//! What all clients together hold in their buffers, kept as a running total, and who holds the
//! most: the ledger behind `--max-client-memory` (like Redis's `maxmemory-clients`).
//!
//! The loop tells the ledger a client's new holding whenever it may have changed (after a read,
//! a write, a fan-out, a timer); the ledger adjusts the total by the difference, in O(1), and
//! keeps its index of holders, an ordered set of `(bytes, key)`, in O(log n). Nothing here
//! walks all clients: the biggest holder is the top of the set. A client holding nothing is not
//! in the set at all, so the many clients that keep up (whose queues are empty between turns)
//! cost the set nothing. A client chosen for eviction leaves the set: what it still holds on its
//! way out (the rest of a frame being written, records sealed for the socket) counts in the
//! total but can choose no one else for eviction, so one victim's remainder never costs a second
//! client its place.
//!
//! The ledger also counts the bytes given back since the last trim (see [`Ledger::released`]),
//! for the loop's decision to hand freed memory back to the system at a quiet moment.

use std::collections::BTreeSet;

/// The running total of client buffers and an index of who holds what.
#[derive(Debug, Default)]
pub struct Ledger {
    total: usize,
    /// Every client holding more than nothing, by holding then key, but those leaving.
    holders: BTreeSet<(usize, usize)>,
    /// What clients chosen for eviction still hold (see [`Ledger::leave`]).
    leaving: usize,
    /// Bytes released (holdings that shrank or ended) since [`Ledger::take_released`].
    released: usize,
    /// The highest total so far.
    peak: usize,
}

impl Ledger {
    /// What all clients hold, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Client `key`'s holding went from `old` to `new` bytes (`new` is 0 when it is gone).
    pub fn update(&mut self, key: usize, old: usize, new: usize) {
        if old == new {
            return;
        }
        if old > 0 {
            self.holders.remove(&(old, key));
        }
        if new > 0 {
            self.holders.insert((new, key));
        }
        self.total = self.total - old + new;
        self.peak = self.peak.max(self.total);
        self.released += old.saturating_sub(new);
    }

    /// The most all clients have held at once, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Client `key`, holding `held` bytes, was chosen for eviction: out of the index, its
    /// holding counted from now on by [`Ledger::update_leaving`].
    pub fn leave(&mut self, key: usize, held: usize) {
        if self.holders.remove(&(held, key)) {
            self.leaving += held;
        }
    }

    /// A client chosen for eviction went from holding `old` bytes to `new` (0 when it is gone).
    pub fn update_leaving(&mut self, old: usize, new: usize) {
        self.leaving = self.leaving - old + new;
        self.total = self.total - old + new;
        self.peak = self.peak.max(self.total);
        self.released += old.saturating_sub(new);
    }

    /// The biggest holder not leaving, `(bytes, key)`, while what those hold passes `bound`.
    pub fn biggest_past(&self, bound: usize) -> Option<(usize, usize)> {
        if self.total - self.leaving <= bound {
            return None;
        }
        self.holders.last().copied()
    }

    /// What clients chosen for eviction still hold.
    #[cfg(test)] // the loop takes the top alone (`biggest_past`)
    pub fn leaving(&self) -> usize {
        self.leaving
    }

    /// The holders not leaving, the biggest first: `(bytes, key)`.
    #[cfg(test)] // the loop takes the top alone (`biggest_past`)
    pub fn biggest(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.holders.iter().rev().copied()
    }

    /// Bytes released since the last call (and starts counting again).
    pub fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    /// Bytes released since [`Ledger::take_released`] was last called.
    pub fn released(&self) -> usize {
        self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Set(usize, usize),
        Close(usize),
        Leave(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..20usize, 0..5000usize).prop_map(|(k, b)| Op::Set(k, b)),
            (0..20usize).prop_map(Op::Close),
            (0..20usize).prop_map(Op::Leave),
        ]
    }

    proptest! {
        /// After any sequence of grows, shrinks, closes and clients chosen for eviction, the
        /// total is the sum of the parts and the peak the highest it has been; the index holds
        /// exactly the clients holding something and not leaving, biggest first, and what the
        /// others hold is what is leaving; what was released is what the shrinks gave back.
        #[test]
        fn the_total_is_the_sum_of_the_parts(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ledger = Ledger::default();
            // key -> (bytes, leaving), as the loop keeps them (a closed key may come back new)
            let mut parts: HashMap<usize, (usize, bool)> = HashMap::new();
            let mut released = 0;
            let mut peak = 0;
            for op in ops {
                let (key, new) = match op {
                    Op::Leave(key) => {
                        let (held, _) = parts.get(&key).copied().unwrap_or((0, false));
                        ledger.leave(key, held);
                        if held > 0 {
                            parts.insert(key, (held, true));
                        }
                        continue;
                    }
                    Op::Set(key, bytes) => (key, bytes),
                    Op::Close(key) => (key, 0),
                };
                let (old, leaving) = parts.get(&key).copied().unwrap_or((0, false));
                released += old.saturating_sub(new);
                if leaving {
                    ledger.update_leaving(old, new);
                } else {
                    ledger.update(key, old, new);
                }
                if new == 0 {
                    parts.remove(&key); // gone: the key may come back as a new client
                } else {
                    parts.insert(key, (new, leaving));
                }
                prop_assert_eq!(ledger.total(), parts.values().map(|p| p.0).sum::<usize>());
                peak = peak.max(ledger.total());
                prop_assert_eq!(ledger.peak(), peak);
            }
            let mut expected: Vec<(usize, usize)> = parts
                .iter()
                .filter(|(_, &(b, leaving))| b > 0 && !leaving)
                .map(|(&k, &(b, _))| (b, k))
                .collect();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            prop_assert_eq!(ledger.biggest().collect::<Vec<_>>(), expected);
            let leaving: usize = parts.values().filter(|p| p.1).map(|p| p.0).sum();
            prop_assert_eq!(ledger.leaving(), leaving);
            prop_assert_eq!(ledger.take_released(), released);
            prop_assert_eq!(ledger.released(), 0);
        }

        /// Choosing the biggest past the bound, each letting go of part of what it holds (the
        /// rest leaving), brings what the others hold within the bound, biggest first: no holder
        /// left is bigger than one chosen, and no remainder chooses another.
        #[test]
        fn the_biggest_go_first(
            sizes in proptest::collection::vec(1..10_000usize, 0..40),
            kept in 0..100usize,
            bound in 0..100_000usize,
        ) {
            let mut ledger = Ledger::default();
            for (key, &bytes) in sizes.iter().enumerate() {
                ledger.update(key, 0, bytes);
            }
            let mut chosen = Vec::new();
            while let Some((bytes, key)) = ledger.biggest_past(bound) {
                prop_assert_eq!(bytes, sizes[key]);
                chosen.push(key);
                ledger.leave(key, bytes);
                ledger.update_leaving(bytes, bytes * kept / 100);
            }
            prop_assert!(ledger.total() - ledger.leaving() <= bound);
            let smallest_chosen = chosen.iter().map(|&k| sizes[k]).min();
            for (key, &bytes) in sizes.iter().enumerate() {
                if !chosen.contains(&key) {
                    prop_assert!(smallest_chosen.is_none_or(|s| s >= bytes));
                }
            }
            let needed = sizes.iter().sum::<usize>().saturating_sub(bound);
            let freed_or_leaving: usize = chosen.iter().map(|&k| sizes[k]).sum();
            let all_but_last = freed_or_leaving - smallest_chosen.unwrap_or(0);
            prop_assert!(all_but_last < needed || chosen.is_empty(), "one too many chosen");
        }
    }
}
