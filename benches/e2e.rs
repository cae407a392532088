//! The end-to-end benchmark: the release server and `mio-chat-load` side by side, over loopback,
//! for the standard matrix; prints one Markdown table of medians.
//!
//! ```sh
//! cargo bench --bench e2e                 # 3 runs of each scenario (about 5 minutes)
//! E2E_RUNS=5 cargo bench --bench e2e      # more runs
//! E2E_ONLY=connect cargo bench --bench e2e
//! E2E_LOAD=/tmp/old/mio-chat-load cargo bench --bench e2e   # another build of the generator
//! ```
//!
//! Every run gets a fresh server (so memory figures start from the same place) and its figures
//! come from the load generator's `--json` report, which reads the server's memory and CPU time
//! from /proc. A run that loses, duplicates or reorders anything fails the whole benchmark.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;

use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_mio-chat");
const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

/// The generator to run: this build's, or the one `E2E_LOAD` names, so that an old and a new
/// generator can take turns against the same server (the machine is too noisy for runs of one
/// an hour apart from runs of the other to compare).
fn load_binary() -> String {
    std::env::var("E2E_LOAD").unwrap_or_else(|_| LOAD.to_string())
}

/// One row of the matrix: a name and the load generator's arguments.
struct Scenario {
    name: &'static str,
    args: &'static [&'static str],
}

const MATRIX: &[Scenario] = &[
    Scenario {
        name: "connect -n 10000",
        args: &["connect", "-n", "10000"],
    },
    Scenario {
        name: "broadcast -n 100 --senders 10, max rate",
        args: &[
            "broadcast",
            "-n",
            "100",
            "--senders",
            "10",
            "--window",
            "64",
            "--duration",
            "10",
            "--size",
            "64",
        ],
    },
    Scenario {
        name: "broadcast -n 1000 --senders 1 --rate 100",
        args: &[
            "broadcast",
            "-n",
            "1000",
            "--senders",
            "1",
            "--rate",
            "100",
            "--duration",
            "10",
            "--size",
            "64",
        ],
    },
    Scenario {
        name: "broadcast -n 5000 --senders 1 --rate 20",
        args: &[
            "broadcast",
            "-n",
            "5000",
            "--senders",
            "1",
            "--rate",
            "20",
            "--duration",
            "10",
            "--size",
            "64",
        ],
    },
];

/// A release server on a free port, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(SERVER)
            .args(["--addr", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mio-chat");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .to_string();
        // Keep draining its log so it never blocks on a full pipe.
        thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs one scenario once against a fresh server and returns the generator's JSON report.
fn run_once(scenario: &Scenario) -> Value {
    let server = Server::start();
    let out = Command::new(load_binary())
        .args(scenario.args)
        .args(["--url", &format!("ws://{}/ws", server.addr)])
        .args(["--server-pid", &server.child.id().to_string()])
        .args(["--json", "--quiet"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run mio-chat-load");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: no JSON report ({e}): {}",
            scenario.name,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        out.status.success(),
        "{}: the run found problems: {}",
        scenario.name,
        report["problems"]
    );
    report
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median over runs of the number at `path` (e.g. `traffic/latency/p99_ms`).
fn med(reports: &[Value], path: &str) -> f64 {
    median(
        reports
            .iter()
            .map(|r| r.pointer(&format!("/{path}")).and_then(Value::as_f64))
            .map(|v| v.unwrap_or_else(|| panic!("no {path} in the report")))
            .collect(),
    )
}

fn row(name: &str, runs: usize, reports: &[Value]) -> String {
    if reports[0]["scenario"] == "connect" {
        format!(
            "| {name} | {runs} | join flood drained in {:.2} s; one broadcast to all in {:.1} ms | \
             {:.2} KiB per connection (peak RSS {:.1} MiB) |",
            med(reports, "join/drain_s"),
            med(reports, "probe/all_received_ms"),
            med(reports, "server_memory/kib_per_connection"),
            med(reports, "server_memory/peak_rss_kib") / 1024.0,
        )
    } else {
        format!(
            "| {name} | {runs} | {:.0} deliveries/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, \
             max {:.2} ms; lost {} | {:.3} CPU s per 1M deliveries (peak RSS {:.1} MiB) |",
            med(reports, "traffic/deliveries_per_s"),
            med(reports, "traffic/latency/p50_ms"),
            med(reports, "traffic/latency/p99_ms"),
            med(reports, "traffic/latency/p999_ms"),
            med(reports, "traffic/latency/max_ms"),
            med(reports, "traffic/lost"),
            med(reports, "server/cpu_s_per_million_deliveries"),
            med(reports, "server/peak_rss_kib") / 1024.0,
        )
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter like criterion's.
    let filter = std::env::var("E2E_ONLY")
        .ok()
        .or_else(|| std::env::args().skip(1).find(|a| !a.starts_with("--")));
    let runs: usize = std::env::var("E2E_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut table = vec![
        format!("| scenario | runs | medians | server |"),
        "| --- | --- | --- | --- |".to_string(),
    ];
    for scenario in MATRIX {
        if filter
            .as_ref()
            .is_some_and(|f| !scenario.name.contains(f.as_str()))
        {
            continue;
        }
        let reports: Vec<Value> = (0..runs)
            .map(|i| {
                eprintln!("e2e: {} (run {}/{runs})", scenario.name, i + 1);
                run_once(scenario)
            })
            .collect();
        table.push(row(scenario.name, runs, &reports));
        eprintln!("{}", table.last().expect("a row"));
    }
    println!("{}", table.join("\n"));
}
