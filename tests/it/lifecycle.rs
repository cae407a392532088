//! Connections over time: the handshake timeout (408), keepalive pings and the dropping of
//! silent clients (1001), the connection limit (503), slow consumers (--max-outbound),
//! abrupt resets, and graceful shutdown on SIGTERM / SIGINT (1001 to everyone, exit 0).
//!
//! Several of these features are about time passing. The tests still never sleep: where a
//! test needs "enough time has passed", it waits for an event the server only produces after
//! that time, such as another connection's 408 or another client being dropped for silence.

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::slow::*;
use common::*;
use tungstenite::Message;

// ---- Handshake timeout -------------------------------------------------------------------------

/// Reads the server's answer on a connection that never completed its request.
fn expect_408(stream: &mut std::net::TcpStream) {
    let raw = read_to_close(stream);
    assert!(
        raw.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "expected a 408, got {:?}",
        String::from_utf8_lossy(&raw)
    );
    HttpResponse::parse(&raw); // well-formed, with a matching Content-Length
}

#[test]
fn an_unfinished_request_gets_408() {
    let server = TestServer::start(&["--handshake-timeout", "0.3"]);
    let mut stream = tcp_connect(&server);
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    expect_408(&mut stream);
}

#[test]
fn a_connection_that_sends_nothing_gets_408() {
    let server = TestServer::start(&["--handshake-timeout", "0.3"]);
    expect_408(&mut tcp_connect(&server));
}

#[test]
fn the_handshake_timeout_does_not_apply_after_the_upgrade() {
    let server = TestServer::start(&["--handshake-timeout", "0.5"]);
    let mut member = join_chat(&server, &mut []);
    // This connection opens after the member's handshake finished, so when it times out,
    // the member has been connected for longer than the timeout too.
    expect_408(&mut tcp_connect(&server));
    send_text(&mut member, "still here");
    expect_body(&mut member, "still here");
}

// ---- Keepalive ------------------------------------------------------------------------------

/// What a raw client does with each ping while it waits for a silent client to be dropped.
enum OnPing {
    AnswerWithPong,
    SendTextInstead,
}

/// Runs `client` until the room announces that someone left, reacting to pings as told.
/// Returns how many pings it saw.
fn stay_alive_until_someone_leaves(client: &mut RawClient, on_ping: OnPing) -> usize {
    let mut pings = 0;
    loop {
        let frame = client.read_frame();
        match frame.opcode {
            OP_PING => {
                pings += 1;
                match on_ping {
                    OnPing::AnswerWithPong => client.send(&Frame::pong(&frame.payload)),
                    OnPing::SendTextInstead => client.send_text("I am here"),
                }
            }
            OP_TEXT => {
                let body = chat_body(std::str::from_utf8(&frame.payload).unwrap());
                if body == LEFT {
                    return pings;
                }
            }
            _ => panic!("unexpected frame while waiting: {frame:?}"),
        }
    }
}

#[test]
fn a_silent_client_is_closed_with_1001_while_a_ponging_one_stays() {
    let server = TestServer::start(&["--ping-interval", "0.5"]);
    let mut lively = RawClient::join(&server);
    // Joins after `lively`, and never sends a single frame.
    let mut silent = RawClient::join(&server);
    lively.expect_body(JOINED);

    let pings = stay_alive_until_someone_leaves(&mut lively, OnPing::AnswerWithPong);
    assert!(pings >= 1, "the server never pinged");
    // `lively` has been connected longer than `silent` was, and answered its pings.
    lively.send_text("alive");
    lively.expect_body("alive");

    silent.expect_close_code(1001);
}

#[test]
fn any_frame_counts_as_a_sign_of_life() {
    let server = TestServer::start(&["--ping-interval", "0.5"]);
    let mut chatty = RawClient::join(&server);
    let mut silent = RawClient::join(&server);
    chatty.expect_body(JOINED);

    // Never a pong, but a text message whenever pinged. The broadcast copies of those
    // messages are text frames, which the helper skips.
    stay_alive_until_someone_leaves(&mut chatty, OnPing::SendTextInstead);
    chatty.send_text("alive");
    loop {
        let body = chatty.next_body();
        if body == "alive" {
            break;
        }
        assert_eq!(body, "I am here");
    }
    silent.expect_close_code(1001);
}

#[test]
fn a_tungstenite_client_that_keeps_reading_stays_connected() {
    let server = TestServer::start(&["--ping-interval", "0.5"]);
    let mut reader = join_chat(&server, &mut []);
    let _silent = RawClient::join(&server);
    expect_body(&mut reader, JOINED);

    // tungstenite queues a pong for every ping and sends it on the next read.
    let mut pings = 0;
    loop {
        match reader.read().expect("read") {
            Message::Ping(_) => pings += 1,
            Message::Text(text) if chat_body(text.as_str()) == LEFT => break,
            other => panic!("unexpected message: {other:?}"),
        }
    }
    assert!(pings >= 1, "the server never pinged");
    send_text(&mut reader, "alive");
    expect_body(&mut reader, "alive");
}

