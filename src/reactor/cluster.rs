//! The backplane's sockets in this loop (`--redis`: two Redis links, and a UDP socket while
//! Redis's name is being resolved): their readiness events, reading
//! the subscription a chunk at a time, and writing what was published. What the subscription
//! hands back lands in the room through [`crate::room_core::RoomCore::land`].

use std::time::Instant;

use mio::event::Event;
use mio::Registry;

use super::Server;
use crate::backplane::{self, Backplane};
use crate::presence::Landing;

impl Server {
    /// Lends the backplane out with the registry and a way to land its events in the room.
    fn with_backplane(
        &mut self,
        act: impl FnOnce(&mut Backplane, &Registry, &mut dyn FnMut(Landing)),
    ) {
        let registry = self.poll.registry();
        self.room
            .with_relay(|backplane, land| act(backplane, registry, land));
    }

    /// Handles readiness on one of the backplane's Redis links.
    pub(super) fn on_backplane_event(&mut self, event: &Event, now: Instant) {
        let token = event.token();
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable();
        self.with_backplane(|backplane, registry, land| {
            backplane.on_event(token, readable, writable, registry, now, land)
        });
    }

    /// Reads what the subscription brought, a chunk at a time up to the turn's budget; a batch
    /// too full to grow stops the reading, like a client's (the flush point sends it first).
    pub(super) fn read_backplane(&mut self, now: Instant) {
        for _ in 0..backplane::READ_BUDGET / backplane::READ_CHUNK {
            let unread = self.room.relay().is_some_and(Backplane::has_unread);
            if !unread || self.batch_is_full(now) {
                return;
            }
            self.with_backplane(|backplane, registry, land| {
                backplane.read_more(registry, now, land)
            });
        }
    }

    /// Writes this turn's publishes, and reconnects when the time comes.
    pub(super) fn flush_backplane(&mut self, now: Instant) {
        self.with_backplane(|backplane, registry, land| {
            if backplane.next_deadline().is_some_and(|at| at <= now) {
                backplane.on_deadline(registry, now, land);
            }
            backplane.flush(registry, now, land);
        });
    }
}
