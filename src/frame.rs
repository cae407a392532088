//! WebSocket frames (RFC 6455 §5.2) as bytes, with no sockets in sight.
//!
//! Reading: [`parse_header`] looks at the start of a buffer and says whether a whole frame header
//! is there, and what it declares; every limit is checked *here*, before anyone allocates for the
//! payload, so a header announcing 2^63 bytes costs nothing. Writing: server frames are never
//! masked, so a frame encoded once can be copied byte for byte to every client.

use tungstenite::protocol::frame::coding::CloseCode;

/// Close codes this server sends (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The frame types of RFC 6455; the other eight opcodes are reserved and rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode in the low four bits of a frame's first byte, if it is one RFC 6455 defines.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) may appear between the fragments of a message.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded client frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
    /// Bytes of payload that follow the header.
    pub payload_len: usize,
}

impl Header {
    /// Header plus payload: how many buffered bytes make this frame whole.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// The largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Decodes the header of a client frame at the start of `buf`.
///
/// `Ok(None)` means "not enough bytes yet". `Err(code)` is the close code the peer has earned:
/// 1002 for a malformed frame, 1009 when a data frame declares more than `max_payload` bytes.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, u16> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    // No extension is negotiated, so every RSV bit must be clear (§5.2).
    if b0 & 0x70 != 0 {
        return Err(close::PROTOCOL_ERROR);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(close::PROTOCOL_ERROR)?;
    // Clients must mask every frame (§5.1).
    if b1 & 0x80 == 0 {
        return Err(close::PROTOCOL_ERROR);
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if len >> 63 != 0 {
        return Err(close::PROTOCOL_ERROR); // the most significant bit must be 0 (§5.2)
    }
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(close::PROTOCOL_ERROR); // §5.5: control frames are short and never fragmented
    }
    if !opcode.is_control() && len > max_payload as u64 {
        return Err(close::TOO_BIG);
    }
    let header_len = 2 + len_bytes + 4;
    let Some(mask) = buf.get(header_len - 4..header_len) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len,
        payload_len: len as usize,
    }))
}

/// Undoes the client's masking in place (§5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time: the mask repeats every four, so a doubled mask lines up with any
    // chunk that starts at a multiple of eight.
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The longest server frame header: 2 bytes plus a 64-bit length, no mask.
pub const MAX_HEADER_LEN: usize = 10;

