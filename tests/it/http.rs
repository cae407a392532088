//! Plain HTTP on the chat port: the startup line, the routes (/, /healthz, unknown paths),
//! `HEAD` on them, and the error statuses for wrong methods, malformed requests and oversized
//! heads.
//! Every response is one request per connection: `Connection: close`, a Content-Length,
//! then the server closes (the helpers read until EOF and check the body length).

use crate::common;

use std::io::Write;

use common::*;

#[test]
fn first_stderr_line_names_the_bound_address() {
    let server = TestServer::start(&[]);
    assert_eq!(
        server.first_stderr_line(),
        format!("listening on 127.0.0.1:{}", server.port())
    );
    assert_ne!(
        server.port(),
        0,
        "port 0 must be replaced by the port actually bound"
    );
}

#[test]
fn index_serves_the_chat_page() {
    let server = TestServer::start(&[]);
    let response = http_get(&server, "/");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(response
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close")));
    assert!(response.header("Content-Length").is_some());
    let page = response.body_text();
    assert!(page.contains("<html"), "not an HTML page: {page}");
    assert!(page.contains("/ws"), "the page must connect to /ws");
}

#[test]
fn healthz_says_ok() {
    let server = TestServer::start(&[]);
    let response = http_get(&server, "/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert!(response
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close")));
}

#[test]
fn query_strings_do_not_change_the_route() {
    let server = TestServer::start(&[]);
    let response = http_get(&server, "/healthz?x=1");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    assert_eq!(http_get(&server, "/?lang=en").status, 200);
}

#[test]
fn unknown_path_is_404() {
    let server = TestServer::start(&[]);
    for path in ["/nope", "/healthz/extra", "/ws/x", "/echo"] {
        let response = http_get(&server, path);
        assert_eq!(response.status, 404, "{path}");
        assert!(response.header("Content-Length").is_some(), "{path}");
    }
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = TestServer::start(&[]);
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/healthz"),
        ("DELETE", "/ws"),
        ("OPTIONS", "/"),
    ] {
        // No body: a body the server never reads could turn its close into a reset.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.host()
        );
        let response = http_exchange(&server, request.as_bytes());
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(
            response.header("Allow"),
            Some("GET, HEAD"),
            "{method} {path}"
        );
    }
}

/// Sends `HEAD path` and reads until the server closes: the status, the headers, and every
/// byte after the head (not `HttpResponse::parse`, which expects Content-Length bytes of body).
fn head(server: &TestServer, path: &str) -> HttpResponse {
    let mut stream = tcp_connect(server);
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.host());
    stream.write_all(request.as_bytes()).expect("send HEAD");
    let raw = read_to_close(&mut stream);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(end)) = response.parse(&raw) else {
        panic!(
            "HEAD {path}: no complete head in {:?}",
            String::from_utf8_lossy(&raw)
        );
    };
    HttpResponse {
        status: response.code.expect("a status"),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: raw[end..].to_vec(),
    }
}

/// What health checkers often send: `HEAD` gets the status and headers of `GET`, and no body
/// (the server closes right after the head). `/ws` takes `GET` alone.
#[test]
fn head_gets_the_status_and_no_body() {
    let server = TestServer::start(&[]);
    for (path, status) in [
        ("/healthz", 200),
        ("/", 200),
        ("/metrics", 200),
        ("/nope", 404),
    ] {
        let response = head(&server, path);
        assert_eq!(response.status, status, "HEAD {path}");
        assert!(
            response.body.is_empty(),
            "HEAD {path}: {:?}",
            response.body_text()
        );
        let get = http_get(&server, path);
        assert_eq!(response.header("Content-Type"), get.header("Content-Type"));
        if let Some(length) = response.header("Content-Length") {
            assert_eq!(
                length.parse::<usize>().unwrap(),
                get.body.len(),
                "HEAD {path}"
            );
        }
    }
    let response = head(&server, "/ws");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
    assert!(response.body.is_empty());
}

