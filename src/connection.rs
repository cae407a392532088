//! One client connection as a state machine over bytes, with no socket inside (sans-I/O).
//!
//! The reactor feeds it what a socket read returned ([`Connection::receive`]), tells it when the
//! peer hung up or a deadline passed, and writes out whatever it queued. The phases:
//!
//! ```text
//!  Request ──101──▶ Open ──shutdown: Close 1001──▶ Closing ──peer's Close──▶ Finishing ──EOF──▶ Closed
//!     │               │ peer's Close; a broken rule or ping timeout: Close with a code  ▲
//!     └─ plain HTTP answer, error status, 408 ──────────────────────────────────────────┘
//! ```
//!
//! It reports what happened as values, [`Event`]s (it joined the room, it said this, it left the
//! room, it ended and why), but not as a returned list: each call that can cause events
//! (`receive`, `peer_closed`, `on_deadline`, `abort`, `go_away`, `answer_metrics`) takes a sink,
//! `&mut dyn FnMut(Event)`, and calls it synchronously, in order, while it runs. A `Said` text
//! borrows the caller's read buffer (unmasked in place), so the room encodes it without a copy;
//! a returned `Vec` would have to own every text and allocate on every read of the hot path. The
//! event loop's sink is `RoomCore::on_event`; a test's sink collects the events in a `Vec`.
//! It does not know whether the room is here or spans processes through Redis: the room core
//! decides that, in one place. What it needs from the loop and cannot say as an event, it holds
//! until asked, as the loop asks [`Connection::resumed`]: a `/metrics` request
//! ([`Connection::wants_metrics`]) and a proxy's `X-Forwarded-For` chain
//! ([`Connection::take_forwarded_for`]). Replies meant for this peer alone (the handshake, pongs,
//! close frames, echoes) go into its own [`OutQueue`].
//!
//! `Joined` and `Left` come in pairs by construction: `Left` follows every `Joined`, exactly once,
//! whichever way the connection ends, even in the same read as its handshake.
//!
//! A chat client's messages are charged to its [`Budget`] as it says them (`--client-rate`,
//! `--client-bytes-rate`). Once the budget is spent, the connection uses nothing more of its
//! input until the budget allows the next message: what is left of the read waits in `input`,
//! [`Connection::is_held`] tells the loop to stop reading the socket, and the instant of resuming
//! is the connection's deadline, like any other. Its keepalive waits meanwhile: the silence is
//! ours.

use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::config::Config;
use crate::frame::{self, close, Header, OpCode};
use crate::http::{self, Decision, Response, Route};
use crate::message::Version;
use crate::queue::OutQueue;

/// How long a closing connection may take to finish its closing handshake and hang up.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head, however many reads it takes.
    Request,
    /// A WebSocket, on the chat room or the echo route.
    Open(Route),
    /// The server is going away: we sent Close 1001 and wait for the peer's (RFC 6455 §7.1.2);
    /// data is ignored.
    Closing,
    /// Nothing more to say: write what is queued (a plain HTTP answer, or the last Close frame),
    /// half-close, and wait for the peer to hang up.
    Finishing,
    /// Done; the reactor closes the socket.
    Closed,
}

/// Why a connection ended (or is ending): for the logs and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Answered plain HTTP with this status: a page, or a refused request or upgrade.
    Answered(u16),
    /// The peer closed: a Close frame, EOF, or a reset.
    PeerLeft,
    /// The peer broke a rule and was sent this close code (1002, 1003, 1007, 1009).
    Failed(u16),
    /// Silent for two ping intervals.
    PingTimeout,
    /// Stopped reading while its unsent bytes passed `--max-outbound`.
    SlowConsumer,
    /// The server is shutting down.
    ShuttingDown,
    /// Evicted to bring what all clients hold back within `--max-client-memory`: it held the
    /// most. A WebSocket client is sent close 1013 (try again later), a request 503.
    Evicted,
    /// The TLS handshake or a TLS record failed (garbage, no common version or cipher suite):
    /// the peer was sent an alert.
    TlsFailed,
}

/// What a connection needs to know from the world while it handles bytes.
pub struct Context<'a> {
    pub now: Instant,
    pub config: &'a Config,
    /// The Redis backplane is configured but down (`/healthz` says so).
    pub degraded: bool,
}

/// What a connection reports, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Its handshake completed on the chat route: it is a chat client now, getting frames of
    /// this version.
    Joined(Version),
    /// It said this in the chat room.
    Said(&'a str),
    /// It sent a message on `/echo`, which went straight back to it (for the metrics).
    Echoed,
    /// Its budget is spent: its reads are held back for this long (for the metrics).
    Throttled(Duration),
    /// It started to end, and why; once per connection.
    Ended(Ending),
    /// It is no longer a chat client; once, and only after `Joined`.
    Left,
}

/// Where a connection's events go (the event loop's handler, or a test's list).
pub type Sink<'s> = dyn FnMut(Event) + 's;

/// Whether the loop may read this client's socket, as its budget says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Free,
    /// The budget is spent: nothing more is read until the deadline.
    Held,
    /// The hold just ended: the loop must read the socket once (see [`Connection::resumed`]).
    Resumed,
}

/// A message arriving in several frames.
#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    data: Vec<u8>,
    /// Length of the prefix of `data` known to be valid UTF-8, so each fragment is checked once.
    checked: usize,
}

