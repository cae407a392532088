//! The fair-share benchmark (issue 11, finding 6): does one flooding client still hurt ordinary
//! readers? Not run in CI; prints one Markdown table of medians.
//!
//! ```sh
//! cargo bench --bench flood                  # 3 runs of each setup (about 4 minutes)
//! FLOOD_RUNS=5 cargo bench --bench flood
//! FLOOD_SIZE=64 cargo bench --bench flood    # the flooder's message size (default 1000 bytes)
//! ```
//!
//! The readers are `mio-chat-load broadcast -n 100 --senders 10 --rate 10 --duration 10
//! --size 64 --generator 0/2`: 100 clients, ten of them saying 10 messages a second each (100 a second into the
//! room; each sender well inside the default budget of 20 a second, as people are). Their p99
//! latency is compared in three setups, each run against a fresh release server:
//!
//! - **quiet**: no flooder, default flags;
//! - **flood, budget off**: `--client-rate 0 --client-bytes-rate 0`, and one more client that
//!   joins a second after the readers and writes text frames as fast as its socket takes them
//!   (a writer thread that never waits) while reading all it is sent (a reader thread, so it is
//!   never a slow consumer itself);
//! - **flood, budget on**: the same flooder against the default budget.
//!
//! After each run the server's `/metrics` gives the slow-consumer drops, the throttle holds and
//! the messages received (less the readers' own: the flooder's messages the room carried). The
//! setups take turns run by run, so that a noisy machine spreads over all of them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio_chat::frame::OpCode;
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_mio-chat");
const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

const READERS: &[&str] = &[
    "broadcast",
    "-n",
    "100",
    "--senders",
    "10",
    "--rate",
    "10",
    "--duration",
    "10",
    "--size",
    "64",
    "--generator",
    "0/2",
];

struct Setup {
    name: &'static str,
    server_args: &'static [&'static str],
    flood: bool,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "quiet (no flooder)",
        server_args: &[],
        flood: false,
    },
    Setup {
        name: "flood, budget off",
        server_args: &["--client-rate", "0", "--client-bytes-rate", "0"],
        flood: true,
    },
    Setup {
        name: "flood, budget on (defaults)",
        server_args: &[],
        flood: true,
    },
];

#[path = "common/server.rs"]
mod server;
use server::Server;

/// One `/metrics` sample of `server` (0 if absent: labelled counters appear once they count).
fn metric(server: &Server, series: &str) -> f64 {
    let mut stream = TcpStream::connect(&server.addr).expect("connect for /metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream.write_all(request.as_bytes()).expect("ask /metrics");
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap_or(f64::NAN))
}

/// One client writing masked text frames of `size` bytes as fast as its socket takes them.
struct Flooder {
    socket: TcpStream,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Flooder {
    fn start(addr: &str, size: usize) -> Flooder {
        let mut socket = TcpStream::connect(addr).expect("connect the flooder");
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).expect("upgrade");
        // Whatever follows the 101 is the reader's to drain.
        let chunk: Vec<u8> = (0..64).flat_map(|_| masked_text(size)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (mut out, mut input) = (socket.try_clone().unwrap(), socket.try_clone().unwrap());
        let writing = Arc::clone(&stop);
        let writer = thread::spawn(move || {
            while !writing.load(Ordering::Relaxed) && out.write_all(&chunk).is_ok() {}
        });
        let reader = thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            while matches!(input.read(&mut buf), Ok(n) if n > 0) {}
        });
        Flooder {
            socket,
            stop,
            threads: vec![writer, reader],
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A text frame of `size` bytes (a foreign stamp, then `f`), masked with a zero key (the payload
/// stays as it is).
fn masked_text(size: usize) -> Vec<u8> {
    let mut text = FOREIGN_STAMP.to_vec();
    text.resize(size.max(FOREIGN_STAMP.len()), b'f');
    let mut frame = Vec::new();
    mio_chat::frame::push_client_frame(&mut frame, OpCode::Text, &text, [0; 4]);
    frame
}

/// The flooder's messages carry a stamp of a sender no reader has: the readers run as generator
/// 0 of 2 (`--generator 0/2`), so they count these as another generator's (`foreign`) instead of
/// stopping at a stray message, and still check every message of their own.
const FOREIGN_STAMP: &[u8] = b"s=4000000000 q=0 t=0 ";

/// One run: the readers' report, with the server's counters added under `server_metrics`.
fn run_once(setup: &Setup, flood_size: usize) -> Value {
    let server = Server::start(SERVER, setup.server_args, &[], "listening on");
    let url = format!("ws://{}/ws", server.addr);
    let readers = Command::new(LOAD)
        .args(READERS)
        .args(["--url", &url, "--json", "--quiet"])
        .args(["--server-pid", &server.child.id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mio-chat-load");
    // The readers join in well under a second; the flood starts after, and lasts to the end.
    thread::sleep(Duration::from_secs(1));
    let flood_start = Instant::now();
    let flooder = setup
        .flood
        .then(|| Flooder::start(&server.addr, flood_size));
    let out = readers.wait_with_output().expect("mio-chat-load");
    let flood_s = flood_start.elapsed().as_secs_f64();
    let mut report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let sent = report
        .pointer("/traffic/sent")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    report["server_metrics"] = serde_json::json!({
        "slow_consumer_drops": metric(&server, "mio_chat_clients_dropped_total{reason=\"slow_consumer\"}"),
        "throttled": metric(&server, "mio_chat_clients_throttled_total"),
        "flood_per_s": (metric(&server, "mio_chat_messages_received_total") - sent) / flood_s,
    });
    if let Some(flooder) = flooder {
        flooder.stop();
    }
    report
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// The median over runs of the number at `path`; a missing one (no traffic) is NaN.
fn med(reports: &[Value], path: &str) -> f64 {
    median(
        reports
            .iter()
            .map(|r| r.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN))
            .collect(),
    )
}

fn row(name: &str, reports: &[Value]) -> String {
    format!(
        "| {name} | {} | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; lost {} | {} | {:.0} | {} |",
        reports.len(),
        med(reports, "/traffic/latency/p50_ms"),
        med(reports, "/traffic/latency/p99_ms"),
        med(reports, "/traffic/latency/max_ms"),
        med(reports, "/traffic/lost"),
        med(reports, "/server_metrics/slow_consumer_drops"),
        med(reports, "/server_metrics/flood_per_s"),
        med(reports, "/server_metrics/throttled"),
    )
}

fn main() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, flood_size) = (env("FLOOD_RUNS", 3), env("FLOOD_SIZE", 1000));
    let mut reports: Vec<Vec<Value>> = SETUPS.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (setup, reports) in SETUPS.iter().zip(&mut reports) {
            eprintln!("flood: {} (run {}/{runs})", setup.name, i + 1);
            let report = run_once(setup, flood_size);
            eprintln!("  {}", report["server_metrics"]);
            reports.push(report);
        }
    }
    let mut table = vec![
        "| setup | runs | readers (medians) | slow-consumer drops | flood msgs/s carried | holds |"
            .to_string(),
        "| --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    for (setup, reports) in SETUPS.iter().zip(&reports) {
        table.push(row(setup.name, reports));
    }
    println!("{}", table.join("\n"));
}
