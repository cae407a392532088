//! `churn`: does the server account for every arrival and departure, however it happens, and
//! give back what each connection cost it?
//!
//! 1. A watcher joins, then N background clients that stay; the watcher hears 1 + N join
//!    notices.
//! 2. C short-lived clients are dialled at R per second (open loop: a late cycle starts at once;
//!    at most `--max-inflight` of them alive at once). Each waits for its own join notice, then
//!    leaves: a share P of them with a TCP reset (`SO_LINGER` 0, then close: no Close frame, no
//!    FIN), spread evenly over the cycles; the others with a closing handshake.
//! 3. Once they are all gone: wait, at most `--settle`, until the watcher has heard every notice
//!    and (with `--server-pid`) the server's open files are back to their count before step 2;
//!    then read the server's RSS.
//! 4. The background clients close, the watcher must hear their leave notices; then it closes.
//!
//! The watcher counts totals (a notice does not say whose it is): one join notice for every
//! client that opened, itself included, and one leave notice for every client that left, itself
//! not. Anything more is a duplicate, anything less a loss. A loss and a duplicate in the same
//! run would cancel out in the totals, so two more checks: a leave notice may never come before
//! the departure it announces (the watcher may not have heard more leaves than clients have been
//! told to leave); and every client that stays, the watcher and the background clients, must
//! hear one and the same sequence of notices ([`notices`](super::notices)); and at every one
//! of them, each member's join must come before its leave: from the start of the cycles, a
//! stayer may never have heard more leave notices than join notices of the short-lived
//! clients (plus the stayers lost meanwhile), or some leave came before its member's join,
//! a fault the totals cannot see when it strikes every stayer alike.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use crate::chat::Notice;
use crate::faults::{quote, Fault, Faults};
use crate::fleet::Observer;
use crate::procfs::Proc;
use crate::report::{ChurnReport, Cycles, NoticeCount, ServerFootprint, Stayers};
use crate::scenario::notices::{self, NoticeTrail};
use crate::scenario::{Ending, Run, LINGER};

/// How often the server's fd directory is read while waiting for it to shrink back.
const FD_POLL: Duration = Duration::from_millis(50);
/// How long the server keeps a closed connection's port from reuse (TIME_WAIT), for sizing
/// the source addresses.
const TIME_WAIT: f64 = 60.0;

pub struct Plan {
    pub background: usize,
    pub cycles: u64,
    pub rate: f64,
    pub abrupt_ratio: f64,
    pub settle: Duration,
    /// Short-lived clients alive at once, at most.
    pub max_alive: usize,
}

/// What a run needs of this machine: sockets open at once (for the fd budget) and ports from
/// the ephemeral ranges (for the source addresses): a port stays taken for the TIME_WAIT after
/// its connection closed.
pub fn socket_needs(background: u32, cycles: u64, rate: f64, max_alive: u32) -> (usize, usize) {
    let stayers = background as usize + 1;
    let open = stayers + max_alive as usize;
    let recent = (rate * TIME_WAIT).ceil().min(cycles as f64) as usize;
    (open, open + recent)
}

/// Whether the `i`-th client to leave (0-based) does it with a reset: of the first `n`
/// leavers, exactly ⌊n·ratio⌋ do, evenly spread.
pub fn leaves_abruptly(i: u64, ratio: f64) -> bool {
    (((i + 1) as f64) * ratio).floor() > ((i as f64) * ratio).floor()
}

/// The watcher's tally of the room's notices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notices {
    pub joined: u64,
    pub left: u64,
    pub other: u64,
}

impl Notices {
    pub fn notice(&mut self, notice: Notice, count: u64) {
        match notice {
            Notice::Joined => self.joined += count,
            Notice::Left => self.left += count,
        }
    }

    /// Has at least what was expected arrived?
    pub fn reached(&self, joins: u64, leaves: u64) -> bool {
        self.joined >= joins && self.left >= leaves
    }

