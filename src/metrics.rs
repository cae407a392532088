//! Counters for `GET /metrics`, in the Prometheus text exposition format.
//!
//! The event loop owns a [`Metrics`] and bumps plain integers as things happen: no atomics, no
//! locks, nothing but an add in the hot path. Formatting happens only when someone scrapes; so
//! do the `process_*` figures, read from `/proc` then (see [`ProcessStats`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::connection::Ending;

/// Upper bounds of the loop-turn histogram, in seconds.
const TURN_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Connections by phase at the moment of a scrape (counted then, not tracked).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub handshaking: u64,
    pub websocket: u64,
    pub closing: u64,
    /// `--max-connections`: the limit itself, so an alert can compare the connections with it.
    pub max_connections: u64,
    /// What all clients' buffers hold now, and `--max-client-memory` (see `memory.rs`).
    pub client_memory: u64,
    pub max_client_memory: u64,
    /// The most all clients' buffers have held at once since the start.
    pub client_memory_peak: u64,
    /// Times freed client memory was handed back to the system (see `Server::give_back`).
    pub memory_trims: u64,
    /// With `--redis`: the backplane's state and counters.
    pub backplane: Option<BackplaneStats>,
}

/// What the Redis backplane reports (it keeps these itself; see `src/backplane/`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackplaneStats {
    /// Both Redis links are ready (0 means degraded: local delivery only).
    pub up: bool,
    /// Envelopes published for this process's clients.
    pub published: u64,
    /// Envelopes delivered from the subscription (ours back, and the other processes').
    pub received: u64,
    /// Times the backplane went down after being up.
    pub outages: u64,
    /// Messages on the channel that were not envelopes this build can read.
    pub unusable: u64,
    /// Our envelopes published and not yet back.
    pub pending: u64,
}

#[derive(Debug)]
pub struct Metrics {
    start_time: SystemTime,
    pub accepted: u64,
    /// Plain HTTP answers and refused upgrades, by status.
    answered: BTreeMap<u16, u64>,
    /// WebSocket clients the server dropped, by reason (and close code for protocol errors).
    dropped: BTreeMap<(&'static str, u16), u64>,
    pub messages_received: u64,
    pub frames_delivered: u64,
    pub bytes_written: u64,
    /// TLS handshakes (or records) that failed: garbage, no common version or cipher suite.
    tls_failed: u64,
    /// Times a client's reads were held back for its budget, and the seconds of those holds.
    throttled: u64,
    throttled_seconds: f64,
    turns: u64,
    turn_buckets: [u64; TURN_BUCKETS.len()],
    turn_seconds: f64,
    /// With `--tls-cert`: when the certificates in use expire (the earliest of the chain), in
    /// seconds since the epoch; set at start and by each SIGHUP that loads a new pair.
    tls_expiry: Option<i64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            start_time: SystemTime::now(),
            accepted: 0,
            answered: BTreeMap::new(),
            dropped: BTreeMap::new(),
            messages_received: 0,
            frames_delivered: 0,
            bytes_written: 0,
            tls_failed: 0,
            throttled: 0,
            throttled_seconds: 0.0,
            turns: 0,
            turn_buckets: [0; TURN_BUCKETS.len()],
            turn_seconds: 0.0,
            tls_expiry: None,
        }
    }
}

impl Metrics {
    /// Counts how a connection ended.
    pub fn ended(&mut self, ending: Ending) {
        match ending {
            Ending::Answered(status) => *self.answered.entry(status).or_default() += 1,
            Ending::Failed(code) => *self.dropped.entry(("protocol_error", code)).or_default() += 1,
            Ending::PingTimeout => *self.dropped.entry(("ping_timeout", 0)).or_default() += 1,
            Ending::SlowConsumer => *self.dropped.entry(("slow_consumer", 0)).or_default() += 1,
            Ending::Evicted => *self.dropped.entry(("client_memory", 0)).or_default() += 1,
            Ending::TlsFailed => self.tls_failed += 1,
            Ending::PeerLeft | Ending::ShuttingDown => {}
        }
    }

    /// Counts one hold of a client's reads (its budget was spent), for this long.
    pub fn throttled(&mut self, held: Duration) {
        self.throttled += 1;
        self.throttled_seconds += held.as_secs_f64();
    }

