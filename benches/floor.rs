//! The floor of a broadcast on this machine, without the server: one thread writes a pre-encoded
//! 47-byte frame (or a batch of them) to each of N loopback sockets, one `write` per socket per
//! round, and measures its own CPU time (`CLOCK_THREAD_CPUTIME_ID`) and the wall time of each
//! round. Each variant is a comma-separated list in an environment variable; the bench runs every
//! combination `FLOOR_RUNS` times, interleaved (run 1 of every combination, then run 2, ...), so
//! that a noisy neighbour hurts them all alike, and prints a table of medians.
//!
//! - `FLOOR_PACE` (default `sleep,spin,none`): what the writer does between rounds. `sleep`:
//!   sleeps `FLOOR_PACE_MS` (default 10; a list, fractions allowed), as a server does between
//!   the messages of `--rate 100`, so its core may go idle (and the VM's vCPU halt); `spin`:
//!   waits as long, busy, so it is paced but never idle; `none`: rounds back to back (a tight
//!   loop); `evict`: no wait, but writes one byte per cache line of `FLOOR_EVICT_KIB` (default
//!   32768, the size of the L3 cache) first, so caches are cold without any time passing.
//! - `FLOOR_READER` (default `none,epoll,spin`): who reads the other ends. `none`: nobody (the
//!   writer drains them itself between rounds, untimed, long before they could fill up);
//!   `epoll`: a thread sleeping in `epoll_wait` until data arrives, as the load generator does, so
//!   a write may have to wake it; `spin`: a thread calling `epoll_wait` with timeout 0 in a loop,
//!   always awake, so no write has to wake anyone.
//! - `FLOOR_BATCH` (default `1`): frames per write (1: a message arriving alone; 16 or 64: that
//!   many coalesced). The table gives the CPU per write and per frame (per delivery).
//! - `FLOOR_NODELAY` (default `on`): `TCP_NODELAY` on the writing ends, `on` or `off`.
//! - `FLOOR_SOCKETS` (default `1000`): sockets written each round.
//!
//! And `FLOOR_RUNS` (default 5) and `FLOOR_ROUNDS` (timed rounds per run, default 100, after one
//! untimed warm-up round). Besides CPU per write, per frame and wall time per round, the table
//! has the CPU of the first write of a round (the one right after the pause), and, to tell how
//! busy and how fast the machine was: the share of the machine's CPU that was idle, the writer's
//! involuntary context switches, the machine's steal time, and three yardsticks taken before
//! each run (ns per `getppid` syscall; µs for a fixed arithmetic loop; ns per load chasing
//! pointers at random through `FLOOR_CHASE_KIB`, default 4096, of the order of the kernel state
//! of 1,000 socket pairs).
//!
//! ```sh
//! cargo bench --bench floor                      # 1,000 sockets, 9 variants × 5 runs, ~1.5 min
//! FLOOR_SOCKETS=10,100,1000,5000 FLOOR_PACE=none FLOOR_READER=none cargo bench --bench floor
//! FLOOR_SOCKETS=10 FLOOR_ROUNDS=300 FLOOR_PACE=sleep,spin,none,evict FLOOR_PACE_MS=1,10 \
//!     cargo bench --bench floor
//! FLOOR_BATCH=1,16,64 FLOOR_PACE=sleep,none FLOOR_READER=none,epoll cargo bench --bench floor
//! FLOOR_SOCKETS=1000,5000 FLOOR_NODELAY=on,off FLOOR_PACE=sleep FLOOR_READER=none,epoll \
//!     cargo bench --bench floor
//! ```
//!
//! What it showed here (2 vCPUs on a shared KVM host, medians of 5): a write to one of 1,000
//! sockets costs 9–12 µs of CPU whatever the pace or the batch size, because each socket's
//! kernel state has left the caches by the time its turn comes again, paced or not (the pointer
//! chase finds only about 1 MiB of cache that stays ours: ≈ 170 ns a load through 4 MiB). A
//! write to one of 10–100 sockets back to back costs 3.4–3.9 µs, but 13–17 µs once 10 ms pass
//! between rounds, asleep or spinning alike, or once 32 MiB are written between rounds. A reader
//! spinning in `epoll_wait` saves the writer 1–2 µs a write against one sleeping in it when the
//! machine is quiet (the wake-up), nothing measurable when it is busy.

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

/// Unread bytes per socket past which a writer without a reader drains the other ends (untimed),
/// well below what the socket buffers hold, so no write ever blocks.
const DRAIN_AT: usize = 32 * 1024;

