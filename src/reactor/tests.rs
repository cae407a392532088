//! The loop driven step by step from a test, for what only the order inside one turn decides:
//! real sockets on loopback, and the turn's steps called as [`Server::turn`] calls them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mio::{Events, Token};

use super::Server;
use crate::budget::FairShare;
use crate::config::Config;
use crate::connection::Phase;
use crate::frame::OpCode;
use crate::message::{Message, JOINED};

/// How long a test waits for the server before it fails (a guard, not a synchronisation).
const GUARD: Duration = Duration::from_secs(15);

const REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn server(config: Config) -> Server {
    let config = Config {
        addr: "127.0.0.1:0".parse().expect("an address"),
        fair_share: FairShare::off(),
        ..config
    };
    Server::bind(config).expect("bind")
}

/// One whole turn of the loop, after waiting (at most [`GUARD`]) for something to be ready.
fn step(server: &mut Server) {
    let mut events = Events::with_capacity(64);
    server.poll.poll(&mut events, Some(GUARD)).expect("poll");
    server.turn(&events, Instant::now());
}

/// Waits for a readiness event of client `key` without handling it (the test then runs the
/// turn's steps itself); other events are dropped, which is fine for idle clients.
fn wait_readable(server: &mut Server, key: usize) {
    wait_all_readable(server, &[key]);
}

/// [`wait_readable`] for several clients: returns once each has had its event.
fn wait_all_readable(server: &mut Server, keys: &[usize]) {
    let mut events = Events::with_capacity(64);
    let mut waiting = keys.to_vec();
    while !waiting.is_empty() {
        server.poll.poll(&mut events, Some(GUARD)).expect("poll");
        assert!(!events.is_empty(), "no event within {GUARD:?}");
        for event in events.iter().filter(|e| e.is_readable()) {
            waiting.retain(|&key| Token(key) != event.token());
        }
    }
}

/// A masked client text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    crate::frame::push_client_frame(&mut out, OpCode::Text, text.as_bytes(), [7, 1, 9, 3]);
    out
}

