//! `mio-chat-load` must fail, naming the fault, against a server with one subtle fault; and pass
//! the same scenarios against the healthy server.
//!
//! The faulty server is the real one behind a proxy written here ([`Proxy`]): it passes every
//! byte from the clients through, and the server's frames back through a [`Fault`] that may
//! swap, change, forge, double or drop one of them for one client (by the order connections
//! reached the proxy). Each test runs the generator's binary through it with `--json` and
//! checks its exit status and the fault's name in `faults` and `problems`.

#![cfg(feature = "loadgen")] // runs the generator's binary

use crate::common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::{run_load as load, TestServer};
use mio_chat::frame::{self, OpCode};
use mio_chat::message::{push_chat_frame, JOINED, LEFT};
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

/// What the proxy does to the server's frames on their way to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Two chat messages from different senders, the first pair after the tenth message,
    /// handed over the other way round.
    Swap,
    /// The tenth chat message with its last byte changed.
    Corrupt,
    /// The tenth chat message with its send stamp far in the future.
    Future,
    /// After the tenth chat message, one from a sender the run does not have.
    UnknownSender,
    /// After the tenth chat message, sender 0's with a number it has not sent.
    NeverSent,
    /// After the tenth chat message, one from sender 5 000 000: beyond the range of any of
    /// two generators.
    BeyondEveryGenerator,
    /// The tenth chat message twice.
    Duplicate,
    /// The tenth chat message never.
    Drop,
    /// The tenth chat message with a leading zero in its number, its padding cut by one
    /// byte so that the length stays the same.
    LeadingZero,
    /// The 101 names an extension the client never asked for.
    Extension,
    /// The 101 names a subprotocol the client never asked for.
    Subprotocol,
    /// After the tenth chat message, a text frame that is not the chat's JSON.
    NotChat,
    /// After the tenth chat message, a binary frame.
    Binary,
    /// After the tenth chat message, a chat message nobody sent.
    Stray,
    /// After the tenth chat message, a leave notice, when nobody left.
    LeaveInTraffic,
    /// The first chat message (connect's probe) twice.
    ProbeTwice,
    /// The first chat message (connect's probe) never.
    ProbeLost,
    /// A join notice just before the first chat message (after the flood: in `connect` before
    /// the probe, in `broadcast` during the traffic).
    LateJoin,
    /// The second join notice of connection 0 never (a join notice lost).
    JoinLost,
    /// Connection 0's second join notice moved to connection 1 (which gets its first twice).
    JoinMoved,
    /// The first leave notice never, the second twice (the totals cancel).
    LeaveSwapped,
    /// The first leave notice twice, the second never.
    LeaveDoubledFirst,
    /// The first leave notice never.
    LeaveLost,
    /// At each stayer of [`CHURN`] (connections 0 to 2), the first short-lived client's join
    /// notice held back until just after its leave notice: every stayer alike, the totals
    /// right.
    JoinAfterLeave,
    /// A chat message nobody sent, right after the client's own join notice (in the flood).
    StrayInFlood,
    /// The last chat message again, just before the server's Close (after the run caught up).
    DuplicateAtClose,
    /// A hundred leave notices just before the server's Close.
    LeavesAtClose,
    /// Every chat message of another generator's senders (numbered from 1 000 000) never,
    /// at every connection.
    DropForeign,
    /// No fault: what a correct server may do, at every connection. Every text message with
    /// its JSON keys the other way round (`{"body":…,"type":1}`), cut into three fragments,
    /// a ping before it and another between its fragments.
    Legal,
}

/// A fault, and the connection it strikes (by the order connections reached the proxy).
#[derive(Debug, Clone, Copy)]
struct Plan {
    fault: Fault,
    conn: usize,
}

/// What one connection's frames have been so far.
#[derive(Default)]
struct Seen {
    chats: usize,
    joins: usize,
    leaves: usize,
    /// A chat frame held back to be swapped with the next one from another sender.
    held: Option<(String, Vec<u8>)>,
    swapped: bool,
    /// A join notice held back until the next leave notice.
    held_join: Option<Vec<u8>>,
    /// The last chat frame, to hand over again.
    last_chat: Vec<u8>,
}

/// The chat body of a text frame's payload, if it is one.
fn body(payload: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(payload).ok()?;
    json["body"].as_str().map(str::to_string)
}

