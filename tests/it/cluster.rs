//! Several processes, one room: the Redis backplane (`--redis`) and `--reuse-port`, against a
//! real `redis-server` that each test starts on a free port of its own.
//!
//! Every wait is for an event: a chat message, a log line ("redis: subscribed", "redis: back",
//! the outage warning), or Redis's "Ready to accept connections". Where redis-server is not
//! installed the tests say so and pass; in CI (`CI` set) they fail instead, and `.ci/run`
//! installs it.

use crate::common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::redis::{free_port, Redis};
use common::slow::{join_without_reading, pump_messages};
use common::*;

/// A mio-chat process in the room on `redis`, once its subscription is in place.
fn node(redis: &Redis, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args);
    server.wait_for_log("redis: subscribed");
    server
}

/// Connects to `server` and waits for the newcomer's join notice to reach it and every client
/// in `others` (on any process): then it is in the room everywhere.
fn join(server: &TestServer, others: &mut [&mut Ws]) -> Ws {
    join_chat(server, others)
}

fn health(server: &TestServer) -> String {
    let response = http_get(server, "/healthz");
    assert_eq!(response.status, 200);
    response.body_text()
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn two_processes_are_one_room() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    assert_eq!(health(&a), "ok");
    let mut on_a = join(&a, &mut []);
    let mut on_b = join(&b, &mut [&mut on_a]);

    send_text(&mut on_a, "from a");
    expect_body(&mut on_a, "from a");
    expect_body(&mut on_b, "from a");
    send_text(&mut on_b, "from b");
    expect_body(&mut on_a, "from b");
    expect_body(&mut on_b, "from b");

    let mut late = join(&a, &mut [&mut on_a, &mut on_b]);
    close_ws(&mut on_b);
    expect_body(&mut on_a, LEFT);
    expect_body(&mut late, LEFT);
    send_text(&mut late, "still here");
    expect_body(&mut on_a, "still here");
    expect_body(&mut late, "still here");
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn three_processes_see_one_order() {
    let Some(redis) = Redis::start() else { return };
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    let mut clients: Vec<Ws> = Vec::new();
    for server in nodes.iter().chain(nodes.iter()) {
        let mut others: Vec<&mut Ws> = clients.iter_mut().collect();
        let client = join(server, &mut others);
        clients.push(client);
    }
    // Everyone sends at once, without waiting: the processes publish concurrently.
    const EACH: usize = 40;
    for round in 0..EACH {
        for (i, client) in clients.iter_mut().enumerate() {
            send_text(client, &format!("c{i} m{round}"));
        }
    }
    let heard: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|client| (0..EACH * 6).map(|_| next_body(client)).collect())
        .collect();
    for (i, sequence) in heard.iter().enumerate() {
        assert_eq!(sequence, &heard[0], "client {i} saw another order");
    }
    // Each message once, and each sender's messages in the order sent.
    let mut next: HashMap<String, usize> = HashMap::new();
    for body in &heard[0] {
        let (sender, round) = body.split_once(" m").expect("our own message");
        let expected = next.entry(sender.to_string()).or_default();
        assert_eq!(round.parse::<usize>().unwrap(), *expected, "{body}");
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == EACH));
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_redis_outage_keeps_local_chat_and_heals_without_duplicates() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut on_a = join(&a, &mut []);
    let mut on_b = join(&b, &mut [&mut on_a]);

    redis.kill();
    a.wait_for_log("serving this process's clients only");
    b.wait_for_log("serving this process's clients only");
    assert_eq!(health(&a), "degraded");
    // Local chat goes on: messages and notices, on each process alone.
    send_text(&mut on_a, "a alone");
    expect_body(&mut on_a, "a alone");
    let mut second_on_a = join(&a, &mut [&mut on_a]);
    send_text(&mut on_b, "b alone");
    expect_body(&mut on_b, "b alone");

    redis.restart();
    a.wait_for_log("redis: back");
    b.wait_for_log("redis: back");
    assert_eq!(health(&a), "ok");
    assert_eq!(health(&b), "ok");
    // The client that joined A while it was cut off is announced to B now (A re-announces its
    // members at its heal, and again when B's `hello` asks): B's client hears it join, once.
    expect_body(&mut on_b, JOINED);
    // Each client's next messages are exactly these: nothing from the outage comes twice, and
    // nothing said on the other process during it arrives late.
    send_text(&mut on_a, "healed");
    for client in [&mut on_a, &mut second_on_a, &mut on_b] {
        expect_body(client, "healed");
    }
    send_text(&mut on_b, "both ways");
    for client in [&mut on_a, &mut second_on_a, &mut on_b] {
        expect_body(client, "both ways");
    }
    // Announced to both now, it leaves for both.
    close_ws(&mut second_on_a);
    expect_body(&mut on_a, LEFT);
    expect_body(&mut on_b, LEFT);
    send_text(&mut on_b, "after the leave");
    expect_body(&mut on_a, "after the leave");
    expect_body(&mut on_b, "after the leave");
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn redis_unreachable_at_start_is_degraded_then_joins() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = TestServer::start(&["--redis", &url]);
    server.wait_for_log("serving this process's clients only");
    assert_eq!(health(&server), "degraded");
    let mut alone = join(&server, &mut []);
    send_text(&mut alone, "hello?");
    expect_body(&mut alone, "hello?");

    let Ok(_redis) = Redis::start_on(port) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required in CI"
        );
        return;
    };
    server.wait_for_log("redis: back");
    assert_eq!(health(&server), "ok");
    send_text(&mut alone, "through redis");
    expect_body(&mut alone, "through redis");
    let metrics = http_get(&server, "/metrics").body_text();
    assert!(metrics.contains("mio_chat_redis_up 1"), "{metrics}");
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn reuse_port_lets_processes_share_a_port_and_a_room() {
    let Some(redis) = Redis::start() else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    let shared = ["--addr", addr.as_str(), "--reuse-port"];
    let debug = [("RUST_LOG", "mio_chat=debug")];
    let url = redis.url();
    let args: Vec<&str> = shared.iter().copied().chain(["--redis", &url]).collect();
    let a = TestServer::start_with_env(&args, &debug);
    let b = TestServer::start_with_env(&args, &debug);
    a.wait_for_log("redis: subscribed");
    b.wait_for_log("redis: subscribed");

    // The kernel spreads connections over both listeners by a hash of the client's port, so
    // among twenty clients both processes get some (all but certainly); all share one room.
    let mut clients: Vec<Ws> = Vec::new();
    for _ in 0..20 {
        let mut others: Vec<&mut Ws> = clients.iter_mut().collect();
        let client = join(&a, &mut others); // `a`'s address is the shared one
        clients.push(client);
    }
    a.wait_for_log("accepted");
    b.wait_for_log("accepted");
    send_text(&mut clients[0], "everyone");
    for client in &mut clients {
        expect_body(client, "everyone");
    }
}

