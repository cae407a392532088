//! What a run found, as plain data: printed as readable lines, or as one JSON object with
//! `--json`. Times are in seconds, latencies in milliseconds, memory in KiB.

use std::collections::BTreeMap;
use std::fmt::Write;

use std::net::Ipv4Addr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::faults::Faults;
use crate::target::Route;

/// A latency histogram in microseconds, from 1 µs to an hour, at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The whole histogram (microseconds) in HdrHistogram's compressed V2 form, base64: what
    /// `merge` adds up, and what other HdrHistogram tools read.
    pub histogram: String,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: hist.len(),
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.5)),
            p90_ms: ms(hist.value_at_quantile(0.9)),
            p95_ms: ms(hist.value_at_quantile(0.95)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            histogram: encode_histogram(hist),
        }
    }
}

/// A histogram in HdrHistogram's compressed V2 form, base64 (empty if it cannot be encoded,
/// which for a histogram of u64 counts does not happen).
pub fn encode_histogram(hist: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(hist, &mut bytes) {
        Ok(_) => BASE64.encode(bytes),
        Err(e) => {
            log::warn!("cannot encode the latency histogram: {e:?}");
            String::new()
        }
    }
}

/// The reverse of [`encode_histogram`].
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// The targets' URLs, comma-separated as `--url` takes them.
    pub url: String,
    /// Source addresses used, all targets together (0: the kernel's choice).
    pub source_addresses: usize,
    /// Each target, in the order clients are dealt to them (client i to target i mod T).
    pub targets: Vec<TargetSetup>,
    pub max_inflight: u32,
    pub open_file_limit: u64,
    /// Which generator of how many wrote this report (`--generator I/N`; 0 of 1 alone).
    pub generator: GeneratorSetup,
    /// The scenario and its flags, as parsed: the generators of one run give the same.
    pub parameters: serde_json::Value,
    /// The run's span on the wall clock, in milliseconds since 1970: the generators of one
    /// run overlap.
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct GeneratorSetup {
    pub index: u32,
    pub of: u32,
}

/// Milliseconds since 1970 on the wall clock (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSetup {
    pub url: String,
    /// The address the URL's host resolved to.
    pub addr: String,
    pub source_addresses: usize,
}

impl Setup {
    pub fn new(routes: &[Route], max_inflight: u32, open_file_limit: u64) -> Setup {
        let mut sources: Vec<Ipv4Addr> = routes.iter().flat_map(|r| r.sources.clone()).collect();
        sources.sort_unstable();
        sources.dedup();
        Setup {
            url: routes
                .iter()
                .map(|r| r.target.url.as_str())
                .collect::<Vec<_>>()
                .join(","),
            source_addresses: sources.len(),
            targets: routes
                .iter()
                .map(|r| TargetSetup {
                    url: r.target.url.clone(),
                    addr: r.target.addr.to_string(),
                    source_addresses: r.sources.len(),
                })
                .collect(),
            max_inflight,
            open_file_limit,
            generator: GeneratorSetup { index: 0, of: 1 },
            parameters: serde_json::Value::Null,
            started_unix_ms: unix_ms(),
            ended_unix_ms: 0,
        }
    }
}

/// Connecting N clients and draining the join notices.
#[derive(Debug, Default, Serialize)]
pub struct Join {
    pub clients: usize,
    pub opened: usize,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// From the first dial until every connection opened or failed.
    pub connect_s: Option<f64>,
    /// From the first dial until the last join notice arrived.
    pub drain_s: Option<f64>,
    pub join_notices: u64,
    pub join_notices_expected: u64,
    /// The clients' notice counts are exactly 1, 2, …, N in some order: each one heard itself
    /// and everyone who joined after it.
    pub join_counts_consistent: bool,
    /// Clients lost after their handshake (dropped, reset, closed by the server).
    pub lost_after_open: usize,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
    /// The server's peak RSS so far (VmHWM), read after the drain.
    pub peak_rss_kib: u64,
}

/// One message from one client to all.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub receivers: usize,
    pub received: usize,
    /// Until the last client had it.
    pub all_received_ms: Option<f64>,
    pub latency: Latency,
}

