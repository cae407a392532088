//! Client I/O: reading a client's socket into its connection, writing its queued bytes, and
//! keeping the loop's lists (flush, close, timers) in line with what happened to it. Every read
//! and write goes through the client's [`Transport`] (plaintext or TLS).
//!
//! Room bytes reach a socket in two places only: [`Client::take_batch`], called by the turn's
//! flush point ([`Server::before_sleep`]) during the room's fan-out, and [`Server::write`], which
//! the flush point calls for every client with queued bytes and the WRITABLE handler calls when
//! a full socket drains.
//!
//! A client that has spent its budget (`--client-rate`, `--client-bytes-rate`) is not read: its
//! connection says so ([`Connection::is_held`]) and arms the instant it may go on as its
//! deadline; [`Server::settle`] puts it back on the unread list when the hold ends.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use super::Server;
use crate::connection::{Connection, Context, Ending, Phase, Sink};
use crate::http::{self, Response};
use crate::memory::Ledger;
use crate::proxy::Peer;
use crate::room_core::Who;
use crate::timers::Timer;
use crate::transport::{Input, Transport};

/// The answer to a plaintext HTTP request on the TLS port.
const USE_HTTPS: Response = Response {
    status: 400,
    content_type: "text/plain; charset=utf-8",
    extra_header: "",
    body: "this port speaks TLS: use https:// (or wss://)\n",
    part: http::Part::Whole,
};

/// What one client's reads may cost per turn before the others get theirs (fairness), in bytes:
/// under TLS, the ciphertext and a charge per record (`transport::RECORD_COST`), so a client pays
/// for every record it makes us decrypt.
pub(super) const READ_BUDGET: usize = 256 * 1024;

/// What a client's socket is owed (see [`Client::owed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Bytes: queued by the connection, or records held by TLS.
    Bytes,
    /// Nothing but our FIN: all is said and written.
    Fin,
    Nothing,
}

/// A socket and the state machine that speaks over it.
pub(super) struct Client {
    pub socket: TcpStream,
    /// Plaintext, or TLS on a `--tls-cert` listener.
    pub transport: Transport,
    /// Who it is, for the logs: the TCP peer, or the client behind a trusted proxy.
    pub peer: Peer,
    pub conn: Connection,
    /// Distinguishes this client from earlier ones that had the same slab key.
    pub id: u64,
    /// The deadline this client has armed in the timer heap.
    pub timer_at: Option<Instant>,
    /// WRITABLE interest is registered: bytes wait for the socket to take more.
    pub awaiting_writable: bool,
    /// Already in the list of clients to write at the end of this turn.
    pub dirty: bool,
    /// Already in the list of clients to read without an event.
    pub unread: bool,
    /// Our FIN is sent.
    pub half_closed: bool,
    /// Only here to be told 503.
    pub refused: bool,
    /// What is left unsent of one batch that was written straight to this client with nothing
    /// queued ahead of it: a client that keeps up is never dropped for the size of one batch, so
    /// `--max-outbound` bounds only what is queued on top of this (see [`Client::over_limit`]).
    pub batch_tail: usize,
    /// The turn in which [`Client::read_spent`] was counted.
    pub read_turn: u32,
    /// Bytes read from this client in turn `read_turn`, against [`READ_BUDGET`].
    pub read_spent: u32,
    /// What the memory ledger last counted for it (see [`Client::holding`]).
    pub held: usize,
    /// Chosen for eviction and let go of its buffers (see [`keep_within`]); evicted at the
    /// flush point. It takes no batch again, and the ledger counts it as leaving.
    pub evicting: bool,
    /// What it queued since its last write waits for the flush point's write, not yet offered
    /// to its socket: offered before it could cost anyone their place (see [`keep_within`]).
    pub untried: bool,
}

impl Client {
    /// Bytes wait to be written: queued by the connection, or encrypted and held by TLS.
    pub fn has_output(&self) -> bool {
        !self.conn.output().is_empty() || self.transport.holds_output()
    }

    /// What the socket is owed: the one answer WRITABLE interest, the flush list and the FIN
    /// follow. The FIN is owed only once no byte is (under TLS, rustls's records included), so
    /// a finishing client with records a full socket refused waits for WRITABLE, not the list.
    fn owed(&self) -> Owed {
        if self.has_output() {
            Owed::Bytes
        } else if self.conn.should_half_close() && !self.half_closed {
            Owed::Fin
        } else {
            Owed::Nothing
        }
    }

