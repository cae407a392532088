//! `mio-chat-load`: a load generator for mio-chat, built like the server itself: one thread,
//! one `mio::Poll`, every client a small state machine in a `Slab`. What it checks, and what
//! its verdict cannot see: docs/load-generator.md.
//!
//! It lives beside the server's code, in `loadgen/`: a `[[bin]]` of the same package behind
//! the default feature `loadgen`, so that an embedder of the library (`default-features =
//! false`) compiles neither it nor the dependencies only it needs (hdrhistogram, base64). Not
//! a crate of its own in a workspace: the tests and benchmarks that run it find it as
//! `CARGO_BIN_EXE_mio-chat-load`, which Cargo gives only to the package's own targets, and it
//! speaks through the library's own frame and message code either way.
//!
//! A reading order:
//! 1. [`args`]: the scenarios and their flags; [`target`]: where to connect (one server or the
//!    processes of a cluster, round robin), from which source addresses, and whether N
//!    connections fit at all.
//! 2. [`fleet`]: the event loop that dials, reads and writes; [`client`]: one connection's
//!    state machine (connect, handshake, open, closing).
//! 3. [`handshake`], [`wire`] and [`chat`]: the bytes: the upgrade, frames both ways, the
//!    JSON envelope and our stamped messages; [`order`]: the exactly-once-in-order check.
//! 4. [`scenario`]: `connect`, `broadcast` and `churn`, phase by phase; [`check`] and
//!    [`faults`]: what every delivery is checked for, and what a run found wrong; [`report`],
//!    [`progress`] and [`procfs`]: what is shown, and what the kernel says about the server;
//!    [`merge`]: several generators' reports as one.

mod args;
mod chat;
mod check;
mod client;
mod faults;
mod fleet;
mod handshake;
mod html;
mod merge;
mod order;
mod procfs;
mod progress;
mod report;
mod scenario;
mod series;
mod target;
mod tls;
mod wire;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use log::warn;

use crate::args::{Args, Generator, Scenario};
use crate::fleet::Fleet;
use crate::procfs::Proc;
use crate::progress::Progress;
use crate::report::Setup;
use crate::scenario::broadcast::{Pace, Plan};
use crate::scenario::Run;

/// How a run ended, as its exit status: 0 passed, 1 problems found (or the run could not
/// start), 2 a usage error (clap's), 3 only thresholds failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Passed,
    Problems,
    Thresholds,
}

