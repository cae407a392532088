//! The `mio-chat` binary: read the flags (or their environment variables), set up logging, run
//! the server until a signal.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};
use log::{error, warn};
use mio_chat::budget::{FairShare, Rate};
use mio_chat::config::{self, Config};
use mio_chat::http::OriginPolicy;
use mio_chat::logging::{self, LogFormat};
use mio_chat::proxy::{Cidr, TrustedProxies};
use mio_chat::redis::{RedisTls, RedisUrl};
use mio_chat::transport::{self, TlsFiles};
use mio_chat::Server;
use rustls::pki_types::ServerName;

/// A WebSocket chat server: every message to everyone, on one thread.
///
/// Serves the chat page at /, the WebSocket at /ws and a health check at /healthz.
/// Logs go to stderr; set RUST_LOG (default: info) to see more or less.
/// Every flag can also be set from the environment variable named in [env: ...]; a flag given
/// on the command line wins over its variable.
///
/// The defaults are `Config::default()`'s where the types allow (durations are written as
/// text here; a test checks that no flags give `Config::default()`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Listen address; port 0 picks a free port (the first log line says which).
    #[arg(long, env = "MIO_CHAT_ADDR", default_value_t = Config::default().addr, value_parser = parse_addr)]
    addr: SocketAddr,
    /// Open connections (HTTP and WebSocket) at most; more get HTTP 503.
    /// [default: the open-file limit, raised to its hard maximum, less 300 (less half of it
    /// below 600)]
    #[arg(long, env = "MIO_CHAT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Largest text message accepted, in bytes; larger ones get close 1009.
    #[arg(long, env = "MIO_CHAT_MAX_MESSAGE_SIZE", default_value_t = Config::default().max_message_size as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_message_size: u64,
    /// Unsent bytes queued for one client before it is dropped as a slow consumer.
    #[arg(long, env = "MIO_CHAT_MAX_OUTBOUND", default_value_t = Config::default().max_outbound as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_outbound: u64,
    /// Bytes all clients together may hold in their buffers (partial requests and frames, queued
    /// output); past it, the clients holding the most are evicted (close 1013).
    #[arg(long, env = "MIO_CHAT_MAX_CLIENT_MEMORY", default_value_t = Config::default().max_client_memory as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_client_memory: u64,
    /// Seconds a connection has to send its HTTP request (fractions allowed; at most a day).
    #[arg(long, env = "MIO_CHAT_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = config::parse_positive_secs)]
    handshake_timeout: Duration,
    /// Ping idle clients every this many seconds; drop them after two silent intervals; 0 = off
    /// (at most a day).
    #[arg(long, env = "MIO_CHAT_PING_INTERVAL", default_value = "30", value_parser = config::parse_secs)]
    ping_interval: Duration,
    /// Also allow WebSockets from this browser Origin (repeatable; comma-separated in the
    /// variable); '*' allows any. By default only requests without Origin, or whose Origin host
    /// equals the Host header's host, are allowed.
    #[arg(
        long = "allow-origin",
        env = "MIO_CHAT_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allow_origin: Vec<String>,
    /// Serve /echo, which sends every message back unchanged (for conformance testing).
    #[arg(long, env = "MIO_CHAT_ECHO", value_parser = BoolishValueParser::new())]
    echo: bool,
    /// Share the room with every process on this Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB].
    /// Each client's events go through Redis pub/sub, so all clients of all processes see one
    /// order. While Redis is unreachable, the process serves its own clients alone, retries, and
    /// /healthz says "degraded". Give a password through the variable or
    /// --redis-password-file, not here: every local user can read a command line.
    #[arg(
        long,
        env = "MIO_CHAT_REDIS",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis: Option<String>,
    /// Read the Redis password from this file (its first line; it replaces one in the URL).
    #[arg(
        long,
        env = "MIO_CHAT_REDIS_PASSWORD_FILE",
        value_name = "PATH",
        requires = "redis"
    )]
    redis_password_file: Option<PathBuf>,
    /// With a rediss:// URL: check Redis's certificate against the CA certificates (PEM) in
    /// this file, for the URL's host.
    #[arg(
        long,
        env = "MIO_CHAT_REDIS_CA",
        value_name = "PATH",
        requires = "redis"
    )]
    redis_ca: Option<PathBuf>,
    /// The Redis pub/sub channel that carries the room (processes on different channels are
    /// different rooms).
    #[arg(long, env = "MIO_CHAT_REDIS_CHANNEL", value_name = "NAME", default_value = config::DEFAULT_REDIS_CHANNEL)]
    redis_channel: String,
    /// Bytes of commands the Redis socket may leave unwritten, and of our envelopes Redis may
    /// hold without handing them back, before Redis counts as not keeping up (an outage): Redis
    /// is judged like a client, by what its socket refused, not by bursts.
    #[arg(long, env = "MIO_CHAT_REDIS_MAX_UNSENT", value_name = "BYTES", default_value_t = config::DEFAULT_REDIS_MAX_UNSENT as u64, value_parser = clap::value_parser!(u64).range(1..))]
    redis_max_unsent: u64,
    /// Seconds our envelopes may take to come back through Redis, and Redis to answer the PING
    /// sent to a quiet subscription; past that Redis counts as down (an outage) even though its
    /// connections are open (fractions allowed).
    #[arg(long, env = "MIO_CHAT_REDIS_TIMEOUT", value_name = "SECS", default_value = "2", value_parser = config::parse_positive_secs)]
    redis_timeout: Duration,
    /// Seconds another process of the room may be silent through Redis (each says it is alive
    /// every second) before it is declared gone and its members are shown leaving everywhere;
    /// default: 1 s heartbeat + 2 s --redis-timeout + the longest loop turns, with a margin
    /// (fractions allowed).
    #[arg(long, env = "MIO_CHAT_NODE_TIMEOUT", value_name = "SECS", default_value = "5", value_parser = config::parse_positive_secs)]
    node_timeout: Duration,
    /// Set SO_REUSEPORT, so several processes can listen on the same port (the kernel spreads
    /// connections over them); with --redis they form one room.
    #[arg(long, env = "MIO_CHAT_REUSE_PORT", value_parser = BoolishValueParser::new())]
    reuse_port: bool,
    /// A reverse proxy whose X-Forwarded-For names the client in the logs: an address or a CIDR
    /// range (repeatable; comma-separated in the variable). From any other peer the header is
    /// ignored.
    #[arg(
        long = "trusted-proxy",
        env = "MIO_CHAT_TRUSTED_PROXY",
        value_name = "ADDR|CIDR",
        value_delimiter = ','
    )]
    trusted_proxy: Vec<Cidr>,
    /// Speak TLS on the listener (https:// and wss://) with this certificate chain (PEM, the
    /// server's certificate first). SIGHUP reloads it and the key.
    #[arg(
        long,
        env = "MIO_CHAT_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or SEC1).
    #[arg(
        long,
        env = "MIO_CHAT_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Messages per second one client may make the room carry, sustained; past its budget its
    /// reads are held back until the budget allows its next message (nobody is dropped);
    /// 0 = no limit on messages (load tests).
    #[arg(long, env = "MIO_CHAT_CLIENT_RATE", value_name = "MSGS_PER_S", default_value_t = Rate::DEFAULT_MESSAGES.per_second())]
    client_rate: u64,
    /// Messages one client may send at once, above --client-rate, before it is held back.
    #[arg(long, env = "MIO_CHAT_CLIENT_BURST", value_name = "MSGS", default_value_t = Rate::DEFAULT_MESSAGES.burst(), value_parser = clap::value_parser!(u64).range(1..))]
    client_burst: u64,
    /// Bytes of text per second one client may make the room carry, sustained; 0 = no limit on
    /// bytes (load tests: with --client-rate 0, no budget at all).
    #[arg(long, env = "MIO_CHAT_CLIENT_BYTES_RATE", value_name = "BYTES_PER_S", default_value_t = Rate::DEFAULT_BYTES.per_second())]
    client_bytes_rate: u64,
    /// Bytes of text one client may send at once, above --client-bytes-rate.
    #[arg(long, env = "MIO_CHAT_CLIENT_BYTES_BURST", value_name = "BYTES", default_value_t = Rate::DEFAULT_BYTES.burst(), value_parser = clap::value_parser!(u64).range(1..))]
    client_bytes_burst: u64,
    /// Log line format: plain text for people, or one JSON object per line for log shippers.
    #[arg(long, env = "MIO_CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