#[test]
fn without_reuse_port_a_second_process_cannot_bind() {
    let first = TestServer::start(&[]);
    let taken = first.addr().to_string();
    let mut second = Command::new(env!("CARGO_BIN_EXE_mio-chat"))
        .args(["--addr", &taken])
        .stderr(Stdio::null())
        .spawn()
        .expect("run mio-chat");
    // It fails at once; should it run instead, the guard ends the wait and the test fails.
    let (tx, rx) = mpsc::channel();
    let pid = second.id();
    thread::spawn(move || {
        let _ = tx.send(second.wait());
    });
    let Ok(status) = rx.recv_timeout(GUARD) else {
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("a second process listened on {taken} without --reuse-port");
    };
    assert!(!status.expect("wait").success());
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_process_shutting_down_tells_the_others_its_clients_left() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut on_a = join(&a, &mut []);
    let mut on_b = join(&b, &mut [&mut on_a]);
    a.signal(libc::SIGTERM);
    assert_eq!(expect_close(&mut on_a), 1001);
    assert!(a.wait_for_exit(GUARD).success());
    expect_body(&mut on_b, LEFT);
    send_text(&mut on_b, "alone now");
    expect_body(&mut on_b, "alone now");
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_slow_consumer_dropped_on_one_process_is_announced_on_all() {
    let Some(redis) = Redis::start() else { return };
    let outbound = [&NO_BUDGET[..], &["--max-outbound", "65536"]].concat();
    let (a, b) = (node(&redis, &outbound), node(&redis, &outbound));
    let mut watcher = RawClient::join(&b);
    let _slow = join_without_reading(&a);
    watcher.expect_body(JOINED);
    let mut sender = RawClient::join(&a);
    watcher.expect_body(JOINED);

    // Its leave notice goes through Redis like any other: once to each, on both processes.
    let (sender_leaves, watcher_leaves) = pump_messages(&mut sender, &mut watcher);
    assert_eq!((sender_leaves, watcher_leaves), (1, 1));
    sender.send_text("done");
    sender.expect_body("done");
    watcher.expect_body("done");
}

/// Redis is judged like a client, by what its socket refused: a burst of four 64 KiB messages
/// that JSON escapes six times over (1.5 MiB of PUBLISH) is written, not taken for an outage.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_burst_from_one_client_crosses_to_the_other_process_whole() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut watcher = RawClient::join(&b);
    let mut sender = RawClient::join(&a);
    watcher.expect_body(JOINED);
    let body = "\u{1}".repeat(65536);
    let burst: Vec<u8> = (0..4).flat_map(|_| Frame::text(&body).encode()).collect();
    sender.write_raw(&burst);
    for _ in 0..4 {
        assert!(
            watcher.next_body() == body,
            "a message changed or lost on the way"
        );
    }
    assert_eq!(health(&a), "ok");
    assert!(!a
        .stderr_lines()
        .iter()
        .any(|l| l.contains("not keeping up")));
}

