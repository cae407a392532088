//! The command line: three scenarios, and the flags they share (which may come before or after
//! the scenario's name).

use std::time::Duration;

use clap::{ArgGroup, Args as ClapArgs, Parser, Subcommand};

/// Load generator for mio-chat: many WebSocket clients on one thread, one mio event loop.
///
/// Prints a report on stdout (one JSON object with --json; a self-contained HTML page with
/// --html) and exits 1 if anything went wrong: failed connections (a 101 naming an extension or
/// subprotocol not asked for included); messages or notices lost, duplicated, reordered,
/// changed, forged or extra (each fault by name in the report); server file descriptors not
/// given back (churn); or the --timeout. Exit 3: the server was right, but a threshold
/// (--max-p99, --min-rate) failed.
///
/// What a verdict sees: every frame each client reads, from the 101 to the close, judged by
/// the same rules in every phase, with a short linger after the last expected one. What it
/// cannot see: whom a notice is about (notices are checked as counts and orders), messages
/// sent before a client joined, and whether a message still in flight when the run ends is
/// late or lost (reported as "in flight at the end"; against a rate-limiting server, lift the
/// limit: mio-chat --client-rate 0 --client-bytes-rate 0). See docs/load-generator.md.
///
/// Set RUST_LOG=debug to see why individual clients failed.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: Common,
}

