//! The loop's TLS finishing path, forced rather than hoped for: a real `Server` and one client
//! over loopback whose socket buffers are as small as the kernel allows (about 4 KiB on the way
//! out), so a 15 KiB answer is one record that a full socket cuts off. The client has sent its
//! request, a Close and its FIN: the connection is finishing, its queue is empty, and rustls holds
//! the rest of the record. The loop must neither put it back on the flush list (it would spin: no
//! WRITABLE is asked for from the list) nor end it (the record's tail and the close_notify would
//! be lost); once the peer reads, every byte arrives, then a clean TLS close.
//!
//! Also: a client whose turn's budget ran out with whole records still waiting in its inbox is
//! written meanwhile, and its answers go out (no WRITABLE is owed for a socket never full); and
//! a partial record a read kept is counted in the memory ledger at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Events;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig};

use super::Server;
use crate::config::Config;
use crate::connection::Phase;

/// A guard against a hung test, never a synchronisation.
const GUARD: Duration = Duration::from_secs(10);
const ECHOED: usize = 15_000;

fn tls_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    crate::transport::tests::tls_configs()
}

/// A blocking peer socket with the smallest receive buffer, set before the connect so the
/// window it advertises is small from the start.
fn small_peer(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(1).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream
}

/// A server of `/echo` over TLS on a free port, without pings, and what its clients trust.
fn tls_echo_server() -> (Server, Arc<ClientConfig>) {
    let (server_tls, client_tls) = tls_configs();
    let config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        echo: true,
        ping_interval: None,
        ..Config::default()
    };
    let mut server = Server::bind(config).unwrap();
    server.tls = Some(server_tls);
    (server, client_tls)
}

/// One turn of the real loop, as `run` makes it (the guard only bounds a hung poll).
fn turn(server: &mut Server, events: &mut Events) {
    server.poll.poll(events, Some(GUARD)).unwrap();
    server.turn(events, Instant::now());
}

/// A client's frame, masked with a zero key (the payload stays as it is).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    crate::frame::push_masked(&mut frame, first, payload, [0; 4]);
    frame
}

/// Everything the peer decrypts until the server's socket closes, and whether a close_notify
/// ended it (a TLS stream cut short ends without one).
fn read_all(mut tls: ClientConnection, mut socket: TcpStream) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tls.reader().read(&mut chunk) {
            Ok(0) => return (plain, true),
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
            Err(e) if crate::nonblocking::would_block(&e) => {
                if tls.read_tls(&mut socket).expect("the guard ran out") == 0 {
                    let _ = tls.process_new_packets();
                    let clean = matches!(tls.reader().read(&mut chunk), Ok(0));
                    return (plain, clean);
                }
                tls.process_new_packets().unwrap();
            }
            Err(_) => return (plain, false),
        }
    }
}

#[test]
fn a_finishing_tls_client_with_a_cut_off_record_neither_spins_nor_loses_it() {
    let (mut server, client_tls) = tls_echo_server();
    let mut events = Events::with_capacity(64);
    let mut peer = small_peer(server.local_addr());
    server.accept(Instant::now());
    let key = server.clients.iter().next().expect("accepted").0;
    socket2::SockRef::from(&server.clients[key].socket)
        .set_send_buffer_size(1)
        .unwrap();

    // The TLS handshake, a flight at a time.
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(client_tls, name).unwrap();
    while tls.is_handshaking() {
        while tls.wants_write() {
            tls.write_tls(&mut peer).unwrap();
        }
        turn(&mut server, &mut events);
        if tls.is_handshaking() {
            tls.read_tls(&mut peer).unwrap();
            tls.process_new_packets().unwrap();
        }
    }

    // The upgrade, a 15 KiB message to echo and a Close, then our FIN, all before any is read.
    let mut request = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&masked(0x81, &[b'e'; ECHOED]));
    request.extend_from_slice(&masked(0x88, &1000u16.to_be_bytes()));
    tls.writer().write_all(&request).unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut peer).unwrap();
    }
    peer.shutdown(std::net::Shutdown::Write).unwrap();

    // The turn's parts, one by one: the reads (until the FIN, which stays readable, is all that
    // is left; then once more, so it was read), then one pass of the flush list.
    let now = Instant::now();
    for _ in 0..100 {
        server.poll.poll(&mut events, Some(GUARD)).unwrap();
        server.read(key, now);
        if matches!(server.clients[key].socket.peek(&mut [0]), Ok(0)) {
            break;
        }
    }
    server.read(key, now);
    server.write_dirty(now);
    let client = &server.clients[key];
    assert_eq!(client.conn.phase(), Phase::Finishing);
    assert!(
        client.conn.output().is_empty(),
        "all encrypted: {}",
        client.conn.output().len()
    );
    assert!(
        client.transport.holds_output(),
        "the full socket cut the record off"
    );
    assert!(
        server.dirty.is_empty(),
        "back on the flush list with no WRITABLE asked for: before_sleep would spin"
    );
    assert!(
        !server.closed.contains(&key),
        "ended with rustls still holding the record's tail"
    );

    // The peer reads; the loop writes on WRITABLE until it is done, then closes.
    let reader = std::thread::spawn(move || read_all(tls, peer));
    while server.clients.contains(key) {
        turn(&mut server, &mut events);
    }
    let (plain, clean) = reader.join().unwrap();
    let head_end = plain.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(plain.starts_with(b"HTTP/1.1 101 "));
    let mut expected = vec![0x81, 126];
    expected.extend_from_slice(&(ECHOED as u16).to_be_bytes());
    expected.extend_from_slice(&[b'e'; ECHOED]);
    expected.extend_from_slice(&[0x88, 2, 0x03, 0xe8]);
    assert_eq!(
        plain.len() - head_end,
        expected.len(),
        "every byte taken arrived"
    );
    assert!(plain[head_end..] == expected[..]);
    assert!(clean, "and then the close_notify, before the socket closed");
}