// ---- Connection limit ------------------------------------------------------------------------

fn expect_503(server: &TestServer) {
    let mut stream = tcp_connect(server);
    let response = HttpResponse::parse(&read_to_close(&mut stream));
    assert_eq!(response.status, 503);
    assert!(response.header("Content-Length").is_some());
}

#[test]
fn over_the_limit_gets_503_and_a_slot_frees_when_someone_leaves() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let mut a = join_chat(&server, &mut []);
    let mut b = join_chat(&server, &mut [&mut a]);
    expect_503(&server);

    // The refused connection did not disturb the room.
    send_text(&mut a, "still two");
    expect_body(&mut a, "still two");
    expect_body(&mut b, "still two");

    // b's socket closes outright. (After a closing handshake the server may keep the TCP
    // connection, and its slot, until the client closes its side too.) The leave notice for a
    // closed socket marks the moment the server has let go of it, so its slot is free again.
    drop(b);
    expect_body(&mut a, LEFT);
    let mut c = join_chat(&server, &mut [&mut a]);
    send_text(&mut c, "three's company");
    expect_body(&mut a, "three's company");
    expect_body(&mut c, "three's company");
    expect_503(&server);
}

#[test]
fn plain_http_connections_count_too() {
    let server = TestServer::start(&["--max-connections", "1"]);
    // The first connection has not sent anything yet. The listen queue is first in, first
    // out, so the server accepts it before the second one, which is over the limit.
    let mut first = tcp_connect(&server);
    expect_503(&server);

    first
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.host()).as_bytes())
        .unwrap();
    let response = HttpResponse::parse(&read_to_close(&mut first));
    assert_eq!(response.body, b"ok");
    // Nothing observable tells when the server lets go of `first` once we close it too, so
    // freeing a slot is checked with WebSocket clients, whose leave notice marks the moment.
}

// ---- Slow consumers --------------------------------------------------------------------------

#[test]
fn a_client_that_never_reads_is_dropped_and_the_others_get_everything() {
    let server = TestServer::start(&[&NO_BUDGET[..], &["--max-outbound", "65536"]].concat());
    let mut watcher = RawClient::join(&server);
    let slow = join_without_reading(&server);
    watcher.expect_body(JOINED);
    let mut sender = RawClient::join(&server);
    watcher.expect_body(JOINED);

    let (sender_leaves, watcher_leaves) = pump_messages(&mut sender, &mut watcher);
    assert_eq!(
        sender_leaves, 1,
        "the sender must see exactly one leave notice"
    );
    assert_eq!(
        watcher_leaves, 1,
        "the watcher must see exactly one leave notice"
    );

    // The slow client's connection is gone: after whatever was already in its buffers,
    // reading ends in EOF or a reset (no closing handshake is owed to it).
    read_to_close(&mut slow.stream().try_clone().unwrap());

    sender.send_text("done");
    sender.expect_body("done");
    watcher.expect_body("done");
}

// ---- Abrupt disconnects ----------------------------------------------------------------------

#[test]
fn a_reset_connection_tells_the_others() {
    let server = TestServer::start(&[]);
    let mut watcher = RawClient::join(&server);
    let doomed = RawClient::join(&server);
    watcher.expect_body(JOINED);

    reset_on_drop(doomed.stream());
    drop(doomed); // RST instead of FIN
    watcher.expect_body(LEFT);
    watcher.send_text("carry on");
    watcher.expect_body("carry on");
}

#[test]
fn a_reset_while_messages_are_queued_for_it_tells_the_others() {
    let server = TestServer::start(&NO_BUDGET);
    let mut watcher = RawClient::join(&server);
    let doomed = join_without_reading(&server);
    watcher.expect_body(JOINED);

    // Leave unread data on both sides of the doomed connection, then reset it.
    for i in 0..200 {
        watcher.send_text(&message(i));
    }
    for i in 0..200 {
        watcher.expect_body(&message(i));
    }
    reset_on_drop(doomed.stream());
    drop(doomed);
    watcher.expect_body(LEFT);
    watcher.send_text("carry on");
    watcher.expect_body("carry on");
}

// ---- Graceful shutdown -----------------------------------------------------------------------

/// The contract says the process exits within 2 s of the signal; one more second absorbs a
/// busy test machine.
const EXIT_BOUND: Duration = Duration::from_secs(3);

