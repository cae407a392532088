//! Every delivery of our stamped messages, checked as it arrives: that it is one of ours (a
//! known sender, a number that sender has sent), byte for byte as sent ([`Padding`]), not
//! stamped in the future, new to its receiver and in its sender's order ([`SeqTracker`]); and,
//! at the end, that every receiver saw the same messages in the same order ([`Trail`]).
//!
//! The order check costs each delivery a multiply and a branch: each receiver folds the
//! (sender, number) pairs it sees, in order, into a running hash; receivers that saw the same
//! messages must end with the same hash. To say *where* two of them parted, each also keeps a
//! few checkpoints (the hash after its 1st, 2nd, … delivery, thinned out as the run goes on so
//! that there are never more than [`MARKS`]).

use std::collections::HashMap;

use crate::args::{Generator, SENDER_STRIDE};
use crate::chat::{Padding, Stamp};
use crate::faults::{quote, Fault, Faults};
use crate::order::{SeqTracker, Verdict};

/// Checkpoints kept per receiver, at most.
const MARKS: usize = 32;

/// The order one receiver saw its deliveries in.
#[derive(Debug, Clone)]
pub struct Trail {
    count: u64,
    hash: u64,
    /// Checkpoints fall every `every` deliveries (a power of two).
    every: u64,
    /// (deliveries so far, hash then), at multiples of `every`: spread evenly over the run.
    marks: Vec<(u64, u64)>,
    /// The same at every power of two (at most 64 of them): fine early on, where a fault that
    /// shows at once falls.
    early: Vec<(u64, u64)>,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            count: 0,
            hash: 0,
            every: 1,
            marks: Vec::new(),
            early: Vec::new(),
        }
    }
}

impl Trail {
    #[inline]
    pub fn push(&mut self, sender: u32, seq: u64) {
        let key = (u64::from(sender) << 48) ^ seq;
        self.hash = (self.hash.rotate_left(5) ^ key).wrapping_mul(0x517C_C1B7_2722_0A95);
        self.count += 1;
        if self.count & (self.every - 1) == 0 {
            self.mark();
        }
    }

    /// Keeps a checkpoint; when there are too many, every other one goes and they fall half
    /// as often. Two trails of the same length have thinned alike, so their marks line up.
    /// Powers of two are multiples of `every` whenever they come, so they are all kept.
    #[cold]
    fn mark(&mut self) {
        let mark = (self.count, self.hash);
        if self.count.is_power_of_two() {
            self.early.push(mark);
            return;
        }
        self.marks.push(mark);
        if self.marks.len() >= MARKS {
            let every = self.every * 2;
            self.marks.retain(|&(count, _)| count % every == 0);
            self.every = every;
        }
    }

    /// Where two trails of the same length part: the most deliveries they agree on for
    /// certain, and the fewest by which they differ. (Equal hashes after n deliveries mean the
    /// same first n, and so the same first m for every m below n.)
    pub fn parting(&self, other: &Trail) -> (u64, u64) {
        let (mut agreed, mut by) = (0, self.count);
        let pairs = self.early.iter().zip(&other.early);
        for (mine, theirs) in pairs.chain(self.marks.iter().zip(&other.marks)) {
            if mine == theirs {
                agreed = agreed.max(mine.0);
            } else {
                by = by.min(mine.0);
            }
        }
        (agreed, by)
    }
}

/// The checks over one run's stamped messages; clients by fleet key.
pub struct Checker {
    /// Our senders are numbered `first`, `first + 1`, …: with several generators in one room
    /// (`--generator I/N`), each has its own range, and other ranges are the others' messages.
    first: u32,
    /// Whether other generators share the room: then their messages are counted, not faults.
    shared: bool,
    /// The generators sharing the room: a sender outside all their ranges is unknown.
    generators: u32,
    /// Other generators' messages seen.
    pub foreign: u64,
    /// The same by the generator that sent them (ours stays 0): `merge` checks that every
    /// generator's messages reached every other's clients.
    pub foreign_from: Vec<u64>,
    /// What each client (key) has seen of each foreign sender (its stamp number): the first
    /// number seen, and the sequence from there. Whoever joined when, from the first one on
    /// a sender's messages come once each and in order.
    foreign_seen: HashMap<(usize, u32), (u64, SeqTracker)>,
    senders: usize,
    /// `trackers[key * senders + s]`: what client `key` has seen of sender `s`.
    trackers: Vec<SeqTracker>,
    /// Messages each sender has sent so far: a number from there on was never sent.
    sent: Vec<u64>,
    trails: Vec<Trail>,
    padding: Padding,
    pub faults: Faults,
    pub deliveries: u64,
    pub duplicates: u64,
    pub order_violations: u64,
}

