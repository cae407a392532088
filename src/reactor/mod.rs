//! The event loop: one thread, one `mio::Poll`, and every socket registered in it.
//!
//! Each turn of [`Server::run`] is [`Server::turn`]:
//! 1. wait until a socket is ready or the nearest deadline comes (`poll_timeout`);
//! 2. accept new connections and read every ready client until `WouldBlock` or its read budget
//!    for the turn (`client.rs`). A connection reports what it did as events, which
//!    [`RoomCore::on_event`] turns into joins, messages and leaves: the room's frames for the turn
//!    collect in one batch, already encoded. With `--redis`, what the subscription brought is
//!    read too (`cluster.rs`), then the clients left over from the last turn's read budget;
//! 3. fire due timers (handshake timeouts, pings, closing timeouts);
//! 4. the flush point, [`Server::before_sleep`]: the room fans the batch out
//!    ([`RoomCore::fan_out`], one write per member, straight from the batch), the clients listed
//!    for ending are ended, every client that has bytes queued is written, what was published
//!    goes to Redis; on shutdown, everyone is sent away here, after the turn's fan-out;
//! 5. close the connections that are done.
//!
//! The work lists, filled during the turn and drained at the flush point or the turn's end:
//! `dirty` (bytes queued: written at the flush point; those not offered to their socket yet are
//! on `untried` too, offered at once past `--max-client-memory`), `ending` (past
//! `--max-outbound`, could not take the batch, or chosen past `--max-client-memory`: ended at the
//! flush point), `unread` (the turn's read budget spent, the batch full, or a hold just ended:
//! read next turn, without a new event), `closed` (over: reaped at the end of the turn).
//!
//! Sockets are edge-triggered (mio always registers `EPOLLET`): an event means "something
//! changed", so a handler reads (or writes) until the kernel says `WouldBlock`, and whatever
//! stops short of that must come back by itself (the `unread` list, a hold's end);
//! WRITABLE is asked for only while bytes wait. Nothing here ever blocks, so one slow peer never
//! delays another.
//!
//! The files: this one holds the loop, its timeout, signals and shutdown; `accept.rs` the
//! listener; `client.rs` client I/O and `settle`, which files each client on the lists;
//! `cluster.rs` the Redis links' place in the loop. The room itself, without I/O, is
//! [`crate::room_core`].

mod accept;
mod client;
mod cluster;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConfig;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::backplane::{self, Backplane};
use crate::config::Config;
use crate::connection::{Ending, Phase};
use crate::memory::Ledger;
use crate::metrics::Gauges;
use crate::nonblocking::READ_CHUNK;
use crate::room_core::RoomCore;
use crate::timers::Timers;
use crate::transport;
use accept::AcceptPause;
use client::Client;

/// Clients use their slab keys as tokens, counting up from 0; the fixed tokens sit at the top.
const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const REDIS_SUBSCRIBER: Token = Token(usize::MAX - 3);
const REDIS_PUBLISHER: Token = Token(usize::MAX - 4);
const REDIS_RESOLVER: Token = Token(usize::MAX - 5);

/// Client buffers released since the last trim before freed memory is handed back to the system
/// (see [`Server::give_back`]), and the least time between two trims.
const TRIM_AFTER: usize = 16 << 20;
/// Bytes of vacant client slots worth handing back too (see [`Server::slots_vacant`]).
const SLOTS_AFTER: usize = 1 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How long shutdown waits for closing handshakes and queued bytes.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

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
    /// With `--tls-cert`: what new connections' TLS sessions start from. SIGHUP replaces it;
    /// connections already open keep the `Arc` they started with.
    tls: Option<Arc<ServerConfig>>,
    clients: Slab<Client>,
    /// The room without I/O (presence, the backplane's place, the counters, pacing): what
    /// clients' events act on, and what the flush point fans out.
    room: RoomCore,
    timers: Timers,
    read_buf: Box<[u8]>,
    /// Clients with newly queued bytes, written at the flush point.
    dirty: Vec<usize>,
    /// Of those, the ones whose bytes no write has been offered yet (`Client::untried`): past
    /// `--max-client-memory` they are offered first (see [`client::keep_within`]).
    untried: Vec<usize>,
    /// Clients that used up their read budget (or met a full batch) with bytes still to read.
    unread: Vec<usize>,
    /// Clients whose connection is over, closed at the end of the turn.
    closed: Vec<usize>,
    /// Clients to end at the flush point: members that could not take the batch, and clients
    /// whose queue passed `--max-outbound`. `settle` only lists them (it never ends a client
    /// itself, so ending one, which settles it, cannot come back to ending it).
    ending: Vec<(usize, Ending)>,
    /// What all clients hold, and who holds the most (`--max-client-memory`).
    ledger: Ledger,
    /// When freed memory was last handed back to the system (see [`Server::give_back`]).
    trimmed_at: Option<Instant>,
    /// Trims so far (`mio_chat_memory_trims_total`).
    trims: u64,
    /// The slab's slots and clients right after the last trim shrank it as far as it could.
    slots_kept: (usize, usize),
    next_id: u64,
    /// Counts turns (wrapping), for the per-turn read budget of each client.
    turns: u32,
    refusing: usize,
    /// Accepting is paused after failures (out of file descriptors): see `accept.rs`.
    accept_pause: AcceptPause,
    stopping_at: Option<Instant>,
    /// A shutdown began this turn: everyone is sent away at the flush point, once the turn's
    /// batch (what was read before the stop) has gone out.
    going_away: bool,
}

