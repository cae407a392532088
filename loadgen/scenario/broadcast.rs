//! `broadcast`: throughput, latency and correctness of the fan-out under a steady load.
//!
//! After the join flood has drained, S of the N clients send stamped messages (sender,
//! sequence number, send time; see [`Stamp`]) for T seconds, either at a fixed rate (open loop)
//! or keeping W messages in flight (closed loop: a sender sends its next message when one of its
//! own comes back). Every client, senders included, feeds every message into a [`SeqTracker`]
//! per sender and records its latency. When sending stops, the run waits (bounded) for what is
//! still in flight, then counts what never arrived.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::chat::{Notice, Stamp};
use crate::check::Checker;
use crate::faults::{Fault, Faults};
use crate::fleet::Observer;
use crate::report::{self, plural, BroadcastReport, Latency, ServerLoad, Traffic};
use crate::scenario::{join, Run, LINGER};
use crate::series::Totals;

/// How long after the last send the stragglers may take to arrive.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Messages per second, per sender.
    Rate(f64),
    /// Messages in flight, per sender.
    Window(u32),
}

impl Pace {
    fn describe(&self) -> String {
        match self {
            Pace::Rate(rate) => format!("{rate}/s each"),
            Pace::Window(w) => format!("window {w} each"),
        }
    }
}

pub struct Plan {
    pub clients: usize,
    pub senders: usize,
    pub pace: Pace,
    pub duration: Duration,
    pub size: usize,
    /// Clients join spread over this long, not all at once.
    pub ramp_up: Duration,
}

/// Everything the receiving side learns.
struct Receivers {
    /// Every delivery checked: see [`Checker`].
    check: Checker,
    /// Which sender, if any, each client key is.
    sender_of: Vec<Option<u32>>,
    /// Own messages that came back to each sender since the loop last looked (for windows).
    echoes: Vec<u32>,
    epoch: Instant,
    /// The last `now` seen, and [`Receivers::clock_ns`] of it.
    clock: (Option<Instant>, u64),
    latency: Histogram<u64>,
    /// Clients gone during the traffic (each one's leave notice is then due to the others).
    gone: Vec<bool>,
    gone_count: usize,
    /// Leave notices each client (by key) heard during the traffic.
    leaves: Vec<u64>,
    notices: u64,
    /// Other generators share the room: their clients' notices are no fault.
    shared: bool,
    last_delivery: Option<Instant>,
}

impl Observer for Receivers {
    fn chat(&mut self, key: usize, body: &str, now: Instant) {
        let now_ns = self.clock_ns(now);
        if let Some(stamp) = self.check.observe(key, body, now_ns) {
            self.delivered(key, stamp, now, now_ns);
        }
    }

    /// Nearly every delivery comes this way, checked as it stands in its envelope.
    fn chat_as_is(&mut self, key: usize, inner: &str, now: Instant) -> bool {
        let now_ns = self.clock_ns(now);
        let Some(stamp) = self.check.verified(inner, now_ns) else {
            return false;
        };
        if let Some(stamp) = self.check.accept(key, stamp) {
            self.delivered(key, stamp, now, now_ns);
        }
        true
    }

