//! The server's settings, with the defaults of the protocol contract.
//!
//! `main.rs` fills a [`Config`] from the command line; tests build one directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::budget::FairShare;
use crate::http::OriginPolicy;
use crate::proxy::TrustedProxies;
use crate::redis::RedisUrl;

/// Everything the server can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Open connections (HTTP and WebSocket) at most; more get 503.
    pub max_connections: usize,
    /// Largest text message accepted, in bytes; larger ones get close 1009.
    pub max_message_size: usize,
    /// Bytes queued for one client before it counts as a slow consumer and is dropped.
    pub max_outbound: usize,
    /// What all clients together may hold in their buffers (inbound and outbound) before the
    /// biggest holders are evicted (see `memory.rs`).
    pub max_client_memory: usize,
    /// Time a connection has to send its whole HTTP request head.
    pub handshake_timeout: Duration,
    /// Ping idle clients this often, drop them after two silent intervals; `None` turns it off.
    pub ping_interval: Option<Duration>,
    /// Which browser origins may open a WebSocket.
    pub origins: OriginPolicy,
    /// Serve the `/echo` diagnostic route.
    pub echo: bool,
    /// Share the room with other processes through this Redis (see `src/backplane/`).
    pub redis: Option<RedisUrl>,
    /// The Redis pub/sub channel that carries the room.
    pub redis_channel: String,
    /// Bytes of commands the Redis socket may refuse before Redis counts as not keeping up.
    pub redis_max_unsent: usize,
    /// How long our envelopes (and answers to PING) may take to come back from Redis.
    pub redis_timeout: Duration,
    /// `--node-timeout`: another process silent this long through Redis is declared gone.
    pub node_timeout: Duration,
    /// Set `SO_REUSEPORT` on the listener, so several processes can share one port.
    pub reuse_port: bool,
    /// Peers whose `X-Forwarded-For` names the client (for the logs); nobody by default.
    pub trusted_proxies: TrustedProxies,
    /// With `--tls-cert` and `--tls-key`: the listener speaks TLS (reloaded on SIGHUP).
    pub tls: Option<TlsFiles>,
    /// What one client may make the room carry (messages and bytes per second, with bursts);
    /// past it, its reads are held back (see `budget.rs`). Off for load tests.
    pub fair_share: FairShare,
}

/// 1 GiB: a figure an operator can hold against the machine's RAM. The RAM itself cannot be
/// read portably (nor what a container is allowed), and a multiple of `--max-connections` would
/// be meaningless: clients that keep up hold nothing between turns, so the bound is met only by
/// hoarders and far-behind readers; 1 GiB lets about a thousand of them queue a whole
/// `--max-outbound` before the biggest go.
pub const DEFAULT_MAX_CLIENT_MEMORY: usize = 1 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            max_message_size: 64 * 1024,
            max_outbound: 1024 * 1024,
            max_client_memory: DEFAULT_MAX_CLIENT_MEMORY,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(30)),
            origins: OriginPolicy::default(),
            echo: false,
            redis: None,
            redis_channel: DEFAULT_REDIS_CHANNEL.to_string(),
            redis_max_unsent: DEFAULT_REDIS_MAX_UNSENT,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            reuse_port: false,
            trusted_proxies: TrustedProxies::default(),
            tls: None,
            fair_share: FairShare::default(),
        }
    }
}

/// The certificate chain and key files of `--tls-cert` and `--tls-key` (read by
/// [`crate::transport::server_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `--redis-max-unsent` by default: 16 MiB, about 160,000 leave notices' `PUBLISH` commands
/// (about 100 bytes each) even if Redis's socket took none of them, so shutdown can publish a
/// leave for every client of a full server.
pub const DEFAULT_REDIS_MAX_UNSENT: usize = 16 << 20;

/// `--redis-timeout` by default. Long enough that this process's own slowest turns (a broadcast
/// to 19,000 clients took about 0.3 s here) are not taken for Redis's; short enough that a
/// paused Redis is noticed before people notice.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// `--node-timeout` by default: how long another process may be silent before it is declared
/// gone. A live process beats every second ([`crate::backplane::peers::BEAT_INTERVAL`]); its beat
/// can be held up by Redis for up to `--redis-timeout` (2 s) before it counts as cut off itself,
/// and by its own and the listener's longest loop turns (a broadcast to 19,000 clients took about
/// 0.3 s here): 1 + 2 + 0.3 + 0.3 = 3.6 s at worst for a live one. 5 s leaves a margin over that,
/// and shows a crashed process's members leaving within seconds.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel of `--redis-channel` when none is named.
pub const DEFAULT_REDIS_CHANNEL: &str = "mio-chat";

/// File descriptors kept back from `--max-connections` for the listener, the poll instance,
/// signals, logging and the connections that are being refused with 503.
pub const RESERVED_FDS: u64 = 300;

/// Raises this process's soft limit on open files to its hard limit and returns the new soft limit.
///
/// Every connection is a file descriptor; the usual soft limit (1024) would cap the server long
/// before memory does.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// Below this open-file limit the server refuses to start without an explicit
/// `--max-connections`: a default would leave room for a handful of clients at most.
pub const MIN_OPEN_FILES: u64 = 32;

/// The default `--max-connections`: as many as the open-file limit allows, less a reserve of
/// [`RESERVED_FDS`], or of half the limit when the limit is small (so a limit of 256 still
/// serves 128 connections instead of one). Too small a limit is an error, said at start.
pub fn default_max_connections(open_file_limit: u64) -> Result<usize, String> {
    if open_file_limit < MIN_OPEN_FILES {
        return Err(format!(
            "the open-file limit is {open_file_limit}, too low to serve clients: raise it to at \
             least {MIN_OPEN_FILES} (ulimit -n), or set --max-connections"
        ));
    }
    let reserve = RESERVED_FDS.min(open_file_limit / 2);
    Ok(usize::try_from(open_file_limit - reserve).unwrap_or(usize::MAX))
}

/// The longest duration a flag takes. Deadlines are instants plus these durations, and an
/// instant cannot hold 1e19 seconds from now: such a value must stop the server at start, not
/// at its first connection.
pub const MAX_SECS: f64 = 86_400.0;

/// Parses a number of seconds, fractions allowed (`0.5`), at most [`MAX_SECS`] (a day), for
/// command-line flags.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s}: not a number of seconds"))?;
    if secs > MAX_SECS {
        return Err(format!("{s}: more than {MAX_SECS} seconds (a day)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s}: not a valid number of seconds"))
}

/// Like [`parse_secs`], but zero is refused.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    match parse_secs(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_open_file_limits_still_give_room_to_serve() {
        assert_eq!(default_max_connections(1_048_576), Ok(1_048_276));
        assert_eq!(default_max_connections(1024), Ok(724));
        assert_eq!(default_max_connections(600), Ok(300));
        assert_eq!(default_max_connections(301), Ok(151));
        assert_eq!(default_max_connections(256), Ok(128));
        assert_eq!(default_max_connections(MIN_OPEN_FILES), Ok(16));
        assert!(default_max_connections(MIN_OPEN_FILES - 1).is_err());
        assert!(default_max_connections(0).is_err());
        // Never fewer connections for a higher limit.
        let fits: Vec<usize> = (MIN_OPEN_FILES..2000)
            .map(|n| default_max_connections(n).unwrap_or(0))
            .collect();
        assert!(fits.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("86400"), Ok(Duration::from_secs(86_400)));
        for bad in ["1e19", "86400.5", "inf", "NaN", "-1", "x"] {
            assert!(parse_secs(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_positive_secs("0").is_err());
    }
}
