//! The chat room on /ws: join and leave notices, broadcast to everyone (sender included) as
//! `{"type":1,"body":...}` with proper JSON escaping, one global order seen by every client
//! even with concurrent senders, and the separate --echo route.

use crate::common;

use std::collections::HashMap;
use std::thread;

use common::*;
use tungstenite::Message;

#[test]
fn everyone_gets_the_join_notice_including_the_newcomer() {
    let server = TestServer::start(&[]);
    let mut a = ws_connect(&server, "/ws");
    expect_body(&mut a, JOINED);
    let mut b = ws_connect(&server, "/ws");
    expect_body(&mut b, JOINED);
    expect_body(&mut a, JOINED);
    let mut c = ws_connect(&server, "/ws");
    expect_body(&mut c, JOINED);
    expect_body(&mut a, JOINED);
    expect_body(&mut b, JOINED);
}

#[test]
fn a_message_reaches_everyone_including_the_sender() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    let mut b = join_chat(&server, &mut [&mut a]);
    let mut c = join_chat(&server, &mut [&mut a, &mut b]);

    send_text(&mut b, "hello, room");
    for ws in [&mut a, &mut b, &mut c] {
        expect_body(ws, "hello, room");
    }
}

#[test]
fn an_empty_message_is_broadcast_too() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    send_text(&mut a, "");
    expect_body(&mut a, "");
}

#[test]
fn messages_are_wrapped_as_type_1_json() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    send_text(&mut a, "plain");
    match next_message(&mut a) {
        // Compare parsed JSON, not bytes: key order and spacing are the server's choice.
        Message::Text(text) => {
            let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(value, serde_json::json!({"type": 1, "body": "plain"}));
        }
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn bodies_are_json_escaped() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    let tricky = [
        r#"she said "hi""#,
        "back\\slash",
        "two\nlines\r\nand\ttabs",
        "control \u{0001}\u{001f} chars",
        "unicode: héllo — 日本語 — 🎉",
        "<script>alert('x')</script> & </html>",
        r#"{"type":2,"body":"fake"}"#,
        "\u{2028}\u{2029}",
    ];
    for text in tricky {
        send_text(&mut a, text);
        // chat_body parses the JSON and insists on exactly {type, body}.
        expect_body(&mut a, text);
    }
}

#[test]
fn a_clean_close_tells_the_others() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    let mut b = join_chat(&server, &mut [&mut a]);
    close_ws(&mut b);
    expect_body(&mut a, LEFT);
}

#[test]
fn eof_without_a_close_frame_tells_the_others() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    let b = join_chat(&server, &mut [&mut a]);
    drop(b); // FIN, no Close frame
    expect_body(&mut a, LEFT);
}

#[test]
fn the_room_keeps_working_after_people_leave() {
    let server = TestServer::start(&[]);
    let mut a = join_chat(&server, &mut []);
    for round in 0..5 {
        let mut b = join_chat(&server, &mut [&mut a]);
        send_text(&mut b, &format!("round {round}"));
        expect_body(&mut a, &format!("round {round}"));
        expect_body(&mut b, &format!("round {round}"));
        close_ws(&mut b);
        expect_body(&mut a, LEFT);
    }
}

#[test]
fn a_burst_of_messages_arrives_complete_and_in_order() {
    let server = TestServer::start(&NO_BUDGET);
    let mut a = join_chat(&server, &mut []);
    let mut b = join_chat(&server, &mut [&mut a]);
    for i in 0..500 {
        a.write(Message::text(format!("m{i}"))).unwrap();
    }
    a.flush().unwrap();
    for i in 0..500 {
        expect_body(&mut b, &format!("m{i}"));
    }
    for i in 0..500 {
        expect_body(&mut a, &format!("m{i}"));
    }
}

#[test]
fn concurrent_senders_and_receivers_all_see_one_order() {
    const SENDERS: usize = 4;
    const LISTENERS: usize = 3;
    const PER_SENDER: usize = 150;
    const TOTAL: usize = SENDERS * PER_SENDER;

    let server = TestServer::start(&NO_BUDGET);
    // Everyone joins first (on this thread), so that every client's stream starts right
    // after the last join notice and all of them should see the same TOTAL messages.
    let mut clients: Vec<Ws> = Vec::new();
    for _ in 0..SENDERS + LISTENERS {
        let mut existing: Vec<&mut Ws> = clients.iter_mut().collect();
        let new = join_chat(&server, &mut existing);
        clients.push(new);
    }

    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, mut ws)| {
            thread::spawn(move || {
                if index < SENDERS {
                    for k in 0..PER_SENDER {
                        send_text(&mut ws, &format!("s{index}-{k}"));
                    }
                }
                (0..TOTAL)
                    .map(|_| next_body(&mut ws))
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let seen: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // One order for everybody...
    for (i, sequence) in seen.iter().enumerate().skip(1) {
        assert_eq!(
            sequence, &seen[0],
            "client {i} saw a different order than client 0"
        );
    }
    // ...which keeps each sender's messages in the order they were sent, with none missing.
    let mut next_expected: HashMap<String, usize> = HashMap::new();
    for body in &seen[0] {
        let (sender, k) = body.split_once('-').expect("a message of the form sN-K");
        let expected = next_expected.entry(sender.to_string()).or_insert(0);
        assert_eq!(
            k.parse::<usize>().unwrap(),
            *expected,
            "{sender}'s messages out of order"
        );
        *expected += 1;
    }
    assert_eq!(next_expected.len(), SENDERS);
    assert!(next_expected.values().all(|&n| n == PER_SENDER));
}

// ---- The --echo route --------------------------------------------------------------------------

#[test]
fn echo_route_exists_only_with_the_flag() {
    let server = TestServer::start(&[]);
    let response = http_exchange(&server, &Handshake::new(&server).path("/echo").to_bytes());
    assert_eq!(response.status, 404);
}

#[test]
fn echo_returns_text_and_binary_unchanged() {
    let server = TestServer::start(&["--echo"]);
    let mut echo = ws_connect(&server, "/echo");

    // The first thing an echo client receives is its own echo: no join notice, no JSON.
    echo.send(Message::text("hello \"echo\" 🎉")).unwrap();
    assert_eq!(next_message(&mut echo), Message::text("hello \"echo\" 🎉"));

    let bytes: Vec<u8> = (0..=255).collect();
    echo.send(Message::binary(bytes.clone())).unwrap();
    assert_eq!(next_message(&mut echo), Message::binary(bytes));

    let big = "x".repeat(60_000);
    echo.send(Message::text(big.clone())).unwrap();
    assert_eq!(next_message(&mut echo), Message::text(big));

    close_ws(&mut echo);
}

#[test]
fn echo_clients_are_outside_the_chat_room() {
    let server = TestServer::start(&["--echo"]);
    let mut member = join_chat(&server, &mut []);

    let mut echo = ws_connect(&server, "/echo");
    echo.send(Message::text("only for me")).unwrap();
    assert_eq!(next_message(&mut echo), Message::text("only for me"));

    // Chat messages do not reach the echo client either. Once the member has its own message
    // back, the server has broadcast it; the echo client's next message must still be its echo.
    send_text(&mut member, "room talk");
    expect_body(&mut member, "room talk");
    echo.send(Message::text("second")).unwrap();
    assert_eq!(next_message(&mut echo), Message::text("second"));

    // Leaving /echo is not a chat event. After the closing handshake completes the server has
    // processed the leave, so a notice, had there been one, would precede the next message.
    close_ws(&mut echo);
    send_text(&mut member, "after echo left");
    expect_body(&mut member, "after echo left");
}