/// The flags (and their variables), parsed; on an error, clap's message and exit status 2.
fn parse_args() -> Args {
    Args::try_parse().unwrap_or_else(|e| name_the_variable(e, std::env::args_os()).exit())
}

/// clap names a bad value by its flag even when it came from the flag's environment variable,
/// where an operator who never typed the flag would not look: such an error names the variable.
/// The value came from the variable when the flag is not on the command line (which wins).
fn name_the_variable(
    mut error: clap::Error,
    command_line: impl Iterator<Item = OsString>,
) -> clap::Error {
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return error;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    // `--max-connections <MAX_CONNECTIONS>`
    let flag = shown.split(' ').next().unwrap_or_default().to_string();
    let command = Args::command();
    let arg = command.get_arguments().find(|arg| {
        arg.get_long()
            .is_some_and(|long| flag == format!("--{long}"))
    });
    let Some(variable) = arg.and_then(|arg| arg.get_env()) else {
        return error;
    };
    let typed = command_line.skip(1).any(|word| {
        word.to_str()
            .is_some_and(|w| w == flag || w.starts_with(&format!("{flag}=")))
    });
    if typed || std::env::var_os(variable).is_none() {
        return error;
    }
    let named = format!("{} (the variable of {flag})", variable.to_string_lossy());
    error.insert(ContextKind::InvalidArg, ContextValue::String(named));
    error
}

