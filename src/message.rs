//! The frames of the chat protocol, each encoded once as a ready-to-send WebSocket frame.
//!
//! **Version 1**, the tutorial's, is what a client gets unless it asks for more: everything the
//! server says in the room, chat and notices alike, is `{"type":1,"body":"..."}`, the shape the
//! tutorial's React frontend reads. The notices are fixed strings, so a client can only tell
//! them by their text (and a person can type the same text).
//!
//! **Version 2** (subprotocol [`V2_PROTOCOL`], asked for by the built-in page) says what each
//! frame is: [`V2Frame`]. Its frames name members by an id ([`MemberId`]) rather than saying
//! "this one is yours", so that one encoding of a turn's frames serves every version-2 member;
//! each member learns its own id in its `hello` and compares.

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
pub fn push_chat_frame(out: &mut Vec<u8>, body: &str) {
    push_json_frame(out, &Message::text(body));
}

/// The subprotocol a client names in `Sec-WebSocket-Protocol` to get version 2's frames.
pub const V2_PROTOCOL: &str = "mio-chat.v2";

/// Which frames a chat client gets, as its handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// The tutorial's `{"type":1,"body":...}`, byte for byte.
    #[default]
    V1,
    /// [`V2Frame`]s: [`V2_PROTOCOL`].
    V2,
}

/// A member of the room as version 2 names it: the process that holds it (empty without Redis)
/// and its connection id there, which is never reused while the process lives. Written as one
/// JSON string, `"17"` or `"5f0c9a2e41d7b386.17"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberId<'a> {
    pub node: &'a str,
    pub id: u64,
}

impl Serialize for MemberId<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.node.is_empty() {
            s.collect_str(&self.id)
        } else {
            s.collect_str(&format_args!("{}.{}", self.node, self.id))
        }
    }
}

/// One frame of version 2. `time` is the server's clock when it encoded the frame, in
/// milliseconds since the Unix epoch; `online` the members of the room after a join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum V2Frame<'a> {
    /// The first frame a version-2 client gets, before its own join: who it is, and the largest
    /// message the server takes (`--max-message-size`, in bytes of UTF-8).
    Hello {
        you: MemberId<'a>,
        max_message_size: usize,
        time: u64,
    },
    Join {
        id: MemberId<'a>,
        online: usize,
        time: u64,
    },
    Leave {
        id: MemberId<'a>,
        online: usize,
        time: u64,
    },
    Message {
        from: MemberId<'a>,
        body: &'a str,
        time: u64,
    },
}

/// Appends one complete text frame carrying `frame` (version 2) to `out`.
pub fn push_v2_frame(out: &mut Vec<u8>, frame: &V2Frame) {
    push_json_frame(out, frame);
}

/// Milliseconds since the Unix epoch, for version 2's `time` (0 if the clock is before 1970).
pub fn unix_millis(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends one complete text frame carrying `value` as JSON to `out`.
///
/// The JSON is written straight into `out` after room for the longest header, because its length
/// is known only once it is written; the header then goes in front and the gap is closed. No
/// temporary buffer, so encoding a broadcast allocates nothing once `out` has grown.
fn push_json_frame(out: &mut Vec<u8>, value: &impl Serialize) {
    let start = out.len();
    out.resize(start + MAX_HEADER_LEN, 0);
    serde_json::to_writer(&mut *out, value).expect("writing JSON to a Vec cannot fail");
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
    fn version_2_frames_say_what_they_are() {
        let local = MemberId { node: "", id: 17 };
        let remote = MemberId {
            node: "ab12",
            id: 3,
        };
        let cases: [(V2Frame, &[u8]); 4] = [
            (
                V2Frame::Hello {
                    you: local,
                    max_message_size: 65536,
                    time: 5,
                },
                br#"{"type":"hello","you":"17","max_message_size":65536,"time":5}"#,
            ),
            (
                V2Frame::Join {
                    id: remote,
                    online: 2,
                    time: 6,
                },
                br#"{"type":"join","id":"ab12.3","online":2,"time":6}"#,
            ),
            (
                V2Frame::Leave {
                    id: local,
                    online: 1,
                    time: 7,
                },
                br#"{"type":"leave","id":"17","online":1,"time":7}"#,
            ),
            (
                V2Frame::Message {
                    from: local,
                    body: "User Disconnected... \"<b>\"",
                    time: 8,
                },
                br#"{"type":"message","from":"17","body":"User Disconnected... \"<b>\"","time":8}"#,
            ),
        ];
        for (frame, json) in cases {
            let mut out = vec![1];
            push_v2_frame(&mut out, &frame);
            assert_eq!(out[1], 0x81);
            assert_eq!(frame_payload(&out[1..]), json);
        }
    }

    #[test]
    fn the_clock_in_milliseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_123);
        assert_eq!(unix_millis(t), 1_765_000_000_123);
        assert_eq!(unix_millis(std::time::UNIX_EPOCH), 0);
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