impl Checker {
    pub fn new(key_bound: usize, senders: usize, size: usize) -> Checker {
        Checker {
            first: 0,
            shared: false,
            generators: 1,
            foreign: 0,
            foreign_from: vec![0],
            foreign_seen: HashMap::new(),
            senders,
            trackers: vec![SeqTracker::default(); key_bound * senders],
            sent: vec![0; senders],
            trails: vec![Trail::default(); key_bound],
            padding: Padding::new(size),
            faults: Faults::default(),
            deliveries: 0,
            duplicates: 0,
            order_violations: 0,
        }
    }

    /// Numbers our senders as `generator`'s; other generators' messages are checked as theirs.
    pub fn numbered_as(mut self, generator: Generator) -> Checker {
        self.first = generator.first_sender();
        self.shared = generator.shared();
        self.generators = generator.count;
        self.foreign_from = vec![0; generator.count as usize];
        self
    }

    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The number sender `s` of ours puts in its stamps.
    pub fn stamp_sender(&self, s: usize) -> u32 {
        self.first.wrapping_add(s as u32)
    }

    pub fn padding(&self) -> &Padding {
        &self.padding
    }

    /// Sender `s` has sent one more message.
    pub fn count_sent(&mut self, s: usize) {
        if let Some(n) = self.sent.get_mut(s) {
            *n += 1;
        }
    }

    pub fn sent_by(&self) -> &[u64] {
        &self.sent
    }

    /// Checks one chat body that client `key` read at `now_ns` (the stamps' clock). Returns
    /// its stamp if it is a delivery to count (the first copy of a message of ours), after
    /// recording any fault.
    pub fn observe(&mut self, key: usize, body: &str, now_ns: u64) -> Option<Stamp> {
        let Some((stamp, padding)) = Stamp::parse(body) else {
            // A stamp spelled another way (`q=07`) is one of ours changed.
            let fault = match Stamp::parse_leniently(body) {
                Some(_) => Fault::Changed,
                None => Fault::Stray,
            };
            self.faults
                .record(fault, 1, || format!("client {key} got {}", quote(body)));
            return None;
        };
        let intact = padding.is_some_and(|p| self.padding.intact(&stamp, body.len(), p));
        let local = self.ours(key, &stamp, intact)?;
        if !intact {
            let faults = &mut self.faults;
            faults.record(Fault::Changed, 1, || {
                format!("client {key} got {}", quote(body))
            });
        }
        if stamp.sent_ns > now_ns {
            self.faults.record(Fault::FromTheFuture, 1, || {
                format!("client {key} got a message stamped {now_ns} ns before its arrival")
            });
        }
        self.accept(key, local)
    }

    /// The fast way for a text as it stood in its envelope (JSON escapes and all): the stamp
    /// of a message of ours, sent by now, every byte as its sender wrote it, or `None`. Has no
    /// effect: a `None` goes the slow way, [`Checker::observe`], which names what is wrong.
    /// A text that passes holds only digits, letters and the few signs of the stamp and the
    /// padding, so unescaped it would read the same. The stamp returned numbers its sender as
    /// ours do, from 0.
    #[inline]
    pub fn verified(&self, inner: &str, now_ns: u64) -> Option<Stamp> {
        let (stamp, padding) = Stamp::parse(inner)?;
        let local = stamp.sender.wrapping_sub(self.first);
        let sent = *self.sent.get(local as usize)?;
        let ok = stamp.seq < sent
            && stamp.sent_ns <= now_ns
            && self.padding.intact(&stamp, inner.len(), padding?);
        ok.then_some(Stamp {
            sender: local,
            ..stamp
        })
    }

