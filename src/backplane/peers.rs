//! Which other processes are alive: when each was last heard through Redis, and which one has
//! been silent past `--node-timeout`. Pure state, no sockets; the backplane publishes the
//! heartbeats and the verdicts (see `presence.rs` for what a verdict does to the room).
//!
//! Only processes heard at least once are judged (a process knows nobody at start), and one
//! judged is forgotten until it is heard again, so this process declares each silence once.
//! After this process's own link heals, everyone gets a fresh grace period: their silence was
//! ours. And silence is measured only up to the last moment this process heard itself through
//! Redis (one of its own envelopes handed back): a subscription that stalls, or that this process
//! is far behind in reading, shows everyone silent, and that silence is ours too. It costs a
//! verdict up to a beat or two (the next own envelope back) after the timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a process says it is alive (more often with a `--node-timeout` under 4 s: see
/// [`Peers::beat_interval`]).
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The other processes heard, and when; when this process next says it is alive.
#[derive(Debug)]
pub struct Peers {
    last_heard: HashMap<String, Instant>,
    timeout: Duration,
    next_beat: Instant,
    /// When the others were last judged (a long gap since: this process was stalled itself).
    last_judged: Instant,
    /// When one of this process's own envelopes last came back through Redis: how far its
    /// view of the others reaches.
    self_heard: Instant,
    /// Verdicts this process published.
    pub verdicts: u64,
}

impl Peers {
    /// Processes silent past `timeout` (`--node-timeout`) are judged gone.
    pub fn new(timeout: Duration) -> Peers {
        let now = Instant::now();
        Peers {
            last_heard: HashMap::new(),
            timeout,
            next_beat: now,
            last_judged: now,
            self_heard: now,
            verdicts: 0,
        }
    }

    /// The links came up at `now`: a beat at once, and a fresh grace period for everyone.
    pub fn up(&mut self, now: Instant) {
        self.grace(now);
        self.next_beat = now;
        self.last_judged = now;
        self.self_heard = now;
    }

    /// One of this process's own envelopes came back through Redis at `now`: everything
    /// published before it has been read.
    pub fn heard_self(&mut self, now: Instant) {
        self.self_heard = self.self_heard.max(now);
    }

    /// Whether this process's beat is due at `now` (then the next one is scheduled).
    pub fn beat_due(&mut self, now: Instant) -> bool {
        if now < self.next_beat {
            return false;
        }
        self.next_beat = now + self.beat_interval();
        true
    }

    /// The processes to declare gone at `now` (none after a stall of this process's own).
    pub fn judge(&mut self, now: Instant) -> Vec<String> {
        self.woke(self.last_judged, now);
        self.last_judged = now;
        let known = now.min(self.self_heard);
        let silent: Vec<String> = std::iter::from_fn(|| self.take_silent(known)).collect();
        self.verdicts += silent.len() as u64;
        silent
    }

    /// How often this process says it is alive: every second, or four times per timeout if that
    /// is shorter, so that a live process is never judged on one late beat.
    pub fn beat_interval(&self) -> Duration {
        BEAT_INTERVAL.min(self.timeout / 4)
    }

    /// The loop last looked at the clock at `last` and now at `now`: a gap of half the timeout
    /// means this process itself was not running (stopped, or starved), and the silence it
    /// would judge is its own. Everyone gets a fresh grace period instead.
    pub fn woke(&mut self, last: Instant, now: Instant) {
        if now.saturating_duration_since(last) > self.timeout / 2 {
            self.grace(now);
        }
    }

    /// An envelope from `node` came through Redis.
    pub fn heard(&mut self, node: &str, now: Instant) {
        match self.last_heard.get_mut(node) {
            Some(at) => *at = now,
            None => {
                self.last_heard.insert(node.to_string(), now);
            }
        }
    }

    /// `node` was judged gone (by anyone): it is not judged again unless heard again.
    pub fn forget(&mut self, node: &str) {
        self.last_heard.remove(node);
    }

    /// A fresh grace period for everyone (this process's link just came back).
    pub fn grace(&mut self, now: Instant) {
        for at in self.last_heard.values_mut() {
            *at = now;
        }
    }

