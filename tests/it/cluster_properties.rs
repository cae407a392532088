//! The cluster invariant over random schedules (proptest), with the real sans-I/O code of every
//! process: its room core (`RoomCore`: presence, the Redis gate, the re-announcement after a
//! heal), its backplane `Ledger` (envelopes, what each means, the beats and verdicts of
//! `Ledger::keep_alive`, the `hello` of `Ledger::up`), all on a simulated clock. Redis is one
//! shared log of envelopes in publish order; each process reads it from its own cursor while its
//! link is up, and misses what was published while it was cut off. The only glue copied from
//! the backplane is what its sockets do: a failure lands what was pending
//! (`Ledger::land_pending`), and a heal calls `Ledger::up` and lands `Landing::Back`.
//!
//! What happens: processes start (each with a version 2 watcher that stays), clients join, speak
//! and leave, processes read the log, are cut off from Redis and healed, are stopped and resumed,
//! crash (never heard from again), and time passes.
//!
//! What must hold, at every watcher of every process still alive, frame by frame: never a join
//! for a member it shows, never a leave for one it does not (but for as many members as were
//! there before it joined), never a message from one it does not show or was shown leaving, and
//! `online` equal to what it was shown. When everyone is healed and resumed, time has passed
//! beyond `--node-timeout` and everything is read, every watcher counts exactly the members of
//! the processes still alive, and shows none that is not one of them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mio_chat::backplane::Ledger;
use mio_chat::connection::Event;
use mio_chat::envelope::Kind;
use mio_chat::message::Version;
use mio_chat::presence::{Landing, Member, Publish};
use mio_chat::proxy::Peer;
use mio_chat::room_core::{Relay, RoomCore, Who};
use proptest::prelude::*;
use serde_json::Value;

/// One process's way to Redis: its ledger, whether its link is up, what it published this step.
struct Link {
    ledger: Ledger,
    up: bool,
    outbox: Vec<Vec<u8>>,
}

impl Publish for Link {
    fn publish(&mut self, kind: Kind, body: &str, member: Member) {
        let envelope = self.ledger.publish(kind, body, member, Instant::now());
        self.outbox.push(envelope.to_vec());
    }
}

impl Relay for Link {
    fn is_up(&self) -> bool {
        self.up
    }

    fn node(&self) -> &str {
        self.ledger.node()
    }
}

/// A version 2 client's view, checked at every frame.
#[derive(Debug, Default)]
struct Watcher {
    me: String,
    present: BTreeSet<String>,
    shown_leaving: BTreeSet<String>,
    earlier: usize,
    joined: bool,
}

impl Watcher {
    fn read(&mut self, frame: &Value) -> Result<(), String> {
        let text = |key: &str| frame[key].as_str().unwrap_or_default().to_string();
        match frame["type"].as_str() {
            Some("hello") => self.me = text("you"),
            Some("join") => {
                let id = text("id");
                if id == self.me {
                    self.joined = true;
                    self.earlier = frame["online"].as_u64().unwrap_or(1) as usize - 1;
                }
                if !self.present.insert(id.clone()) {
                    return Err(format!("a second join of {id}"));
                }
            }
            Some("leave") => {
                let id = text("id");
                if !self.present.remove(&id) {
                    if self.earlier == 0 {
                        return Err(format!("a leave without a join: {id}"));
                    }
                    self.earlier -= 1;
                }
                self.shown_leaving.insert(id);
            }
            Some("message") => {
                let from = text("from");
                let known = self.present.contains(&from)
                    || (self.earlier > 0 && !self.shown_leaving.contains(&from));
                if !known {
                    return Err(format!("a message from {from}, not shown"));
                }
            }
            _ => return Err(format!("unexpected frame {frame}")),
        }
        match frame["online"].as_u64() {
            Some(online) if online as usize != self.earlier + self.present.len() => {
                Err(format!("online {online} after {frame}"))
            }
            _ => Ok(()),
        }
    }
}

