//! The backplane's state as one enum, and the rules of outages: when to try again, when a
//! failure is a new outage (worth a warning) or the same one still going on (retried quietly),
//! when an attempt has taken too long, and when a Redis that still holds its connections open
//! has stopped answering ([`Liveness`]). Pure: the clock is a parameter, nothing is logged.

use std::time::{Duration, Instant};

/// A connection attempt that has not brought both links up by then has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause after a failure; it doubles with every failed attempt, up to the cap.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Links that stayed up this long had recovered: the next failure is a new outage (warned
/// about, retried from the first backoff). Links that keep failing sooner are one outage.
pub const STABLE: Duration = Duration::from_secs(10);

/// Where the backplane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet.
    Idle,
    /// Links closed; the next attempt is due at `retry_at`.
    Down { retry_at: Instant },
    /// Links opening; the attempt has failed if they are not both ready by `deadline`.
    Connecting { deadline: Instant },
    /// Both links ready since `since`: events go through Redis.
    Up { since: Instant },
}

/// What a deadline asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Retry,
    GiveUp,
}

/// What coming up means for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Up for the first time (or after a long stable period): nothing was reported down.
    First,
    /// Back after an outage that was reported: say so, once.
    Back,
    /// Up again within the same outage (links flapping): already said.
    Again,
}

/// How a failure should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The links had been up (an outage to count).
    pub was_up: bool,
    /// The first failure of this outage: warn. Later ones are the same outage: debug.
    pub new_outage: bool,
    /// How long until the next attempt.
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Outages {
    phase: Phase,
    backoff: Duration,
    /// The current outage has been reported (once per outage, not once per attempt).
    reported: bool,
    /// Its end has been reported too (once per outage, however often the links flap).
    back_reported: bool,
}

impl Default for Outages {
    fn default() -> Self {
        Outages {
            phase: Phase::Idle,
            backoff: FIRST_BACKOFF,
            reported: false,
            back_reported: false,
        }
    }
}

impl Outages {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up { .. })
    }

    /// The next moment [`Outages::due`] has something to say.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Down { retry_at } => Some(retry_at),
            Phase::Connecting { deadline } => Some(deadline),
            Phase::Idle | Phase::Up { .. } => None,
        }
    }

    pub fn due(&self, now: Instant) -> Option<Due> {
        match self.phase {
            Phase::Down { retry_at } if retry_at <= now => Some(Due::Retry),
            Phase::Connecting { deadline } if deadline <= now => Some(Due::GiveUp),
            _ => None,
        }
    }

    /// An attempt starts.
    pub fn connecting(&mut self, now: Instant) {
        self.phase = Phase::Connecting {
            deadline: now + CONNECT_TIMEOUT,
        };
    }

    /// Both links are ready: the first time, back after a reported outage, or again.
    pub fn up(&mut self, now: Instant) -> Recovery {
        self.phase = Phase::Up { since: now };
        match (self.reported, self.back_reported) {
            (false, _) => Recovery::First,
            (true, false) => {
                self.back_reported = true;
                Recovery::Back
            }
            (true, true) => Recovery::Again,
        }
    }

    /// The links failed (or could not be opened): schedule the next attempt.
    pub fn down(&mut self, now: Instant) -> Failure {
        let was_up = self.is_up();
        if let Phase::Up { since } = self.phase {
            if now >= since + STABLE {
                // It had recovered for good: this is a new outage.
                self.backoff = FIRST_BACKOFF;
                self.reported = false;
            }
        }
        let failure = Failure {
            was_up,
            new_outage: !self.reported,
            retry_in: self.backoff,
        };
        if failure.new_outage {
            self.back_reported = false;
        }
        self.reported = true;
        self.phase = Phase::Down {
            retry_at: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        failure
    }
}

/// Is Redis still answering? TCP keepalive cannot tell: a paused or wedged Redis keeps its
/// connections open. So each of our envelopes must come back from the subscription within
/// `timeout`, and a subscription that has been quiet for half of it is sent a PING, whose answer
/// must come back within `timeout` too.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    timeout: Duration,
    /// When the subscription last said anything.
    last_heard: Instant,
    /// A PING waiting for its answer, since then.
    ping_sent: Option<Instant>,
}

impl Liveness {
    pub fn new(timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            timeout,
            last_heard: now,
            ping_sent: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The links came up: start afresh.
    pub fn reset(&mut self, now: Instant) {
        *self = Liveness::new(self.timeout, now);
    }

    /// The subscription said something (a message, a confirmation, or `pong`: any answer means
    /// Redis is alive, so the PING, if any, is answered too: replies come in order).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
    }

