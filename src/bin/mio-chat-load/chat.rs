//! What the texts say: the server's `{"type":1,"body":...}` envelope, and the stamp our senders
//! put in every message they send: sender, sequence number and send time.
//!
//! A stamped message reads `s=3 q=17 t=123456789 xxxx…`: sender 3's message number 17, sent
//! 123456789 ns after the generator started (its own monotonic clock, so latency needs no
//! synchronised clocks), padded with `x` to the requested size. Plain ASCII, nothing the
//! server's JSON encoding has to escape, so its size on the wire is predictable.

use std::borrow::Cow;
use std::fmt::Write;

use mio_chat::message::Message;

/// The body of a chat message, or `None` if `json` is not one.
///
/// The join flood alone is N(N+1)/2 messages, so the common case (a body without escapes) is
/// cut out of the envelope directly; anything else goes through serde.
pub fn body_of(json: &str) -> Option<Cow<'_, str>> {
    const PREFIX: &str = r#"{"type":1,"body":""#;
    const SUFFIX: &str = r#""}"#;
    if let Some(inner) = json
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
    {
        if !inner.contains(['\\', '"']) {
            return Some(Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<Message>(json)
        .ok()
        .filter(|m| m.kind == 1)
        .map(|m| m.body)
}

/// Who sent a message, its number in that sender's sequence, and when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sender: u32,
    pub seq: u64,
    /// Nanoseconds since the generator's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the message text into `out` (cleared first), padded to at least `size` bytes.
    pub fn encode(&self, size: usize, out: &mut String) {
        out.clear();
        // Writing to a String cannot fail.
        let _ = write!(out, "s={} q={} t={} ", self.sender, self.seq, self.sent_ns);
        let pad = size.saturating_sub(out.len());
        out.extend(std::iter::repeat_n('x', pad));
    }

    /// Reads a stamp back; `None` for any other text (notices, other clients' chatter).
    pub fn decode(text: &str) -> Option<Stamp> {
        let mut fields = text.splitn(4, ' ');
        let mut field =
            |name: &str| -> Option<u64> { fields.next()?.strip_prefix(name)?.parse().ok() };
        let sender = u32::try_from(field("s=")?).ok()?;
        let seq = field("q=")?;
        let sent_ns = field("t=")?;
        Some(Stamp {
            sender,
            seq,
            sent_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio_chat::message::{JOINED, LEFT};

    #[test]
    fn bodies_come_out_of_the_envelope() {
        let json = |body: &str| serde_json::to_string(&Message::text(body)).unwrap();
        for body in [
            JOINED,
            LEFT,
            "",
            "s=1 q=2 t=3 xx",
            "quote \" and \\ and \n 🦀",
        ] {
            assert_eq!(body_of(&json(body)).as_deref(), Some(body), "{body:?}");
        }
        assert!(matches!(body_of(&json(JOINED)), Some(Cow::Borrowed(_))));
        assert_eq!(body_of(r#"{"type":2,"body":"x"}"#), None);
        assert_eq!(body_of("not json"), None);
        assert_eq!(body_of(r#"{"type":1,"body":"unterminated"#), None);
    }

    #[test]
    fn stamps_round_trip_at_any_size() {
        let stamp = Stamp {
            sender: 3,
            seq: 17,
            sent_ns: 123_456_789,
        };
        let mut text = String::new();
        for size in [0, 10, 25, 64, 4096] {
            stamp.encode(size, &mut text);
            assert_eq!(text.len(), size.max(21), "size {size}");
            assert!(text.starts_with("s=3 q=17 t=123456789 "));
            assert_eq!(Stamp::decode(&text), Some(stamp));
        }
        let max = Stamp {
            sender: u32::MAX,
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        max.encode(0, &mut text);
        assert_eq!(Stamp::decode(&text), Some(max));
    }

    #[test]
    fn other_texts_are_not_stamps() {
        for text in [
            JOINED,
            "",
            "s=1",
            "s=1 q=2",
            "s=1 q=2 t=x ",
            "s=-1 q=2 t=3 ",
            "q=2 s=1 t=3 ",
            "s=99999999999 q=1 t=1 ",
        ] {
            assert_eq!(Stamp::decode(text), None, "{text:?}");
        }
        // Without padding the last field still ends the stamp.
        assert!(Stamp::decode("s=1 q=2 t=3").is_some());
    }
}