struct Process {
    core: RoomCore<Link>,
    /// Where it reads the log next.
    cursor: usize,
    crashed: bool,
    stopped: bool,
    /// Its clients (the watcher first), as (key, id).
    clients: Vec<Member>,
    watcher: Watcher,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Join(usize),
    Say(usize, usize),
    Leave(usize, usize),
    Read(usize, usize),
    Cut(usize),
    Heal(usize),
    Stop(usize),
    Resume(usize),
    Crash(usize),
    /// Time passes, in milliseconds.
    Tick(u64),
    FanOut(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Start),
        4 => (0..4usize).prop_map(Op::Join),
        3 => (0..4usize, 0..8usize).prop_map(|(p, i)| Op::Say(p, i)),
        2 => (0..4usize, 0..8usize).prop_map(|(p, i)| Op::Leave(p, i)),
        6 => (0..4usize, 1..12usize).prop_map(|(p, n)| Op::Read(p, n)),
        1 => (0..4usize).prop_map(Op::Cut),
        1 => (0..4usize).prop_map(Op::Heal),
        1 => (0..4usize).prop_map(Op::Stop),
        1 => (0..4usize).prop_map(Op::Resume),
        1 => (1..4usize).prop_map(Op::Crash),
        4 => (100..1500u64).prop_map(Op::Tick),
        3 => (0..4usize).prop_map(Op::FanOut),
    ]
}

struct World {
    /// Redis's channel: every envelope published, in order.
    log: Vec<Vec<u8>>,
    procs: Vec<Process>,
    start: Instant,
    /// Milliseconds since `start`.
    clock: u64,
    next_id: u64,
    said: u64,
}

const PEER: Peer = Peer::Direct(std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1,
)));

impl World {
    fn new() -> World {
        let mut world = World {
            log: Vec::new(),
            procs: Vec::new(),
            start: Instant::now(),
            clock: 0,
            next_id: 0,
            said: 0,
        };
        world.start_process();
        world.start_process();
        world
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.clock)
    }

    /// A process starts, its link comes up (the first time), and its watcher joins.
    fn start_process(&mut self) {
        if self.procs.len() >= 5 {
            return;
        }
        let node = format!("p{}", self.procs.len());
        let link = Link {
            ledger: Ledger::new(node, 1 << 16),
            up: true,
            outbox: Vec::new(),
        };
        let now = self.now();
        let mut core = RoomCore::new(Some(link), 1 << 16, now);
        core.with_relay(|link, land| {
            let Link { ledger, outbox, .. } = link;
            ledger.up(now, &mut |e| outbox.push(e.to_vec()));
            land(Landing::Back);
        });
        self.procs.push(Process {
            core,
            cursor: self.log.len(),
            crashed: false,
            stopped: false,
            clients: Vec::new(),
            watcher: Watcher::default(),
        });
        let p = self.procs.len() - 1;
        self.join(p, Version::V2);
        self.publish_all();
    }

    fn live(&mut self, p: usize) -> Option<&mut Process> {
        let n = self.procs.len();
        let process = self.procs.get_mut(p % n)?;
        (!process.crashed && !process.stopped).then_some(process)
    }

    fn join(&mut self, p: usize, version: Version) {
        self.next_id += 1;
        let id = self.next_id;
        let Some(process) = self.live(p) else { return };
        let key = process.clients.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        process.clients.push((key, id));
        let who = Who {
            key,
            id,
            peer: PEER,
        };
        process.core.on_event(who, Event::Joined(version));
    }

    /// Moves what every process published into the log, in order.
    fn publish_all(&mut self) {
        for process in &mut self.procs {
            let sent = process
                .core
                .with_relay(|link, _| std::mem::take(&mut link.outbox))
                .unwrap_or_default();
            if !process.crashed {
                self.log.extend(sent);
            }
        }
    }

    /// Hands the batch of process `p` to its clients; the watcher checks every frame.
    fn fan_out(&mut self, p: usize) -> Result<(), String> {
        let now = self.now() + Duration::from_secs(3600); // always due
        let Some(process) = self.live(p) else {
            return Ok(());
        };
        let watcher_key = process.clients.first().map(|c| c.0);
        let watcher = &mut process.watcher;
        let mut error = Ok(());
        let mut refused = Vec::new();
        process.core.fan_out(now, &mut refused, |key, frames| {
            if Some(key) == watcher_key && error.is_ok() {
                error = frames_of(frames).iter().try_for_each(|f| watcher.read(f));
            }
            Ok(())
        });
        error
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now();
        match *op {
            Op::Start => self.start_process(),
            Op::Join(p) => self.join(p, Version::V1),
            Op::Say(p, i) => {
                self.said += 1;
                let text = format!("t{}", self.said);
                if let Some(process) = self.live(p) {
                    // Not the watcher: it only watches.
                    if let Some(&(key, id)) = process.clients.get(1 + i % 8) {
                        let who = Who {
                            key,
                            id,
                            peer: PEER,
                        };
                        process.core.on_event(who, Event::Said(&text));
                    }
                }
            }
            Op::Leave(p, i) => {
                if let Some(process) = self.live(p) {
                    let i = 1 + i % 8;
                    if i < process.clients.len() {
                        let (key, id) = process.clients.remove(i);
                        process.core.on_event(
                            Who {
                                key,
                                id,
                                peer: PEER,
                            },
                            Event::Left,
                        );
                    }
                }
            }
            Op::Read(p, n) => {
                let log = &self.log;
                let count = self.procs.len();
                if let Some(process) = self.procs.get_mut(p % count) {
                    if !process.crashed
                        && !process.stopped
                        && process.core.relay().is_some_and(|l| l.up)
                    {
                        let upto = (process.cursor + n).min(log.len());
                        let envelopes = &log[process.cursor..upto];
                        process.cursor = upto;
                        process.core.with_relay(|link, land| {
                            for envelope in envelopes {
                                link.ledger.receive(envelope, now, land);
                            }
                        });
                    }
                }
            }
            Op::Cut(p) => {
                if let Some(process) = self.live(p) {
                    process.core.with_relay(|link, land| {
                        if link.up {
                            link.up = false;
                            link.outbox.clear(); // written to a link that broke: lost
                            link.ledger.land_pending(land);
                        }
                    });
                }
            }
            Op::Heal(p) => {
                let end = self.log.len();
                if let Some(process) = self.live(p) {
                    let mut healed = false;
                    process.core.with_relay(|link, land| {
                        if !link.up {
                            link.up = true;
                            healed = true;
                            let Link { ledger, outbox, .. } = link;
                            ledger.up(now, &mut |e| outbox.push(e.to_vec()));
                            land(Landing::Back);
                        }
                    });
                    if healed {
                        process.cursor = end;
                    }
                }
            }
            Op::Stop(p) => {
                if let Some(process) = self.live(p) {
                    process.stopped = true;
                }
            }
            Op::Resume(p) => {
                let n = self.procs.len();
                self.procs[p % n].stopped = false;
            }
            Op::Crash(p) => {
                let n = self.procs.len();
                if p % n != 0 {
                    self.procs[p % n].crashed = true;
                }
            }
            Op::Tick(ms) => {
                self.clock += ms;
                let now = self.now();
                for process in &mut self.procs {
                    if process.crashed || process.stopped {
                        continue;
                    }
                    process.core.with_relay(|link, _| {
                        if link.up {
                            let Link { ledger, outbox, .. } = link;
                            ledger.keep_alive(now, &mut |e| outbox.push(e.to_vec()));
                        }
                    });
                }
            }
            Op::FanOut(p) => self.fan_out(p)?,
        }
        self.publish_all();
        Ok(())
    }

    /// Everyone healed and resumed, then time passes beyond the timeout, read by all.
    fn settle(&mut self) -> Result<(), String> {
        for p in 0..self.procs.len() {
            self.apply(&Op::Resume(p))?;
            self.apply(&Op::Heal(p))?;
        }
        for _ in 0..40 {
            self.apply(&Op::Tick(500))?;
            for p in 0..self.procs.len() {
                self.apply(&Op::Read(p, usize::MAX / 2))?;
                self.apply(&Op::FanOut(p))?;
            }
        }
        Ok(())
    }
}