    /// Records what is wrong with the totals, if anything: too few is `lost`, too many an
    /// `extra notice`.
    pub fn check(&self, joins: u64, leaves: u64, faults: &mut Faults) {
        for (seen, expected, what) in [(self.joined, joins, "join"), (self.left, leaves, "leave")] {
            if seen < expected {
                let n = expected - seen;
                faults.record(Fault::Lost, n, || {
                    format!("the watcher missed {n} {what} notices ({seen} of {expected})")
                });
            } else if seen > expected {
                let n = seen - expected;
                faults.record(Fault::ExtraNotice, n, || {
                    format!("the watcher got {n} {what} notices too many ({seen} for {expected})")
                });
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Open, waiting for its own join notice.
    Joining,
    /// Heard it; to leave after this turn.
    Joined,
    /// Sent its Close.
    Leaving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Watcher,
    Background,
    Churn(Stage),
}

/// Who is who, by client key, and what the watcher heard.
struct Churners {
    /// The role of clients that open from now on: each phase opens one kind.
    next_role: Role,
    roles: Vec<Option<Role>>,
    notices: Notices,
    watcher_opened: bool,
    /// The watcher was lost (its final close is not watched).
    watcher_gone: bool,
    background_opened: usize,
    background_gone: usize,
    /// The stayers are being closed on purpose.
    closing_stayers: bool,
    /// Watcher and background clients open and not gone.
    stayers_open: usize,
    stayers_lost: usize,
    churn_opened: u64,
    churn_gone: u64,
    /// Gone before we asked them to leave.
    churn_lost: u64,
    /// Short-lived clients that heard their own join notice this turn.
    to_leave: Vec<usize>,
    /// Departures so far, counted when they start (a reset, a Close sent, a client lost): no
    /// more leave notices than that can be due.
    departed: u64,
    /// What each stayer (by key) heard, as an order.
    trails: Vec<Option<NoticeTrail>>,
    /// Join notices each stayer (by key) had heard when the cycles began: those after are
    /// the short-lived clients'. `None` outside the cycles (before, and once the stayers
    /// close), when joins before leaves is not checked.
    joins_before_cycles: Option<Vec<u64>>,
    faults: Faults,
    /// Another generator shares the room (`--generator`): its chat is no fault (its clients
    /// must still not come or go during the churn: every notice is counted).
    shared: bool,
}

impl Churners {
    fn new() -> Self {
        Churners {
            next_role: Role::Watcher,
            roles: Vec::new(),
            notices: Notices::default(),
            watcher_opened: false,
            watcher_gone: false,
            background_opened: 0,
            background_gone: 0,
            closing_stayers: false,
            stayers_open: 0,
            stayers_lost: 0,
            churn_opened: 0,
            churn_gone: 0,
            churn_lost: 0,
            to_leave: Vec::new(),
            departed: 0,
            trails: Vec::new(),
            joins_before_cycles: None,
            faults: Faults::default(),
            shared: false,
        }
    }

    /// Short-lived client `key` sent its Close.
    fn leaving(&mut self, key: usize) {
        self.roles[key] = Some(Role::Churn(Stage::Leaving));
        self.departed += 1;
    }

    /// The stayers still here, the watcher first, with what they heard.
    fn stayer_trails(&self) -> Vec<(usize, &NoticeTrail)> {
        let mut out: Vec<(usize, &NoticeTrail)> = Vec::new();
        for (key, trail) in self.trails.iter().enumerate() {
            if let (Some(trail), Some(role)) = (trail, self.role(key)) {
                match role {
                    Role::Watcher => out.insert(0, (key, trail)),
                    _ => out.push((key, trail)),
                }
            }
        }
        out
    }

    /// Every stayer has heard as much, from the first leave notice on, as the watcher.
    fn stayers_caught_up(&self) -> bool {
        let trails = self.stayer_trails();
        let watcher = trails.first().map_or(0, |(_, t)| t.after);
        trails.iter().all(|(_, t)| t.after >= watcher)
    }

    fn role(&self, key: usize) -> Option<Role> {
        self.roles.get(key).copied().flatten()
    }

    fn joins_expected(&self) -> u64 {
        u64::from(self.watcher_opened) + self.background_opened as u64 + self.churn_opened
    }

    /// Every short-lived client that opened is a member who left, once it is gone; and so is
    /// every background client gone so far.
    fn leaves_expected(&self) -> u64 {
        self.churn_gone + self.background_gone as u64
    }

    /// The watcher has heard every notice due so far.
    fn heard_all(&self) -> bool {
        self.notices
            .reached(self.joins_expected(), self.leaves_expected())
    }

    /// Short-lived client `key` was reset by us.
    fn reset(&mut self, key: usize) {
        self.roles[key] = None;
        self.churn_gone += 1;
        self.departed += 1;
    }

    /// The cycles begin: from now on every stayer's leaves must follow their joins.
    fn start_cycles(&mut self) {
        let joins = self
            .trails
            .iter()
            .map(|t| t.as_ref().map_or(0, |t| t.joins));
        self.joins_before_cycles = Some(joins.collect());
    }

    /// At stayer `key`: no more leave notices than members it heard join since the cycles
    /// began, or stayers lost (whose joins it heard before).
    fn check_join_before_leave(&mut self, key: usize) {
        let (Some(base), Some(Some(trail))) = (&self.joins_before_cycles, self.trails.get(key))
        else {
            return;
        };
        let joined = trail
            .joins
            .saturating_sub(base.get(key).copied().unwrap_or(0));
        let allowed = joined + self.stayers_lost as u64;
        if trail.leaves > allowed {
            let left = trail.leaves;
            self.faults.record(Fault::NoticeOrder, 1, || {
                format!(
                    "client {key} heard {left} leave notices when only {joined} clients had \
                     joined: a leave came before its member's join"
                )
            });
        }
    }

    fn status(&self) -> String {
        format!(
            "notices: joins {}/{}, leaves {}/{}",
            self.notices.joined,
            self.joins_expected(),
            self.notices.left,
            self.leaves_expected()
        )
    }
}

impl Observer for Churners {
    fn opened(&mut self, key: usize, _dialled: u32, _now: Instant) {
        if self.roles.len() <= key {
            self.roles.resize(key + 1, None);
        }
        let role = self.next_role;
        self.roles[key] = Some(role);
        if self.trails.len() <= key {
            self.trails.resize(key + 1, None);
        }
        self.trails[key] = match role {
            Role::Watcher | Role::Background => Some(NoticeTrail::default()),
            Role::Churn(_) => None,
        };
        match role {
            Role::Watcher => {
                self.watcher_opened = true;
                self.stayers_open += 1;
            }
            Role::Background => {
                self.background_opened += 1;
                self.stayers_open += 1;
            }
            Role::Churn(_) => self.churn_opened += 1,
        }
    }

    /// Nobody chats in a churn run, unless another generator shares the room.
    fn chat(&mut self, key: usize, body: &str, _now: Instant) {
        if self.role(key) == Some(Role::Watcher) {
            self.notices.other += 1;
        }
        if self.shared {
            return;
        }
        self.faults.record(Fault::Stray, 1, || {
            format!(
                "client {key} got {} in a run where nobody chats",
                quote(body)
            )
        });
    }

    fn notice(&mut self, key: usize, notice: Notice, count: u64, _now: Instant) {
        if let Some(Some(trail)) = self.trails.get_mut(key) {
            trail.push(notice, count);
            self.check_join_before_leave(key);
        }
        match self.role(key) {
            Some(Role::Watcher) => {
                self.notices.notice(notice, count);
                let (left, departed) = (self.notices.left, self.departed);
                if notice == Notice::Left && left > departed {
                    self.faults.record(Fault::ExtraNotice, left - departed, || {
                        format!("the watcher heard {left} leave notices when {departed} had left")
                    });
                }
            }
            // The room sends a newcomer nothing before its own join notice.
            Some(Role::Churn(Stage::Joining)) if notice == Notice::Joined => {
                self.roles[key] = Some(Role::Churn(Stage::Joined));
                self.to_leave.push(key);
            }
            _ => {}
        }
    }

    fn gone(&mut self, key: usize) {
        let Some(role) = self.role(key) else {
            return;
        };
        self.roles[key] = None;
        match role {
            Role::Watcher | Role::Background => {
                self.stayers_open -= 1;
                if !self.closing_stayers {
                    self.stayers_lost += 1;
                }
                if role == Role::Watcher {
                    self.watcher_gone = true;
                } else {
                    self.background_gone += 1;
                    // Closed on purpose, it was counted when its Close went out.
                    self.departed += u64::from(!self.closing_stayers);
                }
            }
            Role::Churn(stage) => {
                self.churn_gone += 1;
                if stage != Stage::Leaving {
                    self.churn_lost += 1;
                    self.departed += 1;
                }
            }
        }
    }
}

pub fn run(run: &mut Run, plan: &Plan) -> io::Result<ChurnReport> {
    let mut obs = Churners::new();
    obs.shared = run.generator.shared();
    let mut problems = Vec::new();
    let stayers = connect_stayers(run, &mut obs, plan)?;
    let mut cycles = Cycles {
        cycles: plan.cycles,
        rate: plan.rate,
        abrupt_ratio: plan.abrupt_ratio,
        ..Cycles::default()
    };
    let mut server = None;
    if !obs.watcher_opened {
        problems.push("the watcher did not connect".into());
    } else if !run.timed_out {
        if !obs.heard_all() {
            problems.push("the watcher did not hear every background client join".into());
        }
        let before = run.server.and_then(|p| sample(p).ok());
        let failed_before = run.fleet.tally.clone();
        let (ended, t) = cycle(run, &mut obs, plan, &mut cycles)?;
        let failures = &run.fleet.tally.failures;
        for (cause, &n) in failures {
            let was = failed_before.failures.get(cause).copied().unwrap_or(0);
            if n > was {
                cycles.failures.insert(cause.clone(), n - was);
            }
        }
        cycles.failed = cycles.failures.values().sum();
        cycles.clean_answered = (run.fleet.tally.closed_clean - failed_before.closed_clean) as u64;
        cycles.lost_after_open = obs.churn_lost;
        if !run.timed_out {
            let (back, after) = settle(run, &mut obs, plan, before.as_ref(), ended)?;
            if let (Some(before), Some(after), Some(p)) = (before, after, run.server) {
                server = Some(ServerFootprint {
                    fds_before: before.fds,
                    fds_after: after.fds,
                    fd_delta: after.fds as i64 - before.fds as i64,
                    fds_back_s: back,
                    rss_before_kib: before.rss_kib,
                    rss_after_kib: after.rss_kib,
                    rss_delta_kib: after.rss_kib as i64 - before.rss_kib as i64,
                    peak_rss_kib: p.peak_rss_kib().unwrap_or(0),
                    cpu_s: after.cpu_s - before.cpu_s,
                });
            }
        }
        cycles.duration_s = t;
        cycles.cycles_per_s = if t > 0.0 {
            cycles.started as f64 / t
        } else {
            0.0
        };
        if !run.timed_out {
            if obs.stayers_lost == 0 {
                let mut found = Faults::default();
                notices::compare(&obs.stayer_trails(), &mut found);
                obs.faults.merge(&found);
            }
            close_background(run, &mut obs, plan)?;
        }
    }

    let notices = NoticeCount {
        joins_expected: obs.joins_expected(),
        joins_seen: obs.notices.joined,
        leaves_expected: obs.leaves_expected(),
        leaves_seen: obs.notices.left,
        other: obs.notices.other,
    };
    let stayers = Stayers {
        background: plan.background,
        background_opened: obs.background_opened,
        watcher_opened: obs.watcher_opened,
        connect_s: stayers,
        lost: obs.stayers_lost,
    };
    let close = run.close_all()?;

    verdict(
        run,
        &mut obs,
        plan,
        (&cycles, &notices, server.as_ref()),
        &mut problems,
    );
    run.check_end(&close, &mut problems);
    run.faults.merge(&obs.faults);
    let faults = run.take_faults(&mut problems);
    Ok(ChurnReport {
        scenario: "churn",
        setup: run.final_setup(),
        stayers,
        cycles,
        notices,
        server,
        close,
        generator_cpu_s: Proc(None).cpu_seconds().unwrap_or(0.0),
        timed_out: run.timed_out,
        faults,
        problems,
    })
}

/// What the churn found wrong, besides what the observer recorded as it went.
fn verdict(
    run: &Run,
    obs: &mut Churners,
    plan: &Plan,
    (cycles, notices, server): (&Cycles, &NoticeCount, Option<&ServerFootprint>),
    problems: &mut Vec<String>,
) {
    let stayers_failed = run.fleet.tally.failed().saturating_sub(cycles.failed);
    if stayers_failed > 0 {
        problems.push(format!(
            "{stayers_failed} watcher or background clients failed"
        ));
    }
    if obs.stayers_lost > 0 {
        problems.push(format!(
            "{} watcher or background clients lost",
            obs.stayers_lost
        ));
    }
    if obs.watcher_opened && !obs.watcher_gone {
        let mut totals = Faults::default();
        (obs.notices).check(notices.joins_expected, notices.leaves_expected, &mut totals);
        obs.faults.merge(&totals);
    } else if obs.watcher_opened {
        problems.push("the watcher was lost: notice counts are incomplete".into());
    }
    if cycles.failed > 0 {
        problems.push(format!(
            "{} of {} short-lived clients failed",
            cycles.failed, cycles.started
        ));
    }
    if cycles.started < plan.cycles && !run.timed_out && obs.watcher_opened {
        problems.push(format!(
            "{} of {} cycles started",
            cycles.started, plan.cycles
        ));
    }
    if cycles.clean_answered < cycles.clean {
        problems.push(format!(
            "{} of {} closing handshakes not answered",
            cycles.clean - cycles.clean_answered,
            cycles.clean
        ));
    }
    if let Some(s) = server {
        if s.fds_after > s.fds_before {
            problems.push(format!(
                "the server holds {} more open files than before the churn (after {:?})",
                s.fds_after - s.fds_before,
                plan.settle
            ));
        }
    }
}

/// Dials the watcher, then the background clients, and waits until the watcher has heard all
/// their join notices. Returns how long that took, if it finished.
fn connect_stayers(run: &mut Run, obs: &mut Churners, plan: &Plan) -> io::Result<Option<f64>> {
    let start = Instant::now();
    obs.next_role = Role::Watcher;
    run.fleet.dial(1);
    run.run_until(
        obs,
        None,
        |fleet, obs, _| fleet.settled() && (!obs.watcher_opened || obs.notices.joined >= 1),
        |_, obs| format!("watcher connecting; {}", obs.status()),
    )?;
    if !obs.watcher_opened || run.timed_out {
        run.progress.finish();
        return Ok(None);
    }
    obs.next_role = Role::Background;
    run.fleet.dial(plan.background);
    let mut settled_at = None;
    let ending = run.run_until(
        obs,
        None,
        |fleet, obs, now| {
            if !fleet.settled() {
                return false;
            }
            // Counts that cannot come right (a client lost mid-join) stop the wait at --settle.
            let at = *settled_at.get_or_insert(now);
            obs.heard_all() || now.duration_since(at) >= plan.settle
        },
        |fleet, obs| {
            format!(
                "background: {} open, {} in flight, {} failed; {}",
                obs.background_opened,
                fleet.inflight(),
                fleet.tally.failed(),
                obs.status()
            )
        },
    )?;
    run.progress.finish();
    Ok((ending == Ending::Done).then(|| start.elapsed().as_secs_f64()))
}

/// The churn itself; returns when the last short-lived client is gone (or at the deadline),
/// and how long the cycles took.
fn cycle(
    run: &mut Run,
    obs: &mut Churners,
    plan: &Plan,
    cycles: &mut Cycles,
) -> io::Result<(Instant, f64)> {
    obs.next_role = Role::Churn(Stage::Joining);
    obs.start_cycles();
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now();
    let mut next_at = start;
    let mut leavers = 0u64;
    loop {
        // Those who heard their join notice in the last turn leave now. No dial happened since,
        // so a key still has its client, unless it is gone (then its role was cleared).
        for key in std::mem::take(&mut obs.to_leave) {
            if obs.role(key) != Some(Role::Churn(Stage::Joined)) {
                continue;
            }
            if leaves_abruptly(leavers, plan.abrupt_ratio) {
                run.fleet.reset(key);
                obs.reset(key);
                cycles.abrupt += 1;
            } else {
                run.fleet.close(key);
                obs.leaving(key);
                cycles.clean += 1;
            }
            leavers += 1;
        }
        let now = Instant::now();
        let mut alive = run.fleet.len() + run.fleet.pending() - obs.stayers_open;
        while cycles.started < plan.cycles && next_at <= now && alive < plan.max_alive {
            run.fleet.dial(1);
            cycles.started += 1;
            alive += 1;
            next_at += interval;
        }
        cycles.max_alive = cycles.max_alive.max(alive);
        cycles.opened = obs.churn_opened;
        if cycles.started == plan.cycles && alive == 0 {
            break;
        }
        if now >= run.deadline {
            run.timed_out = true;
            break;
        }
        let wake = if cycles.started < plan.cycles && alive < plan.max_alive {
            next_at.min(run.deadline)
        } else {
            run.deadline
        };
        run.progress.tick(now, || {
            let elapsed = now.duration_since(start).as_secs_f64().max(1e-9);
            format!(
                "churn: {}/{} started ({:.0}/s), {alive} alive, {} failed; {}",
                cycles.started,
                plan.cycles,
                cycles.started as f64 / elapsed,
                run.fleet.tally.failed(),
                obs.status()
            )
        });
        let wait = wake
            .saturating_duration_since(now)
            .min(run.progress.wait(now));
        run.fleet.turn(Some(wait), obs)?;
    }
    run.progress.finish();
    let end = Instant::now();
    Ok((end, end.duration_since(start).as_secs_f64()))
}

/// The server's open files, memory and CPU time at one moment.
struct Sample {
    fds: usize,
    rss_kib: u64,
    cpu_s: f64,
}

fn sample(p: Proc) -> io::Result<Sample> {
    Ok(Sample {
        fds: p.fd_count()?,
        rss_kib: p.rss_kib()?,
        cpu_s: p.cpu_seconds()?,
    })
}

/// Waits (at most `--settle`) for the last notices and for the server's open files to come
/// back to `before`. Returns how long after `ended` the files were back, and the sample after
/// (its fd count the last one read while waiting).
fn settle(
    run: &mut Run,
    obs: &mut Churners,
    plan: &Plan,
    before: Option<&Sample>,
    ended: Instant,
) -> io::Result<(Option<f64>, Option<Sample>)> {
    let server = run.server;
    let baseline = before.map(|s| s.fds);
    let mut back_at: Option<Instant> = None;
    let mut last_read: Option<Instant> = None;
    // Written by the wait's test, read by its status line.
    let fds = Cell::new(None);
    let mut heard_at: Option<Instant> = None;
    poll_until(
        run,
        obs,
        Instant::now() + plan.settle,
        |obs, now| {
            if let (Some(p), Some(base), None) = (server, baseline, back_at) {
                if last_read.is_none_or(|at| now.duration_since(at) >= FD_POLL) {
                    last_read = Some(now);
                    fds.set(p.fd_count().ok());
                    if fds.get().is_some_and(|n| n <= base) {
                        back_at = Some(now);
                    }
                }
            }
            let files_back = baseline.is_none() || back_at.is_some();
            if obs.heard_all() && obs.stayers_caught_up() {
                let at = *heard_at.get_or_insert(now);
                files_back && now.duration_since(at) >= LINGER
            } else {
                false
            }
        },
        |obs| {
            format!(
                "settling: server fds {} (before {}); {}",
                fds.get().map_or("-".into(), |n: usize| n.to_string()),
                baseline.map_or("-".into(), |n| n.to_string()),
                obs.status()
            )
        },
    )?;
    run.progress.finish();
    // The fd count is the one that ended the wait (or the last one read): files that come and
    // go afterwards are someone else's, not the churn's.
    let after = server.and_then(|p| sample(p).ok()).map(|mut s| {
        if let Some(n) = fds.get() {
            s.fds = n;
        }
        s
    });
    Ok((
        back_at.map(|at| at.saturating_duration_since(ended).as_secs_f64()),
        after,
    ))
}

/// Like [`Run::run_until`] for the waits after the churn, which watch for things that send no
/// event (the server's fd count, a quiet spell): tests `done` every [`FD_POLL`] at least.
/// Not bounded by the run's deadline, only by `until`. Returns whether `done` came true.
fn poll_until(
    run: &mut Run,
    obs: &mut Churners,
    until: Instant,
    mut done: impl FnMut(&Churners, Instant) -> bool,
    status: impl Fn(&Churners) -> String,
) -> io::Result<bool> {
    loop {
        let now = Instant::now();
        if done(obs, now) {
            return Ok(true);
        }
        if now >= until {
            return Ok(false);
        }
        run.progress.tick(now, || status(obs));
        let wait = until
            .saturating_duration_since(now)
            .min(FD_POLL)
            .min(run.progress.wait(now));
        run.fleet.turn(Some(wait), obs)?;
    }
}

/// Closes the background clients; waits (at most `--settle`) until they are gone and the
/// watcher has heard them leave.
fn close_background(run: &mut Run, obs: &mut Churners, plan: &Plan) -> io::Result<()> {
    obs.closing_stayers = true;
    // The stayers' own leaves follow joins heard before the cycles.
    obs.joins_before_cycles = None;
    let keys: Vec<usize> = (0..obs.roles.len())
        .filter(|&key| obs.role(key) == Some(Role::Background))
        .collect();
    for key in keys {
        if run.fleet.close(key) {
            obs.departed += 1;
        }
    }
    let mut heard_at: Option<Instant> = None;
    poll_until(
        run,
        obs,
        Instant::now() + plan.settle,
        |obs, now| {
            let watcher_left = usize::from(obs.watcher_opened && !obs.watcher_gone);
            if obs.stayers_open == watcher_left && obs.heard_all() {
                let at = *heard_at.get_or_insert(now);
                now.duration_since(at) >= LINGER
            } else {
                false
            }
        },
        |obs| {
            format!(
                "closing the background: {} left; {}",
                obs.stayers_open.saturating_sub(1),
                obs.status()
            )
        },
    )?;
    obs.closing_stayers = false;
    run.progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Notice::{Joined, Left};

    #[test]
    fn resets_are_spread_evenly() {
        let count = |n: u64, ratio: f64| (0..n).filter(|&i| leaves_abruptly(i, ratio)).count();
        assert_eq!(count(1000, 0.0), 0);
        assert_eq!(count(1000, 1.0), 1000);
        assert_eq!(count(1000, 0.5), 500);
        assert_eq!(count(1000, 0.25), 250);
        assert_eq!(count(7, 0.5), 3);
        for n in 0..200 {
            for ratio in [0.1, 0.3, 0.5, 0.7, 0.9] {
                assert_eq!(
                    count(n, ratio),
                    (n as f64 * ratio).floor() as usize,
                    "{n} {ratio}"
                );
            }
        }
        // Half means every other one, not the first half.
        let half: Vec<bool> = (0..6).map(|i| leaves_abruptly(i, 0.5)).collect();
        assert_eq!(half, [false, true, false, true, false, true]);
    }

    #[test]
    fn notices_are_counted_by_kind() {
        let mut n = Notices::default();
        for (notice, count) in [(Joined, 2), (Left, 1), (Joined, 1)] {
            n.notice(notice, count);
        }
        n.other += 1;
        assert_eq!(
            n,
            Notices {
                joined: 3,
                left: 1,
                other: 1
            }
        );
        assert!(n.reached(3, 1));
        assert!(n.reached(2, 0));
        assert!(!n.reached(4, 1));
        assert!(!n.reached(3, 2));
    }

    #[test]
    fn losses_and_duplicates_are_told_apart() {
        let n = Notices {
            joined: 10,
            left: 8,
            other: 0,
        };
        let faults = |joins, leaves| {
            let mut f = Faults::default();
            n.check(joins, leaves, &mut f);
            f
        };
        assert!(faults(10, 8).is_empty());
        let lost = faults(11, 8);
        assert_eq!(lost.count(Fault::Lost), 1);
        assert!(!lost.has(Fault::ExtraNotice));
        let both = faults(9, 9);
        assert_eq!(both.count(Fault::ExtraNotice), 1, "a join too many");
        assert_eq!(both.count(Fault::Lost), 1, "a leave lost");
    }

    #[test]
    fn the_watcher_expects_everyone_but_its_own_leave() {
        let mut obs = Churners::new();
        let t = Instant::now();
        obs.opened(0, 0, t);
        obs.notice(0, Joined, 1, t);
        obs.next_role = Role::Background;
        obs.opened(1, 0, t);
        obs.notice(0, Joined, 1, t);
        assert!(obs.heard_all());
        obs.next_role = Role::Churn(Stage::Joining);
        obs.opened(2, 0, t);
        obs.opened(3, 0, t);
        // Chatter or a leave is no reason to leave; its own join notice is, once.
        obs.chat(2, "hello", t);
        obs.notice(2, Left, 1, t);
        assert!(obs.to_leave.is_empty());
        obs.notice(2, Joined, 2, t);
        obs.notice(2, Joined, 1, t);
        assert_eq!(obs.to_leave, [2]);
        assert_eq!(obs.joins_expected(), 4);
        obs.reset(2);
        obs.roles[3] = Some(Role::Churn(Stage::Leaving));
        obs.gone(3);
        assert_eq!((obs.leaves_expected(), obs.churn_lost), (2, 0));
        obs.notice(0, Joined, 2, t);
        obs.notice(0, Left, 1, t);
        obs.chat(0, "hello", t);
        assert!(!obs.heard_all());
        obs.notice(0, Left, 1, t);
        assert!(obs.heard_all());
        assert_eq!(obs.notices.other, 1);
        // A background client lost midway: its leave is due too, and it counts as lost.
        obs.gone(1);
        assert_eq!((obs.leaves_expected(), obs.stayers_lost), (3, 1));
        assert_eq!(obs.stayers_open, 1);
    }

    #[test]
    fn a_leave_before_its_join_is_caught_at_any_stayer() {
        let t = Instant::now();
        let mut obs = Churners::new();
        obs.opened(0, 0, t);
        obs.notice(0, Joined, 1, t);
        obs.next_role = Role::Background;
        obs.opened(1, 0, t);
        obs.notice(0, Joined, 1, t);
        obs.notice(1, Joined, 1, t);
        obs.start_cycles();
        obs.departed = 2; // two short-lived clients have left, as far as the watcher knows
                          // Join then leave, at both: fine. Then a leave first, at the background client.
        for key in [0, 1] {
            obs.notice(key, Joined, 1, t);
            obs.notice(key, Left, 1, t);
        }
        assert!(obs.faults.is_empty(), "{:?}", obs.faults);
        obs.notice(1, Left, 1, t);
        assert!(obs.faults.has(Fault::NoticeOrder), "{:?}", obs.faults);
        obs.notice(1, Joined, 1, t);
        assert_eq!(obs.faults.count(Fault::NoticeOrder), 1);
    }

    #[test]
    fn ports_cover_the_time_wait() {
        assert_eq!(socket_needs(100, 20_000, 2000.0, 512), (613, 20_613));
        assert_eq!(socket_needs(0, 10, 2000.0, 512), (513, 523));
        assert_eq!(socket_needs(0, 1_000_000, 100.0, 8), (9, 6009));
    }
}
