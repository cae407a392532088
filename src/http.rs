//! HTTP on the WebSocket port: parse one request head and decide what to answer. No sockets.
//!
//! Every connection starts here. [`decide`] is called with the bytes received so far and says
//! "read more", "answer this and close", or "switch to WebSocket". Plain HTTP answers one request
//! per connection (`Connection: close`), which is all a chat page and a health check need.
//! `HEAD` is answered for the plain `GET` routes (`/`, `/healthz`, `/metrics`) with the head
//! alone, as health checkers often send it.

use tungstenite::handshake::derive_accept_key;

use crate::message::{Version, V2_PROTOCOL};

/// Largest request head accepted; more gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted; more gets 431.
const MAX_HEADERS: usize = 64;

/// The chat page: one self-contained HTML file, compiled into the binary.
pub const CHAT_PAGE: &str = include_str!("chat.html");

/// Which WebSocket endpoint a client upgraded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/ws`: the chat room.
    Chat,
    /// `/echo` (with `--echo`): every message comes straight back; for conformance testing.
    Echo,
}

/// A plain HTTP response, sent once before the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub extra_header: &'static str,
    pub body: &'static str,
    pub part: Part,
}

/// How much of a [`Response`] is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Head and body (`GET`).
    Whole,
    /// The head alone, with the body's `Content-Length` (`HEAD`).
    Head,
    /// The head alone, without `Content-Length` (RFC 9110 §9.3.2 allows leaving it out): for
    /// `HEAD` on pages whose body only the event loop knows (`/metrics`, `/healthz`), so that a
    /// `HEAD` costs no rendering.
    HeadWithoutLength,
}

impl Response {
    /// A short plain-text error or status answer.
    pub fn status(status: u16) -> Self {
        let body = match status {
            200 => "ok",
            400 => "bad request\n",
            403 => "origin not allowed\n",
            404 => "not found\n",
            405 => "method not allowed\n",
            408 => "request timeout\n",
            426 => "upgrade required: WebSocket version 13\n",
            431 => "request header fields too large\n",
            503 => "too many connections\n",
            _ => "error\n",
        };
        let extra_header = match status {
            405 => "Allow: GET, HEAD\r\n",
            426 => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            extra_header,
            body,
            part: Part::Whole,
        }
    }

    /// The same answer to a `HEAD` request: its head alone.
    fn head_only(self) -> Self {
        Response {
            part: Part::Head,
            ..self
        }
    }

    /// `HEAD` on a page the event loop renders: 200 and its content type, nothing else.
    fn head_without_length(content_type: &'static str) -> Self {
        Response {
            content_type,
            part: Part::HeadWithoutLength,
            ..Response::status(200)
        }
    }

    /// The answer to `GET /healthz`: "ok", or "degraded" while a Redis backplane is down. Still
    /// 200 then: the process serves its own clients, so a load balancer should keep it.
    pub fn health(degraded: bool) -> Self {
        Response {
            body: if degraded { "degraded" } else { "ok" },
            ..Response::status(200)
        }
    }

    fn page() -> Self {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            extra_header: "",
            body: CHAT_PAGE,
            part: Part::Whole,
        }
    }

    /// Appends the response (its [`Part`]) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let length = match self.part {
            Part::Whole | Part::Head => Some(self.body.len()),
            Part::HeadWithoutLength => None,
        };
        write_head(
            out,
            self.status,
            self.content_type,
            self.extra_header,
            length,
        );
        if self.part == Part::Whole {
            out.extend_from_slice(self.body.as_bytes());
        }
    }
}

/// The content type of `/metrics`: the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends a complete `Connection: close` response to `out`.
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, extra: &str, body: &str) {
    write_head(out, status, content_type, extra, Some(body.len()));
    out.extend_from_slice(body.as_bytes());
}