/// What the writer does between rounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pace {
    Sleep(Duration),
    Spin(Duration),
    None,
    /// Writes one byte in each 64-byte line of this many KiB: caches as cold as a long pause
    /// can leave them, at once.
    Evict(usize),
}

impl fmt::Display for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |gap: &Duration| gap.as_secs_f64() * 1e3;
        match self {
            Pace::Sleep(gap) => write!(f, "sleep {:<4}", ms(gap)),
            Pace::Spin(gap) => write!(f, "spin {:<5}", ms(gap)),
            Pace::None => write!(f, "none      "),
            Pace::Evict(kib) => write!(f, "evict {:<4}", format!("{}M", kib / 1024)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reader {
    None,
    Epoll,
    Spin,
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    sockets: usize,
    pace: Pace,
    reader: Reader,
    batch: usize,
    nodelay: bool,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = self.pace;
        let reader = format!("{:?}", self.reader).to_lowercase();
        let nodelay = if self.nodelay { "on" } else { "off" };
        write!(
            f,
            "{:>5} | {pace} | {reader:<6} | {:>5} | {nodelay:<7}",
            self.sockets, self.batch
        )
    }
}

/// One run of one variant.
struct Sample {
    /// Writer CPU µs per write.
    cpu_per_write: f64,
    /// Writer CPU µs for the first write of a round (the one right after the pause).
    first_write: f64,
    /// Wall µs per round (all N writes).
    wall_per_round: f64,
    /// The writer's involuntary context switches over the run.
    preempted: f64,
    /// The share of the machine's CPU time that was idle during the run, %.
    idle: f64,
    /// Steal time over the run, all CPUs, ms.
    steal_ms: f64,
    /// Measured just before the run.
    yardsticks: Yardsticks,
}

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

/// Involuntary context switches of the calling thread so far.
fn preemptions() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    usage.ru_nivcsw
}

/// The machine's CPU time so far, from /proc/stat's `cpu` line: (idle, steal, all), in ms.
fn machine_ms() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1) // "cpu"
        .take(8) // user nice system idle iowait irq softirq steal
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ms = 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0) * ms;
    (at(3), at(7), ticks.iter().sum::<f64>() * ms)
}

/// How fast this machine is right now, whatever else runs on it.
#[derive(Clone, Copy)]
struct Yardsticks {
    /// ns of CPU per `getppid`: a syscall's entry and exit, which every `send` also pays.
    syscall_ns: f64,
    /// µs of CPU for 10 million xorshift steps: the core's speed, no memory involved.
    compute_us: f64,
    /// ns per load chasing pointers in random order through `FLOOR_CHASE_KIB` (default 4096, of
    /// the order of the kernel state of 1,000 socket pairs): a last-level cache hit if that
    /// cache is ours, a trip to memory if neighbours crowd it out.
    chase_ns: f64,
}

fn yardsticks(chase: &[usize]) -> Yardsticks {
    let start = thread_cpu();
    for _ in 0..100_000 {
        // SAFETY: getppid has no preconditions.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    let syscall_ns = (thread_cpu() - start).as_secs_f64() * 1e9 / 100_000.0;
    let start = thread_cpu();
    let mut x = std::hint::black_box(88_172_645_463_325_252u64);
    for _ in 0..10_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    let compute_us = (thread_cpu() - start).as_secs_f64() * 1e6;
    let mut at = 0;
    for _ in 0..chase.len() / 8 {
        at = chase[at]; // one lap to bring it in
    }
    let start = thread_cpu();
    for _ in 0..1_000_000 {
        at = chase[at];
    }
    std::hint::black_box(at);
    let chase_ns = (thread_cpu() - start).as_secs_f64() * 1e9 / 1_000_000.0;
    Yardsticks {
        syscall_ns,
        compute_us,
        chase_ns,
    }
}

/// `kib` KiB of 64-byte lines, each line's first word the index of the next line in one random
/// cycle through all of them.
fn chase_ring(kib: usize) -> Vec<usize> {
    let lines = kib * 1024 / 64;
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut ring = vec![0; lines * 8];
    for (i, &line) in order.iter().enumerate() {
        ring[line * 8] = order[(i + 1) % lines] * 8;
    }
    ring
}

/// N connected pairs: (the writer's ends, the reader's ends, non-blocking).
fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.set_nonblocking(true).expect("nonblocking");
        ours.push(server);
        theirs.push(client);
    }
    (ours, theirs)
}

