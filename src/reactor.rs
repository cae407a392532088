//! The event loop: one thread, one `mio::Poll`, and every socket registered in it.
//!
//! Each turn of [`Server::run`]:
//! 1. wait until a socket is ready or the nearest deadline comes;
//! 2. accept new connections, and read every ready client until `WouldBlock`, handling what it
//!    sent on the spot: its own replies are queued for it, its chat messages (already encoded as
//!    frames) join the turn's batch for the room;
//! 3. fire due timers (handshake timeouts, pings, closing timeouts);
//! 4. fan the batch out (one copy per member) and write out what was queued this turn: one
//!    `write` per client, however many frames piled up;
//! 5. close the connections that are done.
//!
//! With `--redis`, two more sockets sit in the same poll: the backplane's links to Redis
//! (`backplane.rs`). Clients' events then go out to Redis first, and what the subscription hands
//! back lands in the batch of step 4, in Redis's order.
//!
//! Sockets are edge-triggered: an event means "something changed", so a handler reads (or writes)
//! until the kernel says `WouldBlock`; WRITABLE is asked for only while bytes wait. Nothing here
//! ever blocks, so one slow peer never delays another.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::backplane::{self, Backplane, Landing, Relay};
use crate::config::Config;
use crate::connection::{Connection, Context, Ending, Phase};
use crate::envelope::Kind;
use crate::http;
use crate::metrics::{Gauges, Metrics};
use crate::proxy::Peer;
use crate::room::{Announce, Broadcast, Delivery, Room};
use crate::timers::{Timer, Timers};

/// Clients use their slab keys as tokens, counting up from 0; the fixed tokens sit at the top.
const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const REDIS_SUBSCRIBER: Token = Token(usize::MAX - 3);
const REDIS_PUBLISHER: Token = Token(usize::MAX - 4);

/// One read buffer for all clients: idle clients hold no read buffer of their own.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one client per turn before the others get theirs (fairness).
const READ_BUDGET: usize = 256 * 1024;
/// How long shutdown waits for closing handshakes and queued bytes.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Pause after `accept` fails for lack of resources (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections being told 503 at the same time; past this, extra ones are closed unanswered.
const MAX_REFUSING: usize = 64;
/// Pending connections the kernel may queue for `accept` (it caps this at `net.core.somaxconn`).
/// mio's default of 128 overflows when a load test opens thousands of connections at once.
const LISTEN_BACKLOG: i32 = 4096;
/// The room's batch is fanned out and written at the end of each turn: one copy and one `write`
/// per client per turn, however many messages the turn brought. But a turn of a thousand joins
/// or leaves in a room of ten thousand would queue hundreds of megabytes that way, so once the
/// batch times the members passes this many bytes, it goes out at once.
const MAX_UNFLUSHED: usize = 16 << 20;
/// In a large room, joins and leaves come in floods (a load test connecting thousands, a frontend
/// restarting), and each fan-out costs one `send` per member. So a batch of notices alone waits
/// until this long after the previous fan-out, and every member gets the flood's notices in
/// fewer, larger writes. Chat messages never wait: a batch with one goes out at the turn's end.
const NOTICE_WINDOW: Duration = Duration::from_millis(100);
/// Rooms smaller than this send notices at once: there, a fan-out is cheap.
const NOTICE_BATCHING_FROM: usize = 1000;

/// A socket and the state machine that speaks over it.
struct Client {
    socket: TcpStream,
    peer: Peer,
    conn: Connection,
    /// Distinguishes this client from earlier ones that had the same slab key.
    id: u64,
    /// The deadline this client has armed in the timer heap.
    timer_at: Option<Instant>,
    /// WRITABLE interest is registered (bytes are waiting for the socket).
    writable: bool,
    /// Already in the list of clients to flush at the end of this turn.
    dirty: bool,
    /// Our FIN is sent.
    half_closed: bool,
    /// Only here to be told 503.
    refused: bool,
    /// Its ending has been counted and logged.
    ending_reported: bool,
    /// Whether its join notice has gone out, and which way: its leave notice must follow.
    announced: Announced,
}

/// Which way a client's join notice went; its leave notice goes the same way when it can, so
/// that whoever saw one sees the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announced {
    No,
    /// Into this process's room only (no backplane, or Redis was down).
    Locally,
    /// To every process, through Redis.
    ThroughRedis,
}

