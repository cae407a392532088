//! The loop's TLS finishing path, forced rather than hoped for: a real `Server` and one client
//! over loopback whose socket buffers are as small as the kernel allows (about 4 KiB on the way
//! out), so a 15 KiB answer is one record that a full socket cuts off. The client has sent its
//! request, a Close and its FIN: the connection is finishing, its queue is empty, and rustls holds
//! the rest of the record. The loop must neither put it back on the flush list (it would spin: no
//! WRITABLE is asked for from the list) nor end it (the record's tail and the close_notify would
//! be lost); once the peer reads, every byte arrives, then a clean TLS close.

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
    let (server_tls, client_tls) = tls_configs();
    let config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        echo: true,
        ping_interval: None,
        ..Config::default()
    };
    let mut server = Server::bind(config).unwrap();
    server.tls = Some(server_tls);
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
