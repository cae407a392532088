//! One process's link to Redis cut and healed while the others stay connected, with the tests'
//! own TCP proxy ([`common::cut_proxy::CutProxy`]) between that process and a real
//! `redis-server`. Every wait is for an event: a log line, a chat message, a connection the
//! proxy saw.

use crate::common;

use common::cut_proxy::{Cut, CutProxy};
use common::redis::Redis;
use common::*;

fn health(server: &TestServer) -> String {
    let response = http_get(server, "/healthz");
    assert_eq!(response.status, 200);
    response.body_text()
}

/// A mio-chat process on `url`, once its subscription is in place.
fn node(url: &str) -> TestServer {
    let server = TestServer::start(&["--redis", url]);
    server.wait_for_log("redis: subscribed");
    server
}

/// A from process A reaches B's client (and A's), and back.
fn round_trip(on_a: &mut Ws, on_b: &mut Ws, text: &str) {
    send_text(on_a, text);
    expect_body(on_a, text);
    expect_body(on_b, text);
    let back = format!("{text} (back)");
    send_text(on_b, &back);
    expect_body(on_a, &back);
    expect_body(on_b, &back);
}

/// Cuts A's link with `how`, checks that only A is degraded and that A's clients still chat
/// among themselves, heals, and checks that the room spans both processes again.
fn cut_and_heal(how: Cut) {
    let Some(redis) = Redis::start() else { return };
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into());
    let a = node(&proxy.url());
    let b = node(&redis.url());
    let mut on_a = join_chat(&a, &mut []);
    let mut on_b = join_chat(&b, &mut [&mut on_a]);
    round_trip(&mut on_a, &mut on_b, "before");

    proxy.cut(how);
    a.wait_for_log("serving this process's clients only");
    // A retried, and the proxy refused or held the attempt: the cut holds past A's first retry.
    proxy.wait_until("a retry met the cut", |c| c.refused + c.stalled >= 1);
    if how == Cut::Stall {
        // The held attempt (both links: two connections) hears nothing, and only A's connect
        // timeout can end it (the heal would, by closing it): a second attempt comes once A
        // has given up on the first.
        proxy.wait_until("a stalled attempt given up", |c| c.stalled >= 3);
    }
    assert_eq!(health(&a), "degraded");
    assert_eq!(health(&b), "ok");
    send_text(&mut on_a, "a alone");
    expect_body(&mut on_a, "a alone");

    proxy.heal();
    a.wait_for_log("redis: back");
    assert_eq!(health(&a), "ok");
    // B's client's next message is this one: what A said alone never went through Redis.
    round_trip(&mut on_a, &mut on_b, "healed");
    let b_log = b.stderr_lines();
    assert!(
        !b_log.iter().any(|l| l.contains("clients only")),
        "{b_log:?}"
    );
}

/// Refused: A's link closes, and its retries are reset at once.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_refusing_cut_degrades_only_its_process_and_heals() {
    cut_and_heal(Cut::Refuse);
}

/// Stalled: A's link closes, and its retries connect and hear nothing until A's connect timeout
/// gives up on them.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_stalling_cut_degrades_only_its_process_and_heals() {
    cut_and_heal(Cut::Stall);
}
