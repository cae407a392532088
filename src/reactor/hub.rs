//! What every client's events act on, and the one place where they do.
//!
//! A connection reports [`Event`]s (it joined, said something, asked for the metrics page,
//! ended, left); [`Hub::on_event`] turns each into what it means for the room, Redis, the metrics
//! and the log. It is a struct of its own so that it can be borrowed beside the slab of clients:
//! a client's connection hands its events here while the loop holds the client.

use log::{debug, trace};

use crate::backplane::Backplane;
use crate::connection::Event;
use crate::metrics::Metrics;
use crate::presence::{Presence, Publish};
use crate::proxy::Peer;

/// Which client an event is about: for presence (key and id) and for the log (peer).
#[derive(Debug, Clone, Copy)]
pub(super) struct Who {
    pub key: usize,
    pub id: u64,
    pub peer: Peer,
}

/// The room, the way out to other processes, and the counters.
pub(super) struct Hub {
    pub presence: Presence,
    /// With `--redis`: the links that make this process's room part of a larger one.
    pub backplane: Option<Backplane>,
    pub metrics: Metrics,
    /// Clients that asked for `/metrics`: the loop queues the page for them before it writes.
    pub metrics_requests: Vec<usize>,
    /// `X-Forwarded-For` chains of clients behind a trusted proxy, for the loop to apply.
    pub forwarded: Vec<(usize, Box<str>)>,
}

impl Hub {
    /// `max_message_size` is `--max-message-size` (version 2 tells it to each newcomer).
    pub fn new(backplane: Option<Backplane>, max_message_size: usize) -> Hub {
        let node = backplane.as_ref().map_or("", |b| b.node()).to_string();
        Hub {
            presence: Presence::new(node, max_message_size),
            backplane,
            metrics: Metrics::default(),
            metrics_requests: Vec::new(),
            forwarded: Vec::new(),
        }
    }

    /// Shutdown: everyone here leaves at once (see [`Presence::leave_all`]).
    pub fn leave_all(&mut self) {
        self.presence.leave_all(redis(&mut self.backplane));
    }

    /// `--redis` is set but the links are down (`/healthz` says "degraded").
    pub fn degraded(&self) -> bool {
        self.backplane.as_ref().is_some_and(|b| !b.is_up())
    }

    /// A key the room names but no client has: it cannot happen (a client leaves the room
    /// before it is closed), and if it did, the key leaves like any other.
    pub fn forget(&mut self, key: usize) {
        debug_assert!(
            !self.presence.is_member(key),
            "a member {key} without a client"
        );
        self.presence.leave(key, redis(&mut self.backplane));
    }

    /// Acts on one event of one client.
    pub fn on_event(&mut self, who: Who, event: Event) {
        let redis = redis(&mut self.backplane);
        match event {
            Event::Joined(version) => self.presence.join((who.key, who.id), version, redis),
            Event::Said(text) => {
                self.metrics.messages_received += 1;
                self.presence.said((who.key, who.id), text, redis);
            }
            Event::Echoed => self.metrics.messages_received += 1,
            Event::MetricsRequested => self.metrics_requests.push(who.key),
            Event::Forwarded(chain) => self.forwarded.push((who.key, chain.into())),
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
                self.presence.leave(who.key, redis);
            }
        }
    }
}

/// The backplane, while it can carry events to every process: the one test of "through Redis,
/// or here only" for everything the clients do.
fn redis(backplane: &mut Option<Backplane>) -> Option<&mut dyn Publish> {
    match backplane {
        Some(backplane) if backplane.is_up() => Some(backplane),
        _ => None,
    }
}