    /// Writes what the connection queued, through the transport, until all is written or the
    /// socket is full; returns the bytes the socket took. The connection decides what cannot
    /// be said (an answer before a TLS handshake completed); the transport adds its goodbye
    /// (TLS's close_notify, before our FIN) once the connection has said all.
    fn flush(&mut self) -> io::Result<usize> {
        self.untried = false;
        if self.transport.is_handshaking() && !self.conn.output().is_empty() {
            self.conn.cannot_answer();
        }
        let written = self
            .transport
            .deliver(&mut self.socket, self.conn.output().pending())?;
        self.conn.sent(written.taken);
        let mut wire = written.wire;
        if self.conn.should_half_close() && self.transport.say_goodbye() {
            wire += self.transport.flush(&mut self.socket)?;
        }
        Ok(wire)
    }

    /// Takes one batch of the room (called by the room's fan-out, once per member). When
    /// nothing is queued ahead of it, the batch is written straight from the room's buffer, so a
    /// client that keeps up never gets a copy; only what its socket cannot take now is queued,
    /// whatever its size (`batch_tail`). A client with a backlog (bytes its socket refused) gets
    /// the batch queued behind it, unless that would pass `max_outbound`: then it is a slow
    /// consumer, to be dropped.
    pub fn take_batch(
        &mut self,
        frames: &[u8],
        max_outbound: usize,
        bytes_written: &mut u64,
    ) -> Result<(), Ending> {
        if self.has_output() && !self.awaiting_writable {
            // Bytes of its own from this turn (a pong, TLS records) are no backlog: its socket
            // has refused nothing yet. Written first, they leave the batch free to go straight.
            match self.flush() {
                Ok(written) => *bytes_written += written as u64,
                Err(e) => {
                    debug!(peer:% = self.peer; "write: {e}");
                    return Err(Ending::PeerLeft);
                }
            }
            self.sent();
        }
        if self.has_output() {
            if self.over_limit(frames.len(), max_outbound) {
                return Err(Ending::SlowConsumer);
            }
            self.conn.queue(frames);
            return Ok(());
        }
        match self.transport.deliver(&mut self.socket, frames) {
            Ok(written) => {
                *bytes_written += written.wire as u64;
                if written.taken < frames.len() {
                    self.conn.queue(&frames[written.taken..]);
                    self.batch_tail = frames.len() - written.taken;
                }
                Ok(())
            }
            Err(e) => {
                debug!(peer:% = self.peer; "write: {e}");
                Err(Ending::PeerLeft)
            }
        }
    }

    /// A TLS connection that cannot go on: after a TLS error it ends (its alert goes out as
    /// the socket closes, in `reap`); plaintext HTTP on the TLS port is told, in the clear, to
    /// use https (counted as a 400 when it ends, like any answer). False: read no more.
    fn end_tls(
        &mut self,
        key: usize,
        error: Option<rustls::Error>,
        now: Instant,
        events: &mut Sink,
    ) -> bool {
        match error {
            Some(e) => {
                debug!(token = key, peer:% = self.peer; "tls: {e}");
                self.conn.abort(Ending::TlsFailed, now, events);
            }
            None => {
                debug!(token = key, peer:% = self.peer; "plaintext HTTP on the TLS port");
                self.transport = Transport::Plain;
                self.conn = Connection::answered(now, USE_HTTPS);
            }
        }
        false
    }

    /// Whether queueing `more` bytes would pass `max_outbound`, the tail of a batch that it
    /// was keeping up with aside.
    pub fn over_limit(&self, more: usize, max_outbound: usize) -> bool {
        self.conn.output().len() + more > max_outbound.saturating_add(self.batch_tail)
    }

    /// Bytes sent: the batch's tail is owed only while some of it is still queued.
    fn sent(&mut self) {
        self.batch_tail = self.batch_tail.min(self.conn.output().len());
    }

    /// What its buffers hold, for `--max-client-memory`: its partial input (a request head, a
    /// frame, a fragmented message) and its queued output, by capacity. Nothing once it is
    /// closed: it is reaped within the turn. What rustls holds inside a TLS session is not
    /// counted (rustls does not say; see docs/security.md).
    pub fn holding(&self) -> usize {
        if self.conn.is_closed() {
            0
        } else {
            self.conn.buffer_capacity() + self.transport.buffer_capacity()
        }
    }

    /// Chosen for eviction and not evicted yet (at the flush point): its partial input is gone,
    /// so nothing more is read from it until then.
    fn awaiting_eviction(&self) -> bool {
        self.evicting && matches!(self.conn.phase(), Phase::Open(_) | Phase::Request)
    }

