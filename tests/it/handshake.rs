//! The WebSocket opening handshake on GET /ws: a correct 101, the 400/426 answers to bad
//! upgrade requests, the Origin rules (403), and requests that arrive in unusual shapes
//! (one byte per write while other clients chat, or glued to the first frame in one write).

use crate::common;

use std::io::Write;

use common::*;

/// Sends a handshake that must be refused and returns the server's HTTP answer.
fn refused(server: &TestServer, request: &Handshake) -> HttpResponse {
    http_exchange(server, &request.to_bytes())
}

#[test]
fn a_valid_upgrade_gets_101_with_the_rfc_accept_value() {
    let server = TestServer::start(&[]);
    // RawClient::handshake checks status 101, Upgrade, Connection and Sec-WebSocket-Accept.
    let mut client = RawClient::handshake(tcp_connect(&server), &Handshake::new(&server));
    client.expect_body(JOINED);
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let server = TestServer::start(&[]);
    let request = Handshake::new(&server)
        .without("Upgrade")
        .without("Connection")
        .header("upgrade", "WebSocket")
        .header("CONNECTION", "keep-alive, Upgrade"); // a token list, as Firefox sends it
    let mut client = RawClient::handshake(tcp_connect(&server), &request);
    client.expect_body(JOINED);
}

#[test]
fn query_string_on_ws_is_ignored() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::handshake(
        tcp_connect(&server),
        &Handshake::new(&server).path("/ws?room=1"),
    );
    client.expect_body(JOINED);
}

#[test]
fn missing_or_invalid_upgrade_headers_are_400() {
    let server = TestServer::start(&[]);
    let base = Handshake::new(&server);
    let cases = [
        ("no Upgrade", base.clone().without("Upgrade")),
        ("Upgrade: h2c", base.clone().header("Upgrade", "h2c")),
        ("no Connection", base.clone().without("Connection")),
        (
            "Connection: keep-alive",
            base.clone().header("Connection", "keep-alive"),
        ),
        ("no key", base.clone().without("Sec-WebSocket-Key")),
        (
            "key not base64",
            base.clone()
                .header("Sec-WebSocket-Key", "not base64 at all!!"),
        ),
        // Valid base64, but of 15 bytes instead of 16.
        (
            "key of 15 bytes",
            base.clone()
                .header("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA"),
        ),
        ("HTTP/1.0", base.clone().http_version("HTTP/1.0")),
    ];
    for (what, request) in cases {
        assert_eq!(refused(&server, &request).status, 400, "{what}");
    }
}

#[test]
fn unsupported_version_is_426_naming_version_13() {
    let server = TestServer::start(&[]);
    for version in ["8", "12", "14"] {
        let response = refused(
            &server,
            &Handshake::new(&server).header("Sec-WebSocket-Version", version),
        );
        assert_eq!(response.status, 426, "version {version}");
        assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
    }
}

#[test]
fn a_refused_upgrade_does_not_join_the_chat() {
    let server = TestServer::start(&[]);
    let mut watcher = join_chat(&server, &mut []);
    refused(
        &server,
        &Handshake::new(&server).without("Sec-WebSocket-Key"),
    );
    // Had the refused client joined, its notice would come before this message.
    send_text(&mut watcher, "still alone");
    expect_body(&mut watcher, "still alone");
}

// ---- Origin -----------------------------------------------------------------------------------

#[test]
fn no_origin_is_allowed() {
    let server = TestServer::start(&[]);
    RawClient::handshake(
        tcp_connect(&server),
        &Handshake::new(&server).without("Origin"),
    );
}

#[test]
fn same_host_origin_is_allowed_on_any_port() {
    let server = TestServer::start(&[]);
    for origin in [
        format!("http://{}", server.host()),
        "http://127.0.0.1:3000".into(),
        "http://127.0.0.1".into(),
    ] {
        RawClient::handshake(
            tcp_connect(&server),
            &Handshake::new(&server).header("Origin", &origin),
        );
    }
    // The comparison is with the Host header, whatever name the client used.
    let request = Handshake::new(&server)
        .header("Host", &format!("localhost:{}", server.port()))
        .header("Origin", "http://localhost:5173");
    RawClient::handshake(tcp_connect(&server), &request);
}