/// Stops a running server from another thread, as SIGTERM would (for tests and embedders).
#[derive(Clone)]
pub struct StopHandle(Arc<Waker>);

impl StopHandle {
    pub fn stop(&self) {
        if let Err(e) = self.0.wake() {
            warn!("could not wake the event loop: {e}");
        }
    }
}

/// The chat server: bind it, then [`run`](Server::run) it until SIGINT/SIGTERM or a stop.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    config: Config,
    clients: Slab<Client>,
    room: Room,
    /// Frames waiting to be fanned out to the room.
    broadcast: Broadcast,
    timers: Timers,
    read_buf: Box<[u8]>,
    /// Clients with newly queued bytes, flushed at the end of the turn.
    dirty: Vec<usize>,
    /// Clients that used up their read budget and still have bytes to read.
    unread: Vec<usize>,
    /// Clients whose connection is over, closed at the end of the turn.
    closed: Vec<usize>,
    next_id: u64,
    refusing: usize,
    accept_paused_until: Option<Instant>,
    stopping_at: Option<Instant>,
    metrics: Metrics,
    /// When the room's batch last went out (for [`NOTICE_WINDOW`]).
    last_fan_out: Instant,
    /// With `--redis`: the links that make this process's room part of a larger one.
    backplane: Option<Backplane>,
}

