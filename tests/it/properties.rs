//! Property tests (proptest) for the sans-I/O core: the guarantees that must hold for *every*
//! input, not just the examples in the other test files.
//!
//! * TCP may cut a byte stream anywhere, so how the reads fall must never matter: a request head
//!   and a run of client frames, fed in any chunking, make a connection write and broadcast
//!   exactly what the same bytes make in one piece; and `http::decide` says `Incomplete` on every
//!   prefix of a head, then the same decision from the whole head on.
//! * The room delivers every message to every member exactly once, all in one order, whatever
//!   the interleaving of joins, leaves, messages, overflowing queues and ends of turns: checked
//!   against a reference model that is little more than a set of members and a list per client.
//!
//! Case counts are kept modest so the file runs in seconds; the fuzz targets in `fuzz/` explore
//! the same state machines for longer.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use mio_chat::connection::{Connection, Context, Event, Phase};
use mio_chat::http::{decide, Decision, OriginPolicy};
use mio_chat::message::{MemberId, Message, Version, JOINED, LEFT};
use mio_chat::presence::Presence;
use mio_chat::room::Batch;
use mio_chat::Config;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Client byte streams
// ---------------------------------------------------------------------------------------------

/// One client frame, before encoding.
#[derive(Debug, Clone)]
struct ClientFrame {
    /// FIN, RSV and opcode: the first byte on the wire.
    first: u8,
    payload: Vec<u8>,
    mask: [u8; 4],
    /// Use the 64-bit length form even for a short payload (legal, if wasteful).
    long_form: bool,
}

impl ClientFrame {
    /// The library's encoder (`mio_chat::frame::push_masked`), except for the 64-bit length
    /// form of a short payload, which only this test writes: legal, and never minimal.
    fn encode(&self, out: &mut Vec<u8>) {
        if !self.long_form {
            return mio_chat::frame::push_masked(out, self.first, &self.payload, self.mask);
        }
        out.push(self.first);
        match self.payload.len() {
            n if self.long_form => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&self.mask);
        let mask = self.mask;
        out.extend(
            self.payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]),
        );
    }
}

fn frame(first: u8, payload: Vec<u8>) -> impl Strategy<Value = ClientFrame> {
    (any::<[u8; 4]>(), prop::bool::weighted(0.1)).prop_map(move |(mask, long_form)| ClientFrame {
        first,
        payload: payload.clone(),
        mask,
        long_form,
    })
}

/// Cuts `data` at the given points (any order, repeats allowed) into consecutive pieces.
fn cut(data: &[u8], points: &[Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = points.iter().map(|p| p.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
}

/// A data message, whole or in fragments, possibly with control frames between the fragments.
/// Text is cut at arbitrary *byte* offsets, so fragments may split a character in two.
fn message() -> impl Strategy<Value = Vec<ClientFrame>> {
    let text = "\\PC{0,40}".prop_map(String::into_bytes);
    let payload = prop_oneof![
        6 => text.clone().prop_map(|t| (0x1u8, t)),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (0x2u8, b)),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| (0x1u8, b)), // rarely UTF-8
        1 => text.prop_map(|t| (0x1u8, t.repeat(8))), // 16-bit lengths and the size limit
    ];
    let pings = prop::collection::vec(control(), 0..2);
    (payload, prop::collection::vec(any::<Index>(), 0..3), pings)
        .prop_flat_map(|((opcode, data), points, pings)| {
            let pieces = cut(&data, &points);
            let last = pieces.len() - 1;
            let frames: Vec<_> = pieces
                .into_iter()
                .enumerate()
                .map(|(i, piece)| {
                    let op = if i == 0 { opcode } else { 0x0 };
                    let fin = if i == last { 0x80 } else { 0 };
                    frame(fin | op, piece)
                })
                .collect();
            (frames, Just(pings), any::<Index>())
        })
        .prop_map(|(mut frames, pings, at)| {
            let at = at.index(frames.len());
            frames.splice(at..at, pings);
            frames
        })
}

