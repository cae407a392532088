//! A TCP proxy of the tests' own, put between one mio-chat process and Redis, that can cut that
//! process's link and heal it while every other process stays connected to Redis directly.
//!
//! * [`CutProxy::start`] with Redis's address, then `--redis` [`CutProxy::url`]: bytes pass both
//!   ways, one pair of threads per connection.
//! * [`CutProxy::cut`]: every connection through it is closed on both sides (the process and
//!   Redis each see the other hang up), and new ones are, by the [`Cut`] chosen, refused (reset
//!   at once, as a closed port answers) or stalled (held open, nothing forwarded, as a
//!   black-holed route looks until a timeout).
//! * [`CutProxy::heal`]: new connections pass again (stalled ones are closed: the process's
//!   timeout has already given up on them, or will).
//! * [`CutProxy::wait_until`]: block until the [`Counts`] satisfy a condition (a connection
//!   refused, stalled, or forwarded): tests wait for events, not for time.
//!
//! Dropping it closes everything and stops its threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// How long a wait may take before the test fails: a guard, not a wait.
const GUARD: Duration = Duration::from_secs(20);

/// What a cut does to the connections that come while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Accepted and reset at once: the process's connect fails fast.
    Refuse,
    /// Accepted and held, nothing forwarded: the process waits for an answer that never comes.
    Stall,
}

/// What has happened so far, for [`CutProxy::wait_until`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Connections forwarded to Redis.
    pub forwarded: usize,
    /// Connections reset during a [`Cut::Refuse`].
    pub refused: usize,
    /// Connections held during a [`Cut::Stall`].
    pub stalled: usize,
    /// Connections closed by [`CutProxy::cut`].
    pub cut: usize,
}

#[derive(Default)]
struct State {
    cut: Option<Cut>,
    counts: Counts,
    /// Both sockets of each forwarded connection (clones), to shut them down at a cut.
    links: Vec<(TcpStream, TcpStream)>,
    held: Vec<TcpStream>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    upstream: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CutProxy {
    /// A proxy on a free port of 127.0.0.1 to `upstream`, passing bytes.
    pub fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            upstream,
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || accept_loop(listener, accepting));
        CutProxy { addr, shared }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://` at the proxy: what the process behind it is given as `--redis`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts the link: closes every connection through the proxy, both sides, and treats new
    /// ones as `how` says until [`CutProxy::heal`].
    pub fn cut(&self, how: Cut) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        state.cut = Some(how);
        for (client, server) in state.links.drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            state.counts.cut += 1;
        }
        self.shared.changed.notify_all();
    }

    /// Heals the link: new connections are forwarded again; stalled ones are closed.
    pub fn heal(&self) {
        let mut state = self.shared.lock();
        state.cut = None;
        for held in state.held.drain(..) {
            let _ = held.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    pub fn counts(&self) -> Counts {
        self.shared.lock().counts
    }

    /// Blocks until `done(counts)` holds (fails the test after a guard time).
    pub fn wait_until(&self, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
        let state = self.shared.lock();
        let (state, timeout) = self
            .shared
            .changed
            .wait_timeout_while(state, GUARD, |s| !done(&s.counts))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(
            !timeout.timed_out(),
            "proxy: {what} did not happen within {GUARD:?}: {:?}",
            state.counts
        );
        state.counts
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.cut(Cut::Refuse);
        self.heal();
        // Wakes the accept loop so that it sees `stopping`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        let Ok(client) = incoming else { continue };
        let mut state = shared.lock();
        if state.stopping {
            return;
        }
        match state.cut {
            Some(Cut::Refuse) => {
                // SO_LINGER 0: the close sends a reset, as a closed port answers a SYN.
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                state.counts.refused += 1;
            }
            Some(Cut::Stall) => {
                state.held.push(client);
                state.counts.stalled += 1;
            }
            None => match forward(client, shared.upstream) {
                Ok(pair) => {
                    state.links.push(pair);
                    state.counts.forwarded += 1;
                }
                Err(e) => eprintln!("proxy: cannot reach {}: {e}", shared.upstream),
            },
        }
        shared.changed.notify_all();
    }
}

/// Connects to `upstream` and copies bytes both ways, a thread for each; returns clones of the
/// two sockets, for a cut to shut down.
fn forward(client: TcpStream, upstream: SocketAddr) -> io::Result<(TcpStream, TcpStream)> {
    let server = TcpStream::connect(upstream)?;
    let pair = (client.try_clone()?, server.try_clone()?);
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || pipe(client_in, server_out));
    thread::spawn(move || pipe(server, client));
    Ok(pair)
}

/// Copies `from` to `to` until either side ends, then closes both: one side gone ends the link,
/// as it would on a real path.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
