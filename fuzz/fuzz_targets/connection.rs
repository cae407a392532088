//! Fuzz target: the whole per-connection state machine, `connection::Connection`, driven the way
//! the reactor drives it: reads cut at arbitrary points, partial writes, deadlines, EOF.
//!
//! Input layout (short inputs just mean fewer ops and fewer bytes):
//! - byte 0, flags: bits 0-1 put a valid upgrade request in front of the stream (0 none, 1 `/ws`,
//!   2 `/echo`, 3 `/ws` with `--echo` on) so the fuzzer starts in the WebSocket phase; bits 2-3
//!   pick `max_message_size` (65536, 125, 16, 1000); bit 4 turns keepalive pings off.
//! - byte 1: the number of ops (at most [`MAX_OPS`]), then 3 bytes per op `[kind, a, b]`:
//!   kind % 4 = 0 feed the next `a | b << 8` bytes of the stream, 1 a socket write takes that
//!   many queued bytes, 2 time passes (`a` seconds; 0 jumps to the connection's own deadline)
//!   and `on_deadline` runs, 3 the peer hangs up.
//! - the rest: the stream the peer sends; what no op fed arrives in one last read.
//!
//! Invariants: no panic; everything the connection writes and broadcasts is bounded by what it
//! read (plus one fixed answer) and by `max_message_size`; the broadcast is well-formed chat
//! frames, and the WebSocket output is well-formed server frames with nothing after a Close; the
//! buffers it keeps are bounded; and when no deadline or hang-up interleaves, the same stream fed
//! in one piece writes and broadcasts exactly the same bytes.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mio_chat::connection::{Connection, Context, Event, Phase, Sink};
use mio_chat::frame::MAX_CONTROL_PAYLOAD;
use mio_chat::http::{CHAT_PAGE, MAX_HEAD};
use mio_chat::message::{MemberId, JOINED};
use mio_chat::room::Batch;
use mio_chat::Config;

const MAX_OPS: usize = 64;

const CHAT_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";
const ECHO_REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[derive(Debug, Clone, Copy)]
enum Op {
    Feed(usize),
    Sent(usize),
    Deadline(u8),
    PeerClosed,
}

/// What the connection did: every byte it wrote, every byte it broadcast, where it ended.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    written: Vec<u8>,
    broadcast: Vec<u8>,
    phase: Phase,
}

fuzz_target!(|data: &[u8]| {
    let [flags, op_count, rest @ ..] = data else {
        return;
    };
    let defaults = Config::default();
    let config = Config {
        echo: flags & 3 != 1,
        max_message_size: [65536, 125, 16, 1000][usize::from(flags >> 2 & 3)],
        ping_interval: defaults.ping_interval.filter(|_| flags & 0x10 == 0),
        ..defaults
    };
    let prefix: &[u8] = match flags & 3 {
        0 => b"",
        2 => ECHO_REQUEST,
        _ => CHAT_REQUEST,
    };
    let op_count = usize::from(*op_count).min(MAX_OPS).min(rest.len() / 3);
    let (op_bytes, body) = rest.split_at(op_count * 3);
    let ops: Vec<Op> = op_bytes
        .chunks_exact(3)
        .map(|op| {
            let n = usize::from(u16::from_le_bytes([op[1], op[2]]));
            match op[0] & 3 {
                0 => Op::Feed(n),
                1 => Op::Sent(n),
                2 => Op::Deadline(op[1]),
                _ => Op::PeerClosed,
            }
        })
        .collect();
    let stream = [prefix, body].concat();

    let split = run(&config, &stream, &ops);
    if ops.iter().all(|op| matches!(op, Op::Feed(_) | Op::Sent(_))) {
        let whole = run(&config, &stream, &[]);
        assert_eq!(
            split, whole,
            "a split stream behaved unlike the same bytes in one piece"
        );
    }
});

/// Plays `ops` against a fresh connection, then feeds what is left of `stream` and collects
/// what it wrote, checking the bounds after every step.
fn run(config: &Config, stream: &[u8], ops: &[Op]) -> Trace {
    let mut now = Instant::now();
    let mut conn = Connection::new(now);
    let mut broadcast = Batch::default();
    // Joined and Left as reported: they must pair up, whatever the bytes.
    let mut presence = (0u32, 0u32);
    let mut written = Vec::new();
    let mut counts = Counts::default();

    for op in ops {
        match *op {
            // The reactor reads nothing from a client whose budget is spent: its bytes wait.
            Op::Feed(_) if conn.is_held() => {}
            Op::Feed(n) => {
                let n = n.min(stream.len() - counts.fed);
                let piece = &stream[counts.fed..counts.fed + n];
                feed(
                    &mut conn,
                    config,
                    &mut broadcast,
                    &mut presence,
                    now,
                    piece,
                    &mut counts,
                );
            }
            Op::Sent(n) => {
                let pending = conn.output().pending();
                let n = n.min(pending.len());
                written.extend_from_slice(&pending[..n]);
                conn.sent(n);
            }
            Op::Deadline(secs) => {
                now = match secs {
                    0 => conn.deadline(config).map_or(now, |due| due.max(now)),
                    _ => now + Duration::from_secs(secs.into()),
                };
                let cx = Context {
                    now,
                    config,
                    degraded: false,
                };
                conn.on_deadline(&cx, &mut |e| count(e, &mut presence));
                counts.deadlines += 1;
            }
            Op::PeerClosed => conn.peer_closed(now, &mut |e| count(e, &mut presence)),
        }
        check_bounds(&conn, config, &written, &broadcast, &counts);
        check_presence(&conn, presence);
    }
    let rest = &stream[counts.fed..];
    feed(
        &mut conn,
        config,
        &mut broadcast,
        &mut presence,
        now,
        rest,
        &mut counts,
    );
    check_bounds(&conn, config, &written, &broadcast, &counts);
    check_presence(&conn, presence);
    written.extend_from_slice(conn.output().pending());
    check_output(&written);
    check_broadcast(broadcast.as_bytes(), config.max_message_size);
    Trace {
        written,
        broadcast: broadcast.as_bytes().to_vec(),
        phase: conn.phase(),
    }
}

