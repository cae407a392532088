//! A fake Redis for tests: a `std::net::TcpListener` on a free port, one thread per connection,
//! speaking just enough RESP2 for the backplane (AUTH, SELECT, SUBSCRIBE, PUBLISH, PING) and able
//! to misbehave on demand, as a broken, paused or hostile Redis (or anyone on the path to it)
//! would.
//!
//! * [`FakeRedis::start`], then `--redis` [`FakeRedis::url`]: a working pub/sub server; two
//!   mio-chat processes on it are one room.
//! * [`FakeRedis::set_mode`] with a [`Mode`]: forward nothing ([`Mode::Stall`]), answer SUBSCRIBE
//!   with deep nesting ([`Mode::NestedOnSubscribe`]), answer PUBLISH with an endless bulk string
//!   ([`Mode::EndlessBulkOnPublish`]).
//! * [`FakeRedis::pause`] / [`FakeRedis::resume`]: as SIGSTOP / SIGCONT on a real one: the kernel
//!   still accepts connections and buffers commands, nothing is answered or forwarded.
//! * [`FakeRedis::send_to_subscribers`]: raw bytes to every subscribed connection, e.g.
//!   [`nested`] or [`unfinished_array`].
//! * [`FakeRedis::wait_until`]: block until the [`Stats`] (connections, subscriptions, PUBLISHes,
//!   PINGs, payloads, the endless reply's fate) satisfy a condition: tests wait for events, not
//!   for time.
//!
//! Dropping it shuts every connection down and stops the threads.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// How long a wait or a blocking write may take before the test fails: a guard, not a wait.
const GUARD: Duration = Duration::from_secs(15);
/// The largest command argument accepted (larger: the connection is closed).
const MAX_ARG: usize = 64 << 20;

/// How the fake behaves from now on (see [`FakeRedis::set_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A working Redis, for the commands above.
    Normal,
    /// PUBLISH is answered (with the number of subscribers) but the message reaches nobody.
    Stall,
    /// SUBSCRIBE is answered with `depth` nested `*1\r\n` (and nothing after).
    NestedOnSubscribe { depth: usize },
    /// PUBLISH is answered with `$declared\r\n` and then `x` bytes, 64 KiB at a time, until the
    /// peer goes away or `declared` bytes are out (never the final CRLF). See
    /// [`Stats::endless_sent`].
    EndlessBulkOnPublish { declared: u64 },
}

/// What the fake has seen so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Connections accepted, ever.
    pub connections: usize,
    /// Connections that have ended (EOF, error, or closed by the fake).
    pub disconnections: usize,
    /// Every command handled, as its words (AUTH's password included: test credentials only;
    /// a PUBLISH without its payload, which is in `payloads`), in order.
    pub commands: Vec<String>,
    /// SUBSCRIBE commands answered (any mode).
    pub subscribes: usize,
    /// PUBLISH commands handled, and their payloads in order.
    pub published: usize,
    pub payloads: Vec<Vec<u8>>,
    /// Messages written to subscribers.
    pub forwarded: usize,
    pub pings: usize,
    /// Bytes of endless bulk strings written (headers not counted), and whether the last one
    /// has ended (the peer went away, or all of `declared` was sent).
    pub endless_sent: u64,
    pub endless_done: bool,
}

struct Conn {
    id: usize,
    /// Every write to the socket goes through this lock, so replies and forwarded messages
    /// never interleave.
    writer: Arc<Mutex<TcpStream>>,
    /// For shutting the socket down without waiting for a writer.
    control: TcpStream,
    channels: Vec<Vec<u8>>,
}

struct State {
    mode: Mode,
    paused: bool,
    stopped: bool,
    stats: Stats,
    conns: Vec<Conn>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the state and wakes every waiter.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.lock());
        self.changed.notify_all();
        result
    }
}