#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    /// When the current phase began: the clock for the handshake and closing timeouts.
    since: Instant,
    /// When the peer last sent anything: the clock for keepalive.
    last_heard: Instant,
    ping_outstanding: bool,
    /// The peer has shut down its side; once our queue drains there is nothing left to do.
    peer_done: bool,
    /// Received bytes not yet used: an incomplete request head or frame.
    input: Vec<u8>,
    output: OutQueue,
    message: Option<Partial>,
    /// The first reason this connection started to end.
    ending: Option<Ending>,
    /// `Ended` has been reported.
    ending_reported: bool,
    /// `Joined` has been reported and `Left` not yet.
    joined: bool,
    /// The chat frames its handshake asked for (one byte, in what was padding).
    version: Version,
    reads: Reads,
    /// It asked for `/metrics`, which only the event loop can render: held until the loop asks
    /// ([`Connection::wants_metrics`]) and answers ([`Connection::answer_metrics`]).
    wants_metrics: bool,
    /// The `X-Forwarded-For` chain of a request through a trusted proxy (`--trusted-proxy`),
    /// held until the loop takes it ([`Connection::take_forwarded_for`]) to tell who the client
    /// is, for the logs.
    forwarded_for: Option<Box<str>>,
    /// What it has said lately, against `--client-rate` and `--client-bytes-rate`: 16 bytes.
    budget: Budget,
}

impl Connection {
    pub fn new(now: Instant) -> Self {
        Connection {
            phase: Phase::Request,
            since: now,
            last_heard: now,
            ping_outstanding: false,
            peer_done: false,
            input: Vec::new(),
            output: OutQueue::default(),
            message: None,
            ending: None,
            ending_reported: false,
            joined: false,
            version: Version::V1,
            reads: Reads::Free,
            wants_metrics: false,
            forwarded_for: None,
            budget: Budget::default(),
        }
    }

    /// A connection turned away at the door: it gets `status` and nothing else.
    pub fn refused(now: Instant, status: u16) -> Self {
        Connection::answered(now, Response::status(status))
    }

    /// A connection that gets `response` whatever it asks (plain HTTP on the TLS port).
    pub fn answered(now: Instant, response: Response) -> Self {
        let mut conn = Connection::new(now);
        conn.respond(response, now);
        conn
    }