    /// Nobody joins during the traffic, and nobody leaves unless a client was lost: a client
    /// hears at most one leave notice per client lost.
    fn notice(&mut self, key: usize, notice: Notice, count: u64, _now: Instant) {
        self.notices += count;
        if self.shared {
            return;
        }
        let leaves = match self.leaves.get_mut(key) {
            Some(heard) if notice == Notice::Left => {
                *heard += count;
                *heard
            }
            _ => u64::MAX,
        };
        if leaves > self.gone_count as u64 {
            let body = notice.body();
            let gone = self.gone_count;
            self.check.faults.record(Fault::ExtraNotice, count, || {
                format!("client {key} got {body:?} during the traffic, when {gone} had left")
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

impl Receivers {
    /// Records a delivery's latency, and a sender's own message come back for its window.
    fn delivered(&mut self, key: usize, stamp: Stamp, now: Instant, now_ns: u64) {
        let micros = now_ns.saturating_sub(stamp.sent_ns) / 1000;
        self.latency.saturating_record(micros.max(1));
        self.last_delivery = Some(now);
        if self.sender_of.get(key) == Some(&Some(stamp.sender)) {
            self.echoes[stamp.sender as usize] += 1;
        }
    }

    /// `now` in nanoseconds since the epoch, as stamps count. The deliveries of one read share
    /// their `now`, so it is converted once per read, not once per delivery; and in u64, as
    /// stamps are (128-bit division showed in profiles).
    fn clock_ns(&mut self, now: Instant) -> u64 {
        if self.clock.0 != Some(now) {
            let ns = now.saturating_duration_since(self.epoch).as_nanos();
            self.clock = (Some(now), u64::try_from(ns).unwrap_or(u64::MAX));
        }
        self.clock.1
    }
}

struct Sender {
    key: usize,
    /// Also the number sent so far.
    next_seq: u64,
    in_flight: u32,
    next_at: Instant,
}

pub fn run(run: &mut Run, plan: &Plan) -> io::Result<BroadcastReport> {
    let join = join::connect_and_drain(run, plan.clients, plan.ramp_up)?;
    let mut problems = Vec::new();
    join::problems(&join, &mut problems);
    let mut traffic = None;
    let mut server = None;
    if !run.timed_out {
        let cpu_before = run.server.and_then(|p| p.cpu_seconds().ok());
        let (t, faults) = send_and_check(run, plan)?;
        run.faults.merge(&faults);
        if let (Some(p), Some(before)) = (run.server, cpu_before) {
            let cpu_s = p.cpu_seconds().map_or(0.0, |after| after - before);
            server = Some(ServerLoad {
                cpu_s,
                cpu_s_per_million_deliveries: (t.deliveries > 0)
                    .then(|| cpu_s / (t.deliveries as f64 / 1e6)),
                peak_rss_kib: p.peak_rss_kib().unwrap_or(0),
            });
        }
        if t.sent == 0 {
            problems.push("nothing was sent".into());
        }
        if t.in_flight_at_end > 0 {
            problems.push(format!(
                "{}: the server fell behind the senders (late, not known lost: nothing later of \
                 their senders' came). A server that rate-limits its clients holds them back on \
                 purpose; for mio-chat, run it with --client-rate 0 --client-bytes-rate 0 for a \
                 load test, or lower --rate",
                plural(
                    t.in_flight_at_end,
                    "message still in flight",
                    "messages still in flight"
                )
            ));
        }
        traffic = Some(t);
    }
    let lost = run.fleet.tally.lost_after_open - join.lost_after_open;
    if lost > 0 {
        problems.push(format!("{lost} clients lost during the traffic"));
    }
    let close = run.close_all()?;
    run.check_end(&close, &mut problems);
    let faults = run.take_faults(&mut problems);
    run.series.finish(Instant::now(), run.fleet.len(), None);
    Ok(BroadcastReport {
        scenario: "broadcast",
        thresholds: Vec::new(),
        series: std::mem::take(&mut run.series.seconds),
        setup: run.final_setup(),
        join,
        traffic,
        server,
        close,
        generator_cpu_s: crate::procfs::Proc(None).cpu_seconds().unwrap_or(0.0),
        timed_out: run.timed_out,
        faults,
        problems,
    })
}

/// The senders, spread evenly over the dial order so they are not all early joiners, and the
/// receivers' checks.
fn start_traffic(run: &Run, plan: &Plan, start: Instant) -> (Vec<Sender>, Receivers) {
    let open = run.fleet.open_clients();
    let count = plan.senders.min(open.len());
    let senders: Vec<Sender> = (0..count)
        .map(|i| Sender {
            key: open[i * open.len() / count].0,
            next_seq: 0,
            in_flight: 0,
            next_at: start,
        })
        .collect();
    let key_bound = run.fleet.key_bound();
    let mut sender_of = vec![None; key_bound];
    for (s, sender) in senders.iter().enumerate() {
        sender_of[sender.key] = Some(s as u32);
    }
    let rx = Receivers {
        check: Checker::new(key_bound, count, plan.size).numbered_as(run.generator),
        shared: run.generator.shared(),
        sender_of,
        echoes: vec![0; count],
        epoch: run.epoch,
        clock: (None, 0),
        latency: report::new_histogram(),
        gone: vec![false; key_bound],
        gone_count: 0,
        leaves: vec![0; key_bound],
        notices: 0,
        last_delivery: None,
    };
    (senders, rx)
}

fn send_and_check(run: &mut Run, plan: &Plan) -> io::Result<(Traffic, Faults)> {
    let keys: Vec<usize> = run.fleet.open_clients().iter().map(|&(k, _)| k).collect();
    let start = Instant::now();
    let (mut senders, mut rx) = start_traffic(run, plan, start);
    let stop_at = start + plan.duration;
    let mut text = String::with_capacity(plan.size + 32);
    // When the sending stopped, and so when the stragglers' time is up.
    let mut drain_end = None;
    // When every message had arrived everywhere: the run listens [`LINGER`] longer.
    let mut caught_up_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // A rate sends exactly its schedule: a send due just before the stop still goes out,
        // even if the loop wakes up for it a little after. A fault stops the sending at once:
        // the verdict is known, and what is in flight still drains.
        let sending = rx.check.faults.is_empty()
            && match plan.pace {
                Pace::Window(_) => now < stop_at,
                Pace::Rate(_) => senders.iter().any(|s| s.next_at < stop_at),
            };
        let live = || keys.iter().copied().filter(|&k| !rx.gone[k]);
        let drain_until = match (sending, drain_end) {
            (true, _) => stop_at + DRAIN_GRACE,
            (false, Some(at)) => at,
            (false, None) => *drain_end.insert(now.min(stop_at) + DRAIN_GRACE),
        };
        if !sending && caught_up_at.is_none() && rx.check.caught_up(live()) {
            caught_up_at = Some(now);
        }
        let lingered = caught_up_at.is_some_and(|at| now >= at + LINGER);
        if !sending && (lingered || now >= drain_until) {
            run.all_delivered = caught_up_at.is_some();
            break;
        }
        if now >= run.deadline {
            run.timed_out = true;
            break;
        }
        let mut wake = if sending { stop_at } else { drain_until }.min(run.deadline);
        if let Some(at) = caught_up_at {
            wake = wake.min(at + LINGER);
        }
        if sending {
            for (s, sender) in senders.iter_mut().enumerate() {
                let due = pace(plan, sender, &mut rx, s, now, stop_at);
                for _ in 0..due.0 {
                    send(run, sender, s, &mut rx.check, &mut text);
                    sender.next_at += due.1;
                }
                if let Pace::Rate(_) = plan.pace {
                    if sender.next_at < stop_at {
                        wake = wake.min(sender.next_at);
                    }
                }
            }
        }
        if run.series.due(now) {
            let totals = totals(&rx);
            run.series.tick(now, run.fleet.len(), Some(totals));
        }
        run.progress.tick(now, || {
            let phase = if sending { "sending" } else { "draining" };
            let sent: u64 = rx.check.sent_by().iter().sum();
            format!(
                "{phase}: {sent} sent, {} delivered, {} lost clients, p99 {:.2} ms",
                rx.check.deliveries,
                run.fleet.tally.lost_after_open,
                rx.latency.value_at_quantile(0.99) as f64 / 1000.0
            )
        });
        let wait = wake
            .saturating_duration_since(now)
            .min(run.progress.wait(now));
        run.fleet.turn(Some(wait), &mut rx)?;
    }
    run.progress.finish();
    run.series
        .finish(Instant::now(), run.fleet.len(), Some(totals(&rx)));
    let live: Vec<usize> = keys.iter().copied().filter(|&k| !rx.gone[k]).collect();
    Ok(summarize(plan, rx, &live, &text, start, stop_at))
}

/// The traffic so far, for the time series.
fn totals(rx: &Receivers) -> Totals<'_> {
    Totals {
        sent: rx.check.sent_by().iter().sum(),
        delivered: rx.check.deliveries,
        latency: &rx.latency,
    }
}

/// How many messages sender `s` sends now, and how far each moves its schedule.
fn pace(
    plan: &Plan,
    sender: &mut Sender,
    rx: &mut Receivers,
    s: usize,
    now: Instant,
    stop_at: Instant,
) -> (u32, Duration) {
    match plan.pace {
        Pace::Window(window) => {
            let back = std::mem::take(&mut rx.echoes[s]);
            sender.in_flight = sender.in_flight.saturating_sub(back);
            let due = window.saturating_sub(sender.in_flight);
            sender.in_flight += due;
            (due, Duration::ZERO)
        }
        Pace::Rate(rate) => {
            // Open loop: sends follow the schedule, late ones go out at once.
            let step = Duration::from_secs_f64(1.0 / rate);
            let mut due = 0;
            let mut at = sender.next_at;
            while at <= now && at < stop_at {
                due += 1;
                at += step;
            }
            (due, step)
        }
    }
}

/// The traffic's figures, once the last delivery is in (or the wait for it is over).
fn summarize(
    plan: &Plan,
    mut rx: Receivers,
    live: &[usize],
    text: &str,
    start: Instant,
    stop_at: Instant,
) -> (Traffic, Faults) {
    let sent: u64 = rx.check.sent_by().iter().sum();
    let (lost, in_flight_at_end) = rx.check.count_lost(live);
    rx.check.compare_orders(live);
    let last = rx.last_delivery.unwrap_or(start);
    let span = last.saturating_duration_since(start).as_secs_f64();
    let deliveries = rx.check.deliveries;
    let traffic = Traffic {
        senders: rx.echoes.len(),
        pace: plan.pace.describe(),
        duration_s: plan.duration.as_secs_f64(),
        message_bytes: text.len(),
        sent,
        receivers: live.len(),
        expected_deliveries: sent * live.len() as u64,
        deliveries,
        deliveries_per_s: if span > 0.0 {
            deliveries as f64 / span
        } else {
            0.0
        },
        lost,
        in_flight_at_end,
        duplicates: rx.check.duplicates,
        order_violations: rx.check.order_violations,
        notices: rx.notices,
        foreign: rx.check.foreign,
        foreign_from: rx.check.foreign_from.clone(),
        drain_after_send_s: last.saturating_duration_since(stop_at).as_secs_f64(),
        latency: Latency::of(&rx.latency),
    };
    (traffic, rx.check.faults)
}

/// Queues sender `s`'s next message, stamped with the time now.
fn send(run: &mut Run, sender: &mut Sender, s: usize, check: &mut Checker, text: &mut String) {
    let stamp = Stamp {
        sender: check.stamp_sender(s),
        seq: sender.next_seq,
        sent_ns: run.clock_ns(Instant::now()),
    };
    check.padding().encode(&stamp, text);
    run.fleet.send(sender.key, text);
    check.count_sent(s);
    sender.next_seq += 1;
}
