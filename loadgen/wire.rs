//! WebSocket frames as a *client* sees them (RFC 6455 §5), with no socket in sight.
//!
//! The server's own parser ([`mio_chat::frame::parse_header`]) insists on masked frames, as a
//! server must; here it is the other way round: frames from the server are never masked, and
//! frames we send always are. [`Inbox`] turns bytes, split anywhere by the network, into whole
//! messages; [`push_masked`] writes one client frame.
//!
//! Frames the server repeats byte for byte (the room's notices: a join flood of N clients is
//! N(N+1)/2 of them) can be listed in a [`Fixed`] set: [`Inbox`] then recognises them by
//! comparing bytes, a run of identical ones at a time, instead of decoding each one.

use std::fmt;

use mio_chat::frame::{OpCode, MAX_CONTROL_PAYLOAD};

/// A decoded server frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: OpCode,
    /// Bytes taken by the header itself (2, 4 or 10: no mask).
    pub header_len: usize,
    pub payload_len: usize,
}

/// What the server did wrong. The client that saw it gives up; the generator goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Masked,
    ReservedBits,
    UnknownOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes (§5.5).
    BadControl,
    TooBig(u64),
    /// A continuation frame with no message to continue, or a new message inside one (§5.4).
    BadFragment,
    InvalidUtf8,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Masked => write!(f, "masked server frame"),
            WireError::ReservedBits => write!(f, "reserved bits set"),
            WireError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            WireError::BadControl => write!(f, "malformed control frame"),
            WireError::TooBig(len) => write!(f, "{len}-byte message, over the limit"),
            WireError::BadFragment => write!(f, "bad fragmentation"),
            WireError::InvalidUtf8 => write!(f, "text message is not UTF-8"),
        }
    }
}

