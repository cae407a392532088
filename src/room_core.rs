//! The chat room without I/O: what the event loop feeds a client's events into, and what it
//! asks, at its flush point, to hand the turn's batch to every member. No socket and no poll;
//! the loop passes `now` (the clock is read once more at the end of a fan-out, for the notice
//! window). `tests/it/presence_properties.rs` drives this very code with random schedules, the way
//! quinn-proto or smoltcp keep a protocol apart from I/O.
//!
//! It holds the room ([`Presence`]: members, their notices and the turn's batch), the way to
//! other processes (a [`Relay`], the Redis backplane in the server), the metrics it counts, and
//! [`Pacing`] (when the batch goes out). Two entry points:
//!
//! - [`RoomCore::on_event`]: one event of one client (it joined, said something, ended, left),
//!   which goes through Redis while the backplane is up, or stays here otherwise;
//! - [`RoomCore::fan_out`]: at the flush point, hands the batch to every member through the
//!   loop's `deliver` and lists the members that could not take it. The loop ends those; their
//!   leave notices come back here as events, into the next batch, and the loop's flush point
//!   calls `fan_out` again until nothing is due.

use std::time::Instant;

use log::{debug, trace};

use crate::backplane::Backplane;
use crate::connection::{Ending, Event};
use crate::metrics::Metrics;
use crate::pacing::Pacing;
use crate::presence::{Landing, Presence, Publish};
use crate::proxy::Peer;
use crate::room::Batch;

/// Which client an event is about: for presence (key and id) and for the log (peer).
#[derive(Debug, Clone, Copy)]
pub struct Who {
    /// Its slab key in the loop (reused once it is gone).
    pub key: usize,
    /// Never reused: tells this client from an earlier one with the same key.
    pub id: u64,
    pub peer: Peer,
}

/// The way to the other processes of a room that spans several: publishes while it is up.
pub trait Relay: Publish {
    /// It can carry events to every process now (`/healthz` says "degraded" when it cannot).
    fn is_up(&self) -> bool;
    /// This process's name among the others (its part of every member id it publishes).
    fn node(&self) -> &str;
}

impl Relay for Backplane {
    fn is_up(&self) -> bool {
        Backplane::is_up(self)
    }

    fn node(&self) -> &str {
        Backplane::node(self)
    }
}

/// The room, the way out to other processes, the counters, and when the batch goes out.
pub struct RoomCore<R: Relay = Backplane> {
    presence: Presence,
    pacing: Pacing,
    /// With `--redis`: what makes this process's room part of a larger one.
    relay: Option<R>,
    pub metrics: Metrics,
}

impl<R: Relay> RoomCore<R> {
    /// `max_message_size` is `--max-message-size` (version 2 tells it to each newcomer).
    pub fn new(relay: Option<R>, max_message_size: usize, now: Instant) -> RoomCore<R> {
        let node = relay.as_ref().map_or("", |r| r.node()).to_string();
        RoomCore {
            presence: Presence::new(node, max_message_size),
            pacing: Pacing::new(now),
            relay,
            metrics: Metrics::default(),
        }
    }

    /// Acts on one event of one client: for the room, the relay, the metrics and the log.
    pub fn on_event(&mut self, who: Who, event: Event) {
        let publish = publish_if_up(&mut self.relay);
        match event {
            Event::Joined(version) => self.presence.join((who.key, who.id), version, publish),
            Event::Said(text) => {
                self.metrics.messages_received += 1;
                self.presence.said((who.key, who.id), text, publish);
            }
            Event::Echoed => self.metrics.messages_received += 1,
            Event::Throttled(held) => {
                self.metrics.throttled(held);
                // Trace, not debug: a flooder held to its rate is held once per message.
                trace!(token = who.key, peer:% = who.peer; "throttled for {held:?}");
            }
            Event::Ended(ending) => {
                self.metrics.ended(ending);
                debug!(token = who.key, peer:% = who.peer; "ending: {ending:?}");
            }
            Event::Left => {
                self.presence.leave(who.key, publish);
            }
        }
    }

