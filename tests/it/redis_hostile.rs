//! A hostile Redis, played by `common::fake_redis` (issue 11): replies that follow a message with
//! an error, a confirmation for another channel, a forged echo of one of our envelopes, an
//! envelope larger than any client may send, endless replies to PUBLISH, and a Redis that takes
//! everything and hands nothing back. Each test states the property it holds the backplane to;
//! each failed on the backplane as first hardened, and came from a red-team review of it.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fake_redis::FakeRedis;
use common::*;

const OUTAGE: &str = "serving this process's clients only";

fn node(fake: &FakeRedis) -> TestServer {
    let url = fake.url();
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("redis: subscribed");
    server
}

/// A pub/sub message on `mio-chat` carrying an envelope from another node.
fn foreign_message(node: &str, seq: u64, body: &str) -> Vec<u8> {
    let payload =
        format!(r#"{{"v":1,"node":"{node}","seq":{seq},"kind":"message","body":"{body}"}}"#);
    let mut out = Vec::new();
    for part in [&b"message"[..], b"mio-chat", payload.as_bytes()] {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    let mut reply = b"*3\r\n".to_vec();
    reply.extend(out);
    reply
}

/// A reply the subscription does not expect, right behind a good message in the same read,
/// must not make the good message land twice when the failure drains the subscription.
fn a_bad_reply_after_a_message(bad: &[u8]) {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let mut client = join_chat(&server, &mut []);
    let mut bytes = foreign_message("0000000000000bad", 1, "once");
    bytes.extend_from_slice(bad);
    assert_eq!(fake.send_to_subscribers(&bytes), 1);
    // A member never announced that speaks is announced first (see `presence.rs`).
    expect_body(&mut client, JOINED);
    expect_body(&mut client, "once");
    server.wait_for_log(OUTAGE);
    server.wait_for_log("redis: back");
    send_text(&mut client, "next");
    // A second "once" would come first.
    assert_eq!(next_body(&mut client), "next", "a message landed twice");
}

#[test]
fn an_error_reply_after_a_message_does_not_land_it_twice() {
    a_bad_reply_after_a_message(b"-ERR boom\r\n");
}

#[test]
fn an_integer_reply_after_a_message_does_not_land_it_twice() {
    a_bad_reply_after_a_message(b":1\r\n");
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let metrics = http_get(server, "/metrics").body_text();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// A Redis (or anyone on the path) that sends one envelope with a 15 MiB body (legal for the
/// subscription: up to 6 × `--max-message-size` and at least 16 MiB) must not cost clients more
/// than a local message could: before, it alone dropped every client whose socket could not
/// take 15 MiB at once. A body longer than this process's `--max-message-size` is skipped.
#[test]
fn one_huge_envelope_does_not_drop_every_client_as_a_slow_consumer() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let mut clients: Vec<_> = (0..3).map(|_| join_chat(&server, &mut [])).collect();
    // Each later join is also heard by the earlier clients; drain those notices.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..3 {
            expect_body(client, JOINED);
        }
    }
    let huge = "h".repeat(15 << 20);
    assert_eq!(
        fake.send_to_subscribers(&foreign_message("00000000000000ff", 1, &huge)),
        1
    );
    // Then a message any client could have sent: it arrives next, to every client, and the
    // huge one never did (skipped and counted: no client here could have sent it).
    assert_eq!(
        fake.send_to_subscribers(&foreign_message("00000000000000ff", 2, "after")),
        1
    );
    for client in &mut clients {
        expect_body(client, JOINED); // its sender, never announced, is announced first
        expect_body(client, "after");
    }
    let page = http_get(&server, "/metrics").body_text();
    assert!(!page.contains("reason=\"slow_consumer\""), "{page}");
    assert_eq!(metric(&server, "mio_chat_redis_unusable_total "), 1);
}