#[derive(Debug, Default, Serialize)]
pub struct Close {
    pub closing: usize,
    pub clean: usize,
    pub close_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Traffic {
    pub senders: usize,
    pub pace: String,
    pub duration_s: f64,
    pub message_bytes: usize,
    pub sent: u64,
    pub receivers: usize,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    /// Deliveries over the time from the first send to the last delivery.
    pub deliveries_per_s: f64,
    /// Messages that can no longer come: a later one of their sender's arrived.
    pub lost: u64,
    /// Messages after the last of their sender's that arrived: still in flight when the
    /// drain's wait ran out (the server fell behind: late, or lost at the very end).
    pub in_flight_at_end: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Notices heard during the traffic (leave notices of lost clients; any other is a fault,
    /// unless other generators share the room).
    pub notices: u64,
    /// Other generators' messages (`--generator`): checked in their senders' order from the
    /// first each client saw.
    pub foreign: u64,
    /// The same by the generator that sent them (index I of N; ours 0): what `merge` checks
    /// against the others' `sent` and this report's `receivers`.
    pub foreign_from: Vec<u64>,
    /// How long after the last send the last delivery came.
    pub drain_after_send_s: f64,
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
pub struct ServerLoad {
    pub cpu_s: f64,
    pub cpu_s_per_million_deliveries: Option<f64>,
    pub peak_rss_kib: u64,
}

#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub scenario: &'static str,
    pub setup: Setup,
    pub join: Join,
    pub server_memory: Option<Memory>,
    pub probe: Option<Probe>,
    pub hold_s: f64,
    pub close: Close,
    pub generator_cpu_s: f64,
    pub timed_out: bool,
    /// Each fault found, by name: how often, and the first in words.
    pub faults: Faults,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BroadcastReport {
    pub scenario: &'static str,
    /// `--max-p99` and `--min-rate`, as the run fared (set after the run; empty if none).
    pub thresholds: Vec<Threshold>,
    /// The run second by second, from its start (connecting included) to its end.
    pub series: Vec<crate::series::Second>,
    pub setup: Setup,
    pub join: Join,
    pub traffic: Option<Traffic>,
    pub server: Option<ServerLoad>,
    pub close: Close,
    pub generator_cpu_s: f64,
    pub timed_out: bool,
    /// Each fault found, by name: how often, and the first in words.
    pub faults: Faults,
    pub problems: Vec<String>,
}

/// The watcher and the clients that stay through a churn run.
#[derive(Debug, Default, Serialize)]
pub struct Stayers {
    pub background: usize,
    /// Background clients that opened (the watcher not counted).
    pub background_opened: usize,
    pub watcher_opened: bool,
    /// From the watcher's first dial until it had heard every stayer's join notice.
    pub connect_s: Option<f64>,
    /// Stayers (watcher included) lost before the end.
    pub lost: usize,
}

/// The short-lived clients of a churn run.
#[derive(Debug, Default, Serialize)]
pub struct Cycles {
    pub cycles: u64,
    pub rate: f64,
    pub abrupt_ratio: f64,
    /// Dialled (a cycle starts when its client is dialled).
    pub started: u64,
    /// Handshakes completed.
    pub opened: u64,
    /// Left with a TCP reset.
    pub abrupt: u64,
    /// Left with a closing handshake, and of those, how many the server answered.
    pub clean: u64,
    pub clean_answered: u64,
    pub failed: u64,
    /// Failures of short-lived clients, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Open short-lived clients lost (failed after their handshake).
    pub lost_after_open: u64,
    /// From the first dial until the last short-lived client was gone.
    pub duration_s: f64,
    pub cycles_per_s: f64,
    /// Most short-lived clients alive at once.
    pub max_alive: usize,
}

/// What the watcher heard over the whole run, and what it should have.
#[derive(Debug, Default, Serialize)]
pub struct NoticeCount {
    pub joins_expected: u64,
    pub joins_seen: u64,
    pub leaves_expected: u64,
    pub leaves_seen: u64,
    /// Chat messages that were not notices (someone else's traffic).
    pub other: u64,
}

/// The server's open files and memory around the churn (taken with the stayers connected).
#[derive(Debug, Default, Serialize)]
pub struct ServerFootprint {
    pub fds_before: usize,
    pub fds_after: usize,
    pub fd_delta: i64,
    /// How long after the last short-lived client was gone the count came back (`None`: it did
    /// not within --settle).
    pub fds_back_s: Option<f64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_delta_kib: i64,
    pub peak_rss_kib: u64,
    pub cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub scenario: &'static str,
    pub setup: Setup,
    pub stayers: Stayers,
    pub cycles: Cycles,
    pub notices: NoticeCount,
    pub server: Option<ServerFootprint>,
    pub close: Close,
    pub generator_cpu_s: f64,
    pub timed_out: bool,
    /// Each fault found, by name: how often, and the first in words.
    pub faults: Faults,
    pub problems: Vec<String>,
}

/// One threshold of the run (`--max-p99`, `--min-rate`) and how the run fared.
#[derive(Debug, Clone, Serialize)]
pub struct Threshold {
    /// The flag, as given: `--max-p99`.
    pub flag: &'static str,
    pub limit: f64,
    /// What the run measured (absent: nothing measured, which fails the threshold).
    pub value: Option<f64>,
    pub passed: bool,
}

/// The thresholds asked for, against the run's p99 (ms) and delivery rate (per second).
pub fn thresholds(
    max_p99: Option<f64>,
    min_rate: Option<f64>,
    latency: &Latency,
    rate: f64,
) -> Vec<Threshold> {
    let p99 = (latency.count > 0).then_some(latency.p99_ms);
    let mut out = Vec::new();
    if let Some(limit) = max_p99 {
        let passed = p99.is_some_and(|v| v <= limit);
        out.push(Threshold {
            flag: "--max-p99",
            limit,
            value: p99,
            passed,
        });
    }
    if let Some(limit) = min_rate {
        out.push(Threshold {
            flag: "--min-rate",
            limit,
            value: Some(rate),
            passed: rate >= limit,
        });
    }
    out
}

/// The thresholds' line of the readable report, if any were given.
pub fn thresholds_line(out: &mut String, thresholds: &[Threshold]) {
    if thresholds.is_empty() {
        return;
    }
    let each: Vec<String> = thresholds
        .iter()
        .map(|t| {
            let value = t
                .value
                .map_or("nothing measured".into(), |v| format!("{v:.2}"));
            let verdict = if t.passed { "passed" } else { "FAILED" };
            format!("{} {}: {value}, {verdict}", t.flag, t.limit)
        })
        .collect();
    let _ = writeln!(out, "  thresholds   {}", each.join("; "));
}

/// `1 sender`, `2 senders`: a count with its noun in the right number.
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Prints a report on stdout: as JSON, or as the readable lines `text` gives.
pub fn emit<R: Serialize>(report: &R, json: bool, text: impl FnOnce(&R) -> String) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("error: cannot encode the report: {e}"),
        }
    } else {
        print!("{}", text(report));
    }
}

