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
//! The parts: `link.rs` is one socket to Redis; `resolve.rs` where Redis is (its name resolved
//! at every attempt, without blocking); `ledger.rs` the pure bookkeeping (sequence
//! numbers, the pending envelopes, what each envelope from the channel means); `peers.rs` which
//! other processes are alive (heartbeats and verdicts, see `presence.rs`); `outage.rs` the
//! pure state and outage rules (backoff, a new outage or the same one, connect timeout). This
//! file ties them to the two sockets (and, while a name is looked up, a UDP socket). What the
//! bytes mean is in [`crate::redis`] and [`crate::envelope`].

mod ledger;
mod link;
pub mod outage;
pub mod peers;
pub mod resolve;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::envelope::{self, Kind};
use crate::metrics::BackplaneStats;
pub use crate::nonblocking::READ_CHUNK;
use crate::presence::{Landing, Member, Publish};
use crate::redis::{self, Limits, RedisUrl, Reply};
pub use ledger::Ledger;
use link::Link;
use outage::{Due, Liveness, Outages, Recovery, MAX_BACKOFF};
use resolve::{Datagram, Lookup, ResolverConfig, Start, Step};

/// Bytes read from the subscription in one turn before clients get their turn. The subscription
/// carries the whole room's traffic, so it gets far more than one client's 256 KiB: reading it
/// slower than the clients publish would only pile the difference up in Redis.
pub const READ_BUDGET: usize = 4 << 20;
/// After a failure, bytes of the subscription still read (what Redis sent before it broke).
const DRAIN_BUDGET: usize = 4 << 20;
/// Bytes of replies read from the publisher link in one turn (it only ever gets short replies
/// to PUBLISH; a Redis that floods it must not hold the loop).
const PUBLISHER_READ_BUDGET: usize = 1 << 20;
/// The largest reply the subscription may carry, at least: an envelope from a process with a
/// larger `--max-message-size` than ours is not a protocol error.
const MIN_MAX_INPUT: usize = 16 << 20;
/// Datagrams read from the resolver's socket in one event at most. Only one answer is awaited,
/// and the socket is connected (only the name server's address gets through): more than this
/// many is a flood, and the lookup is given up (a new socket, on a new port,
/// comes with the next attempt).
const MAX_DATAGRAMS: usize = 64;

/// What is wrong, for the log.
type Failure = String;

/// What the backplane is told at start (from the flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--redis-max-unsent`: bytes of commands the socket may refuse before Redis is judged slow.
    pub max_unsent: usize,
    /// `--max-message-size`: the subscription's replies are bounded from it.
    pub max_message_size: usize,
    /// `--redis-timeout`: how long our envelopes, and answers to PING, may take to come back.
    pub timeout: Duration,
    /// `--node-timeout`: how long another process may be silent before it is declared gone.
    pub node_timeout: Duration,
}

/// Both Redis links and what travels over them.
pub struct Backplane {
    url: RedisUrl,
    channel: String,
    subscriber: Link,
    publisher: Link,
    ledger: Ledger,
    outages: Outages,
    /// Where Redis was found last (resolved again at every attempt: a change is logged).
    addr: Option<SocketAddr>,
    /// Which files say how names resolve (see [`resolve`]).
    resolver: ResolverConfig,
    /// The DNS lookup under way, with its UDP socket in the loop (registered under
    /// `resolver_token`); until it ends there are no links.
    lookup: Option<(Lookup, UdpSocket)>,
    resolver_token: Token,
    /// Past this many bytes of commands that the Redis socket has refused (not what one turn
    /// produced: a burst is written first), Redis is not keeping up, and the links are dropped,
    /// as a client that stopped reading would be (`--redis-max-unsent`).
    max_unsent: usize,
    /// Whether Redis still answers (see [`Liveness`]).
    liveness: Liveness,
    /// The subscription has more bytes than this turn's budget allowed to read.
    unread: bool,
    /// The publisher link too (its replies are read a budget at a time as well).
    publisher_unread: bool,
    /// Bytes of the publisher's replies still to be read this turn (reset at each flush).
    publisher_budget: usize,
    /// The PUBLISH command around each envelope (reused).
    command: Vec<u8>,
}