fn chat(out: &mut Vec<u8>, text: &str) {
    push_chat_frame(out, text);
}

/// The frames to send instead of one text frame (`frame` as it came), for connection `conn`.
fn transform(plan: Plan, conn: usize, seen: &mut Seen, payload: &[u8], frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if plan.fault == Fault::Legal {
        legally(payload, &mut out);
        return out;
    }
    let Some(text) = body(payload) else {
        out.extend_from_slice(frame);
        return out;
    };
    let mine = conn == plan.conn;
    if text == JOINED || text == LEFT {
        notice(plan, conn, seen, &text, frame, &mut out);
        return out;
    }
    if plan.fault == Fault::DropForeign && text.starts_with("s=") && text[2..].find(' ') > Some(6) {
        return out;
    }
    seen.chats += 1;
    seen.last_chat = frame.to_vec();
    let tenth = mine && seen.chats == 10;
    match plan.fault {
        Fault::Swap if mine && seen.chats >= 10 && !seen.swapped => {
            swap(seen, text, frame, &mut out)
        }
        Fault::Corrupt if tenth => {
            let mut changed = text.into_bytes();
            let last = changed.len() - 1;
            changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
            chat(&mut out, std::str::from_utf8(&changed).unwrap());
        }
        Fault::LeadingZero if tenth => {
            let mut forged = text.replacen(" q=", " q=0", 1);
            forged.pop();
            chat(&mut out, &forged);
        }
        Fault::Future if tenth => {
            let at = text.find(" t=").unwrap() + 3;
            let end = at + text[at..].find(' ').unwrap();
            let forged = format!("{}{}{}", &text[..at], u64::MAX / 2, &text[end..]);
            chat(&mut out, &forged);
        }
        Fault::Duplicate if tenth => out.extend([frame, frame].concat()),
        Fault::ProbeTwice if mine && seen.chats == 1 => out.extend([frame, frame].concat()),
        Fault::Drop if tenth => {}
        Fault::ProbeLost if mine && seen.chats == 1 => {}
        Fault::LateJoin if mine && seen.chats == 1 => {
            chat(&mut out, JOINED);
            out.extend_from_slice(frame);
        }
        fault if tenth => {
            out.extend_from_slice(frame);
            match fault {
                Fault::UnknownSender => chat(&mut out, "s=999 q=0 t=1 AAAAAAAA"),
                Fault::BeyondEveryGenerator => chat(&mut out, "s=5000000 q=0 t=1 AAAAAAAA"),
                Fault::NeverSent => chat(&mut out, "s=0 q=999999999 t=1 AAAAAAAA"),
                Fault::NotChat => frame::push_frame(&mut out, OpCode::Text, b"{\"hello\":1}"),
                Fault::Binary => frame::push_frame(&mut out, OpCode::Binary, &[1, 2, 3]),
                Fault::Stray => chat(&mut out, "hello, everyone"),
                Fault::LeaveInTraffic => chat(&mut out, LEFT),
                _ => {}
            }
        }
        _ => out.extend_from_slice(frame),
    }
    out
}