/// Appends a `Connection: close` response head to `out`, with `Content-Length` if given.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &str,
    length: Option<usize>,
) {
    let length = length.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{length}{extra}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
    );
    out.extend_from_slice(head.as_bytes());
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Which browser origins may open a WebSocket (the defence against cross-site WebSocket hijacking).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// `--allow-origin` values; `*` allows any.
    pub allowed: Vec<String>,
}

impl OriginPolicy {
    /// No Origin (not a browser), an Origin on the same host as the Host header (any port), or a
    /// listed one. The port is ignored so the tutorial's frontend on :3000 can reach :8080.
    pub fn allows(&self, origin: Option<&str>, host: &str) -> bool {
        let Some(origin) = origin else { return true };
        if self
            .allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let origin_authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        let origin_authority = origin_authority.split('/').next().unwrap_or("");
        let origin_host = host_part(origin_authority);
        !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host_part(host))
    }
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]`.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// What to do with the bytes of a request head received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The head is not complete: keep reading.
    Incomplete,
    /// Send this and close.
    Respond(Response),
    /// Send the current metrics and close (only the event loop knows them).
    Metrics,
    /// Say whether the process is healthy and close (see [`Response::health`]).
    Health,
    /// Send `101 Switching Protocols` with this accept key, naming the subprotocol of `version`
    /// if it has one; WebSocket frames start at `head_len`.
    Upgrade {
        route: Route,
        accept_key: String,
        version: Version,
        head_len: usize,
    },
}

/// Parses the request head in `buf` (it may be incomplete) and decides the answer.
///
/// `echo` says whether `/echo` is served. The whole head is parsed again on each call; that is
/// cheap because a head is at most [`MAX_HEAD`] bytes.
pub fn decide(buf: &[u8], origins: &OriginPolicy, echo: bool) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Decision::Respond(Response::status(431))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Decision::Incomplete,
        Ok(httparse::Status::Partial) => return Decision::Respond(Response::status(431)),
        Err(_) => return Decision::Respond(Response::status(400)),
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Decision::Respond(Response::status(405)),
    };
    let Some((authority, path)) = split_target(req.path.unwrap_or("")) else {
        return Decision::Respond(Response::status(400));
    };
    if head {
        return Decision::Respond(answer_head(path, echo));
    }
    let route = match path.split('?').next().unwrap_or("") {
        "" => return Decision::Respond(Response::page()), // `GET http://host HTTP/1.1`
        "/" => return Decision::Respond(Response::page()),
        "/healthz" => return Decision::Health,
        "/metrics" => return Decision::Metrics,
        "/ws" => Route::Chat,
        "/echo" if echo => Route::Echo,
        _ => return Decision::Respond(Response::status(404)),
    };
    match check_upgrade(&req, authority, origins) {
        Ok(key) => Decision::Upgrade {
            route,
            accept_key: derive_accept_key(key.as_bytes()),
            version: match route {
                Route::Chat => negotiate(&req),
                Route::Echo => Version::V1, // echo has no frames of its own to version
            },
            head_len,
        },
        Err(status) => Decision::Respond(Response::status(status)),
    }
}

/// The answer to `HEAD path`: the head of what `GET` would answer on the plain routes; the
/// WebSocket routes take `GET` alone.
fn answer_head(path: &str, echo: bool) -> Response {
    match path.split('?').next().unwrap_or("") {
        "" | "/" => Response::page().head_only(),
        "/healthz" => Response::head_without_length("text/plain; charset=utf-8"),
        "/metrics" => Response::head_without_length(METRICS_CONTENT_TYPE),
        p if p == "/ws" || (echo && p == "/echo") => Response {
            extra_header: "Allow: GET\r\n",
            ..Response::status(405)
        }
        .head_only(),
        _ => Response::status(404).head_only(),
    }
}

/// Splits a request target into the authority of an absolute-form target and the path.
///
/// RFC 9112 §3.2.2: a server must accept `GET http://host/ws HTTP/1.1` (proxies send it), and
/// use its host instead of the Host header's. Origin-form (`/ws`) has no authority. `None`: an
/// absolute-form target without a host.
fn split_target(target: &str) -> Option<(Option<&str>, &str)> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return Some((None, target));
    };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Some((None, target)); // not a URI: the router answers 404
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    (!authority.is_empty()).then_some((Some(authority), path))
}