    /// The flush point's call: when [`Pacing`] says the batch is due, hands it to every member
    /// through `deliver` (one call per member, with the member's part of the batch; `Err` says
    /// why it could not take it). Those that could not are pushed on `refused`, still members:
    /// the caller ends them, and their `Left` events bring their leave notices. Returns whether
    /// a batch went out.
    pub fn fan_out(
        &mut self,
        now: Instant,
        refused: &mut Vec<(usize, Ending)>,
        mut deliver: impl FnMut(usize, &[u8]) -> Result<(), Ending>,
    ) -> bool {
        if !self.is_due(now) {
            return false;
        }
        self.metrics.frames_delivered +=
            self.presence
                .hand_out_batch(|key, frames| match deliver(key, frames) {
                    Ok(()) => true,
                    Err(ending) => {
                        refused.push((key, ending));
                        false
                    }
                });
        // The window runs from the end of this fan-out, not from the turn's start: in a large
        // room the fan-out itself can outlast the window, which would then never gather.
        self.pacing.fanned_out(Instant::now());
        true
    }

    /// The batch should go out now (see `pacing.rs`).
    pub fn is_due(&self, now: Instant) -> bool {
        self.pacing
            .due(self.presence.batch(), self.presence.members(), now)
    }

    /// The batch must go out before producers add to it (see `pacing.rs`).
    pub fn must_flush(&self, now: Instant) -> bool {
        self.pacing
            .must_flush(self.presence.batch(), self.presence.members(), now)
    }

    /// When a waiting batch falls due (a deadline for the poll timeout).
    pub fn due_at(&self) -> Option<Instant> {
        self.pacing.due_at(self.presence.batch())
    }

    /// This turn's frames for the room, not yet fanned out.
    pub fn batch(&self) -> &Batch {
        self.presence.batch()
    }

    /// Members of the room here.
    pub fn members(&self) -> usize {
        self.presence.members()
    }

    /// Puts one event the relay handed back into the batch (see [`Presence::land`]).
    pub fn land(&mut self, landing: Landing) {
        self.presence.land(landing);
    }

    /// Shutdown: everyone here leaves at once (see [`Presence::leave_all`]).
    pub fn leave_all(&mut self) {
        self.presence.leave_all(publish_if_up(&mut self.relay));
    }

    /// A key the room names but no client has: it cannot happen (a client leaves the room
    /// before it is closed), and if it did, the key leaves like any other.
    pub fn forget(&mut self, key: usize) {
        debug_assert!(
            !self.presence.is_member(key),
            "a member {key} without a client"
        );
        self.presence.leave(key, publish_if_up(&mut self.relay));
    }

    /// `--redis` is set but the relay is down (`/healthz` says "degraded").
    pub fn degraded(&self) -> bool {
        self.relay.as_ref().is_some_and(|r| !r.is_up())
    }

    pub fn relay(&self) -> Option<&R> {
        self.relay.as_ref()
    }

    /// Lends the relay out with a way to land what it hands back in the room (both borrowed at
    /// once); `None` without a relay.
    pub fn with_relay<T>(
        &mut self,
        act: impl FnOnce(&mut R, &mut dyn FnMut(Landing)) -> T,
    ) -> Option<T> {
        let relay = self.relay.as_mut()?;
        let presence = &mut self.presence;
        let done = act(relay, &mut |landing| presence.land(landing));
        // Before any client's next event: a process that came back re-announces its members
        // first (see `presence.rs`).
        if self.presence.rejoin_due() && relay.is_up() {
            self.presence.reannounce(relay);
        }
        Some(done)
    }

    /// Processes judged gone (for `/metrics`).
    pub fn processes_gone(&self) -> u64 {
        self.presence.processes_gone
    }

    /// Per process, its members shown here (for `/metrics`).
    pub fn shown_per_node(&self) -> impl Iterator<Item = (&str, usize)> {
        self.presence.shown_per_node()
    }
}

/// The relay, while it can carry events to every process: the one test of "through Redis, or
/// here only" for everything the clients do.
fn publish_if_up<R: Relay>(relay: &mut Option<R>) -> Option<&mut dyn Publish> {
    match relay {
        Some(relay) if relay.is_up() => Some(relay),
        _ => None,
    }
}
