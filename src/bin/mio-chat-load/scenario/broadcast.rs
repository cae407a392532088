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
use crate::fleet::Observer;
use crate::order::{SeqTracker, Verdict};
use crate::report::{self, BroadcastReport, Latency, ServerLoad, Traffic};
use crate::scenario::{join, Run};

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
}

/// Everything the receiving side learns.
struct Receivers {
    senders: usize,
    /// `trackers[key * senders + s]`: what client `key` has seen of sender `s`.
    trackers: Vec<SeqTracker>,
    /// Which sender, if any, each client key is.
    sender_of: Vec<Option<u32>>,
    /// Own messages that came back to each sender since the loop last looked (for windows).
    echoes: Vec<u32>,
    epoch: Instant,
    /// The last `now` seen, and [`Receivers::clock_ns`] of it.
    clock: (Option<Instant>, u64),
    latency: Histogram<u64>,
    deliveries: u64,
    duplicates: u64,
    order_violations: u64,
    other: u64,
    last_delivery: Option<Instant>,
}

impl Observer for Receivers {
    fn chat(&mut self, key: usize, body: &str, now: Instant) {
        let Some(stamp) = Stamp::decode(body) else {
            self.other += 1;
            return;
        };
        let s = stamp.sender as usize;
        let tracker = if s < self.senders {
            self.trackers.get_mut(key * self.senders + s)
        } else {
            None
        };
        let Some(tracker) = tracker else {
            self.other += 1;
            return;
        };
        match tracker.observe(stamp.seq) {
            Verdict::Duplicate => {
                self.duplicates += 1;
                return;
            }
            Verdict::Late => self.order_violations += 1,
            Verdict::InOrder | Verdict::Skipped(_) => {}
        }
        self.deliveries += 1;
        let micros = self.clock_ns(now).saturating_sub(stamp.sent_ns) / 1000;
        self.latency.saturating_record(micros.max(1));
        self.last_delivery = Some(now);
        if self.sender_of.get(key) == Some(&Some(stamp.sender)) {
            self.echoes[s] += 1;
        }
    }

    fn notice(&mut self, _key: usize, _notice: Notice, count: u64, _now: Instant) {
        self.other += count;
    }
}

impl Receivers {
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
    let join = join::connect_and_drain(run, plan.clients)?;
    let mut problems = Vec::new();
    join::problems(&join, &mut problems);
    let mut traffic = None;
    let mut server = None;
    if !run.timed_out {
        let cpu_before = run.server.and_then(|p| p.cpu_seconds().ok());
        let t = send_and_check(run, plan)?;
        if let (Some(p), Some(before)) = (run.server, cpu_before) {
            let cpu_s = p.cpu_seconds().map_or(0.0, |after| after - before);
            server = Some(ServerLoad {
                cpu_s,
                cpu_s_per_million_deliveries: (t.deliveries > 0)
                    .then(|| cpu_s / (t.deliveries as f64 / 1e6)),
                peak_rss_kib: p.peak_rss_kib().unwrap_or(0),
            });
        }
        for (n, what) in [
            (t.lost, "lost"),
            (t.duplicates, "duplicated"),
            (t.order_violations, "out of order"),
        ] {
            if n > 0 {
                problems.push(format!("{n} deliveries {what}"));
            }
        }
        if t.sent == 0 {
            problems.push("nothing was sent".into());
        }
        traffic = Some(t);
    }
    let lost = run.fleet.tally.lost_after_open - join.lost_after_open;
    if lost > 0 {
        problems.push(format!("{lost} clients lost during the traffic"));
    }
    let close = run.close_all()?;
    run.check_end(&close, &mut problems);
    Ok(BroadcastReport {
        scenario: "broadcast",
        setup: run.setup.clone(),
        join,
        traffic,
        server,
        close,
        generator_cpu_s: crate::procfs::Proc(None).cpu_seconds().unwrap_or(0.0),
        timed_out: run.timed_out,
        problems,
    })
}