impl Verdict {
    fn of(problems: &[String], thresholds: &[report::Threshold]) -> Verdict {
        if !problems.is_empty() {
            Verdict::Problems
        } else if thresholds.iter().any(|t| !t.passed) {
            Verdict::Thresholds
        } else {
            Verdict::Passed
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match start(&args) {
        Ok(Verdict::Passed) => ExitCode::SUCCESS,
        Ok(Verdict::Problems) => ExitCode::FAILURE,
        Ok(Verdict::Thresholds) => ExitCode::from(3),
        Err(message) => {
            eprintln!("mio-chat-load: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks that the run can work at all, then runs it.
fn start(args: &Args) -> Result<Verdict, String> {
    let common = &args.common;
    let gated = common.max_p99.is_some() || common.min_rate.is_some() || common.html.is_some();
    if gated && !matches!(args.scenario, Scenario::Broadcast(_) | Scenario::Merge(_)) {
        return Err("--max-p99, --min-rate and --html apply to broadcast and merge".into());
    }
    if let Scenario::Merge(m) = &args.scenario {
        let mut merged = merge::merge(&m.reports)?;
        merged.thresholds = report::thresholds(
            common.max_p99,
            common.min_rate,
            &merged.latency,
            merged.deliveries_per_s,
        );
        report::emit(&merged, common.json, merge::text);
        if let Some(path) = &common.html {
            html::write(path, &html::of_merge(&merged))?;
        }
        return Ok(Verdict::of(&merged.problems, &merged.thresholds));
    }
    // Sockets open at once, and ports taken over the run (churn reuses them).
    let (clients, ports) = match &args.scenario {
        Scenario::Connect(c) => (c.clients as usize, c.clients as usize),
        Scenario::Broadcast(b) => (b.clients as usize, b.clients as usize),
        Scenario::Churn(c) => {
            scenario::churn::socket_needs(c.clients, c.cycles, c.rate, common.max_inflight)
        }
        Scenario::Merge(_) => (0, 0),
    };
    let mut targets = target::parse_urls(&common.url)?;
    tls::secure(&mut targets, common.ca.as_deref(), common.insecure)?;
    for target in &targets {
        target::check_local(&target.addr, common.allow_remote)?;
    }
    let fd_limit = mio_chat::config::raise_open_file_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-file limit: {e}");
        1024
    });
    target::check_fd_budget(clients, fd_limit)?;
    let routes = target::plan_routes(targets, ports, common.sources)?;
    if let Some(pid) = common.server_pid {
        let server = Proc(Some(pid));
        server
            .rss_kib()
            .map_err(|e| format!("--server-pid {pid}: {e}"))?;
        let ports: Vec<u16> = routes.iter().map(|r| r.target.addr.port()).collect();
        let listening = ports.iter().map(|&port| server.listens_on(port));
        if listening.clone().all(|l| l == Some(false)) {
            eprintln!(
                "mio-chat-load: warning: --server-pid {pid} is not listening on the target's \
                 port ({ports:?}): its memory and CPU are that process's, not the server's \
                 (a proxy in front? then name the server behind it)"
            );
        }
    }
    let generator = common.generator.unwrap_or(Generator::ALONE);
    let mut setup = Setup::new(&routes, common.max_inflight, fd_limit);
    setup.generator = report::GeneratorSetup {
        index: generator.index,
        of: generator.count,
    };
    setup.parameters = serde_json::to_value(&args.scenario).unwrap_or_default();
    let fleet = Fleet::new(routes, common.max_inflight as usize)
        .map_err(|e| format!("cannot create the event loop: {e}"))?;
    let now = Instant::now();
    let mut run = Run {
        fleet,
        setup,
        epoch: now,
        deadline: now + common.timeout,
        timeout: common.timeout,
        timed_out: false,
        progress: Progress::new(!common.quiet),
        server: common.server_pid.map(|pid| Proc(Some(pid))),
        faults: Default::default(),
        generator,
        all_delivered: false,
        series: series::Series::new(now),
    };
    run_scenario(args, &mut run, clients)
}

/// Runs the scenario asked for.
fn run_scenario(args: &Args, run: &mut Run, clients: usize) -> Result<Verdict, String> {
    let common = &args.common;
    let failed = |e: std::io::Error| format!("the event loop failed: {e}");
    match &args.scenario {
        Scenario::Connect(c) => {
            let report = scenario::connect::run(run, clients, c.hold).map_err(failed)?;
            report::emit(&report, common.json, report::connect_text);
            Ok(Verdict::of(&report.problems, &[]))
        }
        Scenario::Broadcast(b) => {
            let pace = match (b.rate, b.window) {
                (Some(rate), _) => Pace::Rate(rate),
                (None, Some(window)) => Pace::Window(window),
                (None, None) => return Err("give --rate or --window".into()),
            };
            if b.senders > b.clients {
                return Err(format!("--senders {} exceeds -n {}", b.senders, b.clients));
            }
            let plan = Plan {
                clients,
                senders: b.senders as usize,
                pace,
                duration: b.duration,
                size: b.size,
                ramp_up: b.ramp_up,
            };
            let mut report = scenario::broadcast::run(run, &plan).map_err(failed)?;
            if let Some(t) = &report.traffic {
                report.thresholds = report::thresholds(
                    common.max_p99,
                    common.min_rate,
                    &t.latency,
                    t.deliveries_per_s,
                );
            }
            report::emit(&report, common.json, report::broadcast_text);
            if let Some(path) = &common.html {
                let none = report::Latency::default();
                html::write(path, &html::of_broadcast(&report, &none))?;
            }
            Ok(Verdict::of(&report.problems, &report.thresholds))
        }
        Scenario::Churn(c) => {
            let plan = scenario::churn::Plan {
                background: c.clients as usize,
                cycles: c.cycles,
                rate: c.rate,
                abrupt_ratio: c.abrupt_ratio,
                settle: c.settle,
                max_alive: common.max_inflight as usize,
            };
            let report = scenario::churn::run(run, &plan).map_err(failed)?;
            report::emit(&report, common.json, report::churn_text);
            Ok(Verdict::of(&report.problems, &[]))
        }
        Scenario::Merge(_) => Err("merge reads reports, it does not run".into()),
    }
}