#[derive(ClapArgs, Debug)]
pub struct Common {
    /// The chat's WebSocket endpoint. Several, separated by commas (or the flag repeated, all
    /// on the same side of the scenario's name), are the processes of one chat cluster: client
    /// i connects to the (i mod T)-th of T, and every check stays the same (each client must
    /// still see every message and notice exactly once).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: Vec<String>,
    /// PID of the server, to report its memory and CPU use, and in `churn` its open file
    /// descriptors (read from /proc). With several --url, the one server it names. If that
    /// process does not listen on the target's port (a proxy in front?), a warning says so.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Spread clients over source addresses 127.0.0.1..127.0.0.K (with several --url, each
    /// target's clients over them) [default: as few as N needs, given the ephemeral port range]
    #[arg(long, global = true, value_name = "K",
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub sources: Option<u8>,
    /// Connections connecting or handshaking at once, at most. More SYNs at once than the
    /// server's listen backlog (mio-chat asks for 4096; other servers often have 128) overflow
    /// it, and each dropped SYN costs its client a 1 s retransmit. In `churn`, also the most
    /// short-lived clients alive at once (connecting, open or closing); past it, cycles wait.
    #[arg(long, global = true, default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight: u32,
    /// Seconds the whole run may take (not counting --hold; `broadcast` and `churn` include
    /// their sending or cycling time); past it the report says what was reached and the exit
    /// status is non-zero.
    #[arg(long, global = true, default_value = "120", value_parser = mio_chat::config::parse_positive_secs)]
    pub timeout: Duration,
    /// For wss:// URLs: check the server's certificate against the CA certificates (PEM) in
    /// this file.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<std::path::PathBuf>,
    /// For wss:// URLs: accept any server certificate (a self-signed one, for a load test).
    #[arg(long, global = true, conflicts_with = "ca")]
    pub insecure: bool,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// This generator's place among N that load one chat at once (0-based), for a load that
    /// one machine cannot make: its senders are numbered apart from the others', their
    /// messages are checked in each sender's order from the first one each client sees and
    /// counted by generator (all generators of a run must use the same flags), and in
    /// `connect` and `broadcast` the notices their clients cause are not checked (`churn`
    /// still counts every notice: the others' clients must not come or go while it runs).
    /// `mio-chat-load merge` combines the reports and checks them as one run.
    /// [default: 0/1]
    #[arg(long, global = true, value_name = "I/N", value_parser = parse_generator)]
    pub generator: Option<Generator>,
    /// A threshold (`broadcast` and `merge`): fail the run, with exit status 3, if the
    /// deliveries' p99 latency is over MS milliseconds. Faults fail it with status 1 first.
    #[arg(long, global = true, value_name = "MS", value_parser = parse_limit)]
    pub max_p99: Option<f64>,
    /// A threshold (`broadcast` and `merge`): fail the run, with exit status 3, if fewer than
    /// this many deliveries a second were made.
    #[arg(long, global = true, value_name = "PER_S", value_parser = parse_limit)]
    pub min_rate: Option<f64>,
    /// Also write the report as a self-contained HTML page (`broadcast` and `merge`): the
    /// verdict, then charts of latency over time, the latency distribution, throughput and
    /// connections (inline SVG: no script, nothing fetched).
    #[arg(long, global = true, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    /// No live progress line on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(serde::Serialize, Subcommand, Debug)]
pub enum Scenario {
    /// Connect N clients and drain the join notices (N(N+1)/2 of them); time one broadcast to
    /// all; hold the connections; close them all.
    Connect(ConnectArgs),
    /// S of N clients send for T seconds; every client checks it got every message of every
    /// sender once and in order, and measures its latency.
    Broadcast(BroadcastArgs),
    /// C short-lived clients join and leave at R per second while a watcher counts the notices
    /// exactly, and the server must give back every file descriptor.
    ///
    /// A watcher joins, then N clients that stay; then the C short-lived clients, each leaving
    /// once it has heard its own join notice: a share P of them abruptly (TCP reset, no Close
    /// frame), the rest with a closing handshake. The watcher must hear exactly one join and
    /// one leave notice per client, and the watcher and the background clients one and the same
    /// sequence of notices, each member's join before its leave; with --server-pid, the
    /// server's open files must come back to their count before the churn (its RSS before and
    /// after is reported).
    Churn(ChurnArgs),
    /// Merges the `--json` reports of generators that ran `broadcast` against one chat at the
    /// same time (each with its own --generator I/N) into the report of one run: counts and
    /// rates add up, faults add up by name, percentiles come from the sum of the histograms.
    ///
    /// Refuses reports that are not one run: they must be 0/N … N-1/N, each once, with the same
    /// scenario and flags, and times that overlap. Checks that every generator's messages
    /// reached every other generator's clients (at most sent × receivers). Exits 1 if any
    /// report found problems or that check fails, 3 if only a threshold failed.
    Merge(MergeArgs),
}

#[derive(serde::Serialize, ClapArgs, Debug)]
pub struct MergeArgs {
    /// The reports, one JSON object each (as `--json` prints it).
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<std::path::PathBuf>,
}

#[derive(serde::Serialize, ClapArgs, Debug)]
pub struct ConnectArgs {
    /// Clients to connect.
    #[arg(short = 'n', long = "clients", value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Seconds to hold the connections open before closing them.
    #[arg(long, default_value = "0", value_parser = mio_chat::config::parse_secs)]
    pub hold: Duration,
}

#[derive(serde::Serialize, ClapArgs, Debug)]
#[command(group(ArgGroup::new("pace").required(true).args(["rate", "window"])))]
pub struct BroadcastArgs {
    /// Clients to connect; all of them receive.
    #[arg(short = 'n', long = "clients", value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// How many of the clients also send.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub senders: u32,
    /// Messages per second from each sender (open loop).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Messages each sender keeps in flight: it sends the next when one of its own comes back
    /// (closed loop: as fast as the server goes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: Option<u32>,
    /// Seconds of sending.
    #[arg(long, default_value = "10", value_parser = mio_chat::config::parse_positive_secs)]
    pub duration: Duration,
    /// Bytes of text per message (at least the stamp, about 30 bytes).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds over which the clients join, evenly spread (0: all at once, as fast as
    /// --max-inflight allows). The sending starts once all have joined; the ramp is added to
    /// --timeout.
    #[arg(long, default_value = "0", value_parser = mio_chat::config::parse_secs)]
    pub ramp_up: Duration,
}

#[derive(serde::Serialize, ClapArgs, Debug)]
pub struct ChurnArgs {
    /// Background clients that stay connected throughout (they hear every notice too).
    #[arg(short = 'n', long = "clients", default_value_t = 0)]
    pub clients: u32,
    /// Short-lived clients, one per cycle: connect, wait for its own join notice, leave.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub cycles: u64,
    /// Cycles started per second (open loop, bounded by --max-inflight clients alive at once).
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
    /// Share of the short-lived clients that leave with a TCP reset (SO_LINGER 0, then close)
    /// instead of a closing handshake; spread evenly over the cycles.
    #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub abrupt_ratio: f64,
    /// Seconds to wait, after the last short-lived client is gone, for the last notices and
    /// (with --server-pid) for the server's open files to come back to their count before.
    #[arg(long, default_value = "10", value_parser = mio_chat::config::parse_positive_secs)]
    pub settle: Duration,
}

/// Senders of generator I are numbered from I times this: no run has nearly so many senders.
pub const SENDER_STRIDE: u32 = 1_000_000;

/// One of several generators loading the same chat (`--generator I/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generator {
    pub index: u32,
    pub count: u32,
}

impl Generator {
    pub const ALONE: Generator = Generator { index: 0, count: 1 };

    /// Other generators share the room.
    pub fn shared(&self) -> bool {
        self.count > 1
    }

    pub fn first_sender(&self) -> u32 {
        self.index * SENDER_STRIDE
    }
}

