//! The generator's event loop: one thread, one `mio::Poll`, every client in a `Slab` whose key
//! is its `Token`, the way the server holds its own.
//!
//! A scenario drives the fleet a [`turn`](Fleet::turn) at a time and hears what happened through
//! an [`Observer`]. Each turn:
//! 1. dial new connections, at most `--max-inflight` of them connecting or handshaking at once
//!    (an unbounded burst of SYNs would overflow the server's accept backlog);
//! 2. write what the scenario queued since the last turn;
//! 3. wait for readiness; read every ready client until `WouldBlock`, feeding its state machine;
//! 4. write the replies that reading produced (pongs, close answers).
//!
//! Sockets are edge-triggered and registered once for both READABLE and WRITABLE: WRITABLE
//! events then come for free whenever room appears, and a client with nothing to send ignores
//! them at the cost of a branch, cheaper than re-registering each time a message is queued.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::debug;
use mio::event::Event as MioEvent;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::chat::{self, Notice};
use crate::client::{Client, Event, Failure, Phase};
use crate::faults::{quote, Fault, Faults};
use crate::target::{self, Route};
use crate::wire::{Fixed, Masks};

/// What a scenario hears from the fleet. Keys are slab keys; a key is reused only after
/// [`Observer::gone`] (or a failed dial) freed it.
pub trait Observer {
    /// Client `key` completed its handshake, when `dialled` clients had been dialled (so a
    /// client dialled later, with a dial index of `dialled` or more, joins after it).
    fn opened(&mut self, _key: usize, _dialled: u32, _now: Instant) {}
    /// A chat message's body arrived at client `key`, read at `now`. Notices never come here.
    fn chat(&mut self, _key: usize, _body: &str, _now: Instant) {}
    /// A chat message still as it stands in its envelope ([`Event::Envelope`]): `true` if the
    /// observer has dealt with it as it is; if not, the fleet unescapes it and calls
    /// [`Observer::chat`] (or [`Observer::notice`]). Only a text of ours, checked byte for
    /// byte, can be dealt with as it is: it holds nothing that JSON escapes.
    fn chat_as_is(&mut self, _key: usize, _inner: &str, _now: Instant) -> bool {
        false
    }
    /// `count` of the same notice arrived in a row at client `key`, read at `now`.
    fn notice(&mut self, _key: usize, _notice: Notice, _count: u64, _now: Instant) {}
    /// The same, with how many clients had been dialled when it was read (a client dialled
    /// later, with a dial index of `dialled` or more, was dialled after this notice arrived).
    /// The fleet calls this one; only the join phase needs `dialled`.
    fn notice_dialled(
        &mut self,
        key: usize,
        notice: Notice,
        count: u64,
        now: Instant,
        _dialled: u32,
    ) {
        self.notice(key, notice, count, now);
    }
    /// An open client is gone: it failed, or its close completed.
    fn gone(&mut self, _key: usize) {}
}

/// Counts kept by the fleet itself, whatever the scenario.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Handshakes completed.
    pub opened: usize,
    /// Clients that failed, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Open clients that failed (a subset of `failures`).
    pub lost_after_open: usize,
    /// Closing handshakes completed.
    pub closed_clean: usize,
    /// Open clients dropped on purpose with a reset ([`Fleet::reset`]).
    pub reset: usize,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

pub struct Fleet {
    poll: Poll,
    events: Events,
    clients: Slab<Client>,
    read_buf: Box<[u8]>,
    /// The servers, and the source addresses their clients bind to; client i goes to
    /// `routes[i mod T]` ([`target::route_of`]). Never empty.
    routes: Vec<Route>,
    max_inflight: usize,
    /// Connections asked for but not dialled yet.
    to_dial: usize,
    dialled: u32,
    /// Clients connecting or handshaking.
    inflight: usize,
    /// Clients with bytes queued since their last flush.
    dirty: Vec<usize>,
    masks: Masks,
    /// The notices' frames, to recognise them by their bytes.
    notices: Fixed,
    pub tally: Tally,
    /// Frames that are not chat messages at all (binary, or text that is not the envelope),
    /// in any phase: whatever the scenario, the chat never sends them.
    pub faults: Faults,
}