    /// One process silent past the timeout, forgotten as it is returned (the lowest id first,
    /// so that a test can predict it).
    pub fn take_silent(&mut self, now: Instant) -> Option<String> {
        let node = (self.last_heard.iter())
            .filter(|(_, &at)| now.saturating_duration_since(at) >= self.timeout)
            .map(|(node, _)| node)
            .min()?
            .clone();
        self.last_heard.remove(&node);
        Some(node)
    }

    /// When the next beat or the next silence is due. A silence not yet covered by an own
    /// envelope back waits for the next beat (its echo is what can cover it).
    pub fn next_deadline(&self) -> Instant {
        let silence = self.last_heard.values().min().map(|at| *at + self.timeout);
        (silence.filter(|at| *at <= self.self_heard))
            .map_or(self.next_beat, |at| at.min(self.next_beat))
    }

    /// Other processes heard and not judged gone.
    pub fn len(&self) -> usize {
        self.last_heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_heard.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_process_is_judged_once_and_again_only_after_it_is_heard() {
        let t0 = Instant::now();
        let mut p = Peers::new(Duration::from_secs(5));
        p.heard("b", t0);
        p.heard("a", t0 + Duration::from_secs(1));
        p.beat_due(t0 + Duration::from_secs(60)); // the next beat later than any silence here
        assert_eq!(
            p.next_deadline(),
            t0 + Duration::from_secs(61),
            "no echo of ours yet"
        );
        p.heard_self(t0 + Duration::from_secs(5));
        assert_eq!(p.next_deadline(), t0 + Duration::from_secs(5));
        assert_eq!(p.take_silent(t0 + Duration::from_millis(4999)), None);
        assert_eq!(
            p.take_silent(t0 + Duration::from_secs(5)).as_deref(),
            Some("b")
        );
        assert_eq!(p.take_silent(t0 + Duration::from_secs(5)), None);
        assert_eq!(p.len(), 1);
        p.heard("b", t0 + Duration::from_secs(6));
        assert_eq!(
            p.take_silent(t0 + Duration::from_secs(6)).as_deref(),
            Some("a")
        );
        assert_eq!(p.take_silent(t0 + Duration::from_secs(10)), None);
        assert_eq!(
            p.take_silent(t0 + Duration::from_secs(11)).as_deref(),
            Some("b")
        );
        assert!(p.is_empty());
    }

    #[test]
    fn beats_come_four_times_per_timeout_at_least_and_a_stall_of_our_own_is_forgiven() {
        let t0 = Instant::now();
        let mut p = Peers::new(Duration::from_secs(2));
        assert_eq!(p.beat_interval(), Duration::from_millis(500));
        assert_eq!(
            Peers::new(Duration::from_secs(60)).beat_interval(),
            BEAT_INTERVAL
        );
        p.up(t0);
        assert!(p.beat_due(t0));
        assert!(!p.beat_due(t0 + Duration::from_millis(499)));
        assert!(p.beat_due(t0 + Duration::from_millis(500)));
        p.heard("a", t0);
        assert!(p.judge(t0 + Duration::from_secs(1)).is_empty()); // a normal gap
                                                                  // Stopped from 1 s to 3.001 s: a's silence was ours.
        assert!(p.judge(t0 + Duration::from_millis(3001)).is_empty());
        assert!(p.judge(t0 + Duration::from_millis(4001)).is_empty());
        assert!(
            p.judge(t0 + Duration::from_millis(5001)).is_empty(),
            "not heard ourselves"
        );
        p.heard_self(t0 + Duration::from_millis(5001));
        assert_eq!(p.judge(t0 + Duration::from_millis(5001)), ["a"]);
        assert_eq!(p.verdicts, 1);
    }

    #[test]
    fn a_heal_gives_everyone_a_fresh_grace_period() {
        let t0 = Instant::now();
        let mut p = Peers::new(Duration::from_secs(5));
        p.heard("a", t0);
        p.grace(t0 + Duration::from_secs(10));
        assert_eq!(p.take_silent(t0 + Duration::from_secs(14)), None);
        p.forget("a");
        assert!(p.is_empty());
    }
}