    /// Counts a message of ours at client `key`, in its sender's order and the receiver's;
    /// returns its stamp if it is a delivery to count (not a second copy).
    #[inline(always)]
    pub fn accept(&mut self, key: usize, stamp: Stamp) -> Option<Stamp> {
        let tracker = self
            .trackers
            .get_mut(key * self.senders + stamp.sender as usize)?;
        match tracker.observe(stamp.seq) {
            Verdict::InOrder => {}
            verdict => self.out_of_turn(key, &stamp, verdict)?,
        }
        if let Some(trail) = self.trails.get_mut(key) {
            trail.push(stamp.sender, stamp.seq);
        }
        self.deliveries += 1;
        Some(stamp)
    }

    /// The stamp with our sender numbering from 0, if it is from a sender of ours and a number
    /// that sender has sent; records the fault if not (another generator's is checked as
    /// such: [`Checker::theirs`]).
    fn ours(&mut self, key: usize, stamp: &Stamp, intact: bool) -> Option<Stamp> {
        let (s, q) = (stamp.sender, stamp.seq);
        let local = s.wrapping_sub(self.first);
        let generator = s / SENDER_STRIDE;
        match self.sent.get(local as usize) {
            None if self.shared && generator < self.generators && s >= self.first => {
                // In another generator's range only if below ours or past our whole stride.
                if s - self.first < SENDER_STRIDE {
                    self.unknown(key, stamp);
                } else {
                    self.theirs(key, stamp, generator, intact);
                }
            }
            None if self.shared && generator < self.generators => {
                self.theirs(key, stamp, generator, intact)
            }
            None => self.unknown(key, stamp),
            Some(&sent) if q >= sent => self.faults.record(Fault::NeverSent, 1, || {
                format!("client {key} got message {q} of sender {s}, which had sent {sent}")
            }),
            Some(_) => {
                return Some(Stamp {
                    sender: local,
                    ..*stamp
                })
            }
        }
        None
    }

    #[cold]
    fn unknown(&mut self, key: usize, stamp: &Stamp) {
        let (s, q) = (stamp.sender, stamp.seq);
        let (senders, generators) = (self.senders, self.generators);
        self.faults.record(Fault::UnknownSender, 1, || {
            format!(
                "client {key} got message {q} of sender {s}, of {senders} senders here and \
                 {generators} generator(s) in all"
            )
        });
    }

    /// Another generator's message at client `key`: counted by generator, checked byte for
    /// byte (the generators of one run write texts of one size) and in its sender's order
    /// from the first one this client saw.
    #[cold]
    fn theirs(&mut self, key: usize, stamp: &Stamp, generator: u32, intact: bool) {
        self.foreign += 1;
        if let Some(n) = self.foreign_from.get_mut(generator as usize) {
            *n += 1;
        }
        let (s, q) = (stamp.sender, stamp.seq);
        if !intact {
            self.faults.record(Fault::Changed, 1, || {
                format!("client {key} got message {q} of sender {s} (another generator's) changed")
            });
        }
        let (first, tracker) = self
            .foreign_seen
            .entry((key, s))
            .or_insert_with(|| (q, SeqTracker::default()));
        let verdict = match q.checked_sub(*first) {
            Some(offset) => tracker.observe(offset),
            None => Verdict::Late,
        };
        let fault = match verdict {
            Verdict::InOrder => return,
            Verdict::Duplicate => Fault::Duplicated,
            Verdict::Late => Fault::OutOfOrder,
            Verdict::Skipped(_) => Fault::Lost,
        };
        let count = match verdict {
            Verdict::Skipped(n) => n,
            _ => 1,
        };
        self.faults.record(fault, count, || {
            format!("client {key} got message {q} of sender {s} (another generator's): {verdict:?}")
        });
    }