impl Fleet {
    pub fn new(routes: Vec<Route>, max_inflight: usize) -> io::Result<Fleet> {
        if routes.is_empty() {
            return Err(io::Error::new(ErrorKind::InvalidInput, "no target to load"));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Ok(Fleet {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            clients: Slab::new(),
            read_buf: vec![0; mio_chat::nonblocking::READ_CHUNK].into_boxed_slice(),
            routes,
            max_inflight: max_inflight.max(1),
            to_dial: 0,
            dialled: 0,
            inflight: 0,
            dirty: Vec::new(),
            masks: Masks::new(seed),
            notices: chat::notice_frames(),
            tally: Tally::default(),
            faults: Faults::default(),
        })
    }

    /// Asks for `n` more connections; they are dialled over the next turns.
    pub fn dial(&mut self, n: usize) {
        self.to_dial += n;
    }

    /// Every connection asked for has opened or failed.
    pub fn settled(&self) -> bool {
        self.to_dial == 0 && self.inflight == 0
    }

    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Connections asked for and not dialled yet.
    pub fn pending(&self) -> usize {
        self.to_dial
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Open clients as (key, dial index), in dial order.
    pub fn open_clients(&self) -> Vec<(usize, u32)> {
        let mut open: Vec<(usize, u32)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase() == Phase::Open)
            .map(|(key, c)| (key, c.index))
            .collect();
        open.sort_by_key(|&(_, index)| index);
        open
    }

    /// One past the largest key in use: the size of a table indexed by key.
    pub fn key_bound(&self) -> usize {
        self.clients
            .iter()
            .map(|(key, _)| key + 1)
            .max()
            .unwrap_or(0)
    }

    /// Queues a text message from client `key`; it is written at the start of the next turn.
    pub fn send(&mut self, key: usize, text: &str) {
        if let Some(client) = self.clients.get_mut(key) {
            if client.phase() == Phase::Open {
                client.send_text(text, &mut self.masks);
                mark_dirty(&mut self.dirty, key, client);
            }
        }
    }

    /// Starts the closing handshake on client `key` if it is open; its end comes as
    /// [`Observer::gone`] (counted in `closed_clean` if the server answered).
    pub fn close(&mut self, key: usize) -> bool {
        let Some(client) = self.clients.get_mut(key) else {
            return false;
        };
        if client.phase() != Phase::Open {
            return false;
        }
        client.close(&mut self.masks);
        mark_dirty(&mut self.dirty, key, client);
        true
    }

    /// Drops client `key` the rude way: `SO_LINGER` 0, then close, so the kernel sends a reset
    /// (RST) instead of a FIN, and no Close frame goes out. Whatever was queued is discarded.
    /// The caller hears no [`Observer::gone`]: it knows. Returns whether the client was there.
    pub fn reset(&mut self, key: usize) -> bool {
        let Some(client) = self.remove(key) else {
            return false;
        };
        match client.phase() {
            Phase::Connecting | Phase::Handshake => self.inflight -= 1,
            Phase::Open | Phase::Closing => self.tally.reset += 1,
        }
        if let Err(e) = SockRef::from(&client.socket).set_linger(Some(Duration::ZERO)) {
            debug!("client #{key}: SO_LINGER 0: {e}");
        }
        drop(client); // the close that sends the RST
        true
    }

    /// Starts the closing handshake on every open client and drops those not open yet.
    pub fn close_all(&mut self) {
        self.to_dial = 0;
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.clients[key].phase() {
                Phase::Open => {
                    self.close(key);
                }
                Phase::Closing => {}
                Phase::Connecting | Phase::Handshake => {
                    self.inflight -= 1;
                    self.remove(key);
                }
            }
        }
    }

    /// Drops every client left, counting them as failed with `label`; returns how many.
    pub fn abandon_all(&mut self, label: &str) -> usize {
        let n = self.clients.len();
        let clients: Vec<(usize, u32)> = self.clients.iter().map(|(k, c)| (k, c.index)).collect();
        for (key, index) in clients {
            self.count_failure(index, label.to_string());
            self.remove(key);
        }
        self.inflight = 0;
        self.to_dial = 0;
        n
    }

