//! A client's fair share of the room: how many messages, and how many bytes, it may make the room
//! carry per second, each with a burst. Plain arithmetic over `Instant`s, no I/O: the connection
//! asks [`Budget::take`] before a message goes to the room, and on a refusal learns how long until
//! it would pass (to hold the client's reads back that long, or to close it: the caller decides).
//!
//! Each limit is a token bucket kept in its "virtual scheduling" form (GCRA): one instant, the
//! time at which the bucket would be full again. Taking `n` tokens pushes it `n / rate` later; a
//! take passes while that stays within `burst / rate` of now. So a budget is two instants and
//! four numbers, O(1) per take, no allocation, no timer; and an idle client costs nothing.

use std::time::{Duration, Instant};

/// The most one take can push a bucket into the future: a take of absurd size (a rate of 1 and
/// `u64::MAX` tokens) waits a day, rather than overflowing `Instant`.
const MAX_DEBT: Duration = Duration::from_secs(24 * 60 * 60);

/// A sustained rate with a burst, both in tokens (messages, or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    per_second: u64,
    burst: u64,
}

impl Rate {
    /// Suggested defaults, far above any person typing (a paste of a page is one message):
    /// 20 messages a second, 100 at once.
    pub const DEFAULT_MESSAGES: Rate = Rate {
        per_second: 20,
        burst: 100,
    };
    /// 256 KiB a second, 1 MiB at once (16 of the largest default messages).
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

    /// How long `tokens` take to refill, rounded up, at most [`MAX_DEBT`].
    fn refill_time(&self, tokens: u64) -> Duration {
        let nanos = (u128::from(tokens) * 1_000_000_000).div_ceil(u128::from(self.per_second));
        u64::try_from(nanos)
            .map_or(MAX_DEBT, Duration::from_nanos)
            .min(MAX_DEBT)
    }
}

/// Refused: the take would pass this long after the `now` it was asked at (and not before,
/// unless the client's other takes change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub Duration);

impl Wait {
    pub fn until(&self, now: Instant) -> Instant {
        now.checked_add(self.0).unwrap_or(now + MAX_DEBT)
    }
}

/// One limit: a rate and when its bucket would be full again (`None`: full now).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: Rate,
    full_at: Option<Instant>,
}

impl Bucket {
    /// Where `full_at` would move if `tokens` were taken at `now`, or the wait if refused.
    ///
    /// A take of more than the burst passes when the bucket is full (and leaves it in debt),
    /// so no message is refused forever. A `now` earlier than a previous one (a caller's
    /// cached clock) only finds less credit: durations saturate at zero.
    fn judge(&self, now: Instant, tokens: u64) -> Result<Instant, Wait> {
        let from = self.full_at.map_or(now, |at| at.max(now));
        let owed = from.saturating_duration_since(now);
        let cost = self.rate.refill_time(tokens);
        let tolerance = self.rate.refill_time(self.rate.burst);
        if owed.is_zero() || owed + cost <= tolerance {
            return Ok(from.checked_add(cost).unwrap_or(from + MAX_DEBT));
        }
        Err(Wait(owed.saturating_sub(tolerance.saturating_sub(cost))))
    }
}

/// One client's budget: messages and bytes, each limited or not.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Budget {
    /// `None` for a limit turns it off; both `None` is [`Budget::OFF`].
    pub fn new(messages: Option<Rate>, bytes: Option<Rate>) -> Budget {
        let bucket = |rate| Bucket {
            rate,
            full_at: None,
        };
        Budget {
            messages: messages.map(bucket),
            bytes: bytes.map(bucket),
        }
    }

    /// No limit at all (for load tests): every take passes.
    pub const OFF: Budget = Budget {
        messages: None,
        bytes: None,
    };

    pub fn is_off(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    /// One message of `bytes` bytes at `now`: taken from both limits, or from neither, with the
    /// longer of the waits.
    pub fn take(&mut self, now: Instant, bytes: u64) -> Result<(), Wait> {
        let messages = self.messages.map(|b| b.judge(now, 1)).transpose();
        let volume = self.bytes.map(|b| b.judge(now, bytes)).transpose();
        match (messages, volume) {
            (Ok(messages), Ok(volume)) => {
                if let (Some(bucket), Some(at)) = (self.messages.as_mut(), messages) {
                    bucket.full_at = Some(at);
                }
                if let (Some(bucket), Some(at)) = (self.bytes.as_mut(), volume) {
                    bucket.full_at = Some(at);
                }
                Ok(())
            }
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), _) | (_, Err(wait)) => Err(wait),
        }
    }
}

