//! The backplane against a Redis that misbehaves (issue 11), played by the fake Redis in
//! `common::fake_redis`: one that stalls, pauses, nests arrays 32,768 deep, or sends replies
//! that never end. Each test is one finding of the issue.
//!
//! Every wait is for an event (a chat message, a log line, a count in the fake); the guards are
//! there so a broken server fails a test instead of hanging it.

use crate::common;

use std::time::Duration;

use common::fake_redis::{nested, unfinished_array, FakeRedis, Mode};
use common::*;

/// What the backplane logs, once per outage.
const OUTAGE: &str = "serving this process's clients only";

/// A mio-chat process on `fake`, once its subscription is in place.
fn node(fake: &FakeRedis) -> TestServer {
    let url = fake.url();
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("redis: subscribed");
    server
}

fn health(server: &TestServer) -> String {
    let response = http_get(server, "/healthz");
    assert_eq!(response.status, 200);
    response.body_text()
}

fn outages(server: &TestServer) -> u64 {
    let metrics = http_get(server, "/metrics").body_text();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("mio_chat_redis_outages_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no outage counter in {metrics}"))
}

/// User plus system CPU time the process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The fields after the command name (which may hold spaces) start at state, field 3.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn the_fake_redis_carries_a_room() {
    let fake = FakeRedis::start();
    let (a, b) = (node(&fake), node(&fake));
    let mut on_a = join_chat(&a, &mut []);
    let mut on_b = join_chat(&b, &mut [&mut on_a]);
    send_text(&mut on_b, "through the fake");
    expect_body(&mut on_a, "through the fake");
    expect_body(&mut on_b, "through the fake");
    let stats = fake.wait_until(|s| s.published >= 3 && s.forwarded >= 6);
    assert_eq!(stats.subscribes, 2, "{stats:?}");
    assert_eq!(health(&a), "ok");
}

#[test]
fn the_fake_redis_answers_the_preamble() {
    let fake = FakeRedis::start();
    let url = format!("redis://me:secret@127.0.0.1:{}/3", fake.port());
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("redis: subscribed");
    let stats = fake.stats();
    for expected in ["AUTH me secret", "SELECT 3", "SUBSCRIBE mio-chat"] {
        assert!(stats.commands.iter().any(|c| c == expected), "{stats:?}");
    }
}

/// Finding 3: 32,768 nested `*1\r\n` crashed the process (a recursive decoder's stack).
#[test]
fn a_nested_reply_to_subscribe_is_an_outage_not_a_crash() {
    let fake = FakeRedis::start();
    fake.set_mode(Mode::NestedOnSubscribe { depth: 32_768 });
    let url = fake.url();
    let server = TestServer::start(&["--redis", &url]);
    let warning = server.wait_for_log(OUTAGE);
    assert!(warning.contains("deeper than"), "{warning}");
    assert_eq!(health(&server), "degraded");
    let mut alone = join_chat(&server, &mut []);
    send_text(&mut alone, "still here");
    expect_body(&mut alone, "still here");
}

#[test]
fn a_nested_message_on_the_subscription_is_an_outage_then_heals() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    assert_eq!(fake.send_to_subscribers(&nested(32_768)), 1);
    assert!(server.wait_for_log(OUTAGE).contains("deeper than"));
    server.wait_for_log("redis: back");
    let mut client = join_chat(&server, &mut []);
    send_text(&mut client, "after");
    expect_body(&mut client, "after");
    assert_eq!(outages(&server), 1);
}

/// Finding 4: the publisher link read an endless 200 MiB bulk reply without bound.
#[test]
fn an_endless_bulk_reply_on_the_publisher_is_cut_short() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    fake.set_mode(Mode::EndlessBulkOnPublish {
        declared: 200 << 20,
    });
    // The join notice is published; its reply never ends.
    let _client = ws_connect(&server, "/ws");
    let stats = fake.wait_until_for(Duration::from_secs(120), |s| s.endless_done);
    // The link may read what socket buffers hold before it judges; not megabytes more.
    assert!(
        stats.endless_sent < 16 << 20,
        "the server read {} bytes of a reply to PUBLISH",
        stats.endless_sent
    );
    server.wait_for_log(OUTAGE);
}

/// Finding 5: an unfinished 12 MiB array was decoded again on every read (10.6 s of CPU).
#[test]
fn an_unfinished_wide_array_costs_linear_time() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let before = cpu_time(server.pid());
    // The subscription's limits allow three elements a reply, so the header alone is refused:
    // an outage, and the server closes the link (the rest of the write may then fail).
    fake.send_to_subscribers(&unfinished_array(12 << 20));
    server.wait_for_log(OUTAGE);
    // The loop answers at once, degraded or already back.
    let answer = health(&server);
    assert!(answer == "ok" || answer == "degraded", "{answer}");
    let spent = cpu_time(server.pid()) - before;
    // Each byte judged once is a fraction of a second, even in a debug build.
    assert!(
        spent < Duration::from_secs(3),
        "{spent:?} of CPU for 12 MiB"
    );
}

/// Finding 2: a Redis that takes PUBLISH and never forwards left messages waiting forever,
/// with `/healthz` at `ok`.
#[test]
fn a_stalled_redis_lands_messages_locally_within_the_deadline() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let mut client = join_chat(&server, &mut []);
    fake.set_mode(Mode::Stall);
    send_text(&mut client, "hello");
    // Not back from Redis within the deadline: an outage, and the message lands locally.
    expect_body(&mut client, "hello");
    server.wait_for_log(OUTAGE);
    assert!(outages(&server) >= 1);
    fake.set_mode(Mode::Normal);
    send_text(&mut client, "after");
    expect_body(&mut client, "after");
}

/// Finding 2, as with SIGSTOP: nothing answered, nothing forwarded, until resumed; then no
/// message is delivered twice.
#[test]
fn a_paused_redis_is_an_outage_and_nothing_lands_twice() {
    let fake = FakeRedis::start();
    let server = node(&fake);
    let mut client = join_chat(&server, &mut []);
    fake.pause();
    send_text(&mut client, "one");
    expect_body(&mut client, "one");
    server.wait_for_log(OUTAGE);
    fake.resume();
    server.wait_for_log("redis: back");
    send_text(&mut client, "two");
    // A second "one" (Redis handing back what was delivered locally) would come first.
    expect_body(&mut client, "two");
}

/// Liveness: a link with nothing to say is probed, so a paused Redis is noticed while idle.
#[test]
fn idle_links_are_probed_with_ping() {
    let fake = FakeRedis::start();
    let _server = node(&fake);
    fake.wait_until(|s| s.pings >= 1);
}

/// Finding 1: four 64 KiB messages of 0x01 in one write (each byte escaped into six in JSON)
/// made the backplane give up on Redis; the other process got none of them.
#[test]
fn a_burst_of_escaped_messages_reaches_the_other_process() {
    let fake = FakeRedis::start();
    let (a, b) = (node(&fake), node(&fake));
    let mut on_b = join_chat(&b, &mut []);
    let mut sender = RawClient::join(&a);
    expect_body(&mut on_b, JOINED);
    let text = "\u{1}".repeat(65_536);
    let burst: Vec<u8> = (0..4).flat_map(|_| Frame::text(&text).encode()).collect();
    sender.write_raw(&burst);
    for _ in 0..4 {
        assert_eq!(next_body(&mut on_b), text);
    }
    assert_eq!(outages(&a), 0);
}