/// A text message as a correct server may also send it (see [`Fault::Legal`]).
fn legally(payload: &[u8], out: &mut Vec<u8>) {
    let json: Value = serde_json::from_slice(payload).expect("the server sends JSON");
    // serde_json's map keeps its keys sorted: "body" before "type".
    let text = serde_json::to_vec(&json).unwrap();
    let (a, rest) = text.split_at(text.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    frame::push_frame(out, OpCode::Ping, b"are you there");
    push_fragment(out, OpCode::Text as u8, false, a);
    frame::push_frame(out, OpCode::Ping, b"");
    push_fragment(out, OpCode::Continuation as u8, false, b);
    push_fragment(out, OpCode::Continuation as u8, true, c);
}

/// An unmasked server frame, final or not.
fn push_fragment(out: &mut Vec<u8>, opcode: u8, fin: bool, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xFFFF => {
            out.push(126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Holds a chat frame until one from another sender comes, then hands both over swapped.
fn swap(seen: &mut Seen, text: String, frame: &[u8], out: &mut Vec<u8>) {
    let sender = text.split(' ').next().unwrap_or_default().to_string();
    match seen.held.take() {
        Some((held_sender, held)) if held_sender != sender => {
            out.extend_from_slice(frame);
            out.extend(held);
            seen.swapped = true;
        }
        Some((_, held)) => {
            out.extend(held);
            seen.held = Some((sender, frame.to_vec()));
        }
        None => seen.held = Some((sender, frame.to_vec())),
    }
}

fn notice(plan: Plan, conn: usize, seen: &mut Seen, text: &str, frame: &[u8], out: &mut Vec<u8>) {
    let (count, joined) = if text == JOINED {
        seen.joins += 1;
        (seen.joins, true)
    } else {
        seen.leaves += 1;
        (seen.leaves, false)
    };
    // Stayer `conn` heard 3 - conn stayers' joins (its own and those after it); the next one
    // is the first short-lived client's.
    if plan.fault == Fault::JoinAfterLeave && conn < 3 {
        if joined && count == 4 - conn {
            seen.held_join = Some(frame.to_vec());
            return;
        }
        out.extend_from_slice(frame);
        if let (false, Some(held)) = (joined, seen.held_join.take()) {
            out.extend(held);
        }
        return;
    }
    if plan.fault == Fault::StrayInFlood && conn == plan.conn && joined && count == 1 {
        out.extend_from_slice(frame);
        chat(out, "hello from nobody");
        return;
    }
    let times = match (plan.fault, joined, count) {
        (Fault::JoinLost, true, 2) if conn == 0 => 0,
        (Fault::JoinMoved, true, 2) if conn == 0 => 0,
        (Fault::JoinMoved, true, 1) if conn == 1 => 2,
        (Fault::LeaveSwapped, false, 1) if conn == plan.conn => 0,
        (Fault::LeaveSwapped, false, 2) if conn == plan.conn => 2,
        (Fault::LeaveDoubledFirst, false, 1) if conn == plan.conn => 2,
        (Fault::LeaveDoubledFirst, false, 2) if conn == plan.conn => 0,
        (Fault::LeaveLost, false, 1) if conn == plan.conn => 0,
        _ => 1,
    };
    for _ in 0..times {
        out.extend_from_slice(frame);
    }
}

/// A proxy in front of the real server that applies one [`Plan`] to what the server sends.
struct Proxy {
    url: String,
}

impl Proxy {
    fn start(server: &TestServer, plan: Plan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let upstream = server.addr();
        let count = Arc::new(AtomicUsize::new(0));
        // Accepts for as long as the test runs; the threads end with their connections.
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pipe_up(client, server));
                thread::spawn(move || pipe_down(s2, c2, plan, conn));
            }
        });
        Proxy { url }
    }
}

/// Client to server, byte for byte.
fn pipe_up(mut client: TcpStream, mut server: TcpStream) {
    let how = match io::copy(&mut client, &mut server) {
        Ok(_) => Shutdown::Write,
        Err(_) => Shutdown::Both, // a reset: pass on that the client is gone
    };
    let _ = server.shutdown(how);
}

/// Server to client: the response head as it is, then frame by frame through the fault.
fn pipe_down(mut server: TcpStream, mut client: TcpStream, plan: Plan, conn: usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut head_done = false;
    let mut seen = Seen::default();
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let mut head: Vec<u8> = buf.drain(..end + 4).collect();
            if conn == plan.conn {
                let extra: &[u8] = match plan.fault {
                    Fault::Extension => b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
                    Fault::Subprotocol => b"Sec-WebSocket-Protocol: chat\r\n",
                    _ => b"",
                };
                head.splice(end + 2..end + 2, extra.iter().copied());
            }
            out.extend(head);
            head_done = true;
        }
        while let Some((header, len)) = frame_at(&buf) {
            let frame: Vec<u8> = buf.drain(..header + len).collect();
            if frame[0] & 0x0F == OpCode::Text as u8 && frame[0] & 0x80 != 0 {
                out.extend(transform(plan, conn, &mut seen, &frame[header..], &frame));
            } else if frame[0] & 0x0F == OpCode::Close as u8 && conn == plan.conn {
                match plan.fault {
                    Fault::DuplicateAtClose => out.extend_from_slice(&seen.last_chat),
                    Fault::LeavesAtClose => (0..100).for_each(|_| chat(&mut out, LEFT)),
                    _ => {}
                }
                out.extend(frame);
            } else {
                out.extend(frame);
            }
        }
        if client.write_all(&out).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// The header length and payload length of the whole server frame at the start of `buf`.