impl Server {
    /// Binds the listener; port 0 picks a free port (see [`Server::local_addr`]).
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = listen(config.addr, config.reuse_port)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let backplane = config.redis.clone().map(|url| {
            Backplane::new(
                url,
                config.redis_channel.clone(),
                (REDIS_SUBSCRIBER, REDIS_PUBLISHER),
                config.max_outbound,
                config.max_message_size,
            )
        });
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            waker,
            config,
            clients: Slab::new(),
            room: Room::default(),
            broadcast: Broadcast::default(),
            timers: Timers::default(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            unread: Vec::new(),
            closed: Vec::new(),
            next_id: 0,
            refusing: 0,
            accept_paused_until: None,
            stopping_at: None,
            metrics: Metrics::default(),
            last_fan_out: Instant::now(),
            backplane,
        })
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown. The signals arrive through a pipe
    /// registered in the same poll, so they are handled in the loop like any other event.
    pub fn stop_on_signals(mut self) -> io::Result<Server> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.waker))
    }

    /// Runs the event loop until a graceful shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        info!("listening on {}", self.local_addr);
        if let Some(backplane) = &mut self.backplane {
            backplane.start(self.poll.registry(), Instant::now());
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.turn(&events, now);
            self.metrics.turn(now.elapsed());
            if let Some(deadline) = self.stopping_at {
                let published = self.backplane.as_ref().is_none_or(Backplane::is_drained);
                if (self.clients.is_empty() && published) || now >= deadline {
                    break;
                }
            }
        }
        let cut_off = self.clients.len();
        info!("stopped ({cut_off} connections cut off at the deadline)");
        Ok(())
    }

    /// One turn of the loop: all that the ready events and the due deadlines ask for.
    fn turn(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                SIGNALS => self.on_signal(now),
                WAKER => self.shut_down(now),
                REDIS_SUBSCRIBER | REDIS_PUBLISHER => self.on_backplane_event(event, now),
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(key, now);
                    }
                    if event.is_writable() {
                        self.flush(key, now);
                    }
                }
            }
        }
        self.read_backplane(now);
        self.read_unread(now);
        self.fire_timers(now);
        self.resume_accepting(now);
        self.flush_dirty(now); // fans out the turn's batch first
        self.reap();
    }

    /// Sleep until the nearest deadline; not at all if a client still has bytes to read.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let backplane = self.backplane.as_ref();
        if !self.unread.is_empty() || backplane.is_some_and(Backplane::has_unread) {
            return Some(Duration::ZERO);
        }
        let notices_due = (!self.broadcast.is_empty()).then(|| self.last_fan_out + NOTICE_WINDOW);
        [
            self.timers.next(),
            self.stopping_at,
            self.accept_paused_until,
            notices_due,
            backplane.and_then(Backplane::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        while let Some(listener) = &self.listener {
            if self.accept_paused_until.is_some() {
                return;
            }
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors or memory: the connection waits in the backlog.
                    warn!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
            self.accept(now);
        }
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr, now: Instant) {
        self.metrics.accepted += 1;
        let refused = self.clients.len() - self.refusing >= self.config.max_connections;
        if refused && self.refusing >= MAX_REFUSING {
            debug!(peer:% = peer; "closed unanswered: too many connections");
            self.metrics.ended(Ending::Answered(503));
            return;
        }
        // We batch small frames ourselves; Nagle's algorithm would only add latency.
        if let Err(e) = socket.set_nodelay(true) {
            debug!(peer:% = peer; "set_nodelay: {e}");
        }
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(key), Interest::READABLE)
        {
            warn!(peer:% = peer; "could not register the connection: {e}");
            return;
        }
        let conn = if refused {
            Connection::refused(now, 503)
        } else {
            Connection::new(now)
        };
        self.next_id += 1;
        entry.insert(Client {
            socket,
            peer: Peer::Direct(peer),
            conn,
            id: self.next_id,
            timer_at: None,
            writable: false,
            dirty: false,
            half_closed: false,
            refused,
            ending_reported: false,
            announced: Announced::No,
        });
        self.refusing += usize::from(refused);
        debug!(token = key, peer:% = peer; "accepted");
        self.settle(key, now);
    }

    /// Reads from one client until `WouldBlock`, EOF, or its budget for this turn runs out.
    fn read(&mut self, key: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            if client.conn.is_closed() {
                return;
            }
            let more = match client.socket.read(&mut self.read_buf) {
                Ok(0) => {
                    client.conn.peer_closed(now);
                    false // EOF: nothing more will come, however long we keep the socket
                }
                Ok(n) => {
                    let batch_so_far = self.broadcast.len();
                    let degraded = self.backplane.as_ref().is_some_and(|b| !b.is_up());
                    let mut relay;
                    let announce: &mut dyn Announce =
                        match self.backplane.as_mut().filter(|b| b.is_up()) {
                            Some(backplane) => {
                                relay = Relay::new(backplane, (key, client.id));
                                &mut relay
                            }
                            None => &mut self.broadcast,
                        };
                    let mut cx = Context {
                        now,
                        config: &self.config,
                        broadcast: announce,
                        metrics: &mut self.metrics,
                        degraded,
                    };
                    client.conn.receive(&mut self.read_buf[..n], &mut cx);
                    if let Some(chain) = client.conn.take_forwarded_for() {
                        let via = client.peer;
                        client.peer = via.forwarded(&self.config.trusted_proxies, Some(&chain));
                        if client.peer != via {
                            debug!(token = key, peer:% = client.peer, via:% = via; "forwarded");
                        }
                    }
                    budget = budget.saturating_sub(n);
                    if client.conn.in_room() && client.announced == Announced::No {
                        // It just completed its handshake. Without a backplane it joins now, and
                        // its join notice starts where the batch stood before its bytes were
                        // handled; with one, it joins when Redis hands its notice back.
                        if self.backplane.as_ref().is_some_and(Backplane::is_up) {
                            client.announced = Announced::ThroughRedis;
                        } else {
                            client.announced = Announced::Locally;
                            self.room.join(key, batch_so_far);
                        }
                    }
                    true
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(token = key, peer:% = client.peer; "read: {e}");
                    client.conn.peer_closed(now);
                    false
                }
            };
            self.settle(key, now);
            if !more || self.clients.get(key).is_none_or(|c| c.conn.is_closed()) {
                return;
            }
            if budget == 0 {
                // Edge-triggered: no new event will come for bytes already waiting.
                self.unread.push(key);
                return;
            }
        }
    }

    fn read_unread(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.unread) {
            self.read(key, now);
        }
    }

    /// Writes a client's queued bytes until they are all gone or the socket is full.
    fn flush(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        while !client.conn.is_closed() && !client.conn.output().is_empty() {
            match client.socket.write(client.conn.output().pending()) {
                Ok(n) if n > 0 => {
                    client.conn.sent(n);
                    self.metrics.bytes_written += n as u64;
                }
                Ok(_) => client.conn.abort(Ending::PeerLeft, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(token = key, peer:% = client.peer; "write: {e}");
                    client.conn.abort(Ending::PeerLeft, now);
                }
            }
        }
        if !client.conn.is_closed() {
            let want_writable = !client.conn.output().is_empty();
            if want_writable != client.writable {
                let interest = if want_writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                match self
                    .poll
                    .registry()
                    .reregister(&mut client.socket, Token(key), interest)
                {
                    Ok(()) => client.writable = want_writable,
                    Err(e) => {
                        warn!(token = key, peer:% = client.peer; "reregister: {e}");
                        client.conn.abort(Ending::PeerLeft, now);
                    }
                }
            }
            if client.conn.should_half_close() && !client.half_closed {
                // Our FIN tells the peer we are done; closing only after theirs avoids a reset
                // that could destroy the answer still in flight.
                client.half_closed = true;
                if let Err(e) = client.socket.shutdown(Shutdown::Write) {
                    debug!(token = key, peer:% = client.peer; "shutdown: {e}");
                    client.conn.abort(Ending::PeerLeft, now);
                }
            }
        }
        self.settle(key, now);
    }

    /// Fans out the room's batch, writes every client with new bytes, and publishes what this
    /// turn's clients did (with `--redis`).
    fn flush_dirty(&mut self, now: Instant) {
        // Flushing can close a client, whose leave notice is a new batch or a new publish; a
        // failing backplane lands what it had pending into a new batch.
        loop {
            self.fan_out(now);
            for key in std::mem::take(&mut self.dirty) {
                if let Some(client) = self.clients.get_mut(key) {
                    client.dirty = false;
                    self.flush(key, now);
                }
            }
            self.flush_backplane(now);
            let batch_waits = self.broadcast.is_empty() || self.notices_may_wait(now);
            if self.dirty.is_empty() && batch_waits {
                return;
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            let Some(client) = self.clients.get_mut(timer.key) else {
                continue;
            };
            if client.id != timer.id || client.timer_at != Some(timer.at) {
                continue; // a stale entry: the slot was reused, or the deadline was re-armed
            }
            client.timer_at = None;
            client.conn.on_deadline(now, &self.config);
            self.settle(timer.key, now);
        }
    }

    /// Brings everything else in line with what just happened to one client: the metrics
    /// page it asked for, the outbound limit, its ending, leaving the room, the flush list, and
    /// its timer.
    fn settle(&mut self, key: usize, now: Instant) {
        let wants_metrics = match self.clients.get_mut(key) {
            Some(client) => client.conn.take_metrics_request(),
            None => return,
        };
        let metrics_page = wants_metrics.then(|| self.render_metrics());
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if let Some(page) = metrics_page {
            let mut response = Vec::with_capacity(page.len() + 200);
            http::write_response(&mut response, 200, http::METRICS_CONTENT_TYPE, "", &page);
            client.conn.queue(&response);
        }
        // Its own replies (pongs, echoes) count too, once the socket has stopped taking bytes:
        // a client whose socket keeps up is written at the end of the turn, whatever it queued.
        if client.writable && client.conn.output().len() > self.config.max_outbound {
            client.conn.abort(Ending::SlowConsumer, now);
        }
        if !client.ending_reported {
            if let Some(ending) = client.conn.ending() {
                client.ending_reported = true;
                self.metrics.ended(ending);
                debug!(token = key, peer:% = client.peer; "ending: {ending:?}");
            }
        }
        // Joining happens in `read`, where the handshake completes; leaving can happen anywhere.
        if !client.conn.in_room() && client.announced != Announced::No {
            let through_redis = client.announced == Announced::ThroughRedis;
            client.announced = Announced::No;
            self.room.leave(key);
            match self.backplane.as_mut().filter(|b| b.is_up()) {
                Some(backplane) if through_redis => backplane.publish(Kind::Leave, "", None),
                _ => self.broadcast.left(),
            }
        }
        if client.conn.is_closed() {
            self.closed.push(key);
        } else {
            let has_bytes = !client.writable && !client.conn.output().is_empty();
            let owes_fin = client.conn.should_half_close() && !client.half_closed;
            if !client.dirty && (has_bytes || owes_fin) {
                client.dirty = true;
                self.dirty.push(key);
            }
            if let Some(at) = client.conn.deadline(&self.config) {
                if client.timer_at.is_none_or(|armed| at < armed) {
                    client.timer_at = Some(at);
                    self.timers.arm(Timer {
                        at,
                        key,
                        id: client.id,
                    });
                }
            }
        }
        if self.broadcast.len().saturating_mul(self.room.len()) > MAX_UNFLUSHED {
            self.flush_dirty(now);
        }
    }

    /// Hands the room's batch to every member (see [`deliver`]); members that are gone or too
    /// far behind are dropped, and the room announces their leaving in the next batch.
    fn fan_out(&mut self, now: Instant) {
        if self.broadcast.is_empty() || self.notices_may_wait(now) {
            return;
        }
        self.last_fan_out = now;
        let Server {
            room,
            broadcast,
            clients,
            dirty,
            closed,
            config,
            metrics,
            backplane,
            ..
        } = self;
        let mut relay = backplane.as_mut().filter(|b| b.is_up());
        metrics.frames_delivered += room.fan_out(broadcast, |key, frames| {
            let Some(client) = clients.get_mut(key) else {
                return Delivery::Dropped;
            };
            match deliver(
                client,
                frames,
                config.max_outbound,
                &mut metrics.bytes_written,
            ) {
                Ok(()) => {
                    let has_bytes = !client.conn.output().is_empty();
                    if has_bytes && !client.writable && !client.dirty {
                        client.dirty = true;
                        dirty.push(key);
                    }
                    Delivery::Delivered
                }
                Err(ending) => {
                    // Counted here: the room is mid-iteration, so `settle` cannot run for it.
                    client.conn.abort(ending, now);
                    client.ending_reported = true;
                    metrics.ended(ending);
                    debug!(token = key, peer:% = client.peer; "ending: {ending:?}");
                    closed.push(key);
                    let through_redis = client.announced == Announced::ThroughRedis;
                    client.announced = Announced::No;
                    match relay.as_mut() {
                        Some(backplane) if through_redis => {
                            backplane.publish(Kind::Leave, "", None);
                            Delivery::DroppedQuietly
                        }
                        _ => Delivery::Dropped, // the room announces it
                    }
                }
            }
        });
    }

    /// Lends the backplane out with the registry and a way to land its events in the room (the
    /// fields are split here so that all of them can be borrowed at once).
    fn with_backplane(
        &mut self,
        act: impl FnOnce(&mut Backplane, &Registry, &mut dyn FnMut(Landing)),
    ) {
        let Server {
            backplane: Some(backplane),
            room,
            broadcast,
            clients,
            poll,
            ..
        } = self
        else {
            return;
        };
        act(backplane, poll.registry(), &mut |landing| {
            land(room, broadcast, clients, landing)
        });
    }

    /// Handles readiness on one of the backplane's Redis links.
    fn on_backplane_event(&mut self, event: &mio::event::Event, now: Instant) {
        let token = event.token();
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable();
        self.with_backplane(|backplane, registry, land| {
            backplane.on_event(token, readable, writable, registry, now, land)
        });
    }

    /// Reads what the subscription brought, a chunk at a time up to the turn's budget, flushing
    /// the batch in between if it grows too large (as after a client's read).
    fn read_backplane(&mut self, now: Instant) {
        for _ in 0..backplane::READ_BUDGET / backplane::READ_CHUNK {
            if !self.backplane.as_ref().is_some_and(Backplane::has_unread) {
                return;
            }
            self.with_backplane(|backplane, registry, land| {
                backplane.read_more(registry, now, land)
            });
            if self.broadcast.len().saturating_mul(self.room.len()) > MAX_UNFLUSHED {
                self.flush_dirty(now);
            }
        }
    }

    /// Writes this turn's publishes, and reconnects when the time comes.
    fn flush_backplane(&mut self, now: Instant) {
        self.with_backplane(|backplane, registry, land| {
            if backplane.next_deadline().is_some_and(|at| at <= now) {
                backplane.on_deadline(registry, now, land);
            }
            backplane.flush(registry, now, land);
        });
    }

    /// Whether the batch is notices only, in a room large enough to gather them (see
    /// [`NOTICE_WINDOW`]), and the window since the last fan-out is still open.
    fn notices_may_wait(&self, now: Instant) -> bool {
        self.broadcast.only_notices()
            && self.room.len() >= NOTICE_BATCHING_FROM
            && now < self.last_fan_out + NOTICE_WINDOW
    }

    /// Closes the sockets of connections that are over.
    fn reap(&mut self) {
        for key in std::mem::take(&mut self.closed) {
            if !self.clients.get(key).is_some_and(|c| c.conn.is_closed()) {
                continue; // listed twice
            }
            let mut client = self.clients.remove(key);
            if let Err(e) = self.poll.registry().deregister(&mut client.socket) {
                debug!(token = key, peer:% = client.peer; "deregister: {e}");
            }
            self.refusing -= usize::from(client.refused);
            debug!(token = key, peer:% = client.peer; "closed");
        }
    }

    /// The `/metrics` page: counters kept by the loop, and connections by phase counted now.
    fn render_metrics(&self) -> String {
        let mut gauges = Gauges {
            max_connections: self.config.max_connections as u64,
            backplane: self.backplane.as_ref().map(Backplane::stats),
            ..Gauges::default()
        };
        for (_, client) in &self.clients {
            match client.conn.phase() {
                Phase::Request => gauges.handshaking += 1,
                Phase::Open(_) => gauges.websocket += 1,
                Phase::Closing | Phase::Finishing => gauges.closing += 1,
                Phase::Closed => {}
            }
        }
        self.metrics.render(gauges)
    }

    fn on_signal(&mut self, now: Instant) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        if signals.pending().next().is_some() {
            self.shut_down(now);
        }
    }

    /// Graceful shutdown: stop accepting, send every WebSocket client close 1001, and give the
    /// closing handshakes and queued bytes [`SHUTDOWN_GRACE`] to finish.
    fn shut_down(&mut self, now: Instant) {
        if self.stopping_at.is_some() {
            return;
        }
        info!("shutting down: closing {} connections", self.clients.len());
        if let Some(mut listener) = self.listener.take() {
            if let Err(e) = self.poll.registry().deregister(&mut listener) {
                debug!("deregister listener: {e}");
            }
        }
        self.stopping_at = Some(now + SHUTDOWN_GRACE);
        // Everyone here leaves at once, and nobody here is told that the others left; but the
        // clients of the other processes are (the loop waits for the publisher to drain).
        self.room.clear();
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            if client.announced == Announced::ThroughRedis {
                if let Some(backplane) = self.backplane.as_mut().filter(|b| b.is_up()) {
                    backplane.publish(Kind::Leave, "", None);
                }
            }
            client.announced = Announced::No;
            client.conn.go_away(now);
            self.settle(key, now);
        }
    }
}

