//! `connect`: how many clients the server holds, what each costs it, and how long one message
//! takes to reach them all.
//!
//! 1. Connect N clients and drain the join flood (with `--server-pid`: the server's RSS before
//!    and after, hence KiB per connection).
//! 2. One client sends one message; time until every client has it.
//! 3. Hold the connections for `--hold`, then close them all.

use std::io;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::chat::Stamp;
use crate::fleet::Observer;
use crate::report::{self, ConnectReport, Latency, Memory, Probe};
use crate::scenario::{join, Ending, Quiet, Run};

/// Waits for the one message to reach everyone.
struct ProbeWatch {
    stamp: Stamp,
    epoch: Instant,
    /// Which clients (by key) have it.
    got: Vec<bool>,
    received: usize,
    latency: Histogram<u64>,
    last_at: Option<Instant>,
}

impl Observer for ProbeWatch {
    fn chat(&mut self, key: usize, body: &str, now: Instant) {
        if Stamp::decode(body) != Some(self.stamp) {
            return;
        }
        let Some(got) = self.got.get_mut(key) else {
            return;
        };
        if *got {
            return; // a duplicate; the broadcast scenario is the one that counts those
        }
        *got = true;
        self.received += 1;
        let sent_ns = u128::from(self.stamp.sent_ns);
        let at_ns = now.saturating_duration_since(self.epoch).as_nanos();
        let micros = (at_ns.saturating_sub(sent_ns) / 1000) as u64;
        self.latency.saturating_record(micros.max(1));
        self.last_at = Some(now);
    }
}

pub fn run(run: &mut Run, clients: usize, hold: std::time::Duration) -> io::Result<ConnectReport> {
    let rss_before = run.server.and_then(|p| p.rss_kib().ok());
    let join = join::connect_and_drain(run, clients)?;
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

    let probe = if run.timed_out {
        None
    } else {
        Some(probe(run)?)
    };
    if let Some(p) = &probe {
        if p.received < p.receivers {
            problems.push(format!(
                "the broadcast reached {} of {} clients",
                p.received, p.receivers
            ));
        }
    }

    let hold_start = Instant::now();
    if !run.timed_out && !hold.is_zero() {
        let lost_before = run.fleet.tally.lost_after_open;
        // Holding is asked for, not work: it does not eat into --timeout.
        run.deadline += hold;
        run.run_until(
            &mut Quiet,
            Some(hold_start + hold),
            |_, _, _| false,
            |fleet, _| format!("holding {} connections", fleet.len()),
        )?;
        let lost = run.fleet.tally.lost_after_open - lost_before;
        if lost > 0 {
            problems.push(format!("{lost} clients lost while holding"));
        }
    }
    let hold_s = hold_start.elapsed().as_secs_f64();

    let close = run.close_all()?;
    run.check_end(&close, &mut problems);
    Ok(ConnectReport {
        scenario: "connect",
        setup: run.setup.clone(),
        join,
        server_memory,
        probe,
        hold_s,
        close,
        generator_cpu_s: crate::procfs::Proc(None).cpu_seconds().unwrap_or(0.0),
        timed_out: run.timed_out,
        problems,
    })
}

/// The first open client sends one message; waits until every open client has it.
fn probe(run: &mut Run) -> io::Result<Probe> {
    let open = run.fleet.open_clients();
    let Some(&(sender, _)) = open.first() else {
        return Ok(Probe {
            receivers: 0,
            received: 0,
            all_received_ms: None,
            latency: Latency::default(),
        });
    };
    let sent_at = Instant::now();
    let stamp = Stamp {
        sender: 0,
        seq: 0,
        sent_ns: run.clock_ns(sent_at),
    };
    let mut text = String::new();
    stamp.encode(0, &mut text);
    let mut watch = ProbeWatch {
        stamp,
        epoch: run.epoch,
        got: vec![false; run.fleet.key_bound()],
        received: 0,
        latency: report::new_histogram(),
        last_at: None,
    };
    run.fleet.send(sender, &text);
    let receivers = open.len();
    let ending = run.run_until(
        &mut watch,
        None,
        |fleet, watch, _| watch.received >= fleet.open_count(),
        |_, watch| format!("broadcast: {}/{receivers} received", watch.received),
    )?;
    run.progress.finish();
    Ok(Probe {
        receivers,
        received: watch.received,
        all_received_ms: (ending == Ending::Done).then(|| {
            watch
                .last_at
                .map_or(0.0, |at| (at - sent_at).as_secs_f64() * 1000.0)
        }),
        latency: Latency::of(&watch.latency),
    })
}