    /// Records the busy time of one loop turn (from wake-up to the end of its work).
    pub fn turn(&mut self, busy: Duration) {
        let secs = busy.as_secs_f64();
        self.turns += 1;
        self.turn_seconds += secs;
        if let Some(i) = TURN_BUCKETS.iter().position(|&le| secs <= le) {
            self.turn_buckets[i] += 1;
        }
    }

    /// The certificate chain at `cert` was loaded (at start, or by SIGHUP): its expiry is what
    /// the gauge shows from now on. The file is read a second time for this, right after the
    /// load, as rustls keeps no parsed certificate to ask; a chain that cannot be parsed here
    /// (rustls accepted it, so this should not happen) leaves the gauge out and says so.
    pub fn certificate_loaded(&mut self, cert: &Path) {
        self.tls_expiry = match certificate_expiry(cert) {
            Ok(expiry) => Some(expiry),
            Err(e) => {
                log::warn!("tls: no expiry date for /metrics: {e}");
                None
            }
        };
    }

    /// The whole exposition, for one scrape.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        self.render_build(&mut out, &gauges);
        self.render_connections(&mut out, &gauges);
        self.render_traffic(&mut out);
        self.render_turns(&mut out);
        if let Some(backplane) = gauges.backplane {
            render_backplane(&mut out, backplane);
        }
        self.render_process(&mut out);
        out
    }

    /// What is running: the version, whether TLS and Redis are on, and the certificate's expiry.
    fn render_build(&self, out: &mut String, gauges: &Gauges) {
        header(
            out,
            "mio_chat_build_info",
            "gauge",
            "Always 1; the labels say the version and whether TLS (--tls-cert) and the Redis \
             backplane (--redis) are on.",
        );
        let _ = writeln!(
            out,
            "mio_chat_build_info{{version=\"{}\",tls=\"{}\",redis=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.tls_expiry.is_some(),
            gauges.backplane.is_some()
        );
        if let Some(expiry) = self.tls_expiry {
            header(
                out,
                "mio_chat_tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the first certificate of --tls-cert's chain to expire does, in seconds \
                 since the Unix epoch (the chain loaded at start or by the last good SIGHUP).",
            );
            let _ = writeln!(
                out,
                "mio_chat_tls_certificate_expiry_timestamp_seconds {expiry}"
            );
        }
    }

    /// Connections: by phase, the limit, accepted, answered and dropped.
    fn render_connections(&self, out: &mut String, gauges: &Gauges) {
        header(
            out,
            "mio_chat_connections",
            "gauge",
            "Open connections by phase; the connection of the scrape that reads this counts as \
             closing (its answer is written and the connection ends).",
        );
        for (state, n) in [
            ("handshaking", gauges.handshaking),
            ("websocket", gauges.websocket),
            ("closing", gauges.closing),
        ] {
            let _ = writeln!(out, "mio_chat_connections{{state=\"{state}\"}} {n}");
        }
        header(
            out,
            "mio_chat_max_connections",
            "gauge",
            "Open connections allowed (--max-connections); more get HTTP 503.",
        );
        let _ = writeln!(out, "mio_chat_max_connections {}", gauges.max_connections);
        for (name, help, value) in [
            (
                "mio_chat_client_memory_bytes",
                "Bytes all clients' buffers hold (partial input, queued output).",
                gauges.client_memory,
            ),
            (
                "mio_chat_client_memory_peak_bytes",
                "The most all clients' buffers have held at once since the start: past --max-client-memory by one step at most (a read, or one batch to one client), besides what evicted clients keep on their way out.",
                gauges.client_memory_peak,
            ),
            (
                "mio_chat_max_client_memory_bytes",
                "What all clients' buffers may hold (--max-client-memory); past it the biggest holders are evicted.",
                gauges.max_client_memory,
            ),
        ] {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        counter(
            out,
            "mio_chat_memory_trims_total",
            "Times memory clients gave back (their buffers, the slots of clients gone) was handed back to the system (malloc_trim), once a burst drained or clients went.",
            gauges.memory_trims,
        );
        counter(
            out,
            "mio_chat_connections_accepted_total",
            "TCP connections accepted.",
            self.accepted,
        );
        header(
            out,
            "mio_chat_http_responses_total",
            "counter",
            "Plain HTTP answers (pages, health checks, and refused upgrades) by status code.",
        );
        for (status, n) in &self.answered {
            let _ = writeln!(
                out,
                "mio_chat_http_responses_total{{status=\"{status}\"}} {n}"
            );
        }
        header(
            out,
            "mio_chat_clients_dropped_total",
            "counter",
            "WebSocket clients dropped by the server, by reason; protocol errors by close code.",
        );
        for ((reason, code), n) in &self.dropped {
            if *code == 0 {
                let _ = writeln!(
                    out,
                    "mio_chat_clients_dropped_total{{reason=\"{reason}\"}} {n}"
                );
            } else {
                let _ = writeln!(
                    out,
                    "mio_chat_clients_dropped_total{{reason=\"{reason}\",code=\"{code}\"}} {n}"
                );
            }
        }
    }

    /// What the room carried, and what the budget and TLS turned away.
    fn render_traffic(&self, out: &mut String) {
        counter(
            out,
            "mio_chat_messages_received_total",
            "Chat messages received from clients.",
            self.messages_received,
        );
        counter(
            out,
            "mio_chat_clients_throttled_total",
            "Times a client's reads were held back because it spent its budget (--client-rate).",
            self.throttled,
        );
        header(
            out,
            "mio_chat_throttled_seconds_total",
            "counter",
            "Seconds of those holds: how long the clients over their budget were not read.",
        );
        let _ = writeln!(
            out,
            "mio_chat_throttled_seconds_total {}",
            self.throttled_seconds
        );
        counter(
            out,
            "mio_chat_frames_delivered_total",
            "Room frames queued for clients (messages and notices).",
            self.frames_delivered,
        );
        counter(
            out,
            "mio_chat_bytes_written_total",
            "Bytes written to client sockets.",
            self.bytes_written,
        );
        counter(
            out,
            "mio_chat_tls_failures_total",
            "TLS connections ended by a TLS error (a bad or plaintext ClientHello, no common \
             version or cipher suite, a bad record); 0 without --tls-cert.",
            self.tls_failed,
        );
    }

    /// The loop-turn histogram.
    fn render_turns(&self, out: &mut String) {
        header(
            out,
            "mio_chat_loop_turn_seconds",
            "histogram",
            "Busy time of one event-loop turn, from wake-up to the end of its work.",
        );
        let mut cumulative = 0;
        for (le, n) in TURN_BUCKETS.iter().zip(self.turn_buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "mio_chat_loop_turn_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "mio_chat_loop_turn_seconds_bucket{{le=\"+Inf\"}} {}",
            self.turns
        );
        let _ = writeln!(out, "mio_chat_loop_turn_seconds_sum {}", self.turn_seconds);
        let _ = writeln!(out, "mio_chat_loop_turn_seconds_count {}", self.turns);
    }

    /// The process itself.
    fn render_process(&self, out: &mut String) {
        let start = self
            .start_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", start.as_secs_f64());
        match ProcessStats::read() {
            Ok(stats) => stats.render(out),
            Err(e) => log::warn!("/metrics: no process figures: {e}"),
        }
    }
}

/// The earliest expiry (seconds since the epoch) of the certificates in the PEM file `path`.
pub fn certificate_expiry(path: &Path) -> Result<i64, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut earliest: Option<i64> = None;
    for der in &chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let expiry = cert.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
    }
    earliest.ok_or_else(|| format!("{}: no certificate", path.display()))
}

