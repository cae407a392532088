//! Which other processes are alive: when each was last heard through Redis, and which one has
//! been silent past `--node-timeout`. Pure state, no sockets; the backplane publishes the
//! heartbeats and the verdicts (see `presence.rs` for what a verdict does to the room).
//!
//! Only processes heard at least once are judged (a process knows nobody at start), and one
//! judged is forgotten until it is heard again, so this process declares each silence once.
//! After this process's own link heals, everyone gets a fresh grace period: their silence was
//! ours.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a process says it is alive (more often with a `--node-timeout` under 4 s: see
/// [`Peers::beat_interval`]).
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The other processes heard, and when.
#[derive(Debug)]
pub struct Peers {
    last_heard: HashMap<String, Instant>,
    timeout: Duration,
}

impl Peers {
    /// Processes silent past `timeout` (`--node-timeout`) are judged gone.
    pub fn new(timeout: Duration) -> Peers {
        Peers {
            last_heard: HashMap::new(),
            timeout,
        }
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

    /// When the next silence would be due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.last_heard.values().min().map(|at| *at + self.timeout)
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
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(5)));
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
        p.heard("a", t0);
        p.woke(t0, t0 + Duration::from_secs(1)); // a normal gap
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(2)));
        p.woke(
            t0 + Duration::from_secs(1),
            t0 + Duration::from_millis(2001),
        );
        assert_eq!(p.take_silent(t0 + Duration::from_millis(2001)), None);
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_millis(4001)));
    }

    #[test]
    fn a_heal_gives_everyone_a_fresh_grace_period() {
        let t0 = Instant::now();
        let mut p = Peers::new(Duration::from_secs(5));
        p.heard("a", t0);
        p.grace(t0 + Duration::from_secs(10));
        assert_eq!(p.take_silent(t0 + Duration::from_secs(14)), None);
        p.forget("a");
        assert_eq!(p.next_deadline(), None);
    }
}