fn send_and_check(run: &mut Run, plan: &Plan) -> io::Result<Traffic> {
    let open = run.fleet.open_clients();
    // Senders spread evenly over the dial order, so they are not all early joiners.
    let count = plan.senders.min(open.len());
    let start = Instant::now();
    let mut senders: Vec<Sender> = (0..count)
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
    let mut rx = Receivers {
        senders: count,
        trackers: vec![SeqTracker::default(); key_bound * count],
        sender_of,
        echoes: vec![0; count],
        epoch: run.epoch,
        clock: (None, 0),
        latency: report::new_histogram(),
        deliveries: 0,
        duplicates: 0,
        order_violations: 0,
        other: 0,
        last_delivery: None,
    };
    let receivers = open.len();
    let stop_at = start + plan.duration;
    let drain_until = stop_at + DRAIN_GRACE;
    let mut text = String::with_capacity(plan.size + 32);
    loop {
        let now = Instant::now();
        // A rate sends exactly its schedule: a send due just before the stop still goes out,
        // even if the loop wakes up for it a little after.
        let sending = match plan.pace {
            Pace::Window(_) => now < stop_at,
            Pace::Rate(_) => senders.iter().any(|s| s.next_at < stop_at),
        };
        let sent: u64 = senders.iter().map(|s| s.next_seq).sum();
        if !sending && (rx.deliveries >= sent * receivers as u64 || now >= drain_until) {
            break;
        }
        if now >= run.deadline {
            run.timed_out = true;
            break;
        }
        let mut wake = if now < stop_at { stop_at } else { drain_until }.min(run.deadline);
        if sending {
            for (s, sender) in senders.iter_mut().enumerate() {
                match plan.pace {
                    Pace::Window(window) => {
                        let back = std::mem::take(&mut rx.echoes[s]);
                        sender.in_flight = sender.in_flight.saturating_sub(back);
                        while sender.in_flight < window {
                            send(run, sender, s, plan.size, &mut text);
                            sender.in_flight += 1;
                        }
                    }
                    Pace::Rate(rate) => {
                        // Open loop: sends follow the schedule, late ones go out at once.
                        while sender.next_at <= now && sender.next_at < stop_at {
                            send(run, sender, s, plan.size, &mut text);
                            sender.next_at += Duration::from_secs_f64(1.0 / rate);
                        }
                        if sender.next_at < stop_at {
                            wake = wake.min(sender.next_at);
                        }
                    }
                }
            }
        }
        run.progress.tick(now, || {
            let phase = if sending { "sending" } else { "draining" };
            format!(
                "{phase}: {sent} sent, {} delivered, {} lost clients, p99 {:.2} ms",
                rx.deliveries,
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

    let sent_by: Vec<u64> = senders.iter().map(|s| s.next_seq).collect();
    let sent: u64 = sent_by.iter().sum();
    let lost: u64 = open
        .iter()
        .flat_map(|&(key, _)| {
            let row = &rx.trackers[key * count..(key + 1) * count];
            row.iter().zip(&sent_by).map(|(t, &n)| t.lost(n))
        })
        .sum();
    let last = rx.last_delivery.unwrap_or(start);
    let span = last.saturating_duration_since(start).as_secs_f64();
    Ok(Traffic {
        senders: count,
        pace: plan.pace.describe(),
        duration_s: plan.duration.as_secs_f64(),
        message_bytes: text.len(),
        sent,
        receivers,
        expected_deliveries: sent * receivers as u64,
        deliveries: rx.deliveries,
        deliveries_per_s: if span > 0.0 {
            rx.deliveries as f64 / span
        } else {
            0.0
        },
        lost,
        duplicates: rx.duplicates,
        order_violations: rx.order_violations,
        other_messages: rx.other,
        drain_after_send_s: last.saturating_duration_since(stop_at).as_secs_f64(),
        latency: Latency::of(&rx.latency),
    })
}

/// Queues sender `s`'s next message, stamped with the time now.
fn send(run: &mut Run, sender: &mut Sender, s: usize, size: usize, text: &mut String) {
    let stamp = Stamp {
        sender: s as u32,
        seq: sender.next_seq,
        sent_ns: run.clock_ns(Instant::now()),
    };
    stamp.encode(size, text);
    run.fleet.send(sender.key, text);
    sender.next_seq += 1;
}
