//! `connect`: how many clients the server holds, what each costs it, and how long one message
//! takes to reach them all.
//!
//! 1. Connect N clients and drain the join flood (with `--server-pid`: the server's RSS before
//!    and after, hence KiB per connection).
//! 2. One client sends one message, and a second right behind it; time until every client has
//!    both. The second one is there to fail fast: a client that gets it without the first has
//!    lost the first (the room keeps one order), and says so at once.
//! 3. Hold the connections for `--hold` (nothing may arrive meanwhile), then close them all.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::chat::{Notice, Stamp};
use crate::check::Checker;
use crate::faults::Fault;
use crate::fleet::Observer;
use crate::report::{self, ConnectReport, Latency, Memory, Probe};
use crate::scenario::{join, Ending, Run, LINGER};

/// How long the probe may take to reach everyone before what is missing counts as lost.
const PROBE_GRACE: Duration = Duration::from_secs(10);

/// Waits for the probe to reach everyone; afterwards, through the hold, it watches that
/// nothing else arrives.
struct ProbeWatch {
    check: Checker,
    epoch: Instant,
    /// When each client (by key) got the probe itself.
    got: Vec<Option<Instant>>,
    received: usize,
    latency: Histogram<u64>,
    gone: Vec<bool>,
    gone_count: usize,
}

impl Observer for ProbeWatch {
    fn chat(&mut self, key: usize, body: &str, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        let now_ns = u64::try_from(ns).unwrap_or(u64::MAX);
        let Some(stamp) = self.check.observe(key, body, now_ns) else {
            return;
        };
        let Some(got @ None) = self.got.get_mut(key) else {
            return;
        };
        if stamp.seq == 0 {
            *got = Some(now);
            self.received += 1;
            let micros = now_ns.saturating_sub(stamp.sent_ns) / 1000;
            self.latency.saturating_record(micros.max(1));
        }
    }

    /// The flood is over: a join notice is one too many, and a leave notice needs a client
    /// that left.
    fn notice(&mut self, key: usize, notice: Notice, count: u64, _now: Instant) {
        let explained = self.check.shared() || (notice == Notice::Left && self.gone_count > 0);
        if !explained {
            let body = notice.body();
            self.check.faults.record(Fault::ExtraNotice, count, || {
                format!("client {key} got {body:?} after the join flood, when nobody came or went")
            });
        }
    }

    fn gone(&mut self, key: usize) {
        if let Some(gone) = self.gone.get_mut(key) {
            *gone = true;
            self.gone_count += 1;
        }
    }
}

impl ProbeWatch {
    fn live(&self, open: &[(usize, u32)]) -> Vec<usize> {
        open.iter()
            .map(|&(k, _)| k)
            .filter(|&k| !self.gone.get(k).copied().unwrap_or(true))
            .collect()
    }
}

pub fn run(run: &mut Run, clients: usize, hold: Duration) -> io::Result<ConnectReport> {
    let rss_before = run.server.and_then(|p| p.rss_kib().ok());
    let join = join::connect_and_drain(run, clients, Duration::ZERO)?;
    let mut problems = Vec::new();
    join::problems(&join, &mut problems);

    let rss_after = run.server.and_then(|p| p.rss_kib().ok());
    let peak = run.server.and_then(|p| p.peak_rss_kib().ok());
    let server_memory = match (rss_before, rss_after, peak) {
        (Some(before), Some(after), Some(peak)) if !run.timed_out => Some(Memory {
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_connection: (after as f64 - before as f64) / join.opened.max(1) as f64,
            peak_rss_kib: peak,
        }),
        _ => None,
    };

    let mut watch = None;
    let probe = if run.timed_out {
        None
    } else {
        let (p, w) = probe(run)?;
        watch = Some(w);
        Some(p)
    };
    if let Some(p) = &probe {
        if p.received < p.receivers {
            problems.push(format!(
                "the broadcast reached {} of {} clients",
                p.received, p.receivers
            ));
        }
    }

    let hold_s = hold_on(run, watch.as_mut(), hold, &mut problems)?;
    if let Some(watch) = &watch {
        run.faults.merge(&watch.check.faults);
    }

    let close = run.close_all()?;
    run.check_end(&close, &mut problems);
    let faults = run.take_faults(&mut problems);
    Ok(ConnectReport {
        scenario: "connect",
        setup: run.final_setup(),
        join,
        server_memory,
        probe,
        hold_s,
        close,
        generator_cpu_s: crate::procfs::Proc(None).cpu_seconds().unwrap_or(0.0),
        timed_out: run.timed_out,
        faults,
        problems,
    })
}