/// Twenty clients sending 64 KiB each at the same moment: all twenty cross.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn twenty_large_messages_at_once_all_cross() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut watcher = RawClient::join(&b);
    let mut senders: Vec<RawClient> = (0..20)
        .map(|_| {
            let sender = RawClient::join(&a);
            watcher.expect_body(JOINED);
            sender
        })
        .collect();
    let frames: Vec<Vec<u8>> = (0..20)
        .map(|i| Frame::text(&format!("{i:02}{}", "a".repeat(65534))).encode())
        .collect();
    for (sender, frame) in senders.iter_mut().zip(&frames) {
        sender.write_raw(frame);
    }
    let mut got: Vec<String> = (0..20)
        .map(|_| watcher.next_body()[..2].to_string())
        .collect();
    got.sort();
    let expected: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    assert_eq!(got, expected);
    assert_eq!(health(&a), "ok");
}

/// Shutdown publishes a leave for every client, even when their PUBLISH commands together pass
/// the bound many times over (scaled down here: 3,000 bytes for 60 leaves of about 100 each).
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn shutdown_publishes_every_leave_past_the_bound() {
    let Some(redis) = Redis::start() else { return };
    let small = ["--redis-max-unsent", "3000", "--max-outbound", "3000"];
    let (mut a, b) = (node(&redis, &small), node(&redis, &[]));
    let mut watcher = RawClient::join(&b);
    let clients: Vec<RawClient> = (0..60)
        .map(|_| {
            let client = RawClient::join(&a);
            watcher.expect_body(JOINED);
            client
        })
        .collect();
    a.signal(libc::SIGTERM);
    assert!(a.wait_for_exit(GUARD).success());
    for _ in 0..60 {
        watcher.expect_body(LEFT);
    }
    drop(clients);
    watcher.send_text("after");
    watcher.expect_body("after");
}

/// A paused Redis (SIGSTOP) keeps its connections open, so only the deadlines can tell: within
/// `--redis-timeout` the sender's own process delivers its messages locally and says
/// "degraded", the other notices when its PING goes unanswered; after SIGCONT both heal, and
/// nothing arrives twice.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_paused_redis_is_an_outage_within_the_timeout_and_heals() {
    let Some(redis) = Redis::start() else { return };
    let fast = ["--redis-timeout", "0.5"];
    let (a, b) = (node(&redis, &fast), node(&redis, &fast));
    let mut on_a = join(&a, &mut []);
    let mut on_b = join(&b, &mut [&mut on_a]);
    let signal = |sig| unsafe { libc::kill(redis.pid() as libc::pid_t, sig) };
    assert_eq!(signal(libc::SIGSTOP), 0);
    send_text(&mut on_a, "while paused");
    expect_body(&mut on_a, "while paused"); // delivered here, after the deadline
    a.wait_for_log("serving this process's clients only");
    assert_eq!(health(&a), "degraded");
    // B had nothing in flight: its quiet subscription is probed, and the PING goes unanswered.
    b.wait_for_log("PING was not answered");
    assert_eq!(signal(libc::SIGCONT), 0);
    a.wait_for_log("redis: back");
    b.wait_for_log("redis: back");
    send_text(&mut on_a, "after");
    expect_body(&mut on_a, "after"); // not "while paused" a second time
    expect_body(&mut on_b, "after"); // the paused one never crossed: it was not said through Redis
}

/// A Redis user allowed only SUBSCRIBE and PUBLISH is refused PING (`-NOPERM`): that refusal is
/// an answer, so Redis is alive, and the probe must not turn a quiet room into endless outages.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_user_without_ping_permission_is_not_an_endless_outage() {
    let Some(redis) = Redis::start() else { return };
    let acl = [
        "ACL",
        "SETUSER",
        "chat",
        "on",
        ">pw",
        "~*",
        "&*",
        "+subscribe",
        "+publish",
    ];
    assert!(redis_cli(&redis, &acl).contains("OK"));
    let url = format!("redis://chat:pw@127.0.0.1:{}", redis.port);
    let server = TestServer::start(&["--redis", &url, "--redis-timeout", "0.5"]);
    server.wait_for_log("redis: subscribed");
    let mut client = join_chat(&server, &mut []);
    // Three probes refused: past the timeout more than once over.
    wait_for_redis(&redis, |stats| rejected_pings(stats) >= 3);
    send_text(&mut client, "still one room");
    expect_body(&mut client, "still one room");
    let metrics = http_get(&server, "/metrics").body_text();
    assert!(
        metrics.contains("\nmio_chat_redis_outages_total 0\n"),
        "{metrics}"
    );
    assert!(!server.stderr_lines().iter().any(|l| l.contains("refused")));
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `rejected_calls` of PING in Redis's command statistics.
fn rejected_pings(stats: &str) -> u64 {
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_ping:"))
        .and_then(|l| l.split("rejected_calls=").nth(1))
        .and_then(|n| n.split(',').next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Asks Redis for its command statistics until `done` says so (or the guard runs out). Redis
/// has no way to push them, so this polls; each poll is one round trip.
fn wait_for_redis(redis: &Redis, done: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + GUARD;
    while !done(&redis_cli(redis, &["INFO", "commandstats"])) {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never got there"
        );
        // Only the pause between two polls: what ends the wait is Redis's own count.
        thread::sleep(std::time::Duration::from_millis(20));
    }
}
