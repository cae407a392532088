//! What an operator sees: `GET /metrics` in the Prometheus text format, with counters that add
//! up after a known scenario, the process figures every client library exports, the build's
//! labels, every family passing `promtool check metrics` (ignored where promtool is not
//! installed; CI installs it), and `--log-format json` lines that carry each client's token and
//! peer.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Scrapes `/metrics` and returns the exposition text.
fn scrape(server: &TestServer) -> String {
    let response = http_get(server, "/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response.body_text()
}

/// The value of one sample, named with its labels exactly as exposed.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

/// Runs `promtool check metrics` on the text.
fn promtool_check(text: &str) {
    let promtool = common::tool::require("promtool", "prometheus").expect("promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every family the server can export, with a label of each kind: a client dropped for a
/// protocol error, a 404, the backplane's figures (Redis unreachable) and the process's.
#[test]
#[cfg_attr(not(any(ci, have_promtool)), ignore = "promtool is not installed")]
fn every_metric_family_passes_promtool_check_metrics() {
    let server = TestServer::start(&["--redis", "redis://127.0.0.1:1"]);
    let mut client = RawClient::join(&server);
    client.send(&Frame::binary(b"\x01"));
    client.expect_close_code(1003);
    assert_eq!(http_get(&server, "/nope").status, 404);
    let text = scrape(&server);
    for family in [
        "mio_chat_clients_dropped_total{",
        "mio_chat_http_responses_total{",
        "mio_chat_redis_up ",
        "mio_chat_build_info{",
        "process_open_fds ",
    ] {
        assert!(text.contains(family), "no {family} in:\n{text}");
    }
    promtool_check(&text);
}

/// With TLS on, the certificate's gauge too: from the library's renderer, with a certificate
/// made for it (`tests/it/tls.rs` scrapes the gauge from a TLS server, before and after SIGHUP).
#[test]
#[cfg_attr(not(any(ci, have_promtool)), ignore = "promtool is not installed")]
fn the_certificate_gauge_passes_promtool_check_metrics() {
    let path = std::env::temp_dir().join(format!("mio-chat-obs-{}.pem", std::process::id()));
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    std::fs::write(&path, made.cert.pem()).expect("write the certificate");
    let mut metrics = mio_chat::metrics::Metrics::default();
    metrics.certificate_loaded(&path);
    let _ = std::fs::remove_file(&path);
    let text = metrics.render(mio_chat::metrics::Gauges::default());
    assert!(
        text.contains("\nmio_chat_tls_certificate_expiry_timestamp_seconds "),
        "{text}"
    );
    promtool_check(&text);
}

/// The figures of the process, as every Prometheus client library names them: present, in
/// their units, and following what the process does (descriptors for connections).
#[test]
fn process_figures_follow_the_process() {
    let server = TestServer::start_with(&[], &[], |command| open_file_limit(command, 4096));
    let before = scrape(&server);
    // The server raises its soft limit to the hard one: 4096 here.
    assert_eq!(sample(&before, "process_max_fds"), 4096.0);
    let resident = sample(&before, "process_resident_memory_bytes");
    assert!(resident > 1e6, "resident {resident} bytes");
    assert!(sample(&before, "process_virtual_memory_bytes") >= resident);
    assert!(sample(&before, "process_cpu_seconds_total") >= 0.0);
    let clients: Vec<RawClient> = (0..20).map(|_| RawClient::join(&server)).collect();
    let after = scrape(&server);
    assert!(
        sample(&after, "process_open_fds") >= sample(&before, "process_open_fds") + 20.0,
        "20 more clients, 20 more descriptors:\n{before}\n{after}"
    );
    assert!(
        sample(&after, "process_cpu_seconds_total") >= sample(&before, "process_cpu_seconds_total")
    );
    drop(clients);
}

/// The build's labels say what is on; a server without TLS has no certificate gauge (the
/// gauge with TLS is checked in `tests/it/tls.rs`).
#[test]
fn build_info_says_the_version_and_what_is_on() {
    let version = env!("CARGO_PKG_VERSION");
    let plain = scrape(&TestServer::start(&[]));
    assert_eq!(
        sample(
            &plain,
            &format!("mio_chat_build_info{{version=\"{version}\",tls=\"false\",redis=\"false\"}}")
        ),
        1.0
    );
    assert!(
        !plain.contains("mio_chat_tls_certificate_expiry"),
        "{plain}"
    );
    let clustered = scrape(&TestServer::start(&["--redis", "redis://127.0.0.1:1"]));
    assert_eq!(
        sample(
            &clustered,
            &format!("mio_chat_build_info{{version=\"{version}\",tls=\"false\",redis=\"true\"}}")
        ),
        1.0
    );
}

#[test]
fn metrics_add_up_after_three_clients_and_five_messages() {
    let server = TestServer::start(&[]);
    let mut a = RawClient::join(&server);
    let mut b = RawClient::join(&server);
    a.expect_body(JOINED);
    let mut c = RawClient::join(&server);
    for client in [&mut a, &mut b] {
        client.expect_body(JOINED);
    }
    // One message at a time, each heard by all before the next: messages from different
    // sockets have no order of their own until the server reads them.
    for i in 0..5 {
        [&mut a, &mut b, &mut c][i % 3].send_text(&format!("m{i}"));
        for client in [&mut a, &mut b, &mut c] {
            client.expect_body(&format!("m{i}"));
        }
    }

    let text = scrape(&server);
    // Join notices: 1 + 2 + 3 deliveries; messages: 5 to each of 3 clients.
    assert_eq!(sample(&text, "mio_chat_frames_delivered_total"), 21.0);
    assert_eq!(sample(&text, "mio_chat_messages_received_total"), 5.0);
    assert_eq!(
        sample(&text, "mio_chat_connections{state=\"websocket\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "mio_chat_connections{state=\"handshaking\"}"),
        0.0
    );
    // Three clients and this scrape.
    assert_eq!(sample(&text, "mio_chat_connections_accepted_total"), 4.0);
    assert!(sample(&text, "mio_chat_bytes_written_total") > 0.0);
    assert!(sample(&text, "mio_chat_loop_turn_seconds_count") > 0.0);
    assert!(sample(&text, "process_start_time_seconds") > 1.7e9);

    // A client breaking a rule, and a request for a page that is not there.
    c.send(&Frame::binary(b"\x01"));
    c.expect_close_code(1003);
    a.expect_body(LEFT);
    assert_eq!(http_get(&server, "/nope").status, 404);
    let text = scrape(&server);
    assert_eq!(
        sample(
            &text,
            "mio_chat_clients_dropped_total{reason=\"protocol_error\",code=\"1003\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "mio_chat_http_responses_total{status=\"404\"}"),
        1.0
    );
    // The first scrape is counted once it has been answered.
    assert_eq!(
        sample(&text, "mio_chat_http_responses_total{status=\"200\"}"),
        1.0
    );
    assert_eq!(sample(&text, "mio_chat_frames_delivered_total"), 23.0); // + 2 leave notices
}

#[test]
fn ping_timeouts_are_counted() {
    let server = TestServer::start(&["--ping-interval", "0.2"]);
    // tungstenite answers the server's pings whenever it reads; the raw client never does.
    let mut watcher = ws_connect(&server, "/ws");
    expect_body(&mut watcher, JOINED);
    let mut silent = RawClient::connect(&server);
    silent.expect_body(JOINED);
    expect_body(&mut watcher, JOINED);
    expect_body(&mut watcher, LEFT); // the silent one, dropped after two intervals
    let text = scrape(&server);
    assert_eq!(
        sample(
            &text,
            "mio_chat_clients_dropped_total{reason=\"ping_timeout\"}"
        ),
        1.0
    );
}

#[test]
fn slow_consumers_are_counted() {
    let server = TestServer::start(&["--max-outbound", "65536"]);
    let mut watcher = RawClient::join(&server);
    // A client that never reads, while the watcher talks until the server gives up on it.
    let mut stalled = tcp_connect_small_rcvbuf(&server, 4096);
    stalled
        .write_all(&Handshake::new(&server).to_bytes())
        .unwrap();
    watcher.expect_body(JOINED);
    let big = "x".repeat(30_000);
    for said in 0.. {
        assert!(said < 2000, "the stalled client was never dropped");
        watcher.send_text(&big);
        // The watcher reads its own message back; once the stalled client has been dropped,
        // its leave notice comes next.
        match watcher.next_body() {
            body if body == LEFT => break,
            body => assert_eq!(body.len(), big.len()),
        }
    }
    let text = scrape(&server);
    assert_eq!(
        sample(
            &text,
            "mio_chat_clients_dropped_total{reason=\"slow_consumer\"}"
        ),
        1.0
    );
}

#[test]
fn json_logs_carry_token_and_peer_on_connection_lines() {
    let server = TestServer::start_with_env(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    let mut client = RawClient::join(&server);
    let local = client.stream().local_addr().unwrap().to_string();
    client.send_text("hello");
    client.expect_body("hello");
    drop(client);
    server.wait_for_log("\"closed\"");
    let lines = server.stderr_lines();
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(first["msg"], format!("listening on {}", server.addr()));
    assert_eq!(first["level"], "info");
    let mut ours = 0;
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["ts"].is_string() && value["msg"].is_string(),
            "{line}"
        );
        if value["peer"] == local.as_str() {
            assert!(value["token"].is_u64(), "{line}");
            ours += 1;
        }
    }
    assert!(
        ours >= 3,
        "accepted, ending and closed lines for our client: {lines:#?}"
    );
}