/// What the bounds are relative to.
#[derive(Default)]
struct Counts {
    fed: usize,
    largest_read: usize,
    deadlines: usize,
}

/// One socket read.
fn feed(
    conn: &mut Connection,
    config: &Config,
    broadcast: &mut Batch,
    presence: &mut (u32, u32),
    now: Instant,
    piece: &[u8],
    counts: &mut Counts,
) {
    counts.fed += piece.len();
    counts.largest_read = counts.largest_read.max(piece.len());
    let cx = Context {
        now,
        config,
        degraded: false,
    };
    let events: &mut Sink = &mut |event| {
        match event {
            Event::Joined(_) => broadcast.joined(MemberId::default(), 1),
            Event::Said(text) => broadcast.said(MemberId::default(), text),
            _ => {}
        }
        count(event, presence);
    };
    // `receive` may unmask in place, as it does in the reactor's read buffer.
    conn.receive(&mut piece.to_vec(), &cx, events);
}

/// Counts Joined and Left.
fn count(event: Event, (joined, left): &mut (u32, u32)) {
    match event {
        Event::Joined(_) => *joined += 1,
        Event::Left => *left += 1,
        _ => {}
    }
}

/// At most one Joined; a Left only after it, once; and one as soon as the connection is not in
/// the room any more.
fn check_presence(conn: &Connection, (joined, left): (u32, u32)) {
    assert!(
        joined <= 1 && left <= joined,
        "joined {joined}, left {left}"
    );
    assert_eq!(
        conn.in_room(),
        joined > left,
        "joined {joined}, left {left}"
    );
}

/// The connection cannot be made to write, broadcast or hold more than its input accounts for.
fn check_bounds(
    conn: &Connection,
    config: &Config,
    written: &[u8],
    broadcast: &Batch,
    counts: &Counts,
) {
    let Counts {
        fed,
        largest_read,
        deadlines,
    } = *counts;
    // Echoes and pongs are never longer than the frames that asked for them; beyond that a
    // connection says one HTTP answer (at most the page), one Close, and a ping per deadline.
    let total_written = written.len() + conn.output().len();
    let fixed = CHAT_PAGE.len() + 256 + (MAX_CONTROL_PAYLOAD + 2) + 2 * deadlines;
    assert!(
        total_written <= fed + fixed,
        "wrote {total_written} bytes after reading {fed}"
    );
    // JSON escaping turns a control character into six bytes (`\u0000`); the join notice and a
    // frame's JSON wrapper cost less than the six-byte header of the client frame behind them.
    let broadcast_len = broadcast.as_bytes().len();
    assert!(
        broadcast_len <= 64 + 6 * fed,
        "broadcast {broadcast_len} bytes after reading {fed}"
    );
    // Held input is at most an incomplete head or frame plus the read it came with; a message
    // under assembly is at most `max_message_size`. Vec growth may double either.
    let held = conn.buffer_capacity() - conn.output().capacity();
    let limit = 2 * (largest_read + MAX_HEAD + 14 + 2 * config.max_message_size);
    assert!(held <= limit, "holds {held} bytes of input, limit {limit}");
}

/// After a 101 the connection writes only whole, final, unmasked server frames, and nothing
/// after its Close.
fn check_output(written: &[u8]) {
    if !written.starts_with(b"HTTP/1.1 101 ") {
        return;
    }
    let head_end = written
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole 101 head")
        + 4;
    let mut rest = &written[head_end..];
    while !rest.is_empty() {
        let (opcode, payload, next) = split_frame(rest).expect("a whole server frame");
        assert!(
            matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xA),
            "opcode {opcode:#x}"
        );
        if opcode == 0x8 {
            assert!(next.is_empty(), "bytes after our Close");
            assert!(payload.len() >= 2 && payload.len() <= MAX_CONTROL_PAYLOAD);
        }
        rest = next;
    }
}

/// Every broadcast frame is a chat message; those from the peer fit the message limit.
fn check_broadcast(mut bytes: &[u8], max_message_size: usize) {
    while !bytes.is_empty() {
        let (opcode, payload, next) = split_frame(bytes).expect("a whole broadcast frame");
        assert_eq!(opcode, 0x1);
        let message: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
        let body = message["body"].as_str().expect("a string body");
        assert!(
            body == JOINED || body.len() <= max_message_size,
            "a {}-byte message",
            body.len()
        );
        bytes = next;
    }
}

/// Splits one unmasked, final server frame off the front: (opcode, payload, the rest).
fn split_frame(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let [b0, b1, ..] = *bytes else { return None };
    assert_eq!(b0 & 0xF0, 0x80, "FIN set, no RSV bits");
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, start) = match b1 & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(start..start + len)?;
    Some((b0 & 0x0F, payload, &bytes[start + len..]))
}
