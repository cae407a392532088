//! The scenarios, and the phases they share: connect N clients and drain the join flood
//! ([`join`]), wait on the loop until something holds ([`Run::run_until`]), close everyone.
//!
//! Every wait is bounded twice: by its own limit and by the run's `--timeout` deadline.

pub mod broadcast;
pub mod churn;
pub mod connect;
pub mod join;
pub mod notices;

use std::io;
use std::time::{Duration, Instant};

use crate::args::Generator;
use crate::chat::{Notice, Stamp};
use crate::faults::{quote, Fault, Faults};
use crate::fleet::{Fleet, Observer};
use crate::procfs::Proc;
use crate::progress::Progress;
use crate::report::{Close, Setup};
use crate::series::Series;

/// Closing handshakes may use what is left of `--timeout`, and at least this long: every close
/// sends a leave notice to everyone still there, so closing N clients costs the server a flood
/// as big as the join flood.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The same after a timeout: the run is over, only be polite briefly.
const CLOSE_GRACE_AFTER_TIMEOUT: Duration = Duration::from_secs(2);
/// After everything expected has arrived, every phase listens this much longer before it
/// moves on, so that a late duplicate or stray is seen (and judged) in the phase it belongs
/// to rather than missed.
pub const LINGER: Duration = Duration::from_millis(250);

/// Everything a scenario works with.
pub struct Run {
    pub fleet: Fleet,
    pub setup: Setup,
    /// Zero of the generator's clock: message stamps count nanoseconds from here.
    pub epoch: Instant,
    pub deadline: Instant,
    /// The `--timeout`, for the report.
    pub timeout: Duration,
    pub timed_out: bool,
    pub progress: Progress,
    pub server: Option<Proc>,
    /// What the phases found wrong in what the server sent (the fleet keeps its own).
    pub faults: Faults,
    /// Whether other generators share the room (`--generator`), and our place among them.
    pub generator: Generator,
    /// The run second by second (the traffic's counts and latencies, connections open).
    pub series: Series,
    /// Every message sent had arrived at every client when the traffic ended: any chat
    /// message from then on is a second copy (or not ours at all).
    pub all_delivered: bool,
}

/// Why [`Run::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Done,
    /// Its own limit passed first.
    Expired,
    /// The run's deadline passed first (`timed_out` is now set).
    TimedOut,
}

impl Run {
    /// Nanoseconds since the epoch, the unit of message stamps.
    pub fn clock_ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Turns the loop until `done` holds, `until` passes, or the run's deadline passes.
    /// `status` builds the progress line.
    pub fn run_until<O: Observer>(
        &mut self,
        observer: &mut O,
        until: Option<Instant>,
        mut done: impl FnMut(&Fleet, &O, Instant) -> bool,
        status: impl Fn(&Fleet, &O) -> String,
    ) -> io::Result<Ending> {
        loop {
            let now = Instant::now();
            if done(&self.fleet, observer, now) {
                return Ok(Ending::Done);
            }
            if until.is_some_and(|at| now >= at) {
                return Ok(Ending::Expired);
            }
            if now >= self.deadline {
                self.timed_out = true;
                return Ok(Ending::TimedOut);
            }
            self.progress.tick(now, || status(&self.fleet, observer));
            if self.series.due(now) {
                self.series.tick(now, self.fleet.len(), None);
            }
            let wake = [Some(self.deadline), until]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(self.deadline);
            let wait = wake
                .saturating_duration_since(now)
                .min(self.progress.wait(now));
            self.fleet.turn(Some(wait), observer)?;
        }
    }

