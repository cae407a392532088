//! The server's settings, with the defaults of the protocol contract.
//!
//! `main.rs` fills a [`Config`] from the command line; tests build one directly.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::OriginPolicy;
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
    /// Time a connection has to send its whole HTTP request head.
    pub handshake_timeout: Duration,
    /// Ping idle clients this often, drop them after two silent intervals; `None` turns it off.
    pub ping_interval: Option<Duration>,
    /// Which browser origins may open a WebSocket.
    pub origins: OriginPolicy,
    /// Serve the `/echo` diagnostic route.
    pub echo: bool,
    /// Share the room with other processes through this Redis (see `backplane.rs`).
    pub redis: Option<RedisUrl>,
    /// The Redis pub/sub channel that carries the room.
    pub redis_channel: String,
    /// Set `SO_REUSEPORT` on the listener, so several processes can share one port.
    pub reuse_port: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            max_message_size: 64 * 1024,
            max_outbound: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(30)),
            origins: OriginPolicy::default(),
            echo: false,
            redis: None,
            redis_channel: DEFAULT_REDIS_CHANNEL.to_string(),
            reuse_port: false,
        }
    }
}

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

/// The default `--max-connections`: as many as the open-file limit allows, less a reserve.
pub fn default_max_connections(open_file_limit: u64) -> usize {
    open_file_limit.saturating_sub(RESERVED_FDS).max(1) as usize
}

/// Parses a number of seconds, fractions allowed (`0.5`), for command-line flags.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s}: not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s}: not a valid number of seconds"))
}

/// Like [`parse_secs`], but zero is refused.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    match parse_secs(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}
