//! Phase one of every scenario: connect N clients and wait until the join flood has drained.
//!
//! The server tells every member about every newcomer, the newcomer included, so the client
//! that joined k-th (0-based, in the server's order) hears N - k notices and everyone together
//! N(N+1)/2. Notices carry no identity, so what a client can check is its count:
//!
//! - the counts, sorted, must read exactly 1, 2, …, N: a notice lost or one too many shows in
//!   the total; one moved from one client to another shows unless it moved between two clients
//!   whose counts differ by one, which a black box cannot tell from the two having joined the
//!   other way round;
//! - except where the order of joins is known: against one server, a client dialled after
//!   another had heard its own join notice joined after it, so must hear fewer notices. Its own
//!   join notice, not its 101: a server may answer the upgrade before it adds the client to the
//!   room (the tutorial's Go server does), and only the notice says the client is in. (The
//!   first join notice a client hears is its own: the room sends a newcomer nothing before.)
//!   With `--max-inflight 1` against a server that joins before it answers, every join is
//!   ordered so, and the counts must be N, N-1, …, 1 in dial order: then any moved notice
//!   shows.
//!
//! Once every client is open and the total is still short, the flood counts as drained after
//! [`QUIET`] without a notice, and what is missing is reported as lost (not as a timeout).
//! With other generators in the room (`--generator I/N`, N > 1) only that quiet ends it: their
//! clients' joins count too, so the own total is no sign that the room's flood is over.

use std::io;
use std::time::{Duration, Instant};

use crate::chat::Notice;
use crate::faults::{quote, Fault, Faults};
use crate::fleet::{Fleet, Observer};
use crate::report::Join;
use crate::scenario::{Ending, Run};

const QUIET: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct JoinCounter {
    /// Join notices heard, by client key.
    heard: Vec<u64>,
    /// Clients dialled when each client (by key) heard its own join notice (`u32::MAX`, "no
    /// claim", until it has).
    dialled_at_join: Vec<u32>,
    total: u64,
    /// Leave notices: nobody leaves during the flood unless a client is lost.
    leaves: u64,
    last_notice: Option<Instant>,
    /// Other generators share the room: their chat may come at any time.
    shared: bool,
    /// Chat messages during the flood, before anyone of ours sent one.
    faults: Faults,
}

impl Observer for JoinCounter {
    fn chat(&mut self, key: usize, body: &str, _now: Instant) {
        if !self.shared {
            self.faults.record(Fault::Stray, 1, || {
                format!("client {key} got {} during the join flood", quote(body))
            });
        }
    }

    fn opened(&mut self, key: usize, _dialled: u32, _now: Instant) {
        if self.heard.len() <= key {
            self.heard.resize(key + 1, 0);
            self.dialled_at_join.resize(key + 1, u32::MAX);
        }
        self.heard[key] = 0; // the key may have belonged to a client that failed
        self.dialled_at_join[key] = u32::MAX;
    }

    fn notice_dialled(
        &mut self,
        key: usize,
        notice: Notice,
        count: u64,
        now: Instant,
        dialled: u32,
    ) {
        if notice == Notice::Joined {
            if let Some(heard) = self.heard.get_mut(key) {
                if *heard == 0 {
                    self.dialled_at_join[key] = dialled;
                }
                *heard += count;
            }
            self.total += count;
            self.last_notice = Some(now);
        } else {
            self.leaves += count;
        }
    }
}

/// Expected notices when `n` clients joined and none left: 1 + 2 + … + n.
pub fn triangle(n: usize) -> u64 {
    let n = n as u64;
    n * (n + 1) / 2
}

