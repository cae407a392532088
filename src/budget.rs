//! A client's fair share of the room: how many messages, and how many bytes of text, it may make
//! the room carry per second, each with a burst. Plain arithmetic over `Instant`s, no I/O.
//!
//! The connection charges its [`Budget`] for every message it says, after the fact (the message
//! has been read, so it goes to the room), and then asks [`Budget::held_until`]: while that is
//! later than now, nothing more of the client's input is used and the loop stops reading its
//! socket. So TCP flow control slows the flooder itself, and only it.
//!
//! Each limit is a token bucket kept in its "virtual scheduling" form (GCRA): one instant, the
//! time at which the bucket would be full again. Charging `n` tokens pushes it `n / rate` later;
//! the client may go on while it stays within `burst / rate` of now (less one token). The limits
//! are the same for every client and live once in the [`FairShare`] of the configuration; a
//! client keeps only its two instants, as nanoseconds after the `FairShare`'s epoch: 16 bytes
//! per connection, O(1) per message, no allocation, no timer of its own.

use std::time::{Duration, Instant};

/// The most a bucket can be pushed into the future: a charge of absurd size (a rate of 1 and
/// `u64::MAX` tokens) holds the client a day, rather than overflowing.
const MAX_DEBT: Duration = Duration::from_secs(24 * 60 * 60);

/// A sustained rate with a burst, both in tokens (messages, or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    per_second: u64,
    burst: u64,
}

impl Rate {
    /// The default, far above any person typing (a paste of a page is one message): 20 messages
    /// a second, 100 at once.
    pub const DEFAULT_MESSAGES: Rate = Rate {
        per_second: 20,
        burst: 100,
    };
    /// 256 KiB of text a second, 1 MiB at once (16 of the largest default messages).
    pub const DEFAULT_BYTES: Rate = Rate {
        per_second: 256 << 10,
        burst: 1 << 20,
    };

    /// `None` if either is 0 (a rate of 0 never refills; to turn a limit off, pass no `Rate`).
    pub fn new(per_second: u64, burst: u64) -> Option<Rate> {
        (per_second > 0 && burst > 0).then_some(Rate { per_second, burst })
    }

    pub fn per_second(&self) -> u64 {
        self.per_second
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Nanoseconds `tokens` take to refill, rounded up, at most [`MAX_DEBT`].
    fn refill_ns(&self, tokens: u64) -> u64 {
        let nanos = (u128::from(tokens) * 1_000_000_000).div_ceil(u128::from(self.per_second));
        u64::try_from(nanos).map_or(max_debt_ns(), |n| n.min(max_debt_ns()))
    }

    /// Where a bucket full again at `full_at` is after `tokens` are charged at `now`.
    fn charge(&self, full_at: u64, now: u64, tokens: u64) -> u64 {
        let from = full_at.max(now);
        from.saturating_add(self.refill_ns(tokens))
            .min(now.saturating_add(max_debt_ns()))
    }

    /// When a bucket full again at `full_at` has a token to spare: it is within the burst of
    /// now, less one token.
    fn free_at(&self, full_at: u64) -> u64 {
        full_at
            .saturating_add(self.refill_ns(1))
            .saturating_sub(self.refill_ns(self.burst))
    }
}

fn max_debt_ns() -> u64 {
    MAX_DEBT.as_nanos() as u64 // a day: far below u64::MAX
}

/// The limits every client gets, and the instant their budgets count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairShare {
    messages: Option<Rate>,
    bytes: Option<Rate>,
    epoch: Instant,
}

impl FairShare {
    /// `None` for a limit turns it off; both `None` is [`FairShare::off`].
    pub fn new(messages: Option<Rate>, bytes: Option<Rate>) -> FairShare {
        FairShare {
            messages,
            bytes,
            epoch: Instant::now(),
        }
    }

    /// No limit at all (for load tests): nobody is ever held.
    pub fn off() -> FairShare {
        FairShare::new(None, None)
    }

