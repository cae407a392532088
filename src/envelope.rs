//! The envelope in which a process tells the others, through Redis, what happened in its part of
//! the room. Pure data, no sockets.
//!
//! One small JSON object per event, versioned so that a newer process can be rolled out next to
//! older ones:
//!
//! ```json
//! {"v":1,"node":"5f0c9a2e41d7b386","seq":42,"kind":"message","member":17,"body":"hello"}
//! {"v":1,"node":"5f0c9a2e41d7b386","seq":43,"kind":"join","member":18}
//! ```
//!
//! `node` names the process that saw the event (a random id drawn at start), `seq` counts its
//! envelopes from 1, so a process recognises its own envelopes when Redis hands them back, and in
//! which order it sent them. `member` names the client the event is about, by its connection id
//! in that process (never reused while it lives): with `node`, who said it or came or went, for
//! the protocol's version 2. An envelope without it (an older process) reads as member 0.
//!
//! Besides the clients' events (`join`, `leave`, `message`), processes keep their membership
//! true through Redis: `beat` (alive), `gone` (a verdict on a silent process, named in `body`),
//! `hello` (its link came up), `rejoin` (a member announced again) and `roster` (around all of
//! them: body "begin", then empty at the end); see `presence.rs`.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// The envelope format this build writes and reads.
pub const VERSION: u32 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A client joined (everyone is told "New User Joined...").
    Join,
    /// A client left.
    Leave,
    /// A client said something; `body` is the text.
    Message,
    /// A client already here, announced again by a process that came back (see
    /// `presence.rs`): shown only where its join is not shown already.
    Rejoin,
    /// The process is alive (every second while its link is up); `member` is 0.
    Beat,
    /// The verdict that the process named in `body` is gone (silent past `--node-timeout`).
    Gone,
    /// The process came back after a cut: the others re-announce their members.
    Hello,
    /// The process begins (`body` "begin") or ends re-announcing all of its members.
    Roster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    pub v: u32,
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    pub seq: u64,
    pub kind: Kind,
    #[serde(default)]
    pub member: u64,
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    pub body: Cow<'a, str>,
}

/// Why a payload from the channel was not an envelope we can use.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not JSON of the envelope's shape (another program publishing on the channel?).
    Malformed(String),
    /// A version this build does not know (a newer process in the cluster).
    Version(u32),
    /// A message body longer than any client of this process may send (its length).
    TooLarge(usize),
}

impl<'a> Envelope<'a> {
    /// Appends the envelope's JSON to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("writing JSON to a Vec cannot fail");
    }

    /// Reads an envelope, borrowing its strings from `payload` where it can.
    pub fn parse(payload: &'a [u8]) -> Result<Envelope<'a>, Unusable> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(envelope) if envelope.v == VERSION => Ok(envelope),
            Ok(envelope) => Err(Unusable::Version(envelope.v)),
            // Only now look closer: a newer version may have another shape.
            Err(e) => match serde_json::from_slice::<Version>(payload) {
                Ok(Version { v }) if v != VERSION => Err(Unusable::Version(v)),
                _ => Err(Unusable::Malformed(e.to_string())),
            },
        }
    }
}

/// A random id for this process: 16 hex digits, from the standard library's per-process random
/// hash keys (no random-number crate for one number), mixed with the pid and the time.
pub fn new_node_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since_epoch) = std::time::UNIX_EPOCH.elapsed() {
        hasher.write_u128(since_epoch.as_nanos());
    }
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: Kind, body: &str) -> Envelope<'_> {
        Envelope {
            v: VERSION,
            node: Cow::Borrowed("ab12"),
            seq: 7,
            kind,
            member: 3,
            body: Cow::Borrowed(body),
        }
    }

    #[test]
    fn round_trips() {
        for (kind, body) in [
            (Kind::Message, "hello \"you\" ✓"),
            (Kind::Join, ""),
            (Kind::Leave, ""),
        ] {
            let mut out = Vec::new();
            envelope(kind, body).write_to(&mut out);
            assert_eq!(Envelope::parse(&out), Ok(envelope(kind, body)));
        }
    }

    #[test]
    fn the_wire_form_is_small_and_stable() {
        let mut out = Vec::new();
        envelope(Kind::Join, "").write_to(&mut out);
        assert_eq!(
            out,
            br#"{"v":1,"node":"ab12","seq":7,"kind":"join","member":3}"#
        );
        out.clear();
        envelope(Kind::Message, "hi").write_to(&mut out);
        assert_eq!(
            out,
            br#"{"v":1,"node":"ab12","seq":7,"kind":"message","member":3,"body":"hi"}"#
        );
    }

    #[test]
    fn an_envelope_without_a_member_reads_as_member_0() {
        let older = br#"{"v":1,"node":"ab12","seq":7,"kind":"message","body":"hi"}"#;
        assert_eq!(Envelope::parse(older).map(|e| e.member), Ok(0));
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let newer = br#"{"v":2,"node":"x","seq":1,"kind":"join","extra":[1]}"#;
        assert_eq!(Envelope::parse(newer), Err(Unusable::Version(2)));
        for garbage in [
            &b"hello"[..],
            br#"{"v":1}"#,
            br#"{"v":1,"node":"x","seq":1,"kind":"shout"}"#,
        ] {
            assert!(matches!(
                Envelope::parse(garbage),
                Err(Unusable::Malformed(_))
            ));
        }
    }

    #[test]
    fn node_ids_differ() {
        let a = new_node_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_node_id());
    }
}