fn stop_and_check_exit(
    mut server: TestServer,
    signal: libc::c_int,
    clients: Vec<RawClient>,
    ws: Option<Ws>,
) {
    let signalled = Instant::now();
    server.signal(signal);
    for mut client in clients {
        client.expect_close_code(1001);
    }
    if let Some(mut ws) = ws {
        assert_eq!(expect_close(&mut ws), 1001);
    }
    let status = server.wait_for_exit(GUARD);
    assert!(
        signalled.elapsed() <= EXIT_BOUND,
        "exit took {:?}",
        signalled.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");
}

fn shutdown_closes_everyone_with_1001(signal: libc::c_int) {
    let server = TestServer::start(&[]);
    let mut a = RawClient::join(&server);
    let b = RawClient::join(&server);
    a.expect_body(JOINED);
    let mut ws = ws_connect(&server, "/ws");
    expect_body(&mut ws, JOINED);
    stop_and_check_exit(server, signal, vec![a, b], Some(ws));
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    shutdown_closes_everyone_with_1001(libc::SIGTERM);
}

#[test]
fn sigint_closes_everyone_with_1001_and_exits_0() {
    shutdown_closes_everyone_with_1001(libc::SIGINT);
}

#[test]
fn sigterm_with_no_clients_exits_0() {
    let server = TestServer::start(&[]);
    stop_and_check_exit(server, libc::SIGTERM, Vec::new(), None);
}

#[test]
fn sigterm_exits_0_with_an_unfinished_http_request() {
    let server = TestServer::start(&[]);
    let mut stream = tcp_connect(&server);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // The listen queue is first in, first out: once a later client has joined, the server has
    // accepted this connection too.
    let member = RawClient::join(&server);
    stop_and_check_exit(server, libc::SIGTERM, vec![member], None);
    // Whatever the server said to the unfinished request, the connection is over.
    read_to_close(&mut stream);
}

fn shutdown_with_unsent_bytes_pending(signal: libc::c_int) {
    // A large --max-outbound keeps the non-reading client connected with megabytes queued.
    let server = TestServer::start(&[&NO_BUDGET[..], &["--max-outbound", "67108864"]].concat());
    let mut watcher = RawClient::join(&server);
    let _slow = join_without_reading(&server);
    watcher.expect_body(JOINED);
    let mut sender = RawClient::join(&server);
    watcher.expect_body(JOINED);

    let (sender_leaves, watcher_leaves) = pump_messages(&mut sender, &mut watcher);
    assert_eq!(
        (sender_leaves, watcher_leaves),
        (0, 0),
        "nobody should have been dropped"
    );
    // The slow client's Close frame sits behind its backlog, so only the others are checked;
    // the point is that the backlog must not keep the process from exiting.
    stop_and_check_exit(server, signal, vec![watcher, sender], None);
}

#[test]
fn sigterm_exits_0_while_a_client_has_unsent_bytes() {
    shutdown_with_unsent_bytes_pending(libc::SIGTERM);
}

#[test]
fn sigint_exits_0_while_a_client_has_unsent_bytes() {
    shutdown_with_unsent_bytes_pending(libc::SIGINT);
}

/// A client that answers the server's Close 1001 completes the closing handshake at once: the
/// server sends its FIN right after the peer's Close (it has nothing left to write), so the
/// client sees the end of the stream and nobody is still connected when the process stops.
#[test]
fn clients_that_answer_the_close_are_released_before_the_deadline() {
    let server = TestServer::start(&[]);
    let mut a = ws_connect(&server, "/ws");
    expect_body(&mut a, JOINED);
    let b = join_chat(&server, &mut [&mut a]);
    server.signal(libc::SIGTERM);
    for mut ws in [a, b] {
        assert_eq!(expect_close(&mut ws), 1001);
        // Reading on sends tungstenite's Close reply and returns once the server hangs up;
        // then the client closes its socket too.
        while ws.read().is_ok() {}
    }
    let last = server.wait_for_log("stopped");
    assert!(last.contains("stopped (0 connections"), "{last}");
}

/// Out of file descriptors, the server pauses accepting and retries; it says so once when the
/// episode starts (not at every retry, every 100 ms) and once when it ends, with the count.
#[test]
fn running_out_of_file_descriptors_is_reported_once_per_episode() {
    let server = TestServer::start_with(&[], &[("RUST_LOG", "debug")], |command| {
        open_file_limit(command, 40)
    });
    // More connections than the server has descriptors left: the rest wait in the backlog.
    let held: Vec<TcpStream> = (0..45).map(|_| tcp_connect(&server)).collect();
    server.wait_for_log_count("accept still failing", 3);
    let warnings = server
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode");
    drop(held); // the server closes them, and accepts what waited
    let over = server.wait_for_log("accepting again after");
    let count: u64 = over
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .expect("a count");
    assert!(count >= 3, "{over}");
}