    pub fn is_off(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    pub fn messages(&self) -> Option<Rate> {
        self.messages
    }

    pub fn bytes(&self) -> Option<Rate> {
        self.bytes
    }

    /// `now` in nanoseconds after the epoch (an instant before it counts as the epoch itself).
    fn ticks(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    fn instant(&self, ticks: u64) -> Instant {
        let after = Duration::from_nanos(ticks);
        self.epoch
            .checked_add(after)
            .unwrap_or(self.epoch + MAX_DEBT)
    }
}

impl Default for FairShare {
    fn default() -> FairShare {
        FairShare::new(Some(Rate::DEFAULT_MESSAGES), Some(Rate::DEFAULT_BYTES))
    }
}

/// One client's budget: when each of its buckets is full again, in nanoseconds after the
/// [`FairShare`]'s epoch (0: full since the start). The rates are the `FairShare`'s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    messages_full_at: u64,
    bytes_full_at: u64,
}

impl Budget {
    /// Charges one message of `bytes` bytes said at `now`. It has been read and goes to the
    /// room, so nothing is refused here: a message larger than the burst passes too, and leaves
    /// the budget in debt, which [`Budget::held_until`] then makes the client repay.
    pub fn charge(&mut self, share: &FairShare, now: Instant, bytes: u64) {
        let now = share.ticks(now);
        if let Some(rate) = share.messages {
            self.messages_full_at = rate.charge(self.messages_full_at, now, 1);
        }
        if let Some(rate) = share.bytes {
            self.bytes_full_at = rate.charge(self.bytes_full_at, now, bytes);
        }
    }

    /// When the client may say its next message: the later of the instants at which each limit
    /// has a token to spare (a message; a byte). Earlier than or equal to now: it may go on.
    pub fn resume_at(&self, share: &FairShare) -> Instant {
        let messages = share
            .messages
            .map_or(0, |r| r.free_at(self.messages_full_at));
        let bytes = share.bytes.map_or(0, |r| r.free_at(self.bytes_full_at));
        share.instant(messages.max(bytes))
    }

