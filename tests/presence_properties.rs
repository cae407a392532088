//! The presence invariant, over random interleavings (proptest), with the real sans-I/O parts:
//! `Connection`s fed bytes, `Presence` deciding joins and leaves, the backplane's `Ledger`
//! keeping our envelopes, and a fake Redis channel (a queue of published envelopes, handed back
//! when the test says, lost when it says) that can go down and come back.
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
use mio_chat::presence::{Member, Presence, Publish};
use mio_chat::Config;
use proptest::prelude::*;
use slab::Slab;

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1, 2, 3, 4];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
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
    presence: Presence,
    redis: FakeRedis,
    reference: Reference,
    watcher: usize,
    config: Config,
    now: Instant,
    next_id: u64,
    serial: u64,
}

impl World {
    fn new(redis_up: bool) -> World {
        let mut world = World {
            clients: Slab::new(),
            history: Vec::new(),
            presence: Presence::default(),
            redis: FakeRedis {
                ledger: Ledger::new("me".into(), 1 << 16),
                up: redis_up,
                channel: VecDeque::new(),
            },
            reference: Reference::default(),
            watcher: 0,
            config: Config::default(),
            now: Instant::now(),
            next_id: 0,
            serial: 0,
        };
        world.watcher = world.connect(None);
        world
    }

    /// Handles one event of client `key`, as the reactor's hub does.
    fn on_event(&mut self, (key, id): Member, event: Event) {
        let redis = self.redis.up.then_some(&mut self.redis as &mut dyn Publish);
        let reference = &mut self.reference;
        match event {
            Event::Joined(_) if key == self.watcher => reference.watcher_joined = true,
            Event::Joined(_) if reference.watcher_joined => reference.here.push(id),
            Event::Said(text) if reference.watcher_joined => reference.said.push(text.into()),
            Event::Left => reference.here.retain(|&other| other != id),
            _ => {}
        }
        match event {
            Event::Joined(v) => self.presence.join((key, id), v, redis),
            Event::Said(text) => self.presence.said((key, id), text, redis),
            Event::Left => {
                self.presence.leave(key, redis);
            }
            _ => {}
        }
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
            degraded: !self.redis.up,
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

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(envelope) = self.redis.channel.pop_front() else {
                return;
            };
            let presence = &mut self.presence;
            self.redis
                .ledger
                .receive(&envelope, &mut |landing| presence.land(landing));
        }
    }

    /// As the reactor's flush point: fan out, end the members that could not take it, repeat.
    fn fan_out(&mut self) {
        while !self.presence.batch().is_empty() {
            let mut dropped = Vec::new();
            let clients = &mut self.clients;
            self.presence.fan_out(|key, frames| {
                let client = &mut clients[key];
                if client.stalled {
                    dropped.push(key);
                    return false;
                }
                client.received.extend(bodies(frames));
                true
            });
            for key in dropped {
                self.end(key, End::SlowConsumer);
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
            Op::RedisDown(n) if self.redis.up => {
                self.deliver(n);
                self.redis.channel.clear();
                self.redis.up = false;
                let presence = &mut self.presence;
                self.redis
                    .ledger
                    .land_pending(&mut |landing| presence.land(landing));
            }
            Op::RedisUp => self.redis.up = true,
            Op::FanOut => self.fan_out(),
            Op::RedisDown(_) => {}
        }
    }

    /// Until nothing is in flight: Redis hands everything back and the batch goes out (a
    /// fan-out can drop a stalled client, whose leave may go through Redis again).
    fn settle(&mut self) {
        while !self.redis.channel.is_empty() || !self.presence.batch().is_empty() {
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
        Event::MetricsRequested => Err(Event::MetricsRequested),
        Event::Forwarded(_) => Err(Event::Forwarded("")),
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
            if world.redis.channel.is_empty() && world.redis.ledger.stats().pending == 0 {
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
