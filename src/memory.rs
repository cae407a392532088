//! What all clients together hold in their buffers, kept as a running total, and who holds the
//! most: the ledger behind `--max-client-memory` (like Redis's `maxmemory-clients`).
//!
//! The loop tells the ledger a client's new holding whenever it may have changed (after a read,
//! a write, a fan-out, a timer); the ledger adjusts the total by the difference, in O(1), and
//! keeps its index of holders, an ordered set of `(bytes, key)`, in O(log n). Nothing here
//! walks all clients: finding the biggest holders to evict is a walk down the set from its top,
//! as far as the eviction goes. A client holding nothing is not in the set at all, so the many
//! clients that keep up (whose queues are empty between turns) cost the set nothing.
//!
//! The ledger also counts the bytes given back since the last trim (see [`Ledger::released`]),
//! for the loop's decision to hand freed memory back to the system at a quiet moment.

use std::collections::BTreeSet;

/// The running total of client buffers and an index of who holds what.
#[derive(Debug, Default)]
pub struct Ledger {
    total: usize,
    /// Every client holding more than nothing, by holding then key.
    holders: BTreeSet<(usize, usize)>,
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

    /// The holders, the biggest first: `(bytes, key)`.
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

    /// Clients holding anything.
    pub fn holders(&self) -> usize {
        self.holders.len()
    }
}

/// Which holders to evict so that the total comes back to `bound`: the biggest first, as many as
/// it takes (none while the total is within it). `skip` leaves out holders that cannot be
/// evicted again (already ending).
pub fn over_bound(
    ledger: &Ledger,
    bound: usize,
    mut skip: impl FnMut(usize) -> bool,
) -> Vec<usize> {
    let mut excess = ledger.total().saturating_sub(bound);
    let mut chosen = Vec::new();
    for (bytes, key) in ledger.biggest() {
        if excess == 0 {
            break;
        }
        if skip(key) {
            continue;
        }
        chosen.push(key);
        excess = excess.saturating_sub(bytes);
    }
    chosen
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..20usize, 0..5000usize).prop_map(|(k, b)| Op::Set(k, b)),
            (0..20usize).prop_map(Op::Close),
        ]
    }

    proptest! {
        /// After any sequence of grows, shrinks and closes, the total is the sum of the parts
        /// (and the peak the highest it has been),
        /// the index holds exactly the clients holding something, biggest first, and what was
        /// released is what the shrinks gave back.
        #[test]
        fn the_total_is_the_sum_of_the_parts(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ledger = Ledger::default();
            let mut parts: HashMap<usize, usize> = HashMap::new();
            let mut released = 0;
            let mut peak = 0;
            for op in ops {
                let (key, new) = match op {
                    Op::Set(key, bytes) => (key, bytes),
                    Op::Close(key) => (key, 0),
                };
                let old = parts.get(&key).copied().unwrap_or(0);
                released += old.saturating_sub(new);
                ledger.update(key, old, new);
                parts.insert(key, new);
                prop_assert_eq!(ledger.total(), parts.values().sum::<usize>());
                peak = peak.max(ledger.total());
                prop_assert_eq!(ledger.peak(), peak);
            }
            let mut expected: Vec<(usize, usize)> =
                parts.iter().filter(|(_, &b)| b > 0).map(|(&k, &b)| (b, k)).collect();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            prop_assert_eq!(ledger.biggest().collect::<Vec<_>>(), expected);
            prop_assert_eq!(ledger.take_released(), released);
            prop_assert_eq!(ledger.released(), 0);
        }

        /// Evicting the chosen brings the total within the bound whenever it can, and never
        /// chooses a smaller holder while a bigger one that may go is left.
        #[test]
        fn the_biggest_go_first(
            sizes in proptest::collection::vec(1..10_000usize, 0..40),
            bound in 0..100_000usize,
        ) {
            let mut ledger = Ledger::default();
            for (key, &bytes) in sizes.iter().enumerate() {
                ledger.update(key, 0, bytes);
            }
            let chosen = over_bound(&ledger, bound, |key| key % 7 == 3);
            let freed: usize = chosen.iter().map(|&k| sizes[k]).sum();
            let may_go: usize = sizes.iter().enumerate()
                .filter(|(k, _)| k % 7 != 3).map(|(_, &b)| b).sum();
            if ledger.total() <= bound {
                prop_assert!(chosen.is_empty());
            } else if may_go >= ledger.total() - bound {
                prop_assert!(ledger.total() - freed <= bound);
            }
            let smallest_chosen = chosen.iter().map(|&k| sizes[k]).min();
            for (key, &bytes) in sizes.iter().enumerate() {
                if key % 7 != 3 && !chosen.contains(&key) {
                    prop_assert!(smallest_chosen.is_none_or(|s| s >= bytes));
                }
            }
            for key in &chosen {
                prop_assert!(key % 7 != 3);
            }
        }
    }
}