    /// The chat frames this client gets: version 1 unless its handshake asked for version 2.
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether this connection should be a member of the chat room.
    pub fn in_room(&self) -> bool {
        self.phase == Phase::Open(Route::Chat)
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Its budget is spent: the loop must not read its socket (TCP flow control then slows the
    /// sender) until [`Connection::on_deadline`] lets it go.
    pub fn is_held(&self) -> bool {
        self.reads == Reads::Held
    }

    /// True once after a hold ends. The bytes that waited in the socket meanwhile will bring no
    /// new readiness event (edge-triggered): the loop must read it without one.
    pub fn resumed(&mut self) -> bool {
        let resumed = self.reads == Reads::Resumed;
        if resumed {
            self.reads = Reads::Free;
        }
        resumed
    }

    pub fn ending(&self) -> Option<Ending> {
        self.ending
    }

    pub fn output(&self) -> &OutQueue {
        &self.output
    }

    /// Queues bytes for this peer (the reactor's fan-out uses this).
    pub fn queue(&mut self, bytes: &[u8]) {
        self.output.push(bytes);
    }

    /// It asked for `/metrics` and has not been answered (the loop renders the page once for
    /// all that ask in a turn).
    pub fn wants_metrics(&self) -> bool {
        self.wants_metrics
    }

    /// The event loop's answer to a `/metrics` request: the whole HTTP response.
    pub fn answer_metrics(&mut self, response: &[u8], events: &mut Sink) {
        self.wants_metrics = false;
        self.end(Ending::Answered(200));
        self.output.push(response);
        self.report(events);
    }

    /// The `X-Forwarded-For` chain its request came with through a trusted proxy, once.
    pub fn take_forwarded_for(&mut self) -> Option<Box<str>> {
        self.forwarded_for.take()
    }

    /// Records that the transport took `n` queued bytes.
    pub fn sent(&mut self, n: usize) {
        self.output.consume(n);
    }

    /// The loop's word that the socket has taken everything: this queue, and whatever the
    /// transport held (TLS records a full socket refused; only the loop sees both). A finishing
    /// connection whose peer is done is then over; before, closing would drop owed bytes.
    pub fn written_out(&mut self) {
        if self.phase == Phase::Finishing && self.output.is_empty() && self.peer_done {
            self.enter(Phase::Closed, self.since);
        }
    }

    /// The transport cannot carry what is queued, and never will (a TLS handshake that did not
    /// complete: a 408 or a 503 in the clear would be garbage to a TLS peer). The answer is
    /// dropped; the connection, finishing, goes on to its end (the transport's alert says it).
    pub fn cannot_answer(&mut self) {
        if self.phase == Phase::Finishing {
            self.output.consume(self.output.len());
        }
    }

    /// All said and written: time to send our FIN.
    pub fn should_half_close(&self) -> bool {
        self.phase == Phase::Finishing && self.output.is_empty()
    }

    /// Memory held for this connection's buffers, for measurements.
    pub fn buffer_capacity(&self) -> usize {
        self.input.capacity()
            + self.output.capacity()
            + self.message.as_ref().map_or(0, |m| m.data.capacity())
    }

    /// Handles bytes the peer sent. `data` may be altered (unmasked in place).
    pub fn receive(&mut self, data: &mut [u8], cx: &Context, events: &mut Sink) {
        self.last_heard = cx.now;
        self.ping_outstanding = false;
        if self.input.is_empty() {
            // The common case: whole frames, used straight from the reactor's read buffer.
            let used = self.process(data, cx, events);
            if self.accepts_input() {
                self.input.extend_from_slice(&data[used..]);
            }
        } else {
            let mut input = std::mem::take(&mut self.input);
            input.extend_from_slice(data);
            let used = self.process(&mut input, cx, events);
            input.drain(..used);
            // Like the output queue, an emptied input buffer goes back to the allocator, and
            // one mostly used gives back what it grew for (what it holds is what it is charged
            // under `--max-client-memory`).
            if self.accepts_input() && !input.is_empty() {
                if input.capacity() > 2 * input.len() + 4096 {
                    input.shrink_to_fit();
                }
                self.input = input;
            }
        }
        self.report(events);
    }

    /// The peer shut down its side of the connection (EOF), or the socket failed.
    pub fn peer_closed(&mut self, now: Instant, events: &mut Sink) {
        self.peer_done = true;
        self.end(Ending::PeerLeft);
        // Finishing, it still owes what it queued: `written_out` ends it once that is gone.
        if self.phase != Phase::Finishing {
            self.enter(Phase::Closed, now);
        }
        self.report(events);
    }

    /// The server drops this connection without ceremony (slow consumer, socket error).
    pub fn abort(&mut self, why: Ending, now: Instant, events: &mut Sink) {
        self.end(why);
        self.enter(Phase::Closed, now);
        self.report(events);
    }

    /// Lets go at once of what the connection holds, the moment the loop chooses it for eviction
    /// ([`Connection::evict`] follows at the flush point): partial input, a fragmented message,
    /// and every queued byte after the frame being written (all of them for a request, which is
    /// answered 503, and for a connection already ending, which is dropped). Nothing it held is
    /// read or sent again.
    pub fn let_go(&mut self) {
        match self.phase {
            Phase::Open(_) => {
                self.output.cut_to_frame();
            }
            // A request gets a 503 instead; one ending already is dropped by `evict`.
            Phase::Request | Phase::Closing | Phase::Finishing => self.output = OutQueue::default(),
            Phase::Closed => return,
        }
        self.input = Vec::new();
        self.message = None;
    }

    /// The server evicts this connection to keep what all clients hold within
    /// `--max-client-memory`. What it holds is let go at once: its partial input, and every
    /// queued byte after the frame being written; a WebSocket peer then gets close 1013 (the
    /// bound is the server's, over everyone: the same client may be welcome later), a request
    /// 503, and the connection finishes. One already ending is dropped.
    pub fn evict(&mut self, now: Instant, events: &mut Sink) {
        self.let_go();
        self.end(Ending::Evicted);
        match self.phase {
            Phase::Open(_) if self.output.cut_to_frame() => {
                frame::push_close(
                    self.output.buffer(),
                    close::TRY_AGAIN_LATER,
                    "server memory",
                );
                self.enter(Phase::Finishing, now);
            }
            Phase::Request => {
                self.output = OutQueue::default();
                Response::status(503).write_to(self.output.buffer());
                self.enter(Phase::Finishing, now);
            }
            _ => self.enter(Phase::Closed, now),
        }
        self.report(events);
    }

    /// The server is shutting down: WebSocket peers get close 1001, half-read requests nothing.
    pub fn go_away(&mut self, now: Instant, events: &mut Sink) {
        self.going_away(now);
        self.report(events);
    }

    fn going_away(&mut self, now: Instant) {
        self.end(Ending::ShuttingDown);
        match self.phase {
            Phase::Open(_) => {
                frame::push_close(
                    self.output.buffer(),
                    close::GOING_AWAY,
                    "server shutting down",
                );
                self.enter(Phase::Closing, now);
            }
            Phase::Request => self.enter(Phase::Closed, now),
            Phase::Closing | Phase::Finishing | Phase::Closed => {}
        }
    }

    /// The next moment [`Connection::on_deadline`] has something to decide, if any.
    pub fn deadline(&self, config: &Config) -> Option<Instant> {
        match self.phase {
            Phase::Request => Some(self.since + config.handshake_timeout),
            Phase::Open(_) if self.is_held() => Some(self.budget.resume_at(&config.fair_share)),
            Phase::Open(_) => config.ping_interval.map(|interval| {
                let silent_intervals = if self.ping_outstanding { 2 } else { 1 };
                self.last_heard + interval * silent_intervals
            }),
            Phase::Closing | Phase::Finishing => Some(self.since + CLOSE_TIMEOUT),
            Phase::Closed => None,
        }
    }

    /// Acts on timeouts: 408 for a slow request, pings and ping timeouts, closing timeouts; and
    /// the end of a hold, when it goes on with the input that waited.
    pub fn on_deadline(&mut self, cx: &Context, events: &mut Sink) {
        if self.is_held() {
            let share = &cx.config.fair_share;
            if self.budget.held_until(share, cx.now).is_none() {
                self.reads = Reads::Resumed;
                // As if the held bytes had just come; it also restarts the keepalive clock.
                self.receive(&mut [], cx, events);
            }
            return;
        }
        self.act_on_deadline(cx.now, cx.config);
        self.report(events);
    }

    fn act_on_deadline(&mut self, now: Instant, config: &Config) {
        match self.phase {
            Phase::Request if now >= self.since + config.handshake_timeout => {
                self.respond(Response::status(408), now);
            }
            Phase::Open(_) => {
                let Some(interval) = config.ping_interval else {
                    return;
                };
                let silent = now.saturating_duration_since(self.last_heard);
                if silent >= interval * 2 {
                    self.end(Ending::PingTimeout);
                    frame::push_close(self.output.buffer(), close::GOING_AWAY, "ping timeout");
                    self.enter(Phase::Finishing, now);
                } else if silent >= interval && !self.ping_outstanding {
                    frame::push_frame(self.output.buffer(), OpCode::Ping, b"");
                    self.ping_outstanding = true;
                }
            }
            Phase::Closing | Phase::Finishing if now >= self.since + CLOSE_TIMEOUT => {
                self.enter(Phase::Closed, now);
            }
            _ => {}
        }
    }

    fn end(&mut self, why: Ending) {
        self.ending.get_or_insert(why);
    }

    /// Reports the transitions of the call that just ended: the one place `Ended` and `Left` are
    /// decided. Both come after whatever the call reported before them (a text said in the same
    /// read as the Close after it), since a connection that ends reads nothing more.
    fn report(&mut self, events: &mut Sink) {
        if let (Some(ending), false) = (self.ending, self.ending_reported) {
            self.ending_reported = true;
            events(Event::Ended(ending));
        }
        if self.joined && !self.in_room() {
            self.joined = false;
            events(Event::Left);
        }
    }

    fn accepts_input(&self) -> bool {
        matches!(self.phase, Phase::Request | Phase::Open(_) | Phase::Closing)
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.since = now;
        if self.is_held() && !matches!(phase, Phase::Open(_)) {
            // Closing reads again (for the peer's Close); the rest reads nothing more.
            self.reads = Reads::Resumed;
        }
        if !self.accepts_input() {
            self.input = Vec::new();
            self.message = None;
        }
    }

    /// Uses as many whole request heads and frames from `buf` as it holds; returns bytes used.
    fn process(&mut self, buf: &mut [u8], cx: &Context, events: &mut Sink) -> usize {
        let mut used = 0;
        while used < buf.len() && !self.is_held() {
            let n = match self.phase {
                Phase::Request => self.read_request(&buf[used..], cx, events),
                Phase::Open(_) | Phase::Closing => self.read_frame(&mut buf[used..], cx, events),
                Phase::Finishing | Phase::Closed => buf.len() - used, // nothing more is read
            };
            if n == 0 {
                break; // incomplete: wait for more bytes
            }
            used += n;
        }
        used
    }

    fn read_request(&mut self, buf: &[u8], cx: &Context, events: &mut Sink) -> usize {
        let decision = http::decide(buf, &cx.config.origins, cx.config.echo);
        if decision != Decision::Incomplete && !cx.config.trusted_proxies.is_empty() {
            self.forwarded_for = http::forwarded_for(buf).map(String::into_boxed_str);
        }
        match decision {
            Decision::Incomplete => 0,
            Decision::Respond(response) => {
                self.respond(response, cx.now);
                buf.len()
            }
            Decision::Health => {
                self.respond(Response::health(cx.degraded), cx.now);
                buf.len()
            }
            Decision::Metrics => {
                // Answered by the loop through `answer_metrics`; nothing more is read meanwhile.
                self.enter(Phase::Finishing, cx.now);
                self.wants_metrics = true;
                buf.len()
            }
            Decision::Upgrade {
                route,
                accept_key,
                version,
                head_len,
            } => {
                http::write_switching_protocols(self.output.buffer(), &accept_key, version);
                self.output.frames_follow();
                self.version = version;
                self.enter(Phase::Open(route), cx.now);
                if route == Route::Chat {
                    self.joined = true;
                    events(Event::Joined(version));
                }
                head_len
            }
        }
    }

    fn respond(&mut self, response: Response, now: Instant) {
        self.end(Ending::Answered(response.status));
        response.write_to(self.output.buffer());
        self.enter(Phase::Finishing, now);
    }

    fn read_frame(&mut self, buf: &mut [u8], cx: &Context, events: &mut Sink) -> usize {
        let so_far = self.message.as_ref().map_or(0, |m| m.data.len());
        let room_left = cx.config.max_message_size.saturating_sub(so_far);
        let header = match frame::parse_header(buf, room_left) {
            Ok(Some(header)) if buf.len() >= header.frame_len() => header,
            Ok(_) => return 0,
            Err(code) => {
                self.fail(code, "malformed or oversized frame", cx.now);
                return buf.len();
            }
        };
        let payload = &mut buf[header.header_len..header.frame_len()];
        frame::unmask(payload, header.mask);
        self.on_frame(header, payload, cx, events);
        header.frame_len()
    }

    fn on_frame(&mut self, header: Header, payload: &[u8], cx: &Context, events: &mut Sink) {
        if self.phase == Phase::Closing {
            // Only the peer's Close matters now; it completes the closing handshake.
            if header.opcode == OpCode::Close {
                self.enter(Phase::Finishing, cx.now);
            }
            return;
        }
        match header.opcode {
            OpCode::Ping => frame::push_frame(self.output.buffer(), OpCode::Pong, payload),
            OpCode::Pong => {}
            OpCode::Close => match frame::check_close_payload(payload) {
                Ok(code) => {
                    self.end(Ending::PeerLeft);
                    frame::push_close(self.output.buffer(), code, "");
                    self.enter(Phase::Finishing, cx.now);
                }
                Err(code) => self.fail(code, "invalid close frame", cx.now),
            },
            OpCode::Text | OpCode::Binary if self.message.is_some() => self.fail(
                close::PROTOCOL_ERROR,
                "expected a continuation frame",
                cx.now,
            ),
            OpCode::Text | OpCode::Binary if header.fin => {
                self.on_message(header.opcode, payload, cx, events)
            }
            OpCode::Text | OpCode::Binary => {
                self.message = Some(Partial {
                    opcode: header.opcode,
                    data: Vec::new(),
                    checked: 0,
                });
                self.continue_message(payload, false, cx, events);
            }
            OpCode::Continuation if self.message.is_none() => self.fail(
                close::PROTOCOL_ERROR,
                "continuation without a message",
                cx.now,
            ),
            OpCode::Continuation => self.continue_message(payload, header.fin, cx, events),
        }
    }

    /// Adds a fragment; text is checked as it comes, so bad UTF-8 fails at once (Autobahn §6).
    fn continue_message(&mut self, fragment: &[u8], fin: bool, cx: &Context, events: &mut Sink) {
        let Some(partial) = self.message.as_mut() else {
            return;
        };
        partial.data.extend_from_slice(fragment);
        if partial.opcode == OpCode::Text {
            match std::str::from_utf8(&partial.data[partial.checked..]) {
                Ok(_) => partial.checked = partial.data.len(),
                // A character cut in two by the fragment boundary is fine, unless this is the end.
                Err(e) if e.error_len().is_none() && !fin => partial.checked += e.valid_up_to(),
                Err(_) => return self.fail(close::INVALID_PAYLOAD, "invalid UTF-8", cx.now),
            }
        }
        if fin {
            if let Some(partial) = self.message.take() {
                self.on_message(partial.opcode, &partial.data, cx, events);
            }
        }
    }

    fn on_message(&mut self, opcode: OpCode, data: &[u8], cx: &Context, events: &mut Sink) {
        let Phase::Open(route) = self.phase else {
            return;
        };
        let text = if opcode == OpCode::Text {
            match std::str::from_utf8(data) {
                Ok(text) => Some(text),
                Err(_) => return self.fail(close::INVALID_PAYLOAD, "invalid UTF-8", cx.now),
            }
        } else {
            None
        };
        match (route, text) {
            (Route::Chat, Some(text)) => {
                events(Event::Said(text));
                self.charge(text.len(), cx, events);
            }
            (Route::Chat, None) => self.fail(
                close::UNSUPPORTED_DATA,
                "binary messages are not supported",
                cx.now,
            ),
            (Route::Echo, _) => {
                frame::push_frame(self.output.buffer(), opcode, data);
                events(Event::Echoed);
            }
        }
    }

    /// Charges a message said to the budget, and holds the reads once it is spent. The echo
    /// route is not charged: what it sends comes back to the sender alone, whose own socket
    /// (and `--max-outbound`) already bounds it.
    fn charge(&mut self, bytes: usize, cx: &Context, events: &mut Sink) {
        let share = &cx.config.fair_share;
        self.budget.charge(share, cx.now, bytes as u64);
        if let Some(until) = self.budget.held_until(share, cx.now) {
            self.reads = Reads::Held;
            events(Event::Throttled(until - cx.now));
        }
    }

    /// The peer broke a rule: "fail the WebSocket connection" (RFC 6455 §7.1.7). It gets a Close
    /// frame with the code it earned, and then the end of the TCP stream, without waiting for
    /// its Close: what it sends next cannot be trusted to be a frame.
    fn fail(&mut self, code: u16, reason: &str, now: Instant) {
        if let Phase::Open(_) = self.phase {
            self.end(Ending::Failed(code));
            frame::push_close(self.output.buffer(), code, reason);
        }
        if self.accepts_input() {
            self.enter(Phase::Finishing, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{FairShare, Rate};
    use crate::message::MemberId;
    use crate::message::{Message, JOINED};
    use crate::room::Batch;

    const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::push_masked(&mut out, first, payload, [9, 8, 7, 6]);
        out
    }

    /// An event kept past the call (texts are checked through the harness's `broadcast`).
    fn without_text(event: Event) -> Event<'static> {
        match event {
            Event::Said(_) => Event::Said(""),
            Event::Joined(v) => Event::Joined(v),
            Event::Echoed => Event::Echoed,
            Event::Throttled(held) => Event::Throttled(held),
            Event::Ended(ending) => Event::Ended(ending),
            Event::Left => Event::Left,
        }
    }

    /// What a connection is told of the world at `now`.
    fn at(now: Instant, config: &Config) -> Context<'_> {
        Context {
            now,
            config,
            degraded: false,
        }
    }

    /// Puts what an event means for the room into `broadcast`, and the event into `events`.
    fn record(broadcast: &mut Batch, events: &mut Vec<Event<'static>>, event: Event) {
        match event {
            Event::Joined(_) => broadcast.joined(MemberId::default(), 1),
            Event::Said(text) => broadcast.said(MemberId::default(), text),
            Event::Left => broadcast.left(MemberId::default(), 1),
            _ => {}
        }
        events.push(without_text(event));
    }

    struct Harness {
        conn: Connection,
        config: Config,
        /// What the room would get from its events.
        broadcast: Batch,
        /// Every event, in order (texts as `Said` with their content checked via `broadcast`).
        events: Vec<Event<'static>>,
        now: Instant,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let now = Instant::now();
            Harness {
                conn: Connection::new(now),
                config,
                broadcast: Batch::default(),
                events: Vec::new(),
                now,
            }
        }

        fn feed(&mut self, bytes: &[u8]) {
            let cx = Context {
                now: self.now,
                config: &self.config,
                degraded: false,
            };
            let (broadcast, events) = (&mut self.broadcast, &mut self.events);
            self.conn.receive(&mut bytes.to_vec(), &cx, &mut |event| {
                record(broadcast, events, event)
            });
        }

        /// Runs one of the connection's other entry points, collecting its events.
        fn call(&mut self, act: impl FnOnce(&mut Connection, Instant, &Config, &mut Sink)) {
            let (broadcast, events) = (&mut self.broadcast, &mut self.events);
            act(&mut self.conn, self.now, &self.config, &mut |event| {
                record(broadcast, events, event)
            });
        }

        /// Takes everything queued for the peer.
        fn take_output(&mut self) -> Vec<u8> {
            let out = self.conn.output().pending().to_vec();
            self.conn.sent(out.len());
            out
        }

        fn open() -> Self {
            Harness::open_with(Config::default())
        }

        fn open_with(config: Config) -> Self {
            let mut h = Harness::new(config);
            h.feed(REQUEST);
            h.take_output();
            h.broadcast = Batch::default();
            h.events.clear();
            h
        }

        fn close_code_sent(&mut self) -> u16 {
            let out = self.take_output();
            let at = out
                .windows(1)
                .rposition(|w| w[0] == 0x88)
                .expect("a close frame");
            u16::from_be_bytes([out[at + 2], out[at + 3]])
        }
    }

    #[test]
    fn a_request_in_one_byte_pieces_opens_exactly_like_one_in_a_piece() {
        let mut h = Harness::new(Config::default());
        let mut stream = REQUEST.to_vec();
        stream.extend(client_frame(0x81, b"hi"));
        for byte in &stream {
            h.feed(&[*byte]);
        }
        assert_eq!(h.conn.phase(), Phase::Open(Route::Chat));
        let out = String::from_utf8(h.take_output()).unwrap();
        assert!(out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        let mut expected = Batch::default();
        expected.joined(MemberId::default(), 1);
        expected.said(MemberId::default(), "hi");
        assert_eq!(h.broadcast.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn fragments_with_a_ping_between_make_one_message() {
        let mut h = Harness::open();
        let mut bytes = client_frame(0x01, "h\u{e9}".as_bytes()[..2].as_ref()); // cut inside é
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, &"h\u{e9}llo".as_bytes()[2..]));
        h.feed(&bytes);
        assert_eq!(h.take_output(), [0x8A, 1, b'p']); // the pong, unmasked
        let mut expected = Batch::default();
        expected.said(MemberId::default(), "h\u{e9}llo");
        assert_eq!(h.broadcast.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn each_offence_earns_its_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(0x82, b"bin"), close::UNSUPPORTED_DATA),
            (client_frame(0x81, &[0xFF]), close::INVALID_PAYLOAD),
            (
                [client_frame(0x01, b"a"), client_frame(0x80, &[0xC0])].concat(),
                close::INVALID_PAYLOAD,
            ),
            (vec![0x81, 0x00], close::PROTOCOL_ERROR), // unmasked
            (client_frame(0x80, b"x"), close::PROTOCOL_ERROR), // continuation, no message
            (
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                close::PROTOCOL_ERROR,
            ),
            (client_frame(0x88, &[3]), close::PROTOCOL_ERROR),
            (client_frame(0x88, &[0x03, 0xED]), close::PROTOCOL_ERROR), // 1005
            (
                client_frame(0x88, &[0x03, 0xE8, 0xFF]),
                close::INVALID_PAYLOAD,
            ),
            (
                vec![0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4],
                close::TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            let mut h = Harness::open();
            h.feed(&bytes);
            assert_eq!(h.conn.phase(), Phase::Finishing, "{bytes:?}");
            assert_eq!(h.close_code_sent(), code, "{bytes:?}");
            assert_eq!(h.events, [Event::Ended(Ending::Failed(code)), Event::Left]);
        }
    }

    #[test]
    fn a_fragmented_message_may_not_outgrow_the_limit() {
        let mut h = Harness::open();
        h.config.max_message_size = 100;
        h.feed(&client_frame(0x01, &[b'a'; 60]));
        h.feed(&client_frame(0x00, &[b'a'; 60]));
        assert_eq!(h.close_code_sent(), close::TOO_BIG);
    }

    #[test]
    fn the_closing_handshake_both_ways() {
        let mut h = Harness::open();
        h.feed(&client_frame(0x88, &1000u16.to_be_bytes()));
        assert_eq!(h.close_code_sent(), 1000);
        assert!(h.conn.should_half_close());
        h.call(|c, now, _, ev| c.peer_closed(now, ev));
        assert!(
            !h.conn.is_closed(),
            "not before the loop says all is written"
        );
        h.conn.written_out();
        assert!(h.conn.is_closed());

        let mut h = Harness::open();
        h.call(|c, now, _, ev| c.go_away(now, ev));
        assert_eq!(h.close_code_sent(), close::GOING_AWAY);
        h.broadcast = Batch::default(); // its leave notice
        h.feed(&client_frame(0x81, b"ignored while closing"));
        assert!(h.broadcast.is_empty());
        h.feed(&client_frame(0x88, &1001u16.to_be_bytes()));
        assert_eq!(h.conn.phase(), Phase::Finishing);
    }

    /// Finishing, a connection whose peer is done ends only on the loop's word that all is
    /// written (a TLS transport may still hold its last records), never on its own queue alone;
    /// a timeout still ends it.
    #[test]
    fn a_finishing_connection_outlives_its_queue_until_all_is_written() {
        let mut h = Harness::open();
        h.feed(&client_frame(0x88, &1000u16.to_be_bytes()));
        h.call(|c, now, _, ev| c.peer_closed(now, ev));
        assert_eq!(h.close_code_sent(), 1000); // the queue drains (`sent`)...
        assert_eq!(
            h.conn.phase(),
            Phase::Finishing,
            "...and that alone ends nothing"
        );
        let due = h.conn.deadline(&h.config).expect("the closing timeout");
        h.call(|c, _, config, ev| c.on_deadline(&at(due, config), ev));
        assert!(h.conn.is_closed(), "the closing timeout bounds the wait");

        let mut h = Harness::open();
        h.call(|c, now, _, ev| c.peer_closed(now, ev));
        assert!(h.conn.is_closed(), "an open connection ends at EOF at once");
    }

    #[test]
    fn an_answer_the_transport_cannot_carry_is_dropped_and_the_end_goes_on() {
        let mut h = Harness::new(Config::default());
        h.call(|c, _, config, ev| c.on_deadline(&at(c.deadline(config).unwrap(), config), ev));
        assert!(!h.conn.output().is_empty(), "a 408 is queued");
        h.conn.cannot_answer();
        assert!(
            h.conn.should_half_close(),
            "nothing left to say: time for our FIN"
        );
        assert_eq!(h.events, [Event::Ended(Ending::Answered(408))]);
    }

    #[test]
    fn keepalive_pings_then_drops_a_silent_peer() {
        let mut h = Harness::open();
        let interval = h.config.ping_interval.unwrap();
        let start = h.now;
        assert_eq!(h.conn.deadline(&h.config), Some(start + interval));
        h.call(|c, _, config, ev| c.on_deadline(&at(start + interval, config), ev));
        assert_eq!(h.take_output(), [0x89, 0]);
        assert!(h.events.is_empty());
        assert_eq!(h.conn.deadline(&h.config), Some(start + interval * 2));
        h.call(|c, _, config, ev| c.on_deadline(&at(start + interval * 2, config), ev));
        assert_eq!(h.close_code_sent(), close::GOING_AWAY);
        assert_eq!(h.conn.phase(), Phase::Finishing);
        assert_eq!(h.events, [Event::Ended(Ending::PingTimeout), Event::Left]);
    }

    #[test]
    fn a_slow_request_gets_408() {
        let mut h = Harness::new(Config::default());
        h.feed(b"GET / HTTP/1.1\r\n");
        let deadline = h.conn.deadline(&h.config).unwrap();
        h.call(|c, _, config, ev| c.on_deadline(&at(deadline, config), ev));
        assert_eq!(h.events, [Event::Ended(Ending::Answered(408))]);
        assert!(h.take_output().starts_with(b"HTTP/1.1 408 "));
        assert_eq!(h.conn.phase(), Phase::Finishing);
    }

    #[test]
    fn an_idle_open_connection_holds_no_buffers() {
        let mut h = Harness::open();
        h.feed(&client_frame(0x81, b"hello"));
        h.take_output();
        assert_eq!(h.conn.buffer_capacity(), 0);
        let msg: Message = serde_json::from_slice(&h.broadcast.as_bytes()[2..]).unwrap();
        assert_eq!(msg.body, "hello");
        assert_ne!(msg.body, JOINED);
    }

    /// The bug of issue 10: a handshake and an ending in one read must still make a `Left`.
    #[test]
    fn every_ending_in_the_same_read_as_the_handshake_follows_joined_with_left() {
        let endings: Vec<(Vec<u8>, Ending)> = vec![
            (client_frame(0x88, &1000u16.to_be_bytes()), Ending::PeerLeft),
            (
                [client_frame(0x81, b"hi"), client_frame(0x88, &[])].concat(),
                Ending::PeerLeft,
            ),
            (
                [client_frame(0x89, b"p"), client_frame(0x88, &[])].concat(),
                Ending::PeerLeft,
            ),
            (
                client_frame(0x82, b"bin"),
                Ending::Failed(close::UNSUPPORTED_DATA),
            ),
            (vec![0x81, 0x00], Ending::Failed(close::PROTOCOL_ERROR)),
            (
                client_frame(0xC1, b"x"),
                Ending::Failed(close::PROTOCOL_ERROR),
            ),
            (
                client_frame(0x81, &[0xFF]),
                Ending::Failed(close::INVALID_PAYLOAD),
            ),
            (
                vec![0x81, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                Ending::Failed(close::TOO_BIG),
            ),
            (REQUEST.to_vec(), Ending::Failed(close::PROTOCOL_ERROR)),
        ];
        for (frames, ending) in endings {
            let stream = [REQUEST, &frames].concat();
            let said = usize::from(frames.starts_with(&client_frame(0x81, b"hi")));
            for piece in [stream.len(), 1] {
                let mut h = Harness::new(Config::default());
                for chunk in stream.chunks(piece) {
                    h.feed(chunk);
                }
                let mut expected = vec![Event::Joined(Version::V1)];
                expected.extend(std::iter::repeat_n(Event::Said(""), said));
                expected.extend([Event::Ended(ending), Event::Left]);
                assert_eq!(h.events, expected, "{frames:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn an_evicted_client_keeps_the_frame_under_way_then_gets_1013() {
        let mut h = Harness::open();
        let mut frames = Vec::new();
        for _ in 0..3 {
            frame::push_frame(&mut frames, OpCode::Text, &[b'x'; 1000]);
        }
        h.conn.queue(&frames);
        h.conn.sent(1500); // the second frame is under way
        let mut partial = vec![0x81, 0xFE, 0x9C, 0x40, 1, 2, 3, 4]; // 40,000 bytes, masked
        partial.extend_from_slice(&[b'y'; 20_000]);
        h.feed(&partial); // and half a frame in
        h.call(|c, now, _, ev| c.evict(now, ev));
        assert_eq!(h.events, [Event::Ended(Ending::Evicted), Event::Left]);
        let out = h.take_output();
        assert_eq!(
            &out[..2008 - 1500],
            &frames[1500..2008],
            "the rest of frame two"
        );
        let close = &out[2008 - 1500..];
        assert_eq!(close[0], 0x88);
        assert_eq!(&close[2..4], &close::TRY_AGAIN_LATER.to_be_bytes());
        assert_eq!(h.conn.phase(), Phase::Finishing);
        assert_eq!(h.conn.buffer_capacity(), 0, "nothing held once written");

        let mut h = Harness::new(Config::default());
        h.feed(&REQUEST[..REQUEST.len() - 10]);
        h.call(|c, now, _, ev| c.evict(now, ev));
        assert_eq!(h.events, [Event::Ended(Ending::Evicted)]);
        assert!(h.take_output().starts_with(b"HTTP/1.1 503 "));
    }

    #[test]
    fn left_is_reported_once_whatever_follows() {
        let mut h = Harness::open();
        h.call(|c, now, _, ev| c.abort(Ending::SlowConsumer, now, ev));
        h.call(|c, now, _, ev| c.peer_closed(now, ev));
        h.call(|c, now, _, ev| c.go_away(now, ev));
        assert_eq!(h.events, [Event::Ended(Ending::SlowConsumer), Event::Left]);
    }

    #[test]
    fn plain_http_and_echo_never_join() {
        let mut h = Harness::new(Config::default());
        h.feed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(h.events.is_empty() && h.conn.wants_metrics());
        h.call(|c, _, _, ev| c.answer_metrics(b"HTTP/1.1 200 OK\r\n\r\n", ev));
        assert_eq!(h.events, [Event::Ended(Ending::Answered(200))]);
        assert!(!h.conn.wants_metrics(), "answered once");
        let mut h = Harness::new(Config {
            echo: true,
            ..Config::default()
        });
        let request = String::from_utf8_lossy(REQUEST).replace("/ws", "/echo");
        h.feed(&[request.as_bytes(), &client_frame(0x81, b"e")].concat());
        h.call(|c, now, _, ev| c.peer_closed(now, ev));
        assert_eq!(h.events, [Event::Echoed, Event::Ended(Ending::PeerLeft)]);
    }

    /// A budget of `rate` messages a second, `burst` at once, and bytes as given.
    fn budgeted(rate: (u64, u64), bytes: Option<(u64, u64)>) -> Config {
        let bytes = bytes.and_then(|(per_second, burst)| Rate::new(per_second, burst));
        Config {
            fair_share: FairShare::new(Rate::new(rate.0, rate.1), bytes),
            ..Config::default()
        }
    }

    fn texts(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| client_frame(0x81, format!("m{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn a_client_past_its_budget_is_held_and_goes_on_at_its_deadline() {
        let mut h = Harness::open_with(budgeted((10, 3), None));
        let t0 = h.now;
        h.feed(&texts(5));
        let ms = Duration::from_millis;
        let said_then_held = [vec![Event::Said(""); 3], vec![Event::Throttled(ms(100))]];
        assert_eq!(h.events, said_then_held.concat());
        assert!(h.conn.is_held() && !h.conn.resumed());
        // The hold's end is the deadline, not the keepalive's.
        assert_eq!(h.conn.deadline(&h.config), Some(t0 + ms(100)));
        h.events.clear();
        h.call(|c, _, config, ev| c.on_deadline(&at(t0 + ms(50), config), ev));
        assert!(h.events.is_empty() && h.conn.is_held());
        // Each deadline lets one more message go (the rate), until the input is used up.
        for i in 1..=2 {
            h.call(|c, _, config, ev| c.on_deadline(&at(t0 + ms(100 * i), config), ev));
            assert_eq!(h.events, [Event::Said(""), Event::Throttled(ms(100))]);
            assert!(h.conn.is_held() && !h.conn.resumed());
            h.events.clear();
        }
        h.call(|c, _, config, ev| c.on_deadline(&at(t0 + ms(300), config), ev));
        assert!(h.events.is_empty() && !h.conn.is_held());
        assert!(
            h.conn.resumed(),
            "the loop is told to read the socket again"
        );
        assert!(!h.conn.resumed(), "once");
        assert_eq!(h.broadcast.as_bytes().len(), 5 * chat_frame_len("m0"));
        assert_eq!(h.conn.buffer_capacity(), 0, "nothing left waiting");
    }

    fn chat_frame_len(text: &str) -> usize {
        let mut frame = Vec::new();
        crate::message::push_chat_frame(&mut frame, text);
        frame.len()
    }

    #[test]
    fn a_held_client_is_not_pinged_or_dropped_for_the_silence_we_impose() {
        // A byte a second: a 125-byte message owes 125 s, over two ping intervals.
        let mut h = Harness::open_with(budgeted((1000, 1000), Some((1, 1))));
        let t0 = h.now;
        h.feed(&client_frame(0x81, &[b'a'; 125]));
        h.feed(&texts(1));
        let until = h.conn.deadline(&h.config).unwrap();
        assert_eq!(until, t0 + Duration::from_secs(125));
        h.events.clear();
        h.call(|c, _, config, ev| c.on_deadline(&at(until, config), ev));
        let held = Duration::from_secs(2);
        assert_eq!(h.events, [Event::Said(""), Event::Throttled(held)]);
        assert_eq!(h.conn.phase(), Phase::Open(Route::Chat));
        assert!(h.take_output().is_empty(), "no ping, no close");
    }

    #[test]
    fn shutting_down_ends_a_hold_and_the_echo_route_is_not_charged() {
        let mut h = Harness::open_with(budgeted((1, 1), None));
        h.feed(&texts(2));
        assert!(h.conn.is_held());
        h.call(|c, now, _, ev| c.go_away(now, ev));
        assert!(
            !h.conn.is_held() && h.conn.resumed(),
            "reads go on for the peer's Close"
        );
        h.feed(&client_frame(0x88, &1001u16.to_be_bytes()));
        assert_eq!(h.conn.phase(), Phase::Finishing);

        let mut h = Harness::new(Config {
            echo: true,
            ..budgeted((1, 1), None)
        });
        let request = String::from_utf8_lossy(REQUEST).replace("/ws", "/echo");
        h.feed(&[request.as_bytes(), &texts(50)].concat());
        assert!(!h.conn.is_held());
        assert_eq!(h.events, vec![Event::Echoed; 50]);
    }
}
