//! The client side of the opening handshake (RFC 6455 §4.1), as bytes: the request we write and
//! the check of the `101 Switching Protocols` head we read back, however many reads it takes.

use std::fmt;

use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

/// A response head longer than this is not a chat server talking.
const MAX_HEAD: usize = 8 * 1024;

/// The upgrade request for one client, and the accept key the server must answer with.
#[derive(Debug)]
pub struct Request {
    pub bytes: Vec<u8>,
    pub accept: String,
}

pub fn request(host: &str, path: &str) -> Request {
    let key = generate_key();
    let bytes = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    Request {
        bytes,
        accept: derive_accept_key(key.as_bytes()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered, but not with 101 (503 when it is full, for instance).
    Status(u16),
    Malformed,
    TooLong,
    /// A 101 without `Upgrade: websocket` or `Connection: upgrade`.
    NotAnUpgrade,
    WrongAccept,
    /// A 101 that names an extension or a subprotocol (the header's name): we asked for
    /// none, so the connection must fail (RFC 6455 §4.1, points 5 and 6 of the client's
    /// checks): frames under an extension we do not speak would be misread.
    NotAsked(&'static str),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Status(code) => write!(f, "HTTP {code}"),
            HandshakeError::Malformed => write!(f, "malformed response"),
            HandshakeError::TooLong => write!(f, "response head over {MAX_HEAD} bytes"),
            HandshakeError::NotAnUpgrade => write!(f, "101 without upgrade headers"),
            HandshakeError::WrongAccept => write!(f, "wrong Sec-WebSocket-Accept"),
            HandshakeError::NotAsked(header) => write!(f, "{header} not asked for"),
        }
    }
}

/// Checks the response head at the start of `buf`.
///
/// `Ok(None)`: not all of it is here yet. `Ok(Some(n))`: a valid upgrade whose head is the first
/// `n` bytes; what follows is already WebSocket frames (the join notice often comes in the same
/// read).
pub fn check_response(buf: &[u8], accept: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HandshakeError::TooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    match response.code {
        Some(101) => {}
        Some(code) => return Err(HandshakeError::Status(code)),
        None => return Err(HandshakeError::Malformed),
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let connection = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection {
        return Err(HandshakeError::NotAnUpgrade);
    }
    if header("sec-websocket-accept").map(str::trim) != Some(accept) {
        return Err(HandshakeError::WrongAccept);
    }
    for name in ["Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"] {
        let named = response
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name) && !h.value.trim_ascii().is_empty());
        if named {
            return Err(HandshakeError::NotAsked(name));
        }
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key and answer of RFC 6455 §1.3.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn response(accept: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
    }

    #[test]
    fn the_request_carries_a_key_whose_answer_we_expect() {
        let req = request("127.0.0.1:8080", "/ws");
        let text = String::from_utf8(req.bytes).unwrap();
        assert!(text.starts_with("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        assert_eq!(req.accept, derive_accept_key(key.as_bytes()));
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), ACCEPT);
    }

    #[test]
    fn the_head_is_found_whatever_follows_and_not_before_it_ends() {
        let head = response(ACCEPT);
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&[0x81, 2, b'h', b'i']);
        for cut in 0..head.len() {
            assert_eq!(check_response(&bytes[..cut], ACCEPT), Ok(None), "cut {cut}");
        }
        assert_eq!(check_response(&bytes, ACCEPT), Ok(Some(head.len())));
    }

    #[test]
    fn refusals_and_bad_answers_are_told_apart() {
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(busy, ACCEPT),
            Err(HandshakeError::Status(503))
        );
        let wrong = response("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(
            check_response(wrong.as_bytes(), ACCEPT),
            Err(HandshakeError::WrongAccept)
        );
        let bare = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            check_response(bare.as_bytes(), ACCEPT),
            Err(HandshakeError::NotAnUpgrade)
        );
        assert_eq!(
            check_response(b"SSH-2.0-OpenSSH\r\n\r\n", ACCEPT),
            Err(HandshakeError::Malformed)
        );
        for (header, value) in [
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ("sec-websocket-protocol", "chat"),
        ] {
            let head =
                response(ACCEPT).replace("\r\n\r\n", &format!("\r\n{header}: {value}\r\n\r\n"));
            let err = check_response(head.as_bytes(), ACCEPT).unwrap_err();
            assert!(matches!(err, HandshakeError::NotAsked(_)), "{header}");
            assert!(err
                .to_string()
                .to_lowercase()
                .contains(&header.to_lowercase()));
        }
        let endless = vec![b'a'; MAX_HEAD + 1];
        let mut long = b"HTTP/1.1 101 OK\r\nX: ".to_vec();
        long.extend_from_slice(&endless);
        assert_eq!(check_response(&long, ACCEPT), Err(HandshakeError::TooLong));
    }
}