/// Reads everything already arrived on every socket.
fn drain(sockets: &mut [TcpStream], buf: &mut [u8]) {
    for s in sockets {
        loop {
            match s.read(buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Reads every socket through one epoll instance until `total` bytes have arrived: sleeping in
/// `epoll_wait`, or (`spin`) calling it with timeout 0 over and over.
fn read_all(sockets: Vec<TcpStream>, total: usize, spin: bool, ready: Arc<Barrier>) {
    let mut poll = Poll::new().expect("poll");
    let mut streams: Vec<mio::net::TcpStream> = sockets
        .into_iter()
        .map(mio::net::TcpStream::from_std)
        .collect();
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .expect("register");
    }
    let timeout = if spin { Some(Duration::ZERO) } else { None };
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let mut got = 0;
    ready.wait();
    while got < total {
        poll.poll(&mut events, timeout).expect("poll");
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

/// The wait between two rounds.
fn pace(pace: Pace, evict: &mut [u8]) {
    match pace {
        Pace::None => {}
        Pace::Sleep(gap) => thread::sleep(gap),
        Pace::Spin(gap) => {
            let until = Instant::now() + gap;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        Pace::Evict(_) => {
            for line in evict.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            std::hint::black_box(evict);
        }
    }
}

/// One run of a variant over existing socket pairs.
fn run(
    v: Variant,
    rounds: usize,
    ours: &mut [TcpStream],
    theirs: &mut [TcpStream],
    chase: &[usize],
) -> Sample {
    for s in ours.iter() {
        s.set_nodelay(v.nodelay).expect("nodelay");
    }
    let buf = frame().repeat(v.batch);
    let total = ours.len() * (rounds + 1) * buf.len();
    let reader = (v.reader != Reader::None).then(|| {
        let clones: Vec<TcpStream> = theirs
            .iter()
            .map(|s| s.try_clone().expect("clone"))
            .collect();
        let ready = Arc::new(Barrier::new(2));
        let theirs_ready = Arc::clone(&ready);
        let spin = v.reader == Reader::Spin;
        let handle = thread::spawn(move || read_all(clones, total, spin, theirs_ready));
        ready.wait();
        handle
    });
    let mut scratch = vec![0u8; 64 * 1024];
    let mut evict = match v.pace {
        Pace::Evict(kib) => vec![1u8; kib * 1024],
        _ => Vec::new(),
    };
    let mut unread = 0;
    let write_round = |ours: &mut [TcpStream]| {
        for s in ours.iter_mut() {
            s.write_all(&buf).expect("write");
        }
    };
    let yardsticks = yardsticks(chase);
    write_round(ours); // warm-up, untimed
    unread += buf.len();
    let (mut cpu, mut first, mut wall) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (preempted, (idle, steal, all)) = (preemptions(), machine_ms());
    for _ in 0..rounds {
        if reader.is_none() && unread + buf.len() > DRAIN_AT {
            drain(theirs, &mut scratch);
            unread = 0;
        }
        pace(v.pace, &mut evict);
        let (cpu0, wall0) = (thread_cpu(), Instant::now());
        ours[0].write_all(&buf).expect("write");
        let cpu1 = thread_cpu(); // one more clock read (≈ 0.3 µs) in the round's CPU
        write_round(&mut ours[1..]);
        wall += wall0.elapsed();
        cpu += thread_cpu() - cpu0;
        first += cpu1 - cpu0;
        unread += buf.len();
    }
    let (idle_end, steal_end, all_end) = machine_ms();
    let sample = Sample {
        cpu_per_write: cpu.as_secs_f64() * 1e6 / (ours.len() * rounds) as f64,
        first_write: first.as_secs_f64() * 1e6 / rounds as f64,
        wall_per_round: wall.as_secs_f64() * 1e6 / rounds as f64,
        preempted: (preemptions() - preempted) as f64,
        idle: 100.0 * (idle_end - idle) / (all_end - all).max(1.0),
        steal_ms: steal_end - steal,
        yardsticks,
    };
    match reader {
        Some(reader) => reader.join().expect("reader"),
        None => drain(theirs, &mut scratch),
    }
    sample
}

/// A comma-separated list from the environment, or the default.
fn list<T: FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|item| {
            item.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse {item:?}"))
        })
        .collect()
}

/// `FLOOR_PACE` × `FLOOR_PACE_MS` (which `none` ignores).
fn paces() -> Vec<Pace> {
    let gaps: Vec<Duration> = list("FLOOR_PACE_MS", "10")
        .into_iter()
        .map(|ms: f64| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    let mut paces = Vec::new();
    for name in list::<String>("FLOOR_PACE", "sleep,spin,none") {
        match name.as_str() {
            "sleep" => paces.extend(gaps.iter().map(|&gap| Pace::Sleep(gap))),
            "spin" => paces.extend(gaps.iter().map(|&gap| Pace::Spin(gap))),
            "none" => paces.push(Pace::None),
            "evict" => paces.push(Pace::Evict(list("FLOOR_EVICT_KIB", "32768")[0])),
            _ => panic!("FLOOR_PACE: sleep, spin, none or evict, not {name:?}"),
        }
    }
    paces
}

fn parse_reader(s: &str) -> Reader {
    match s {
        "none" => Reader::None,
        "epoll" => Reader::Epoll,
        "spin" => Reader::Spin,
        _ => panic!("FLOOR_READER: none, epoll or spin, not {s:?}"),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

fn main() {
    let runs: usize = list("FLOOR_RUNS", "5")[0];
    let rounds: usize = list("FLOOR_ROUNDS", "100")[0];
    let chase = chase_ring(list("FLOOR_CHASE_KIB", "4096")[0]);
    let mut variants = Vec::new();
    for sockets in list::<usize>("FLOOR_SOCKETS", "1000") {
        for pace in paces() {
            for reader in list::<String>("FLOOR_READER", "none,epoll,spin") {
                for batch in list::<usize>("FLOOR_BATCH", "1") {
                    for nodelay in list::<String>("FLOOR_NODELAY", "on") {
                        variants.push(Variant {
                            sockets,
                            pace,
                            reader: parse_reader(&reader),
                            batch,
                            nodelay: match nodelay.as_str() {
                                "on" => true,
                                "off" => false,
                                _ => panic!("FLOOR_NODELAY: on or off, not {nodelay:?}"),
                            },
                        });
                    }
                }
            }
        }
    }

    let mut sockets: HashMap<usize, (Vec<TcpStream>, Vec<TcpStream>)> = HashMap::new();
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for r in 0..runs {
        for (v, out) in variants.iter().zip(&mut samples) {
            let (ours, theirs) = sockets.entry(v.sockets).or_insert_with(|| pairs(v.sockets));
            let s = run(*v, rounds, ours, theirs, &chase);
            let y = s.yardsticks;
            eprintln!(
                "run {}/{runs}  {v} | {:6.2} µs/write | first {:6.1} µs | {:6.0} µs/round \
                 | idle {:3.0}% \
                 | syscall {:4.0} ns | compute {:5.0} µs | chase {:4.0} ns",
                r + 1,
                s.cpu_per_write,
                s.first_write,
                s.wall_per_round,
                s.idle,
                y.syscall_ns,
                y.compute_us,
                y.chase_ns
            );
            out.push(s);
        }
    }

    println!(
        "\nfloor: one 47-byte frame × batch per write, {rounds} timed rounds per run; \
         medians of {runs} interleaved runs\n"
    );
    println!(
        "socks | pace (ms)  | reader | batch | nodelay | CPU µs/write | (min–max)   | CPU µs/frame \
         | first write µs | wall µs/round | idle % | preempted | steal ms | syscall ns | compute µs | chase ns"
    );
    println!(
        "----: | ---------- | ------ | ----: | ------- | -----------: | ----------- | -----------: \
         | -------------: | ------------: | -----: | --------: | -------: | ---------: | ---------: | -------:"
    );
    for (v, s) in variants.iter().zip(samples) {
        let of = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        let cpu = of(|x| x.cpu_per_write);
        let (min, max) = s.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| {
            (lo.min(x.cpu_per_write), hi.max(x.cpu_per_write))
        });
        println!(
            "{v} | {cpu:12.2} | {:<11} | {:12.3} | {:14.1} | {:13.0} | {:6.0} | {:9.0} | {:8.0} | {:10.0} \
             | {:10.0} | {:8.1}",
            format!("{min:.1}–{max:.1}"),
            cpu / v.batch as f64,
            of(|x| x.first_write),
            of(|x| x.wall_per_round),
            of(|x| x.idle),
            of(|x| x.preempted),
            of(|x| x.steal_ms),
            of(|x| x.yardsticks.syscall_ns),
            of(|x| x.yardsticks.compute_us),
            of(|x| x.yardsticks.chase_ns),
        );
    }
}
