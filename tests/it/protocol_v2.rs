//! The protocol's second version (`mio-chat.v2`, docs/protocol.md): negotiated in the handshake,
//! frames that say what they are, and the tutorial's version 1 kept byte for byte for every
//! client that does not ask, in the same room as version 2 clients.

use crate::common;

use common::*;
use serde_json::{json, Value};

/// The whole frame version 1 sends for `body`: FIN + text, an unmasked 7-bit length, the JSON.
fn v1_frame(body: &str) -> Vec<u8> {
    let payload = format!(
        r#"{{"type":1,"body":{}}}"#,
        serde_json::to_string(body).unwrap()
    );
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// Reads one whole frame as bytes, as it came (header and payload).
fn raw_frame(client: &mut RawClient) -> Vec<u8> {
    let frame = client.read_frame_skipping_pings();
    assert!(frame.payload.len() < 126);
    let mut bytes = vec![0x80 | frame.opcode, frame.payload.len() as u8];
    bytes.extend_from_slice(&frame.payload);
    bytes
}

/// Connects to /ws offering `protocols` (none if empty); returns the client and the 101's
/// `Sec-WebSocket-Protocol`, if any.
fn connect(server: &TestServer, protocols: &[&str]) -> (RawClient, Option<String>) {
    let mut request = Handshake::new(server);
    for offer in protocols {
        request = request.header("Sec-WebSocket-Protocol", offer);
    }
    let mut stream = tcp_connect(server);
    std::io::Write::write_all(&mut stream, &request.to_bytes()).expect("send the handshake");
    let (client, response) = RawClient::read_handshake(stream);
    let protocol = response
        .header("Sec-WebSocket-Protocol")
        .map(str::to_string);
    (client, protocol)
}

/// The next version 2 frame, as JSON, checking the fields every frame has.
fn next_v2(client: &mut RawClient) -> Value {
    let frame = client.read_frame_skipping_pings();
    assert_eq!(frame.opcode, OP_TEXT);
    let value: Value = serde_json::from_slice(&frame.payload).expect("version 2 frames are JSON");
    assert!(value["type"].is_string(), "{value}");
    assert!(
        value["time"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{value}"
    );
    value
}

/// Joins with version 2 and reads its hello and its own join; returns the client and its id.
fn join_v2(server: &TestServer, online: u64) -> (RawClient, String) {
    let (mut client, protocol) = connect(server, &["mio-chat.v2"]);
    assert_eq!(protocol.as_deref(), Some("mio-chat.v2"));
    let hello = next_v2(&mut client);
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["max_message_size"], 65536);
    let you = hello["you"].as_str().expect("you is a string").to_string();
    let join = next_v2(&mut client);
    assert_eq!(
        (&join["type"], &join["id"], &join["online"]),
        (&json!("join"), &json!(you), &json!(online))
    );
    (client, you)
}

#[test]
fn version_1_is_byte_for_byte_the_tutorials_beside_version_2_clients() {
    let server = TestServer::start(&[]);
    let (mut old, protocol) = connect(&server, &[]);
    assert_eq!(protocol, None, "no subprotocol asked for, none named");
    assert_eq!(raw_frame(&mut old), v1_frame(JOINED));
    // One that offers only subprotocols the server does not know: version 1, no header.
    let (mut other, protocol) = connect(&server, &["chat, superchat", "mio-chat.v3"]);
    assert_eq!(protocol, None);
    assert_eq!(raw_frame(&mut other), v1_frame(JOINED));
    assert_eq!(raw_frame(&mut old), v1_frame(JOINED));

    let (mut new, _) = join_v2(&server, 3);
    new.send_text("from version 2");
    other.send_text("User Disconnected...");
    drop(new);
    for client in [&mut old, &mut other] {
        assert_eq!(raw_frame(client), v1_frame(JOINED));
        assert_eq!(raw_frame(client), v1_frame("from version 2"));
        assert_eq!(raw_frame(client), v1_frame(LEFT));
    }
}

#[test]
fn version_2_says_what_each_frame_is_and_whose() {
    let server = TestServer::start(&[]);
    let (mut a, a_id) = join_v2(&server, 1);
    let mut old = RawClient::connect(&server);
    old.expect_body(JOINED);
    let joined = next_v2(&mut a);
    assert_eq!(
        (&joined["type"], &joined["online"]),
        (&json!("join"), &json!(2))
    );
    let old_id = joined["id"].as_str().unwrap().to_string();
    assert_ne!(old_id, a_id);

    // A typed notice is a message, from whoever typed it; one's own message carries one's id.
    old.send_text("User Disconnected...");
    a.send_text("mine");
    let forged = next_v2(&mut a);
    assert_eq!(
        (&forged["type"], &forged["from"], &forged["body"]),
        (
            &json!("message"),
            &json!(old_id),
            &json!("User Disconnected...")
        )
    );
    let own = next_v2(&mut a);
    assert_eq!(
        (&own["type"], &own["from"], &own["body"]),
        (&json!("message"), &json!(a_id), &json!("mine"))
    );

    drop(old);
    let left = next_v2(&mut a);
    assert_eq!(
        (&left["type"], &left["id"], &left["online"]),
        (&json!("leave"), &json!(old_id), &json!(1))
    );
}

#[test]
fn every_version_2_member_gets_the_same_bytes() {
    let server = TestServer::start(&[]);
    let (mut a, _) = join_v2(&server, 1);
    let (mut b, b_id) = join_v2(&server, 2);
    let _ = next_v2(&mut a); // b's join
    b.send_text("one encoding for all");
    let (fa, fb) = (a.read_frame_skipping_pings(), b.read_frame_skipping_pings());
    assert_eq!(fa.payload, fb.payload);
    let value: Value = serde_json::from_slice(&fa.payload).unwrap();
    assert_eq!(value["from"], json!(b_id));
}

#[test]
fn hello_tells_the_largest_message() {
    let server = TestServer::start(&["--max-message-size", "100"]);
    let (mut client, protocol) = connect(&server, &["mio-chat.v2"]);
    assert_eq!(protocol.as_deref(), Some("mio-chat.v2"));
    let hello = next_v2(&mut client);
    assert_eq!(hello["max_message_size"], 100);
}

/// Joins `server` with version 2 and reads its hello and its own join; returns the client, its
/// id and the `online` its join said.
fn join_v2_anywhere(server: &TestServer) -> (RawClient, String, u64) {
    let (mut client, _) = connect(server, &["mio-chat.v2"]);
    let hello = next_v2(&mut client);
    assert_eq!(hello["type"], "hello", "the hello comes first: {hello}");
    let you = hello["you"].as_str().expect("you is a string").to_string();
    let join = next_v2(&mut client);
    assert_eq!((&join["type"], &join["id"]), (&json!("join"), &json!(you)));
    let online = join["online"].as_u64().expect("online is a number");
    (client, you, online)
}

/// The next frame that is not a join or leave (messages, in order).
fn next_message(client: &mut RawClient) -> Value {
    loop {
        let frame = next_v2(client);
        if frame["type"] == "message" {
            return frame;
        }
    }
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn across_processes_ids_agree_and_name_their_process() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let url = redis.url();
    let start = || {
        let server = TestServer::start(&["--redis", &url]);
        server.wait_for_log("redis: subscribed");
        server
    };
    let (one, two) = (start(), start());
    let (mut a, a_id, online) = join_v2_anywhere(&one);
    assert_eq!(online, 1);
    let (mut b, b_id, online) = join_v2_anywhere(&two);
    assert_eq!(online, 2, "the other process's member is counted");
    let (a_node, b_node) = (a_id.split_once('.'), b_id.split_once('.'));
    assert!(a_node.is_some() && b_node.is_some(), "{a_id} {b_id}");
    assert_ne!(
        a_node.unwrap().0,
        b_node.unwrap().0,
        "each process its own name"
    );

    let joined = next_v2(&mut a);
    assert_eq!(
        (&joined["type"], &joined["id"], &joined["online"]),
        (&json!("join"), &json!(b_id), &json!(2))
    );
    b.send_text("from two");
    a.send_text("from one");
    for client in [&mut a, &mut b] {
        let first = next_message(client);
        let second = next_message(client);
        let pairs = [
            (first["from"].clone(), first["body"].clone()),
            (second["from"].clone(), second["body"].clone()),
        ];
        assert!(
            pairs.contains(&(json!(b_id), json!("from two")))
                && pairs.contains(&(json!(a_id), json!("from one"))),
            "{pairs:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_member_that_joined_while_redis_was_down_keeps_its_id_when_it_is_back() {
    let port = common::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("serving this process's clients only");
    let (mut alone, you, online) = join_v2_anywhere(&server);
    assert_eq!(online, 1);
    assert!(
        you.contains('.'),
        "named as it will be through Redis: {you}"
    );
    alone.send_text("before");
    assert_eq!(next_message(&mut alone)["from"], json!(you));

    let Ok(_redis) = common::redis::Redis::start_on(port) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required in CI"
        );
        return;
    };
    server.wait_for_log("redis: back");
    alone.send_text("after");
    let after = next_message(&mut alone);
    assert_eq!(
        (&after["from"], &after["body"]),
        (&json!(you), &json!("after"))
    );
}
