//! A client that keeps up is never dropped, however large one turn's batch: `--max-outbound`
//! bounds a backlog, not one batch. A member with nothing queued is written straight from the
//! batch, and what its socket cannot take at once is queued for it, past the limit if the batch
//! is larger; it is judged again only on what it queues on top of that.

use crate::common;

use common::*;

#[test]
fn prompt_readers_get_a_batch_larger_than_max_outbound() {
    let flags = ["--max-outbound", "65536", "--max-message-size", "12000000"];
    let server = TestServer::start(&[&flags[..], &NO_BUDGET[..]].concat());
    // A small receive window, and a batch larger than the send buffer can grow to (4 MiB on
    // Linux by default): the socket takes only part of the batch at once.
    let mut reader = RawClient::handshake(
        tcp_connect_small_rcvbuf(&server, 4096),
        &Handshake::new(&server),
    );
    reader.expect_body(JOINED);
    let mut sender = RawClient::join(&server);
    reader.expect_body(JOINED);
    let text = "a".repeat(10_000_000);
    let reading = std::thread::spawn(move || reader.next_body().len());
    sender.send_text(&text);
    assert_eq!(
        sender.next_body().len(),
        text.len(),
        "the sender's own copy"
    );
    assert_eq!(reading.join().unwrap(), text.len(), "the reader's copy");
    let dropped = metric(
        &server,
        "mio_chat_clients_dropped_total{reason=\"slow_consumer\"}",
    );
    assert_eq!(dropped, 0);
}