    /// One turn of the loop (see the module comment); `timeout` bounds the wait for events.
    pub fn turn(
        &mut self,
        timeout: Option<Duration>,
        observer: &mut impl Observer,
    ) -> io::Result<()> {
        self.dial_more();
        self.flush_dirty(observer);
        // Taken out so that handling an event may borrow the rest of the fleet.
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let polled = self.poll.poll(&mut events, timeout);
        if let Err(e) = polled {
            self.events = events;
            return if e.kind() == ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for event in events.iter() {
            self.handle(event, observer);
        }
        self.events = events;
        self.flush_dirty(observer);
        Ok(())
    }

    fn dial_more(&mut self) {
        while self.to_dial > 0 && self.inflight < self.max_inflight {
            self.to_dial -= 1;
            let index = self.dialled;
            self.dialled += 1;
            match self.open_socket(index) {
                Ok(socket) => {
                    let entry = self.clients.vacant_entry();
                    let key = entry.key();
                    let mut client = Client::new(socket, index);
                    if let Err(e) = self.poll.registry().register(
                        &mut client.socket,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.count_failure(index, Failure::Connect(e).label());
                        continue;
                    }
                    entry.insert(client);
                    self.inflight += 1;
                }
                Err(e) => self.count_failure(index, Failure::Connect(e).label()),
            }
        }
    }

    /// A non-blocking socket, bound to its source address, with `connect` under way.
    fn open_socket(&self, index: u32) -> io::Result<TcpStream> {
        let (route, source) = self.route(index);
        let addr = route.target.addr;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        // Latency is what we measure; Nagle's algorithm would add to it.
        socket.set_tcp_nodelay(true)?;
        if let Some(source) = source {
            defer_port_choice(&socket)?;
            socket.bind(&SockAddr::from(SocketAddr::from((source, 0))))?;
        }
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
    }

    fn handle(&mut self, event: &MioEvent, observer: &mut impl Observer) {
        let key = event.token().0;
        let Some(client) = self.clients.get_mut(key) else {
            return; // an event for a client removed earlier in this turn
        };
        if client.phase() == Phase::Connecting {
            if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                return;
            }
            let (route, _) = route_for(&self.routes, client.index);
            match client.finish_connect(&route.target) {
                Ok(true) => mark_dirty(&mut self.dirty, key, client),
                Ok(false) => return,
                Err(failure) => return self.fail(key, failure, observer),
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(key, observer);
        }
        if event.is_writable() {
            self.flush(key, observer);
        }
    }

    /// Reads one client until `WouldBlock`: an edge-triggered event comes only once.
    fn read(&mut self, key: usize, observer: &mut impl Observer) {
        loop {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let n = match client.read(&mut self.read_buf) {
                Ok(0) => {
                    let failure = client.eof();
                    return self.fail(key, failure, observer);
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let failure = Failure::Io(client.phase(), e);
                    return self.fail(key, failure, observer);
                }
            };
            // Stamped per read, not per turn: a turn over thousands of clients takes a while,
            // and a latency measured against the turn's start would come out too short.
            let now = Instant::now();
            let (mut opened, mut closed) = (false, false);
            let tally = &mut self.tally;
            let faults = &mut self.faults;
            let dialled = self.dialled;
            let data = &self.read_buf[..n];
            let result = client.receive(data, &self.notices, &mut self.masks, &mut |event| {
                match event {
                    Event::Opened => {
                        // Reported before the first message, which may come in the same read.
                        opened = true;
                        tally.opened += 1;
                        observer.opened(key, dialled, now);
                    }
                    Event::Chat(body) => observer.chat(key, body, now),
                    Event::Envelope(inner) => {
                        if !observer.chat_as_is(key, inner, now) {
                            unwrap_envelope((key, dialled), inner, now, observer, faults);
                        }
                    }
                    Event::Notice(notice, count) => {
                        observer.notice_dialled(key, notice, count, now, dialled)
                    }
                    Event::NotChat(text) => faults.record(Fault::NotChat, 1, || {
                        format!("client {key} got the text {}", quote(text))
                    }),
                    Event::Binary(len) => faults.record(Fault::Binary, 1, || {
                        format!("client {key} got a binary message of {len} bytes")
                    }),
                    Event::Closed => closed = true,
                }
            });
            if opened {
                self.inflight -= 1; // its handshake slot is free for the next dial
            }
            if client.has_output() {
                mark_dirty(&mut self.dirty, key, client);
            }
            match result {
                Err(failure) => return self.fail(key, failure, observer),
                Ok(()) if closed => {
                    self.tally.closed_clean += 1;
                    self.remove(key);
                    observer.gone(key);
                    return;
                }
                Ok(()) => {}
            }
        }
    }

    fn flush(&mut self, key: usize, observer: &mut impl Observer) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        client.dirty = false;
        if let Err(failure) = client.flush() {
            self.fail(key, failure, observer);
        }
    }

