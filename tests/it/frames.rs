//! Well-formed WebSocket framing, sent by hand: fragmented messages (with control frames in
//! between), ping/pong, 7/16/64-bit payload lengths, the size limit boundary, frames split
//! over many writes or packed into one, and the closing handshake started by the client.

use crate::common;

use common::*;

#[test]
fn a_fragmented_message_with_a_ping_in_between_is_reassembled() {
    let server = TestServer::start(&[]);
    let mut watcher = RawClient::join(&server);
    let mut sender = RawClient::join(&server);
    watcher.expect_body(JOINED);

    sender.send(&Frame::text("Hel").fin(false));
    sender.send(&Frame::ping(b"mid-message"));
    // The pong comes right away, before the message is complete.
    let pong = sender.read_frame();
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"mid-message");

    sender.send(&Frame::continuation(b"lo, ").fin(false));
    sender.send(&Frame::continuation(b"world"));
    sender.expect_body("Hello, world");
    watcher.expect_body("Hello, world");
}

#[test]
fn fragments_and_control_frames_in_a_single_write() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    let mut bytes = Frame::text("a").fin(false).encode();
    bytes.extend(Frame::ping(b"1").encode());
    bytes.extend(Frame::continuation(b"b").fin(false).encode());
    bytes.extend(Frame::pong(b"unsolicited").encode()); // allowed, and ignored
    bytes.extend(Frame::ping(b"2").encode());
    bytes.extend(Frame::continuation(b"c").encode());
    client.write_raw(&bytes);

    // Replies come in the order the frames were read: pong 1, pong 2, then the message.
    for expected in [b"1", b"2"] {
        let frame = client.read_frame();
        assert_eq!(
            (frame.opcode, frame.payload.as_slice()),
            (OP_PONG, &expected[..])
        );
    }
    client.expect_body("abc");
}

#[test]
fn a_character_split_across_fragments_is_fine() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    let euro = "€".as_bytes(); // three bytes: E2 82 AC
    client.send(&Frame::new(OP_TEXT, &euro[..1]).fin(false));
    client.send(&Frame::continuation(&euro[1..2]).fin(false));
    client.send(&Frame::continuation(&euro[2..]));
    client.expect_body("€");
}

#[test]
fn empty_fragments_are_fine() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    client.send(&Frame::text("").fin(false));
    client.send(&Frame::continuation(b"x").fin(false));
    client.send(&Frame::continuation(b""));
    client.expect_body("x");
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    let largest = [0xAB; 125]; // the most a control frame may carry
    for payload in [&b""[..], b"hello", &[0, 159, 146, 150], &largest[..]] {
        client.send(&Frame::ping(payload));
        let pong = client.read_frame();
        assert_eq!(pong.opcode, OP_PONG);
        assert!(pong.fin);
        assert_eq!(pong.payload, payload);
    }
}

#[test]
fn an_unsolicited_pong_is_ignored() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    client.send(&Frame::pong(b"heartbeat"));
    client.send_text("still connected");
    client.expect_body("still connected");
}

#[test]
fn payload_lengths_in_every_encoding() {
    let server = TestServer::start(&["--max-message-size", "100000"]);
    let mut watcher = RawClient::join(&server);
    let mut sender = RawClient::join(&server);
    watcher.expect_body(JOINED);
    // 125: 7-bit length; 126 and 65535: 16-bit; 65536 and 70000: 64-bit. The server's
    // replies are a little longer (JSON wrapping), so they cross the same boundaries.
    for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
        let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        sender.send_text(&text);
        assert_eq!(watcher.next_body(), text, "length {len}");
        assert_eq!(sender.next_body(), text, "length {len}");
    }
}

#[test]
fn a_message_of_exactly_the_maximum_size_is_accepted() {
    let server = TestServer::start(&["--max-message-size", "1000"]);
    let mut client = RawClient::join(&server);
    let text = "m".repeat(1000);
    client.send_text(&text);
    client.expect_body(&text);

    // The limit applies to the reassembled message, so 400 + 600 is fine too.
    client.send(&Frame::text(&text[..400]).fin(false));
    client.send(&Frame::continuation(&text.as_bytes()[400..]));
    client.expect_body(&text);
}

#[test]
fn a_frame_written_one_byte_at_a_time() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    let mut other = RawClient::join(&server);
    client.expect_body(JOINED);
    client.stream().set_nodelay(true).unwrap();
    let long = "z".repeat(300); // 16-bit length, so the header itself arrives in 8 pieces
    for byte in Frame::text(&long).encode() {
        client.write_raw(&[byte]);
    }
    client.expect_body(&long);
    other.expect_body(&long);
}

#[test]
fn many_frames_in_one_write() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::join(&server);
    let bytes: Vec<u8> = (0..100)
        .flat_map(|i| Frame::text(&format!("n{i}")).encode())
        .collect();
    client.write_raw(&bytes);
    for i in 0..100 {
        client.expect_body(&format!("n{i}"));
    }
}

#[test]
fn client_close_1000_is_echoed_then_tcp_closes() {
    let server = TestServer::start(&[]);
    let mut watcher = RawClient::join(&server);
    let mut leaver = RawClient::join(&server);
    watcher.expect_body(JOINED);

    leaver.send(&Frame::close(1000, b"bye"));
    leaver.expect_close_code(1000);
    watcher.expect_body(LEFT);
}

#[test]
fn client_close_without_a_code_is_answered() {
    let server = TestServer::start(&[]);
    let mut watcher = RawClient::join(&server);
    let mut leaver = RawClient::join(&server);
    watcher.expect_body(JOINED);

    leaver.send(&Frame::new(OP_CLOSE, Vec::new()));
    // An empty Close means "no status"; the reply may be empty or say 1000.
    let code = leaver.expect_close();
    assert!(
        matches!(code, None | Some(1000)),
        "unexpected close code {code:?}"
    );
    leaver.expect_eof();
    watcher.expect_body(LEFT);
}
