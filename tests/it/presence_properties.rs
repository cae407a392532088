//! The presence invariant, over random interleavings (proptest), with the real sans-I/O parts:
//! `Connection`s fed bytes, the event loop's own room core (`RoomCore`: its `on_event` with the
//! Redis gate, presence deciding joins and leaves, its `fan_out` listing the members that could
//! not take the batch), the backplane's `Ledger` keeping our envelopes, and a fake Redis channel
//! (a queue of published envelopes, handed back when the test says, lost when it says) that can
//! go down and come back. Only the loop's I/O is the test's: its `deliver` writes into each
//! client's list of received bodies, and it ends the refused members as the loop does.
//!
//! What happens: clients connect (sometimes ending in the very read that completes their
//! handshake: a Close, a bad frame, a text then a Close), speak, end in every way (Close frame,
//! protocol error, EOF, ping timeout, dropped as a slow consumer during a fan-out), while Redis
//! hands envelopes back, goes down (what it had not handed back is lost, and the ledger lands it
//! locally) and comes back. A watcher joined first and stays.
//!
//! What must hold, checked against a reference count kept from the connections' own events:
//! - whenever everything has settled (nothing in flight in Redis, nothing pending, the batch
//!   out), the watcher has seen one join per client that joined after it and one leave per such
//!   client that has left: joins − 1 − leaves == clients still here, exactly;
//! - at every moment it has never seen more leaves than joins of others;
//! - every text said after the watcher joined reaches it exactly once, in the order said;
//! - every client's first frame is its own join notice.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mio_chat::backplane::Ledger;
use mio_chat::connection::{Connection, Context, Ending, Event, Sink};
use mio_chat::envelope::Kind;
use mio_chat::message::{Message, JOINED, LEFT};
use mio_chat::presence::{Landing, Member, Publish};
use mio_chat::proxy::Peer;
use mio_chat::room_core::{Relay, RoomCore, Who};
use mio_chat::Config;
use proptest::prelude::*;
use slab::Slab;

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    mio_chat::frame::push_masked(&mut out, first, payload, [1, 2, 3, 4]);
    out
}

/// How a client ends.
#[derive(Debug, Clone, Copy)]
enum End {
    CloseFrame,
    TextThenClose,
    BinaryFrame,
    Unmasked,
    Eof,
    PingTimeout,
    SlowConsumer,
}

#[derive(Debug, Clone)]
enum Op {
    /// A client connects; with an ending, in the same read as its handshake.
    Connect(Option<End>),
    /// Client number `i` (of those ever connected, modulo) says something.
    Say(usize),
    End(usize, End),
    /// Client `i`'s socket stops taking bytes (a fan-out then drops it) / takes everything.
    Stall(usize),
    Drain(usize),
    /// Redis hands back up to `n` envelopes.
    Deliver(usize),
    /// Redis goes away after handing back `n` more; the rest is lost.
    RedisDown(usize),
    RedisUp,
    FanOut,
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        Just(End::CloseFrame),
        Just(End::TextThenClose),
        Just(End::BinaryFrame),
        Just(End::Unmasked),
        Just(End::Eof),
        Just(End::PingTimeout),
        Just(End::SlowConsumer),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::option::weighted(0.3, end()).prop_map(Op::Connect),
        4 => (0..16usize).prop_map(Op::Say),
        2 => (0..16usize, end()).prop_map(|(i, e)| Op::End(i, e)),
        1 => (0..16usize).prop_map(Op::Stall),
        1 => (0..16usize).prop_map(Op::Drain),
        3 => (0..6usize).prop_map(Op::Deliver),
        1 => (0..3usize).prop_map(Op::RedisDown),
        1 => Just(Op::RedisUp),
        3 => Just(Op::FanOut),
    ]
}

/// Redis as one process sees it: a channel of its own envelopes, in publish order.
struct FakeRedis {
    ledger: Ledger,
    up: bool,
    channel: VecDeque<Vec<u8>>,
}

impl Publish for FakeRedis {
    fn publish(&mut self, kind: Kind, body: &str, member: Member) {
        let envelope = self
            .ledger
            .publish(kind, body, member, Instant::now())
            .to_vec();
        self.channel.push_back(envelope);
    }
}

impl Relay for FakeRedis {
    fn is_up(&self) -> bool {
        self.up
    }

    fn node(&self) -> &str {
        self.ledger.node()
    }
}

struct Client {
    conn: Connection,
    id: u64,
    received: Vec<String>,
    stalled: bool,
}

/// What the connections reported, kept as the reference.
#[derive(Default)]
struct Reference {
    /// The watcher has reported `Joined`.
    watcher_joined: bool,
    /// Clients that joined after the watcher and have not left, by id.
    here: Vec<u64>,
    /// Texts said after the watcher joined, in order.
    said: Vec<String>,
}

struct World {
    clients: Slab<Client>,
    /// Every key ever used, in order (ops name clients by index into this).
    history: Vec<(usize, u64)>,
    core: RoomCore<FakeRedis>,
    reference: Reference,
    watcher: usize,
    config: Config,
    now: Instant,
    next_id: u64,
    serial: u64,
}