/// The longest password file read: a password, not a data file.
const MAX_PASSWORD_FILE: u64 = 4096;

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

/// `--redis`, parsed here rather than by clap, whose error would quote the whole value, and
/// with it the password: an error names the URL with its credentials masked.
fn parse_redis(url: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(url).map_err(|e| {
        let masked = mask_credentials(url);
        format!("--redis: {}", e.replace(url, &masked))
    })
}

/// `redis://user:secret@host` → `redis://***@host`.
fn mask_credentials(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &url[scheme_end + at..]),
        None => url.to_string(),
    }
}

/// The TLS settings of a `rediss://` URL: `--redis-ca` is required (there is no system trust
/// store in this build; Redis with TLS is nearly always behind a private CA anyway).
fn redis_tls(url: &RedisUrl, ca: Option<&Path>) -> Result<RedisTls, String> {
    let ca = ca.ok_or(
        "--redis rediss://... needs --redis-ca PATH (the CA that signed Redis's certificate)",
    )?;
    let config = transport::client_config(ca, "--redis-ca")?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("--redis: {}: {e}", url.host))?;
    Ok(RedisTls { config, name })
}

/// The first line of `path`, without its line ending.
fn read_password(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PASSWORD_FILE).read_to_string(&mut text))
        .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("--redis-password-file {}: empty", path.display()));
    }
    Ok(line.to_string())
}

