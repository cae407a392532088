//! The listener: accepting connections, turning away the ones past `--max-connections`, and
//! pausing when the process runs out of file descriptors.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use super::client::Client;
use super::Server;
use crate::connection::{Connection, Ending};
use crate::proxy::Peer;
use crate::transport::Transport;

/// Pause after `accept` fails for lack of resources (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections being told 503 at the same time; past this, extra ones are closed unanswered.
const MAX_REFUSING: usize = 64;
/// Pending connections the kernel may queue for `accept` (it caps this at `net.core.somaxconn`).
/// mio's default of 128 overflows when a load test opens thousands of connections at once.
const LISTEN_BACKLOG: i32 = 4096;

impl Server {
    pub(super) fn accept(&mut self, now: Instant) {
        while let Some(listener) = &self.listener {
            if self.accept_pause.is_paused() {
                return;
            }
            match listener.accept() {
                Ok((socket, peer)) => {
                    self.accept_recovered(now);
                    self.admit(socket, peer, now)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors or memory: the connection waits in the backlog.
                    if self.accept_pause.failed(now) {
                        warn!(
                            "accept failed: {e}; retrying every {ACCEPT_BACKOFF:?} until it works"
                        );
                    } else {
                        debug!("accept still failing: {e}");
                    }
                }
            }
        }
    }

    /// Ends an episode of failing accepts with one line saying how long it lasted.
    fn accept_recovered(&mut self, now: Instant) {
        if let Some((failures, lasted)) = self.accept_pause.succeeded(now) {
            info!("accepting again after {failures} failed attempts over {lasted:.1?}");
        }
    }

    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if self.accept_pause.resume(now) {
            self.accept(now);
        }
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr, now: Instant) {
        self.room.metrics.accepted += 1;
        let refused = self.clients.len() - self.refusing >= self.config.max_connections;
        if refused && self.refusing >= MAX_REFUSING {
            debug!(peer:% = peer; "closed unanswered: too many connections");
            self.room.metrics.ended(Ending::Answered(503));
            return;
        }
        // We batch small frames ourselves; Nagle's algorithm would only add latency.
        if let Err(e) = socket.set_nodelay(true) {
            debug!(peer:% = peer; "set_nodelay: {e}");
        }
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let registry = self.poll.registry();
        if let Err(e) = registry.register(&mut socket, Token(key), Interest::READABLE) {
            warn!(peer:% = peer; "could not register the connection: {e}");
            return;
        }
        let transport = match &self.tls {
            None => Transport::Plain,
            Some(config) => match Transport::tls(config) {
                Ok(transport) => transport,
                Err(e) => {
                    warn!(peer:% = peer; "could not start TLS: {e}");
                    let _ = registry.deregister(&mut socket);
                    return;
                }
            },
        };
        let conn = if refused {
            // Counted as answered when it ends, like any other 503.
            Connection::refused(now, 503)
        } else {
            Connection::new(now)
        };
        self.next_id += 1;
        entry.insert(Client {
            socket,
            transport,
            peer: Peer::Direct(peer),
            conn,
            id: self.next_id,
            timer_at: None,
            awaiting_writable: false,
            dirty: false,
            unread: false,
            half_closed: false,
            refused,
            batch_tail: 0,
            read_turn: 0,
            read_spent: 0,
            held: 0,
            evicting: false,
            untried: false,
        });
        self.refusing += usize::from(refused);
        debug!(token = key, peer:% = peer; "accepted");
        self.settle(key);
    }
}

/// A non-blocking listener with `SO_REUSEADDR` (a restarted server can bind again at once) and a
/// backlog long enough for connection storms; with `reuse_port`, `SO_REUSEPORT` too, so several
/// processes can listen on one port and the kernel spreads new connections over them.
pub(super) fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// An episode of failing accepts (out of file descriptors or memory): accepting pauses and is
/// retried every [`ACCEPT_BACKOFF`], and the episode is reported twice, when it starts and when
/// it ends (with its count), not once per retry.
#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    /// The next retry, while paused.
    until: Option<Instant>,
    /// When the episode began, while one is going on.
    since: Option<Instant>,
    failures: u64,
}

impl AcceptPause {
    pub fn is_paused(&self) -> bool {
        self.until.is_some()
    }

    /// When accepting should be retried (a deadline for the poll timeout).
    pub fn retry_at(&self) -> Option<Instant> {
        self.until
    }

    /// An accept failed: pause. Returns whether this starts a new episode (worth a warning).
    pub fn failed(&mut self, now: Instant) -> bool {
        self.until = Some(now + ACCEPT_BACKOFF);
        self.failures += 1;
        self.since.get_or_insert(now) == &now && self.failures == 1
    }

    /// Ends the pause once it is due; returns whether to try accepting again.
    pub fn resume(&mut self, now: Instant) -> bool {
        let due = self.until.is_some_and(|until| until <= now);
        if due {
            self.until = None;
        }
        due
    }

    /// An accept worked: the episode, if any, is over: how many failed and for how long.
    pub fn succeeded(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let since = self.since.take()?;
        Some((std::mem::take(&mut self.failures), now - since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_warns_once_retries_on_time_and_ends_with_its_count() {
        let (mut pause, t0) = (AcceptPause::default(), Instant::now());
        assert_eq!(pause.succeeded(t0), None, "no episode, nothing to report");
        assert!(pause.failed(t0), "the first failure starts an episode");
        assert!(pause.is_paused());
        assert!(!pause.resume(t0 + ACCEPT_BACKOFF / 2));
        assert!(pause.resume(t0 + ACCEPT_BACKOFF));
        assert!(!pause.failed(t0 + ACCEPT_BACKOFF), "the same episode");
        assert_eq!(pause.retry_at(), Some(t0 + ACCEPT_BACKOFF * 2));
        assert!(pause.resume(t0 + ACCEPT_BACKOFF * 2));
        assert_eq!(
            pause.succeeded(t0 + ACCEPT_BACKOFF * 3),
            Some((2, ACCEPT_BACKOFF * 3))
        );
        assert!(pause.failed(t0 + ACCEPT_BACKOFF * 4), "a new episode");
    }
}