    /// Closes every client with a closing handshake, then drops whatever did not finish.
    pub fn close_all(&mut self) -> io::Result<Close> {
        self.progress.finish();
        let start = Instant::now();
        let clean_before = self.fleet.tally.closed_clean;
        self.fleet.close_all();
        let closing = self.fleet.len();
        let end = if self.timed_out {
            start + CLOSE_GRACE_AFTER_TIMEOUT
        } else {
            self.deadline.max(start + CLOSE_GRACE)
        };
        // A timeout while closing is reported as unfinished closes, not as a timed-out run.
        self.deadline = self.deadline.max(end);
        let mut closing_watch = Closing {
            shared: self.generator.shared(),
            all_delivered: self.all_delivered,
            closing,
            leaves: Vec::new(),
            faults: Faults::default(),
        };
        self.run_until(
            &mut closing_watch,
            Some(end),
            |fleet, _, _| fleet.is_empty(),
            |fleet, _| format!("closing: {} left", fleet.len()),
        )?;
        self.faults.merge(&closing_watch.faults);
        self.fleet.abandon_all("close not answered in time");
        self.progress.finish();
        Ok(Close {
            closing,
            clean: self.fleet.tally.closed_clean - clean_before,
            close_s: start.elapsed().as_secs_f64(),
        })
    }

    /// The run's setup as the report gives it: with the time it ended.
    pub fn final_setup(&self) -> Setup {
        let mut setup = self.setup.clone();
        setup.ended_unix_ms = crate::report::unix_ms();
        setup
    }

    /// Every fault of the run, the fleet's included, for the report; each also as a line of
    /// `problems`.
    pub fn take_faults(&mut self, problems: &mut Vec<String>) -> Faults {
        let mut faults = std::mem::take(&mut self.faults);
        faults.merge(&self.fleet.faults);
        faults.problems(problems);
        faults
    }

    /// Adds to `problems` what every scenario checks at its end: unfinished closing handshakes
    /// and a timed-out run.
    pub fn check_end(&self, close: &Close, problems: &mut Vec<String>) {
        if close.clean < close.closing {
            problems.push(format!(
                "{} of {} closing handshakes did not complete",
                close.closing - close.clean,
                close.closing
            ));
        }
        if self.timed_out {
            problems.push(format!("timed out after {:?}", self.timeout));
        }
    }
}

/// The observer while everyone closes, which judges what still arrives by the rules of the
/// traffic (unless other generators share the room, whose clients may still chat, come and
/// go): nobody joins; a client hears at most one leave notice for each of the others; and
/// nobody sends, so a chat message is a second copy of one that had arrived (when all had),
/// or one nobody sent.
struct Closing {
    shared: bool,
    all_delivered: bool,
    /// Clients closing: each may hear the others leave, `closing - 1` notices at most.
    closing: usize,
    /// Leave notices heard while closing, by client key.
    leaves: Vec<u64>,
    faults: Faults,
}

impl Observer for Closing {
    fn chat(&mut self, key: usize, body: &str, _now: Instant) {
        if self.shared {
            return;
        }
        match Stamp::parse(body) {
            Some((stamp, _)) if self.all_delivered => {
                self.faults.record(Fault::Duplicated, 1, || {
                    format!(
                        "client {key} got message {} of sender {} again while closing",
                        stamp.seq, stamp.sender
                    )
                })
            }
            // Not every message had arrived: this may be a late one, and the run has failed.
            Some(_) => {}
            None => self.faults.record(Fault::Stray, 1, || {
                format!("client {key} got {} while closing", quote(body))
            }),
        }
    }

    fn notice(&mut self, key: usize, notice: Notice, count: u64, _now: Instant) {
        if self.shared {
            return;
        }
        if notice == Notice::Joined {
            self.faults.record(Fault::ExtraNotice, count, || {
                format!("client {key} got a join notice while everyone was closing")
            });
            return;
        }
        if self.leaves.len() <= key {
            self.leaves.resize(key + 1, 0);
        }
        self.leaves[key] += count;
        let (heard, most) = (self.leaves[key], self.closing.saturating_sub(1) as u64);
        if heard > most {
            self.faults.record(Fault::ExtraNotice, count, || {
                format!("client {key} heard {heard} leave notices while {most} others closed")
            });
        }
    }
}