impl Server {
    /// Binds the listener; port 0 picks a free port (see [`Server::local_addr`]).
    pub fn bind(config: Config) -> io::Result<Server> {
        let tls = match &config.tls {
            Some(files) => Some(
                transport::server_config(files)
                    .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let max_message_size = config.max_message_size;
        let poll = Poll::new()?;
        let mut listener = accept::listen(config.addr, config.reuse_port)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let backplane = config.redis.clone().map(|url| {
            let settings = backplane::Settings {
                max_unsent: config.redis_max_unsent,
                max_message_size: config.max_message_size,
                timeout: config.redis_timeout,
                node_timeout: config.node_timeout,
            };
            let tokens = (REDIS_SUBSCRIBER, REDIS_PUBLISHER, REDIS_RESOLVER);
            Backplane::new(url, config.redis_channel.clone(), tokens, settings)
        });
        let mut room = RoomCore::new(backplane, max_message_size, Instant::now());
        if let Some(files) = &config.tls {
            room.metrics.certificate_loaded(&files.cert);
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            waker,
            config,
            tls,
            clients: Slab::new(),
            room,
            timers: Timers::default(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            untried: Vec::new(),
            unread: Vec::new(),
            closed: Vec::new(),
            ending: Vec::new(),
            ledger: Ledger::default(),
            trimmed_at: None,
            trims: 0,
            slots_kept: (0, 0),
            next_id: 0,
            turns: 0,
            refusing: 0,
            accept_pause: AcceptPause::default(),
            stopping_at: None,
            going_away: false,
        })
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown, and SIGHUP reload the TLS
    /// certificate and key. The signals arrive through a pipe registered in the same poll, so
    /// they are handled in the loop like any other event.
    pub fn stop_on_signals(mut self) -> io::Result<Server> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
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
        if let Some(files) = &self.config.tls {
            info!(
                "tls: https:// and wss:// only, with {}",
                files.cert.display()
            );
        }
        let registry = self.poll.registry();
        self.room
            .with_relay(|backplane, _| backplane.start(registry, Instant::now()));
        let mut events = Events::with_capacity(1024);
        loop {
            // About to sleep (nothing left to read): the quiet moment to give memory back.
            if !self.has_unread() {
                self.give_back(Instant::now());
            }
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.turn(&events, now);
            self.room.metrics.turn(now.elapsed());
            if self.stopped(now) {
                break;
            }
        }
        let cut_off = self.clients.len();
        info!("stopped ({cut_off} connections cut off at the deadline)");
        Ok(())
    }

    /// One turn of the loop: all that the ready events and the due deadlines ask for.
    fn turn(&mut self, events: &Events, now: Instant) {
        self.turns = self.turns.wrapping_add(1);
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                SIGNALS => self.on_signal(now),
                WAKER => self.shut_down(now),
                REDIS_SUBSCRIBER | REDIS_PUBLISHER | REDIS_RESOLVER => {
                    self.on_backplane_event(event, now)
                }
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(key, now);
                    }
                    if event.is_writable() {
                        self.write(key, now);
                    }
                }
            }
        }
        self.end_turn(now);
    }

    /// The rest of a turn, once the ready events are handled.
    fn end_turn(&mut self, now: Instant) {
        self.read_backplane(now);
        self.read_unread(now);
        self.fire_timers(now);
        self.resume_accepting(now);
        self.before_sleep(now);
        self.reap();
    }

    /// The turn's one flush point (Redis's `beforeSleep`): the batch goes to every member, the
    /// clients listed for ending are ended, every client with bytes queued is written, and what
    /// was published goes to Redis. Each step can make work for the others (a dropped member's
    /// leave notice; what a failing Redis had pending), so it repeats until quiet.
    fn before_sleep(&mut self, now: Instant) {
        loop {
            self.fan_out_room(now);
            self.end_listed(now);
            if self.going_away {
                self.send_everyone_away(now);
            }
            self.write_dirty(now);
            let clients = &self.clients; // each was just offered to its socket, or is closing
            self.untried
                .retain(|&key| clients.get(key).is_some_and(|c| c.untried));
            self.flush_backplane(now);
            if self.dirty.is_empty() && self.ending.is_empty() && !self.room.is_due(now) {
                return;
            }
        }
    }

    /// Hands the room's batch, when due, to every member (see [`Client::take_batch`]); the
    /// members that could not take it are listed for ending.
    fn fan_out_room(&mut self, now: Instant) {
        let Server {
            room,
            clients,
            dirty,
            untried,
            ending,
            config,
            ledger,
            ..
        } = self;
        let mut written = 0;
        let mut evicted = Vec::new();
        room.fan_out(now, ending, |key, frames| {
            // No client for a member cannot happen; ending the key makes it leave (`abort`).
            let client = clients.get_mut(key).ok_or(Ending::PeerLeft)?;
            if client.evicting {
                return Ok(()); // its Close follows the frame it was sent last
            }
            let taken = client.take_batch(frames, config.max_outbound, &mut written);
            client::account(ledger, key, client);
            taken?;
            if client.has_output() && !client.awaiting_writable && !client.dirty {
                client.dirty = true;
                dirty.push(key);
            }
            let bound = config.max_client_memory;
            written += client::keep_within(ledger, clients, bound, untried, &mut evicted);
            Ok(())
        });
        ending.append(&mut evicted);
        room.metrics.bytes_written += written;
    }

    /// Ends the clients listed for ending (their leave notices go into the next batch).
    fn end_listed(&mut self, now: Instant) {
        for (key, why) in std::mem::take(&mut self.ending) {
            self.abort(key, why, now);
        }
    }

    /// Hands memory that clients' buffers gave back to the system, when the loop is about to
    /// sleep, once `TRIM_AFTER` bytes were released since the last time, at most every
    /// `TRIM_EVERY` (a trim held back by that is due then: [`Server::trim_due`] wakes the loop).
    /// glibc's malloc keeps what is freed (in its arenas, below their top) for reuse; after a
    /// burst of queued bytes drains, the process would keep its peak for good. `malloc_trim(0)`
    /// returns every whole free page (`MADV_DONTNEED`); docs/security.md has what it costs and
    /// gives back.
    fn give_back(&mut self, now: Instant) {
        if self.trim_due(now).is_none_or(|at| now < at) {
            return;
        }
        self.ledger.take_released();
        self.trimmed_at = Some(now);
        self.trims += 1;
        // The slab's vacant tail goes too (a realloc: a copy of the slots up to the last client).
        self.clients.shrink_to_fit();
        self.slots_kept = (self.clients.capacity(), self.clients.len());
        trim_heap();
    }

    /// When the next trim may run, if one is owed: `TRIM_AFTER` released, and the burst over
    /// (clients now hold less than was released); at `now` if none ran yet. A trim walks the
    /// heap (220 ms for a 1 GB heap of freed 48 KiB queues; docs/security.md), so it waits for
    /// the drain rather than repeat each second while queues are still full.
    fn trim_due(&self, now: Instant) -> Option<Instant> {
        let released = self.ledger.released();
        let drained = released >= TRIM_AFTER && self.ledger.total() < released;
        if !drained && !self.slots_vacant() {
            return None;
        }
        Some(self.trimmed_at.map_or(now, |at| at + TRIM_EVERY))
    }

    /// The slab keeps a slot for every client it held at its fullest (304 bytes; 9.5 MiB once
    /// 18,000 clients have gone), live memory that no heap trim returns: see
    /// [`slots_worth_a_trim`].
    fn slots_vacant(&self) -> bool {
        let (slots, used) = (self.clients.capacity(), self.clients.len());
        slots_worth_a_trim(slots, used, self.slots_kept, std::mem::size_of::<Client>())
    }

    /// A client or the subscription still has bytes to read, with no event to come for them.
    fn has_unread(&self) -> bool {
        !self.unread.is_empty() || self.room.relay().is_some_and(Backplane::has_unread)
    }

    /// Sleep until the nearest deadline; not at all if a client still has bytes to read.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.has_unread() {
            return Some(Duration::ZERO);
        }
        let backplane = self.room.relay();
        [
            self.timers.next(),
            self.stopping_at,
            self.accept_pause.retry_at(),
            self.room.due_at(),
            self.trim_due(now),
            backplane.and_then(Backplane::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    /// The `/metrics` page: counters kept by the loop, and connections by phase counted now.
    fn render_metrics(&self) -> String {
        let mut gauges = Gauges {
            max_connections: self.config.max_connections as u64,
            client_memory: self.ledger.total() as u64,
            client_memory_peak: self.ledger.peak() as u64,
            memory_trims: self.trims,
            max_client_memory: self.config.max_client_memory as u64,
            backplane: self.room.relay().map(Backplane::stats),
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
        let mut page = self.room.metrics.render(gauges);
        if let Some(backplane) = self.room.relay() {
            let gone = self.room.processes_gone();
            let members = self.room.shown_per_node();
            crate::metrics::render_cluster(&mut page, backplane.peers(), gone, members);
        }
        page
    }

    fn on_signal(&mut self, now: Instant) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let (mut stop, mut reload) = (false, false);
        for signal in signals.pending() {
            match signal {
                SIGHUP => reload = true,
                _ => stop = true,
            }
        }
        if reload {
            self.reload_tls();
        }
        if stop {
            self.shut_down(now);
        }
    }

    /// SIGHUP: reads the certificate and key again. New handshakes use the new pair; open
    /// connections keep theirs. A pair that fails to load changes nothing, and the log says why.
    fn reload_tls(&mut self) {
        let Some(files) = &self.config.tls else {
            info!("SIGHUP: no --tls-cert to reload");
            return;
        };
        match transport::server_config(files) {
            Ok(config) => {
                self.tls = Some(config);
                self.room.metrics.certificate_loaded(&files.cert);
                info!("tls: reloaded {}", files.cert.display());
            }
            Err(e) => warn!("tls: reload failed, keeping the previous certificate: {e}"),
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
                log::debug!("deregister listener: {e}");
            }
        }
        self.stopping_at = Some(now + SHUTDOWN_GRACE);
        self.going_away = true;
    }

    /// Shutdown, at the flush point after the turn's fan-out: everyone here leaves at once (the
    /// other processes are told; the loop waits for the publisher to drain before it stops), and
    /// every connection is sent away (close 1001 for WebSocket clients).
    fn send_everyone_away(&mut self, now: Instant) {
        self.going_away = false;
        self.room.leave_all();
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            let client = &mut self.clients[key];
            let (who, room) = (client.who(key), &mut self.room);
            client
                .conn
                .go_away(now, &mut |event| room.on_event(who, event));
            self.settle(key);
        }
    }

    /// Whether a shutdown is complete: every client gone and every leave published, or the
    /// grace period over.
    fn stopped(&self, now: Instant) -> bool {
        let Some(deadline) = self.stopping_at else {
            return false;
        };
        let published = self.room.relay().is_none_or(Backplane::is_drained);
        (self.clients.is_empty() && published) || now >= deadline
    }
}

/// Whether `slots` slots of `size` bytes, `used` of them, are worth shrinking: `SLOTS_AFTER`
/// vacant and three quarters of them, and changed since the last trim left `kept` (slots, used):
/// grown, or a client gone (it may have been the one at the top that kept the slots below it).
/// The quarter keeps a busy slab out of it: shrunk to n, it grows back to 2n, short of 4n.
fn slots_worth_a_trim(slots: usize, used: usize, kept: (usize, usize), size: usize) -> bool {
    let changed = slots != kept.0 || used < kept.1;
    (slots - used) * size >= SLOTS_AFTER && slots >= 4 * used && changed
}

/// Returns the heap's free pages to the system (glibc); other allocators return them themselves
/// or are not asked.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory held by the allocator; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