/// A tiny Redis for one attack: SUBSCRIBE is confirmed, PUBLISH is forwarded to the
/// subscriber (so our envelopes come back and no outage hides the problem), and from the
/// first PUBLISH on, the publisher link is flooded with `:1\r\n` (a well-formed PUBLISH reply)
/// for `seconds`, as fast as the socket takes it.
fn publisher_flooder(seconds: u64, flooded: Arc<AtomicU64>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;
    use std::time::Instant;

    fn read_command(reader: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
        let mut args = Vec::new();
        for _ in 0..n {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
            let mut arg = vec![0; len + 2];
            reader.read_exact(&mut arg).ok()?;
            arg.truncate(len);
            args.push(arg);
        }
        Some(args)
    }

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let subscriber: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(stream) = stream else { return };
            let subscriber = Arc::clone(&subscriber);
            let flooded = Arc::clone(&flooded);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut flooding = false;
                while let Some(args) = read_command(&mut reader) {
                    match args[0].to_ascii_uppercase().as_slice() {
                        b"SUBSCRIBE" => {
                            let _ = writer
                                .write_all(b"*3\r\n$9\r\nsubscribe\r\n$8\r\nmio-chat\r\n:1\r\n");
                            *subscriber.lock().unwrap() = Some(writer.try_clone().unwrap());
                        }
                        b"PING" => {
                            let _ = writer.write_all(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
                        }
                        b"PUBLISH" => {
                            if let Some(sub) = subscriber.lock().unwrap().as_mut() {
                                let mut m = format!(
                                    "*3\r\n$7\r\nmessage\r\n$8\r\nmio-chat\r\n${}\r\n",
                                    args[2].len()
                                )
                                .into_bytes();
                                m.extend_from_slice(&args[2]);
                                m.extend_from_slice(b"\r\n");
                                let _ = sub.write_all(&m);
                            }
                            if !flooding {
                                flooding = true;
                                let mut flood = writer.try_clone().unwrap();
                                let flooded = Arc::clone(&flooded);
                                std::thread::spawn(move || {
                                    let blob = b":1\r\n".repeat(16 * 1024);
                                    let end = Instant::now() + Duration::from_secs(seconds);
                                    while Instant::now() < end {
                                        if flood.write_all(&blob).is_err() {
                                            return;
                                        }
                                        flooded.fetch_add(blob.len() as u64, Ordering::Relaxed);
                                    }
                                });
                            }
                        }
                        _ => {
                            let _ = writer.write_all(b"+OK\r\n");
                        }
                    }
                }
            });
        }
    });
    port
}

/// A Redis that answers PUBLISH with an endless stream of `:1\r\n` must not hold the loop: the
/// publisher's replies are read a budget a turn (1 MiB; the first hardening read 64 of those a
/// turn), so clients are still served while the flood goes on.
#[test]
fn a_flood_of_publish_replies_does_not_hold_the_loop() {
    let flooded = Arc::new(AtomicU64::new(0));
    let port = publisher_flooder(30, Arc::clone(&flooded));
    let url = format!("redis://127.0.0.1:{port}");
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("redis: subscribed");
    let _client = ws_connect(&server, "/ws"); // its join notice is the first PUBLISH
    while flooded.load(Ordering::Relaxed) < 8 << 20 {
        std::thread::yield_now(); // until the flood is well under way
    }
    for _ in 0..5 {
        let before = flooded.load(Ordering::Relaxed);
        let health = http_get(&server, "/healthz").body_text();
        assert!(health == "ok" || health == "degraded", "{health}");
        assert!(
            flooded.load(Ordering::Relaxed) > before,
            "answered only once the flood paused"
        );
    }
}

