//! Slow consumers: a client that joins and never reads again, and a sender and a watcher that
//! pump enough messages past it, in lock step, for the server to have to drop it.

use super::*;

const MESSAGE_SIZE: usize = 1000;
/// 4 MB in all: more than the kernel buffers in front of a non-reading client can absorb, so
/// the rest has to pile up in the server.
pub const MESSAGES: usize = 4000;
/// Messages sent before the sender and the watcher catch up. Keeping the batch small keeps
/// the well-behaved clients' own backlog far below --max-outbound whatever the scheduling.
const BATCH: usize = 16;

pub fn message(i: usize) -> String {
    let tag = format!("msg {i:05} ");
    format!("{tag}{}", "x".repeat(MESSAGE_SIZE - tag.len()))
}

/// Reads `count` chat messages, collecting them into `got` and counting leave notices apart.
pub fn read_messages(
    client: &mut RawClient,
    count: usize,
    got: &mut Vec<String>,
    leaves: &mut usize,
) {
    let target = got.len() + count;
    while got.len() < target {
        let body = client.next_body();
        if body == LEFT {
            *leaves += 1;
        } else {
            got.push(body);
        }
    }
}

/// A client with a tiny receive window that joins and then never reads again.
pub fn join_without_reading(server: &TestServer) -> RawClient {
    let mut client = RawClient::handshake(
        tcp_connect_small_rcvbuf(server, 4096),
        &Handshake::new(server),
    );
    client.expect_body(JOINED);
    client
}

/// Sends MESSAGES messages from `sender`, in lock step with `watcher`, and checks that both
/// received all of them in order. Returns how many leave notices each saw.
pub fn pump_messages(sender: &mut RawClient, watcher: &mut RawClient) -> (usize, usize) {
    let (mut sender_got, mut watcher_got) = (Vec::new(), Vec::new());
    let (mut sender_leaves, mut watcher_leaves) = (0, 0);
    for start in (0..MESSAGES).step_by(BATCH) {
        let batch: Vec<u8> = (start..start + BATCH)
            .flat_map(|i| Frame::text(&message(i)).encode())
            .collect();
        sender.write_raw(&batch);
        read_messages(sender, BATCH, &mut sender_got, &mut sender_leaves);
        read_messages(watcher, BATCH, &mut watcher_got, &mut watcher_leaves);
    }
    let expected: Vec<String> = (0..MESSAGES).map(message).collect();
    assert!(
        sender_got == expected,
        "the sender missed or reordered messages"
    );
    assert!(
        watcher_got == expected,
        "the watcher missed or reordered messages"
    );
    (sender_leaves, watcher_leaves)
}
