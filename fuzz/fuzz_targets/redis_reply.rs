//! Fuzz target: what the backplane reads from Redis (`redis::ReplyDecoder`, then
//! `Envelope::parse` on every message payload), on arbitrary bytes: anyone who can publish on the
//! channel, or anyone on the path to Redis, controls them.
//!
//! Input layout (9 header bytes, then the stream):
//! - byte 0, mode: bit 0 expands the stream (below); bit 1 uses the backplane's real limits,
//!   `Limits::for_payloads(6 × 65,536)`, instead of the ones from bytes 1..6;
//! - byte 1: `max_depth` (mod 10, so past `MAX_DEPTH` too) and `max_elements` (byte / 10: 0 to
//!   19, or unlimited from 20); bytes 2-3: `max_bulk` (u16); bytes 4-5: `max_reply` / 16 (u16,
//!   so up to 1 MiB);
//! - byte 6: how the stream is cut into reads (seeds a xorshift generator);
//! - bytes 7-8: a repeat count (u16). With mode bit 0 the stream is its first line, then its
//!   second line that many times, then the rest (capped at 512 KiB): `*1\r\n` `*1\r\n` makes deep
//!   nesting, `*60000\r\n` `:1\r\n` an unfinished wide array, `$9999999\r\n` `xxxx...` an
//!   endless bulk string.
//!
//! The contract the backplane relies on, beyond "no panic":
//! - the stream cut into reads anywhere decodes exactly as in one piece: same replies at the
//!   same places, same error, same number of bytes examined;
//! - each byte is examined at most once (linear work, however the reads fall);
//! - a reply takes at least one byte and at most what was fed; a message's ranges lie within it;
//! - no reply passes its limits, and half a reply, or all but its last byte, is never a reply.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mio_chat::envelope::Envelope;
use mio_chat::redis::{
    decode_in_pieces, next_reply, DecodeError, Decoded, Limits, Reply, ReplyDecoder,
};

const HEADER: usize = 9;
/// Enough for 32,768 nested `*1\r\n` (128 KiB) and for arrays past the real limits; more
/// would only slow the fuzzer (the 12 MiB case is a unit test in `src/redis.rs`).
const MAX_EXPANDED: usize = 512 << 10;

/// A reply at its place in the stream, message ranges made absolute.
type Outcome = (Vec<Decoded>, Option<DecodeError>, u64);

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (head, raw) = data.split_at(HEADER);
    let limits = if head[0] & 2 != 0 {
        Limits::for_payloads(6 * 65_536)
    } else {
        Limits {
            max_depth: usize::from(head[1] % 10),
            max_bulk: usize::from(u16::from_le_bytes([head[2], head[3]])),
            max_reply: usize::from(u16::from_le_bytes([head[4], head[5]])) * 16,
            max_elements: match head[1] / 10 {
                width @ 0..=19 => usize::from(width),
                _ => usize::MAX,
            },
        }
    };
    let repeat = usize::from(u16::from_le_bytes([head[7], head[8]]));
    let stream = if head[0] & 1 != 0 {
        expand(raw, repeat)
    } else {
        raw.to_vec()
    };

    let whole = feed(limits, &stream, &mut std::iter::empty());
    let mut cuts = Cuts::new(head[6], stream.len());
    let split = feed(limits, &stream, &mut cuts);
    assert_eq!(
        whole, split,
        "cut into reads, the stream decodes differently"
    );
    assert!(whole.2 <= stream.len() as u64, "a byte examined twice");

    for (at, used, reply) in &whole.0 {
        check_reply(limits, &stream, *at, *used, reply);
    }
    // The stateless, lenient form on the raw bytes (it rescans, so not on the expanded ones).
    if let Ok(Some((_, used))) = next_reply(raw) {
        assert!(used > 0 && used <= raw.len());
    }
    let _ = Envelope::parse(raw);
});

/// The contract for one reply, `stream[at..at + used]`.
fn check_reply(limits: Limits, stream: &[u8], at: usize, used: usize, reply: &Reply) {
    assert!(used > 0 && at + used <= stream.len());
    assert!(used <= limits.max_reply);
    if let Reply::Message { .. } | Reply::Subscribed { .. } = reply {
        assert!(limits.max_elements >= 3 && limits.max_depth >= 1);
    }
    if let Reply::Message { channel, payload } = reply {
        assert!(at <= channel.start && channel.start <= channel.end && channel.end <= at + used);
        assert!(at <= payload.start && payload.start <= payload.end && payload.end <= at + used);
        assert!(payload.len() <= limits.max_bulk);
        let _ = Envelope::parse(&stream[payload.clone()]);
    }
    // RESP is prefix-free: a part of a reply never passes for a whole one.
    for cut in [used / 2, used - 1] {
        let mut fresh = ReplyDecoder::new(limits);
        assert!(!matches!(
            fresh.next_reply(&stream[at..at + cut]),
            Ok(Some(_))
        ));
    }
}

/// The first line, the second `repeat` times, then the rest.
fn expand(raw: &[u8], repeat: usize) -> Vec<u8> {
    let line_end = |from: usize| {
        raw[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| from + i + 1)
    };
    let first = line_end(0);
    let second = line_end(first);
    let line = &raw[first..second];
    let times = if line.is_empty() {
        0
    } else {
        repeat.min(MAX_EXPANDED / line.len())
    };
    let mut out = Vec::with_capacity(raw.len() + line.len() * times);
    out.extend_from_slice(&raw[..first]);
    for _ in 0..times {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(&raw[first..]);
    out
}

/// Read boundaries: pieces of 1 to 2^k bytes, k and the sizes drawn from `seed`.
struct Cuts {
    state: u32,
    at: usize,
    len: usize,
    max_piece: u32,
}

impl Cuts {
    fn new(seed: u8, len: usize) -> Cuts {
        Cuts {
            state: u32::from(seed).wrapping_mul(0x9E37_79B9) | 1,
            at: 0,
            len,
            // Byte by byte on small streams; on expanded ones at most ~8,192 pieces (the
            // decoder's cost per piece is O(1); the harness's is not small).
            max_piece: (1u32 << (seed % 18)).max((len / 4096) as u32),
        }
    }
}

impl Iterator for Cuts {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.at >= self.len {
            return None;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        self.at += 1 + (self.state % self.max_piece) as usize;
        Some(self.at.min(self.len))
    }
}

/// Feeds `stream` as a link does (see [`decode_in_pieces`]).
fn feed(limits: Limits, stream: &[u8], cuts: &mut dyn Iterator<Item = usize>) -> Outcome {
    decode_in_pieces(limits, stream, cuts)
}
