//! Phase one of every scenario: connect N clients and wait until the join flood has drained.
//!
//! The server tells every member about every newcomer, the newcomer included, so the client
//! that joined k-th (0-based, in the server's order) hears N - k notices and everyone together
//! N(N+1)/2. The server's order may differ from the order our handshakes complete in, so the
//! check is on the whole: the total, and the multiset of per-client counts being exactly
//! {1, 2, …, N}. If clients are lost midway the totals cannot be predicted; then the flood
//! counts as drained after [`QUIET`] without a notice.

use std::io;
use std::time::{Duration, Instant};

use crate::chat::Notice;
use crate::fleet::Observer;
use crate::report::Join;
use crate::scenario::Run;

const QUIET: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct JoinCounter {
    /// Join notices heard, by client key.
    heard: Vec<u64>,
    total: u64,
    last_notice: Option<Instant>,
}

impl Observer for JoinCounter {
    fn opened(&mut self, key: usize, _now: Instant) {
        if self.heard.len() <= key {
            self.heard.resize(key + 1, 0);
        }
        self.heard[key] = 0; // the key may have belonged to a client that failed
    }

    fn notice(&mut self, key: usize, notice: Notice, count: u64, now: Instant) {
        if notice == Notice::Joined {
            if let Some(heard) = self.heard.get_mut(key) {
                *heard += count;
            }
            self.total += count;
            self.last_notice = Some(now);
        }
    }
}

/// Expected notices when `n` clients joined and none left: 1 + 2 + … + n.
pub fn triangle(n: usize) -> u64 {
    let n = n as u64;
    n * (n + 1) / 2
}

/// Dials `clients` connections and waits for the join flood to drain.
pub fn connect_and_drain(run: &mut Run, clients: usize) -> io::Result<Join> {
    let start = Instant::now();
    let mut counter = JoinCounter::default();
    let mut connected_at = None;
    run.fleet.dial(clients);
    run.run_until(
        &mut counter,
        None,
        |fleet, counter, now| {
            if !fleet.settled() {
                return false;
            }
            let connected = *connected_at.get_or_insert(now);
            let tally = &fleet.tally;
            if tally.lost_after_open == 0 {
                counter.total >= triangle(tally.opened)
            } else {
                let last = counter.last_notice.unwrap_or(connected).max(connected);
                now.duration_since(last) >= QUIET
            }
        },
        |fleet, counter| {
            let tally = &fleet.tally;
            format!(
                "connecting: {} open, {} in flight, {} failed; join notices {}/{}",
                tally.opened,
                fleet.inflight(),
                tally.failed(),
                counter.total,
                triangle(clients.saturating_sub(tally.failed() as usize))
            )
        },
    )?;
    run.progress.finish();
    let tally = &run.fleet.tally;
    let drained = !run.timed_out;
    // Open clients' counts, sorted, must read 1, 2, …, N.
    let mut counts: Vec<u64> = run
        .fleet
        .open_clients()
        .iter()
        .map(|&(key, _)| counter.heard.get(key).copied().unwrap_or(0))
        .collect();
    counts.sort_unstable();
    let consistent =
        tally.lost_after_open == 0 && counts.iter().zip(1..).all(|(&count, want)| count == want);
    Ok(Join {
        clients,
        opened: tally.opened,
        failed: tally.failed(),
        failures: tally.failures.clone(),
        connect_s: connected_at.map(|at| at.duration_since(start).as_secs_f64()),
        drain_s: if drained {
            Some(
                counter
                    .last_notice
                    .map_or(0.0, |at| at.duration_since(start).as_secs_f64()),
            )
        } else {
            None
        },
        join_notices: counter.total,
        join_notices_expected: triangle(tally.opened),
        join_counts_consistent: consistent,
        lost_after_open: tally.lost_after_open,
    })
}

/// What went wrong in the join phase, for the report's verdict.
pub fn problems(join: &Join, out: &mut Vec<String>) {
    if join.failed > 0 {
        out.push(format!(
            "{} of {} connections failed",
            join.failed, join.clients
        ));
    }
    if join.drain_s.is_none() {
        out.push("the join flood did not drain".into());
    } else if !join.join_counts_consistent {
        out.push("join notice counts are inconsistent".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_is_a_triangle() {
        assert_eq!(triangle(0), 0);
        assert_eq!(triangle(1), 1);
        assert_eq!(triangle(4), 10);
        assert_eq!(triangle(10_000), 50_005_000);
    }
}