    fn flush_dirty(&mut self, observer: &mut impl Observer) {
        for key in std::mem::take(&mut self.dirty) {
            self.flush(key, observer);
        }
    }

    /// Ends a client that failed and counts why.
    fn fail(&mut self, key: usize, failure: Failure, observer: &mut impl Observer) {
        debug!("client #{key}: {failure}");
        let Some(client) = self.remove(key) else {
            return;
        };
        self.count_failure(client.index, failure.label());
        match client.phase() {
            Phase::Connecting | Phase::Handshake => self.inflight -= 1,
            Phase::Open | Phase::Closing => {
                self.tally.lost_after_open += 1;
                observer.gone(key);
            }
        }
    }

    /// Counts a failure of client `index` under `label`, which names the client's target when
    /// there are several (a cluster with one process down shows which).
    fn count_failure(&mut self, index: u32, label: String) {
        let label = if self.routes.len() > 1 {
            format!("{}: {label}", self.route(index).0.target.url)
        } else {
            label
        };
        *self.tally.failures.entry(label).or_default() += 1;
    }

    fn route(&self, index: u32) -> (&Route, Option<Ipv4Addr>) {
        route_for(&self.routes, index)
    }

    fn remove(&mut self, key: usize) -> Option<Client> {
        let mut client = self.clients.try_remove(key)?;
        if let Err(e) = self.poll.registry().deregister(&mut client.socket) {
            debug!("client #{key}: deregister: {e}");
        }
        Some(client)
    }
}

/// The slow way for a chat message the observer did not take as it stood: unescaped, then a
/// notice or a chat message; not a valid JSON string, a fault.
fn unwrap_envelope(
    (key, dialled): (usize, u32),
    inner: &str,
    now: Instant,
    observer: &mut impl Observer,
    faults: &mut Faults,
) {
    match chat::unescape(inner) {
        Some(body) => match Notice::of_body(&body) {
            Some(notice) => observer.notice_dialled(key, notice, 1, now, dialled),
            None => observer.chat(key, &body, now),
        },
        None => faults.record(Fault::NotChat, 1, || {
            format!(
                "client {key} got a body that is not a JSON string: {}",
                quote(inner)
            )
        }),
    }
}

/// Moves the choice of source port from `bind` to `connect` (`IP_BIND_ADDRESS_NO_PORT`), where
/// the kernel knows the destination as well. A port picked at `bind` may be one whose last
/// connection to this server still sits in TIME_WAIT on the server's side (the server hangs up
/// first); the SYN then meets that old connection and the handshake waits out a 1 s retransmit.
fn defer_port_choice(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer to a live one, of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Client `index`'s target and source address.
fn route_for(routes: &[Route], index: u32) -> (&Route, Option<Ipv4Addr>) {
    target::route_of(routes, index).expect("Fleet::new refuses an empty list of routes")
}

fn mark_dirty(dirty: &mut Vec<usize>, key: usize, client: &mut Client) {
    if !client.dirty {
        client.dirty = true;
        dirty.push(key);
    }
}
