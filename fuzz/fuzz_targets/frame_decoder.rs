//! Fuzz target: the frame decoder (`frame::parse_header`, `unmask`, `check_close_payload`) on
//! arbitrary bytes with an arbitrary payload limit.
//!
//! Input: one selector byte for the limit (bits 0-1: `usize::MAX`, 125, 65536, or the next eight
//! bytes as a little-endian number), then the buffer. The decoder's contract with
//! `Connection::read_frame`:
//! - a header is 6, 8 or 14 bytes, and `Ok(Some)` only once all of it is in the buffer;
//! - every prefix of a decoded header is `Ok(None)`, and nothing past byte 14 changes the verdict;
//! - data frames never declare more than the limit; control frames are final and at most 125;
//! - the fields are what the bytes say, and unmasking is the bytewise XOR of RFC 6455 §5.3.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mio_chat::frame::{
    check_close_payload, close, parse_header, unmask, OpCode, MAX_CONTROL_PAYLOAD,
};

/// The longest client header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_CLIENT_HEADER: usize = 14;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (max_payload, buf) = match selector & 3 {
        0 => (usize::MAX, rest),
        1 => (MAX_CONTROL_PAYLOAD, rest),
        2 => (65536, rest),
        _ => match rest.split_first_chunk::<8>() {
            Some((limit, buf)) => (u64::from_le_bytes(*limit) as usize, buf),
            None => return,
        },
    };

    let verdict = parse_header(buf, max_payload);
    assert_eq!(
        parse_header(&buf[..buf.len().min(MAX_CLIENT_HEADER)], max_payload),
        verdict,
        "bytes past the longest header changed the verdict"
    );
    let header = match verdict {
        Ok(None) => {
            assert!(buf.len() < MAX_CLIENT_HEADER, "14 bytes always decide");
            return;
        }
        Err(code) => {
            assert!(
                code == close::PROTOCOL_ERROR || code == close::TOO_BIG,
                "{code}"
            );
            return;
        }
        Ok(Some(header)) => header,
    };

    assert!(matches!(header.header_len, 6 | 8 | 14), "{header:?}");
    assert!(
        buf.len() >= header.header_len,
        "a header decoded from too few bytes"
    );
    for cut in 0..header.header_len {
        assert_eq!(
            parse_header(&buf[..cut], max_payload),
            Ok(None),
            "cut {cut}"
        );
    }
    assert_eq!(header.fin, buf[0] & 0x80 != 0);
    assert_eq!(header.opcode as u8, buf[0] & 0x0F);
    assert_eq!(header.mask, buf[header.header_len - 4..header.header_len]);
    if header.opcode.is_control() {
        assert!(
            header.fin && header.payload_len <= MAX_CONTROL_PAYLOAD,
            "{header:?}"
        );
    } else {
        assert!(
            header.payload_len <= max_payload,
            "{header:?} over {max_payload}"
        );
    }

    // Unmask what payload is here (a frame may be cut short) and compare with the definition;
    // the fast path works eight bytes at a time, so every length and alignment matters.
    let available = &buf[header.header_len..buf.len().min(header.frame_len())];
    let mut payload = available.to_vec();
    unmask(&mut payload, header.mask);
    for (i, (&plain, &masked)) in payload.iter().zip(available).enumerate() {
        assert_eq!(plain, masked ^ header.mask[i % 4], "byte {i}");
    }
    let mut again = payload.clone();
    unmask(&mut again, header.mask);
    assert_eq!(again, available, "unmasking twice is the identity");

    if header.opcode == OpCode::Close && payload.len() == header.payload_len {
        match check_close_payload(&payload) {
            Ok(code) if payload.is_empty() => assert_eq!(code, close::NORMAL),
            Ok(code) => {
                assert_eq!(code, u16::from_be_bytes([payload[0], payload[1]]));
                assert!(std::str::from_utf8(&payload[2..]).is_ok());
            }
            Err(code) => assert!(
                code == close::PROTOCOL_ERROR || code == close::INVALID_PAYLOAD,
                "{code}"
            ),
        }
    }
});