    /// What this client may still be read in turn `turn` ([`READ_BUDGET`] a turn).
    fn read_budget(&mut self, turn: u32) -> usize {
        if self.read_turn != turn {
            self.read_turn = turn;
            self.read_spent = 0;
        }
        READ_BUDGET.saturating_sub(self.read_spent as usize)
    }

    pub fn who(&self, key: usize) -> Who {
        Who {
            key,
            id: self.id,
            peer: self.peer,
        }
    }
}

/// Tells the ledger what `client` holds now (O(1) when nothing changed; O(log n) otherwise).
pub(super) fn account(ledger: &mut Ledger, key: usize, client: &mut Client) {
    let now_held = client.holding();
    if client.evicting {
        ledger.update_leaving(client.held, now_held);
    } else {
        ledger.update(key, client.held, now_held);
    }
    client.held = now_held;
}

/// Keeps what all clients hold within `bound` (`--max-client-memory`) the moment a change
/// passes it; returns the bytes written on the way. Checked at every change, not once a turn:
/// one fan-out to 18,750 clients whose sockets are full adds the batch to each, gigabytes past
/// the bound before the turn ends. So the total passes the bound by one step at most (a read,
/// one batch to one client), besides what clients already chosen still hold on their way out.
///
/// Past the bound, the bytes queued this turn that no write has been offered yet (`untried`: a
/// pong, an echo, the `/metrics` page) are offered to their sockets first, here and now, as the
/// flush point would: what a socket takes at once should cost no one their place, and what it
/// refuses counts. Then the biggest holder goes first (the top of the ledger's index: no walk
/// over all clients), so hoarders and far-behind readers go before any ordinary client. A
/// client chosen lets go of its buffers there and then ([`Connection::let_go`]) and is listed
/// for eviction (close 1013 at the flush point); what it keeps (the rest of one frame, its
/// Close, sealed records) leaves the ledger's index, so it cannot cost another client its
/// place, and goes out or is dropped at the close timeout.
pub(super) fn keep_within(
    ledger: &mut Ledger,
    clients: &mut Slab<Client>,
    bound: usize,
    untried: &mut Vec<usize>,
    ending: &mut Vec<(usize, Ending)>,
) -> u64 {
    if ledger.biggest_past(bound).is_none() {
        return 0;
    }
    let mut written = 0;
    for key in untried.drain(..) {
        let Some(client) = clients.get_mut(key).filter(|c| c.untried) else {
            continue;
        };
        match client.flush() {
            Ok(n) => written += n as u64,
            Err(_) => ending.push((key, Ending::PeerLeft)),
        }
        client.sent();
        account(ledger, key, client);
    }
    while let Some((held, key)) = ledger.biggest_past(bound) {
        let Some(client) = clients.get_mut(key) else {
            ledger.update(key, held, 0); // cannot happen: the reaped leave the ledger
            continue;
        };
        client.evicting = true;
        ledger.leave(key, held);
        client.conn.let_go();
        ending.push((key, Ending::Evicted));
        account(ledger, key, client);
    }
    written
}

