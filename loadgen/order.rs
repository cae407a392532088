//! Exactly once and in order: what one receiver has seen of one sender's numbered messages.
//!
//! The server promises one order for everyone, so each receiver must see every sender's
//! messages 0, 1, 2, … with none missing, none twice, none out of place. A [`SeqTracker`] keeps
//! the next number it expects and the numbers it skipped, as ranges: a burst of loss costs one
//! entry, whatever its length, so even a corrupted sequence number cannot make it allocate much.

use std::ops::Range;

/// How one arrival fits the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next one expected.
    InOrder,
    /// Ahead of its turn: this many earlier messages have not arrived (yet).
    Skipped(u64),
    /// One that was skipped, arriving after a later one: an order violation.
    Late,
    /// Seen before.
    Duplicate,
}

#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    next: u64,
    /// Skipped numbers not seen since, in ascending order.
    missing: Vec<Range<u64>>,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Verdict {
        // Saturating: a corrupted number near u64::MAX must not overflow.
        if seq == self.next {
            self.next = seq.saturating_add(1);
            return Verdict::InOrder;
        }
        if seq > self.next {
            let skipped = seq - self.next;
            self.missing.push(self.next..seq);
            self.next = seq.saturating_add(1);
            return Verdict::Skipped(skipped);
        }
        let Some(i) = self.missing.iter().position(|r| r.contains(&seq)) else {
            return Verdict::Duplicate;
        };
        // Punch `seq` out of its range, keeping the pieces on either side.
        let Range { start, end } = self.missing[i].clone();
        match (start < seq, seq + 1 < end) {
            (false, false) => {
                self.missing.remove(i);
            }
            (false, true) => self.missing[i].start = seq + 1,
            (true, false) => self.missing[i].end = seq,
            (true, true) => {
                self.missing[i].end = seq;
                self.missing.insert(i + 1, seq + 1..end);
            }
        }
        Verdict::Late
    }

    /// Whether the last of the first `sent` messages has arrived (those before it have
    /// arrived, or are lost: the sender's order says so).
    pub fn reached(&self, sent: u64) -> bool {
        self.next >= sent
    }

    /// Messages not received out of the first `sent`: [`SeqTracker::gaps`] and
    /// [`SeqTracker::unreached`] together.
    #[cfg(test)]
    pub fn lost(&self, sent: u64) -> u64 {
        self.gaps(sent) + self.unreached(sent)
    }

    /// Messages that can no longer come: skipped, and a later one of the sender's has arrived
    /// (the server keeps each sender's order).
    pub fn gaps(&self, sent: u64) -> u64 {
        self.missing
            .iter()
            .map(|r| r.end.min(sent).saturating_sub(r.start))
            .sum()
    }

    /// Messages after the last one that arrived: still in flight, as far as this receiver can
    /// tell (late, or lost: only more time would say).
    pub fn unreached(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_all_quiet() {
        let mut t = SeqTracker::default();
        for seq in 0..100 {
            assert_eq!(t.observe(seq), Verdict::InOrder);
        }
        assert_eq!(t.lost(100), 0);
        assert_eq!(t.lost(105), 5, "the last five never came");
    }

    #[test]
    fn duplicates_are_caught_before_and_after_gaps() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Verdict::InOrder);
        assert_eq!(t.observe(0), Verdict::Duplicate);
        assert_eq!(t.observe(3), Verdict::Skipped(2));
        assert_eq!(t.observe(3), Verdict::Duplicate);
        assert_eq!(t.observe(2), Verdict::Late);
        assert_eq!(t.observe(2), Verdict::Duplicate);
        assert_eq!(t.lost(4), 1, "1 is still missing");
        assert_eq!(
            (t.gaps(6), t.unreached(6)),
            (1, 2),
            "1 lost; 4 and 5 in flight"
        );
    }

    #[test]
    fn late_arrivals_fill_gaps_from_any_side() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(10), Verdict::Skipped(10));
        for seq in [5, 0, 9, 1, 8, 2, 3, 4, 7, 6] {
            assert_eq!(t.observe(seq), Verdict::Late, "{seq}");
        }
        assert_eq!(t.lost(11), 0);
        assert!(t.missing.is_empty());
        assert_eq!(t.observe(11), Verdict::InOrder);
    }

    #[test]
    fn a_wild_sequence_number_costs_one_range() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(u64::MAX - 1), Verdict::Skipped(u64::MAX - 1));
        assert_eq!(t.missing.len(), 1);
        assert_eq!(t.lost(1000), 1000);
        assert_eq!(t.observe(u64::MAX), Verdict::InOrder);
        t.observe(u64::MAX); // whatever it is called, it must not overflow
    }
}
