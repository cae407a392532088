//! The one message type of the chat protocol, and its encoding as a ready-to-send frame.
//!
//! Everything the server says in the room, chat and notices alike, is `{"type":1,"body":"..."}`:
//! the shape the tutorial's React frontend reads. The notices are fixed strings so that any client
//! can recognise them.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use crate::frame::{self, OpCode, MAX_HEADER_LEN};

/// The body of the notice everyone gets when someone joins, the newcomer included.
pub const JOINED: &str = "New User Joined...";
/// The body of the notice everyone left gets when someone leaves.
pub const LEFT: &str = "User Disconnected...";

/// The JSON object every client receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message<'a> {
    /// Always 1 (the tutorial's "text message"); kept for its frontend.
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
}

impl<'a> Message<'a> {
    pub fn text(body: &'a str) -> Self {
        Message {
            kind: 1,
            body: Cow::Borrowed(body),
        }
    }
}

/// Appends one complete text frame carrying `{"type":1,"body":body}` to `out`.
///
/// The JSON is written straight into `out` after room for the longest header, because its length
/// is known only once it is written; the header then goes in front and the gap is closed. No
/// temporary buffer, so encoding a broadcast allocates nothing once `out` has grown.
pub fn push_chat_frame(out: &mut Vec<u8>, body: &str) {
    let start = out.len();
    out.resize(start + MAX_HEADER_LEN, 0);
    serde_json::to_writer(&mut *out, &Message::text(body))
        .expect("writing JSON to a Vec cannot fail");
    let payload_len = out.len() - start - MAX_HEADER_LEN;
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = frame::write_header(OpCode::Text, payload_len, &mut header);
    let gap = MAX_HEADER_LEN - header_len;
    out[start + gap..start + MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
    out.copy_within(start + gap.., start);
    out.truncate(out.len() - gap);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_payload(frame: &[u8]) -> &[u8] {
        match frame[1] {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn encodes_the_tutorial_shape() {
        let mut out = Vec::new();
        push_chat_frame(&mut out, JOINED);
        assert_eq!(out[0], 0x81);
        assert_eq!(
            frame_payload(&out),
            br#"{"type":1,"body":"New User Joined..."}"#
        );
        assert_eq!(out[1] as usize, out.len() - 2);
    }

    #[test]
    fn escapes_and_round_trips_any_text() {
        let tricky = "quote \" backslash \\ newline \n tab \t nul \0 <img src=x> ünïcødé 🦀";
        let mut out = vec![9, 9]; // frames are appended after what is already queued
        push_chat_frame(&mut out, tricky);
        assert_eq!(&out[..2], &[9, 9]);
        let msg: Message = serde_json::from_slice(frame_payload(&out[2..])).unwrap();
        assert_eq!(msg, Message::text(tricky));
    }

    #[test]
    fn long_bodies_get_extended_lengths() {
        for len in [100, 200, 70_000] {
            let body = "a".repeat(len);
            let mut out = Vec::new();
            push_chat_frame(&mut out, &body);
            let payload = frame_payload(&out);
            let msg: Message = serde_json::from_slice(payload).unwrap();
            assert_eq!(msg.body.len(), len);
        }
    }
}
