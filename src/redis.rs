//! Speaking to Redis, without I/O: the commands the backplane sends, and the replies and pub/sub
//! messages it reads back. Where Redis is and how to reach it (the `redis://` or `rediss://`
//! address, credentials, TLS settings, the commands that open a connection) is [`url`]; the
//! sockets are the backplane's (`backplane/link.rs`).
//!
//! Both directions are RESP2, written and read here by hand. Commands are arrays of bulk strings.
//! Replies come from a socket anyone on the path to Redis can write to, so [`ReplyDecoder`] reads
//! only the few shapes we ask for, with limits on nesting, width and size that it enforces as
//! soon as a header announces a breach, no recursion, and state kept between calls so that each
//! byte is judged once however the stream is cut into reads. A message's payload is a range of
//! the caller's buffer, not a copy.

pub mod url;

use std::fmt;
use std::ops::Range;

pub use url::{RedisTls, RedisUrl, DEFAULT_PORT};

/// Appends one command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_decimal(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal, without a temporary `String`.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `PUBLISH channel payload`.
pub fn publish(out: &mut Vec<u8>, channel: &[u8], payload: &[u8]) {
    command(out, &[b"PUBLISH", channel, payload]);
}

/// Appends `PING`, the liveness probe: `+PONG` on an ordinary connection, `*2 $4 pong $0` on a
/// subscribed one, both [`Reply::Pong`].
pub fn ping(out: &mut Vec<u8>) {
    command(out, &[b"PING"]);
}

/// One thing Redis said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and other simple strings (but `+PONG`).
    Status,
    /// An answer to PING: `+PONG` on an ordinary connection, `*2 $4 pong $N ...` on one that
    /// has subscribed.
    Pong,
    /// An integer (PUBLISH answers with the number of subscribers reached).
    Integer(i64),
    /// `-ERR ...`, cut to [`MAX_ERROR_TEXT`] bytes (it goes to the log).
    Error(String),
    /// The subscription to `channel` is in place.
    Subscribed { channel: Vec<u8> },
    /// A message published on `channel`; the ranges are of the buffer the reply was decoded
    /// from (its first byte is 0).
    Message {
        channel: Range<usize>,
        payload: Range<usize>,
    },
    /// Well-formed RESP2 of a shape we never ask for (a bulk string alone, a nested array...):
    /// a protocol error. The text (at most [`MAX_ERROR_TEXT`] bytes of the reply) is for the log.
    Unexpected(String),
}

/// The most of an error or unexpected reply kept for the log.
pub const MAX_ERROR_TEXT: usize = 200;

/// The largest `max_depth` a [`Limits`] can have: the decoder keeps one counter per open array
/// in a fixed array of this size (no recursion, no allocation).
pub const MAX_DEPTH: usize = 8;

/// Room in a reply for its framing and the channel name around the largest payload.
pub const REPLY_OVERHEAD: usize = 64 * 1024;

/// What a [`ReplyDecoder`] accepts at most. Each is checked as soon as a header announces a
/// breach (a bulk length, an array's element count), or the bytes reach it: never after
/// buffering more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Arrays within arrays, the outermost counting 1 (capped at [`MAX_DEPTH`]). Every reply
    /// we read has depth 1 at most.
    pub max_depth: usize,
    /// Bytes in one bulk string, simple string or error line.
    pub max_bulk: usize,
    /// Bytes in one whole reply, framing included.
    pub max_reply: usize,
    /// Elements in one array. The replies we read have 2 (a pub/sub PONG) or 3 (a message, a
    /// subscription): a wider array is refused at its header, before a byte of it is buffered,
    /// rather than judged element by element up to `max_reply`.
    pub max_elements: usize,
}

impl Limits {
    /// For a subscription whose messages carry payloads of up to `max_payload` bytes (for the
    /// backplane: its bound on envelopes, 6 × `--max-message-size` plus room).
    pub fn for_payloads(max_payload: usize) -> Limits {
        Limits {
            max_depth: 1,
            max_bulk: max_payload,
            max_reply: max_payload.saturating_add(REPLY_OVERHEAD),
            max_elements: 3,
        }
    }

    /// For a link that only sends commands (PUBLISH, AUTH, SELECT, PING): its replies are
    /// integers, statuses and error lines, a few dozen bytes each.
    pub const COMMAND_REPLIES: Limits = Limits {
        max_depth: 1,
        max_bulk: 4096,
        max_reply: 8192,
        max_elements: 3,
    };

    /// What [`next_reply`] allows: Redis's own defaults (512 MiB bulk strings), any reply
    /// size or width, and [`MAX_DEPTH`].
    pub const LENIENT: Limits = Limits {
        max_depth: MAX_DEPTH,
        max_bulk: 512 << 20,
        max_reply: usize::MAX,
        max_elements: usize::MAX,
    };
}