impl PartialOrd for Wait {
    fn partial_cmp(&self, other: &Wait) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wait {
    fn cmp(&self, other: &Wait) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rate(per_second: u64, burst: u64) -> Option<Rate> {
        Rate::new(per_second, burst)
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut budget = Budget::new(rate(10, 5), None);
        for _ in 0..5 {
            assert_eq!(budget.take(t0, 0), Ok(()));
        }
        // The sixth must wait for one token: 100 ms at 10 a second.
        assert_eq!(budget.take(t0, 0), Err(Wait(100 * MS)));
        assert_eq!(budget.take(t0 + 99 * MS, 0), Err(Wait(MS)));
        assert_eq!(budget.take(t0 + 100 * MS, 0), Ok(()));
        assert!(budget.take(t0 + 100 * MS, 0).is_err());
        // Idle for the burst's refill time: the whole burst again.
        let later = t0 + 600 * MS;
        for _ in 0..5 {
            assert_eq!(budget.take(later, 0), Ok(()));
        }
        assert!(budget.take(later, 0).is_err());
    }

    #[test]
    fn bytes_are_limited_apart_from_messages_and_a_refusal_takes_nothing() {
        let t0 = Instant::now();
        let mut budget = Budget::new(rate(1000, 1000), rate(1000, 4000));
        assert_eq!(budget.take(t0, 3000), Ok(()));
        // 2000 more would owe 5000 bytes against a burst of 4000: a second's wait.
        assert_eq!(budget.take(t0, 2000), Err(Wait(Duration::from_secs(1))));
        assert_eq!(
            budget.take(t0, 1000),
            Ok(()),
            "the refusal took no message token"
        );
        assert_eq!(budget.take(t0 + Duration::from_secs(1), 1000), Ok(()));
    }

    #[test]
    fn the_longer_wait_wins() {
        let t0 = Instant::now();
        let mut budget = Budget::new(rate(1, 1), rate(10, 10));
        assert_eq!(budget.take(t0, 10), Ok(()));
        assert_eq!(budget.take(t0, 10), Err(Wait(Duration::from_secs(1))));
    }

    #[test]
    fn a_take_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut budget = Budget::new(None, rate(100, 10));
        assert_eq!(budget.take(t0, 50), Ok(()));
        // 500 ms of debt: the next take of 1 waits until within the burst again.
        assert_eq!(budget.take(t0, 1), Err(Wait(410 * MS)));
        assert_eq!(budget.take(t0 + 410 * MS, 1), Ok(()));
        // Absurd sizes wait at most a day, and do not overflow.
        let mut huge = Budget::new(None, rate(1, 1));
        assert_eq!(huge.take(t0, u64::MAX), Ok(()));
        assert_eq!(huge.take(t0, u64::MAX), Err(Wait(MAX_DEBT)));
        assert!(Wait(Duration::MAX).until(t0) >= t0);
    }

    #[test]
    fn an_earlier_now_is_safe_and_finds_no_extra_credit() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut budget = Budget::new(rate(10, 2), None);
        assert_eq!(budget.take(t0, 0), Ok(()));
        assert_eq!(budget.take(t0, 0), Ok(()));
        let earlier = t0 - Duration::from_secs(5);
        // Seen from 5 s before, the bucket owes 5.2 s: refused, no panic, no refill.
        assert_eq!(budget.take(earlier, 0), Err(Wait(5100 * MS)));
        assert!(budget.take(t0, 0).is_err());
        assert_eq!(budget.take(t0 + 100 * MS, 0), Ok(()));
    }

    #[test]
    fn off_passes_everything_and_zero_rates_are_refused() {
        let t0 = Instant::now();
        let mut budget = Budget::OFF;
        assert!(budget.is_off());
        for _ in 0..10_000 {
            assert_eq!(budget.take(t0, u64::MAX), Ok(()));
        }
        assert!(!Budget::new(Some(Rate::DEFAULT_MESSAGES), None).is_off());
        assert_eq!(Rate::new(0, 10), None);
        assert_eq!(Rate::new(10, 0), None);
        assert_eq!(Rate::DEFAULT_BYTES.burst(), 1 << 20);
    }
}