/// The request's `X-Forwarded-For` chain: every such header line, in order, joined by commas
/// (repeated lines make one list, RFC 9110 §5.3). `None` if there is none or the head is not a
/// complete request. Bytes that are not UTF-8 become U+FFFD, which no address parse accepts.
pub fn forwarded_for(buf: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let values: Vec<_> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"))
        .map(|h| String::from_utf8_lossy(h.value))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The opening-handshake rules of RFC 6455 §4.2.1, then the Origin policy. Returns the key.
/// `authority` is the host of an absolute-form target, which stands in for the Host header's.
fn check_upgrade<'b>(
    req: &httparse::Request<'_, 'b>,
    authority: Option<&str>,
    origins: &OriginPolicy,
) -> Result<&'b str, u16> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // A header may be repeated; a token may sit in any of its comma-separated lists.
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .any(|h| {
                std::str::from_utf8(h.value)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
    };
    if req.version != Some(1) {
        return Err(400);
    }
    let host = header("Host").ok_or(400u16)?;
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err(400);
    }
    match header("Sec-WebSocket-Version") {
        None => return Err(400),
        Some(v) if v.trim() != "13" => return Err(426),
        Some(_) => {}
    }
    let key = header("Sec-WebSocket-Key").map(str::trim).ok_or(400u16)?;
    if !is_valid_key(key) {
        return Err(400);
    }
    if !origins.allows(header("Origin"), authority.unwrap_or(host)) {
        return Err(403);
    }
    Ok(key)
}

/// The chat frames a client gets: version 2 if any `Sec-WebSocket-Protocol` line offers
/// [`V2_PROTOCOL`] (RFC 6455 §4.1: the client lists what it speaks, the server picks one or
/// none); otherwise version 1, and the 101 names no subprotocol, as §4.2.2 requires when none is
/// chosen. Tokens are case-sensitive (they are not HTTP tokens compared by name).
fn negotiate(req: &httparse::Request) -> Version {
    let offers_v2 = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim() == V2_PROTOCOL);
    if offers_v2 {
        Version::V2
    } else {
        Version::V1
    }
}

