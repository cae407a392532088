//! When the room's batch goes out: the two policies that decide it, as pure functions of the
//! batch, the room's size and the clock.
//!
//! - **Chat never waits.** A batch with a chat message in it goes out at the end of the turn.
//! - **Notices may gather.** In a room of [`NOTICE_BATCHING_FROM`] or more, a batch of join and
//!   leave notices alone waits until [`NOTICE_WINDOW`] after the previous fan-out ended: joins and
//!   leaves come in floods (a load test connecting thousands, a frontend restarting), and each
//!   fan-out costs one `send` per member, so each member gets a flood in a few large writes
//!   instead of thousands of small ones.
//! - **A full batch goes before more is read.** A client that keeps up is written straight from
//!   the batch, but one whose socket is full gets a copy; once a due batch times the members
//!   passes [`MAX_UNFLUSHED`] bytes, producers (client reads, the Redis subscription, timers) stop
//!   for this turn, and the turn's flush point sends it. Notices inside their window are left to
//!   gather: gathering them is the window's whole point (a join flood into a room of 10,000 would
//!   otherwise go out every 40 notices), and they are copied only for members whose sockets are
//!   full, each bounded by `--max-outbound`.

use std::time::{Duration, Instant};

use crate::room::Batch;

/// See the module's doc: notices alone wait this long after the previous fan-out...
pub const NOTICE_WINDOW: Duration = Duration::from_millis(100);
/// ...in rooms of at least this many members (in smaller ones a fan-out is cheap).
pub const NOTICE_BATCHING_FROM: usize = 1000;
/// The batch times the members, in bytes, past which the batch must go out before more is read.
pub const MAX_UNFLUSHED: usize = 16 << 20;

/// Remembers the last fan-out, for the notice window.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    last_fan_out: Instant,
}

impl Pacing {
    pub fn new(now: Instant) -> Pacing {
        Pacing { last_fan_out: now }
    }

    /// Whether the batch should go out now.
    pub fn due(&self, batch: &Batch, members: usize, now: Instant) -> bool {
        if batch.is_empty() {
            return false;
        }
        let notices_wait = batch.only_notices()
            && members >= NOTICE_BATCHING_FROM
            && now < self.last_fan_out + NOTICE_WINDOW;
        !notices_wait
    }

    /// Whether producers must stop adding to the batch until the flush point has sent it.
    pub fn must_flush(&self, batch: &Batch, members: usize, now: Instant) -> bool {
        self.due(batch, members, now) && is_full(batch, members)
    }

    /// When a waiting batch falls due (a deadline for the poll timeout).
    pub fn due_at(&self, batch: &Batch) -> Option<Instant> {
        (!batch.is_empty()).then_some(self.last_fan_out + NOTICE_WINDOW)
    }

    /// Records that a fan-out ended at `now` (the window runs from its end).
    pub fn fanned_out(&mut self, now: Instant) {
        self.last_fan_out = now;
    }
}

/// Whether the batch is too large to let producers add to it before it goes out.
pub fn is_full(batch: &Batch, members: usize) -> bool {
    batch.len().saturating_mul(members) > MAX_UNFLUSHED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MemberId;

    fn batch(notices: usize, chat: bool) -> Batch {
        let mut b = Batch::default();
        for _ in 0..notices {
            b.joined(MemberId::default(), 1);
        }
        if chat {
            b.said(MemberId::default(), "hi");
        }
        b
    }

    #[test]
    fn an_empty_batch_is_never_due() {
        let now = Instant::now();
        assert!(!Pacing::new(now).due(&Batch::default(), 5, now));
        assert_eq!(Pacing::new(now).due_at(&Batch::default()), None);
    }

    #[test]
    fn chat_never_waits_in_any_room() {
        let now = Instant::now();
        let pacing = Pacing::new(now);
        for members in [1, 999, 1000, 50_000] {
            assert!(pacing.due(&batch(3, true), members, now), "{members}");
        }
    }

    #[test]
    fn notices_wait_for_the_window_in_a_room_of_a_thousand_only() {
        let start = Instant::now();
        let mut pacing = Pacing::new(start);
        let notices = batch(2, false);
        assert!(pacing.due(&notices, 999, start));
        assert!(!pacing.due(&notices, 1000, start));
        assert!(!pacing.due(&notices, 1000, start + NOTICE_WINDOW / 2));
        assert!(pacing.due(&notices, 1000, start + NOTICE_WINDOW));
        assert_eq!(pacing.due_at(&notices), Some(start + NOTICE_WINDOW));
        pacing.fanned_out(start + NOTICE_WINDOW);
        assert!(!pacing.due(&notices, 1000, start + NOTICE_WINDOW));
    }

    #[test]
    fn a_full_due_batch_stops_the_producers_but_notices_may_still_gather() {
        let now = Instant::now();
        let pacing = Pacing::new(now);
        let notices = batch(100, false); // about 4 KB: full from about 4,000 members
        let members = MAX_UNFLUSHED / notices.len() + 1;
        assert!(is_full(&notices, members));
        assert!(!is_full(&notices, members - 1));
        assert!(
            !pacing.must_flush(&notices, members, now),
            "inside the window"
        );
        assert!(pacing.must_flush(&notices, members, now + NOTICE_WINDOW));
        let chat = batch(100, true);
        let members = MAX_UNFLUSHED / chat.len() + 1;
        assert!(pacing.must_flush(&chat, members, now));
        assert!(!pacing.must_flush(&chat, members - 1, now));
    }
}