impl World {
    fn new(redis_up: bool) -> World {
        // The config first: its budget's epoch must not be later than the clock.
        let config = Config::default();
        let now = Instant::now();
        let redis = FakeRedis {
            ledger: Ledger::new("me".into(), 1 << 16),
            up: redis_up,
            channel: VecDeque::new(),
        };
        let mut world = World {
            clients: Slab::new(),
            history: Vec::new(),
            core: RoomCore::new(Some(redis), 1 << 16, now),
            reference: Reference::default(),
            watcher: 0,
            config,
            now,
            next_id: 0,
            serial: 0,
        };
        world.watcher = world.connect(None);
        world
    }

    /// Notes one event of client `key` in the reference, then hands it to the room core, as the
    /// loop does.
    fn on_event(&mut self, (key, id): Member, event: Event) {
        let reference = &mut self.reference;
        match event {
            Event::Joined(_) if key == self.watcher => reference.watcher_joined = true,
            Event::Joined(_) if reference.watcher_joined => reference.here.push(id),
            Event::Said(text) if reference.watcher_joined => reference.said.push(text.into()),
            Event::Left => reference.here.retain(|&other| other != id),
            _ => {}
        }
        let peer = Peer::Direct(([127, 0, 0, 1], 1).into());
        self.core.on_event(Who { key, id, peer }, event);
    }

    /// Runs `act` on client `key`'s connection and handles the events it reports.
    fn drive(&mut self, key: usize, act: impl FnOnce(&mut Connection, &Context, &mut Sink)) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let member = (key, client.id);
        let mut events = Vec::new();
        let cx = Context {
            now: self.now,
            config: &self.config,
            degraded: self.core.degraded(),
        };
        act(&mut client.conn, &cx, &mut |e| events.push(owned(e)));
        // Replayed in order (texts borrow the read buffer, so they are copied first).
        for event in events {
            match event {
                Ok(text) => self.on_event(member, Event::Said(&text)),
                Err(event) => self.on_event(member, event),
            }
        }
        if self.clients[key].conn.is_closed() {
            self.clients.remove(key);
        }
    }

    fn feed(&mut self, key: usize, mut bytes: Vec<u8>) {
        self.drive(key, |conn, cx, events| conn.receive(&mut bytes, cx, events));
    }

    fn connect(&mut self, ending: Option<End>) -> usize {
        self.next_id += 1;
        let key = self.clients.insert(Client {
            conn: Connection::new(self.now),
            id: self.next_id,
            received: Vec::new(),
            stalled: false,
        });
        self.history.push((key, self.next_id));
        let mut bytes = REQUEST.to_vec();
        match ending.map(|e| self.ending_bytes(e)) {
            Some(Some(more)) => bytes.extend(more),
            Some(None) => {
                self.feed(key, bytes);
                self.end(key, ending.unwrap_or(End::Eof));
                return key;
            }
            None => {}
        }
        self.feed(key, bytes);
        key
    }

    /// The bytes that end a client, for the endings that are bytes.
    fn ending_bytes(&mut self, end: End) -> Option<Vec<u8>> {
        Some(match end {
            End::CloseFrame => frame(0x88, &1000u16.to_be_bytes()),
            End::TextThenClose => [frame(0x81, self.text().as_bytes()), frame(0x88, &[])].concat(),
            End::BinaryFrame => frame(0x82, b"bin"),
            End::Unmasked => vec![0x81, 0x00],
            End::Eof | End::PingTimeout | End::SlowConsumer => return None,
        })
    }

    fn text(&mut self) -> String {
        self.serial += 1;
        format!("t{}", self.serial)
    }

    fn end(&mut self, key: usize, end: End) {
        if let Some(bytes) = self.ending_bytes(end) {
            return self.feed(key, bytes);
        }
        let later = self.now + Duration::from_secs(3600);
        self.drive(key, |conn, cx, events| match end {
            End::PingTimeout => {
                let cx = Context { now: later, ..*cx };
                conn.on_deadline(&cx, events);
                conn.on_deadline(&cx, events);
                conn.abort(Ending::PeerLeft, later, events); // it never answers the close
            }
            End::SlowConsumer => conn.abort(Ending::SlowConsumer, cx.now, events),
            _ => conn.peer_closed(cx.now, events),
        });
    }

    /// A client by the op's index, never the watcher.
    fn pick(&self, i: usize) -> Option<usize> {
        let (key, id) = self
            .history
            .get(1 + i % self.history.len().saturating_sub(1).max(1))?;
        let client = self.clients.get(*key)?;
        (client.id == *id && *key != self.watcher).then_some(*key)
    }

    fn redis(&self) -> &FakeRedis {
        self.core.relay().expect("a relay")
    }

    fn deliver(&mut self, n: usize) {
        self.core.with_relay(|redis, land| {
            for _ in 0..n {
                let Some(envelope) = redis.channel.pop_front() else {
                    return;
                };
                redis.ledger.receive(&envelope, Instant::now(), land);
            }
        });
    }

    /// As the loop's flush point: the core fans out through `deliver`, the members it lists as
    /// refused are ended (their leaves come back to the core), and again while a batch is due.
    fn fan_out(&mut self) {
        loop {
            let mut refused = Vec::new();
            let clients = &mut self.clients;
            let went = self.core.fan_out(self.now, &mut refused, |key, frames| {
                let client = clients.get_mut(key).ok_or(Ending::PeerLeft)?;
                if client.stalled {
                    return Err(Ending::SlowConsumer);
                }
                client.received.extend(bodies(frames));
                Ok(())
            });
            for (key, why) in refused {
                if self.clients.contains(key) {
                    self.drive(key, |conn, cx, events| conn.abort(why, cx.now, events));
                } else {
                    self.core.forget(key); // as the loop's `abort` does
                }
            }
            if !went {
                return;
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Connect(ending) => {
                self.connect(ending);
            }
            Op::Say(i) => {
                if let Some(key) = self.pick(i) {
                    let text = self.text();
                    self.feed(key, frame(0x81, text.as_bytes()));
                }
            }
            Op::End(i, end) => {
                if let Some(key) = self.pick(i) {
                    self.end(key, end);
                }
            }
            Op::Stall(i) | Op::Drain(i) => {
                if let Some(key) = self.pick(i) {
                    self.clients[key].stalled = matches!(op, Op::Stall(_));
                }
            }
            Op::Deliver(n) => self.deliver(n),
            Op::RedisDown(n) if self.redis().up => {
                self.deliver(n);
                self.core.with_relay(|redis, land| {
                    redis.channel.clear();
                    redis.up = false;
                    redis.ledger.land_pending(land);
                });
            }
            Op::RedisUp => {
                // As the backplane does when its links come back: it lands `Back`, and the core
                // re-announces this process's members.
                self.core.with_relay(|redis, land| {
                    if !redis.up {
                        redis.up = true;
                        land(Landing::Back);
                    }
                });
            }
            Op::FanOut => self.fan_out(),
            Op::RedisDown(_) => {}
        }
    }

    /// Until nothing is in flight: Redis hands everything back and the batch goes out (a
    /// fan-out can drop a stalled client, whose leave may go through Redis again).
    fn settle(&mut self) {
        while !self.redis().channel.is_empty() || !self.core.batch().is_empty() {
            self.deliver(usize::MAX);
            self.fan_out();
        }
    }

    fn watcher_saw(&self) -> &[String] {
        &self.clients[self.watcher].received
    }
}

