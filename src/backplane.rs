//! The Redis backplane: several mio-chat processes, one room.
//!
//! With `--redis`, a process does not put its clients' events straight into its room. It
//! publishes each one (in an [`Envelope`]) on a Redis channel, and puts into its room whatever
//! its subscription to that channel hands back: its own events and everyone else's, in the one
//! order Redis gives them. So every client of every process sees the same messages in the same
//! order, each once.
//!
//! Two Redis connections do it, both non-blocking sockets in the server's own `mio::Poll` (still
//! one thread): a subscriber, and a publisher that pipelines PUBLISH commands without waiting for
//! their replies. Until both are ready, and whenever either fails, the process is *degraded*: it
//! delivers its clients' events locally, as without `--redis`, and tries again after a capped
//! exponential backoff. Its own envelopes that Redis had not handed back when the link broke
//! (kept in order in `pending`) are then delivered locally, so a local message is never lost. And
//! none is delivered twice: each envelope carries its sequence number, and one of ours that Redis
//! hands back after it was delivered locally is recognised by it and skipped.
//!
//! The protocol (what the bytes mean) is in [`crate::redis`] and [`crate::envelope`]; this module
//! owns the sockets, the link states and the pending queue.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::envelope::{self, Envelope, Kind, Unusable};
use crate::metrics::BackplaneStats;
use crate::queue::OutQueue;
use crate::redis::{self, RedisUrl, Reply};
use crate::room::Announce;

/// A connection attempt that has not brought both links up by then has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause after a failure; it doubles with every failed attempt, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes read from the subscription at a time (the event loop checks its batch in between).
pub const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from the subscription in one turn before clients get their turn. The subscription
/// carries the whole room's traffic, so it gets far more than one client's 256 KiB: reading it
/// slower than the clients publish would only pile the difference up in Redis.
pub const READ_BUDGET: usize = 4 << 20;
/// After a failure, bytes of the subscription still read (what Redis sent before it broke).
const DRAIN_BUDGET: usize = 4 << 20;
/// A link that stayed up this long has recovered: the next failure is a new outage (logged, and
/// retried from the first backoff). A link that keeps failing sooner is one outage.
const STABLE: Duration = Duration::from_secs(10);
/// The largest reply the subscription may carry, at least: an envelope from a process with a
/// larger `--max-message-size` than ours is not a protocol error.
const MIN_MAX_INPUT: usize = 16 << 20;
/// Idle time after which the kernel probes a Redis connection, so a Redis host that vanished
/// without a reset is noticed in about 25 s rather than never.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// A local client that joined: its slab key and its id (keys are reused; ids are not).
pub type Member = (usize, u64);

/// An event for the local room, from the subscription (or from `pending` in an outage).
#[derive(Debug, PartialEq, Eq)]
pub enum Landing<'a> {
    /// Someone joined; `local` is set when it is one of this process's clients.
    Join {
        local: Option<Member>,
    },
    Leave,
    Message(&'a str),
}

/// One of our envelopes on its way through Redis.
#[derive(Debug)]
struct Pending {
    seq: u64,
    kind: Kind,
    joiner: Option<Member>,
    body: String,
}

impl Pending {
    fn landing(&self) -> Landing<'_> {
        landing(self.kind, self.joiner, &self.body)
    }
}

fn landing(kind: Kind, local: Option<Member>, body: &str) -> Landing<'_> {
    match kind {
        Kind::Join => Landing::Join { local },
        Kind::Leave => Landing::Leave,
        Kind::Message => Landing::Message(body),
    }
}

/// One TCP connection to Redis.
struct Link {
    token: Token,
    socket: Option<TcpStream>,
    /// TCP connected (the first WRITABLE event came without an error).
    connected: bool,
    input: Vec<u8>,
    output: OutQueue,
    /// WRITABLE interest is registered.
    writable: bool,
    /// Replies still owed to the AUTH and SELECT sent first.
    preamble_replies: usize,
}

impl Link {
    fn new(token: Token) -> Link {
        // Only the token survives a reconnection: everything else starts afresh.
        Link {
            token,
            socket: None,
            connected: false,
            input: Vec::new(),
            output: OutQueue::default(),
            writable: false,
            preamble_replies: 0,
        }
    }

    fn open(&mut self, addr: SocketAddr, registry: &Registry) -> io::Result<()> {
        let mut socket = TcpStream::connect(addr)?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE / 2)
            .with_retries(3);
        socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
        socket.set_nodelay(true)?;
        registry.register(
            &mut socket,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.socket = Some(socket);
        self.writable = true;
        Ok(())
    }