impl Backplane {
    /// A backplane for `url` (not yet connected: see [`Backplane::start`]).
    pub fn new(
        url: RedisUrl,
        channel: String,
        tokens: (Token, Token, Token),
        settings: Settings,
    ) -> Backplane {
        // A JSON string may escape each byte into six (\u0000); a larger `--max-message-size`
        // on another process is not a protocol error up to [`MIN_MAX_INPUT`].
        let max_payload = settings
            .max_message_size
            .saturating_mul(6)
            .max(MIN_MAX_INPUT);
        Backplane {
            url,
            channel,
            subscriber: Link::new(tokens.0, Limits::for_payloads(max_payload)),
            publisher: Link::new(tokens.1, Limits::COMMAND_REPLIES),
            ledger: {
                let mut ledger = Ledger::new(envelope::new_node_id(), settings.max_message_size);
                ledger.peers = peers::Peers::new(settings.node_timeout);
                ledger
            },
            outages: Outages::default(),
            addr: None,
            resolver: ResolverConfig::from_env(),
            lookup: None,
            resolver_token: tokens.2,
            max_unsent: settings.max_unsent,
            liveness: Liveness::new(settings.timeout, Instant::now()),
            unread: false,
            publisher_unread: false,
            publisher_budget: PUBLISHER_READ_BUDGET,
            command: Vec::new(),
        }
    }

    /// Other processes heard through Redis and not declared gone.
    pub fn peers(&self) -> usize {
        self.ledger.peers.len()
    }

    /// Verdicts this process published.
    pub fn verdicts(&self) -> u64 {
        self.ledger.peers.verdicts
    }

    pub fn is_up(&self) -> bool {
        self.outages.is_up()
    }

    /// Nothing published is waiting to be written (or there is nowhere to write it).
    pub fn is_drained(&self) -> bool {
        !self.is_up() || self.publisher.output.is_empty()
    }

    pub fn node(&self) -> &str {
        self.ledger.node()
    }

    pub fn stats(&self) -> BackplaneStats {
        BackplaneStats {
            up: self.is_up(),
            ..self.ledger.stats()
        }
    }

