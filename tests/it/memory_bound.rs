//! `--max-client-memory`: past the bound over what all clients hold, the clients holding the most
//! (hoarders of partial frames, fragments and request heads, readers far behind) are evicted
//! with close 1013 (503 before the upgrade) and counted; ordinary clients stay and keep
//! receiving everything. Each step waits for what the server says (a Close, a leave notice, a
//! 503), never for time.

use crate::common;

use std::io::Write;

use common::slow::{join_without_reading, message, read_messages};
use common::*;

const EVICTED: &str = "mio_chat_clients_dropped_total{reason=\"client_memory\"}";
const TRY_AGAIN_LATER: u16 = 1013;

fn start(bound: &str, extra: &[&str]) -> TestServer {
    let flags = [&["--max-client-memory", bound][..], extra, &NO_BUDGET[..]].concat();
    TestServer::start(&flags)
}

/// Two ordinary chat clients, each having seen the other join.
fn two_ordinary(server: &TestServer) -> (RawClient, RawClient) {
    let mut alice = RawClient::join(server);
    let bob = RawClient::join(server);
    alice.expect_body(JOINED);
    (alice, bob)
}

/// A new chat client, whose join `others` have seen.
fn joins(server: &TestServer, others: &mut [&mut RawClient]) -> RawClient {
    let client = RawClient::join(server);
    for other in others.iter_mut() {
        other.expect_body(JOINED);
    }
    client
}

/// Every one of `clients` sees `who` leave, then a message from the first goes to all of them.
fn they_see_the_leave_and_keep_talking(clients: &mut [&mut RawClient], text: &str) {
    for client in clients.iter_mut() {
        client.expect_body(LEFT);
    }
    clients[0].send_text(text);
    for client in clients.iter_mut() {
        client.expect_body(text);
    }
}

#[test]
fn hoarders_of_partial_frames_and_fragments_go_and_the_others_stay() {
    let server = start("16384", &[]);
    let (mut alice, mut bob) = two_ordinary(&server);

    // Two thirds of a 60 KB frame, never finished.
    let mut partial = joins(&server, &mut [&mut alice, &mut bob]);
    let frame = Frame::text(&"a".repeat(60_000)).encode();
    partial.write_raw(&frame[..40_000]);
    partial.expect_close_code(TRY_AGAIN_LATER);
    they_see_the_leave_and_keep_talking(&mut [&mut alice, &mut bob], "after one");

    // A message in fragments, 10 KB each, never finished: the second passes the bound.
    let mut fragments = joins(&server, &mut [&mut alice, &mut bob]);
    fragments.send(&Frame::text(&"b".repeat(10_000)).fin(false));
    fragments.send(&Frame::continuation("b".repeat(10_000).as_bytes()).fin(false));
    fragments.expect_close_code(TRY_AGAIN_LATER);
    they_see_the_leave_and_keep_talking(&mut [&mut bob, &mut alice], "after two");

    assert_eq!(metric(&server, EVICTED), 2);
    assert!(metric(&server, "mio_chat_client_memory_bytes") <= 16384);
    assert_eq!(metric(&server, "mio_chat_max_client_memory_bytes"), 16384);
}

#[test]
fn hoarders_of_partial_request_heads_get_503_and_the_others_stay() {
    let server = start("4096", &[]);
    let (mut alice, mut bob) = two_ordinary(&server);
    for i in 0..3 {
        let mut stream = tcp_connect(&server);
        let head = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Pad: {}", "p".repeat(6000));
        stream.write_all(head.as_bytes()).unwrap();
        let answer = read_to_close(&mut stream);
        assert!(answer.starts_with(b"HTTP/1.1 503 "), "{answer:?}");
        let text = format!("after head {i}");
        alice.send_text(&text);
        alice.expect_body(&text);
        bob.expect_body(&text);
    }
    assert_eq!(metric(&server, EVICTED), 3);
}

/// A reader that never reads while a sender floods: its queue grows until it holds the most,
/// past the bound, and it goes; the sender and a watcher get every message. Once the flood
/// stops, the evicted reader reads what was sent to it: whole frames, then close 1013.
#[test]
fn a_reader_far_behind_goes_and_the_others_get_everything() {
    let server = start("131072", &["--max-outbound", "64000000"]);
    let mut slow = join_without_reading(&server);
    let mut sender = joins(&server, &mut []);
    let mut watcher = joins(&server, &mut [&mut sender]);
    let (mut sender_got, mut watcher_got) = (Vec::new(), Vec::new());
    let (mut sender_leaves, mut watcher_leaves) = (0, 0);
    let mut sent = 0;
    while watcher_leaves == 0 {
        assert!(
            sent < 40_000,
            "40 MB sent and the slow reader is still there"
        );
        let batch: Vec<u8> = (sent..sent + 16)
            .flat_map(|i| Frame::text(&message(i)).encode())
            .collect();
        sender.write_raw(&batch);
        sent += 16;
        read_messages(&mut sender, 16, &mut sender_got, &mut sender_leaves);
        read_messages(&mut watcher, 16, &mut watcher_got, &mut watcher_leaves);
    }
    let expected: Vec<String> = (0..sent).map(message).collect();
    assert!(sender_got == expected, "the sender missed messages");
    assert!(watcher_got == expected, "the watcher missed messages");
    assert_eq!(slow.expect_close(), Some(TRY_AGAIN_LATER));
    assert_eq!(metric(&server, EVICTED), 1);
    sender.send_text("still here");
    sender.expect_body("still here");
    watcher.expect_body("still here");
}

/// A burst that drains is handed back to the system: readers that stopped reading are dropped
/// with queues of a megabyte or more each (past `--max-outbound`), over 16 MiB in all, and once
/// the loop is quiet it trims the heap (counted in `mio_chat_memory_trims_total`). Scrape after
/// scrape until it is counted; the guard only turns a hang into a failure.
#[test]
fn a_drained_burst_is_handed_back_to_the_system() {
    const READERS: usize = 24;
    let server = start("1073741824", &[]);
    let mut lazy: Vec<RawClient> = Vec::new();
    for _ in 0..READERS {
        lazy.push(join_without_reading(&server));
    }
    let mut sender = joins(&server, &mut []);
    let mut watcher = joins(&server, &mut [&mut sender]);
    let (mut sender_got, mut watcher_got) = (Vec::new(), Vec::new());
    let (mut sender_leaves, mut watcher_leaves) = (0, 0);
    let mut sent = 0;
    while watcher_leaves < READERS {
        assert!(
            sent < 400_000,
            "{sent} messages sent and readers are still there"
        );
        let batch: Vec<u8> = (sent..sent + 64)
            .flat_map(|i| Frame::text(&format!("{i:0>1000}")).encode())
            .collect();
        sender.write_raw(&batch);
        sent += 64;
        read_messages(&mut sender, 64, &mut sender_got, &mut sender_leaves);
        read_messages(&mut watcher, 64, &mut watcher_got, &mut watcher_leaves);
    }
    assert_eq!(
        metric(
            &server,
            "mio_chat_clients_dropped_total{reason=\"slow_consumer\"}"
        ),
        READERS as u64
    );
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(&server, "mio_chat_memory_trims_total") == 0 {
        assert!(
            std::time::Instant::now() < guard,
            "the drained queues were never handed back"
        );
    }
}
