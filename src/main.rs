//! The `mio-chat` binary: read the flags, set up logging, run the server until a signal.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::{error, warn};
use mio_chat::config::{self, Config};
use mio_chat::http::OriginPolicy;
use mio_chat::logging::{self, LogFormat};
use mio_chat::redis::RedisUrl;
use mio_chat::Server;

/// A WebSocket chat server: every message to everyone, on one thread.
///
/// Serves the chat page at /, the WebSocket at /ws and a health check at /healthz.
/// Logs go to stderr; set RUST_LOG (default: info) to see more or less.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Listen address; port 0 picks a free port (the first log line says which).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    addr: SocketAddr,
    /// Open connections (HTTP and WebSocket) at most; more get HTTP 503.
    /// [default: the open-file limit, raised to its hard maximum, less 300]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Largest text message accepted, in bytes; larger ones get close 1009.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..))]
    max_message_size: u64,
    /// Unsent bytes queued for one client before it is dropped as a slow consumer.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_outbound: u64,
    /// Seconds a connection has to send its HTTP request (fractions allowed).
    #[arg(long, default_value = "10", value_parser = mio_chat::config::parse_positive_secs)]
    handshake_timeout: Duration,
    /// Ping idle clients every this many seconds; drop them after two silent intervals; 0 = off.
    #[arg(long, default_value = "30", value_parser = mio_chat::config::parse_secs)]
    ping_interval: Duration,
    /// Also allow WebSockets from this browser Origin (repeatable); '*' allows any. By default only
    /// requests without Origin, or whose Origin host equals the Host header's host, are allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Serve /echo, which sends every message back unchanged (for conformance testing).
    #[arg(long)]
    echo: bool,
    /// Share the room with every process on this Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB].
    /// Each client's events go through Redis pub/sub, so all clients of all processes see one
    /// order. While Redis is unreachable, the process serves its own clients alone, retries, and
    /// /healthz says "degraded".
    #[arg(long, value_name = "URL", value_parser = RedisUrl::parse)]
    redis: Option<RedisUrl>,
    /// The Redis pub/sub channel that carries the room (processes on different channels are
    /// different rooms).
    #[arg(long, value_name = "NAME", default_value = config::DEFAULT_REDIS_CHANNEL)]
    redis_channel: String,
    /// Set SO_REUSEPORT, so several processes can listen on the same port (the kernel spreads
    /// connections over them); with --redis they form one room.
    #[arg(long)]
    reuse_port: bool,
    /// Log line format: plain text for people, or one JSON object per line for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format);
    let fd_limit = config::raise_open_file_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-file limit: {e}");
        1024
    });
    let fit = config::default_max_connections(fd_limit);
    let max_connections = args.max_connections.map_or(fit, |n| n as usize);
    if max_connections > fit {
        warn!("--max-connections {max_connections} exceeds what {fd_limit} open files allow");
    }
    let config = Config {
        addr: args.addr,
        max_connections,
        max_message_size: args.max_message_size as usize,
        max_outbound: args.max_outbound as usize,
        handshake_timeout: args.handshake_timeout,
        ping_interval: Some(args.ping_interval).filter(|d| !d.is_zero()),
        origins: OriginPolicy {
            allowed: args.allow_origin,
        },
        echo: args.echo,
        redis: args.redis,
        redis_channel: args.redis_channel,
        reuse_port: args.reuse_port,
    };
    match Server::bind(config).and_then(Server::stop_on_signals) {
        Ok(server) => match server.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("event loop failed: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            error!("cannot listen on {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}