/// Writes an unmasked, final frame header for `payload_len` bytes into `dst`, returning its length.
pub fn write_header(opcode: OpCode, payload_len: usize, dst: &mut [u8; MAX_HEADER_LEN]) -> usize {
    dst[0] = 0x80 | opcode as u8;
    match payload_len {
        0..=125 => {
            dst[1] = payload_len as u8;
            2
        }
        126..=0xFFFF => {
            dst[1] = 126;
            dst[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            dst[1] = 127;
            dst[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// Appends a whole unmasked frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut header = [0; MAX_HEADER_LEN];
    let n = write_header(opcode, payload.len(), &mut header);
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Appends one final client frame of `opcode` to `out`, masked with `mask` (RFC 6455 §5.3:
/// every client frame is masked). The server never sends one; the load generator does.
pub fn push_client_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    push_masked(out, 0x80 | opcode as u8, payload, mask);
}

/// Appends one masked client frame whose first byte (FIN, RSV bits, opcode) is `first`, as
/// given: the one encoder of client frames for the generator, the benchmarks and the tests,
/// which also write broken ones (a reserved opcode, an RSV bit, a lone continuation).
pub fn push_masked(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: [u8; 4]) {
    let mut header = [0; MAX_HEADER_LEN];
    let n = write_header(OpCode::Text, payload.len(), &mut header);
    header[0] = first;
    header[1] |= 0x80; // the MASK bit
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask); // masking is the same XOR
}

/// Appends a Close frame carrying `code` and a short human-readable `reason`.
pub fn push_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason);
    push_frame(out, OpCode::Close, &payload[..2 + reason.len()]);
}

/// Checks the payload of a Close frame from a peer (§5.5.1, §7.4).
///
/// Returns the code to answer with: the peer's own code when it gave one, else 1000.
pub fn check_close_payload(payload: &[u8]) -> Result<u16, u16> {
    match payload {
        [] => Ok(close::NORMAL),
        [_] => Err(close::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(close::PROTOCOL_ERROR);
            }
            std::str::from_utf8(reason).map_err(|_| close::INVALID_PAYLOAD)?;
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_a_masked_text_frame_and_unmasks_it() {
        let mut bytes = masked(0x81, b"hello, world");
        let h = parse_header(&bytes, 1024).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len),
            (true, OpCode::Text, 6, 12)
        );
        let payload = &mut bytes[h.header_len..h.frame_len()];
        unmask(payload, h.mask);
        assert_eq!(payload, b"hello, world");
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for len in [5, 200, 70_000] {
            let bytes = masked(0x82, &vec![7; len]);
            let h = parse_header(&bytes, 1 << 20).unwrap().unwrap();
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&bytes[..cut], 1 << 20), Ok(None), "cut {cut}");
            }
            assert_eq!(h.payload_len, len);
        }
    }

    #[test]
    fn rejects_what_the_rfc_forbids() {
        let unmasked = [0x81, 0x00];
        assert_eq!(parse_header(&unmasked, 10), Err(close::PROTOCOL_ERROR));
        assert_eq!(
            parse_header(&masked(0xC1, b""), 10),
            Err(close::PROTOCOL_ERROR)
        ); // RSV1
        assert_eq!(
            parse_header(&masked(0x83, b""), 10),
            Err(close::PROTOCOL_ERROR)
        ); // opcode 3
        assert_eq!(
            parse_header(&masked(0x09, b""), 10),
            Err(close::PROTOCOL_ERROR)
        ); // fragmented ping
        let long_ping = masked(0x89, &[0; 126]);
        assert_eq!(parse_header(&long_ping, 1000), Err(close::PROTOCOL_ERROR));
    }

    #[test]
    fn limits_apply_before_the_payload_arrives() {
        // Only the header of a 1 MiB frame: refused at once, nothing buffered.
        let header = &masked(0x81, &vec![0; 1 << 20])[..14];
        assert_eq!(parse_header(header, 65536), Err(close::TOO_BIG));
        // A 64-bit length with the top bit set is malformed, not merely big.
        let huge = [0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(parse_header(&huge, usize::MAX), Err(close::PROTOCOL_ERROR));
        // Control frames are judged by their own limit, not the message limit.
        assert!(parse_header(&masked(0x89, &[0; 125]), 0).unwrap().is_some());
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        let mut h = [0; MAX_HEADER_LEN];
        assert_eq!(write_header(OpCode::Text, 125, &mut h), 2);
        assert_eq!(write_header(OpCode::Text, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(write_header(OpCode::Text, 65535, &mut h), 4);
        assert_eq!(write_header(OpCode::Binary, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn unmask_matches_the_bytewise_definition_at_every_length() {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut data: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            unmask(&mut data, mask);
            assert_eq!(data, plain);
        }
    }

    #[test]
    fn close_payloads_are_validated() {
        assert_eq!(check_close_payload(&[]), Ok(1000));
        assert_eq!(check_close_payload(&[3]), Err(1002));
        assert_eq!(check_close_payload(&1001u16.to_be_bytes()), Ok(1001));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(check_close_payload(&bad.to_be_bytes()), Err(1002), "{bad}");
        }
        assert_eq!(check_close_payload(&[0x03, 0xE8, 0xFF]), Err(1007));
        let mut out = Vec::new();
        push_close(&mut out, 1001, &"x".repeat(500));
        assert_eq!(out.len(), 2 + MAX_CONTROL_PAYLOAD);
    }
}