    /// `Some(instant)` while the client must wait: its reads are held back until then.
    pub fn held_until(&self, share: &FairShare, now: Instant) -> Option<Instant> {
        Some(self.resume_at(share)).filter(|&at| at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn share(messages: Option<(u64, u64)>, bytes: Option<(u64, u64)>) -> FairShare {
        let rate = |(per_second, burst)| Rate::new(per_second, burst);
        FairShare::new(messages.and_then(rate), bytes.and_then(rate))
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let share = share(Some((10, 5)), None);
        let t0 = share.epoch + Duration::from_secs(1);
        let mut budget = Budget::default();
        for _ in 0..4 {
            budget.charge(&share, t0, 0);
            assert_eq!(budget.held_until(&share, t0), None);
        }
        // The fifth empties the bucket: the next message waits for one token, 100 ms at 10/s.
        budget.charge(&share, t0, 0);
        assert_eq!(budget.held_until(&share, t0), Some(t0 + 100 * MS));
        assert_eq!(budget.held_until(&share, t0 + 99 * MS), Some(t0 + 100 * MS));
        assert_eq!(budget.held_until(&share, t0 + 100 * MS), None);
        // At the rate, one message per token, each followed by a hold.
        budget.charge(&share, t0 + 100 * MS, 0);
        assert_eq!(
            budget.held_until(&share, t0 + 100 * MS),
            Some(t0 + 200 * MS)
        );
        // Idle for the burst's refill time: the whole burst again.
        let later = t0 + 700 * MS;
        for _ in 0..4 {
            budget.charge(&share, later, 0);
        }
        assert_eq!(budget.held_until(&share, later), None);
        budget.charge(&share, later, 0);
        assert!(budget.held_until(&share, later).is_some());
    }

    #[test]
    fn what_was_said_is_repaid_exactly_by_the_holds() {
        // A client that says a message each time it is let go makes exactly the rate, whatever
        // the burst: after the burst, 1,000 messages take 10 s at 100 a second.
        let share = share(Some((100, 20)), None);
        let start = share.epoch;
        let (mut budget, mut now) = (Budget::default(), start);
        for _ in 0..1_019 {
            budget.charge(&share, now, 0);
            if let Some(until) = budget.held_until(&share, now) {
                now = until;
            }
        }
        // The 1,020th message is said exactly 10 s after the first 20.
        assert_eq!(now - start, Duration::from_secs(10));
    }

    #[test]
    fn bytes_are_limited_apart_from_messages_and_the_longer_hold_wins() {
        let share = share(Some((1000, 1000)), Some((1000, 4000)));
        let t0 = share.epoch;
        let mut budget = Budget::default();
        budget.charge(&share, t0, 3000);
        assert_eq!(budget.held_until(&share, t0), None);
        // 2,000 more owe 5,000 bytes against a burst of 4,000: a second's hold, and a byte.
        budget.charge(&share, t0, 2000);
        let byte = Duration::from_millis(1);
        assert_eq!(
            budget.held_until(&share, t0),
            Some(t0 + Duration::from_secs(1) + byte)
        );
        // Messages alone would be free at once: the bytes decide.
        let messages_only = FairShare {
            bytes: None,
            ..share
        };
        assert_eq!(budget.held_until(&messages_only, t0), None);
    }

    #[test]
    fn a_message_larger_than_the_burst_passes_and_leaves_debt() {
        let share = share(None, Some((100, 10)));
        let t0 = share.epoch;
        let mut budget = Budget::default();
        budget.charge(&share, t0, 50);
        // 500 ms of refill owed, 100 ms of it within the burst, less one byte's 10 ms.
        assert_eq!(budget.held_until(&share, t0), Some(t0 + 410 * MS));
        // Absurd sizes hold a day at most, and do not overflow.
        let tiny = self::share(None, Some((1, 1)));
        let mut huge = Budget::default();
        huge.charge(&tiny, tiny.epoch, u64::MAX);
        huge.charge(&tiny, tiny.epoch, u64::MAX);
        let until = huge.held_until(&tiny, tiny.epoch);
        assert!(until.is_some_and(|at| at <= tiny.epoch + MAX_DEBT));
    }

    #[test]
    fn an_earlier_now_is_safe_and_finds_no_extra_credit() {
        let share = share(Some((10, 2)), None);
        let t0 = share.epoch + Duration::from_secs(10);
        let mut budget = Budget::default();
        budget.charge(&share, t0, 0);
        budget.charge(&share, t0, 0);
        let earlier = t0 - Duration::from_secs(5);
        // Seen from 5 s before, the bucket owes 5.2 s: held, no panic, no refill.
        assert_eq!(budget.held_until(&share, earlier), Some(t0 + 100 * MS));
        budget.charge(&share, earlier, 0);
        assert_eq!(budget.held_until(&share, t0), Some(t0 + 200 * MS));
        // An instant before the epoch counts as the epoch.
        let mut early = Budget::default();
        early.charge(&share, share.epoch - Duration::from_secs(1), 0);
        assert_eq!(early.held_until(&share, share.epoch), None);
    }

    #[test]
    fn off_never_holds_and_zero_rates_are_refused() {
        let off = FairShare::off();
        assert!(off.is_off());
        let mut budget = Budget::default();
        for _ in 0..10_000 {
            budget.charge(&off, off.epoch, u64::MAX);
        }
        assert_eq!(budget, Budget::default());
        assert_eq!(budget.held_until(&off, off.epoch), None);
        assert!(!FairShare::default().is_off());
        assert_eq!(Rate::new(0, 10), None);
        assert_eq!(Rate::new(10, 0), None);
        assert_eq!(Rate::DEFAULT_BYTES.burst(), 1 << 20);
    }

    #[test]
    fn a_budget_is_sixteen_bytes() {
        // Every connection carries one: the memory per idle connection is watched.
        assert_eq!(std::mem::size_of::<Budget>(), 16);
    }
}