/// A turn of the real loop with its own sleep (`poll_timeout`: none while a client is left
/// unread), a sleep that finds no event bounded by the guard.
fn turn_as_run(server: &mut Server, events: &mut Events) {
    let timeout = server
        .poll_timeout(Instant::now())
        .map_or(GUARD, |t| t.min(GUARD));
    server.poll.poll(events, Some(timeout)).unwrap();
    server.turn(events, Instant::now());
}

/// A read that fills the plaintext buffer leaves whole records in rustls's inbox; when the
/// client's budget for the turn is spent there, they wait for the next turn's read. The
/// flush point writes the client meanwhile: a write held up by those records, with a socket
/// that has room, would ask for a WRITABLE that comes once, before the records are read, and
/// never again (edge-triggered: the socket stays writable): the echoes would stall.
#[test]
fn a_write_while_records_wait_to_be_opened_still_goes_out() {
    const FRAME: usize = 9000; // a frame a record: two fill the plaintext buffer's half
    let (mut server, client_tls) = tls_echo_server();
    let mut events = Events::with_capacity(64);
    let mut peer = TcpStream::connect(server.local_addr()).unwrap();
    peer.set_read_timeout(Some(GUARD)).unwrap();
    server.accept(Instant::now());
    let key = server.clients.iter().next().expect("accepted").0;

    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(client_tls, name).unwrap();
    let request = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    tls.writer().write_all(request).unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        while tls.wants_write() {
            tls.write_tls(&mut peer).unwrap();
        }
        turn(&mut server, &mut events);
        tls.read_tls(&mut peer).unwrap();
        tls.process_new_packets().unwrap();
        let _ = tls.reader().read_to_end(&mut answer);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101 "));

    // Three frames, a record each, all on the server's socket before it reads.
    let mut wire = 0;
    for i in 0..3u8 {
        tls.writer()
            .write_all(&masked(0x82, &[i; FRAME - 8]))
            .unwrap();
        wire += tls.write_tls(&mut peer).unwrap();
    }
    let mut peeked = vec![0; wire + 1];
    while server.clients[key].socket.peek(&mut peeked).unwrap_or(0) < wire {
        server.poll.poll(&mut events, Some(GUARD)).unwrap();
    }

    // The turn in which the client has this burst's cost left of its budget: one read takes
    // the three records, opens two and fills the buffer; the third waits in the inbox.
    let now = Instant::now();
    let cost = wire + 3 * crate::transport::RECORD_COST;
    let client = &mut server.clients[key];
    client.read_turn = server.turns;
    client.read_spent = u32::try_from(super::client::READ_BUDGET - cost).unwrap();
    server.read(key, now);
    assert!(server.unread.contains(&key), "its budget is spent");
    server.before_sleep(now);
    server.reap();

    // The next turns, as `run` makes them; all three echoes are written.
    for _ in 0..3 {
        turn_as_run(&mut server, &mut events);
        let client = &server.clients[key];
        if !client.has_output() && !server.unread.contains(&key) {
            break;
        }
    }
    let client = &server.clients[key];
    assert!(
        !client.has_output(),
        "echoes stalled: {} bytes queued, awaiting WRITABLE: {}",
        client.conn.output().len(),
        client.awaiting_writable
    );
    let mut echoed = Vec::new();
    loop {
        let end = tls.reader().read_to_end(&mut echoed);
        assert!(end.is_err(), "open, so no end: {end:?}");
        if echoed.len() >= 3 * (FRAME - 4) {
            break;
        }
        tls.read_tls(&mut peer).expect("the guard ran out");
        tls.process_new_packets().unwrap();
    }
    assert_eq!(echoed.len(), 3 * (FRAME - 4));
    for (i, echo) in echoed.chunks(FRAME - 4).enumerate() {
        assert_eq!(
            echo[..4],
            [0x82, 126, 0x23, 0x20],
            "a binary frame of 8,992 bytes"
        );
        assert!(echo[4..].iter().all(|&b| usize::from(b) == i));
    }
}

/// What a TLS client's inbox holds is counted as soon as it is read, like a plaintext
/// client's partial input: a record that has not all come (here the start of a ClientHello
/// announcing 16 KiB), whose read gives no plaintext.
#[test]
fn a_partial_record_is_counted_as_soon_as_it_is_read() {
    let (server_tls, _) = tls_configs();
    let config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    let mut server = Server::bind(config).unwrap();
    server.tls = Some(server_tls);
    let mut events = Events::with_capacity(64);
    let mut peer = TcpStream::connect(server.local_addr()).unwrap();
    server.accept(Instant::now());
    let key = server.clients.iter().next().expect("accepted").0;

    let mut start = vec![22, 3, 1, 0x40, 0];
    start.resize(10_005, 0);
    peer.write_all(&start).unwrap();
    let mut peeked = vec![0; start.len()];
    while server.clients[key].socket.peek(&mut peeked).unwrap_or(0) < start.len() {
        server.poll.poll(&mut events, Some(GUARD)).unwrap();
    }
    server.read(key, Instant::now());
    let client = &server.clients[key];
    assert!(client.holding() >= 10_005, "{}", client.holding());
    assert_eq!(client.held, client.holding(), "the ledger knows");
    assert_eq!(server.ledger.total(), client.holding());
}