    /// Records a delivery that is not the next of its sender's; `None` if it is not to count.
    #[cold]
    fn out_of_turn(&mut self, key: usize, stamp: &Stamp, verdict: Verdict) -> Option<()> {
        let (s, q) = (stamp.sender, stamp.seq);
        match verdict {
            Verdict::Duplicate => {
                self.duplicates += 1;
                self.faults.record(Fault::Duplicated, 1, || {
                    format!("client {key} got message {q} of sender {s} twice")
                });
                return None;
            }
            Verdict::Late => {
                self.order_violations += 1;
                self.faults.record(Fault::OutOfOrder, 1, || {
                    format!("client {key} got message {q} of sender {s} after a later one")
                });
            }
            // The server keeps each sender's order, so what was skipped is not coming.
            Verdict::Skipped(n) => self.faults.record(Fault::Lost, n, || {
                format!("client {key} got message {q} of sender {s} without the {n} before it")
            }),
            Verdict::InOrder => {}
        }
        Some(())
    }

    /// Whether every client in `keys` has had the last message each sender sent.
    pub fn caught_up(&self, keys: impl Iterator<Item = usize>) -> bool {
        let s = self.senders;
        keys.into_iter().all(|key| {
            let row = self.trackers.get(key * s..(key + 1) * s).unwrap_or(&[]);
            row.iter().zip(&self.sent).all(|(t, &n)| t.reached(n))
        })
    }

    /// Messages the clients in `keys` never got, as (lost, in flight): those that can no
    /// longer come, since a later one of their sender's arrived (the `lost` fault), and those
    /// after the last that arrived, still in flight when the run ended (`in flight at the
    /// end`).
    pub fn count_lost(&mut self, keys: &[usize]) -> (u64, u64) {
        let s = self.senders;
        let (mut lost, mut in_flight) = (0, 0);
        for &key in keys {
            let row = self.trackers.get(key * s..(key + 1) * s).unwrap_or(&[]);
            for (sender, (t, &n)) in row.iter().zip(&self.sent).enumerate() {
                let (gaps, tail) = (t.gaps(n), t.unreached(n));
                if gaps > 0 && !self.faults.has(Fault::Lost) {
                    self.faults.record(Fault::Lost, 0, || {
                        format!(
                            "client {key} never got {gaps} of sender {sender}'s {n}, though \
                             later ones came"
                        )
                    });
                }
                if tail > 0 && !self.faults.has(Fault::InFlight) {
                    self.faults.record(Fault::InFlight, 0, || {
                        format!(
                            "client {key} had not got sender {sender}'s last {tail} of {n} \
                             when the run ended"
                        )
                    });
                }
                lost += gaps;
                in_flight += tail;
            }
        }
        self.faults.set_count(Fault::Lost, lost);
        self.faults.set_count(Fault::InFlight, in_flight);
        (lost, in_flight)
    }

    /// Compares the orders the clients in `keys` saw: those that saw as many messages as most
    /// did must have seen them in the same order. Records `reordered` with the first parting.
    pub fn compare_orders(&mut self, keys: &[usize]) {
        let trails: Vec<(usize, &Trail)> = keys
            .iter()
            .filter_map(|&k| self.trails.get(k).map(|t| (k, t)))
            .collect();
        // The reference: the (count, hash) most receivers ended with.
        let mut ends: Vec<(u64, u64)> = trails.iter().map(|(_, t)| (t.count, t.hash)).collect();
        ends.sort_unstable();
        let Some(common) = most_common(&ends) else {
            return;
        };
        let Some(&(reference, model)) = trails.iter().find(|(_, t)| (t.count, t.hash) == common)
        else {
            return;
        };
        let odd: Vec<&(usize, &Trail)> = trails
            .iter()
            .filter(|(_, t)| t.count == common.0 && t.hash != common.1)
            .collect();
        if let Some(&&(key, trail)) = odd.first() {
            let (agreed, by) = trail.parting(model);
            let n = trail.count;
            self.faults.record(Fault::Reordered, odd.len() as u64, || {
                format!(
                    "clients {key} and {reference} got the same {n} messages in different \
                     orders: the same first {agreed}, different by delivery {by}"
                )
            });
        }
    }
}