#[test]
fn foreign_origin_is_403() {
    let server = TestServer::start(&[]);
    for origin in [
        "http://evil.example",
        "http://127.0.0.2",
        "http://localhost",
    ] {
        let response = refused(&server, &Handshake::new(&server).header("Origin", origin));
        assert_eq!(response.status, 403, "Origin {origin}");
    }
}

#[test]
fn allow_origin_admits_exactly_that_origin() {
    let server = TestServer::start(&["--allow-origin", "http://example.com"]);
    RawClient::handshake(
        tcp_connect(&server),
        &Handshake::new(&server).header("Origin", "http://example.com"),
    );
    for origin in [
        "http://example.org",
        "http://example.com.evil.org",
        "http://evil.example",
    ] {
        let response = refused(&server, &Handshake::new(&server).header("Origin", origin));
        assert_eq!(response.status, 403, "Origin {origin}");
    }
}

#[test]
fn allow_origin_is_repeatable() {
    let server = TestServer::start(&[
        "--allow-origin",
        "http://a.example",
        "--allow-origin",
        "http://b.example",
    ]);
    for origin in ["http://a.example", "http://b.example"] {
        RawClient::handshake(
            tcp_connect(&server),
            &Handshake::new(&server).header("Origin", origin),
        );
    }
    assert_eq!(
        refused(
            &server,
            &Handshake::new(&server).header("Origin", "http://c.example")
        )
        .status,
        403
    );
}

#[test]
fn allow_origin_star_admits_any_origin() {
    let server = TestServer::start(&["--allow-origin", "*"]);
    for origin in ["http://evil.example", "https://anything.test:8443", "null"] {
        RawClient::handshake(
            tcp_connect(&server),
            &Handshake::new(&server).header("Origin", origin),
        );
    }
}

// ---- Unusual arrival patterns ----------------------------------------------------------------

#[test]
fn handshake_one_byte_per_write_while_others_chat() {
    let server = TestServer::start(&[]);
    let mut chatter = join_chat(&server, &mut []);

    let mut slow = tcp_connect(&server);
    // No Nagle: each one-byte write leaves as its own segment.
    slow.set_nodelay(true).unwrap();
    let request = Handshake::new(&server).to_bytes();
    let (last, all_but_last) = request.split_last().unwrap();
    for (i, byte) in all_but_last.iter().enumerate() {
        slow.write_all(&[*byte]).unwrap();
        // The single-threaded server must not wait for the rest of the request: another
        // client's message makes the round trip between every two bytes.
        let tick = format!("tick {i}");
        send_text(&mut chatter, &tick);
        expect_body(&mut chatter, &tick);
    }
    // The last byte completes the request (so the chatter's next message is a join notice).
    slow.write_all(&[*last]).unwrap();

    let mut slow = RawClient::read_handshake_response(slow);
    slow.expect_body(JOINED);
    expect_body(&mut chatter, JOINED);
    send_text(&mut chatter, "welcome");
    slow.expect_body("welcome");
    expect_body(&mut chatter, "welcome");
}

#[test]
fn handshake_and_first_frame_in_one_write() {
    let server = TestServer::start(&[]);
    let mut watcher = join_chat(&server, &mut []);

    let mut bytes = Handshake::new(&server).to_bytes();
    bytes.extend_from_slice(&Frame::text("hello from the first packet").encode());
    let mut stream = tcp_connect(&server);
    stream.write_all(&bytes).unwrap();

    // The frame bytes that arrived with the request must not be lost: the client joins,
    // then its message is broadcast.
    let mut client = RawClient::read_handshake_response(stream);
    client.expect_body(JOINED);
    client.expect_body("hello from the first packet");
    expect_body(&mut watcher, JOINED);
    expect_body(&mut watcher, "hello from the first packet");
}

#[test]
fn a_client_that_resets_mid_handshake_does_not_hurt_the_server() {
    let server = TestServer::start(&[]);
    let stream = tcp_connect(&server);
    let mut partial = Handshake::new(&server).to_bytes();
    partial.truncate(partial.len() / 2);
    (&stream).write_all(&partial).unwrap();
    reset_on_drop(&stream);
    drop(stream);

    let mut client = join_chat(&server, &mut []);
    send_text(&mut client, "fine");
    expect_body(&mut client, "fine");
}