/// Dials `clients` connections, spread evenly over `ramp` (all at once if zero), and waits for
/// the join flood to drain. The ramp is added to the run's `--timeout`: it is asked for, not
/// work.
pub fn connect_and_drain(run: &mut Run, clients: usize, ramp: Duration) -> io::Result<Join> {
    let start = Instant::now();
    let mut counter = JoinCounter {
        shared: run.generator.shared(),
        ..JoinCounter::default()
    };
    let mut connected_at = None;
    run.deadline += ramp;
    let mut dialled = 0;
    let status = |fleet: &Fleet, counter: &JoinCounter| {
        let tally = &fleet.tally;
        format!(
            "connecting: {} open, {} in flight, {} failed; join notices {}/{}",
            tally.opened,
            fleet.inflight(),
            tally.failed(),
            counter.total,
            triangle(clients.saturating_sub(tally.failed() as usize))
        )
    };
    loop {
        // Client k is due at start + ramp × k / clients.
        let due_at = |k: usize| start + ramp.mul_f64(k as f64 / clients.max(1) as f64);
        let now = Instant::now();
        let due = (dialled..clients).take_while(|&k| due_at(k) <= now).count();
        run.fleet.dial(due);
        dialled += due;
        let all_dialled = dialled == clients;
        let done = |fleet: &Fleet, counter: &JoinCounter, now: Instant| {
            if !all_dialled || !fleet.settled() {
                return false;
            }
            let connected = *connected_at.get_or_insert(now);
            // Everyone is open, so every join has happened: a flood that falls quiet short of
            // its total has lost notices, and waiting longer would not bring them.
            let last = counter.last_notice.unwrap_or(connected).max(connected);
            let quiet = now.duration_since(last) >= QUIET;
            let tally = &fleet.tally;
            // Other generators' clients join too, so our own triangle is reached long before
            // the room's flood ends: then only falling quiet says it has drained.
            let complete = !counter.shared && counter.total >= triangle(tally.opened);
            quiet || (tally.lost_after_open == 0 && complete)
        };
        // Falling quiet is no event: look again every so often, or the wait lasts until one
        // comes (the server's next ping, say); and when the next client is due.
        let mut look_again = Instant::now() + QUIET / 8;
        if !all_dialled {
            look_again = look_again.min(due_at(dialled));
        }
        let ending = run.run_until(&mut counter, Some(look_again), done, status)?;
        if ending != Ending::Expired {
            break;
        }
    }
    run.progress.finish();
    let connect_s = connected_at.map(|at| at.duration_since(start).as_secs_f64());
    Ok(summary(run, &counter, clients, start, connect_s))
}

/// What the join phase came to; records its faults.
fn summary(
    run: &mut Run,
    counter: &JoinCounter,
    clients: usize,
    start: Instant,
    connect_s: Option<f64>,
) -> Join {
    let tally = &run.fleet.tally;
    let open = run.fleet.open_clients();
    let shared = run.generator.shared();
    run.faults.merge(&counter.faults);
    // Across the processes of a cluster, one client's handshake finishing before another's
    // starts does not order their joins: each process hands its joins to the backplane in
    // its own time.
    let causal = run.setup.targets.len() == 1;
    let consistent = tally.lost_after_open == 0
        && check_counts(counter, &open, (shared, causal), &mut run.faults);
    if tally.lost_after_open == 0 && counter.leaves > 0 && !shared {
        let n = counter.leaves;
        run.faults.record(Fault::ExtraNotice, n, || {
            format!("{n} leave notices during the join flood, when nobody left")
        });
    }
    let since_start = |at: Instant| at.duration_since(start).as_secs_f64();
    Join {
        clients,
        opened: tally.opened,
        failed: tally.failed(),
        failures: tally.failures.clone(),
        connect_s,
        drain_s: (!run.timed_out).then(|| counter.last_notice.map_or(0.0, since_start)),
        join_notices: counter.total,
        join_notices_expected: triangle(tally.opened),
        join_counts_consistent: consistent,
        lost_after_open: tally.lost_after_open,
    }
}

/// Checks the open clients' join notice counts (see the module comment); records what is
/// wrong as faults and returns whether all is right.
/// With other generators in the room (`shared`), their clients' joins come on top, so only
/// the lower bound holds; `causal`: whether dial order may be checked against the counts.
fn check_counts(
    counter: &JoinCounter,
    open: &[(usize, u32)],
    (shared, causal): (bool, bool),
    faults: &mut Faults,
) -> bool {
    let heard = |key: usize| counter.heard.get(key).copied().unwrap_or(0);
    let expected = triangle(open.len());
    let total: u64 = open.iter().map(|&(key, _)| heard(key)).sum();
    if total < expected {
        let n = expected - total;
        faults.record(Fault::Lost, n, || {
            format!("{n} of {expected} join notices never came")
        });
        return false;
    }
    if shared {
        return true;
    }
    if total > expected {
        let n = total - expected;
        faults.record(Fault::ExtraNotice, n, || {
            format!("{n} join notices too many in the flood ({total} for {expected})")
        });
        return false;
    }
    // Clients by position in the join order their counts imply: the most notices first.
    let mut by_position: Vec<(u64, usize, u32)> = open
        .iter()
        .map(|&(key, index)| (heard(key), key, index))
        .collect();
    by_position.sort_unstable_by_key(|&(count, _, _)| std::cmp::Reverse(count));
    let n = open.len() as u64;
    let mut latest_dial: Option<u32> = None;
    for (position, &(count, key, index)) in by_position.iter().enumerate() {
        if count != n - position as u64 {
            faults.record(Fault::NoticeOrder, 1, || {
                format!("join notice counts are not 1..{n}: client {key} heard {count}")
            });
            return false;
        }
        // Someone placed before this client was dialled only after it had joined.
        let joined_when = counter
            .dialled_at_join
            .get(key)
            .copied()
            .unwrap_or(u32::MAX);
        if causal && latest_dial.is_some_and(|dial| dial >= joined_when) {
            faults.record(Fault::NoticeOrder, 1, || {
                format!(
                    "client {key} heard {count} join notices, as if it had joined after a \
                     client dialled once it had heard its own join notice"
                )
            });
            return false;
        }
        latest_dial = latest_dial.max(Some(index));
    }
    true
}

