//! Notices as an order: clients that stay in the room through the same arrivals and departures
//! must hear the same sequence of join and leave notices, whatever its length.
//!
//! A notice says nothing of whom it is about, so one client alone can only count; a lost leave
//! and a doubled one cancel in its totals. Several clients that stay can be compared: each folds
//! the notices it hears into a [`NoticeTrail`]. They joined at different moments, so each one's
//! sequence opens with a different number of join notices (its own and those after it); from
//! the first leave notice on, the sequences must be the same, and the lengths of the opening
//! runs must be consecutive numbers (each stayer heard one more join than the next one to join).

use crate::chat::Notice;
use crate::faults::{Fault, Faults};

/// What one staying client heard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NoticeTrail {
    /// Join notices before the first leave notice.
    pub leading: u64,
    /// Notices from the first leave notice on, and their order as a running hash.
    pub after: u64,
    hash: u64,
    /// Every join and leave notice heard.
    pub joins: u64,
    pub leaves: u64,
}

impl NoticeTrail {
    pub fn push(&mut self, notice: Notice, count: u64) {
        match notice {
            Notice::Joined => self.joins += count,
            Notice::Left => self.leaves += count,
        }
        if self.after == 0 && notice == Notice::Joined {
            self.leading += count;
            return;
        }
        let bit = u64::from(notice == Notice::Left) + 1;
        // A run is folded one notice at a time: its length is part of the order.
        for _ in 0..count {
            self.hash = (self.hash.rotate_left(5) ^ bit).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
        self.after += count;
    }
}

/// Compares the trails of stayers (`(key, trail)`, the watcher first); records `notice order`
/// where they disagree. Returns whether they agree.
pub fn compare(trails: &[(usize, &NoticeTrail)], faults: &mut Faults) -> bool {
    let Some(&(first_key, first)) = trails.first() else {
        return true;
    };
    for &(key, trail) in &trails[1..] {
        if (trail.after, trail.hash) != (first.after, first.hash) {
            faults.record(Fault::NoticeOrder, 1, || {
                format!(
                    "clients {first_key} and {key} stayed throughout, but after the first leave \
                     notice heard different sequences ({} and {} notices)",
                    first.after, trail.after
                )
            });
            return false;
        }
    }
    let mut leading: Vec<(u64, usize)> = trails.iter().map(|&(k, t)| (t.leading, k)).collect();
    leading.sort_unstable_by(|a, b| b.cmp(a));
    let top = leading[0].0;
    for (i, &(count, key)) in leading.iter().enumerate() {
        if count + i as u64 != top {
            faults.record(Fault::NoticeOrder, 1, || {
                format!(
                    "the stayers' opening join notices are not consecutive: client {key} heard \
                     {count}, the most {top}"
                )
            });
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use Notice::{Joined as J, Left as L};

    fn trail(notices: &[(Notice, u64)]) -> NoticeTrail {
        let mut t = NoticeTrail::default();
        for &(n, count) in notices {
            t.push(n, count);
        }
        t
    }

    #[test]
    fn the_same_events_from_different_joins_agree() {
        // A watcher, two background clients, then a churner joins and leaves twice.
        let churn = [(J, 1), (L, 1), (J, 1), (L, 1)];
        let stayer = |own: u64| {
            let mut all = vec![(J, own)];
            all.extend(churn);
            trail(&all)
        };
        let (w, b1, b2) = (stayer(3), stayer(2), stayer(1));
        let mut faults = Faults::default();
        assert!(compare(&[(0, &w), (1, &b1), (2, &b2)], &mut faults));
        assert!(faults.is_empty());
        assert_eq!((w.leading, w.after), (4, 3));
    }

    #[test]
    fn a_loss_and_a_duplicate_do_not_cancel() {
        let good = trail(&[(J, 2), (L, 1), (J, 1), (L, 1), (J, 1), (L, 1)]);
        // One leave lost, the next one doubled: the same totals.
        let bad = trail(&[(J, 3), (J, 1), (L, 2), (J, 1), (L, 1)]);
        let mut faults = Faults::default();
        assert!(!compare(&[(0, &bad), (1, &good)], &mut faults));
        assert!(faults.has(Fault::NoticeOrder));
    }

    #[test]
    fn opening_runs_must_be_consecutive() {
        let a = trail(&[(J, 3), (L, 1)]);
        let b = trail(&[(J, 1), (L, 1)]);
        let mut faults = Faults::default();
        assert!(!compare(&[(0, &a), (1, &b)], &mut faults));
        assert!(faults.has(Fault::NoticeOrder));
    }
}