/// Splits a run of server frames back into version 2 JSON frames (version 1 ones are skipped).
fn frames_of(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (len, start) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes[start..start + len]) {
            if value["type"].is_string() {
                out.push(value);
            }
        }
        bytes = &bytes[start + len..];
    }
    out
}

/// 256 schedules, or `PROPTEST_CASES` of them (`with_cases` alone would ignore it).
fn cases() -> u32 {
    let asked = std::env::var("PROPTEST_CASES").ok();
    asked.and_then(|n| n.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn every_watcher_sees_one_leave_per_join_through_crashes_cuts_and_stalls(
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut world = World::new();
        for op in &ops {
            let checked = world.apply(op);
            prop_assert!(checked.is_ok(), "{:?} after {:?}", checked, op);
        }
        let settled = world.settle();
        prop_assert!(settled.is_ok(), "{:?} while settling", settled);
        let mut truth = BTreeSet::new();
        for process in world.procs.iter().filter(|p| !p.crashed) {
            let node = process.core.relay().map(|l| l.node().to_string()).unwrap_or_default();
            truth.extend(process.clients.iter().map(|(_, id)| format!("{node}.{id}")));
        }
        for process in world.procs.iter().filter(|p| !p.crashed) {
            let w = &process.watcher;
            prop_assert!(w.joined, "{:?}", w);
            prop_assert!(w.present.is_subset(&truth), "{:?} shows more than {:?}", w, truth);
            prop_assert_eq!(w.earlier + w.present.len(), truth.len(), "{:?} vs {:?}", w, truth);
        }
    }
}