fn parse_generator(s: &str) -> Result<Generator, String> {
    let bad = || format!("{s}: not I/N with 0 <= I < N <= 4000");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        i.parse::<u32>().map_err(|_| bad())?,
        n.parse::<u32>().map_err(|_| bad())?,
    );
    if index >= count || count > 4000 {
        return Err(bad());
    }
    Ok(Generator { index, count })
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{s}: not a positive number of messages per second")),
    }
}

fn parse_limit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{s}: not a number of 0 or more")),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s}: not a number from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_parse() {
        Args::command_for_tests().debug_assert();
        let args = Args::try_parse_from([
            "load",
            "broadcast",
            "-n",
            "100",
            "--senders",
            "10",
            "--window",
            "64",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--json",
        ])
        .unwrap();
        assert!(args.common.json);
        let Scenario::Broadcast(b) = args.scenario else {
            panic!("not broadcast")
        };
        assert_eq!(
            (b.clients, b.senders, b.window, b.rate),
            (100, 10, Some(64), None)
        );
    }

    #[test]
    fn urls_repeat_or_come_comma_separated() {
        let urls = |argv: &[&str]| Args::try_parse_from(argv).unwrap().common.url;
        assert_eq!(
            urls(&["load", "connect", "-n", "1"]),
            ["ws://127.0.0.1:8080/ws"]
        );
        assert_eq!(
            urls(&["load", "connect", "-n", "1", "--url", "ws://127.0.0.1:1/ws"]),
            ["ws://127.0.0.1:1/ws"]
        );
        let two = ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"];
        assert_eq!(
            urls(&["load", "connect", "-n", "1", "--url", &two.join(",")]),
            two
        );
        assert_eq!(
            urls(&["load", "--url", two[0], "--url", two[1], "connect", "-n", "1"]),
            two
        );
        // clap lets a global flag after the scenario's name replace the ones before it, as a
        // single --url always did; the help says to keep them on one side.
        assert_eq!(
            urls(&["load", "--url", two[0], "connect", "-n", "1", "--url", two[1]]),
            [two[1]]
        );
        let three = [
            "load",
            "connect",
            "-n",
            "1",
            "--url",
            "ws://a/ws,ws://b/ws",
            "--url",
            "ws://c/ws",
        ];
        assert_eq!(urls(&three), ["ws://a/ws", "ws://b/ws", "ws://c/ws"]);
    }

    #[test]
    fn generators_are_i_of_n() {
        let parse = |g: &str| {
            Args::try_parse_from(["load", "connect", "-n", "1", "--generator", g])
                .map(|a| a.common.generator)
        };
        assert_eq!(
            parse("1/3").unwrap(),
            Some(Generator { index: 1, count: 3 })
        );
        for bad in ["3/3", "1", "a/2", "0/0", "0/5000", "-1/2"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Generator { index: 2, count: 3 }.first_sender(), 2_000_000);
    }

    #[test]
    fn rate_and_window_exclude_each_other() {
        let both = [
            "load",
            "broadcast",
            "-n",
            "5",
            "--rate",
            "1",
            "--window",
            "1",
        ];
        assert!(Args::try_parse_from(both).is_err());
        assert!(Args::try_parse_from(["load", "broadcast", "-n", "5"]).is_err());
        assert!(Args::try_parse_from(["load", "connect", "-n", "0"]).is_err());
    }

    #[test]
    fn churn_flags() {
        let args = Args::try_parse_from([
            "load", "churn", "-n", "0", "--cycles", "20", "--rate", "2.5",
        ])
        .unwrap();
        let Scenario::Churn(c) = args.scenario else {
            panic!("not churn")
        };
        assert_eq!((c.clients, c.cycles, c.rate), (0, 20, 2.5));
        assert_eq!(c.abrupt_ratio, 0.5);
        assert_eq!(c.settle, Duration::from_secs(10));
        for bad in [
            &["load", "churn", "--cycles", "1"][..],
            &["load", "churn", "--rate", "1"],
            &["load", "churn", "--cycles", "0", "--rate", "1"],
            &[
                "load",
                "churn",
                "--cycles",
                "1",
                "--rate",
                "1",
                "--abrupt-ratio",
                "1.5",
            ],
            &[
                "load",
                "churn",
                "--cycles",
                "1",
                "--rate",
                "1",
                "--abrupt-ratio",
                "-0.1",
            ],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
        for edge in ["0", "1"] {
            let ok = [
                "load",
                "churn",
                "--cycles",
                "1",
                "--rate",
                "1",
                "--abrupt-ratio",
                edge,
            ];
            assert!(Args::try_parse_from(ok).is_ok(), "{edge}");
        }
    }

    impl Args {
        fn command_for_tests() -> clap::Command {
            <Args as clap::CommandFactory>::command()
        }
    }
}