/// The open-file limit (raised to its hard maximum) and the `--max-connections` it allows.
fn max_connections(asked: Option<u64>) -> Result<usize, String> {
    let fd_limit = config::raise_open_file_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-file limit: {e}");
        1024
    });
    let Some(asked) = asked else {
        return config::default_max_connections(fd_limit);
    };
    let asked = usize::try_from(asked).unwrap_or(usize::MAX);
    if config::default_max_connections(fd_limit).is_ok_and(|fit| asked > fit) {
        warn!("--max-connections {asked} exceeds what {fd_limit} open files allow");
    }
    Ok(asked)
}

/// The server's settings from the flags; an error is a sentence for the operator.
fn config_from(args: Args) -> Result<Config, String> {
    let mut redis = args.redis.as_deref().map(parse_redis).transpose()?;
    if let (Some(url), Some(path)) = (redis.as_mut(), &args.redis_password_file) {
        url.password = Some(read_password(path)?);
    }
    if let Some(url) = redis.as_mut().filter(|url| url.secure) {
        url.tls = Some(redis_tls(url, args.redis_ca.as_deref())?);
    }
    Ok(Config {
        addr: args.addr,
        max_connections: max_connections(args.max_connections)?,
        max_message_size: usize::try_from(args.max_message_size).unwrap_or(usize::MAX),
        max_outbound: usize::try_from(args.max_outbound).unwrap_or(usize::MAX),
        max_client_memory: usize::try_from(args.max_client_memory).unwrap_or(usize::MAX),
        handshake_timeout: args.handshake_timeout,
        ping_interval: Some(args.ping_interval).filter(|d| !d.is_zero()),
        origins: OriginPolicy {
            allowed: args.allow_origin,
        },
        echo: args.echo,
        redis,
        redis_channel: args.redis_channel,
        redis_max_unsent: usize::try_from(args.redis_max_unsent).unwrap_or(usize::MAX),
        redis_timeout: args.redis_timeout,
        node_timeout: args.node_timeout,
        reuse_port: args.reuse_port,
        trusted_proxies: TrustedProxies(args.trusted_proxy),
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        // A rate of 0 gives no `Rate`: that limit is off.
        fair_share: FairShare::new(
            Rate::new(args.client_rate, args.client_burst),
            Rate::new(args.client_bytes_rate, args.client_bytes_burst),
        ),
    })
}

fn main() -> ExitCode {
    let args = parse_args();
    logging::init(args.log_format);
    let addr = args.addr;
    let config = match config_from(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2); // like clap's own usage errors
        }
    };
    match Server::bind(config).and_then(Server::stop_on_signals) {
        Ok(server) => match server.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("event loop failed: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            error!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            error!("cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    use super::*;

    /// `{config:#?}` without the budget's epoch (the instant it was made, not a setting).
    fn settings(config: &Config) -> String {
        let text = format!("{config:#?}");
        let start = text.find("epoch: Instant {").expect("the budget's epoch");
        let end = start + text[start..].find('}').expect("its end") + 1;
        format!("{}{}", &text[..start], &text[end..])
    }

    /// The defaults are written in two places (clap's and `Config::default()`): no flags and no
    /// variables must give `Config::default()`, except `--max-connections`, whose default
    /// follows the open-file limit here. Compared through `Debug`, which shows every field.
    #[test]
    fn no_flags_give_the_default_config() {
        // The variables of whoever runs the tests must not count.
        let command = Args::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from(["mio-chat"])
            .expect("no flags");
        let args = Args::from_arg_matches(&matches).expect("Args");
        let config = config_from(args).expect("a config");
        let expected = Config {
            max_connections: config.max_connections,
            ..Config::default()
        };
        assert_eq!(settings(&config), settings(&expected));
    }

    #[test]
    fn a_bad_redis_url_is_reported_without_its_password() {
        let error = parse_redis("redis://me:s3cret@host:notaport").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("redis://***@host:notaport"), "{error}");
        assert_eq!(mask_credentials("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(mask_credentials("redis://:p@ss@h/0"), "redis://***@h/0");
        assert!(parse_redis("redis://:pw@127.0.0.1:6379").is_ok());
    }
}
