//! The end-to-end benchmark: the release server and `mio-chat-load` side by side, over loopback,
//! for the standard matrix; prints one Markdown table of medians.
//!
//! ```sh
//! cargo bench --bench e2e                 # 3 runs of each scenario (about 5 minutes)
//! E2E_RUNS=5 cargo bench --bench e2e      # more runs
//! E2E_ONLY=connect cargo bench --bench e2e
//! E2E_LOAD=/tmp/old/mio-chat-load cargo bench --bench e2e   # another build of the generator
//! E2E_SERVER=/tmp/old/mio-chat cargo bench --bench e2e      # another build of the server
//! E2E_CLUSTER=1 cargo bench --bench e2e   # the broadcasts on 1 process, 1 with --redis, 2 + Redis
//! ```
//!
//! With `E2E_CLUSTER=1` each broadcast runs in three setups: one process; one process with
//! `--redis` (the cost of the backplane); two processes joined through Redis, the clients dealt
//! over both. The server column then counts the CPU time of every server process and of
//! `redis-server` (from /proc), per million deliveries.
//!
//! The servers run with the per-client budget off (`MIO_CHAT_CLIENT_RATE=0`,
//! `MIO_CHAT_CLIENT_BYTES_RATE=0`: variables, which an older `E2E_SERVER` ignores): a max-rate
//! sender says thousands of messages a second, far past the default budget of 20.
//!
//! Every run gets a fresh server (so memory figures start from the same place) and its figures
//! come from the load generator's `--json` report, which reads the server's memory and CPU time
//! from /proc. A run that loses, duplicates or reorders anything fails the whole benchmark.

use std::process::{Command, Stdio};

use serde_json::Value;

#[allow(dead_code)] // shared with the tests, which use all of it
#[path = "../tests/it/common/redis.rs"]
mod redis;
#[path = "common/server.rs"]
mod server;
#[allow(dead_code)] // redis.rs's way to skip outside CI where redis-server is missing
#[path = "../tests/it/common/tool.rs"]
mod tool;
use redis::Redis;
use server::Server;

const SERVER: &str = env!("CARGO_BIN_EXE_mio-chat");
const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

/// The generator to run: this build's, or the one `E2E_LOAD` names, so that an old and a new
/// generator can take turns against the same server (the machine is too noisy for runs of one
/// an hour apart from runs of the other to compare).
fn load_binary() -> String {
    std::env::var("E2E_LOAD").unwrap_or_else(|_| LOAD.to_string())
}

/// The server to run: this build's, or the one `E2E_SERVER` names (old and new builds of the
/// server taking turns, for the same reason).
fn server_binary() -> String {
    std::env::var("E2E_SERVER").unwrap_or_else(|_| SERVER.to_string())
}

/// Every server here runs with the per-client budget off: the senders say far more than a person.
const NO_BUDGET: &[(&str, &str)] = &[
    ("MIO_CHAT_CLIENT_RATE", "0"),
    ("MIO_CHAT_CLIENT_BYTES_RATE", "0"),
];

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

/// Where the clients go (`E2E_CLUSTER`): one process, or several joined through Redis.
struct Setup {
    name: &'static str,
    processes: usize,
    redis: bool,
}

const ONE: Setup = Setup {
    name: "1 process",
    processes: 1,
    redis: false,
};

