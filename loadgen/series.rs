//! The run second by second, for the report's `series` and the HTML report's charts: messages
//! sent and delivered, latency p50 and p99, connections open.
//!
//! It costs a delivery nothing: the loop looks at the clock once per turn ([`Series::tick`]),
//! and when a second has passed it takes the difference of the running totals, and of the
//! run's latency histogram against its copy from a second ago (HdrHistogram subtracts
//! histograms exactly). Two copies of the histogram a second is the whole price.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Second {
    /// Seconds since the run began: this second ends at `t_s + 1`.
    pub t_s: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Latency of this second's deliveries (absent when there were none).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Connections open at the end of the second.
    pub connections: usize,
}

/// What the traffic has come to so far: messages sent, deliveries, and their latencies.
pub struct Totals<'a> {
    pub sent: u64,
    pub delivered: u64,
    pub latency: &'a Histogram<u64>,
}

pub struct Series {
    epoch: Instant,
    /// Seconds completed.
    done: u64,
    last_sent: u64,
    last_delivered: u64,
    last_latency: Option<Histogram<u64>>,
    pub seconds: Vec<Second>,
}

impl Series {
    pub fn new(epoch: Instant) -> Series {
        Series {
            epoch,
            done: 0,
            last_sent: 0,
            last_delivered: 0,
            last_latency: None,
            seconds: Vec::new(),
        }
    }

    /// Whether a second has ended since the last look: then [`Series::tick`] has work.
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.epoch).as_secs() > self.done
    }

    /// Records the seconds completed by `now`; `totals` is `None` outside the traffic.
    pub fn tick(&mut self, now: Instant, connections: usize, totals: Option<Totals>) {
        let elapsed = now.saturating_duration_since(self.epoch).as_secs();
        if elapsed > self.done {
            self.close_seconds(elapsed, connections, totals);
        }
    }

    /// Records the current, partial second too (once: a second finished is not reopened).
    pub fn finish(&mut self, now: Instant, connections: usize, totals: Option<Totals>) {
        let elapsed = now.saturating_duration_since(self.epoch).as_secs();
        if elapsed >= self.done {
            self.close_seconds(elapsed + 1, connections, totals);
        }
    }

    /// The seconds up to `until`: what happened since the last look goes to the first of
    /// them (the loop looks at least once a second while anything happens, so that is where it
    /// happened), zeros to any after it.
    #[cold]
    fn close_seconds(&mut self, until: u64, connections: usize, totals: Option<Totals>) {
        let mut second = Second {
            t_s: self.done,
            connections,
            ..Second::default()
        };
        if let Some(totals) = totals {
            second.sent = totals.sent.saturating_sub(self.last_sent);
            second.delivered = totals.delivered.saturating_sub(self.last_delivered);
            (self.last_sent, self.last_delivered) = (totals.sent, totals.delivered);
            let mut latest = totals.latency.clone();
            if let Some(before) = &self.last_latency {
                // `before` is an earlier state of the same histogram: it cannot fail.
                let _ = latest.subtract(before);
            }
            if !latest.is_empty() {
                let ms = |q: f64| latest.value_at_quantile(q) as f64 / 1000.0;
                (second.p50_ms, second.p99_ms) = (Some(ms(0.5)), Some(ms(0.99)));
            }
            self.last_latency = Some(totals.latency.clone());
        }
        self.seconds.push(second);
        self.done += 1;
        while self.done < until {
            let t_s = self.done;
            self.seconds.push(Second {
                t_s,
                connections,
                ..Second::default()
            });
            self.done += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_second_gets_its_own_counts_and_latencies() {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let mut series = Series::new(epoch);
        let mut hist = crate::report::new_histogram();
        series.tick(at(500), 3, None);
        assert!(series.seconds.is_empty(), "the first second is not over");
        for _ in 0..99 {
            hist.record(1000).unwrap();
        }
        hist.record(50_000).unwrap();
        fn totals(sent: u64, delivered: u64, latency: &Histogram<u64>) -> Totals<'_> {
            Totals {
                sent,
                delivered,
                latency,
            }
        }
        series.tick(at(1100), 4, Some(totals(10, 100, &hist)));
        for _ in 0..10 {
            hist.record(7000).unwrap();
        }
        // Nobody looked during the third and fourth seconds: they are there, empty.
        series.finish(at(3200), 2, Some(totals(15, 110, &hist)));
        let s = &series.seconds;
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!((s[0].t_s, s[0].sent, s[0].delivered), (0, 10, 100));
        assert_eq!(s[0].p50_ms, Some(1.0));
        assert!(s[0].p99_ms.unwrap() < 1.1, "{s:?}");
        assert_eq!((s[2].delivered, s[2].p50_ms), (0, None));
        assert_eq!((s[3].t_s, s[3].connections), (3, 2));
        assert_eq!((s[1].t_s, s[1].sent, s[1].delivered), (1, 5, 10));
        // 7 ms at the histogram's precision (3 significant digits): this second's alone.
        let p50 = s[1].p50_ms.unwrap();
        assert!(
            (7.0..7.01).contains(&p50),
            "only this second's deliveries: {p50}"
        );
    }
}