/// Clients evicted past `--max-client-memory`, as `/metrics` counts them.
fn evictions(server: &Server) -> u64 {
    let page = server.render_metrics();
    let line = "mio_chat_clients_dropped_total{reason=\"client_memory\"} ";
    page.lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Shrinks the socket buffers between `peer` and the server, so that a member that does not read
/// has its socket refuse bytes after a few kilobytes rather than megabytes.
fn small_buffers(server: &Server, peer: &Peer) {
    socket2::SockRef::from(&peer.stream)
        .set_recv_buffer_size(4096)
        .expect("SO_RCVBUF");
    socket2::SockRef::from(&server.clients[peer.key].socket)
        .set_send_buffer_size(4096)
        .expect("SO_SNDBUF");
}

/// Sends `bytes` from `peer` and runs the turn that reads them.
fn send_and_turn(server: &mut Server, peer: &mut Peer, bytes: &[u8]) {
    peer.stream.write_all(bytes).expect("send");
    wait_readable(server, peer.key);
    let now = Instant::now();
    server.read(peer.key, now);
    server.end_turn(now);
}

/// Sends batches of chat from `sender` until `reader` (with small buffers, reading nothing) has
/// had `batches` of them queued; the sender and `bystander` keep up.
fn fall_behind(
    server: &mut Server,
    reader: &Peer,
    sender: &mut Peer,
    bystander: &mut Peer,
    batches: usize,
) {
    let burst: Vec<u8> = (0..100)
        .flat_map(|_| text_frame(&"r".repeat(100)))
        .collect();
    let mut behind = 0;
    while behind < batches {
        send_and_turn(server, sender, &burst);
        drain(sender);
        drain(bystander);
        behind += usize::from(server.clients[reader.key].has_output());
    }
}

/// A server without a memory bound yet and three members: a reader with small buffers that
/// reads nothing and has had `batches` of chat queued, a sender and a third member that keep up.
fn a_reader_behind(batches: usize) -> (Server, Peer, Peer, Peer) {
    let mut server = server(Config {
        max_outbound: 64 << 20,
        max_client_memory: 1 << 40,
        ..Config::default()
    });
    let reader = Peer::join(&mut server);
    let mut sender = Peer::join(&mut server);
    let mut other = Peer::join(&mut server);
    small_buffers(&server, &reader);
    fall_behind(&mut server, &reader, &mut sender, &mut other, batches);
    (server, reader, sender, other)
}

/// Reads whatever has arrived for `peer`, without waiting: a member that keeps up.
fn drain(peer: &mut Peer) {
    peer.stream.set_nonblocking(true).expect("nonblocking");
    let mut chunk = [0; 65536];
    while matches!(peer.stream.read(&mut chunk), Ok(n) if n > 0) {}
    peer.stream.set_nonblocking(false).expect("blocking");
}

/// A chat client over a blocking socket, joined through the server's own turns.
struct Peer {
    stream: TcpStream,
    key: usize,
    input: Vec<u8>,
}

impl Peer {
    fn join(server: &mut Server) -> Peer {
        let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(GUARD)).expect("timeout");
        stream.write_all(REQUEST).expect("handshake");
        let members = server.room.members();
        while server.room.members() == members {
            step(server);
        }
        let key = server
            .clients
            .iter()
            .max_by_key(|(_, c)| c.id)
            .map(|(key, _)| key)
            .expect("a client");
        let mut peer = Peer {
            stream,
            key,
            input: Vec::new(),
        };
        while !peer.input.windows(4).any(|w| w == b"\r\n\r\n") {
            peer.fill();
        }
        let end = peer
            .input
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0);
        peer.input.drain(..end + 4);
        assert_eq!(peer.next(), Some(JOINED.to_string()));
        peer
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0; 4096];
        let n = self.stream.read(&mut chunk).expect("read within the guard");
        self.input.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next chat body, or `None` at a close frame or the end of the stream.
    fn next(&mut self) -> Option<String> {
        loop {
            if let [first, len, rest @ ..] = &self.input[..] {
                let (len, start) = match len {
                    126 if rest.len() >= 2 => {
                        (usize::from(u16::from_be_bytes([rest[0], rest[1]])), 4)
                    }
                    126 => (usize::MAX, 0),
                    n => (usize::from(*n), 2),
                };
                if len != usize::MAX && self.input.len() >= start + len {
                    let opcode = first & 0x0F;
                    let frame: Vec<u8> = self.input.drain(..start + len).collect();
                    if opcode == 0x8 {
                        return None;
                    }
                    if opcode == 0xA {
                        continue; // a pong
                    }
                    let msg: Message = serde_json::from_slice(&frame[start..]).expect("json");
                    return Some(msg.body.into_owned());
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

/// Chat read in the turn that brings SIGTERM still reaches the room before everyone is sent
/// away: the room is emptied at the flush point, after the turn's fan-out.
#[test]
fn chat_read_in_the_turn_of_a_shutdown_reaches_the_room() {
    let mut server = server(Config::default());
    let mut a = Peer::join(&mut server);
    let mut b = Peer::join(&mut server);
    assert_eq!(a.next(), Some(JOINED.to_string()));
    b.stream.write_all(&text_frame("last words")).expect("send");
    wait_readable(&mut server, b.key);
    // One turn whose events are: `b` readable, then the stop (the waker or a signal).
    let now = Instant::now();
    server.read(b.key, now);
    server.shut_down(now);
    server.end_turn(now);
    assert_eq!(a.next().as_deref(), Some("last words"));
    assert_eq!(b.next().as_deref(), Some("last words"));
    assert_eq!(a.next(), None, "then the close");
}

/// A client is read at most one budget's worth a turn, however many times the turn comes back
/// to it (its readiness event, then the list of clients with bytes left over): the "one budget of
/// 256 KiB per client per turn" of `docs/security.md`.
#[test]
fn a_client_is_read_one_budget_a_turn() {
    let mut server = server(Config {
        max_outbound: 1 << 30, // the writer reads nothing back; it must not be dropped for that
        ..Config::default()
    });
    let b = Peer::join(&mut server);
    let message = "x".repeat(1000);
    let frame = text_frame(&message);
    let mut writer = b.stream.try_clone().expect("clone");
    let frames = frame.len();
    let sending = std::thread::spawn(move || {
        let burst = frame.repeat(64);
        for _ in 0..64 {
            // 4 MB in all, far more than a turn's budget; it stops when the test ends.
            if writer.write_all(&burst).is_err() {
                return;
            }
        }
    });
    wait_readable(&mut server, b.key);
    let now = Instant::now();
    let before = server.room.metrics.messages_received;
    // Within one turn, the turn comes back to it again and again (its readiness event, then the
    // unread list), each time with bytes waiting in its socket: the writer has 4 MB to send.
    let counted = |server: &Server| (server.room.metrics.messages_received - before) as usize;
    for _ in 0..2000 {
        let mut peek = [0; 1];
        while server.clients[b.key].socket.peek(&mut peek).is_err() {
            std::thread::yield_now(); // the writer has not refilled the socket yet
        }
        server.read(b.key, now);
        if counted(&server) * frames > super::client::READ_BUDGET {
            break;
        }
    }
    let read = (server.room.metrics.messages_received - before) as usize * frames;
    assert!(
        read <= super::client::READ_BUDGET,
        "{read} bytes read from one client in one turn"
    );
    drop(server);
    drop(b);
    let _ = sending.join();
}

/// A reader that keeps up is never dropped for the size of one batch, also when the same turn
/// queued bytes of its own ahead of the batch (here the pong to its ping): the flush point writes
/// them first, and the batch then goes straight to its socket.
#[test]
fn a_reader_with_its_own_bytes_queued_still_takes_a_batch_larger_than_max_outbound() {
    let mut server = server(Config {
        max_outbound: 1000,
        ..Config::default()
    });
    let mut a = Peer::join(&mut server);
    let mut b = Peer::join(&mut server);
    assert_eq!(a.next(), Some(JOINED.to_string()));
    a.stream
        .write_all(&[0x89, 0x80, 1, 2, 3, 4]) // an empty ping, masked
        .expect("ping");
    let text = "y".repeat(5000);
    b.stream.write_all(&text_frame(&text)).expect("send");
    wait_all_readable(&mut server, &[a.key, b.key]);
    let now = Instant::now();
    server.read(a.key, now);
    server.read(b.key, now);
    server.end_turn(now);
    assert!(
        server.clients.contains(a.key),
        "the prompt reader is still here"
    );
    assert_eq!(a.next().as_deref(), Some(text.as_str()));
    assert_eq!(b.next().as_deref(), Some(text.as_str()));
}

/// The ledger behind `--max-client-memory` is kept by the loop at every place a client's
/// buffers change: after any sequence of partial frames, fragments, whole messages (queued for
/// readers that do not read) and closes, its total is the sum of what every client holds, and
/// what it counted for each is what each holds.
#[test]
fn the_ledger_is_the_sum_of_what_clients_hold() {
    let mut server = server(Config::default());
    let mut peers: Vec<Option<Peer>> = (0..5).map(|_| Some(Peer::join(&mut server))).collect();
    let big = text_frame(&"y".repeat(30_000));
    let mut sent = vec![0; peers.len()]; // of `big`, per peer
    let mut seed: u32 = 0x2545_F491;
    for _ in 0..120 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let i = seed as usize % peers.len();
        if peers[i].is_none() {
            continue;
        }
        let bytes = match (seed >> 8) % 5 {
            0 | 1 => {
                let end = (sent[i] + 7_000).min(big.len());
                let chunk = big[sent[i]..end].to_vec();
                sent[i] = if end == big.len() { 0 } else { end };
                chunk
            }
            2 => text_frame("hello"),
            3 => {
                let mut fragment = text_frame(&"f".repeat(3_000));
                fragment[0] = if seed & 1 == 0 { 0x01 } else { 0x00 }; // no FIN
                fragment
            }
            _ => {
                peers[i] = None; // closed: EOF
                Vec::new()
            }
        };
        if let Some(peer) = peers[i].as_mut() {
            if peer.stream.write_all(&bytes).is_err() {
                peers[i] = None;
            }
        }
        step(&mut server);
        let sum: usize = server.clients.iter().map(|(_, c)| c.holding()).sum();
        assert_eq!(server.ledger.total(), sum);
        for (key, client) in &server.clients {
            assert_eq!(client.held, client.holding(), "client {key}");
        }
        if server.clients.is_empty() {
            break;
        }
    }
}

/// `--max-client-memory` holds within a turn, not only at its end: one fan-out to readers whose
/// sockets are full adds the batch to each, and the moment the total passes the bound the
/// biggest holders let go of their queues. The most ever held passes the bound by about one batch
/// (checked loosely: two), where a check once a turn lets it pass by a batch per reader.
#[test]
fn one_fan_out_passes_the_bound_by_one_batch_at_most() {
    const FRAMES: usize = 200;
    let body = "m".repeat(100);
    // A server frame is the body, its JSON and a header: at most 32 bytes more.
    let batch = FRAMES * (body.len() + 32);
    let mut server = server(Config {
        max_outbound: 64 << 20,
        max_client_memory: 1 << 40,
        ..Config::default()
    });
    let mut peers: Vec<Peer> = (0..8).map(|_| Peer::join(&mut server)).collect();
    for peer in &peers {
        small_buffers(&server, peer);
    }
    let burst: Vec<u8> = (0..FRAMES).flat_map(|_| text_frame(&body)).collect();
    let sender = peers[0].key;
    let send_a_batch = |server: &mut Server, peers: &mut [Peer]| {
        peers[0].stream.write_all(&burst).expect("send");
        wait_readable(server, sender);
        let now = Instant::now();
        server.read(sender, now);
        server.end_turn(now);
    };
    // Nobody reads: batch after batch, until every socket is full and every reader has a backlog.
    let mut sent = 0;
    while !peers.iter().all(|p| server.clients[p.key].has_output()) {
        assert!(
            sent < 500,
            "{sent} batches and some sockets still take more"
        );
        send_a_batch(&mut server, &mut peers);
        sent += 1;
    }
    let bound = server.ledger.peak().max(server.ledger.total()) + batch / 2;
    server.config.max_client_memory = bound;
    send_a_batch(&mut server, &mut peers);
    let peak = server.ledger.peak();
    assert!(
        peak <= bound + 2 * batch,
        "held {peak} bytes at most with a bound of {bound}: {} batches over",
        (peak - bound) / batch
    );
    assert!(server.ledger.total() <= bound);
    assert!(evictions(&server) >= 1, "the biggest holders were evicted");
}

/// The same within a turn of reads: hoarders that each send half of a large frame are read one
/// after another, and the moment the total passes the bound the biggest let go of their input.
/// The most ever held passes the bound by about one read, where a check once a turn lets it
/// pass by a read per hoarder.
#[test]
fn one_turn_of_reads_passes_the_bound_by_one_read_at_most() {
    const HALF: usize = 30_000;
    let bound = 64 * 1024;
    let mut server = server(Config {
        max_client_memory: bound,
        ..Config::default()
    });
    let mut hoarders: Vec<Peer> = (0..8).map(|_| Peer::join(&mut server)).collect();
    let frame = text_frame(&"h".repeat(2 * HALF));
    for hoarder in &mut hoarders {
        hoarder.stream.write_all(&frame[..HALF]).expect("send");
    }
    let keys: Vec<usize> = hoarders.iter().map(|h| h.key).collect();
    wait_all_readable(&mut server, &keys);
    let now = Instant::now();
    for &key in &keys {
        server.read(key, now);
    }
    let peak = server.ledger.peak();
    assert!(
        peak <= bound + 2 * HALF,
        "held {peak} bytes at most with a bound of {bound}"
    );
    server.end_turn(now);
    assert!(server.ledger.total() <= bound);
    assert!(
        evictions(&server) >= 6,
        "two 30,000-byte holdings fit in 64 KiB; the others go"
    );
}

/// A hoarder cannot hide behind a reply: one that sends a ping with half a large frame (its pong
/// queued for the flush point) is still the biggest holder, and it goes, not a reader whose
/// socket refused a smaller backlog.
#[test]
fn a_hoarder_with_a_reply_queued_goes_before_a_reader_behind() {
    let (mut server, reader, _sender, mut hoarder) = a_reader_behind(1);
    let backlog = server.clients[reader.key].held;
    assert!(
        backlog > 0 && server.ledger.total() == backlog,
        "only the reader holds"
    );
    assert!(backlog < 30_000, "a backlog of {backlog} bytes");
    // Room for the reader's queue to double (the hoarder's leave notice joins it), not for the
    // hoarder's 40,000 bytes as well.
    server.config.max_client_memory = 2 * backlog + 8_000;
    let mut bytes = vec![0x89, 0x80, 1, 2, 3, 4]; // an empty ping, masked
    bytes.extend_from_slice(&text_frame(&"h".repeat(60_000))[..40_000]);
    send_and_turn(&mut server, &mut hoarder, &bytes);
    assert_eq!(evictions(&server), 1);
    assert!(!server.clients[reader.key].evicting, "the reader stays");
    assert!(hoarder.next().is_none(), "the hoarder is told to go");
    drop(reader);
}

/// A reply that passes the bound is offered to its socket before anyone is evicted for it: a pong
/// of 102 bytes under a bound of 64, which the socket takes at once. It counts (the peak says
/// so), and costs no one their place.
#[test]
fn a_reply_past_the_bound_is_offered_to_the_socket_before_anyone_goes() {
    let mut server = server(Config::default());
    let mut peer = Peer::join(&mut server);
    server.config.max_client_memory = 64;
    let mut ping = vec![0x89, 0x80 | 100, 0, 0, 0, 0]; // masked with zeros
    ping.extend_from_slice(&[b'p'; 100]);
    peer.stream.write_all(&ping).expect("ping");
    wait_readable(&mut server, peer.key);
    let written = server.room.metrics.bytes_written;
    let now = Instant::now();
    server.read(peer.key, now);
    assert!(server.ledger.peak() >= 102, "the pong counted");
    assert_eq!(server.ledger.total(), 0, "the socket took it");
    assert_eq!(server.room.metrics.bytes_written, written + 102);
    server.end_turn(now);
    assert_eq!(evictions(&server), 0);
    peer.fill();
    assert_eq!(&peer.input[..2], &[0x8A, 100], "the pong");
}

/// A second reply in the same turn is offered too: its client was offered (and its socket took)
/// the first, and is still on the flush list when the second is queued.
#[test]
fn a_second_reply_in_a_turn_is_offered_before_its_client_goes() {
    let mut server = server(Config::default());
    let mut peer = Peer::join(&mut server);
    server.config.max_client_memory = 64;
    let mut ping = vec![0x89, 0x80 | 100, 0, 0, 0, 0]; // masked with zeros
    ping.extend_from_slice(&[b'p'; 100]);
    let now = Instant::now();
    for round in 0..2 {
        peer.stream.write_all(&ping).expect("ping");
        wait_readable(&mut server, peer.key);
        server.read(peer.key, now); // the same turn comes back to it (as the unread list does)
        assert!(!server.clients[peer.key].evicting, "round {round}");
    }
    server.end_turn(now);
    assert_eq!(evictions(&server), 0);
}

/// A reply that passes the bound is offered to its socket before anyone goes, also when its
/// client is not the biggest holder: a pong of 127 bytes does not cost a reader behind its place.
#[test]
fn a_small_reply_past_the_bound_costs_a_bigger_reader_nothing() {
    let (mut server, reader, _sender, mut pinger) = a_reader_behind(1);
    let backlog = server.clients[reader.key].held;
    assert!(
        backlog > 1_000 && server.ledger.total() == backlog,
        "only the reader holds"
    );
    server.config.max_client_memory = backlog + 64;
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0]; // masked with zeros
    ping.extend_from_slice(&[b'p'; 125]);
    send_and_turn(&mut server, &mut pinger, &ping);
    assert!(server.ledger.total() <= server.config.max_client_memory);
    assert!(!server.clients[reader.key].evicting, "the reader stays");
    assert_eq!(evictions(&server), 0);
}

/// Replies count as they are queued: clients that each send 100 KB of pings in one turn have
/// their pongs offered to their sockets past the bound, not piled up uncounted until the flush
/// point (400 KB of them under a bound of 64 KiB).
#[test]
fn replies_queued_in_a_turn_pass_the_bound_by_one_read_at_most() {
    let bound = 64 * 1024;
    let mut server = server(Config {
        max_client_memory: bound,
        ..Config::default()
    });
    let mut peers: Vec<Peer> = (0..4).map(|_| Peer::join(&mut server)).collect();
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let pings: Vec<u8> = ping.repeat(100_000 / ping.len());
    for peer in &mut peers {
        peer.stream.write_all(&pings).expect("send");
    }
    let keys: Vec<usize> = peers.iter().map(|p| p.key).collect();
    wait_all_readable(&mut server, &keys);
    let now = Instant::now();
    for &key in &keys {
        server.read(key, now);
    }
    let queued: usize = keys
        .iter()
        .map(|&k| server.clients[k].conn.output().capacity())
        .sum();
    assert!(
        queued <= bound + super::client::READ_BUDGET,
        "{queued} bytes of pongs queued under a bound of {bound}"
    );
    assert!(server.ledger.total() <= bound + super::client::READ_BUDGET);
}

/// A holder that letting go cannot shrink (a reader whose Close reply waits behind its backlog:
/// finishing) is chosen first and dropped; what it holds until then does not cost an ordinary
/// client with part of a frame its place.
#[test]
fn a_finishing_holder_chosen_first_costs_no_one_else_their_place() {
    let (mut server, mut reader, mut sender, mut hoarder) = a_reader_behind(3);
    // The reader says goodbye: its Close is read, the reply queued behind its backlog.
    let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]; // 1000, masked
    send_and_turn(&mut server, &mut reader, &close);
    drain(&mut sender);
    drain(&mut hoarder);
    assert_eq!(server.clients[reader.key].conn.phase(), Phase::Finishing);
    let frame = text_frame(&"h".repeat(10_000));
    send_and_turn(&mut server, &mut hoarder, &frame[..2_000]);
    let (r, h) = (
        server.clients[reader.key].held,
        server.clients[hoarder.key].held,
    );
    assert!(
        r > 4 * h,
        "the finishing reader holds the most: {r} against {h}"
    );
    server.config.max_client_memory = server.ledger.total() - 100;
    send_and_turn(&mut server, &mut hoarder, &frame[2_000..2_010]);
    assert!(server.ledger.total() <= server.config.max_client_memory);
    assert!(
        !server.clients.contains(reader.key),
        "the reader was dropped"
    );
    assert!(!server.clients[hoarder.key].evicting, "the hoarder stays");
}

/// A client chosen for eviction is not read again before it is evicted: its partial input is
/// gone, and what follows it would be read as garbage (a protocol error, not close 1013).
#[test]
fn a_client_chosen_is_not_read_until_it_is_evicted() {
    let mut server = server(Config::default());
    let mut big = Peer::join(&mut server);
    let mut small = Peer::join(&mut server);
    let frame = text_frame(&"h".repeat(60_000));
    send_and_turn(&mut server, &mut big, &frame[..30_000]);
    server.config.max_client_memory = server.ledger.total() + 1_000;
    big.stream.write_all(&frame[30_000..40_000]).expect("send");
    small.stream.write_all(&frame[..2_000]).expect("send");
    wait_all_readable(&mut server, &[big.key, small.key]);
    let now = Instant::now();
    server.read(small.key, now); // past the bound: the big one is chosen
    assert!(server.clients[big.key].evicting);
    server.read(big.key, now);
    server.end_turn(now);
    assert_eq!(evictions(&server), 1, "{}", server.render_metrics());
    assert!(!server.clients[small.key].evicting, "the small one stays");
}

/// An evicted client is read again once evicted: its peer's EOF, after our close 1013, ends it
/// at once rather than at the close timeout.
#[test]
fn an_evicted_client_whose_peer_closes_is_reaped_at_once() {
    let mut server = server(Config {
        max_client_memory: 16 * 1024,
        ..Config::default()
    });
    let mut hoarder = Peer::join(&mut server);
    let key = hoarder.key;
    let frame = text_frame(&"h".repeat(60_000));
    send_and_turn(&mut server, &mut hoarder, &frame[..30_000]);
    assert_eq!(evictions(&server), 1);
    assert!(hoarder.next().is_none(), "close 1013");
    drop(hoarder);
    wait_readable(&mut server, key);
    let now = Instant::now();
    server.read(key, now);
    server.end_turn(now);
    assert!(!server.clients.contains(key), "its peer's EOF ended it");
}

/// When freed client memory is handed back: the first time as soon as 16 MiB were released and
/// clients hold less than that (the burst is over); never while they still hold as much (the
/// burst is on: a trim walks the heap); then at most once a second.
#[test]
fn memory_is_handed_back_once_a_burst_drains_and_at_most_once_a_second() {
    const MIB: usize = 1 << 20;
    let mut server = server(Config::default());
    let now = Instant::now();
    server.ledger.update(1, 0, 40 * MIB);
    server.ledger.update(1, 40 * MIB, 30 * MIB);
    server.give_back(now);
    assert_eq!(
        server.trims, 0,
        "10 MiB released: too little to walk the heap for"
    );
    server.ledger.update(1, 30 * MIB, 20 * MIB);
    server.give_back(now);
    assert_eq!(
        server.trims, 0,
        "20 MiB released, but 20 MiB still held: the burst is on"
    );
    server.ledger.update(1, 20 * MIB, 0);
    server.give_back(now);
    assert_eq!(server.trims, 1, "the first trim, at once");
    assert_eq!(server.ledger.released(), 0);

    server.ledger.update(2, 0, 30 * MIB);
    server.ledger.update(2, 30 * MIB, 0);
    server.give_back(now + Duration::from_millis(999));
    assert_eq!(server.trims, 1, "not twice within a second");
    assert_eq!(
        server.poll_timeout(now),
        Some(Duration::from_secs(1)),
        "the loop wakes when it is due"
    );
    server.give_back(now + Duration::from_secs(1));
    assert_eq!(server.trims, 2);
}

/// A trim also hands back the slots of clients gone since the slab was at its fullest (past the
/// last client still there).
#[test]
fn a_trim_hands_back_the_slots_of_clients_gone() {
    let mut server = server(Config::default());
    let first = Peer::join(&mut server);
    let later: Vec<Peer> = (0..40).map(|_| Peer::join(&mut server)).collect();
    let full = server.clients.capacity();
    assert!(full >= 41);
    drop(later);
    while server.clients.len() > 1 {
        step(&mut server);
    }
    server.ledger.update(1_000_000, 0, 32 << 20);
    server.ledger.update(1_000_000, 32 << 20, 0);
    server.give_back(Instant::now());
    assert_eq!(server.trims, 1);
    assert!(
        server.clients.capacity() < full,
        "{} slots kept for 1 client",
        server.clients.capacity()
    );
    // The slots left are still good for newcomers.
    let again: Vec<Peer> = (0..3).map(|_| Peer::join(&mut server)).collect();
    assert_eq!(server.clients.len(), 4);
    drop((first, again));
}

/// Vacant slots alone make a trim owed once they are worth it, and not again once the slab is
/// as small as its clients allow.
#[test]
fn vacant_slots_alone_are_handed_back_once() {
    let mut server = server(Config::default());
    let first = Peer::join(&mut server);
    let now = Instant::now();
    assert_eq!(
        server.trim_due(now),
        None,
        "a slab of one client owes nothing"
    );
    let slots = 2 * super::SLOTS_AFTER / std::mem::size_of::<super::Client>();
    server.clients.reserve(slots);
    assert_eq!(server.trim_due(now), Some(now));
    server.give_back(now);
    assert_eq!(server.trims, 1);
    assert!(
        server.clients.capacity() < slots,
        "{} slots",
        server.clients.capacity()
    );
    let later = now + Duration::from_secs(5);
    assert_eq!(server.trim_due(later), None, "nothing left to give");
    drop(first);
}

/// The rule for vacant slots: a megabyte of them, three quarters of the slab, and changed since
/// the last trim.
#[test]
fn vacant_slots_are_worth_a_trim_only_when_many_mostly_and_changed() {
    use super::slots_worth_a_trim as worth;
    let mib = super::SLOTS_AFTER;
    assert!(worth(4096, 1024, (0, 0), 342));
    assert!(worth(4096, 0, (0, 0), 256), "exactly a megabyte vacant");
    assert!(!worth(4096, 1, (0, 0), 256), "a slot short of it");
    assert!(
        !worth(4096, 1025, (0, 0), 1024),
        "less than three quarters vacant"
    );
    assert!(
        !worth(4096, 1024, (4096, 1024), 1024),
        "as the last trim left it"
    );
    assert!(
        !worth(4096, 1000, (4096, 900), 1024),
        "clients came, none went"
    );
    assert!(worth(8192, 1024, (4096, 1024), 1024), "grown since");
    assert!(worth(4096, 1023, (4096, 1024), 1024), "a client gone since");
    assert!(!worth(mib, 0, (0, 0), 0), "nothing is worth nothing");
}