/// A Sec-WebSocket-Key is 16 random bytes in base64: 22 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The server's half of the opening handshake.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept_key: &str, version: Version) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept_key.as_bytes());
    if version == Version::V2 {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(V2_PROTOCOL.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status_of(request: &str) -> u16 {
        match decide(request.as_bytes(), &OriginPolicy::default(), false) {
            Decision::Respond(r) => r.status,
            Decision::Upgrade { .. } => 101,
            Decision::Incomplete => 0,
            Decision::Metrics | Decision::Health => 200,
        }
    }

    #[test]
    fn accepts_the_rfc_example_handshake() {
        let req = upgrade("") + "first frame bytes";
        match decide(req.as_bytes(), &OriginPolicy::default(), false) {
            Decision::Upgrade {
                route,
                accept_key,
                version,
                head_len,
            } => {
                assert_eq!(route, Route::Chat);
                assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); // RFC 6455 §1.3
                assert_eq!(version, Version::V1);
                assert_eq!(&req[head_len..], "first frame bytes");
            }
            other => panic!("{other:?}"),
        }
    }

    fn version_of(request: &str, echo: bool) -> Version {
        match decide(request.as_bytes(), &OriginPolicy::default(), echo) {
            Decision::Upgrade { version, .. } => version,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_2_is_chosen_only_when_offered() {
        let v = |extra: &str| version_of(&upgrade(extra), false);
        assert_eq!(v(""), Version::V1, "no offer");
        assert_eq!(v("Sec-WebSocket-Protocol: mio-chat.v2\r\n"), Version::V2);
        assert_eq!(
            v("Sec-WebSocket-Protocol: chat, mio-chat.v2 , superchat\r\n"),
            Version::V2,
            "one of several, spaces around it"
        );
        assert_eq!(
            v("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mio-chat.v2\r\n"),
            Version::V2,
            "on a second header line"
        );
        for unknown in [
            "chat, superchat",
            "mio-chat.v3",
            "MIO-CHAT.V2",
            "mio-chat.v2x",
            "",
        ] {
            let extra = format!("Sec-WebSocket-Protocol: {unknown}\r\n");
            assert_eq!(v(&extra), Version::V1, "only unknown: {unknown:?}");
        }
        let echo = upgrade("Sec-WebSocket-Protocol: mio-chat.v2\r\n").replace("/ws", "/echo");
        assert_eq!(version_of(&echo, true), Version::V1, "echo is unversioned");
    }

    #[test]
    fn the_101_names_the_subprotocol_only_for_version_2() {
        let mut v1 = Vec::new();
        write_switching_protocols(&mut v1, "k", Version::V1);
        assert_eq!(
            v1,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: k\r\n\r\n"
        );
        let mut v2 = Vec::new();
        write_switching_protocols(&mut v2, "k", Version::V2);
        assert_eq!(
            v2,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: k\r\n\
              Sec-WebSocket-Protocol: mio-chat.v2\r\n\r\n"
        );
    }

    #[test]
    fn any_prefix_of_a_request_is_incomplete() {
        let req = upgrade("Origin: http://localhost:3000\r\n");
        for cut in 0..req.len() {
            assert_eq!(
                decide(&req.as_bytes()[..cut], &OriginPolicy::default(), false),
                Decision::Incomplete
            );
        }
        assert_eq!(status_of(&req), 101);
    }

    #[test]
    fn routes_plain_requests() {
        assert_eq!(status_of("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status_of("GET /healthz?probe=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status_of("GET /nope HTTP/1.1\r\n\r\n"), 404);
        let metrics = decide(
            b"GET /metrics HTTP/1.1\r\n\r\n",
            &OriginPolicy::default(),
            false,
        );
        assert_eq!(metrics, Decision::Metrics);
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            405
        );
        assert_eq!(status_of("GET /echo HTTP/1.1\r\n\r\n"), 404); // only with --echo
        assert_eq!(status_of("\x16\x03\x01 hello\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    }

    /// What `decide` answers to `request`, as bytes on the wire.
    fn wire(request: &str) -> String {
        match decide(request.as_bytes(), &OriginPolicy::default(), false) {
            Decision::Respond(response) => {
                let mut out = Vec::new();
                response.write_to(&mut out);
                String::from_utf8(out).unwrap()
            }
            other => panic!("{request:?}: {other:?}"),
        }
    }

    #[test]
    fn head_gets_the_head_of_what_get_gets() {
        for path in ["/", "/nope", "/?x=1"] {
            let get = wire(&format!("GET {path} HTTP/1.1\r\n\r\n"));
            let head = wire(&format!("HEAD {path} HTTP/1.1\r\n\r\n"));
            let end = get.find("\r\n\r\n").unwrap() + 4;
            assert!(end < get.len(), "GET {path} has a body");
            assert_eq!(head, get[..end], "HEAD {path}");
        }
        // The pages the loop renders: 200, their type, no length, no body.
        for (path, content_type) in [
            ("/healthz", "text/plain; charset=utf-8"),
            ("/metrics", METRICS_CONTENT_TYPE),
        ] {
            let head = wire(&format!("HEAD {path} HTTP/1.1\r\n\r\n"));
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains(&format!("Content-Type: {content_type}\r\n")));
            assert!(!head.contains("Content-Length"), "{head}");
            assert!(head.ends_with("\r\n\r\n"), "{head}");
        }
        // The WebSocket route takes GET alone; other methods get 405 with what is allowed.
        let ws = wire("HEAD /ws HTTP/1.1\r\n\r\n");
        assert!(
            ws.starts_with("HTTP/1.1 405 ") && ws.contains("Allow: GET\r\n"),
            "{ws}"
        );
        assert!(ws.ends_with("\r\n\r\n"), "{ws}");
        let post = wire("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        assert!(wire("HEAD /echo HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn oversized_heads_get_431_before_they_complete() {
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(status_of(&long), 431);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status_of(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn bad_upgrades_are_refused_with_the_specified_status() {
        let good = upgrade("");
        assert_eq!(status_of(&good.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(status_of(&good.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(
            status_of(&good.replace("keep-alive, Upgrade", "keep-alive")),
            400
        );
        assert_eq!(status_of(&good.replace(KEY, "short==")), 400);
        assert_eq!(
            status_of(&good.replace("Sec-WebSocket-Version: 13\r\n", "")),
            400
        );
        assert_eq!(status_of(&good.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status_of(&good.replace("Host: localhost:8080\r\n", "")),
            400
        );
    }

    #[test]
    fn origin_rules() {
        let policy = OriginPolicy::default();
        assert!(policy.allows(None, "localhost:8080"));
        assert!(policy.allows(Some("http://localhost:3000"), "localhost:8080"));
        assert!(policy.allows(Some("https://CHAT.example.com"), "chat.example.com"));
        assert!(policy.allows(Some("http://[::1]:3000"), "[::1]:8080"));
        assert!(!policy.allows(Some("http://evil.example"), "localhost:8080"));
        assert!(!policy.allows(Some("null"), "localhost:8080"));
        assert!(!policy.allows(Some("http://localhost.evil.example"), "localhost:8080"));
        let listed = OriginPolicy {
            allowed: vec!["http://evil.example".into()],
        };
        assert!(listed.allows(Some("http://evil.example"), "localhost:8080"));
        let any = OriginPolicy {
            allowed: vec!["*".into()],
        };
        assert!(any.allows(Some("http://anything"), "localhost"));
        assert_eq!(status_of(&upgrade("Origin: http://evil.example\r\n")), 403);
    }

    #[test]
    fn absolute_form_targets_are_accepted() {
        let absolute = upgrade("").replace("GET /ws ", "GET http://localhost:8080/ws ");
        assert_eq!(status_of(&absolute), 101);
        let query = upgrade("").replace("GET /ws ", "GET ws://localhost:8080/ws?x=1 ");
        assert_eq!(status_of(&query), 101);
        assert_eq!(
            status_of("GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            200
        );
        assert_eq!(status_of("GET http://x HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(
            status_of("GET http://x?a=b HTTP/1.1\r\nHost: x\r\n\r\n"),
            200
        );
        assert_eq!(
            status_of("GET http://x/nope HTTP/1.1\r\nHost: x\r\n\r\n"),
            404
        );
        assert_eq!(status_of("GET http:///ws HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        // The target's host, not the Host header's, is the one the Origin must match.
        let elsewhere = upgrade("Origin: http://chat.example\r\n")
            .replace("GET /ws ", "GET http://chat.example/ws ");
        assert_eq!(status_of(&elsewhere), 101);
        let foreign = upgrade("Origin: http://localhost\r\n")
            .replace("GET /ws ", "GET http://chat.example/ws ");
        assert_eq!(status_of(&foreign), 403);
    }

    #[test]
    fn forwarded_for_joins_every_line() {
        let head = "GET /ws HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nHost: x\r\n\
                    x-forwarded-for: 3.3.3.3\r\n\r\n";
        assert_eq!(
            forwarded_for(head.as_bytes()).as_deref(),
            Some("1.1.1.1, 2.2.2.2,3.3.3.3")
        );
        assert_eq!(forwarded_for(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(
            forwarded_for(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\n"),
            None
        );
    }

    #[test]
    fn responses_are_complete_http() {
        let mut out = Vec::new();
        Response::status(426).write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nupgrade required: WebSocket version 13\n"));
    }
}
