//! Fuzz target: `http::decide` on arbitrary bytes, as they would sit in a connection's buffer.
//!
//! Input: one flag byte, then the bytes received so far. Flag bit 0 serves `/echo`; bits 1-2 pick
//! the Origin policy (default, `*`, or one listed origin). Besides "no panic", it checks what the
//! reactor relies on when a request arrives in pieces:
//! - a complete head gets the same decision whatever follows it (frames may share its read);
//! - every prefix of a complete head is `Incomplete`, so reading on is always right;
//! - `Incomplete` never holds more than `MAX_HEAD` bytes, and an upgrade's `head_len` is the head.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mio_chat::http::{decide, Decision, OriginPolicy, MAX_HEAD};

/// The header array `decide` gives httparse; a head with more lines is refused, not complete.
const MAX_HEADERS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let echo = flags & 1 != 0;
    let allowed = match (flags >> 1) & 3 {
        1 => vec!["*".to_string()],
        2 => vec!["http://evil.example".to_string()],
        _ => Vec::new(),
    };
    let origins = OriginPolicy { allowed };

    let decision = decide(buf, &origins, echo);
    match &decision {
        Decision::Incomplete => assert!(buf.len() <= MAX_HEAD, "Incomplete past MAX_HEAD"),
        Decision::Upgrade {
            accept_key,
            head_len,
            ..
        } => {
            assert!(*head_len <= buf.len().min(MAX_HEAD));
            assert!(
                buf[..*head_len].ends_with(b"\n"),
                "head_len is not the end of the head"
            );
            assert_eq!(accept_key.len(), 28, "a SHA-1 in base64");
        }
        Decision::Respond(response) => assert!((200..600).contains(&response.status)),
        // `/metrics`, answered by the event loop.
        _ => {}
    }

    // Where does the head end, by httparse's own reckoning? Only a head that parses whole, with
    // no more headers than `decide` allows, is "complete".
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head_len = match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        _ => return,
    };
    assert_eq!(
        decide(&buf[..head_len], &origins, echo),
        decision,
        "bytes after the head changed the decision"
    );
    // Every prefix for a short head; for a long one, an even spread plus the last few cuts
    // (each call parses the prefix again, so all of them would make the target quadratic).
    let cuts: Vec<usize> = if head_len <= 256 {
        (0..head_len).collect()
    } else {
        (0..64)
            .map(|i| i * head_len / 64)
            .chain(head_len - 4..head_len)
            .collect()
    };
    for cut in cuts {
        assert_eq!(
            decide(&buf[..cut], &origins, echo),
            Decision::Incomplete,
            "a prefix of {cut} bytes of a {head_len}-byte head is not Incomplete"
        );
    }
});