/// The most frequent value of a sorted slice (the first of equals).
fn most_common(sorted: &[(u64, u64)]) -> Option<(u64, u64)> {
    let mut best: Option<((u64, u64), usize)> = None;
    for run in sorted.chunk_by(|a, b| a == b) {
        if best.is_none_or(|(_, n)| run.len() > n) {
            best = Some((run[0], run.len()));
        }
    }
    best.map(|(value, _)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(checker: &Checker, sender: u32, seq: u64, sent_ns: u64) -> String {
        let mut out = String::new();
        let stamp = Stamp {
            sender,
            seq,
            sent_ns,
        };
        checker.padding().encode(&stamp, &mut out);
        out
    }

    /// Two senders that sent three messages each, checked at two receivers.
    fn checker() -> Checker {
        let mut c = Checker::new(2, 2, 64);
        for s in [0, 0, 0, 1, 1, 1] {
            c.count_sent(s);
        }
        c
    }

    #[test]
    fn a_clean_run_has_no_faults() {
        let mut c = checker();
        for key in 0..2 {
            for (s, q) in [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)] {
                let body = text(&c, s, q, 10);
                assert!(c.observe(key, &body, 20).is_some());
            }
        }
        assert!(c.caught_up(0..2));
        assert_eq!(c.count_lost(&[0, 1]), (0, 0));
        c.compare_orders(&[0, 1]);
        assert!(c.faults.is_empty(), "{:?}", c.faults);
        assert_eq!(c.deliveries, 12);
    }

    #[test]
    fn each_fault_is_named() {
        let c = checker();
        let at = |s, q, t| text(&c, s, q, t);
        let changed = at(0, 0, 10).replace("t=10 ", "t=11 ");
        // Each case: bodies that client 0 reads at 20 ns, one after the other.
        let cases = [
            (Fault::Stray, vec!["hello".to_string()]),
            (Fault::UnknownSender, vec![at(2, 0, 10)]),
            (Fault::NeverSent, vec![at(1, 3, 10)]),
            (Fault::Changed, vec![changed]),
            (Fault::FromTheFuture, vec![at(0, 0, 30)]),
            (Fault::Duplicated, vec![at(0, 0, 10), at(0, 0, 10)]),
            (Fault::Lost, vec![at(0, 2, 10)]),
            (Fault::OutOfOrder, vec![at(0, 1, 10), at(0, 0, 10)]),
        ];
        for (fault, bodies) in cases {
            let mut c = checker();
            for body in &bodies {
                c.observe(0, body, 20);
            }
            assert!(c.faults.has(fault), "{fault:?}: {:?}", c.faults);
        }
    }

    #[test]
    fn two_orders_are_told_apart_and_placed() {
        let mut c = checker();
        let order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)];
        for (key, swap) in [(0, false), (1, true)] {
            let mut seen = order;
            if swap {
                seen.swap(4, 5); // sender 1's last before sender 0's: each in its own order
            }
            for (s, q) in seen {
                let body = text(&c, s, q, 10);
                c.observe(key, &body, 20);
            }
        }
        assert!(c.faults.is_empty(), "no per-sender fault: {:?}", c.faults);
        // With two receivers either one is the reference; the fault is the same.
        c.compare_orders(&[0, 1]);
        assert_eq!(c.faults.count(Fault::Reordered), 1);
        let mut lines = Vec::new();
        c.faults.problems(&mut lines);
        assert!(
            lines[0].contains("the same first 4, different by delivery 5"),
            "{lines:?}"
        );
    }

    #[test]
    fn other_generators_messages_are_counted_not_faults() {
        // Generator 1 of 2: its senders are 1_000_000 and up; sender 0 is generator 0's.
        let mut c = Checker::new(1, 1, 64).numbered_as(Generator { index: 1, count: 2 });
        c.count_sent(0);
        let theirs = text(&c, 0, 5, 10);
        let ours = text(&c, 1_000_000, 0, 10);
        assert!(c.verified(&theirs, 20).is_none(), "not ours: the slow way");
        assert!(c.observe(0, &theirs, 20).is_none());
        assert_eq!(c.foreign, 1);
        assert_eq!(c.foreign_from, [1, 0]);
        let stamp = c.verified(&ours, 20).expect("ours, intact");
        assert_eq!(stamp.sender, 0, "numbered from 0 inside");
        assert!(c.accept(0, stamp).is_some());
        assert!(c.faults.is_empty(), "{:?}", c.faults);
        // Alone in the room, the same message is a fault.
        let mut alone = Checker::new(1, 1, 64);
        alone.count_sent(0);
        alone.observe(0, &text(&alone, 7, 0, 10), 20);
        assert!(alone.faults.has(Fault::UnknownSender));
        // Beyond every generator's range, or in ours past our senders: unknown.
        for sender in [2_000_000, 1_000_001, 1_999_999] {
            let mut c = Checker::new(1, 1, 64).numbered_as(Generator { index: 1, count: 2 });
            c.count_sent(0);
            c.observe(0, &text(&c, sender, 0, 10), 20);
            assert!(c.faults.has(Fault::UnknownSender), "{sender}");
            assert_eq!(c.foreign, 0);
        }
    }

    #[test]
    fn other_generators_messages_are_checked_in_their_order() {
        let g = Generator { index: 0, count: 2 };
        let cases: [(&[u64], Option<Fault>); 5] = [
            (&[5, 6, 7], None),
            (&[5, 6, 6], Some(Fault::Duplicated)),
            (&[5, 7], Some(Fault::Lost)),
            (&[5, 4], Some(Fault::OutOfOrder)),
            (&[5, 7, 6], Some(Fault::OutOfOrder)),
        ];
        for (seqs, fault) in cases {
            let mut c = Checker::new(1, 1, 64).numbered_as(g);
            for &q in seqs {
                let body = text(&c, 1_000_000, q, 10);
                c.observe(0, &body, 20);
            }
            match fault {
                None => assert!(c.faults.is_empty(), "{seqs:?}: {:?}", c.faults),
                Some(f) => assert!(c.faults.has(f), "{seqs:?}: {:?}", c.faults),
            }
        }
        let mut c = Checker::new(1, 1, 64).numbered_as(g);
        let changed = text(&c, 1_000_000, 0, 10).replace("t=10 ", "t=11 ");
        c.observe(0, &changed, 20);
        assert!(c.faults.has(Fault::Changed));
    }

    #[test]
    fn lost_counts_gaps_and_tails() {
        let mut c = checker();
        for (s, q) in [(0, 0), (0, 2), (1, 0)] {
            let body = text(&c, s, q, 10);
            c.observe(0, &body, 20);
        }
        assert!(!c.caught_up(0..1));
        // Sender 0's 1 is lost (its 2 came); sender 1's 1 and 2 are still in flight.
        assert_eq!(c.count_lost(&[0]), (1, 2));
        assert_eq!(c.faults.count(Fault::Lost), 1);
        assert_eq!(c.faults.count(Fault::InFlight), 2);
    }

    #[test]
    fn checkpoints_stay_few_and_line_up() {
        let mut a = Trail::default();
        let mut b = Trail::default();
        for q in 0..100_000 {
            a.push(0, q);
            b.push(0, if q == 70_000 { 1 << 40 } else { q });
        }
        assert!(a.marks.len() < MARKS && b.marks.len() < MARKS);
        assert_eq!(a.early.len(), 17, "1, 2, 4, … 65536");
        let (agreed, by) = a.parting(&b);
        assert!(agreed <= 70_000 && by > 70_000, "{agreed} {by}");
        assert!(by - agreed <= 8192, "{agreed} {by}");
        // Early on, the powers of two place a parting closely however long the run.
        let mut c = Trail::default();
        for q in 0..100_000 {
            c.push(0, if q == 9 { 1 << 40 } else { q });
        }
        assert_eq!(a.parting(&c), (8, 16));
    }
}