    fn close(&mut self, registry: &Registry) {
        if let Some(mut socket) = self.socket.take() {
            if let Err(e) = registry.deregister(&mut socket) {
                debug!("redis: deregister: {e}");
            }
        }
        *self = Link::new(self.token);
    }

    /// The first WRITABLE event of a non-blocking connect: did it work?
    fn check_connected(&mut self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        match socket.peer_addr() {
            Ok(_) => self.connected = true,
            // A spurious wake-up: the handshake is still going on; the next event will tell.
            Err(e) if e.kind() == ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Writes queued commands until done or the socket is full; WRITABLE is asked for only while
    /// bytes wait.
    fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        if !self.connected {
            return Ok(()); // the connect's WRITABLE event will flush
        }
        while !self.output.is_empty() {
            match socket.write(self.output.pending()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.output.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let want = !self.output.is_empty();
        if want != self.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(socket, self.token, interest)?;
            self.writable = want;
        }
        Ok(())
    }

    /// Reads one chunk into `input`; false when the socket has nothing more for now.
    fn read_chunk(&mut self) -> io::Result<bool> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(false);
        };
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let result = loop {
            match socket.read(&mut self.input[start..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                self.input.truncate(start);
                Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                ))
            }
            Ok(n) => {
                self.input.truncate(start + n);
                Ok(true)
            }
            Err(e) => {
                self.input.truncate(start);
                if e.kind() == ErrorKind::WouldBlock {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// What is wrong, for the log.
type Failure = String;

/// Both Redis links and what travels over them.
pub struct Backplane {
    url: RedisUrl,
    channel: String,
    node: String,
    subscriber: Link,
    publisher: Link,
    /// Both links are ready: events go through Redis.
    up: bool,
    subscribed: bool,
    /// While down: when to try again.
    retry_at: Option<Instant>,
    /// While connecting: when to give up.
    connect_deadline: Option<Instant>,
    backoff: Duration,
    /// Where Redis is: resolved at the first attempt that succeeds, then kept (resolving blocks
    /// the loop, so it is not done on every reconnection).
    addr: Option<SocketAddr>,
    /// When the links last came up (for [`STABLE`]).
    up_since: Option<Instant>,
    /// Our envelopes not yet handed back by the subscription, oldest first.
    pending: VecDeque<Pending>,
    /// Past this many bytes not yet written to Redis, Redis is not keeping up, and the link is
    /// dropped (as a client that stopped reading would be).
    max_unsent: usize,
    /// Past this many bytes unparsed from the subscription, a reply is too large to be ours.
    max_input: usize,
    next_seq: u64,
    /// Set when a publish fails outside an I/O handler; acted on at the next [`Backplane::repair`].
    broken: Option<Failure>,
    /// The current outage has been logged (once per outage, not once per attempt).
    outage_logged: bool,
    /// The subscription has more bytes than this turn's budget allowed to read.
    unread: bool,
    /// Reused for each envelope's JSON, and for the PUBLISH command around it.
    scratch: Vec<u8>,
    command: Vec<u8>,
    stats: BackplaneStats,
}

impl Backplane {
    /// A backplane for `url` (not yet connected: see [`Backplane::start`]).
    pub fn new(
        url: RedisUrl,
        channel: String,
        tokens: (Token, Token),
        max_unsent: usize,
        max_message_size: usize,
    ) -> Backplane {
        Backplane {
            url,
            channel,
            node: envelope::new_node_id(),
            subscriber: Link::new(tokens.0),
            publisher: Link::new(tokens.1),
            up: false,
            subscribed: false,
            retry_at: None,
            connect_deadline: None,
            backoff: FIRST_BACKOFF,
            addr: None,
            up_since: None,
            pending: VecDeque::new(),
            max_unsent,
            // A JSON string may escape each byte into six (\u0000).
            max_input: (max_message_size.saturating_mul(6) + READ_CHUNK).max(MIN_MAX_INPUT),
            next_seq: 0,
            broken: None,
            outage_logged: false,
            unread: false,
            scratch: Vec::new(),
            command: Vec::new(),
            stats: BackplaneStats::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Nothing published is waiting to be written (or there is nowhere to write it).
    pub fn is_drained(&self) -> bool {
        !self.up || self.publisher.output.is_empty()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn stats(&self) -> BackplaneStats {
        BackplaneStats {
            up: self.up,
            pending: self.pending.len() as u64,
            ..self.stats
        }
    }

    /// The earliest moment [`Backplane::on_deadline`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retry_at.or(self.connect_deadline)
    }

    /// The subscription still has bytes to read (the loop should not sleep).
    pub fn has_unread(&self) -> bool {
        self.unread
    }

    /// First connection attempt, at start.
    pub fn start(&mut self, registry: &Registry, now: Instant) {
        info!(
            "redis: joining channel {:?} at {} as node {}",
            self.channel,
            self.url.address(),
            self.node
        );
        self.connect(registry, now);
    }

    fn connect(&mut self, registry: &Registry, now: Instant) {
        self.retry_at = None;
        let Some(addr) = self.resolve(now) else {
            return;
        };
        debug!("redis: connecting to {addr}");
        let opened = self
            .subscriber
            .open(addr, registry)
            .and_then(|()| self.publisher.open(addr, registry));
        if let Err(e) = opened {
            self.subscriber.close(registry);
            self.publisher.close(registry);
            return self.down(format!("cannot connect to {addr}: {e}"), now);
        }
        let mut buf = Vec::new();
        self.subscriber.preamble_replies = self.url.write_preamble(&mut buf);
        redis::command(&mut buf, &[b"SUBSCRIBE", self.channel.as_bytes()]);
        self.subscriber.output.push(&buf);
        buf.clear();
        self.publisher.preamble_replies = self.url.write_preamble(&mut buf);
        self.publisher.output.push(&buf);
        self.connect_deadline = Some(now + CONNECT_TIMEOUT);
    }

    /// The address to connect to. A host name waits for the resolver here, in the loop: at start,
    /// and again only until it has once resolved.
    fn resolve(&mut self, now: Instant) -> Option<SocketAddr> {
        if self.addr.is_none() {
            match (self.url.host.as_str(), self.url.port).to_socket_addrs() {
                Ok(mut addrs) => self.addr = addrs.next(),
                Err(e) => {
                    self.down(format!("cannot resolve {}: {e}", self.url.address()), now);
                    return None;
                }
            }
            if self.addr.is_none() {
                self.down(format!("{} has no address", self.url.address()), now);
            }
        }
        self.addr
    }

    /// Both links closed (or never opened): schedule the next attempt, log the outage once.
    fn down(&mut self, why: Failure, now: Instant) {
        if self.up_since.take().is_some_and(|at| now >= at + STABLE) {
            // It had recovered for good: this is a new outage.
            self.backoff = FIRST_BACKOFF;
            self.outage_logged = false;
        }
        if self.outage_logged {
            debug!("redis: {why}; next attempt in {:?}", self.backoff);
        } else {
            warn!(
                "redis: {why}; serving this process's clients only, retrying every {:?} up to {:?}",
                self.backoff, MAX_BACKOFF
            );
            self.outage_logged = true;
        }
        self.up = false;
        self.subscribed = false;
        self.connect_deadline = None;
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Drops both links after a failure. What Redis had not handed back yet lands locally, in
    /// order: it would never come back on a new subscription.
    fn fail(
        &mut self,
        why: Failure,
        registry: &Registry,
        now: Instant,
        land: &mut dyn FnMut(Landing),
    ) {
        if self.up {
            self.stats.outages += 1;
        }
        self.drain_subscription(land);
        self.subscriber.close(registry);
        self.publisher.close(registry);
        self.unread = false;
        self.broken = None;
        for pending in self.pending.drain(..) {
            land(pending.landing());
        }
        self.down(why, now);
    }

    /// Lands what the subscription had already received (other processes' envelopes, and ours
    /// back) before the links close, so a failure of the publisher alone loses none of it.
    fn drain_subscription(&mut self, land: &mut dyn FnMut(Landing)) {
        if !self.subscribed {
            return;
        }
        self.unread = true;
        for _ in 0..DRAIN_BUDGET / READ_CHUNK {
            if !self.unread || self.read_chunk(land).is_err() {
                return;
            }
        }
    }

    /// Acts on a failure noticed outside an I/O handler (an overflowing publish queue).
    pub fn repair(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        if let Some(why) = self.broken.take() {
            self.fail(why, registry, now, land);
        }
    }

    /// Retries after the backoff; gives up on a connection attempt that takes too long.
    pub fn on_deadline(
        &mut self,
        registry: &Registry,
        now: Instant,
        land: &mut dyn FnMut(Landing),
    ) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.connect(registry, now);
        } else if self.connect_deadline.is_some_and(|at| at <= now) {
            let why = format!(
                "no answer from {} within {CONNECT_TIMEOUT:?}",
                self.url.address()
            );
            self.fail(why, registry, now, land);
        }
    }

    /// Handles a readiness event on one of the two links.
    pub fn on_event(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        registry: &Registry,
        now: Instant,
        land: &mut dyn FnMut(Landing),
    ) {
        if let Err(why) = self.handle(token, readable, writable, registry) {
            self.fail(why, registry, now, land);
        }
        self.check_up(now);
    }

    fn handle(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        registry: &Registry,
    ) -> Result<(), Failure> {
        let link = if token == self.subscriber.token {
            &mut self.subscriber
        } else {
            &mut self.publisher
        };
        if link.socket.is_none() {
            return Ok(()); // an event for a link closed earlier in this turn
        }
        if writable && !link.connected {
            link.check_connected()
                .map_err(|e| format!("cannot connect to {}: {e}", self.url.address()))?;
        }
        if writable || readable {
            link.flush(registry).map_err(|e| format!("write: {e}"))?;
        }
        if readable {
            if token == self.subscriber.token {
                // Read by the event loop through `read_more`, a chunk at a time.
                self.unread = true;
            } else {
                self.read_publisher_replies()?;
            }
        }
        Ok(())
    }

    /// Reads replies to PUBLISH (counts of subscribers reached) and to the preamble.
    fn read_publisher_replies(&mut self) -> Result<(), Failure> {
        while self
            .publisher
            .read_chunk()
            .map_err(|e| format!("publisher: {e}"))?
        {
            let mut used = 0;
            while let Some((reply, n)) = redis::next_reply(&self.publisher.input[used..])
                .map_err(|e| format!("publisher: {e}"))?
            {
                used += n;
                match reply {
                    Reply::Integer(_) | Reply::Status => {
                        self.publisher.preamble_replies =
                            self.publisher.preamble_replies.saturating_sub(1);
                    }
                    Reply::Error(e) => return Err(format!("Redis refused a command: {e}")),
                    other => return Err(format!("publisher: unexpected reply {other:?}")),
                }
            }
            self.publisher.input.drain(..used);
        }
        Ok(())
    }

    /// Reads one chunk of the subscription and lands the envelopes in it (the event loop calls
    /// this while [`Backplane::has_unread`], checking its batch in between).
    pub fn read_more(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        if let Err(why) = self.read_chunk(land) {
            self.fail(why, registry, now, land);
        }
        self.check_up(now);
    }

    fn read_chunk(&mut self, land: &mut dyn FnMut(Landing)) -> Result<(), Failure> {
        if !self.unread {
            return Ok(());
        }
        let more = self
            .subscriber
            .read_chunk()
            .map_err(|e| format!("subscriber: {e}"))?;
        self.unread = more;
        let mut used = 0;
        while let Some((reply, n)) = redis::next_reply(&self.subscriber.input[used..])
            .map_err(|e| format!("subscriber: {e}"))?
        {
            let at = used;
            used += n;
            match reply {
                Reply::Message { payload, .. } => {
                    // `receive` needs all of `self`, so the buffer is lent out for the call.
                    let payload = at + payload.start..at + payload.end;
                    let bytes = std::mem::take(&mut self.subscriber.input);
                    self.receive(&bytes[payload], land);
                    self.subscriber.input = bytes;
                }
                Reply::Subscribed { .. } => self.subscribed = true,
                Reply::Status if self.subscriber.preamble_replies > 0 => {
                    self.subscriber.preamble_replies -= 1;
                }
                Reply::Error(e) => return Err(format!("Redis refused to subscribe: {e}")),
                other => return Err(format!("subscriber: unexpected reply {other:?}")),
            }
        }
        self.subscriber.input.drain(..used);
        if self.subscriber.input.len() > self.max_input {
            return Err(format!(
                "subscriber: a reply passed {} bytes without ending",
                self.max_input
            ));
        }
        Ok(())
    }

    /// One envelope from the channel.
    fn receive(&mut self, payload: &[u8], land: &mut dyn FnMut(Landing)) {
        let envelope = match Envelope::parse(payload) {
            Ok(envelope) => envelope,
            Err(unusable) => {
                // Warned about once; counted always (a flood of them must not flood the log).
                self.stats.unusable += 1;
                let why = match unusable {
                    Unusable::Version(v) => {
                        format!(
                            "an envelope of version {v} (this build reads {})",
                            envelope::VERSION
                        )
                    }
                    Unusable::Malformed(e) => format!("a message that is not an envelope ({e})"),
                };
                if self.stats.unusable == 1 {
                    warn!("redis: skipped {why}; further ones are counted in /metrics");
                } else {
                    debug!("redis: skipped {why}");
                }
                return;
            }
        };
        if envelope.node != self.node {
            self.stats.received += 1;
            return land(landing(envelope.kind, None, &envelope.body));
        }
        // Ours, back from Redis: everything before it in `pending` went out before it, so
        // anything older still there was lost on the way (it lands now, so nobody here misses it).
        while let Some(front) = self.pending.front() {
            if front.seq > envelope.seq {
                return; // already landed: a duplicate
            }
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            self.stats.received += 1;
            if pending.seq == envelope.seq {
                return land(landing(envelope.kind, pending.joiner, &envelope.body));
            }
            debug!(
                "redis: envelope {} never came back; delivered locally",
                pending.seq
            );
            land(pending.landing());
        }
    }

    /// Publishes one event of this process's clients (only while [up](Backplane::is_up)).
    pub fn publish(&mut self, kind: Kind, body: &str, joiner: Option<Member>) {
        self.next_seq += 1;
        self.scratch.clear();
        Envelope {
            v: envelope::VERSION,
            node: self.node.as_str().into(),
            seq: self.next_seq,
            kind,
            body: body.into(),
        }
        .write_to(&mut self.scratch);
        self.command.clear();
        redis::publish(&mut self.command, self.channel.as_bytes(), &self.scratch);
        self.publisher.output.push(&self.command); // `push` reuses the space already written
        self.pending.push_back(Pending {
            seq: self.next_seq,
            kind,
            joiner,
            body: body.to_string(),
        });
        self.stats.published += 1;
        if self.publisher.output.len() > self.max_unsent && self.broken.is_none() {
            self.broken = Some(format!(
                "more than {} bytes published and not yet written: Redis is not keeping up",
                self.max_unsent
            ));
        }
    }

    /// Writes what was published (at the end of a turn, like a client's flush) and acts on a
    /// failure noticed while publishing.
    pub fn flush(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        if self.publisher.output.is_empty() || self.broken.is_some() {
            return self.repair(registry, now, land);
        }
        if let Err(e) = self.publisher.flush(registry) {
            self.fail(format!("publisher: write: {e}"), registry, now, land);
        }
    }

    /// Both links ready (subscribed; publisher connected and its AUTH/SELECT answered): up.
    fn check_up(&mut self, now: Instant) {
        let publisher_ready = self.publisher.connected && self.publisher.preamble_replies == 0;
        if self.up || !self.subscribed || !publisher_ready {
            return;
        }
        self.up = true;
        self.up_since = Some(now);
        self.connect_deadline = None;
        if self.outage_logged {
            info!("redis: back; the room spans every process again");
        } else {
            info!(
                "redis: subscribed to {:?}; the room spans every process",
                self.channel
            );
        }
    }
}

/// Where a client's events go while the backplane is up: out to Redis, and into the room only
/// when they come back (see [`Backplane::publish`]).
pub struct Relay<'a> {
    backplane: &'a mut Backplane,
    /// The client whose bytes are being handled.
    client: Member,
}

impl<'a> Relay<'a> {
    pub fn new(backplane: &'a mut Backplane, client: Member) -> Relay<'a> {
        Relay { backplane, client }
    }
}

impl Announce for Relay<'_> {
    fn joined(&mut self) {
        self.backplane.publish(Kind::Join, "", Some(self.client));
    }

    fn left(&mut self) {
        self.backplane.publish(Kind::Leave, "", None);
    }

    fn said(&mut self, text: &str) {
        self.backplane.publish(Kind::Message, text, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backplane() -> Backplane {
        let url = RedisUrl::parse("redis://127.0.0.1:1").expect("url");
        Backplane::new(url, "room".into(), (Token(1), Token(2)), 1 << 20, 1 << 16)
    }

    /// What landed, in a form tests can compare.
    fn landed(landing: Landing) -> String {
        match landing {
            Landing::Join {
                local: Some((key, id)),
            } => format!("join {key}/{id}"),
            Landing::Join { local: None } => "join".into(),
            Landing::Leave => "leave".into(),
            Landing::Message(text) => format!("say {text}"),
        }
    }

    fn envelope(node: &str, seq: u64, kind: Kind, body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Envelope {
            v: envelope::VERSION,
            node: node.into(),
            seq,
            kind,
            body: body.into(),
        }
        .write_to(&mut out);
        out
    }

    fn receive(b: &mut Backplane, payload: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        b.receive(payload, &mut |l| got.push(landed(l)));
        got
    }

    #[test]
    fn publishing_queues_pipelined_commands() {
        let mut b = backplane();
        b.publish(Kind::Join, "", Some((3, 9)));
        b.publish(Kind::Message, "hi", None);
        let sent = String::from_utf8_lossy(b.publisher.output.pending()).into_owned();
        assert_eq!(sent.matches("PUBLISH").count(), 2);
        assert!(sent.contains(r#""seq":1,"kind":"join""#), "{sent}");
        assert!(
            sent.contains(r#""seq":2,"kind":"message","body":"hi""#),
            "{sent}"
        );
        assert_eq!(b.stats().pending, 2);
    }

    #[test]
    fn our_envelopes_land_when_they_come_back_with_their_joiner() {
        let mut b = backplane();
        let node = b.node().to_string();
        b.publish(Kind::Join, "", Some((3, 9)));
        b.publish(Kind::Message, "hi", None);
        assert_eq!(
            receive(&mut b, &envelope("other", 5, Kind::Join, "")),
            ["join"]
        );
        assert_eq!(
            receive(&mut b, &envelope(&node, 1, Kind::Join, "")),
            ["join 3/9"]
        );
        assert_eq!(
            receive(&mut b, &envelope(&node, 2, Kind::Message, "hi")),
            ["say hi"]
        );
        assert_eq!(b.stats().pending, 0);
        assert!(receive(&mut b, &envelope(&node, 2, Kind::Message, "hi")).is_empty());
    }

    #[test]
    fn an_envelope_that_never_came_back_lands_before_the_next_one() {
        let mut b = backplane();
        let node = b.node().to_string();
        b.publish(Kind::Message, "one", None);
        b.publish(Kind::Message, "two", None);
        assert_eq!(
            receive(&mut b, &envelope(&node, 2, Kind::Message, "two")),
            ["say one", "say two"]
        );
        assert!(receive(&mut b, &envelope(&node, 1, Kind::Message, "one")).is_empty());
    }

    #[test]
    fn an_outage_lands_everything_pending_in_order_once() {
        let mut b = backplane();
        let poll = mio::Poll::new().expect("poll");
        b.publish(Kind::Join, "", Some((1, 1)));
        b.publish(Kind::Message, "in flight", None);
        b.publish(Kind::Leave, "", None);
        let mut got = Vec::new();
        let now = Instant::now();
        b.fail("test".into(), poll.registry(), now, &mut |l| {
            got.push(landed(l))
        });
        assert_eq!(got, ["join 1/1", "say in flight", "leave"]);
        assert!(!b.is_up());
        assert_eq!(b.stats().pending, 0);
        assert_eq!(b.next_deadline(), Some(now + FIRST_BACKOFF));
        b.fail("again".into(), poll.registry(), now, &mut |_| {
            panic!("nothing pending")
        });
        assert_eq!(b.next_deadline(), Some(now + FIRST_BACKOFF * 2));
    }

    #[test]
    fn a_publish_queue_past_its_bound_breaks_the_link() {
        let url = RedisUrl::parse("redis://127.0.0.1:1").expect("url");
        let mut b = Backplane::new(url, "room".into(), (Token(1), Token(2)), 1000, 1 << 16);
        b.publish(Kind::Message, &"x".repeat(600), None);
        assert!(b.broken.is_none());
        b.publish(Kind::Message, &"y".repeat(600), None);
        assert!(b.broken.is_some());
        let poll = mio::Poll::new().expect("poll");
        let mut got = Vec::new();
        b.repair(poll.registry(), Instant::now(), &mut |l| {
            got.push(landed(l))
        });
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn foreign_payloads_are_skipped_and_counted() {
        let mut b = backplane();
        assert!(receive(&mut b, b"not json").is_empty());
        assert!(receive(&mut b, br#"{"v":9,"node":"x","seq":1,"kind":"join"}"#).is_empty());
        assert_eq!(b.stats().unusable, 2);
    }
}