/// `3 source addresses`; none means the kernel chose one.
fn sources_text(n: usize) -> String {
    format!(
        "{} source address{}",
        n.max(1),
        if n > 1 { "es" } else { "" }
    )
}

/// The first line; `who` says what connects (`200 clients`). Several targets get a line each.
fn setup_line(out: &mut String, scenario: &str, setup: &Setup, who: &str) {
    let limits = format!(
        "{} handshakes in flight at most, {} open files",
        setup.max_inflight, setup.open_file_limit
    );
    if let [only] = &setup.targets[..] {
        let _ = writeln!(
            out,
            "mio-chat-load {scenario}: {who} -> {} ({}, {limits})",
            only.url,
            sources_text(only.source_addresses)
        );
        return;
    }
    let _ = writeln!(
        out,
        "mio-chat-load {scenario}: {who} -> {} targets, client i to target i mod {} ({limits})",
        setup.targets.len(),
        setup.targets.len()
    );
    for (t, target) in setup.targets.iter().enumerate() {
        let _ = writeln!(
            out,
            "  target {t:<5} {} ({}, {})",
            target.url,
            target.addr,
            sources_text(target.source_addresses)
        );
    }
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn join_lines(out: &mut String, join: &Join) {
    let _ = writeln!(
        out,
        "  connected    {}/{} in {}, {} failed",
        join.opened,
        join.clients,
        secs(join.connect_s),
        join.failed
    );
    for (cause, n) in &join.failures {
        let _ = writeln!(out, "    {n:>8} x {cause}");
    }
    let _ = writeln!(
        out,
        "  join flood   {}/{} notices, drained at {}{}",
        join.join_notices,
        join.join_notices_expected,
        secs(join.drain_s),
        if join.opened == 0 {
            "; nobody connected"
        } else if join.join_counts_consistent {
            "; every client got its own and all later ones"
        } else {
            "; per-client counts NOT consistent"
        }
    );
    if join.lost_after_open > 0 {
        let _ = writeln!(
            out,
            "  lost         {} after their handshake",
            plural(join.lost_after_open as u64, "client", "clients")
        );
    }
}

/// The latency line; a dash when nothing was measured (a 0.00 ms would read as fast).
pub fn latency_text(l: &Latency) -> String {
    if l.count == 0 {
        return "- (nothing delivered)".into();
    }
    format!(
        "p50 {:.2}, p90 {:.2}, p95 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}, mean {:.2} ms",
        l.p50_ms, l.p90_ms, l.p95_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    )
}

fn tail_lines(out: &mut String, close: &Close, cpu: f64, timed_out: bool, problems: &[String]) {
    let _ = writeln!(
        out,
        "  closed       {}/{} cleanly in {:.2} s",
        close.clean, close.closing, close.close_s
    );
    let _ = writeln!(out, "  generator    {cpu:.2} CPU s");
    if timed_out {
        let _ = writeln!(out, "  TIMED OUT");
    }
    if problems.is_empty() {
        let _ = writeln!(out, "  result       OK");
    } else {
        let _ = writeln!(out, "  result       FAILED: {}", problems.join("; "));
    }
}

pub fn connect_text(r: &ConnectReport) -> String {
    let mut out = String::new();
    setup_line(
        &mut out,
        r.scenario,
        &r.setup,
        &plural(r.join.clients as u64, "client", "clients"),
    );
    join_lines(&mut out, &r.join);
    if let Some(m) = &r.server_memory {
        let _ = writeln!(
            out,
            "  server RSS   {} KiB before, {} KiB after: {:.2} KiB per connection; peak so far {} KiB",
            m.rss_before_kib, m.rss_after_kib, m.kib_per_connection, m.peak_rss_kib
        );
    }
    if let Some(p) = &r.probe {
        let _ = writeln!(
            out,
            "  broadcast    1 message to {}: {} received, all within {}; per client {}",
            p.receivers,
            p.received,
            p.all_received_ms
                .map_or("-".into(), |ms| format!("{ms:.2} ms")),
            latency_text(&p.latency)
        );
    }
    let _ = writeln!(out, "  held         {:.1} s", r.hold_s);
    tail_lines(
        &mut out,
        &r.close,
        r.generator_cpu_s,
        r.timed_out,
        &r.problems,
    );
    out
}

pub fn broadcast_text(r: &BroadcastReport) -> String {
    let mut out = String::new();
    setup_line(
        &mut out,
        r.scenario,
        &r.setup,
        &plural(r.join.clients as u64, "client", "clients"),
    );
    join_lines(&mut out, &r.join);
    if let Some(t) = &r.traffic {
        let _ = writeln!(
            out,
            "  traffic      {}, {}, {:.1} s, {}-byte texts: {} sent to {}",
            plural(t.senders as u64, "sender", "senders"),
            t.pace,
            t.duration_s,
            t.message_bytes,
            t.sent,
            plural(t.receivers as u64, "receiver", "receivers")
        );
        let _ = writeln!(
            out,
            "  deliveries   {}/{} ({:.0}/s); lost {}, in flight at the end {}, duplicates {}, out of order {}, notices {}; last one {:.2} s after the last send",
            t.deliveries,
            t.expected_deliveries,
            t.deliveries_per_s,
            t.lost,
            t.in_flight_at_end,
            t.duplicates,
            t.order_violations,
            t.notices,
            t.drain_after_send_s
        );
        let _ = writeln!(out, "  latency      {}", latency_text(&t.latency));
    }
    if let Some(s) = &r.server {
        let _ = writeln!(
            out,
            "  server       {:.2} CPU s{}; peak RSS {} KiB",
            s.cpu_s,
            s.cpu_s_per_million_deliveries
                .map_or(String::new(), |c| format!(
                    " ({c:.3} per million deliveries)"
                )),
            s.peak_rss_kib
        );
    }
    thresholds_line(&mut out, &r.thresholds);
    tail_lines(
        &mut out,
        &r.close,
        r.generator_cpu_s,
        r.timed_out,
        &r.problems,
    );
    out
}

pub fn churn_text(r: &ChurnReport) -> String {
    let mut out = String::new();
    let (st, c, n) = (&r.stayers, &r.cycles, &r.notices);
    let who = format!(
        "a watcher, {} background clients, {} short-lived at {}/s",
        st.background, c.cycles, c.rate
    );
    setup_line(&mut out, r.scenario, &r.setup, &who);
    let _ = writeln!(
        out,
        "  stayers      watcher {}, background {}/{} in {}{}",
        if st.watcher_opened {
            "open"
        } else {
            "NOT open"
        },
        st.background_opened,
        st.background,
        secs(st.connect_s),
        if st.lost > 0 {
            format!("; {} lost", st.lost)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  cycles       {}/{} started, {} opened in {:.2} s: {:.0}/s (asked {}/s), at most {} alive",
        c.started, c.cycles, c.opened, c.duration_s, c.cycles_per_s, c.rate, c.max_alive
    );
    let _ = writeln!(
        out,
        "  leaving      {} reset, {} closing handshakes ({} answered); {} failed, {} lost after open",
        c.abrupt, c.clean, c.clean_answered, c.failed, c.lost_after_open
    );
    for (cause, k) in &c.failures {
        let _ = writeln!(out, "    {k:>8} x {cause}");
    }
    let _ = writeln!(
        out,
        "  notices      joins {}/{}, leaves {}/{} (seen/expected); other {}",
        n.joins_seen, n.joins_expected, n.leaves_seen, n.leaves_expected, n.other
    );
    if let Some(s) = &r.server {
        let _ = writeln!(
            out,
            "  server fds   {} before, {} after ({:+}){}",
            s.fds_before,
            s.fds_after,
            s.fd_delta,
            s.fds_back_s
                .map_or(" - NOT back to the count before".into(), |t| format!(
                    ", back {t:.2} s after the last cycle"
                ))
        );
        let _ = writeln!(
            out,
            "  server RSS   {} KiB before, {} KiB after ({:+} KiB); peak so far {} KiB; {:.2} CPU s",
            s.rss_before_kib, s.rss_after_kib, s.rss_delta_kib, s.peak_rss_kib, s.cpu_s
        );
    }
    tail_lines(
        &mut out,
        &r.close,
        r.generator_cpu_s,
        r.timed_out,
        &r.problems,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{parse_url, Route};

    fn route(url: &str, sources: &[u8]) -> Route {
        Route {
            target: parse_url(url).unwrap(),
            sources: sources
                .iter()
                .map(|&x| Ipv4Addr::new(127, 0, 0, x))
                .collect(),
        }
    }

    #[test]
    fn one_target_reads_as_before() {
        let setup = Setup::new(&[route("ws://127.0.0.1:9001/ws", &[1])], 512, 20_000);
        let mut out = String::new();
        setup_line(&mut out, "connect", &setup, "10 clients");
        assert_eq!(
            out,
            "mio-chat-load connect: 10 clients -> ws://127.0.0.1:9001/ws (1 source address, \
             512 handshakes in flight at most, 20000 open files)\n"
        );
        let json = serde_json::to_value(&setup).unwrap();
        assert_eq!(json["url"], "ws://127.0.0.1:9001/ws");
        assert_eq!(json["source_addresses"], 1);
        assert_eq!(json["targets"][0]["addr"], "127.0.0.1:9001");
    }

    #[test]
    fn several_targets_are_named() {
        let routes = [
            route("ws://127.0.0.1:9001/ws", &[1, 2]),
            route("ws://127.0.0.1:9002/ws", &[1, 2, 3]),
            route("ws://10.0.0.1:80/ws", &[]),
        ];
        let setup = Setup::new(&routes, 512, 20_000);
        let mut out = String::new();
        setup_line(&mut out, "broadcast", &setup, "10 clients");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "mio-chat-load broadcast: 10 clients -> 3 targets, client i to target i mod 3 \
                 (512 handshakes in flight at most, 20000 open files)",
                "  target 0     ws://127.0.0.1:9001/ws (127.0.0.1:9001, 2 source addresses)",
                "  target 1     ws://127.0.0.1:9002/ws (127.0.0.1:9002, 3 source addresses)",
                "  target 2     ws://10.0.0.1:80/ws (10.0.0.1:80, 1 source address)",
            ]
        );
        let json = serde_json::to_value(&setup).unwrap();
        assert_eq!(
            json["url"],
            "ws://127.0.0.1:9001/ws,ws://127.0.0.1:9002/ws,ws://10.0.0.1:80/ws"
        );
        assert_eq!(
            json["source_addresses"], 3,
            "127.0.0.1..3, each counted once"
        );
        let urls: Vec<&str> = json["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["url"].as_str().unwrap())
            .collect();
        assert_eq!(urls.len(), 3);
        assert_eq!(json["targets"][2]["source_addresses"], 0);
    }
}
