//! `mio-chat-load`: a load generator for mio-chat, built like the server itself: one thread,
//! one `mio::Poll`, every client a small state machine in a `Slab`.
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
mod merge;
mod order;
mod procfs;
mod progress;
mod report;
mod scenario;
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

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match start(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("mio-chat-load: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks that the run can work at all, then runs it; `Ok(false)` if it found problems.
fn start(args: &Args) -> Result<bool, String> {
    let common = &args.common;
    if let Scenario::Merge(m) = &args.scenario {
        let merged = merge::merge(&m.reports)?;
        report::emit(&merged, common.json, merge::text);
        return Ok(merged.problems.is_empty());
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
        Proc(Some(pid))
            .rss_kib()
            .map_err(|e| format!("--server-pid {pid}: {e}"))?;
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
    };
    run_scenario(args, &mut run, clients)
}

/// Runs the scenario asked for; `Ok(false)` if it found problems.
fn run_scenario(args: &Args, run: &mut Run, clients: usize) -> Result<bool, String> {
    let common = &args.common;
    let failed = |e: std::io::Error| format!("the event loop failed: {e}");
    match &args.scenario {
        Scenario::Connect(c) => {
            let report = scenario::connect::run(run, clients, c.hold).map_err(failed)?;
            report::emit(&report, common.json, report::connect_text);
            Ok(report.problems.is_empty())
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
            };
            let report = scenario::broadcast::run(run, &plan).map_err(failed)?;
            report::emit(&report, common.json, report::broadcast_text);
            Ok(report.problems.is_empty())
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
            Ok(report.problems.is_empty())
        }
        Scenario::Merge(_) => Err("merge reads reports, it does not run".into()),
    }
}