impl Server {
    /// Reads from one client until `WouldBlock`, EOF, or its budget for this turn runs out
    /// ([`READ_BUDGET`] a turn, however often the turn comes back to it: its readiness event,
    /// then the unread list). A batch too full to grow stops the reading: the flush point sends
    /// it first. A held client is not read at all (its hold's end reads it).
    pub(super) fn read(&mut self, key: usize, now: Instant) {
        loop {
            if self.batch_is_full(now) {
                return self.mark_unread(key);
            }
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            if client.conn.is_closed() || client.conn.is_held() || client.awaiting_eviction() {
                return;
            }
            let budget = client.read_budget(self.turns);
            if budget == 0 {
                // Edge-triggered: no new event will come for bytes already waiting.
                return self.mark_unread(key);
            }
            let buf = &mut self.read_buf[..];
            let (who, room) = (client.who(key), &mut self.room);
            let cx = Context {
                now,
                config: &self.config,
                degraded: room.degraded(),
            };
            let events: &mut Sink = &mut |event| room.on_event(who, event);
            let more = match client.transport.read(&mut client.socket, buf, budget) {
                Ok(Input::Eof) => {
                    client.conn.peer_closed(now, events);
                    false // EOF: nothing more will come, however long we keep the socket
                }
                Ok(Input::Data { len, cost }) => {
                    // What the read cost: plaintext bytes, or under TLS the ciphertext and a
                    // charge per record. At most READ_BUDGET a turn, plus one read's overshoot.
                    let cost = u32::try_from(cost).unwrap_or(u32::MAX);
                    client.read_spent = client.read_spent.saturating_add(cost);
                    client.conn.receive(&mut buf[..len], &cx, events);
                    true
                }
                Ok(Input::WouldBlock) => {
                    // A TLS read may have kept the start of a record (for the ledger), and a
                    // handshake step may have left an answer to send.
                    if client.transport.holds_output() {
                        self.settle(key);
                    } else {
                        account(&mut self.ledger, key, client);
                        self.keep_within_bound();
                    }
                    return;
                }
                Ok(Input::TlsFailed(e)) => client.end_tls(key, Some(e), now, events),
                Ok(Input::PlainHttp) => client.end_tls(key, None, now, events),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(token = key, peer:% = client.peer; "read: {e}");
                    client.conn.peer_closed(now, events);
                    false
                }
            };
            self.settle(key);
            if !more || self.clients.get(key).is_none_or(|c| c.conn.is_closed()) {
                return;
            }
        }
    }

    pub(super) fn read_unread(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.unread) {
            if let Some(client) = self.clients.get_mut(key) {
                client.unread = false;
            }
            self.read(key, now);
        }
    }

    /// Lists a client to be read without an event (edge-triggered: bytes already waiting bring
    /// none), once: listed again each turn, a flooder would gain a slice a turn, without end.
    fn mark_unread(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.unread {
                client.unread = true;
                self.unread.push(key);
            }
        }
    }

    /// The batch must go out before more is read (see `pacing.rs`).
    pub(super) fn batch_is_full(&self, now: Instant) -> bool {
        self.room.must_flush(now)
    }

    /// Ends one client from the loop's side (a slow consumer, a failed write, an eviction). It then goes
    /// through `settle` once, which lists it for closing. Called from the flush point (the
    /// clients listed for ending) and when a write fails; never from `settle`.
    pub(super) fn abort(&mut self, key: usize, why: Ending, now: Instant) {
        let Some(client) = self.clients.get_mut(key) else {
            // Not a client (any more): if the room still names it, it leaves all the same.
            return self.room.forget(key);
        };
        let (who, room) = (client.who(key), &mut self.room);
        let events: &mut Sink = &mut |event| room.on_event(who, event);
        match why {
            Ending::Evicted => client.conn.evict(now, events),
            _ => client.conn.abort(why, now, events),
        }
        self.settle(key);
    }

    /// Writes a client's queued bytes until they are all gone or the socket is full.
    pub(super) fn write(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut failed = None;
        if !client.conn.is_closed() {
            match client.flush() {
                Ok(n) => {
                    self.room.metrics.bytes_written += n as u64;
                    client.sent();
                }
                Err(e) => {
                    debug!(token = key, peer:% = client.peer; "write: {e}");
                    failed = Some(Ending::PeerLeft);
                }
            }
        }
        if failed.is_none() && !client.conn.is_closed() {
            failed = self.update_interest(key).err();
        }
        match failed {
            Some(why) => self.abort(key, why, now),
            None => self.settle(key),
        }
    }

    /// Asks for WRITABLE only while bytes wait, and sends our FIN once all is said.
    fn update_interest(&mut self, key: usize) -> Result<(), Ending> {
        let client = self.clients.get_mut(key).ok_or(Ending::PeerLeft)?;
        let owed = client.owed();
        let want_writable = owed == Owed::Bytes;
        if want_writable != client.awaiting_writable {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let registry = self.poll.registry();
            if let Err(e) = registry.reregister(&mut client.socket, Token(key), interest) {
                warn!(token = key, peer:% = client.peer; "reregister: {e}");
                return Err(Ending::PeerLeft);
            }
            client.awaiting_writable = want_writable;
        }
        if owed == Owed::Fin {
            // Our FIN tells the peer we are done; closing only after theirs avoids a reset
            // that could destroy the answer still in flight.
            client.half_closed = true;
            if let Err(e) = client.socket.shutdown(Shutdown::Write) {
                debug!(token = key, peer:% = client.peer; "shutdown: {e}");
                return Err(Ending::PeerLeft);
            }
        }
        Ok(())
    }

    /// Writes every client that has bytes queued since the last flush point.
    pub(super) fn write_dirty(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.dirty) {
            if let Some(client) = self.clients.get_mut(key) {
                client.dirty = false;
                self.write(key, now);
            }
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while !self.batch_is_full(now) {
            let Some(timer) = self.timers.pop_due(now) else {
                return;
            };
            let Some(client) = self.clients.get_mut(timer.key) else {
                continue;
            };
            if client.id != timer.id || client.timer_at != Some(timer.at) {
                continue; // a stale entry: the slot was reused, or the deadline was re-armed
            }
            client.timer_at = None;
            let (who, room) = (client.who(timer.key), &mut self.room);
            let cx = Context {
                now,
                config: &self.config,
                degraded: room.degraded(),
            };
            let events: &mut Sink = &mut |event| room.on_event(who, event);
            client.conn.on_deadline(&cx, events);
            self.settle(timer.key);
        }
    }

    /// Keeps what all clients hold within `--max-client-memory` (see [`keep_within`]).
    pub(super) fn keep_within_bound(&mut self) {
        let bound = self.config.max_client_memory;
        self.room.metrics.bytes_written += keep_within(
            &mut self.ledger,
            &mut self.clients,
            bound,
            &mut self.untried,
            &mut self.ending,
        );
    }

    /// Brings the loop in line with what just happened to one client: who it is behind a proxy,
    /// the metrics page it asked for, the outbound limit, the flush list, its timer, the close
    /// list, and the unread list when a hold of its reads ended. It only fills lists: a client
    /// past its limit is listed for ending at the flush point, not ended here.
    pub(super) fn settle(&mut self, key: usize) {
        self.apply_forwarded(key);
        self.answer_metrics(key);
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if !client.has_output() {
            client.conn.written_out(); // a finishing client whose peer is done is over
        } else if !client.awaiting_writable && !client.untried {
            client.untried = true; // queued since its last write: offered at the flush point
            self.untried.push(key);
        }
        account(&mut self.ledger, key, client);
        // Closed first: an aborted connection keeps its unsent bytes until it is reaped.
        if client.conn.is_closed() {
            return self.closed.push(key);
        }
        // Its own replies (pongs, echoes) count too, once the socket has stopped taking bytes:
        // a client whose socket keeps up is written at the end of the turn, whatever it queued.
        if client.awaiting_writable && client.over_limit(0, self.config.max_outbound) {
            return self.ending.push((key, Ending::SlowConsumer));
        }
        if client.conn.resumed() && !client.unread {
            client.unread = true;
            self.unread.push(key);
        }
        let must_write = match client.owed() {
            Owed::Bytes => !client.awaiting_writable, // else WRITABLE brings it back
            Owed::Fin => true,
            Owed::Nothing => false,
        };
        if !client.dirty && must_write {
            client.dirty = true;
            self.dirty.push(key);
        }
        if let Some(at) = client.conn.deadline(&self.config) {
            if client.timer_at.is_none_or(|armed| at < armed) {
                client.timer_at = Some(at);
                let id = client.id;
                self.timers.arm(Timer { at, key, id });
            }
        }
        self.keep_within_bound();
    }

    /// Queues the `/metrics` page for a client that asked for it.
    fn answer_metrics(&mut self, key: usize) {
        if !self
            .clients
            .get(key)
            .is_some_and(|c| c.conn.wants_metrics())
        {
            return;
        }
        let page = self.render_metrics();
        let mut response = Vec::with_capacity(page.len() + 200);
        http::write_response(&mut response, 200, http::METRICS_CONTENT_TYPE, "", &page);
        let client = &mut self.clients[key];
        let (who, room) = (client.who(key), &mut self.room);
        client
            .conn
            .answer_metrics(&response, &mut |event| room.on_event(who, event));
    }

    /// Tells who a client behind a trusted proxy is, from the `X-Forwarded-For` it sent.
    fn apply_forwarded(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Some(chain) = client.conn.take_forwarded_for() else {
            return;
        };
        let via = client.peer;
        client.peer = via.forwarded(&self.config.trusted_proxies, Some(&chain));
        if client.peer != via {
            debug!(token = key, peer:% = client.peer, via:% = via; "forwarded");
        }
    }

    /// Closes the sockets of connections that are over.
    pub(super) fn reap(&mut self) {
        for key in std::mem::take(&mut self.closed) {
            if !self.clients.get(key).is_some_and(|c| c.conn.is_closed()) {
                continue; // listed twice
            }
            let mut client = self.clients.remove(key);
            account(&mut self.ledger, key, &mut client);
            client.transport.last_words(&mut client.socket);
            if let Err(e) = self.poll.registry().deregister(&mut client.socket) {
                debug!(token = key, peer:% = client.peer; "deregister: {e}");
            }
            self.refusing -= usize::from(client.refused);
            debug!(token = key, peer:% = client.peer; "closed");
        }
    }
}