/// An event kept past the call that reported it: a text, or an event without one.
fn owned(event: Event) -> Result<String, Event<'static>> {
    match event {
        Event::Said(text) => Ok(text.to_string()),
        Event::Joined(v) => Err(Event::Joined(v)),
        Event::Left => Err(Event::Left),
        Event::Echoed => Err(Event::Echoed),
        Event::Throttled(held) => Err(Event::Throttled(held)),
        Event::Ended(ending) => Err(Event::Ended(ending)),
    }
}

/// Splits a run of server frames (all short here) back into bodies.
fn bodies(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, start) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (usize::from(n), 2),
        };
        let msg: Message = serde_json::from_slice(&bytes[start..start + len]).expect("json");
        out.push(msg.body.into_owned());
        bytes = &bytes[start + len..];
    }
    out
}

fn count(seen: &[String], body: &str) -> usize {
    seen.iter().filter(|b| *b == body).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_join_the_watcher_sees_is_followed_by_exactly_one_leave(
        redis_up in any::<bool>(),
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut world = World::new(redis_up);
        for op in &ops {
            world.apply(op);
            let seen = world.watcher_saw();
            let others_joined = count(seen, JOINED).saturating_sub(1);
            prop_assert!(count(seen, LEFT) <= others_joined, "a leave without a join, after {:?}", op);
            if world.redis().channel.is_empty() && world.redis().ledger.stats().pending == 0 {
                world.settle();
                let seen = world.watcher_saw();
                let balance = count(seen, JOINED) - 1 - count(seen, LEFT);
                prop_assert_eq!(balance, world.reference.here.len(), "after {:?}", op);
            }
        }
        // Bring Redis back, let everyone else go, and settle.
        world.apply(&Op::RedisUp);
        world.settle();
        let others: Vec<usize> = world.clients.iter().map(|(k, _)| k).filter(|&k| k != world.watcher).collect();
        for key in others {
            world.end(key, End::CloseFrame);
        }
        world.settle();
        prop_assert!(world.reference.here.is_empty());
        let seen = world.watcher_saw().to_vec();
        prop_assert_eq!(seen.first().map(String::as_str), Some(JOINED));
        prop_assert_eq!(count(&seen, JOINED) - 1, count(&seen, LEFT), "{:?}", seen);
        let texts: Vec<String> = seen.into_iter().filter(|b| b.starts_with('t')).collect();
        prop_assert_eq!(texts, world.reference.said.clone());
        for (_, client) in &world.clients {
            let first = client.received.first().map(String::as_str);
            prop_assert!(first.is_none_or(|b| b == JOINED), "{:?}", client.received);
        }
    }
}