/// What went wrong in the join phase, for the report's verdict.
pub fn problems(join: &Join, out: &mut Vec<String>) {
    if join.failed > 0 {
        out.push(format!(
            "{} of {} connections failed",
            join.failed, join.clients
        ));
    }
    // What is wrong with the counts is among the run's faults.
    if join.drain_s.is_none() {
        out.push("the join flood did not drain".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three clients (keys 0, 1, 2 in dial order) with these counts, each hearing its own
    /// join notice when `dialled` clients had been dialled.
    fn checked(counts: [u64; 3], dialled: [u32; 3], causal: bool) -> Faults {
        let counter = JoinCounter {
            heard: counts.to_vec(),
            dialled_at_join: dialled.to_vec(),
            total: counts.iter().sum(),
            ..JoinCounter::default()
        };
        let open = [(0, 0), (1, 1), (2, 2)];
        let mut faults = Faults::default();
        check_counts(&counter, &open, (false, causal), &mut faults);
        faults
    }

    #[test]
    fn counts_must_be_one_to_n_and_fit_the_dial_order() {
        let one_at_a_time = [1, 2, 3];
        let all_at_once = [3, 3, 3];
        assert!(checked([3, 2, 1], one_at_a_time, true).is_empty());
        // A notice moved from the first to the second: the same counts, the wrong clients.
        assert!(checked([2, 3, 1], one_at_a_time, true).has(Fault::NoticeOrder));
        // Dialled together, they may have joined either way; across a cluster, too.
        assert!(checked([2, 3, 1], all_at_once, true).is_empty());
        assert!(checked([2, 3, 1], one_at_a_time, false).is_empty());
        assert!(checked([3, 1, 1], all_at_once, true).has(Fault::Lost));
        assert!(checked([3, 3, 1], all_at_once, true).has(Fault::ExtraNotice));
        assert!(checked([3, 3, 0], all_at_once, true).has(Fault::NoticeOrder));
        // Opened one at a time but joined later (the 101 before the join): no claim.
        let unknown = [u32::MAX; 3];
        assert!(checked([2, 3, 1], unknown, true).is_empty());
    }

    /// Only a client's own (first) join notice dates its join; the 101 does not.
    #[test]
    fn a_join_is_dated_by_the_clients_own_join_notice() {
        let t = Instant::now();
        let mut c = JoinCounter::default();
        c.opened(0, 1, t);
        c.opened(1, 2, t); // client 1 dialled and open before client 0 heard a thing
        c.notice_dialled(1, Notice::Joined, 1, t, 2);
        c.notice_dialled(0, Notice::Joined, 2, t, 2);
        assert_eq!(c.dialled_at_join, [2, 2]);
        let open = [(0, 0), (1, 1)];
        let mut faults = Faults::default();
        assert!(
            check_counts(&c, &open, (false, true), &mut faults),
            "{faults:?}"
        );
        c.notice_dialled(1, Notice::Joined, 1, t, 3);
        assert_eq!(c.dialled_at_join[1], 2, "the first one dates it");
    }

    #[test]
    fn the_flood_is_a_triangle() {
        assert_eq!(triangle(0), 0);
        assert_eq!(triangle(1), 1);
        assert_eq!(triangle(4), 10);
        assert_eq!(triangle(10_000), 50_005_000);
    }
}
