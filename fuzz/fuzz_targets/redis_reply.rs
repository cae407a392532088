//! Fuzz target: what the backplane reads from Redis (`redis::next_reply`, then
//! `Envelope::parse` on every message payload), on arbitrary bytes: anyone who can publish on the
//! channel, or a broken Redis, controls them.
//!
//! The contract the backplane relies on:
//! - no panic, whatever the bytes;
//! - a reply is reported only when complete: it takes at least one byte and at most the buffer,
//!   and a prefix of it (half, and all but the last byte) is `Ok(None)` or an error, never a
//!   reply;
//! - a message's channel and payload ranges lie within the reply's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mio_chat::envelope::Envelope;
use mio_chat::redis::{next_reply, Reply};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((reply, used))) = next_reply(&data[at..]) {
        assert!(used > 0 && at + used <= data.len());
        if let Reply::Message { channel, payload } = &reply {
            assert!(channel.end <= used && payload.end <= used);
            assert!(channel.start <= channel.end && payload.start <= payload.end);
            let _ = Envelope::parse(&data[at + payload.start..at + payload.end]);
        }
        // RESP is prefix-free: a part of a reply never passes for a whole one.
        for cut in [used / 2, used - 1] {
            assert!(!matches!(next_reply(&data[at..at + cut]), Ok(Some(_))));
        }
        at += used;
    }
    // Envelopes straight from arbitrary bytes, too.
    let _ = Envelope::parse(data);
});