/// Holds the connections for `hold` (nothing may arrive meanwhile: `watch` sees to that);
/// returns how long that took.
fn hold_on(
    run: &mut Run,
    watch: Option<&mut ProbeWatch>,
    hold: Duration,
    problems: &mut Vec<String>,
) -> io::Result<f64> {
    let hold_start = Instant::now();
    if let Some(watch) = watch.filter(|_| !run.timed_out && !hold.is_zero()) {
        let lost_before = run.fleet.tally.lost_after_open;
        // Holding is asked for, not work: it does not eat into --timeout.
        run.deadline += hold;
        run.run_until(
            watch,
            Some(hold_start + hold),
            |_, _, _| false,
            |fleet, _| format!("holding {} connections", fleet.len()),
        )?;
        let lost = run.fleet.tally.lost_after_open - lost_before;
        if lost > 0 {
            problems.push(format!("{lost} clients lost while holding"));
        }
    }
    Ok(hold_start.elapsed().as_secs_f64())
}

/// The first open client sends two messages; waits until every open client has both, or
/// [`PROBE_GRACE`] is over. Returns the figures, and the watch for the hold that follows.
fn probe(run: &mut Run) -> io::Result<(Probe, ProbeWatch)> {
    let open = run.fleet.open_clients();
    let key_bound = run.fleet.key_bound();
    let mut watch = ProbeWatch {
        check: Checker::new(key_bound, 1, 0).numbered_as(run.generator),
        epoch: run.epoch,
        got: vec![None; key_bound],
        received: 0,
        latency: report::new_histogram(),
        gone: vec![false; key_bound],
        gone_count: 0,
    };
    let Some(&(sender, _)) = open.first() else {
        let probe = Probe {
            receivers: 0,
            received: 0,
            all_received_ms: None,
            latency: Latency::default(),
        };
        return Ok((probe, watch));
    };
    let sent_at = Instant::now();
    let mut text = String::new();
    for seq in 0..2 {
        let stamp = Stamp {
            sender: watch.check.stamp_sender(0),
            seq,
            sent_ns: run.clock_ns(sent_at),
        };
        watch.check.padding().encode(&stamp, &mut text);
        run.fleet.send(sender, &text);
        watch.check.count_sent(0);
    }
    let receivers = open.len();
    let ending = run.run_until(
        &mut watch,
        Some(sent_at + PROBE_GRACE),
        |_, watch, _| watch.check.caught_up(watch.live(&open).into_iter()),
        |_, watch| format!("broadcast: {}/{receivers} received", watch.received),
    )?;
    if ending == Ending::Done {
        // Everyone has both: listen a little longer for a late second copy.
        run.all_delivered = true;
        run.run_until(
            &mut watch,
            Some(Instant::now() + LINGER),
            |_, _, _| false,
            |_, watch| format!("broadcast: {}/{receivers} received", watch.received),
        )?;
    }
    run.progress.finish();
    let live = watch.live(&open);
    watch.check.count_lost(&live);
    watch.check.compare_orders(&live);
    let last = watch.got.iter().flatten().max().copied();
    let probe = Probe {
        receivers,
        received: watch.received,
        all_received_ms: (ending == Ending::Done && watch.received == receivers)
            .then(|| last.map_or(0.0, |at| (at - sent_at).as_secs_f64() * 1000.0)),
        latency: Latency::of(&watch.latency),
    };
    Ok((probe, watch))
}