/// A fake Redis on 127.0.0.1 (see the module documentation).
pub struct FakeRedis {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl FakeRedis {
    pub fn start() -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Redis");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Normal,
                paused: false,
                stopped: false,
                stats: Stats::default(),
                conns: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(listener, shared))
        };
        FakeRedis {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.update(|state| state.mode = mode);
    }

    /// Stops answering and forwarding (connections are still accepted, commands buffered).
    pub fn pause(&self) {
        self.shared.update(|state| state.paused = true);
    }

    pub fn resume(&self) {
        self.shared.update(|state| state.paused = false);
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Blocks until `done(stats)`, and returns those stats; fails the test after [`GUARD`].
    pub fn wait_until(&self, done: impl Fn(&Stats) -> bool) -> Stats {
        self.wait_until_for(GUARD, done)
    }

    /// [`FakeRedis::wait_until`] with a guard of the caller's choosing.
    pub fn wait_until_for(&self, guard: Duration, done: impl Fn(&Stats) -> bool) -> Stats {
        let (state, timeout) = self
            .shared
            .changed
            .wait_timeout_while(self.shared.lock(), guard, |state| !done(&state.stats))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(
            !timeout.timed_out() || done(&state.stats),
            "the fake Redis waited {guard:?} in vain: {:?}",
            state.stats
        );
        state.stats.clone()
    }

    /// Writes `bytes` to every subscribed connection (pause or not), blocking until the kernel
    /// took them; returns how many connections got them.
    pub fn send_to_subscribers(&self, bytes: &[u8]) -> usize {
        let writers: Vec<_> = self
            .shared
            .lock()
            .conns
            .iter()
            .filter(|conn| !conn.channels.is_empty())
            .map(|conn| Arc::clone(&conn.writer))
            .collect();
        writers
            .iter()
            .filter(|writer| write_all(writer, bytes).is_ok())
            .count()
    }

    /// Closes every connection, as a Redis that crashed.
    pub fn drop_connections(&self) {
        for conn in self.shared.lock().conns.iter() {
            let _ = conn.control.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.shared.update(|state| state.stopped = true);
        self.drop_connections();
        // Wake the acceptor out of `accept` so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// `depth` nested one-element arrays, unfinished: the reply that overflowed a recursive decoder.
pub fn nested(depth: usize) -> Vec<u8> {
    b"*1\r\n".repeat(depth)
}

/// An array that announces more elements than it sends: about `bytes` bytes of `:1\r\n`, never
/// finished, announcing no more than fits in `bytes * 4 / 3` (so a decoder's size limit above
/// that does not refuse it at the header).
pub fn unfinished_array(bytes: usize) -> Vec<u8> {
    let elements = bytes / 4;
    let mut out = format!("*{}\r\n", elements + elements / 3 + 1).into_bytes();
    out.extend(b":1\r\n".repeat(elements));
    out
}

fn lock(writer: &Mutex<TcpStream>) -> MutexGuard<'_, TcpStream> {
    writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_all(writer: &Mutex<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    lock(writer).write_all(bytes)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for (id, stream) in listener.incoming().enumerate() {
        if shared.lock().stopped {
            return;
        }
        let Ok(stream) = stream else { continue };
        let (Ok(writer), Ok(control)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let _ = writer.set_write_timeout(Some(GUARD));
        let writer = Arc::new(Mutex::new(writer));
        shared.update(|state| {
            state.stats.connections += 1;
            state.conns.push(Conn {
                id,
                writer: Arc::clone(&writer),
                control,
                channels: Vec::new(),
            });
        });
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let _ = serve(id, &stream, &writer, &shared);
            let _ = stream.shutdown(Shutdown::Both);
            shared.update(|state| {
                state.conns.retain(|conn| conn.id != id);
                state.stats.disconnections += 1;
            });
        });
    }
}

/// One connection: a command at a time until EOF, an error, or a command we refuse.
fn serve(id: usize, stream: &TcpStream, writer: &Mutex<TcpStream>, shared: &Shared) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    while let Ok(Some(args)) = read_command(&mut reader) {
        let mode = {
            let state = shared
                .changed
                .wait_while(shared.lock(), |state| state.paused && !state.stopped)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.stopped {
                return None;
            }
            state.mode
        };
        handle(id, &args, mode, writer, shared).ok()?;
    }
    Some(())
}

fn handle(
    id: usize,
    args: &[Vec<u8>],
    mode: Mode,
    writer: &Mutex<TcpStream>,
    shared: &Shared,
) -> io::Result<()> {
    let name = args
        .first()
        .map(|a| a.to_ascii_uppercase())
        .unwrap_or_default();
    let shown = &args[..args.len() - usize::from(name == b"PUBLISH")];
    let words: Vec<_> = shown.iter().map(|a| String::from_utf8_lossy(a)).collect();
    shared.update(|state| state.stats.commands.push(words.join(" ")));
    match (name.as_slice(), mode) {
        (b"AUTH" | b"SELECT", _) => write_all(writer, b"+OK\r\n"),
        (b"SUBSCRIBE", Mode::NestedOnSubscribe { depth }) => {
            shared.update(|state| state.stats.subscribes += 1);
            write_all(writer, &nested(depth))
        }
        (b"SUBSCRIBE", _) => subscribe(id, &args[1..], writer, shared),
        (b"PUBLISH", _) if args.len() == 3 => publish(&args[1], &args[2], mode, writer, shared),
        (b"PING", _) => ping(id, args.get(1), writer, shared),
        _ => write_all(
            writer,
            b"-ERR unknown command or wrong number of arguments\r\n",
        ),
    }
}

fn subscribe(
    id: usize,
    channels: &[Vec<u8>],
    writer: &Mutex<TcpStream>,
    shared: &Shared,
) -> io::Result<()> {
    let mut reply = Vec::new();
    shared.update(|state| {
        state.stats.subscribes += 1;
        let Some(conn) = state.conns.iter_mut().find(|conn| conn.id == id) else {
            return;
        };
        for channel in channels {
            if !conn.channels.contains(channel) {
                conn.channels.push(channel.clone());
            }
            reply.extend_from_slice(b"*3\r\n");
            bulk(&mut reply, b"subscribe");
            bulk(&mut reply, channel);
            reply.extend_from_slice(format!(":{}\r\n", conn.channels.len()).as_bytes());
        }
    });
    write_all(writer, &reply)
}

/// Forwards to the channel's subscribers (as Redis does, before answering), then answers.
fn publish(
    channel: &[u8],
    payload: &[u8],
    mode: Mode,
    writer: &Mutex<TcpStream>,
    shared: &Shared,
) -> io::Result<()> {
    let subscribers: Vec<_> = shared.update(|state| {
        state.stats.published += 1;
        state.stats.payloads.push(payload.to_vec());
        state
            .conns
            .iter()
            .filter(|conn| conn.channels.iter().any(|c| c == channel))
            .map(|conn| Arc::clone(&conn.writer))
            .collect()
    });
    if let Mode::EndlessBulkOnPublish { declared } = mode {
        return endless_bulk(declared, writer, shared);
    }
    if mode != Mode::Stall {
        let mut message = b"*3\r\n".to_vec();
        bulk(&mut message, b"message");
        bulk(&mut message, channel);
        bulk(&mut message, payload);
        let sent = subscribers
            .iter()
            .filter(|subscriber| write_all(subscriber, &message).is_ok())
            .count();
        shared.update(|state| state.stats.forwarded += sent);
    }
    write_all(writer, format!(":{}\r\n", subscribers.len()).as_bytes())
}

fn endless_bulk(declared: u64, writer: &Mutex<TcpStream>, shared: &Shared) -> io::Result<()> {
    shared.update(|state| {
        state.stats.endless_sent = 0;
        state.stats.endless_done = false;
    });
    let chunk = vec![b'x'; 64 << 10];
    let mut result = write_all(writer, format!("${declared}\r\n").as_bytes());
    let mut sent = 0u64;
    while result.is_ok() && sent < declared && !shared.lock().stopped {
        let n = chunk.len().min((declared - sent) as usize);
        result = write_all(writer, &chunk[..n]);
        if result.is_ok() {
            sent += n as u64;
            shared.update(|state| state.stats.endless_sent = sent);
        }
    }
    shared.update(|state| state.stats.endless_done = true);
    result
}

fn ping(
    id: usize,
    arg: Option<&Vec<u8>>,
    writer: &Mutex<TcpStream>,
    shared: &Shared,
) -> io::Result<()> {
    let subscribed = shared.update(|state| {
        state.stats.pings += 1;
        state
            .conns
            .iter()
            .any(|conn| conn.id == id && !conn.channels.is_empty())
    });
    let mut reply = Vec::new();
    match (subscribed, arg) {
        // A subscribed connection answers in the pub/sub form.
        (true, arg) => {
            reply.extend_from_slice(b"*2\r\n");
            bulk(&mut reply, b"pong");
            bulk(&mut reply, arg.map_or(&b""[..], |a| a));
        }
        (false, Some(arg)) => bulk(&mut reply, arg),
        (false, None) => reply.extend_from_slice(b"+PONG\r\n"),
    }
    write_all(writer, &reply)
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// One command: an array of bulk strings. `None` at EOF; an error for anything else.
fn read_command(reader: &mut impl BufRead) -> io::Result<Option<Vec<Vec<u8>>>> {
    let Some(count) = read_header(reader, b'*')? else {
        return Ok(None);
    };
    let mut args = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let len = read_header(reader, b'$')?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if len > MAX_ARG {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg)?;
        if !arg.ends_with(b"\r\n") {
            return Err(io::ErrorKind::InvalidData.into());
        }
        arg.truncate(len);
        args.push(arg);
    }
    Ok(Some(args))
}

/// `<kind><number>\r\n`; `None` at EOF before it.
fn read_header(reader: &mut impl BufRead, kind: u8) -> io::Result<Option<usize>> {
    let mut line = Vec::new();
    if reader.take(32).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    let number = line
        .strip_prefix(&[kind])
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok());
    number.map(Some).ok_or(io::ErrorKind::InvalidData.into())
}
