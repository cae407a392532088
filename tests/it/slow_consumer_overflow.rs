//! A client whose queue passes `--max-outbound` once its socket is full is dropped as a slow
//! consumer, and the server lives on. Review of issue 10: `Server::settle` sees the overflow
//! and calls `Server::abort`, which ends the connection and calls `settle` again; the queue is
//! still over the limit and WRITABLE still registered, so `settle` aborts again, without end,
//! until the stack overflows and the process aborts (SIGABRT). Two ways in: the client's own
//! pongs, and one batch of the room larger than the limit.

use crate::common;

use std::io::Write;

use common::slow::join_without_reading;
use common::*;

/// The server still answers, and dropped at least `at_least` clients as slow consumers.
fn assert_alive_and_dropped(server: &TestServer, at_least: u64) {
    let page = http_get(server, "/metrics").body_text();
    let dropped = page
        .lines()
        .find(|l| l.starts_with("mio_chat_clients_dropped_total{reason=\"slow_consumer\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(dropped.is_some_and(|n| n >= at_least), "{page}");
}

#[test]
fn pongs_past_max_outbound_drop_the_client_without_killing_the_server() {
    let server = TestServer::start(&["--max-outbound", "8192"]);
    // Joined and its join notice read first, so that its pongs pile up after the fan-out.
    let client = join_without_reading(&server);
    let mut flooder = client.stream().try_clone().unwrap();
    let pings = Frame::ping(&[b'p'; 125]).encode().repeat(64);
    for _ in 0..20_000 {
        // 160 MB at most; the server cuts the flooder off long before.
        if flooder.write_all(&pings).is_err() {
            break;
        }
    }
    assert_alive_and_dropped(&server, 1);
}

#[test]
fn a_batch_larger_than_max_outbound_drops_a_full_socket_without_killing_the_server() {
    let flags = ["--max-outbound", "65536", "--max-message-size", "4000000"];
    let server = TestServer::start(&[&flags[..], &NO_BUDGET[..]].concat());
    let _slow = join_without_reading(&server);
    let mut sender = RawClient::join(&server);
    let text = "a".repeat(3_900_000);
    let big = Frame::text(&text).encode();
    for _ in 0..4 {
        sender.write_raw(&big);
        // Each message its own batch: the sender has its own copy back before the next.
        while sender.next_body() == LEFT {} // the slow client's leave, when it comes
    }
    assert_alive_and_dropped(&server, 1);
}