/// Why the bytes from Redis cannot be read. The link has no way to resynchronise after any of
/// these: it is an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not the RESP2 Redis sends: `why`, at byte `at` of the reply.
    Malformed { at: usize, why: &'static str },
    /// Arrays nested deeper than `limit`.
    TooDeep { limit: usize },
    /// An array of `len` elements against a limit of `limit`.
    TooWide { len: u64, limit: usize },
    /// A bulk string or line of `len` bytes (or more) against a limit of `limit`.
    BulkTooLarge { len: u64, limit: usize },
    /// A reply that would pass `limit` bytes (by its headers, or by its bytes).
    ReplyTooLarge { limit: usize },
    /// The caller passed fewer bytes than the decoder had judged (a caller bug; see
    /// [`ReplyDecoder::next_reply`]).
    BufferShrank { judged: usize, len: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed { at, why } => write!(f, "malformed reply at byte {at}: {why}"),
            DecodeError::TooDeep { limit } => {
                write!(f, "a reply nests arrays deeper than {limit}")
            }
            DecodeError::TooWide { len, limit } => {
                write!(f, "an array of {len} elements (limit {limit})")
            }
            DecodeError::BulkTooLarge { len, limit } => {
                write!(f, "a string of {len} bytes or more (limit {limit})")
            }
            DecodeError::ReplyTooLarge { limit } => write!(f, "a reply over {limit} bytes"),
            DecodeError::BufferShrank { judged, len } => {
                write!(f, "decoder fed {len} bytes after judging {judged}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// One value inside a reply, as far as the decoder keeps it (ranges as start and end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Missing,
    Simple(usize, usize),
    Error(usize, usize),
    Int(i64),
    Bulk(usize, usize),
    Null,
    Array,
}

/// A header line being read: the type byte, where its text starts, and (for `:`, `$`, `*`)
/// the number so far.
#[derive(Debug, Clone, Copy)]
struct Line {
    kind: u8,
    start: usize,
    negative: bool,
    digits: u8,
    value: u64,
    /// The CR is read; the LF must follow.
    cr: bool,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The next byte is a type byte.
    Start,
    Line(Line),
    /// A bulk string's bytes, `start..end`, then CRLF. They are skipped, not examined.
    Bulk {
        start: usize,
        end: usize,
    },
}

/// Decodes replies one at a time from the front of a buffer that grows between calls, keeping
/// what it has judged so that no byte is looked at twice: feeding a reply in any number of
/// pieces costs what feeding it whole does, O(its length), plus O(1) per call. Measured
/// (`cargo bench --bench protocol -- "decode Redis"`): ~5 GiB/s through pub/sub messages, whose
/// payloads are skipped, not examined; ~10 ns a byte through headers and lines alone.
///
/// The state is a few words and a fixed array (no allocation). After an error the decoder
/// gives that error again until [`ReplyDecoder::reset`].
///
/// On a link: one decoder per connection, [`ReplyDecoder::reset`] with the buffer when the
/// connection is replaced, and after each read:
///
/// ```
/// use mio_chat::redis::{Limits, Reply, ReplyDecoder};
///
/// let mut decoder = ReplyDecoder::new(Limits::for_payloads(16 << 20));
/// let mut input = Vec::new();
/// let mut payloads = Vec::new();
/// for read in [&b"*3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$2\r\nh"[..], b"i\r\n:1\r\n"] {
///     input.extend_from_slice(read); // what the socket gave
///     let mut used = 0;
///     while let Some((reply, n)) = decoder.next_reply(&input[used..])? {
///         if let Reply::Message { payload, .. } = reply {
///             payloads.push(input[used + payload.start..used + payload.end].to_vec());
///         }
///         used += n;
///     }
///     // Only whole replies go; the unfinished one stays, and is not examined again.
///     input.drain(..used);
/// }
/// assert_eq!(payloads, [b"hi"]);
/// # Ok::<(), mio_chat::redis::DecodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReplyDecoder {
    limits: Limits,
    /// Bytes of the current reply judged so far: the next call resumes here.
    pos: usize,
    phase: Phase,
    /// Elements still owed by each open array, outermost first; `depth` of them are in use.
    open: [u64; MAX_DEPTH],
    depth: usize,
    /// The outermost array's length, and its first three elements as far as decoded.
    top_len: u64,
    parts: [Part; 3],
    /// The finished reply's outermost value.
    done: Part,
    failed: Option<DecodeError>,
    /// Bytes examined over the decoder's life (a bulk string's contents are skipped, not
    /// examined): the measure that proves decoding linear.
    examined: u64,
}

impl ReplyDecoder {
    pub fn new(limits: Limits) -> ReplyDecoder {
        ReplyDecoder {
            limits: Limits {
                max_depth: limits.max_depth.min(MAX_DEPTH),
                ..limits
            },
            pos: 0,
            phase: Phase::Start,
            open: [0; MAX_DEPTH],
            depth: 0,
            top_len: 0,
            parts: [Part::Missing; 3],
            done: Part::Missing,
            failed: None,
            examined: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes examined so far, over all calls (see the field).
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Bytes of an unfinished reply already judged (0 between replies).
    pub fn judged(&self) -> usize {
        self.pos
    }

    /// Forgets the unfinished reply and any error (for a new connection), keeping the count.
    pub fn reset(&mut self) {
        *self = ReplyDecoder {
            examined: self.examined,
            ..ReplyDecoder::new(self.limits)
        };
    }

    /// Decodes the reply at the front of `buf`: `Ok(None)` if it is not complete yet, else the
    /// reply and the bytes it took (the caller drops them from the front).
    ///
    /// After `Ok(None)` the next call must pass the same bytes from the same first byte, plus
    /// any that arrived: only the new ones are examined. So the caller may append to its
    /// buffer and drop consumed replies from its front, but not drop or change unconsumed
    /// bytes (or must call [`ReplyDecoder::reset`]).
    pub fn next_reply(&mut self, buf: &[u8]) -> Result<Option<(Reply, usize)>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let outcome = if buf.len() < self.pos {
            Err(DecodeError::BufferShrank {
                judged: self.pos,
                len: buf.len(),
            })
        } else {
            self.advance(buf)
        };
        match outcome {
            Ok(false) => Ok(None),
            Ok(true) => {
                let used = self.pos;
                let reply = self.classify(buf, used);
                self.reset();
                Ok(Some((reply, used)))
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Judges bytes from `pos` on; true once the reply is complete.
    fn advance(&mut self, buf: &[u8]) -> Result<bool, DecodeError> {
        loop {
            let complete = match self.phase {
                Phase::Start => {
                    let Some(&kind) = buf.get(self.pos) else {
                        return Ok(false);
                    };
                    self.type_byte(kind)?;
                    false
                }
                Phase::Line(line) => match self.scan_line(buf, line)? {
                    Some(line) => self.end_line(line)?,
                    None => return Ok(false),
                },
                Phase::Bulk { start, end } => {
                    let Some(crlf) = buf.get(end..end + 2) else {
                        return Ok(false);
                    };
                    self.examined += 2;
                    if crlf != b"\r\n" {
                        return Err(malformed(end, "a bulk string runs past its length"));
                    }
                    self.pos = end + 2;
                    self.value_done(Part::Bulk(start, end))
                }
            };
            if complete {
                return Ok(true);
            }
        }
    }

    fn type_byte(&mut self, kind: u8) -> Result<(), DecodeError> {
        if self.pos >= self.limits.max_reply {
            return Err(DecodeError::ReplyTooLarge {
                limit: self.limits.max_reply,
            });
        }
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err(malformed(self.pos, "not a RESP2 type byte"));
        }
        self.examined += 1;
        self.pos += 1;
        self.phase = Phase::Line(Line {
            kind,
            start: self.pos,
            negative: false,
            digits: 0,
            value: 0,
            cr: false,
        });
        Ok(())
    }

    /// Reads a line up to its CRLF, from where the last call stopped: the line, once whole.
    fn scan_line(&mut self, buf: &[u8], mut line: Line) -> Result<Option<Line>, DecodeError> {
        let end = buf.len().min(self.limits.max_reply);
        while self.pos < end {
            let byte = buf[self.pos];
            let at = self.pos;
            self.pos += 1;
            self.examined += 1;
            if line.cr {
                return match byte {
                    b'\n' => Ok(Some(line)),
                    _ => Err(malformed(at, "CR without LF")),
                };
            }
            match (byte, line.kind) {
                (b'\r', _) => line.cr = true,
                (b'\n', _) => return Err(malformed(at, "LF without CR")),
                (_, b'+' | b'-') if self.pos - line.start > self.limits.max_bulk => {
                    return Err(DecodeError::BulkTooLarge {
                        len: (self.pos - line.start) as u64,
                        limit: self.limits.max_bulk,
                    })
                }
                (_, b'+' | b'-') => {}
                _ => self.digit(&mut line, byte, at)?,
            }
        }
        if self.pos >= self.limits.max_reply {
            return Err(DecodeError::ReplyTooLarge {
                limit: self.limits.max_reply,
            });
        }
        self.phase = Phase::Line(line);
        Ok(None)
    }

    /// One more character of a number; lengths past a limit fail here, before their line ends.
    fn digit(&self, line: &mut Line, byte: u8, at: usize) -> Result<(), DecodeError> {
        if byte == b'-' && line.digits == 0 && !line.negative {
            line.negative = true;
            return Ok(());
        }
        if !byte.is_ascii_digit() {
            return Err(malformed(at, "not a digit"));
        }
        // i64::MIN has 19 digits: more (leading zeros) would only make the line longer.
        if line.digits >= 20 {
            return Err(malformed(at, "a number of more than 20 digits"));
        }
        line.digits += 1;
        line.value = line
            .value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
            .filter(|&v| v <= i64::MAX as u64 + 1)
            .ok_or(malformed(at, "a number out of range"))?;
        match line.kind {
            b'$' | b'*' if line.negative && line.value > 1 => {
                Err(malformed(at, "a negative length other than -1"))
            }
            b'$' if !line.negative && line.value > self.limits.max_bulk as u64 => {
                Err(DecodeError::BulkTooLarge {
                    len: line.value,
                    limit: self.limits.max_bulk,
                })
            }
            _ => Ok(()),
        }
    }

    /// A whole line: a value, or the header of a bulk string or array. True if it ended the
    /// reply.
    fn end_line(&mut self, line: Line) -> Result<bool, DecodeError> {
        let text_end = self.pos - 2;
        if matches!(line.kind, b':' | b'$' | b'*') && line.digits == 0 {
            return Err(malformed(text_end, "a line without a number"));
        }
        let part = match line.kind {
            b'+' => Part::Simple(line.start, text_end),
            b'-' => Part::Error(line.start, text_end),
            b':' if line.negative => Part::Int((line.value as i64).wrapping_neg()),
            b':' => Part::Int(
                i64::try_from(line.value)
                    .map_err(|_| malformed(text_end, "a number out of range"))?,
            ),
            _ if line.negative && line.value == 1 => Part::Null,
            _ if line.negative => {
                return Err(malformed(text_end, "a negative length other than -1"))
            }
            b'$' => return self.open_bulk(line.value).map(|()| false),
            _ if line.value == 0 => Part::Array,
            _ => return self.open_array(line.value).map(|()| false),
        };
        Ok(self.value_done(part))
    }

    fn open_bulk(&mut self, len: u64) -> Result<(), DecodeError> {
        // `len` is within `max_bulk` (checked digit by digit), so it fits a usize.
        let start = self.pos;
        let end = start.saturating_add(len as usize);
        if end
            .checked_add(2)
            .is_none_or(|reply_end| reply_end > self.limits.max_reply)
        {
            return Err(DecodeError::ReplyTooLarge {
                limit: self.limits.max_reply,
            });
        }
        self.phase = Phase::Bulk { start, end };
        Ok(())
    }

    fn open_array(&mut self, len: u64) -> Result<(), DecodeError> {
        if self.depth >= self.limits.max_depth {
            return Err(DecodeError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        if len > self.limits.max_elements as u64 {
            return Err(DecodeError::TooWide {
                len,
                limit: self.limits.max_elements,
            });
        }
        // Each element takes 3 bytes at least (`+\r\n`): more than fit is refused now, not
        // after buffering up to the limit.
        if len > (self.limits.max_reply.saturating_sub(self.pos) / 3) as u64 {
            return Err(DecodeError::ReplyTooLarge {
                limit: self.limits.max_reply,
            });
        }
        if self.depth == 0 {
            self.top_len = len;
        }
        self.open[self.depth] = len;
        self.depth += 1;
        self.phase = Phase::Start;
        Ok(())
    }

    /// A value is complete: it counts against the arrays it closes. True if it ended the reply.
    fn value_done(&mut self, mut part: Part) -> bool {
        self.phase = Phase::Start;
        loop {
            if self.depth == 0 {
                self.done = part;
                return true;
            }
            let innermost = self.depth - 1;
            if innermost == 0 {
                let index = self.top_len - self.open[0];
                if let Some(slot) = self.parts.get_mut(index as usize) {
                    *slot = part;
                }
            }
            self.open[innermost] -= 1;
            if self.open[innermost] > 0 {
                return false;
            }
            self.depth -= 1;
            part = Part::Array;
        }
    }

    /// What the finished reply, `buf[..used]`, means to us.
    fn classify(&self, buf: &[u8], used: usize) -> Reply {
        let bytes = |start: usize, end: usize| &buf[start..end];
        match (self.done, self.top_len, self.parts) {
            (Part::Simple(s, e), _, _) if bytes(s, e) == b"PONG" => Reply::Pong,
            (Part::Simple(..), _, _) => Reply::Status,
            (Part::Error(s, e), _, _) => Reply::Error(log_text(bytes(s, e))),
            (Part::Int(n), _, _) => Reply::Integer(n),
            (Part::Array, 3, [Part::Bulk(ks, ke), Part::Bulk(cs, ce), Part::Bulk(ps, pe)])
                if bytes(ks, ke) == b"message" =>
            {
                Reply::Message {
                    channel: cs..ce,
                    payload: ps..pe,
                }
            }
            (Part::Array, 3, [Part::Bulk(ks, ke), Part::Bulk(cs, ce), Part::Int(_)])
                if bytes(ks, ke) == b"subscribe" =>
            {
                Reply::Subscribed {
                    channel: bytes(cs, ce).to_vec(),
                }
            }
            (Part::Array, 2, [Part::Bulk(ks, ke), Part::Bulk(..), _])
                if bytes(ks, ke) == b"pong" =>
            {
                Reply::Pong
            }
            _ => Reply::Unexpected(log_text(&buf[..used])),
        }
    }
}

fn malformed(at: usize, why: &'static str) -> DecodeError {
    DecodeError::Malformed { at, why }
}

/// At most [`MAX_ERROR_TEXT`] bytes of `bytes`, for a log line: printable ASCII as is, any
/// other byte as `\xNN` (so a reply cannot put terminal escapes or fake lines into the log).
/// A table-free loop: this runs once per error reply, on bytes anyone on the path may choose.
fn log_text(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let cut = &bytes[..bytes.len().min(MAX_ERROR_TEXT)];
    let mut text = String::with_capacity(cut.len() + 24);
    for &byte in cut {
        if byte == b' ' || byte.is_ascii_graphic() {
            text.push(char::from(byte));
        } else {
            text.push_str("\\x");
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 15)]));
        }
    }
    if cut.len() < bytes.len() {
        text.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    text
}

/// Decodes the first reply in `buf` with a fresh decoder and [`Limits::LENIENT`]: `Ok(None)` if
/// it is not complete yet; otherwise the reply and the bytes it took.
///
/// Kept for the backplane until its links own a [`ReplyDecoder`] each: being stateless, it
/// examines an unfinished reply again on every call (quadratic in a reply that arrives in many
/// reads), and its limits are Redis's, not ours. It does not recurse.
pub fn next_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, DecodeError> {
    ReplyDecoder::new(Limits::LENIENT).next_reply(buf)
}

// ---- decoding a stream in pieces, for tests and fuzzing ------------------------------------

/// A decoded reply with its place in the whole stream (message ranges made absolute), so
/// decodings of differently cut streams compare equal.
pub type Decoded = (usize, usize, Reply);

/// Feeds `stream` to a new decoder as a link does: each piece ends at the next of `cuts`
/// (and the last at the end); whole replies are taken and dropped from the front. Returns
/// the replies, the error that stopped it if any, and the bytes examined. For tests and the
/// `redis_reply` fuzz target, which compare streams cut differently.
pub fn decode_in_pieces(
    limits: Limits,
    stream: &[u8],
    cuts: impl IntoIterator<Item = usize>,
) -> (Vec<Decoded>, Option<DecodeError>, u64) {
    let mut decoder = ReplyDecoder::new(limits);
    let (mut buf, mut offset, mut out) = (Vec::new(), 0, Vec::new());
    let mut fed = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        let cut = cut.clamp(fed, stream.len());
        buf.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        let mut used = 0;
        loop {
            match decoder.next_reply(&buf[used..]) {
                Ok(Some((reply, n))) => {
                    out.push(absolute(offset + used, n, reply));
                    used += n;
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e), decoder.examined()),
            }
        }
        buf.drain(..used);
        offset += used;
    }
    (out, None, decoder.examined())
}

fn absolute(at: usize, used: usize, reply: Reply) -> Decoded {
    let reply = match reply {
        Reply::Message { channel, payload } => Reply::Message {
            channel: at + channel.start..at + channel.end,
            payload: at + payload.start..at + payload.end,
        },
        other => other,
    };
    (at, used, reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        publish(&mut out, b"chat", b"{\"v\":1}");
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nchat\r\n$7\r\n{\"v\":1}\r\n"
        );
        out.clear();
        ping(&mut out);
        command(&mut out, &[b"", &[b'x'; 12_345]]);
        let expected = [
            &b"*1\r\n$4\r\nPING\r\n*2\r\n$0\r\n\r\n$12345\r\n"[..],
            &[b'x'; 12_345],
            b"\r\n",
        ];
        assert_eq!(out, expected.concat());
    }

    #[test]
    fn replies_and_pushes() {
        let stream: &[u8] = b"+OK\r\n:3\r\n-ERR wrong\r\n\
            *3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$5\r\nhello\r\n\
            $3\r\nodd\r\n*3\r\n$7\r\nmessage\r\n$4\r\nch";
        let mut at = 0;
        let mut replies = Vec::new();
        while let Some((reply, used)) = next_reply(&stream[at..]).expect("valid RESP") {
            if let Reply::Message { payload, .. } = &reply {
                assert_eq!(&stream[at + payload.start..at + payload.end], b"hello");
            }
            replies.push(reply);
            at += used;
        }
        assert_eq!(replies[0], Reply::Status);
        assert_eq!(replies[1], Reply::Integer(3));
        assert_eq!(replies[2], Reply::Error("ERR wrong".into()));
        assert_eq!(
            replies[3],
            Reply::Subscribed {
                channel: b"chat".to_vec()
            }
        );
        assert!(matches!(replies[4], Reply::Message { .. }));
        assert!(matches!(replies[5], Reply::Unexpected(_)));
        assert_eq!(replies.len(), 6, "the last message is incomplete");
        assert!(next_reply(b"hello\r\n").is_err());
    }

    // ---- the reply decoder -------------------------------------------------------------------

    fn whole(limits: Limits, stream: &[u8]) -> (Vec<Decoded>, Option<DecodeError>, u64) {
        decode_in_pieces(limits, stream, [])
    }

    fn replies(stream: &[u8]) -> Vec<Reply> {
        let (out, error, _) = whole(Limits::for_payloads(1 << 20), stream);
        assert_eq!(error, None);
        out.into_iter().map(|(_, _, reply)| reply).collect()
    }

    fn error_of(limits: Limits, stream: &[u8]) -> DecodeError {
        whole(limits, stream).1.expect("an error")
    }

    /// Every kind we read, one after another, and a message cut short at the end.
    const STREAM: &[u8] = b"+OK\r\n+PONG\r\n:3\r\n:-12\r\n-ERR wrong\r\n\
        *3\r\n$9\r\nsubscribe\r\n$4\r\nchat\r\n:1\r\n\
        *3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$5\r\nhello\r\n\
        *2\r\n$4\r\npong\r\n$0\r\n\r\n\
        *3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$0\r\n\r\n\
        *3\r\n$7\r\nmessage\r\n$4\r\nch";

    #[test]
    fn each_reply_kind() {
        let all = replies(STREAM);
        assert_eq!(all.len(), 9, "the last message is incomplete: {all:?}");
        assert_eq!(
            all[..4],
            [
                Reply::Status,
                Reply::Pong,
                Reply::Integer(3),
                Reply::Integer(-12)
            ]
        );
        assert_eq!(all[4], Reply::Error("ERR wrong".into()));
        assert_eq!(
            all[5],
            Reply::Subscribed {
                channel: b"chat".to_vec()
            }
        );
        let (_, _, message) = &whole(Limits::for_payloads(64), STREAM).0[6];
        let Reply::Message { channel, payload } = message else {
            panic!("{message:?}")
        };
        assert_eq!(
            (&STREAM[channel.clone()], &STREAM[payload.clone()]),
            (&b"chat"[..], &b"hello"[..])
        );
        assert_eq!(all[7], Reply::Pong);
        assert!(matches!(&all[8], Reply::Message { payload, .. } if payload.is_empty()));
        assert_eq!(
            replies(b":9223372036854775807\r\n:-9223372036854775808\r\n"),
            [Reply::Integer(i64::MAX), Reply::Integer(i64::MIN)]
        );
    }

    #[test]
    fn shapes_we_never_ask_for_are_unexpected() {
        let lenient = Limits {
            max_depth: 3,
            max_elements: 4,
            ..Limits::for_payloads(64)
        };
        for odd in [
            &b"$3\r\nodd\r\n"[..],
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*1\r\n:1\r\n",
            b"*3\r\n$7\r\nmessage\r\n$4\r\nchat\r\n:1\r\n",
            b"*3\r\n$7\r\nMESSAGE\r\n$4\r\nchat\r\n$1\r\nx\r\n",
            b"*4\r\n$7\r\nmessage\r\n$4\r\nchat\r\n$1\r\nx\r\n$1\r\ny\r\n",
            b"*3\r\n$7\r\nmessage\r\n*1\r\n$4\r\nchat\r\n$1\r\nx\r\n",
            b"*2\r\n*2\r\n*0\r\n:1\r\n+OK\r\n",
        ] {
            let (out, error, _) = whole(lenient, odd);
            assert_eq!(error, None, "{odd:?}");
            assert!(
                matches!(&out[..], [(0, n, Reply::Unexpected(_))] if *n == odd.len()),
                "{out:?}"
            );
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::for_payloads(64)
        };
        for bad in [
            &b"hello\r\n"[..],
            b"%1\r\n",
            b"+OK\n",
            b"+O\rK\r\n",
            b":\r\n",
            b":1x\r\n",
            b":--1\r\n",
            b":9223372036854775808\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$-0\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"*1\r\n!\r\n",
            b":000000000000000000001\r\n",
            &[b":".to_vec(), vec![b'0'; 300], b"1\r\n".to_vec()].concat(),
            &[b"$".to_vec(), vec![b'0'; 300], b"1\r\n".to_vec()].concat(),
        ] {
            assert!(
                matches!(error_of(limits, bad), DecodeError::Malformed { .. }),
                "{bad:?}"
            );
        }
        let mut decoder = ReplyDecoder::new(limits);
        assert!(decoder.next_reply(b"?").is_err());
        assert!(decoder.next_reply(b"+OK\r\n").is_err(), "errors stick");
        decoder.reset();
        assert_eq!(decoder.next_reply(b"+OK\r\n"), Ok(Some((Reply::Status, 5))));
        assert_eq!(decoder.next_reply(b"+O"), Ok(None));
        assert_eq!(
            decoder.next_reply(b"+"),
            Err(DecodeError::BufferShrank { judged: 2, len: 1 })
        );
    }

    #[test]
    fn split_at_every_byte_decodes_as_whole() {
        let limits = Limits::for_payloads(64);
        let reference = whole(limits, STREAM);
        assert_eq!(
            decode_in_pieces(limits, STREAM, 1..STREAM.len()),
            reference,
            "byte by byte"
        );
        for cut in 0..=STREAM.len() {
            assert_eq!(
                decode_in_pieces(limits, STREAM, [cut]),
                reference,
                "cut at {cut}"
            );
        }
        // Only line bytes and a bulk string's CRLF are examined, once each.
        let payloads: usize = [9, 4, 7, 4, 5, 4, 0, 7, 4, 0, 7].iter().sum();
        assert_eq!(reference.2, (STREAM.len() - payloads - 2) as u64);
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit() {
        let deep = b"*1\r\n".repeat(32_768);
        let mut decoder = ReplyDecoder::new(Limits::for_payloads(1 << 20));
        assert_eq!(
            decoder.next_reply(&deep),
            Err(DecodeError::TooDeep { limit: 1 })
        );
        assert_eq!(decoder.examined(), 8, "two headers read, no more");
        let mut decoder = ReplyDecoder::new(Limits {
            max_depth: 100,
            ..Limits::LENIENT
        });
        assert_eq!(
            decoder.next_reply(&deep),
            Err(DecodeError::TooDeep { limit: MAX_DEPTH })
        );
        assert_eq!(decoder.examined(), 4 * (MAX_DEPTH as u64 + 1));
        // The lenient stateless form, too.
        assert!(next_reply(&deep).is_err());
        let mut nested = b"*1\r\n".repeat(MAX_DEPTH);
        nested.extend_from_slice(b":7\r\n");
        assert!(
            matches!(next_reply(&nested), Ok(Some((Reply::Unexpected(_), n))) if n == nested.len())
        );
    }

    #[test]
    fn an_unfinished_wide_array_costs_linear_work() {
        const CHUNK: usize = 64 * 1024;
        const ELEMENTS: usize = 3 << 20; // `:1\r\n` each: 12 MiB
        let mut stream = b"*4000000\r\n".to_vec();
        stream.extend(b":1\r\n".repeat(ELEMENTS));
        // As wide as the reply limit lets it be: judged element by element.
        let mut decoder = ReplyDecoder::new(Limits {
            max_elements: usize::MAX,
            ..Limits::for_payloads(16 << 20)
        });
        let mut calls = 0;
        for end in (CHUNK..stream.len() + CHUNK).step_by(CHUNK) {
            let before = decoder.examined();
            let end = end.min(stream.len());
            assert_eq!(decoder.next_reply(&stream[..end]), Ok(None));
            assert!(
                decoder.examined() - before <= CHUNK as u64,
                "only the new bytes"
            );
            calls += 1;
        }
        assert_eq!(calls, stream.len().div_ceil(CHUNK));
        assert_eq!(decoder.examined(), stream.len() as u64, "each byte once");
        assert_eq!(decoder.judged(), stream.len());
        // The same array past a smaller size limit, or the backplane's width limit, is refused
        // at its header.
        let mut real = ReplyDecoder::new(Limits::for_payloads(16 << 20));
        assert!(matches!(
            real.next_reply(&stream),
            Err(DecodeError::TooWide {
                len: 4_000_000,
                limit: 3
            })
        ));
        assert_eq!(real.examined(), 10);
        let mut small = ReplyDecoder::new(Limits {
            max_elements: usize::MAX,
            ..Limits::for_payloads(6 * 65_536)
        });
        assert!(matches!(
            small.next_reply(&stream[..CHUNK]),
            Err(DecodeError::ReplyTooLarge { .. })
        ));
        assert_eq!(small.examined(), 10);
    }

    #[test]
    fn an_endless_reply_is_refused_within_the_limit() {
        let limits = Limits::for_payloads(6 * 65_536);
        // Announced: refused at the header, whatever follows.
        let mut decoder = ReplyDecoder::new(limits);
        let header = b"$209715200\r\n";
        assert!(matches!(
            decoder.next_reply(header),
            Err(DecodeError::BulkTooLarge { limit, .. }) if limit == limits.max_bulk
        ));
        assert!(decoder.examined() <= header.len() as u64);
        // Not announced (a line that never ends, an array of many bulk strings): refused once
        // the bytes pass the limit, having examined no more than that.
        let endless_line = [b"+".to_vec(), vec![b'a'; 1 << 20]].concat();
        assert!(matches!(
            error_of(limits, &endless_line),
            DecodeError::BulkTooLarge { len, .. } if len as usize == limits.max_bulk + 1
        ));
        let limits = Limits {
            max_elements: 1000,
            ..limits
        };
        let mut many = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            many.extend_from_slice(b"$65536\r\n");
            many.extend(vec![b'x'; 65_536]);
            many.extend_from_slice(b"\r\n");
        }
        let (out, error, examined) = decode_in_pieces(limits, &many, (0..many.len()).step_by(4096));
        assert!(out.is_empty());
        assert_eq!(
            error,
            Some(DecodeError::ReplyTooLarge {
                limit: limits.max_reply
            })
        );
        assert!(
            examined < 1000,
            "bulk bytes are skipped, not examined: {examined}"
        );
        let commands = Limits::COMMAND_REPLIES;
        assert!(matches!(
            error_of(commands, b"$5000\r\n"),
            DecodeError::BulkTooLarge { .. }
        ));
    }

    #[test]
    fn error_text_is_bounded() {
        let long = [b"-ERR ".to_vec(), vec![b'e'; 4000], b"\r\n".to_vec()].concat();
        let [Reply::Error(text)] = &replies(&long)[..] else {
            panic!()
        };
        assert!(text.len() < MAX_ERROR_TEXT + 30, "{}", text.len());
        assert!(text.ends_with("(4004 bytes)"), "{text}");
        let [Reply::Error(text)] = &replies(b"-ERR \x1b[31m\xe9t\xc3\xa9\r\n")[..] else {
            panic!()
        };
        assert_eq!(text, r"ERR \x1b[31m\xe9t\xc3\xa9");
    }

    /// One reply of a kind we read, or of a shape we do not, as bytes.
    fn arb_reply() -> impl Strategy<Value = Vec<u8>> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            Just(b"+OK\r\n".to_vec()),
            Just(b"+PONG\r\n".to_vec()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            "[a-zA-Z ]{0,20}".prop_map(|e| format!("-{e}\r\n").into_bytes()),
            (bytes(), bytes()).prop_map(|(c, p)| {
                let mut out = Vec::new();
                command(&mut out, &[b"message", &c, &p]);
                out
            }),
            bytes().prop_map(|c| {
                let mut out = Vec::new();
                command(&mut out, &[b"subscribe", &c]);
                out[1] = b'3';
                out.extend_from_slice(b":1\r\n");
                out
            }),
            Just(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()),
            Just(b"*2\r\n*1\r\n:1\r\n$-1\r\n".to_vec()),
        ]
    }

    proptest! {
        #[test]
        fn random_splits_decode_as_whole(
            replies in proptest::collection::vec(arb_reply(), 0..12),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
            mut cuts in proptest::collection::vec(any::<usize>(), 0..20),
            depth in 0..4usize,
            max_bulk in 0..48usize,
        ) {
            let mut stream = replies.concat();
            stream.extend_from_slice(&tail);
            for limits in [
                Limits { max_depth: 2, ..Limits::for_payloads(1 << 20) },
                Limits { max_depth: depth, max_bulk, max_reply: max_bulk * 3, max_elements: depth + 1 },
            ] {
                let reference = whole(limits, &stream);
                prop_assert!(reference.2 <= stream.len() as u64);
                for cut in cuts.iter_mut() {
                    *cut %= stream.len() + 1;
                }
                cuts.sort_unstable();
                prop_assert_eq!(decode_in_pieces(limits, &stream, cuts.iter().copied()), reference);
            }
        }
    }
}