    /// Whether to send a PING now.
    pub fn should_ping(&self, now: Instant) -> bool {
        self.ping_sent.is_none() && now >= self.last_heard + self.timeout / 2
    }

    /// A PING is waiting for its answer.
    pub fn awaiting_pong(&self) -> bool {
        self.ping_sent.is_some()
    }

    pub fn pinged(&mut self, now: Instant) {
        self.ping_sent = Some(now);
    }

    /// What is overdue at `now`, given when our oldest envelope still in flight was published.
    pub fn overdue(&self, now: Instant, oldest_pending: Option<Instant>) -> Option<&'static str> {
        if oldest_pending.is_some_and(|at| now >= at + self.timeout) {
            Some("an envelope of ours did not come back")
        } else if self.ping_sent.is_some_and(|at| now >= at + self.timeout) {
            Some("PING was not answered")
        } else {
            None
        }
    }

    /// The next moment something may be due: a PING to send, or an answer overdue.
    pub fn next_deadline(&self, oldest_pending: Option<Instant>) -> Instant {
        let ping = match self.ping_sent {
            Some(at) => at + self.timeout,
            None => self.last_heard + self.timeout / 2,
        };
        oldest_pending.map_or(ping, |at| ping.min(at + self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_up_to_the_cap_and_warn_once() {
        let (mut o, now) = (Outages::default(), Instant::now());
        let mut waits = Vec::new();
        for i in 0..8 {
            o.connecting(now);
            let failure = o.down(now);
            assert_eq!(failure.new_outage, i == 0);
            assert!(!failure.was_up);
            waits.push(failure.retry_in.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(o.next_deadline(), Some(now + MAX_BACKOFF));
    }

    #[test]
    fn a_brief_recovery_is_the_same_outage_a_stable_one_is_not() {
        let (mut o, t0) = (Outages::default(), Instant::now());
        o.down(t0);
        o.down(t0);
        assert_eq!(o.up(t0), Recovery::Back, "back after a reported outage");
        let brief = o.down(t0 + STABLE / 2);
        assert!(brief.was_up && !brief.new_outage);
        assert_eq!(brief.retry_in, FIRST_BACKOFF * 4, "the backoff goes on");
        assert_eq!(
            o.up(t0 + STABLE / 2),
            Recovery::Again,
            "flapping: said once"
        );
        let later = o.down(t0 + STABLE * 3);
        assert!(later.was_up && later.new_outage);
        assert_eq!(later.retry_in, FIRST_BACKOFF);
    }

    #[test]
    fn deadlines_ask_to_retry_when_down_and_to_give_up_when_connecting_too_long() {
        let (mut o, t0) = (Outages::default(), Instant::now());
        assert_eq!(o.due(t0), None);
        o.down(t0);
        assert_eq!(o.due(t0), None);
        assert_eq!(o.due(t0 + FIRST_BACKOFF), Some(Due::Retry));
        o.connecting(t0 + FIRST_BACKOFF);
        assert_eq!(
            o.due(t0 + FIRST_BACKOFF + CONNECT_TIMEOUT),
            Some(Due::GiveUp)
        );
        o.up(t0 + FIRST_BACKOFF + CONNECT_TIMEOUT);
        assert!(o.is_up());
        assert_eq!(o.next_deadline(), None);
    }

    #[test]
    fn an_envelope_overdue_or_an_unanswered_ping_is_an_outage() {
        let (t0, timeout) = (Instant::now(), Duration::from_secs(2));
        let mut live = Liveness::new(timeout, t0);
        assert_eq!(live.overdue(t0 + timeout, None), None, "nothing in flight");
        assert_eq!(live.overdue(t0 + timeout / 2, Some(t0)), None);
        assert!(live.overdue(t0 + timeout, Some(t0)).is_some());
        assert_eq!(
            live.next_deadline(Some(t0)),
            t0 + timeout / 2,
            "the probe comes first"
        );
        assert!(!live.should_ping(t0 + timeout / 4));
        assert!(live.should_ping(t0 + timeout / 2));
        live.pinged(t0 + timeout / 2);
        assert!(!live.should_ping(t0 + timeout), "one PING at a time");
        assert_eq!(live.next_deadline(None), t0 + timeout / 2 + timeout);
        assert!(live.overdue(t0 + timeout / 2 + timeout, None).is_some());
        live.heard(t0 + timeout);
        assert_eq!(live.overdue(t0 + timeout * 2, None), None, "answered");
        assert_eq!(live.next_deadline(None), t0 + timeout + timeout / 2);
    }
}