fn frame_at(buf: &[u8]) -> Option<(usize, usize)> {
    let (header, len) = match *buf.get(1)? & 0x7F {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        short => (2, short as usize),
    };
    (buf.len() >= header + len).then_some((header, len))
}

const BROADCAST: &[&str] = &[
    "broadcast",
    "-n",
    "4",
    "--senders",
    "2",
    "--window",
    "4",
    "--duration",
    "1",
];
const CONNECT: &[&str] = &["connect", "-n", "5", "--max-inflight", "1"];
const CHURN: &[&str] = &[
    "churn",
    "-n",
    "2",
    "--cycles",
    "20",
    "--rate",
    "200",
    "--max-inflight",
    "1",
    "--settle",
    "3",
];
const CHURN_ALONE: &[&str] = &[
    "churn",
    "-n",
    "0",
    "--cycles",
    "20",
    "--rate",
    "200",
    "--max-inflight",
    "1",
    "--settle",
    "3",
];

/// Runs `args` through a proxy with `fault` at connection `conn`; asserts that the generator
/// fails and names `name`, and that it did not merely time out.
fn fails_with(args: &[&str], fault: Fault, conn: usize, name: &str) -> Value {
    let server = TestServer::start(&[]);
    let proxy = Proxy::start(&server, Plan { fault, conn });
    let (ok, report) = load(&proxy.url, args);
    assert!(!ok, "{fault:?}: the run passed: {report}");
    assert!(
        report["faults"].get(name).is_some(),
        "{fault:?}: no {name:?} in the faults: {}",
        report["faults"]
    );
    let problems = report["problems"].to_string();
    assert!(problems.contains(name), "{fault:?}: {problems}");
    assert_eq!(report["timed_out"], false, "{fault:?}: {problems}");
    report
}

#[test]
fn the_healthy_server_passes_directly_and_through_the_proxy() {
    let server = TestServer::start(&[]);
    let proxy = Proxy::start(
        &server,
        Plan {
            fault: Fault::None,
            conn: 0,
        },
    );
    for url in [server.url("/ws"), proxy.url.clone()] {
        for args in [BROADCAST, CONNECT, CHURN, CHURN_ALONE] {
            let (ok, report) = load(&url, args);
            assert!(ok, "{args:?} via {url}: {}", report["problems"]);
            assert_eq!(report["faults"], serde_json::json!({}), "{args:?}");
        }
    }
}

/// A server that fragments, pings and writes its JSON keys in another order is still correct.
#[test]
fn a_server_that_fragments_pings_and_reorders_keys_passes() {
    let server = TestServer::start(&[]);
    let plan = Plan {
        fault: Fault::Legal,
        conn: 0,
    };
    let proxy = Proxy::start(&server, plan);
    for _ in 0..3 {
        for args in [BROADCAST, CONNECT, CHURN, CHURN_ALONE] {
            let (ok, report) = load(&proxy.url, args);
            assert!(ok, "{args:?}: {}", report["problems"]);
            assert_eq!(report["faults"], serde_json::json!({}), "{args:?}");
        }
    }
}