#[test]
fn garbage_is_400() {
    let server = TestServer::start(&[]);
    let requests: [&[u8]; 4] = [
        b"\x00\x01\x02\xff garbage\r\n\r\n",
        b"GET /\r\n\r\n",                                  // no HTTP version
        b"HELLO\r\n\r\n",                                  // no target at all
        b"GET / HTTP/1.1\r\nHeader without colon\r\n\r\n", // malformed header line
    ];
    for request in requests {
        let response = http_exchange(&server, request);
        assert_eq!(
            response.status,
            400,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn request_head_over_8_kib_is_431() {
    let server = TestServer::start(&[]);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Padding: {}\r\n\r\n",
        server.host(),
        "a".repeat(9 * 1024)
    );
    let response = http_exchange(&server, request.as_bytes());
    assert_eq!(response.status, 431);
}

#[test]
fn a_head_just_under_the_limit_is_fine() {
    let server = TestServer::start(&[]);
    let prefix = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Padding: ",
        server.host()
    );
    // Total head = prefix + padding + "\r\n\r\n" = 8000 bytes, below 8 KiB.
    let request = format!("{prefix}{}\r\n\r\n", "a".repeat(8000 - prefix.len() - 4));
    let response = http_exchange(&server, request.as_bytes());
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
}

#[test]
fn exactly_one_request_per_connection() {
    let server = TestServer::start(&[]);
    // Two requests in one write: the server answers the first, then closes. The parser in
    // `http_exchange` fails if anything follows the first body.
    let one = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.host());
    let response = http_exchange(&server, format!("{one}{one}").as_bytes());
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
}

#[test]
fn a_request_arriving_in_pieces_is_answered() {
    let server = TestServer::start(&[]);
    let mut stream = tcp_connect(&server);
    stream.set_nodelay(true).unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.host());
    for piece in request.as_bytes().chunks(3) {
        stream.write_all(piece).unwrap();
    }
    let response = HttpResponse::parse(&read_to_close(&mut stream));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
}

#[test]
fn the_server_keeps_serving_after_many_requests() {
    let server = TestServer::start(&[]);
    // Each connection is closed by the server; none may leak or wedge the loop.
    for _ in 0..200 {
        assert_eq!(http_get(&server, "/healthz").body, b"ok");
    }
}

/// A client that sends its request and at once shuts down its sending side (as `nc -N` or a
/// scripted probe does) still gets the whole answer. The server sees the request and the EOF in
/// the same turn, before it has written anything: it must stop reading, not give up on the
/// answer, and not spin on the EOF.
#[test]
fn a_request_followed_by_eof_still_gets_its_answer() {
    let server = TestServer::start(&[]);
    for _ in 0..3 {
        let mut stream = tcp_connect(&server);
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.host());
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let response = HttpResponse::parse(&read_to_close(&mut stream));
        assert_eq!(
            (response.status, response.body_text().as_str()),
            (200, "ok")
        );
    }
    // Still responsive afterwards (a spinning loop would not answer).
    assert_eq!(http_get(&server, "/healthz").status, 200);
}

/// RFC 9112 §3.2.2: a server must accept a request target in absolute form (what a client
/// talking to a proxy sends), and take the host from it rather than from the Host header.
#[test]
fn absolute_form_targets_are_served() {
    let server = TestServer::start(&[]);
    let host = server.host();
    let health = format!("GET http://{host}/healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let response = http_exchange(&server, health.as_bytes());
    assert_eq!(
        (response.status, response.body_text().as_str()),
        (200, "ok")
    );
    let page = format!("GET http://{host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(http_exchange(&server, page.as_bytes()).status, 200);
    let upgrade = Handshake::new(&server).path(&format!("ws://{host}/ws"));
    let mut client = RawClient::handshake(tcp_connect(&server), &upgrade);
    client.expect_body(JOINED);
    // The Origin rule takes the target's host: same host there is allowed, whatever Host says.
    let elsewhere = Handshake::new(&server)
        .path("http://chat.example/ws")
        .header("Origin", "http://chat.example");
    RawClient::handshake(tcp_connect(&server), &elsewhere).expect_body(JOINED);
}