/// A Redis (or a proxy in front of it) that confirms a subscription to another channel than
/// ours is a protocol error: taken for ours, it would make the process say "subscribed" and
/// `/healthz` `ok` while every message waited the whole `--redis-timeout`.
#[test]
fn a_confirmation_for_another_channel_is_not_taken_as_ours() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    // One command: `*N`, then N bulk strings; only its name matters here.
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim()[1..].parse().unwrap();
                    let mut name = Vec::new();
                    for i in 0..n {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let len: usize = line.trim()[1..].parse().unwrap();
                        let mut arg = vec![0; len + 2];
                        reader.read_exact(&mut arg).unwrap();
                        if i == 0 {
                            name = arg[..len].to_ascii_uppercase();
                        }
                    }
                    let reply: &[u8] = match name.as_slice() {
                        b"SUBSCRIBE" => b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:1\r\n",
                        b"PING" => b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
                        b"PUBLISH" => b":0\r\n", // nobody on mio-chat
                        _ => b"+OK\r\n",
                    };
                    if writer.write_all(reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("not our channel");
    assert!(
        !server
            .stderr_lines()
            .iter()
            .any(|l| l.contains("redis: subscribed")),
        "a confirmation for channel \"other\" was taken for mio-chat's"
    );
    assert_eq!(http_get(&server, "/healthz").body_text(), "degraded");
    let mut client = ws_connect(&server, "/ws");
    expect_body(&mut client, JOINED); // served here, at once
}

/// A Redis that takes PUBLISH and never forwards must not make the process hold everything its
/// clients say until the deadline (measured before this bound, in release, with two clients
/// sending 64 KiB messages as fast as they could: 2.7 GiB peak RSS). What Redis took and did not
/// hand back counts against `--redis-max-unsent` too. Scaled down here: 1 MiB.
#[test]
fn a_stalled_redis_does_not_let_pending_envelopes_grow_without_bound() {
    use std::io::Write;
    use std::sync::atomic::AtomicBool;

    let fake = FakeRedis::start();
    let url = fake.url();
    let server = TestServer::start(&["--redis", &url, "--redis-max-unsent", "1048576"]);
    server.wait_for_log("redis: subscribed");
    let client = RawClient::join(&server);
    fake.set_mode(common::fake_redis::Mode::Stall);
    let burst: Vec<u8> = (0..16)
        .flat_map(|_| Frame::text(&"z".repeat(65_536)).encode())
        .collect();
    let mut stream = client.stream().try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            stream
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while !done.load(Ordering::Relaxed) {
                if stream.write_all(&burst).is_err() {
                    return;
                }
            }
        })
    };
    // Past the bound, an outage: what Redis held lands here, and the process says how much.
    let line = server.wait_for_log("bytes of our envelopes without handing them back");
    done.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    drop(client);
    let held: usize = line
        .split("holds ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect("a byte count");
    // At most the bound plus what one turn can read from one client (256 KiB).
    assert!(held <= (1 << 20) + (320 << 10), "{held} bytes held");
    let health = http_get(&server, "/healthz").body_text();
    assert!(health == "ok" || health == "degraded", "{health}");
}

/// Anyone who can publish on the channel learns our node id from any of our envelopes. An echo
/// claiming our node and a pending join's sequence number, as kind `message`, must not replace
/// the join (the client would never become a member): what lands is what we published, and
/// the echo only acknowledges it.
#[test]
fn an_echo_of_ours_cannot_replace_what_we_published() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let line = server.wait_for_log("as node ");
    let me = line.rsplit("as node ").next().unwrap().trim().to_string();
    fake.set_mode(common::fake_redis::Mode::Stall);
    let mut client = ws_connect(&server, "/ws"); // its join is our envelope 1, pending
    fake.wait_until(|s| s.published >= 1);
    let mut forged = foreign_message(&me, 1, "forged");
    forged.extend(foreign_message(&me, 2, "forged 2"));
    fake.set_mode(common::fake_redis::Mode::Normal);
    assert_eq!(fake.send_to_subscribers(&forged), 1);
    // What we published was a join: the client should hear its join notice, be a member,
    // and hear its own message.
    send_text(&mut client, "am I here?");
    client
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut heard = Vec::new();
    while let Ok(message) = client.read() {
        if let tungstenite::Message::Text(text) = message {
            heard.push(text.to_string());
        }
        if heard.len() == 2 {
            break;
        }
    }
    assert_eq!(
        heard.len(),
        2,
        "a forged echo replaced our join: the client heard {heard:?}"
    );
}