const CLUSTER_SETUPS: &[Setup] = &[
    ONE,
    Setup {
        name: "1 process, --redis",
        processes: 1,
        redis: true,
    },
    Setup {
        name: "2 processes + Redis",
        processes: 2,
        redis: true,
    },
];

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12] // utime and stime: fields 14 and 15 of the whole line
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Runs one scenario once against fresh servers and returns the generator's JSON report, with
/// `cluster_cpu_s` added: the CPU time of the servers and Redis during the run.
fn run_once(scenario: &Scenario, setup: &Setup) -> Value {
    let redis = setup
        .redis
        .then(|| Redis::start().expect("redis-server is needed for E2E_CLUSTER"));
    let redis_url = redis.as_ref().map(Redis::url);
    let (args, ready) = match &redis_url {
        Some(url) => (vec!["--redis", url.as_str()], "redis: subscribed"),
        None => (vec![], "listening on"),
    };
    let servers: Vec<Server> = (0..setup.processes)
        .map(|_| Server::start(&server_binary(), &args, NO_BUDGET, ready))
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("ws://{}/ws", s.addr))
        .collect();
    let mut pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    pids.extend(redis.as_ref().map(Redis::pid));
    let cpu_before: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    let out = Command::new(load_binary())
        .args(scenario.args)
        .args(["--url", &urls.join(",")])
        .args(["--server-pid", &pids[0].to_string()])
        .args(["--json", "--quiet"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run mio-chat-load");
    let cpu_after: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    let mut report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
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
    report["cluster_cpu_s"] = Value::from(cpu_after - cpu_before);
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

/// A row of the `E2E_CLUSTER` table: what the clients saw, and the CPU of every server process
/// and Redis together.
fn cluster_row(name: &str, runs: usize, reports: &[Value]) -> String {
    let cpu_per_million = median(
        reports
            .iter()
            .map(|r| {
                let deliveries = r
                    .pointer("/traffic/deliveries")
                    .and_then(Value::as_f64)
                    .expect("deliveries in the report");
                r["cluster_cpu_s"].as_f64().unwrap_or(f64::NAN) / deliveries * 1e6
            })
            .collect(),
    );
    format!(
        "| {name} | {runs} | {:.0} deliveries/s; p50 {:.2} ms, p99 {:.2} ms; lost {} | \
         {cpu_per_million:.3} CPU s per 1M deliveries (servers + Redis) |",
        med(reports, "traffic/deliveries_per_s"),
        med(reports, "traffic/latency/p50_ms"),
        med(reports, "traffic/latency/p99_ms"),
        med(reports, "traffic/lost"),
    )
}

/// The median over runs of the generator's own CPU seconds (the whole run: connecting,
/// checking every delivery, closing) per million deliveries: what checking costs.
fn generator_per_million(reports: &[Value]) -> f64 {
    median(
        reports
            .iter()
            .map(|r| {
                let deliveries = r
                    .pointer("/traffic/deliveries")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN);
                r["generator_cpu_s"].as_f64().unwrap_or(f64::NAN) / deliveries * 1e6
            })
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
             max {:.2} ms; lost {}; generator {:.3} CPU s per 1M | {:.3} CPU s per 1M \
             deliveries (peak RSS {:.1} MiB) |",
            med(reports, "traffic/deliveries_per_s"),
            med(reports, "traffic/latency/p50_ms"),
            med(reports, "traffic/latency/p99_ms"),
            med(reports, "traffic/latency/p999_ms"),
            med(reports, "traffic/latency/max_ms"),
            med(reports, "traffic/lost"),
            generator_per_million(reports),
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
    let cluster = std::env::var_os("E2E_CLUSTER").is_some();
    let setups = if cluster { CLUSTER_SETUPS } else { &[ONE] };
    for scenario in MATRIX {
        let skipped = filter
            .as_ref()
            .is_some_and(|f| !scenario.name.contains(f.as_str()));
        if skipped || (cluster && scenario.args[0] != "broadcast") {
            continue;
        }
        for setup in setups {
            let name = match cluster {
                true => format!("{}: {}", scenario.name, setup.name),
                false => scenario.name.to_string(),
            };
            let reports: Vec<Value> = (0..runs)
                .map(|i| {
                    eprintln!("e2e: {name} (run {}/{runs})", i + 1);
                    run_once(scenario, setup)
                })
                .collect();
            table.push(match cluster {
                true => cluster_row(&name, runs, &reports),
                false => row(&name, runs, &reports),
            });
            eprintln!("{}", table.last().expect("a row"));
        }
    }
    println!("{}", table.join("\n"));
}