/// A non-blocking listener with `SO_REUSEADDR` (a restarted server can bind again at once) and a
/// backlog long enough for connection storms; with `reuse_port`, `SO_REUSEPORT` too, so several
/// processes can listen on one port and the kernel spreads new connections over them.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Puts one event from the backplane into the room. A join of one of our own clients makes it a
/// member at this point of the batch (if it is still here), so it gets its own notice and all
/// that Redis ordered after it.
fn land(room: &mut Room, broadcast: &mut Broadcast, clients: &Slab<Client>, landing: Landing) {
    match landing {
        Landing::Join { local } => {
            if let Some((key, id)) = local {
                let here = clients.get(key).is_some_and(|c| {
                    c.id == id && c.announced != Announced::No && c.conn.in_room()
                });
                if here {
                    room.join(key, broadcast.len());
                }
            }
            broadcast.joined();
        }
        Landing::Leave => broadcast.left(),
        Landing::Message(text) => broadcast.said(text),
    }
}

/// Hands one batch to one member. When nothing is queued ahead of it, the batch is written
/// straight from the room's buffer, so a client that keeps up never gets a copy; only what its
/// socket cannot take now is queued. A client with a backlog gets the batch queued behind it,
/// unless that would pass `max_outbound`: then it is a slow consumer, and is dropped.
fn deliver(
    client: &mut Client,
    frames: &[u8],
    max_outbound: usize,
    bytes_written: &mut u64,
) -> Result<(), Ending> {
    let backlog = client.conn.output().len();
    if backlog > 0 {
        if backlog + frames.len() > max_outbound {
            return Err(Ending::SlowConsumer);
        }
        client.conn.queue(frames);
        return Ok(());
    }
    match client.socket.write(frames) {
        Ok(n) => {
            *bytes_written += n as u64;
            if n < frames.len() {
                client.conn.queue(&frames[n..]);
            }
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            client.conn.queue(frames);
        }
        Err(e) => {
            debug!(peer:% = client.peer; "write: {e}");
            return Err(Ending::PeerLeft);
        }
    }
    Ok(())
}
