//! The floor of a paced broadcast on this machine, without the server: one thread writes one
//! pre-encoded 47-byte frame to each of N loopback sockets (one `write` per socket, the least a
//! message arriving alone can cost), round after round, paced like `--rate 100`. It runs twice:
//! once with nobody reading (the bare loop), once with a second thread reading every socket
//! through epoll, as the load generator does. Prints the writer's CPU time per write.
//!
//! ```sh
//! cargo bench --bench floor              # 1,000 sockets
//! FLOOR_SOCKETS=5000 cargo bench --bench floor
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

const ROUNDS: usize = 100;
/// Between rounds the reader goes idle, so each round must wake it again, as in a paced run.
const PACE: Duration = Duration::from_millis(10);

/// A 47-byte server text frame: `{"type":1,"body":"..."}` with a 24-byte body.
fn frame() -> Vec<u8> {
    let json = br#"{"type":1,"body":"s=0 q=000001 t=00000000"}"#;
    let mut out = vec![0x81, json.len() as u8];
    out.extend_from_slice(json);
    out
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// N connected pairs: (the writer's ends, the reader's ends).
fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nodelay(true).expect("nodelay");
        ours.push(server);
        theirs.push(client);
    }
    (ours, theirs)
}

/// Reads every socket through one epoll instance until `total` bytes have arrived.
fn read_all(sockets: Vec<TcpStream>, total: usize) {
    let mut poll = Poll::new().expect("poll");
    let mut streams: Vec<mio::net::TcpStream> = sockets
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            mio::net::TcpStream::from_std(s)
        })
        .collect();
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < total {
        poll.poll(&mut events, None).expect("poll");
        for event in events.iter() {
            loop {
                match streams[event.token().0].read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
}

/// Writer CPU per write, with or without a reader.
fn run(n: usize, with_reader: bool) -> Duration {
    let (mut ours, theirs) = pairs(n);
    let frame = frame();
    let total = n * ROUNDS * frame.len();
    // Without a reader the other ends stay open, unread (small frames fit in their buffers).
    let (reader, _unread) = if with_reader {
        (Some(thread::spawn(move || read_all(theirs, total))), None)
    } else {
        (None, Some(theirs))
    };
    let mut busy = Duration::ZERO;
    for _ in 0..ROUNDS {
        let start = thread_cpu();
        for s in &mut ours {
            s.write_all(&frame).expect("write");
        }
        busy += thread_cpu() - start;
        thread::sleep(PACE);
    }
    if let Some(reader) = reader {
        reader.join().expect("reader");
    }
    busy / (n * ROUNDS) as u32
}

fn main() {
    let n: usize = std::env::var("FLOOR_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bare = run(n, false);
    let read = run(n, true);
    println!(
        "floor, {n} loopback sockets, {ROUNDS} paced rounds of one 47-byte write each:\n  \
         nobody reading:           {:.2} µs of CPU per write\n  \
         an epoll reader (awake):  {:.2} µs of CPU per write",
        bare.as_secs_f64() * 1e6,
        read.as_secs_f64() * 1e6
    );
}