/// The figures every Prometheus client library exports for its process on Linux, under the
/// same names, so that the usual dashboards work. Read from `/proc/self` at each scrape: a few
/// small files, and one directory entry per open file descriptor for `process_open_fds` (the
/// scrape's one cost that grows with the connections, as every client library pays it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStats {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub ticks_per_second: u64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft open-file limit; `None` when unlimited.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    #[cfg(target_os = "linux")]
    pub fn read() -> Result<ProcessStats, String> {
        use procfs::process::{LimitValue, Process};
        let me = Process::myself().map_err(|e| e.to_string())?;
        let stat = me.stat().map_err(|e| e.to_string())?;
        let limits = me.limits().map_err(|e| e.to_string())?;
        Ok(ProcessStats {
            cpu_ticks: stat.utime + stat.stime,
            ticks_per_second: procfs::ticks_per_second(),
            resident_bytes: stat.rss * procfs::page_size(),
            virtual_bytes: stat.vsize,
            open_fds: me.fd_count().map_err(|e| e.to_string())? as u64,
            max_fds: match limits.max_open_files.soft_limit {
                LimitValue::Value(n) => Some(n),
                LimitValue::Unlimited => None,
            },
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Result<ProcessStats, String> {
        Err("process figures are read from /proc, which only Linux has".into())
    }

    fn render(&self, out: &mut String) {
        header(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        let cpu = self.cpu_ticks as f64 / self.ticks_per_second.max(1) as f64;
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(self.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(self.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors (the scrape's own connection among them).",
                Some(self.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
                self.max_fds,
            ),
        ] {
            if let Some(value) = value {
                header(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
}

fn render_backplane(out: &mut String, stats: BackplaneStats) {
    header(
        out,
        "mio_chat_redis_up",
        "gauge",
        "1 while the Redis backplane carries the room; 0 while degraded to local delivery.",
    );
    let _ = writeln!(out, "mio_chat_redis_up {}", u8::from(stats.up));
    header(
        out,
        "mio_chat_redis_pending",
        "gauge",
        "Envelopes published and not yet handed back by the subscription.",
    );
    let _ = writeln!(out, "mio_chat_redis_pending {}", stats.pending);
    for (name, help, value) in [
        (
            "mio_chat_redis_published_total",
            "Envelopes published for this process's clients.",
            stats.published,
        ),
        (
            "mio_chat_redis_received_total",
            "Envelopes delivered from the subscription (this process's and the others').",
            stats.received,
        ),
        (
            "mio_chat_redis_outages_total",
            "Times the backplane went down after being up.",
            stats.outages,
        ),
        (
            "mio_chat_redis_unusable_total",
            "Messages on the channel that were not envelopes this build reads.",
            stats.unusable,
        ),
    ] {
        counter(out, name, help, value);
    }
}

/// With `--redis`: the other processes this one hears, the members it shows of each process
/// (this one's included), and the processes judged gone (see `presence.rs`).
pub fn render_cluster<'a>(
    out: &mut String,
    processes: usize,
    gone: u64,
    members: impl Iterator<Item = (&'a str, usize)>,
) {
    header(
        out,
        "mio_chat_cluster_processes",
        "gauge",
        "Other processes of the room heard through Redis within --node-timeout.",
    );
    let _ = writeln!(out, "mio_chat_cluster_processes {processes}");
    header(
        out,
        "mio_chat_cluster_members",
        "gauge",
        "Members shown to this process's clients, by the process (node id) they are on.",
    );
    let mut members: Vec<_> = members.collect();
    members.sort_unstable();
    for (node, n) in members {
        // Node ids are our own hex, or whatever another writer to the channel put there:
        // escaped as the exposition format asks.
        let node = node
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(out, "mio_chat_cluster_members{{node=\"{node}\"}} {n}");
    }
    counter(
        out,
        "mio_chat_cluster_processes_gone_total",
        "Processes judged gone (silent past --node-timeout): their members were shown leaving.",
        gone,
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate (PEM) that expires at midnight UTC on `year`-01-01.
    fn expiring(year: i32) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_expiry_is_the_earliest_of_the_chain() {
        let path = std::env::temp_dir().join(format!("mio-chat-expiry-{}.pem", std::process::id()));
        // The leaf first, then a CA that runs out sooner: the chain is as good as its CA.
        std::fs::write(&path, expiring(2040) + &expiring(2031)).unwrap();
        let chain = certificate_expiry(&path);
        std::fs::write(&path, expiring(2031)).unwrap();
        let leaf = certificate_expiry(&path);
        std::fs::write(&path, "no certificate here").unwrap();
        let none = certificate_expiry(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(chain, Ok(1_924_992_000)); // 2031-01-01T00:00:00Z
        assert_eq!(leaf, Ok(1_924_992_000));
        assert!(none.is_err());
    }

    #[test]
    fn build_info_and_the_certificate_gauge_say_what_is_on() {
        let mut metrics = Metrics::default();
        let plain = metrics.render(Gauges::default());
        assert!(
            plain.contains("tls=\"false\",redis=\"false\"} 1\n"),
            "{plain}"
        );
        assert!(!plain.contains("mio_chat_tls_certificate_expiry"));
        metrics.tls_expiry = Some(1_924_992_000);
        let gauges = Gauges {
            backplane: Some(BackplaneStats::default()),
            ..Gauges::default()
        };
        let on = metrics.render(gauges);
        assert!(on.contains("tls=\"true\",redis=\"true\"} 1\n"), "{on}");
        assert!(on.contains("\nmio_chat_tls_certificate_expiry_timestamp_seconds 1924992000\n"));
    }
}