/// Decodes the header of a server frame at the start of `buf`; `Ok(None)` means "need more bytes".
///
/// Limits are checked on the header alone, so a frame announcing 2^63 bytes is refused before
/// anything is buffered for it.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, WireError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WireError::ReservedBits); // no extension was negotiated
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(WireError::UnknownOpcode(b0 & 0x0F))?;
    if b1 & 0x80 != 0 {
        return Err(WireError::Masked); // §5.1: a server must not mask
    }
    let fin = b0 & 0x80 != 0;
    let (len, header_len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[hi, lo]) => (u64::from(u16::from_be_bytes([hi, lo])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (u64::from_be_bytes(bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(WireError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(WireError::TooBig(len));
    }
    Ok(Some(Head {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    }))
}

/// A whole message or control frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    Text(&'a str),
    /// The chat never sends binary; only its size is kept, to report it.
    Binary(usize),
    Ping(&'a [u8]),
    Pong,
    /// The close code, if the frame carried one.
    Close(Option<u16>),
    /// `count` whole frames in a row, each byte for byte the [`Fixed`] frame number `index`:
    /// what `count` times `Text` of that frame's payload would have said.
    Repeated {
        index: usize,
        count: usize,
    },
}

/// How many copies of a fixed frame one comparison covers: long runs are compared a block of
/// frames at a time (one `memcmp` over a few KiB rather than one per 40-byte frame).
const BLOCK: usize = 64;

/// Frames recognised by their exact bytes; see [`Incoming::Repeated`].
#[derive(Debug, Default)]
pub struct Fixed {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    frame: Vec<u8>,
    /// `frame` [`BLOCK`] times over.
    block: Vec<u8>,
}

impl Fixed {
    /// Recognises `frames`, each one whole, final, unfragmented text frame of valid UTF-8 (the
    /// slow path would report exactly what the fast one does).
    ///
    /// # Panics
    /// If a frame is not such a frame: the list is the program's own constants.
    pub fn new(frames: Vec<Vec<u8>>) -> Self {
        let patterns = frames
            .into_iter()
            .map(|frame| {
                let head = parse_head(&frame, frame.len()).ok().flatten();
                assert!(
                    head.is_some_and(|h| h.fin
                        && h.opcode == OpCode::Text
                        && h.header_len + h.payload_len == frame.len()
                        && std::str::from_utf8(&frame[h.header_len..]).is_ok()),
                    "not one whole text frame: {frame:?}"
                );
                Pattern {
                    block: frame.repeat(BLOCK),
                    frame,
                }
            })
            .collect();
        Fixed { patterns }
    }

    /// The payload of fixed frame `index`.
    #[cfg(test)]
    pub fn payload(&self, index: usize) -> &[u8] {
        let frame = &self.patterns[index].frame;
        let head = parse_head(frame, frame.len()).ok().flatten();
        &frame[head.map_or(0, |h| h.header_len)..]
    }

    /// The fixed frame that opens `buf`, if one does: its index, how many copies of it follow
    /// in a row (at least 1), and the bytes they take.
    fn run_at(&self, buf: &[u8]) -> Option<(usize, usize, usize)> {
        self.patterns
            .iter()
            .enumerate()
            // The header's two bytes first, inline: most frames are chat messages of another
            // length than the notices', and a call to `memcmp` per frame and pattern showed in
            // profiles of the broadcast.
            .find(|(_, p)| buf.get(..2) == p.frame.get(..2) && buf.starts_with(&p.frame))
            .map(|(index, p)| {
                let count = p.run(buf);
                (index, count, count * p.frame.len())
            })
    }
}

impl Pattern {
    /// How many copies of the frame open `buf`.
    fn run(&self, buf: &[u8]) -> usize {
        let mut count = 0;
        let mut rest = buf;
        while rest.len() >= self.block.len() && rest[..self.block.len()] == self.block[..] {
            rest = &rest[self.block.len()..];
            count += BLOCK;
        }
        count
            + rest
                .chunks_exact(self.frame.len())
                .take_while(|frame| *frame == &self.frame[..])
                .count()
    }
}

/// Reassembles the server's byte stream into [`Incoming`] messages, however it is split.
#[derive(Debug)]
pub struct Inbox {
    /// Bytes of a frame that has not fully arrived yet. Usually empty: then input is parsed
    /// straight from the caller's buffer and nothing is copied.
    pending: Vec<u8>,
    /// A message whose first fragments have arrived.
    partial: Option<(OpCode, Vec<u8>)>,
    max_payload: usize,
}

impl Inbox {
    pub fn new(max_payload: usize) -> Self {
        Inbox {
            pending: Vec::new(),
            partial: None,
            max_payload,
        }
    }

    /// Bytes held back waiting for the rest of their frame.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Feeds freshly read bytes; calls `on` for every message they complete, in order, with
    /// runs of `fixed` frames as [`Incoming::Repeated`].
    pub fn feed(
        &mut self,
        data: &[u8],
        fixed: &Fixed,
        on: &mut dyn FnMut(Incoming),
    ) -> Result<(), WireError> {
        if self.pending.is_empty() {
            let used = drain(data, &mut self.partial, self.max_payload, fixed, on)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let used = drain(
                &self.pending,
                &mut self.partial,
                self.max_payload,
                fixed,
                on,
            )?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// Handles every whole frame at the start of `buf`; returns how many bytes they took.
fn drain(
    buf: &[u8],
    partial: &mut Option<(OpCode, Vec<u8>)>,
    max_payload: usize,
    fixed: &Fixed,
    on: &mut dyn FnMut(Incoming),
) -> Result<usize, WireError> {
    let mut at = 0;
    loop {
        // Inside a fragmented message a text frame is an error, which the full path reports.
        if partial.is_none() {
            if let Some((index, count, len)) = fixed.run_at(&buf[at..]) {
                at += len;
                on(Incoming::Repeated { index, count });
                continue;
            }
        }
        let Some(head) = parse_head(&buf[at..], max_payload)? else {
            break;
        };
        let end = at + head.header_len + head.payload_len;
        let Some(payload) = buf.get(at + head.header_len..end) else {
            break; // the payload is still on its way
        };
        at = end;
        match head.opcode {
            OpCode::Ping => on(Incoming::Ping(payload)),
            OpCode::Pong => on(Incoming::Pong),
            OpCode::Close => on(Incoming::Close(match payload {
                [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
                _ => None,
            })),
            OpCode::Continuation => {
                let Some((_, data)) = partial.as_mut() else {
                    return Err(WireError::BadFragment);
                };
                if data.len() + payload.len() > max_payload {
                    return Err(WireError::TooBig((data.len() + payload.len()) as u64));
                }
                data.extend_from_slice(payload);
                if head.fin {
                    if let Some((opcode, data)) = partial.take() {
                        deliver(opcode, &data, on)?;
                    }
                }
            }
            OpCode::Text | OpCode::Binary if partial.is_some() => {
                return Err(WireError::BadFragment);
            }
            OpCode::Text | OpCode::Binary if !head.fin => {
                *partial = Some((head.opcode, payload.to_vec()));
            }
            OpCode::Text | OpCode::Binary => deliver(head.opcode, payload, on)?,
        }
    }
    Ok(at)
}

fn deliver(opcode: OpCode, data: &[u8], on: &mut dyn FnMut(Incoming)) -> Result<(), WireError> {
    if opcode == OpCode::Text {
        let text = std::str::from_utf8(data).map_err(|_| WireError::InvalidUtf8)?;
        on(Incoming::Text(text));
    } else {
        on(Incoming::Binary(data.len()));
    }
    Ok(())
}

/// Masking keys. RFC 6455 wants them unpredictable to stop cache poisoning through proxies
/// that do not speak WebSocket; a load generator on loopback only needs them to vary, so a
/// xorshift generator, seeded from the clock, does.
#[derive(Debug)]
pub struct Masks(u64);

impl Masks {
    pub fn new(seed: u64) -> Self {
        Masks(seed | 1) // xorshift must not start from 0
    }

    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_ne_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio_chat::frame;
    use mio_chat::message::push_chat_frame;

    /// Everything `Inbox` reports, owned, for comparing runs.
    fn collect(chunks: &[&[u8]]) -> Result<Vec<String>, WireError> {
        collect_with(&Fixed::default(), chunks)
    }

    /// The same, with a run of `count` fixed frames written out as the `count` texts it
    /// stands for, so that runs with and without fixed frames compare.
    fn collect_with(fixed: &Fixed, chunks: &[&[u8]]) -> Result<Vec<String>, WireError> {
        let mut inbox = Inbox::new(1 << 20);
        let mut seen = Vec::new();
        for chunk in chunks {
            inbox.feed(chunk, fixed, &mut |m| match m {
                Incoming::Repeated { index, count } => {
                    let text = std::str::from_utf8(fixed.payload(index)).unwrap();
                    assert!(count >= 1);
                    for _ in 0..count {
                        seen.push(format!("{:?}", Incoming::Text(text)));
                    }
                }
                other => seen.push(format!("{other:?}")),
            })?;
        }
        Ok(seen)
    }

    fn chat_frame(body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_chat_frame(&mut out, body);
        out
    }

    /// The two notices, as the server sends them.
    fn notices() -> Fixed {
        Fixed::new(vec![
            chat_frame("New User Joined..."),
            chat_frame("User Disconnected..."),
        ])
    }

    /// Runs of notices longer and shorter than a block, chat between them, frames that differ
    /// from a notice in one byte, and a notice inside a fragmented message (an error).
    fn notice_stream() -> Vec<u8> {
        let joined = chat_frame("New User Joined...");
        let left = chat_frame("User Disconnected...");
        let mut out = joined.repeat(BLOCK * 2 + 5);
        out.extend(chat_frame("s=1 q=2 t=3 xx"));
        out.extend(left.repeat(3));
        out.extend(joined.repeat(BLOCK));
        out.extend(chat_frame("New User Joined..,")); // same length, last byte differs
        out.extend(&joined);
        let mut unfinished = joined.clone();
        unfinished[0] = 0x01; // the same text, but not final: a fragment
        out.extend(&unfinished);
        out.extend([0x80, 0]); // its final, empty continuation
        out.extend(left.repeat(BLOCK - 1));
        out
    }
    /// A stream like the server's: chat frames of every length form, a ping, a fragmented
    /// message, a close.
    fn sample_stream() -> Vec<u8> {
        let mut out = Vec::new();
        push_chat_frame(&mut out, "New User Joined...");
        push_chat_frame(&mut out, &"a".repeat(300));
        push_chat_frame(&mut out, &"ü".repeat(40_000));
        frame::push_frame(&mut out, OpCode::Ping, b"hi");
        out.extend_from_slice(&[0x01, 3, b'o', b'n', b'e']); // text, not final
        out.extend_from_slice(&[0x89, 0]); // a ping between the fragments
        out.extend_from_slice(&[0x80, 3, b't', b'w', b'o']); // the final continuation
        frame::push_close(&mut out, 1001, "bye");
        out
    }

    #[test]
    fn a_stream_in_one_piece() {
        let seen = collect(&[&sample_stream()]).unwrap();
        assert_eq!(seen.len(), 7);
        assert_eq!(
            seen[0],
            format!(
                "{:?}",
                Incoming::Text(r#"{"type":1,"body":"New User Joined..."}"#)
            )
        );
        assert_eq!(seen[4], format!("{:?}", Incoming::Ping(b"")));
        assert_eq!(seen[5], format!("{:?}", Incoming::Text("onetwo")));
        assert_eq!(seen[6], format!("{:?}", Incoming::Close(Some(1001))));
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let stream = sample_stream();
        let whole = collect(&[&stream]).unwrap();
        // Every cut point around the small frames and the ends (strided through the long
        // payload, where one cut is like the next), then byte by byte, then uneven chunks.
        let cuts =
            (0..=stream.len()).filter(|&c| c < 1000 || c > stream.len() - 200 || c % 499 == 0);
        for cut in cuts {
            let (a, b) = stream.split_at(cut);
            assert_eq!(collect(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(collect(&bytes).unwrap(), whole);
        for size in [2, 3, 7, 125, 4096] {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            assert_eq!(collect(&chunks).unwrap(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn fixed_frames_read_as_their_texts_however_split() {
        let fixed = notices();
        for stream in [notice_stream(), sample_stream()] {
            let plain = collect(&[&stream]).unwrap();
            assert_eq!(collect_with(&fixed, &[&stream]).unwrap(), plain);
            // Every cut through the notices; through the sample's long payload, one in 499.
            let dense = if stream.len() < 20_000 {
                stream.len()
            } else {
                1000
            };
            let cuts = (0..=stream.len())
                .filter(|&c| c <= dense || c > stream.len() - 200 || c % 499 == 0);
            for cut in cuts {
                let (a, b) = stream.split_at(cut);
                assert_eq!(
                    collect_with(&fixed, &[a, b]).unwrap(),
                    plain,
                    "cut at {cut}"
                );
            }
            for size in [1, 2, 39, 40, 41, 1000, 4096] {
                let chunks: Vec<&[u8]> = stream.chunks(size).collect();
                assert_eq!(collect_with(&fixed, &chunks).unwrap(), plain, "{size}");
            }
        }
    }

    #[test]
    fn runs_of_fixed_frames_come_whole() {
        let fixed = notices();
        let mut inbox = Inbox::new(1 << 20);
        let mut seen = Vec::new();
        inbox
            .feed(&notice_stream(), &fixed, &mut |m| {
                seen.push(match m {
                    Incoming::Repeated { index, count } => format!("{index}x{count}"),
                    Incoming::Text(t) => t.to_string(),
                    other => format!("{other:?}"),
                })
            })
            .unwrap();
        let joined = r#"{"type":1,"body":"New User Joined..."}"#;
        let expected = [
            "0x133",
            r#"{"type":1,"body":"s=1 q=2 t=3 xx"}"#,
            "1x3",
            "0x64",
            r#"{"type":1,"body":"New User Joined..,"}"#,
            "0x1",
            // The fragment and its continuation: one message, read the long way.
            joined,
            "1x63",
        ];
        assert_eq!(seen, expected);
        // A notice inside a fragmented message is still an error.
        let mut bad = vec![0x01, 1, b'a'];
        bad.extend(chat_frame("New User Joined..."));
        assert_eq!(collect_with(&fixed, &[&bad]), Err(WireError::BadFragment));
    }

    #[test]
    #[should_panic(expected = "not one whole text frame")]
    fn only_whole_text_frames_can_be_fixed() {
        let mut ping = Vec::new();
        frame::push_frame(&mut ping, OpCode::Ping, b"hi");
        Fixed::new(vec![ping]);
    }

    #[test]
    fn nothing_is_held_back_once_frames_are_whole() {
        let mut inbox = Inbox::new(1024);
        let fixed = Fixed::default();
        let frames = chat_frame("x");
        inbox.feed(&frames[..3], &fixed, &mut |_| {}).unwrap();
        assert_eq!(inbox.buffered(), 3);
        inbox.feed(&frames[3..], &fixed, &mut |_| {}).unwrap();
        assert_eq!(inbox.buffered(), 0);
    }

    #[test]
    fn rejects_what_a_server_must_not_send() {
        let cases: [(&[u8], WireError); 6] = [
            (&[0x81, 0x80, 0, 0, 0, 0], WireError::Masked),
            (&[0xC1, 0], WireError::ReservedBits),
            (&[0x83, 0], WireError::UnknownOpcode(3)),
            (&[0x09, 0], WireError::BadControl),
            (&[0x80, 0], WireError::BadFragment),
            (
                &[0x81, 127, 0x7F, 0, 0, 0, 0, 0, 0, 0],
                WireError::TooBig(0x7F << 56),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(collect(&[bytes]), Err(error), "{bytes:?}");
        }
        assert_eq!(
            collect(&[&[0x81, 2, 0xC3, 0x28]]),
            Err(WireError::InvalidUtf8)
        );
        // A new message may not start while another is still arriving.
        assert_eq!(
            collect(&[&[0x01, 1, b'a', 0x81, 1, b'b']]),
            Err(WireError::BadFragment)
        );
    }

    #[test]
    fn masked_frames_read_back_through_the_servers_parser() {
        let mut masks = Masks::new(42);
        for len in [0, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            frame::push_client_frame(&mut out, OpCode::Text, &payload, masks.next_mask());
            let head = frame::parse_header(&out, 1 << 20).unwrap().unwrap();
            assert_eq!(
                (head.opcode, head.fin, head.frame_len()),
                (OpCode::Text, true, out.len())
            );
            let body = &mut out[head.header_len..];
            frame::unmask(body, head.mask);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn masks_vary() {
        let mut masks = Masks::new(0);
        let a = masks.next_mask();
        assert_ne!(a, masks.next_mask());
    }
}
