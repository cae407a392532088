//! Frames the server must refuse, and the close code it answers with: 1003 for binary data,
//! 1007 for invalid UTF-8, 1009 for messages over --max-message-size, 1002 for every other
//! protocol violation. In each case the server sends a Close frame, closes the TCP
//! connection, and the rest of the room gets one leave notice.

use crate::common;

use common::*;

/// Joins a watcher and an offender, has the offender write `bytes`, and checks the outcome.
fn expect_rejected_with(server_args: &[&str], bytes: &[u8], code: u16) {
    let server = TestServer::start(server_args);
    let mut watcher = RawClient::join(&server);
    let mut offender = RawClient::join(&server);
    watcher.expect_body(JOINED);

    offender.write_raw(bytes);
    offender.expect_close_code(code);
    watcher.expect_body(LEFT);

    // The server is still healthy for everyone else.
    watcher.send_text("after");
    watcher.expect_body("after");
}

fn expect_rejected(bytes: &[u8], code: u16) {
    expect_rejected_with(&[], bytes, code);
}

/// Several frames written back to back.
fn frames(list: &[Frame]) -> Vec<u8> {
    list.iter().flat_map(Frame::encode).collect()
}

// ---- 1003: unsupported data ----------------------------------------------------------------------

#[test]
fn binary_message_is_1003() {
    expect_rejected(&Frame::binary(b"\x00\x01\x02").encode(), 1003);
}

#[test]
fn fragmented_binary_message_is_1003() {
    expect_rejected(
        &frames(&[Frame::binary(b"ab").fin(false), Frame::continuation(b"cd")]),
        1003,
    );
}

// ---- 1007: invalid UTF-8 ------------------------------------------------------------------------

#[test]
fn invalid_utf8_text_is_1007() {
    expect_rejected(&Frame::new(OP_TEXT, &b"bad \xff byte"[..]).encode(), 1007);
}

#[test]
fn overlong_and_surrogate_encodings_are_1007() {
    // C0 AF is an overlong '/', ED A0 80 an encoded surrogate: both invalid UTF-8.
    expect_rejected(&Frame::new(OP_TEXT, &b"\xc0\xaf"[..]).encode(), 1007);
    expect_rejected(&Frame::new(OP_TEXT, &b"\xed\xa0\x80"[..]).encode(), 1007);
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    // E2 82 starts a three-byte character; the next fragment does not finish it.
    let bytes = frames(&[
        Frame::new(OP_TEXT, &b"ok \xe2\x82"[..]).fin(false),
        Frame::continuation(b"( not a continuation byte"),
    ]);
    expect_rejected(&bytes, 1007);
}

#[test]
fn text_ending_in_a_truncated_character_is_1007() {
    let bytes = frames(&[
        Frame::new(OP_TEXT, &b"ok"[..]).fin(false),
        Frame::continuation(b"\xe2\x82"),
    ]);
    expect_rejected(&bytes, 1007);
}

#[test]
fn close_reason_that_is_not_utf8_is_1007() {
    expect_rejected(&Frame::close(1000, b"\xff\xfe").encode(), 1007);
}

// ---- 1009: too big --------------------------------------------------------------------------------

#[test]
fn a_frame_declaring_too_much_is_1009_before_any_payload() {
    // Only the header is sent: the server must decide from the declared length alone,
    // without waiting for (or buffering) a payload it will refuse anyway.
    let header = Frame::text("").declared_len(1001).encode();
    expect_rejected_with(&["--max-message-size", "1000"], &header, 1009);
}

#[test]
fn a_huge_64_bit_length_is_1009() {
    let header = Frame::text("").declared_len(u32::MAX as u64 + 1).encode();
    expect_rejected(&header, 1009);
}

#[test]
fn fragments_adding_up_past_the_limit_are_1009() {
    let chunk = "f".repeat(400);
    let bytes = frames(&[
        Frame::text(&chunk).fin(false),
        Frame::continuation(chunk.as_bytes()).fin(false),
        Frame::continuation(chunk.as_bytes()), // 1200 bytes in all
    ]);
    expect_rejected_with(&["--max-message-size", "1000"], &bytes, 1009);
}

// ---- 1002: protocol errors ------------------------------------------------------------------------

#[test]
fn unmasked_client_frame_is_1002() {
    expect_rejected(&Frame::text("naked").unmasked().encode(), 1002);
}

#[test]
fn rsv_bits_are_1002() {
    for bits in [0b100, 0b010, 0b001] {
        expect_rejected(&Frame::text("rsv").rsv(bits).encode(), 1002);
    }
}

#[test]
fn unknown_opcodes_are_1002() {
    // 3-7 are reserved data opcodes, B-F reserved control opcodes.
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        expect_rejected(&Frame::new(opcode, &b"?"[..]).encode(), 1002);
    }
}

#[test]
fn control_frame_over_125_bytes_is_1002() {
    expect_rejected(&Frame::ping(&[0u8; 126]).encode(), 1002);
}

#[test]
fn fragmented_control_frame_is_1002() {
    expect_rejected(&Frame::ping(b"part").fin(false).encode(), 1002);
}

#[test]
fn continuation_without_a_message_is_1002() {
    expect_rejected(&Frame::continuation(b"orphan").encode(), 1002);
}

#[test]
fn new_message_while_a_fragmented_one_is_open_is_1002() {
    let bytes = frames(&[Frame::text("first").fin(false), Frame::text("second")]);
    expect_rejected(&bytes, 1002);
}

#[test]
fn close_with_a_1_byte_payload_is_1002() {
    expect_rejected(&Frame::new(OP_CLOSE, &[0x03][..]).encode(), 1002);
}

#[test]
fn close_with_an_invalid_code_is_1002() {
    // 999 is below the defined range, 1005 and 1006 must never be sent on the wire, 5000 is
    // above the range.
    for code in [999, 1005, 1006, 5000] {
        expect_rejected(&Frame::close(code, b"").encode(), 1002);
    }
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_is_1002() {
    // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    let header = Frame::text("").declared_len(1 << 63 | 5).encode();
    expect_rejected(&header, 1002);
}