/// Ping, pong, or close (with codes good and bad, and a reason that may be bad UTF-8).
fn control() -> impl Strategy<Value = ClientFrame> {
    let short = prop::collection::vec(any::<u8>(), 0..20);
    let close_payload = prop_oneof![
        Just(Vec::new()),
        (
            prop::sample::select(vec![1000u16, 1001, 1003, 1005, 1011, 3000, 4999, 999, 5000]),
            prop_oneof!["\\PC{0,10}".prop_map(String::into_bytes), Just(vec![0xFF])],
        )
            .prop_map(|(code, reason)| [&code.to_be_bytes()[..], &reason].concat()),
    ];
    prop_oneof![
        3 => short.clone().prop_flat_map(|p| frame(0x89, p)),
        2 => short.prop_flat_map(|p| frame(0x8A, p)),
        1 => close_payload.prop_flat_map(|p| frame(0x88, p)),
    ]
}

/// What a client may send after the handshake: mostly messages, some stray or broken frames.
fn client_frames() -> impl Strategy<Value = Vec<ClientFrame>> {
    let item = prop_oneof![
        8 => message(),
        2 => control().prop_map(|f| vec![f]),
        // A continuation with no message, a reserved opcode, an RSV bit: protocol errors.
        1 => prop::sample::select(vec![0x80u8, 0x00, 0x83, 0xC1])
            .prop_flat_map(|first| frame(first, b"x".to_vec()))
            .prop_map(|f| vec![f]),
    ];
    prop::collection::vec(item, 0..6).prop_map(|items| items.concat())
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A connection with the world it writes into.
struct Harness {
    conn: Connection,
    config: Config,
    broadcast: Batch,
    now: Instant,
}

impl Harness {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        Harness {
            conn: Connection::new(now),
            config,
            broadcast: Batch::default(),
            now,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let cx = Context {
            now: self.now,
            config: &self.config,
            degraded: false,
        };
        let broadcast = &mut self.broadcast;
        // `receive` unmasks in place, so it gets a copy, like the reactor's read buffer.
        self.conn
            .receive(&mut bytes.to_vec(), &cx, &mut |event| match event {
                Event::Joined(_) => broadcast.joined(MemberId::default(), 1),
                Event::Said(text) => broadcast.said(MemberId::default(), text),
                Event::Left => broadcast.left(MemberId::default(), 1),
                _ => {}
            });
    }

    /// Everything the connection wrote and broadcast, and where it ended up.
    fn outcome(&self) -> (Vec<u8>, Vec<u8>, Phase) {
        (
            self.conn.output().pending().to_vec(),
            self.broadcast.as_bytes().to_vec(),
            self.conn.phase(),
        )
    }
}

/// Feeds `pieces` one read at a time to a fresh connection.
fn run(config: &Config, pieces: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>, Phase) {
    let mut h = Harness::new(config.clone());
    for piece in pieces {
        h.feed(piece);
    }
    h.outcome()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// However the reads fall, a connection writes and broadcasts the same bytes.
    #[test]
    fn a_stream_cut_anywhere_behaves_like_one_piece(
        echo in any::<bool>(),
        max_message_size in prop::sample::select(vec![16usize, 125, 65536]),
        frames in client_frames(),
        points in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let config = Config { echo, max_message_size, ..Config::default() };
        let mut stream = upgrade_request(if echo { "/echo" } else { "/ws" }).into_bytes();
        for f in &frames {
            f.encode(&mut stream);
        }
        let whole = run(&config, &[stream.clone()]);
        prop_assert!(whole.0.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        prop_assert_eq!(run(&config, &cut(&stream, &points)), whole);
    }
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

/// Request heads of every kind the server answers: upgrades good and bad, pages, errors.
fn request_head() -> impl Strategy<Value = String> {
    let method = prop::sample::select(vec!["GET", "GET", "GET", "POST"]);
    let path = prop::sample::select(vec!["/", "/ws", "/ws?room=1", "/echo", "/healthz", "/x"]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    let header = prop_oneof![
        Just("Host: localhost:8080".to_string()),
        Just("Upgrade: websocket".to_string()),
        Just("Connection: keep-alive, Upgrade".to_string()),
        Just(format!("Sec-WebSocket-Key: {KEY}")),
        Just("Sec-WebSocket-Version: 13".to_string()),
        Just("Sec-WebSocket-Version: 8".to_string()),
        Just("Origin: http://localhost:3000".to_string()),
        Just("Origin: http://evil.example".to_string()),
        "X-[a-z]{1,8}: [ -~]{0,20}",
    ];
    // Usually the five upgrade headers in some order, plus extras; sometimes any subset.
    let headers = prop_oneof![
        (Just(()), prop::collection::vec(header.clone(), 0..3)).prop_map(|(_, extra)| {
            let mut all: Vec<String> = [
                "Host: localhost:8080",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
            ]
            .map(String::from)
            .to_vec();
            all.push(format!("Sec-WebSocket-Key: {KEY}"));
            all.extend(extra);
            all
        }),
        prop::collection::vec(header, 0..8),
    ]
    .prop_shuffle();
    let line_end = prop::sample::select(vec!["\r\n", "\r\n", "\n"]);
    (method, path, version, headers, line_end).prop_map(|(m, p, v, headers, eol)| {
        let mut head = format!("{m} {p} {v}{eol}");
        for h in headers {
            head.push_str(&h);
            head.push_str(eol);
        }
        head.push_str(eol);
        head
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `Incomplete` on every prefix of a head, then one decision, whatever follows the head.
    #[test]
    fn a_request_head_is_decided_once_it_is_whole(
        head in request_head(),
        echo in any::<bool>(),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let origins = OriginPolicy::default();
        let bytes = [head.as_bytes(), &trailing].concat();
        let decision = decide(head.as_bytes(), &origins, echo);
        prop_assert_ne!(&decision, &Decision::Incomplete);
        for cut in 0..=bytes.len() {
            let expected = if cut < head.len() { &Decision::Incomplete } else { &decision };
            prop_assert_eq!(&decide(&bytes[..cut], &origins, echo), expected, "cut at {}", cut);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The room
// ---------------------------------------------------------------------------------------------

const KEYS: usize = 5;

/// What happens to the room during the reactor's turns.
#[derive(Debug, Clone)]
enum Op {
    /// A new client on slab key `k` finishes its handshake.
    Join(usize),
    /// The client on `k` goes away.
    Leave(usize),
    /// The client on `k` sends these messages in one read.
    Say(usize, Vec<String>),
    /// Queues on key `k` now overflow past this many bytes (only when not empty, as in the
    /// reactor: a client with nothing pending is keeping up, however big the batch).
    Limit(usize, usize),
    /// The socket of `k` takes everything queued.
    Drain(usize),
    /// The turn ends: what collected in the broadcast goes out.
    FanOut,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        3 => key.clone().prop_map(Op::Join),
        1 => key.clone().prop_map(Op::Leave),
        4 => (key.clone(), prop::collection::vec("[a-z]{0,12}", 1..3))
            .prop_map(|(k, texts)| Op::Say(k, texts)),
        1 => (key.clone(), 0..300usize).prop_map(|(k, limit)| Op::Limit(k, limit)),
        1 => key.prop_map(Op::Drain),
        3 => Just(Op::FanOut),
    ]
}

/// The system under test: a real `Presence` (room and batch), with byte queues for the clients.
#[derive(Default)]
struct Real {
    presence: Presence,
    /// Bytes each client has received, by client (a key is reused by later clients).
    received: Vec<Vec<u8>>,
    /// Bytes not yet written, by client.
    pending: Vec<usize>,
    client_on: HashMap<usize, usize>,
    limit: HashMap<usize, usize>,
}

impl Real {
    /// As the reactor's flush point does: fan out, end those that could not take it (their
    /// leave notices make the next batch), until the batch is empty.
    fn fan_out(&mut self) {
        let Real {
            presence,
            received,
            pending,
            client_on,
            limit,
        } = self;
        while !presence.batch().is_empty() {
            let mut dropped = Vec::new();
            presence.hand_out_batch(|key, frames| {
                let client = client_on[&key];
                let limit = limit.get(&key).copied().unwrap_or(usize::MAX);
                if pending[client] > 0 && pending[client] + frames.len() > limit {
                    dropped.push(key);
                    return false;
                }
                pending[client] += frames.len();
                received[client].extend_from_slice(frames);
                true
            });
            for key in dropped {
                presence.leave(key, None);
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Join(k) if !self.presence.is_member(*k) => {
                let id = self.received.len() as u64;
                self.client_on.insert(*k, self.received.len());
                self.received.push(Vec::new());
                self.pending.push(0);
                self.presence.join((*k, id), Version::V1, None);
            }
            Op::Leave(k) => {
                self.presence.leave(*k, None);
            }
            Op::Say(k, texts) if self.presence.is_member(*k) => {
                for text in texts {
                    self.presence.said((*k, 0), text, None);
                }
            }
            Op::Limit(k, limit) => {
                self.limit.insert(*k, *limit);
            }
            Op::Drain(k) => {
                if let Some(&client) = self.client_on.get(k) {
                    self.pending[client] = 0;
                }
            }
            Op::FanOut => self.fan_out(),
            _ => {}
        }
    }
}

/// The reference: who is a member, and what each client should have, as plain lists.
#[derive(Default)]
struct Model {
    members: BTreeSet<usize>,
    /// What the current turn has to say, in order.
    batch: Vec<String>,
    /// Where in `batch` each member that joined this turn comes in (its own join notice).
    joined_at: HashMap<usize, usize>,
    received: Vec<Vec<String>>,
    pending: Vec<usize>,
    client_on: HashMap<usize, usize>,
    limit: HashMap<usize, usize>,
}

impl Model {
    /// Sends the batch to every member, each from where it came in; members that overflow
    /// leave, and the rest hear of it in the next batch.
    fn fan_out(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut joined_at = std::mem::take(&mut self.joined_at);
        while !batch.is_empty() {
            let mut left = Vec::new();
            for &key in &self.members {
                let part = &batch[joined_at.get(&key).copied().unwrap_or(0)..];
                let size = encoded_len(part);
                let client = self.client_on[&key];
                let limit = self.limit.get(&key).copied().unwrap_or(usize::MAX);
                if self.pending[client] > 0 && self.pending[client] + size > limit {
                    left.push(key);
                } else {
                    self.pending[client] += size;
                    self.received[client].extend(part.iter().cloned());
                }
            }
            for key in &left {
                self.members.remove(key);
            }
            batch = vec![LEFT.to_string(); left.len()];
            joined_at.clear();
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Join(k) if !self.members.contains(k) => {
                self.client_on.insert(*k, self.received.len());
                self.received.push(Vec::new());
                self.pending.push(0);
                self.members.insert(*k);
                self.joined_at.insert(*k, self.batch.len());
                self.batch.push(JOINED.to_string());
            }
            Op::Leave(k) if self.members.remove(k) => {
                self.joined_at.remove(k);
                self.batch.push(LEFT.to_string());
            }
            Op::Say(k, texts) if self.members.contains(k) => {
                self.batch.extend(texts.iter().cloned());
            }
            Op::Limit(k, limit) => {
                self.limit.insert(*k, *limit);
            }
            Op::Drain(k) => {
                if let Some(&client) = self.client_on.get(k) {
                    self.pending[client] = 0;
                }
            }
            Op::FanOut => self.fan_out(),
            _ => {}
        }
    }
}

/// Bytes that `bodies` take as frames: the size the reactor compares with a queue's limit.
fn encoded_len(bodies: &[String]) -> usize {
    let mut b = Batch::default();
    for body in bodies {
        b.said(MemberId::default(), body);
    }
    b.as_bytes().len()
}

/// Splits a run of server frames back into message bodies.
fn bodies(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, start) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (usize::from(n), 2),
        };
        let msg: Message = serde_json::from_slice(&bytes[start..start + len]).unwrap();
        out.push(msg.body.into_owned());
        bytes = &bytes[start + len..];
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every client gets exactly what was said while it was a member, from its own join notice
    /// on, in one order for all. (A client that leaves gets nothing more, not even the rest of
    /// the batch that was collecting when it left: it is going away.)
    #[test]
    fn the_room_delivers_everything_once_in_one_order(
        ops in prop::collection::vec(op(), 0..60),
    ) {
        // Number every message so the order and the uniqueness are visible in the bodies.
        let mut serial = 0;
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Say(k, texts) => Op::Say(k, texts.into_iter().map(|t| {
                    serial += 1;
                    format!("{serial}:{t}")
                }).collect()),
                op => op,
            })
            .collect();

        let (mut real, mut model) = (Real::default(), Model::default());
        for op in ops.iter().chain([&Op::FanOut]) {
            real.apply(op);
            model.apply(op);
            let members: BTreeSet<usize> =
                (0..KEYS).filter(|&k| real.presence.is_member(k)).collect();
            prop_assert_eq!(&members, &model.members, "after {:?}", op);
        }
        prop_assert!(real.presence.batch().is_empty());
        for (client, bytes) in real.received.iter().enumerate() {
            let got = bodies(bytes);
            prop_assert_eq!(&got, &model.received[client], "client {}", client);
            // One order, each message once: the numbers a client sees only ever go up.
            let serials: Vec<u64> = got
                .iter()
                .filter_map(|b| b.split_once(':')?.0.parse().ok())
                .collect();
            prop_assert!(serials.windows(2).all(|w| w[0] < w[1]), "{:?}", serials);
        }
    }
}