    /// The earliest moment [`Backplane::on_deadline`] has something to do: a retry, giving up
    /// on an attempt, or (while up) a PING to send or an answer overdue.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some((lookup, _)) = &self.lookup {
            return Some(lookup.deadline());
        }
        match self.is_up() {
            true => {
                let redis = self.liveness.next_deadline(self.ledger.oldest_pending());
                Some(redis.min(self.ledger.peers.next_deadline()))
            }
            false => self.outages.next_deadline(),
        }
    }

    /// A link still has bytes to read (the loop should not sleep).
    pub fn has_unread(&self) -> bool {
        self.unread || self.publisher_unread
    }

    /// First connection attempt, at start.
    pub fn start(&mut self, registry: &Registry, now: Instant) {
        info!(
            "redis: joining channel {:?} at {} as node {}",
            self.channel,
            self.url.address(),
            self.node()
        );
        self.connect(registry, now);
    }

    /// An attempt: find where Redis is now, then open both links there.
    fn connect(&mut self, registry: &Registry, now: Instant) {
        self.take_lookup(registry);
        match resolve::start(&self.url.host, &self.resolver, now) {
            Start::Found(addr) => self.open_links(addr, registry, now),
            Start::Query(mut lookup, send) => {
                debug!("redis: asking {} where {} is", send.to, lookup.asking());
                if let Some(last) = self.addr {
                    lookup.prefer(last.ip());
                }
                self.lookup_step(Step::Send(send), Some(*lookup), registry, now);
            }
            Start::Failed(why) => {
                self.down(format!("cannot resolve {}: {why}", self.url.host), now)
            }
        }
    }

    /// Opens both links to `found` (its port is 0: the URL's goes in).
    fn open_links(&mut self, found: SocketAddr, registry: &Registry, now: Instant) {
        let mut addr = found;
        addr.set_port(self.url.port);
        match self.addr.replace(addr) {
            Some(old) if old != addr => {
                info!("redis: {} is now at {addr} (was {old})", self.url.host)
            }
            _ => {}
        }
        debug!("redis: connecting to {addr}");
        let tls = self.url.tls.as_ref();
        let opened = self
            .subscriber
            .open(addr, tls, registry)
            .and_then(|()| self.publisher.open(addr, tls, registry));
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
        self.outages.connecting(now);
    }

    /// Acts on what the lookup asked for. `fresh` is a lookup just started; otherwise the one
    /// in `self.lookup` goes on (or ends).
    fn lookup_step(
        &mut self,
        step: Step,
        fresh: Option<Lookup>,
        registry: &Registry,
        now: Instant,
    ) {
        let lookup = fresh.or_else(|| self.take_lookup(registry));
        match (step, lookup) {
            (Step::Send(send), Some(lookup)) => self.send_query(lookup, send, registry, now),
            (Step::Send(_), None) => {} // no lookup to go on with (cannot happen)
            (Step::Found(ip), _) => self.open_links(SocketAddr::new(ip, 0), registry, now),
            (Step::Failed(why), _) => {
                self.down(format!("cannot resolve {}: {why}", self.url.host), now)
            }
        }
    }

    /// Sends one try of the lookup's query from a UDP socket of its own, in the loop. A try
    /// that cannot even be sent (no route to that name server, no socket to be had) is over at
    /// once, as a refused one is: the next try goes out now rather than after a deadline
    /// nothing can answer (the tries are bounded, so this ends).
    fn send_query(
        &mut self,
        mut lookup: Lookup,
        mut send: Datagram,
        registry: &Registry,
        now: Instant,
    ) {
        loop {
            match self.query_socket(&send, registry) {
                Ok(socket) => return self.lookup = Some((lookup, socket)),
                Err(e) => debug!("redis: query to {} not sent: {e}", send.to),
            }
            match lookup.on_error(now) {
                Step::Send(next) => send = next,
                step => return self.lookup_step(step, None, registry, now),
            }
        }
    }

    /// A UDP socket connected to the name server, with the query sent, in the poll: a fresh
    /// ephemeral port (a forger must guess it as well as the query id), of the server's family.
    /// Connected, so that the kernel drops datagrams from anyone else and reports the server's
    /// ICMP "port unreachable" as an error (an unconnected socket never sees it on Linux, and
    /// each try would wait out its whole deadline).
    fn query_socket(&self, send: &Datagram, registry: &Registry) -> std::io::Result<UdpSocket> {
        let any: SocketAddr = match send.to {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut socket = UdpSocket::bind(any)?;
        socket.connect(send.to)?;
        socket.send(&send.bytes)?;
        // Registered last, so that no failure drops a socket still in the poll (an error that
        // came in between is reported by the registration itself: epoll checks at once).
        registry.register(&mut socket, self.resolver_token, Interest::READABLE)?;
        Ok(socket)
    }

    /// Ends the lookup's try: its socket leaves the poll.
    fn take_lookup(&mut self, registry: &Registry) -> Option<Lookup> {
        let (lookup, mut socket) = self.lookup.take()?;
        if let Err(e) = registry.deregister(&mut socket) {
            debug!("redis: deregister the resolver socket: {e}");
        }
        Some(lookup)
    }

    /// The resolver's socket is readable: the datagrams until `WouldBlock` (edge-triggered),
    /// each offered to the lookup, within [`MAX_DATAGRAMS`].
    fn read_answers(&mut self, registry: &Registry, now: Instant) {
        let mut buf = [0u8; resolve::MAX_DATAGRAM];
        for _ in 0..MAX_DATAGRAMS {
            let Some((lookup, socket)) = self.lookup.as_mut() else {
                return;
            };
            let step = match socket.recv_from(&mut buf) {
                Ok((n, from)) => lookup.on_datagram(from, &buf[..n], now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => None,
                Err(e) => {
                    debug!("redis: name server: {e}");
                    Some(lookup.on_error(now))
                }
            };
            if let Some(step) = step {
                self.lookup_step(step, None, registry, now);
            }
        }
        if self.lookup.is_some() {
            self.lookup_step(
                Step::Failed("flooded with datagrams".into()),
                None,
                registry,
                now,
            );
        }
    }

    /// Both links closed (or never opened): schedule the next attempt, log the outage once.
    fn down(&mut self, why: Failure, now: Instant) {
        let failure = self.outages.down(now);
        if failure.was_up {
            self.ledger.count_outage();
        }
        if failure.new_outage {
            warn!(
                "redis: {why}; serving this process's clients only, retrying every {:?} up to {:?}",
                failure.retry_in, MAX_BACKOFF
            );
        } else {
            debug!("redis: {why}; next attempt in {:?}", failure.retry_in);
        }
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
        self.drain_subscription(land, now);
        self.subscriber.close(registry);
        self.publisher.close(registry);
        self.unread = false;
        self.publisher_unread = false;
        self.ledger.land_pending(land);
        self.down(why, now);
    }

    /// Lands what the subscription had already received (other processes' envelopes, and ours
    /// back) before the links close, so a failure of the publisher alone loses none of it.
    fn drain_subscription(&mut self, land: &mut dyn FnMut(Landing), now: Instant) {
        if !self.subscriber.subscribed {
            return;
        }
        self.unread = true;
        for _ in 0..DRAIN_BUDGET / READ_CHUNK {
            if !self.unread || self.read_chunk(land, now).is_err() {
                return;
            }
        }
    }

    /// Retries after the backoff; gives up on a connection attempt that takes too long.
    pub fn on_deadline(
        &mut self,
        registry: &Registry,
        now: Instant,
        land: &mut dyn FnMut(Landing),
    ) {
        if self.is_up() {
            let (command, publisher, channel) =
                (&mut self.command, &mut self.publisher, &self.channel);
            self.ledger.keep_alive(now, &mut |envelope| {
                queue_publish(command, publisher, channel, envelope)
            });
            return self.check_alive(registry, now, land);
        }
        if let Some((lookup, _)) = self.lookup.as_mut() {
            if let Some(step) = lookup.on_timeout(now) {
                self.lookup_step(step, None, registry, now);
            }
            return;
        }
        match self.outages.due(now) {
            Some(Due::Retry) => self.connect(registry, now),
            Some(Due::GiveUp) => {
                let why = format!(
                    "no answer from {} within {:?}",
                    self.url.address(),
                    outage::CONNECT_TIMEOUT
                );
                self.fail(why, registry, now, land);
            }
            None => {}
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
        if token == self.resolver_token {
            return self.read_answers(registry, now);
        }
        if let Err(why) = self.handle(token, readable, writable, registry) {
            self.fail(why, registry, now, land);
        }
        self.check_up(now, land);
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
        if !link.is_open() {
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
            // Read by the event loop through `read_more`, a chunk at a time.
            if token == self.subscriber.token {
                self.unread = true;
            } else {
                self.publisher_unread = true;
            }
        }
        Ok(())
    }

    /// Reads replies to PUBLISH (counts of subscribers reached) and to the preamble, up to the
    /// turn's budget.
    fn read_publisher_replies(&mut self) -> Result<(), Failure> {
        self.publisher_unread = false;
        while self.publisher_budget > 0 {
            self.publisher_budget = self.publisher_budget.saturating_sub(READ_CHUNK);
            let link = &mut self.publisher;
            if !link.read_chunk().map_err(|e| format!("publisher: {e}"))? {
                return Ok(());
            }
            let mut used = 0;
            while let Some((reply, n)) = link
                .next_reply(used)
                .map_err(|e| format!("publisher: {e}"))?
            {
                used += n;
                match reply {
                    Reply::Integer(_) | Reply::Status => {
                        link.preamble_replies = link.preamble_replies.saturating_sub(1);
                    }
                    Reply::Error(e) => return Err(format!("Redis refused a command: {e}")),
                    other => return Err(format!("publisher: unexpected reply {other:?}")),
                }
            }
            link.input.drain(..used);
        }
        self.publisher_unread = true; // more next turn: edge-triggered, no new event will come
        Ok(())
    }

    /// Reads one chunk of the subscription and lands the envelopes in it, and the publisher's
    /// replies (the event loop calls this while [`Backplane::has_unread`], checking its batch in
    /// between).
    pub fn read_more(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        let read = match self.publisher_unread {
            true => self.read_publisher_replies(),
            false => Ok(()),
        };
        if let Err(why) = read.and_then(|()| self.read_chunk(land, now)) {
            self.fail(why, registry, now, land);
        }
        self.check_up(now, land);
    }

    fn read_chunk(&mut self, land: &mut dyn FnMut(Landing), now: Instant) -> Result<(), Failure> {
        if !self.unread {
            return Ok(());
        }
        let more = self
            .subscriber
            .read_chunk()
            .map_err(|e| format!("subscriber: {e}"))?;
        self.unread = more;
        let mut used = 0;
        let landed = self.land_replies(&mut used, land, now);
        // Trimmed even after a bad reply: what landed before it must not land again when the
        // failure drains the subscription.
        self.subscriber.input.drain(..used);
        landed
    }

    /// Acts on each whole reply in the subscriber's input; `used` follows what was taken.
    fn land_replies(
        &mut self,
        used: &mut usize,
        land: &mut dyn FnMut(Landing),
        now: Instant,
    ) -> Result<(), Failure> {
        while let Some((reply, n)) = self
            .subscriber
            .next_reply(*used)
            .map_err(|e| format!("subscriber: {e}"))?
        {
            let at = *used;
            *used += n;
            self.on_subscriber_reply(reply, at, land, now)?;
        }
        Ok(())
    }

    fn on_subscriber_reply(
        &mut self,
        reply: Reply,
        at: usize,
        land: &mut dyn FnMut(Landing),
        now: Instant,
    ) -> Result<(), Failure> {
        // Replies come in order: once subscribed, an error can only answer our PING (a user
        // without +ping is refused it), and a refusal proves Redis alive as well as a pong.
        let answers_ping = self.liveness.awaiting_pong() && self.subscriber.subscribed;
        self.liveness.heard(now);
        match reply {
            Reply::Message { payload, .. } => {
                let payload = at + payload.start..at + payload.end;
                self.ledger
                    .receive(&self.subscriber.input[payload], now, land);
            }
            Reply::Subscribed { channel } if channel == self.channel.as_bytes() => {
                self.subscriber.subscribed = true;
            }
            Reply::Subscribed { channel } => {
                let channel = String::from_utf8_lossy(&channel);
                return Err(format!(
                    "subscriber: confirmed {channel:?}, not our channel"
                ));
            }
            Reply::Pong => {}
            Reply::Status if self.subscriber.preamble_replies > 0 => {
                self.subscriber.preamble_replies -= 1;
            }
            Reply::Error(e) if answers_ping => debug!("redis: PING refused ({e}); Redis answers"),
            Reply::Error(e) => return Err(format!("Redis refused to subscribe: {e}")),
            other => return Err(format!("subscriber: unexpected reply {other:?}")),
        }
        Ok(())
    }

    /// While up: fails the links if Redis stopped answering, and probes a quiet subscription.
    /// What the subscription already holds is read first: an envelope waiting in our own socket
    /// is not Redis's delay.
    fn check_alive(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        if self
            .liveness
            .overdue(now, self.ledger.oldest_pending())
            .is_some()
        {
            self.unread = true;
            let read = self.read_chunk(land, now);
            if let Some(what) = self.liveness.overdue(now, self.ledger.oldest_pending()) {
                let why = read.err().unwrap_or_else(|| {
                    let timeout = self.liveness.timeout();
                    format!("{what} within {timeout:?} (--redis-timeout)")
                });
                return self.fail(why, registry, now, land);
            }
        }
        if self.liveness.should_ping(now) {
            self.liveness.pinged(now);
            let mut ping = Vec::new();
            redis::ping(&mut ping);
            self.subscriber.output.push(&ping);
            if let Err(e) = self.subscriber.flush(registry) {
                self.fail(format!("subscriber: write: {e}"), registry, now, land);
            }
        }
    }

    /// Publishes one event about `member`, one of this process's clients (only while
    /// [up](Backplane::is_up)).
    pub fn publish(&mut self, kind: Kind, body: &str, member: Member) {
        let envelope = self.ledger.publish(kind, body, member, Instant::now());
        queue_publish(
            &mut self.command,
            &mut self.publisher,
            &self.channel,
            envelope,
        );
    }

    /// Writes what was published (at the end of a turn, like a client's flush), then judges
    /// Redis by what its socket refused, like a client.
    pub fn flush(&mut self, registry: &Registry, now: Instant, land: &mut dyn FnMut(Landing)) {
        self.publisher_budget = PUBLISHER_READ_BUDGET; // a new turn
        if let Err(e) = self.publisher.flush(registry) {
            return self.fail(format!("publisher: write: {e}"), registry, now, land);
        }
        let unsent = self.publisher.output.len();
        if unsent > self.max_unsent {
            let why = format!(
                "Redis has not taken {unsent} bytes of commands (--redis-max-unsent {}): \
                 it is not keeping up",
                self.max_unsent
            );
            return self.fail(why, registry, now, land);
        }
        // Taken but not handed back counts as well: a Redis that swallows everything must not
        // make this process hold it all until the deadline.
        let held = self.ledger.pending_bytes();
        if held > self.max_unsent {
            let why = format!(
                "Redis holds {held} bytes of our envelopes without handing them back \
                 (--redis-max-unsent {})",
                self.max_unsent
            );
            self.fail(why, registry, now, land);
        }
    }

    /// Both links ready (subscribed; publisher connected and its AUTH/SELECT answered): up.
    fn check_up(&mut self, now: Instant, land: &mut dyn FnMut(Landing)) {
        let publisher_ready = self.publisher.connected && self.publisher.preamble_replies == 0;
        if self.is_up() || !self.subscriber.subscribed || !publisher_ready {
            return;
        }
        self.liveness.reset(now);
        let recovery = self.outages.up(now);
        let (command, publisher, channel) = (&mut self.command, &mut self.publisher, &self.channel);
        self.ledger.up(now, &mut |envelope| {
            queue_publish(command, publisher, channel, envelope)
        });
        match recovery {
            Recovery::First => {
                info!(
                    "redis: subscribed to {:?}; the room spans every process",
                    self.channel
                );
                // Clients that joined before Redis was there are announced to the others now.
                return land(Landing::Back);
            }
            Recovery::Back => info!("redis: back; the room spans every process again"),
            Recovery::Again => debug!("redis: back again, within the same outage"),
        }
        // Whatever the others did meanwhile is unknown here: they were asked to re-announce (our
        // `hello`), and ours are re-announced by the room core as this lands.
        land(Landing::Back);
    }
}

/// Queues `PUBLISH channel envelope` on the publisher link (written at the turn's flush);
/// `command` is reused, and `push` reuses the space already written.
fn queue_publish(command: &mut Vec<u8>, publisher: &mut Link, channel: &str, envelope: &[u8]) {
    command.clear();
    redis::publish(command, channel.as_bytes(), envelope);
    publisher.output.push(command);
}

impl Publish for Backplane {
    fn publish(&mut self, kind: Kind, body: &str, member: Member) {
        Backplane::publish(self, kind, body, member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backplane(max_unsent: usize) -> Backplane {
        let url = RedisUrl::parse("redis://127.0.0.1:1").expect("url");
        let settings = Settings {
            max_unsent,
            max_message_size: 1 << 16,
            timeout: Duration::from_secs(2),
            node_timeout: Duration::from_secs(5),
        };
        Backplane::new(url, "room".into(), (Token(1), Token(2), Token(3)), settings)
    }

    #[test]
    fn publishing_queues_pipelined_commands() {
        let mut b = backplane(1 << 20);
        b.publish(Kind::Join, "", (3, 9));
        b.publish(Kind::Message, "hi", (3, 9));
        let sent = String::from_utf8_lossy(b.publisher.output.pending()).into_owned();
        assert_eq!(sent.matches("PUBLISH").count(), 2);
        assert_eq!(b.stats().pending, 2);
    }

    #[test]
    fn an_outage_lands_everything_pending_and_backs_off() {
        let mut b = backplane(1 << 20);
        let poll = mio::Poll::new().expect("poll");
        b.publish(Kind::Join, "", (1, 1));
        b.publish(Kind::Message, "in flight", (1, 1));
        let mut got = 0;
        let now = Instant::now();
        b.fail("test".into(), poll.registry(), now, &mut |_| got += 1);
        assert_eq!(got, 2);
        assert!(!b.is_up());
        assert_eq!(b.stats().pending, 0);
        assert_eq!(b.next_deadline(), Some(now + outage::FIRST_BACKOFF));
        b.fail("again".into(), poll.registry(), now, &mut |_| {
            panic!("nothing pending")
        });
        assert_eq!(b.next_deadline(), Some(now + outage::FIRST_BACKOFF * 2));
    }

    #[test]
    fn a_burst_is_judged_by_what_the_socket_refused_not_by_its_size() {
        let mut b = backplane(1000);
        b.publish(Kind::Message, &"x".repeat(600), (1, 1));
        b.publish(Kind::Message, &"y".repeat(600), (1, 1));
        assert_eq!(b.stats().pending, 2, "published, whatever the bound");
        // No socket here, so nothing is taken: all of it counts as refused.
        let poll = mio::Poll::new().expect("poll");
        let mut landed = 0;
        b.flush(poll.registry(), Instant::now(), &mut |_| landed += 1);
        assert_eq!(landed, 2, "an outage lands what was pending, in order");
        assert!(b.next_deadline().is_some(), "and schedules the retry");
    }
}