/// Generator 0 of 2 through a proxy that drops generator 1's messages, generator 1 straight to
/// the server: each alone sees nothing wrong (generator 0 cannot know what it was not sent),
/// `merge` does.
#[test]
fn another_generators_messages_never_delivered_fail_the_merge() {
    let server = TestServer::start(&[]);
    let plan = Plan {
        fault: Fault::DropForeign,
        conn: 0,
    };
    let proxy = Proxy::start(&server, plan);
    let dir = std::env::temp_dir().join(format!("mio-chat-dropforeign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let direct = server.url("/ws");
    let runs: Vec<_> = [("0/2", proxy.url.as_str()), ("1/2", direct.as_str())]
        .iter()
        .map(|(g, url)| {
            Command::new(LOAD)
                .args(["broadcast", "-n", "3", "--senders", "1", "--rate", "100"])
                .args(["--duration", "1", "--generator", g, "--url", url])
                .args(["--json", "--quiet", "--timeout", "60"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start mio-chat-load")
        })
        .collect();
    let mut files = Vec::new();
    for (i, child) in runs.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "generator {i}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let file = dir.join(format!("g{i}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        files.push(file);
    }
    let out = Command::new(LOAD)
        .args(["merge", "--json"])
        .args(&files)
        .output()
        .unwrap();
    let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "{merged}");
    assert!(merged["faults"].get("lost").is_some(), "{merged}");
    let problems = merged["problems"].to_string();
    assert!(
        problems.contains("none of generator 1's") && problems.contains("generator 0's clients"),
        "{problems}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Against a server that holds back a client past 20 messages a second, a sender at 300 a
/// second leaves some of its messages in flight when the wait for them ends: late, not lost
/// (nothing later of theirs came), and the report says what to check.
#[test]
fn messages_held_back_by_a_rate_limit_are_in_flight_not_lost() {
    // The server reads the rest before it sees the Close: a few seconds' worth.
    let server = TestServer::start(&["--client-rate", "20", "--client-burst", "1"]);
    let args = [
        "broadcast",
        "-n",
        "2",
        "--senders",
        "1",
        "--rate",
        "300",
        "--duration",
        "1",
    ];
    let (ok, report) = load(&server.url("/ws"), &args);
    assert!(!ok, "{report}");
    assert!(
        report["faults"].get("in flight at the end").is_some(),
        "{report}"
    );
    assert!(
        report["faults"].get("lost").is_none(),
        "{}",
        report["faults"]
    );
    assert_eq!(report["traffic"]["lost"], 0);
    assert!(report["traffic"]["in_flight_at_end"].as_u64() > Some(0));
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("--client-rate 0 --client-bytes-rate 0"),
        "{problems}"
    );
}

#[test]
fn two_senders_swapped_for_one_client_is_reordered() {
    fails_with(BROADCAST, Fault::Swap, 3, "reordered");
}

#[test]
fn the_readable_report_names_the_fault_too() {
    let server = TestServer::start(&[]);
    let plan = Plan {
        fault: Fault::Swap,
        conn: 3,
    };
    let proxy = Proxy::start(&server, plan);
    let out = Command::new(LOAD)
        .args(BROADCAST)
        .args(["--url", &proxy.url, "--quiet", "--timeout", "60"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run mio-chat-load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let verdict = text
        .lines()
        .find(|l| l.contains("result"))
        .unwrap_or_default();
    assert!(
        verdict.contains("FAILED: reordered: 1 (first: clients"),
        "{text}"
    );
    eprintln!("{text}"); // shown with --nocapture: what a user reads
}

#[test]
fn one_changed_byte_is_changed() {
    fails_with(BROADCAST, Fault::Corrupt, 3, "changed");
}

#[test]
fn a_stamp_from_the_future_is_named() {
    fails_with(BROADCAST, Fault::Future, 3, "stamp from the future");
}

#[test]
fn a_message_from_an_unknown_sender_is_named() {
    fails_with(BROADCAST, Fault::UnknownSender, 3, "unknown sender");
}

/// As generator 0 of 2, a sender in its own range that it does not have, or beyond every
/// generator's range, is unknown, not another generator's.
#[test]
fn with_several_generators_a_sender_outside_every_range_is_unknown() {
    let mut args = BROADCAST.to_vec();
    args.extend(["--generator", "0/2"]);
    for fault in [Fault::UnknownSender, Fault::BeyondEveryGenerator] {
        let report = fails_with(&args, fault, 3, "unknown sender");
        assert_eq!(report["traffic"]["foreign"], 0, "{fault:?}");
    }
}

#[test]
fn a_number_never_sent_is_named() {
    let report = fails_with(BROADCAST, Fault::NeverSent, 3, "never sent");
    let t = &report["traffic"];
    assert_eq!(
        t["deliveries"], t["expected_deliveries"],
        "not counted: {t}"
    );
}

#[test]
fn a_leading_zero_with_the_padding_cut_to_match_is_changed() {
    fails_with(BROADCAST, Fault::LeadingZero, 3, "changed");
}

/// A 101 naming what the client never asked for fails that connection, by the header's name.
#[test]
fn an_extension_or_subprotocol_not_asked_for_fails_the_connection() {
    for (fault, header) in [
        (Fault::Extension, "Sec-WebSocket-Extensions"),
        (Fault::Subprotocol, "Sec-WebSocket-Protocol"),
    ] {
        let server = TestServer::start(&[]);
        let proxy = Proxy::start(&server, Plan { fault, conn: 2 });
        let (ok, report) = load(&proxy.url, CONNECT);
        assert!(!ok, "{fault:?}: the run passed: {report}");
        let failures = report["join"]["failures"].to_string();
        assert!(
            failures.contains(&format!("handshake: {header} not asked for")),
            "{fault:?}: {failures}"
        );
        assert!(report["problems"]
            .to_string()
            .contains("1 of 5 connections failed"));
    }
}

#[test]
fn a_second_copy_is_duplicated() {
    fails_with(BROADCAST, Fault::Duplicate, 3, "duplicated");
}

#[test]
fn a_dropped_message_is_lost_at_once() {
    let report = fails_with(BROADCAST, Fault::Drop, 3, "lost");
    assert_eq!(report["traffic"]["lost"], 1, "{}", report["traffic"]);
}

#[test]
fn a_text_frame_that_is_not_chat_is_named() {
    fails_with(BROADCAST, Fault::NotChat, 3, "not chat");
}

#[test]
fn a_binary_frame_is_named() {
    fails_with(BROADCAST, Fault::Binary, 3, "binary frame");
}

#[test]
fn a_message_nobody_sent_is_stray() {
    fails_with(BROADCAST, Fault::Stray, 3, "stray message");
}

#[test]
fn a_join_notice_during_the_traffic_is_extra() {
    fails_with(BROADCAST, Fault::LateJoin, 3, "extra notice");
}

#[test]
fn a_leave_notice_during_the_traffic_when_nobody_left_is_extra() {
    fails_with(BROADCAST, Fault::LeaveInTraffic, 3, "extra notice");
}

#[test]
fn the_probe_twice_is_duplicated() {
    fails_with(CONNECT, Fault::ProbeTwice, 2, "duplicated");
}

#[test]
fn a_lost_probe_is_lost_not_a_timeout() {
    let report = fails_with(CONNECT, Fault::ProbeLost, 2, "lost");
    assert_eq!(report["probe"]["received"], 4);
}

#[test]
fn a_join_notice_after_the_flood_is_extra() {
    fails_with(CONNECT, Fault::LateJoin, 2, "extra notice");
}

#[test]
fn a_lost_join_notice_is_lost_not_a_timeout() {
    fails_with(CONNECT, Fault::JoinLost, 0, "lost");
}

#[test]
fn a_join_notice_moved_to_the_next_client_is_out_of_order() {
    fails_with(CONNECT, Fault::JoinMoved, 0, "notice order");
}

#[test]
fn a_watcher_losing_one_leave_and_doubling_another_is_caught() {
    // The watcher is connection 0; the background clients hear the true sequence.
    fails_with(CHURN, Fault::LeaveSwapped, 0, "notice order");
}

#[test]
fn a_lone_watcher_doubling_a_leave_before_losing_one_is_caught() {
    fails_with(CHURN_ALONE, Fault::LeaveDoubledFirst, 0, "extra notice");
}

#[test]
fn a_join_notice_after_its_members_leave_at_every_stayer_is_caught() {
    fails_with(CHURN, Fault::JoinAfterLeave, 0, "notice order");
}

#[test]
fn a_chat_message_during_the_join_flood_is_stray() {
    fails_with(CONNECT, Fault::StrayInFlood, 2, "stray message");
    fails_with(BROADCAST, Fault::StrayInFlood, 2, "stray message");
}

#[test]
fn a_second_copy_while_closing_is_duplicated() {
    fails_with(CONNECT, Fault::DuplicateAtClose, 2, "duplicated");
    fails_with(BROADCAST, Fault::DuplicateAtClose, 2, "duplicated");
}

#[test]
fn a_hundred_leave_notices_while_closing_are_extra() {
    fails_with(CONNECT, Fault::LeavesAtClose, 2, "extra notice");
    fails_with(BROADCAST, Fault::LeavesAtClose, 2, "extra notice");
}

#[test]
fn a_background_client_losing_a_leave_is_caught() {
    fails_with(CHURN, Fault::LeaveLost, 1, "notice order");
}
