//! One room across processes that survives a crashed, stalled or cut-off process (issue 22),
//! with real `redis-server`, real processes, and the tests' own TCP proxy
//! ([`common::cut_proxy::CutProxy`]) to cut one process's link while the others stay up.
//!
//! The watchers speak the protocol's version 2, whose notices name the member, so each one
//! checks the invariant frame by frame as it reads (see [`Watcher::next`]): never a join for a
//! member it already shows, never a leave for one it does not (but for the members that were
//! there before it, whose joins it never saw: as many leaves as `online` counted at its own
//! join), never a message from one it does not show, and `online` always what it was shown. At
//! the end of each test every watcher shows exactly the members still there. Every wait
//! is for an event (a frame, a log line); the small `--node-timeout` only makes the events come
//! sooner.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;

use common::cut_proxy::{Cut, CutProxy};
use common::redis::Redis;
use common::*;
use serde_json::Value;

/// A process in the room on `url`, declaring others gone after `node_timeout` seconds of
/// silence, once its subscription is in place.
fn node(url: &str, node_timeout: &str) -> TestServer {
    let server = TestServer::start(&["--redis", url, "--node-timeout", node_timeout]);
    server.wait_for_log("redis: subscribed");
    server
}

/// A version 2 client that checks the invariant on everything it reads.
struct Watcher {
    client: RawClient,
    /// Its own member id.
    me: String,
    /// The members it was shown joining and not yet leaving, itself included.
    present: BTreeSet<String>,
    /// Every notice and message it read, in order ("join X", "leave X", "message X body").
    log: Vec<String>,
    /// Members that were there before it and have not been shown leaving (their ids unknown).
    earlier: usize,
}

impl Watcher {
    fn join(server: &TestServer) -> Watcher {
        let request = Handshake::new(server).header("Sec-WebSocket-Protocol", "mio-chat.v2");
        let mut stream = tcp_connect(server);
        stream.write_all(&request.to_bytes()).expect("handshake");
        let client = RawClient::read_handshake_response(stream);
        let mut watcher = Watcher {
            client,
            me: String::new(),
            present: BTreeSet::new(),
            log: Vec::new(),
            earlier: 0,
        };
        let hello = watcher.frame();
        assert_eq!(hello["type"], "hello", "{hello}");
        watcher.me = hello["you"].as_str().expect("you").to_string();
        let me = watcher.me.clone();
        watcher.until(|w| w.present.contains(&me));
        watcher
    }

    fn frame(&mut self) -> Value {
        let frame = self.client.read_frame_skipping_pings();
        assert_eq!(frame.opcode, OP_TEXT);
        serde_json::from_slice(&frame.payload).expect("version 2 frames are JSON")
    }

    /// Reads one frame and checks it against what this watcher was shown so far.
    fn next(&mut self) {
        let frame = self.frame();
        let text = |key: &str| frame[key].as_str().unwrap_or_default().to_string();
        let entry = match frame["type"].as_str() {
            Some("join") => {
                let id = text("id");
                if id == self.me {
                    self.earlier = frame["online"].as_u64().unwrap_or(1) as usize - 1;
                }
                assert!(
                    self.present.insert(id.clone()),
                    "a second join of {id}: {self:?}"
                );
                format!("join {id}")
            }
            Some("leave") => {
                let id = text("id");
                if !self.present.remove(&id) {
                    assert!(self.earlier > 0, "a leave without a join: {id}: {self:?}");
                    self.earlier -= 1;
                }
                format!("leave {id}")
            }
            Some("message") => {
                let from = text("from");
                let shown_leaving = self.log.contains(&format!("leave {from}"));
                let known = self.present.contains(&from) || (self.earlier > 0 && !shown_leaving);
                assert!(known, "a message from {from}, not shown: {self:?}");
                format!("message {from} {}", text("body"))
            }
            _ => panic!("unexpected frame {frame}"),
        };
        if let Some(online) = frame["online"].as_u64() {
            assert_eq!(
                online as usize,
                self.online(),
                "online, after {entry}: {self:?}"
            );
        }
        self.log.push(entry);
    }

    /// Reads until `done` holds.
    fn until(&mut self, done: impl Fn(&Watcher) -> bool) {
        while !done(self) {
            self.next();
        }
    }

    /// Reads until the message `body` from `from`; returns the log from `mark` on.
    fn until_message(&mut self, from: &str, body: &str) {
        let wanted = format!("message {from} {body}");
        self.until(|w| w.log.last() == Some(&wanted));
    }

    /// Says `body` and reads until it comes back: everything published before it is read.
    fn sync(&mut self, body: &str) {
        self.client.send_text(body);
        let me = self.me.clone();
        self.until_message(&me, body);
    }

    /// Leaves shown of members of the process whose ids start with `node`.
    fn shown_leaving(&self, node: &str) -> usize {
        let prefix = format!("leave {node}");
        self.log.iter().filter(|e| e.starts_with(&prefix)).count()
    }

    /// Members in the room, as this watcher was told.
    fn online(&self) -> usize {
        self.earlier + self.present.len()
    }

    /// The members of the process whose ids start with `node` (joined after this watcher).
    fn of(&self, node: &str) -> usize {
        self.present
            .iter()
            .filter(|id| id.starts_with(node))
            .count()
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} shows {:?} after {:?}",
            self.me, self.present, self.log
        )
    }
}

/// The node id of a watcher's process (its member ids are "node.id").
fn node_of(watcher: &Watcher) -> String {
    watcher.me.split('.').next().expect("node.id").to_string()
}

/// What `later` shows, with `earlier` itself (which `later` met as one of those already there):
/// what `earlier` must show if both agree.
fn same_as(later: &Watcher, earlier: &Watcher) -> BTreeSet<String> {
    let mut members = later.present.clone();
    members.insert(earlier.me.clone());
    members
}

/// Version 1 clients on `server`, each once its own join came back.
fn clients(server: &TestServer, n: usize) -> Vec<RawClient> {
    (0..n).map(|_| RawClient::join(server)).collect()
}

/// SIGKILL of a process with clients, three processes, watchers on the two others: each hears
/// exactly one leave per member of the dead process, at the same place in their streams.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_killed_process_members_leave_everywhere_once_in_one_order() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let (mut a, b, c) = (node(&url, "3"), node(&url, "3"), node(&url, "3"));
    let mut on_b = Watcher::join(&b);
    let mut on_c = Watcher::join(&c);
    let probe = Watcher::join(&a);
    let a_node = node_of(&probe);
    let _a_clients = clients(&a, 4);
    let _b_clients = clients(&b, 2);
    for watcher in [&mut on_b, &mut on_c] {
        watcher.until(|w| w.online() == 9);
    }
    on_c.sync("before");
    on_b.until_message(&on_c.me, "before");
    let (from_b, from_c) = (on_b.log.len(), on_c.log.len());

    a.signal(libc::SIGKILL);
    a.wait_for_exit(GUARD);
    for watcher in [&mut on_b, &mut on_c] {
        watcher.until(|w| w.of(&a_node) == 0);
    }
    on_c.sync("after");
    on_b.until_message(&on_c.me, "after");
    assert_eq!((on_b.online(), on_c.online()), (4, 4), "{on_b:?}\n{on_c:?}");
    assert_eq!(on_b.log[from_b..], on_c.log[from_c..], "one order");
    let leaves = on_c.log[from_c..]
        .iter()
        .filter(|e| e.starts_with("leave"))
        .count();
    assert_eq!(leaves, 5, "{on_c:?}");
    // One verdict acted on by all: the first one in Redis's order.
    let judged = b
        .stderr_lines()
        .iter()
        .chain(&c.stderr_lines())
        .filter(|l| l.contains(&format!("process {a_node} is gone")))
        .count();
    assert_eq!(judged, 2, "each of b and c acts on the verdict once");
    // What an operator sees on c: one process lost, one other heard, and its members by process.
    assert_eq!(metric(&c, "mio_chat_cluster_processes_gone_total"), 1);
    assert_eq!(metric(&c, "mio_chat_cluster_processes"), 1);
    let b_node = node_of(&on_b);
    assert_eq!(
        metric(
            &c,
            &format!("mio_chat_cluster_members{{node=\"{b_node}\"}}")
        ),
        3
    );
    assert_eq!(
        metric(
            &c,
            &format!("mio_chat_cluster_members{{node=\"{a_node}\"}}")
        ),
        0
    );
}

/// SIGSTOP past `--node-timeout`: the others show its members leaving; SIGCONT: they come
/// back, before anything they say.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_stopped_process_members_leave_and_rejoin_before_they_speak() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let (a, b) = (node(&url, "3"), node(&url, "3"));
    let mut on_b = Watcher::join(&b);
    let mut on_a = Watcher::join(&a);
    let a_node = node_of(&on_a);
    let _a_clients = clients(&a, 3);
    on_b.until(|w| w.of(&a_node) == 4);

    a.signal(libc::SIGSTOP);
    on_b.until(|w| w.of(&a_node) == 0);
    a.signal(libc::SIGCONT);
    on_a.client.send_text("back");
    on_b.until_message(&on_a.me, "back");
    // Its own join came before its message; the others' come too, whichever way it learnt
    // (the verdict about itself in its stream, or a heal of its link).
    on_b.until(|w| w.of(&a_node) == 4);
    a.wait_for_log_count("re-announced", 2); // at start, and now
    on_b.sync("settled");
    assert_eq!(on_b.of(&a_node), 4, "{on_b:?}");
    on_a.until_message(&on_b.me, "settled");
    assert_eq!(on_a.online(), on_b.online(), "{on_a:?}\n{on_b:?}");
}

/// A's link cut past `--node-timeout`, clients leaving and joining on both sides meanwhile, then
/// healed: both sides end up showing exactly the members there are.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_long_cut_with_churn_on_both_sides_heals_exactly() {
    let Some(redis) = Redis::start() else { return };
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into());
    let (a, b) = (node(&proxy.url(), "3"), node(&redis.url(), "3"));
    let mut on_a = Watcher::join(&a);
    let mut on_b = Watcher::join(&b);
    let a_node = node_of(&on_a);
    let mut a_clients = clients(&a, 2);
    let mut b_clients = clients(&b, 1);
    for watcher in [&mut on_a, &mut on_b] {
        watcher.until(|w| w.online() == 5);
    }

    proxy.cut(Cut::Refuse);
    a.wait_for_log("serving this process's clients only");
    on_b.until(|w| w.of(&a_node) == 0); // the verdict
    drop(a_clients.remove(0));
    a_clients.extend(clients(&a, 1));
    on_a.until(|w| w.log.iter().filter(|e| e.starts_with("leave")).count() == 1);
    b_clients.extend(clients(&b, 1));
    drop(b_clients.remove(0));
    on_b.until(|w| w.online() == 2);

    proxy.heal();
    a.wait_for_log("redis: back");
    // A re-announces its three members to B; B re-announces its two to A, which shows the one
    // that left during the cut leaving (at B's roster end mark).
    let b_node = node_of(&on_b);
    on_b.until(|w| w.of(&a_node) == 3);
    on_a.until(|w| w.of(&b_node) == 2 && w.shown_leaving(&b_node) == 1);
    on_b.sync("healed");
    on_a.until_message(&on_b.me, "healed");
    assert_eq!((on_a.online(), on_b.online()), (5, 5), "{on_a:?}\n{on_b:?}");
    assert_eq!(on_a.of(&a_node), on_b.of(&a_node));
    // And they leave as anyone does, once, everywhere.
    drop(a_clients);
    drop(b_clients);
    on_b.until(|w| w.online() == 2);
    on_b.sync("done");
    on_a.until_message(&on_b.me, "done");
    assert_eq!((on_a.online(), on_b.online()), (2, 2), "{on_a:?}\n{on_b:?}");
}

/// A cut shorter than `--node-timeout`: nobody is declared gone; the member that left during it
/// is shown leaving at the others when the link heals.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_short_cut_owes_the_others_only_the_leaves_made_during_it() {
    let Some(redis) = Redis::start() else { return };
    let proxy = CutProxy::start(([127, 0, 0, 1], redis.port).into());
    let (a, b) = (node(&proxy.url(), "60"), node(&redis.url(), "60"));
    let mut on_a = Watcher::join(&a);
    let mut on_b = Watcher::join(&b);
    let mut a_clients = clients(&a, 2);
    for watcher in [&mut on_a, &mut on_b] {
        watcher.until(|w| w.online() == 4);
    }
    let from_b = on_b.log.len();

    proxy.cut(Cut::Refuse);
    a.wait_for_log("serving this process's clients only");
    drop(a_clients.remove(0));
    on_a.until(|w| w.online() == 3);
    proxy.heal();
    a.wait_for_log("redis: back");
    on_b.until(|w| w.online() == 3); // the leave A owed B
    on_b.sync("healed");
    on_a.until_message(&on_b.me, "healed");
    assert_eq!((on_a.online(), on_b.online()), (3, 3), "{on_a:?}\n{on_b:?}");
    let seen: Vec<&String> = on_b.log[from_b..]
        .iter()
        .filter(|e| !e.starts_with("message"))
        .collect();
    assert_eq!(seen.len(), 1, "only the one leave: {on_b:?}");
    assert!(!b.stderr_lines().iter().any(|l| l.contains("is gone")));
}

/// A crashed process restarted on the same port is a new process: its new clients join, and its
/// predecessor's members are shown leaving by the verdict, each once, at every watcher.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_process_restarted_on_its_port_is_a_new_member_set() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut a = node(&url, "3");
    let b = node(&url, "3");
    let mut on_b = Watcher::join(&b);
    let probe = Watcher::join(&a);
    let old_node = node_of(&probe);
    let _old_clients = clients(&a, 2);
    on_b.until(|w| w.of(&old_node) == 3);

    let addr = format!("127.0.0.1:{}", a.port());
    a.signal(libc::SIGKILL);
    a.wait_for_exit(GUARD);
    let again = TestServer::start(&["--redis", &url, "--node-timeout", "3", "--addr", &addr]);
    again.wait_for_log("redis: subscribed");
    assert_eq!(again.port(), a.port());
    let new_probe = Watcher::join(&again);
    let new_node = node_of(&new_probe);
    assert_ne!(new_node, old_node, "a new incarnation");
    let _new_clients = clients(&again, 2);
    on_b.until(|w| w.of(&old_node) == 0 && w.of(&new_node) == 3);
    on_b.sync("settled");
    assert_eq!(on_b.online(), 4, "{on_b:?}");
    let judged = format!("process {old_node} is gone");
    again.wait_for_log(&judged); // the newcomer acts on the verdict too (it shows nothing)
}

/// A process that shuts down (SIGTERM) publishes its clients' leaves and then a farewell: the
/// others show each leave once and never judge it gone (no alert for a deploy).
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_process_that_shuts_down_is_not_judged_gone() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let (mut a, b) = (node(&url, "3"), node(&url, "3"));
    let mut on_b = Watcher::join(&b);
    let probe = Watcher::join(&a);
    let a_node = node_of(&probe);
    let _a_clients = clients(&a, 2);
    on_b.until(|w| w.of(&a_node) == 3);
    assert_eq!(metric(&b, "mio_chat_cluster_processes"), 1);

    a.signal(libc::SIGTERM);
    a.wait_for_exit(GUARD);
    on_b.until(|w| w.of(&a_node) == 0);
    b.wait_for_log(&format!(
        "process {a_node} shut down; 0 members shown leaving"
    ));
    assert_eq!(
        metric(&b, "mio_chat_cluster_processes"),
        0,
        "forgotten, not judged"
    );
    on_b.sync("after");
    assert_eq!(metric(&b, "mio_chat_cluster_processes_gone_total"), 0);
    assert!(!b.stderr_lines().iter().any(|l| l.contains("silent past")));
}

/// Redis itself restarted (killed, then a new, empty one on the same port) while clients join,
/// leave and talk on three processes, one of which is SIGKILLed meanwhile: after the heal both
/// watchers show exactly the members there are, the dead process's members leave once each, and
/// the streams agree in order from the heal on.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn redis_restarted_under_churn_with_a_process_killed_meanwhile_heals_exactly() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let (mut a, b, c) = (node(&url, "3"), node(&url, "3"), node(&url, "3"));
    let mut on_b = Watcher::join(&b);
    let mut on_c = Watcher::join(&c);
    let probe = Watcher::join(&a);
    let a_node = node_of(&probe);
    let _a_clients = clients(&a, 2);
    let mut b_clients = clients(&b, 2);
    let mut c_clients = clients(&c, 1);
    for watcher in [&mut on_b, &mut on_c] {
        watcher.until(|w| w.online() == 8);
    }
    // Talk in flight when Redis dies: each message comes back at most once, wherever it lands.
    b_clients[0].send_text("in flight");
    on_c.client.send_text("in flight too");

    redis.kill();
    for server in [&a, &b, &c] {
        server.wait_for_log("serving this process's clients only");
    }
    drop(b_clients.remove(0));
    c_clients.extend(clients(&c, 1));
    on_b.sync("b alone");
    on_c.sync("c alone");
    a.signal(libc::SIGKILL);
    a.wait_for_exit(GUARD);
    b_clients.extend(clients(&b, 1));
    drop(c_clients.remove(0));
    on_b.until(|w| w.of(&node_of(w)) == 3);

    redis.restart();
    b.wait_for_log("redis: back");
    c.wait_for_log("redis: back");
    // Each shows the other's members as they are now (3 on b, 2 on c), and, after the verdict,
    // none of the dead process's.
    let (b_node, c_node) = (node_of(&on_b), node_of(&on_c));
    on_b.until(|w| w.of(&c_node) == 2 && w.of(&a_node) == 0);
    on_c.until(|w| w.of(&b_node) == 2 && w.of(&a_node) == 0); // b's watcher was there before
    on_b.sync("healed");
    on_c.until_message(&on_b.me, "healed");
    let (from_b, from_c) = (on_b.log.len(), on_c.log.len());
    // Churn after the heal goes through Redis in one order again.
    drop(b_clients.remove(0));
    c_clients.extend(clients(&c, 1));
    on_c.sync("after");
    on_b.until_message(&on_c.me, "after");
    assert_eq!((on_b.online(), on_c.online()), (5, 5), "{on_b:?}\n{on_c:?}");
    assert_eq!(on_b.present, same_as(&on_c, &on_b), "the same members");
    assert_eq!(on_b.log[from_b..], on_c.log[from_c..], "one order");
    for watcher in [&on_b, &on_c] {
        assert_eq!(watcher.shown_leaving(&a_node), 3, "{watcher:?}");
    }
    drop(b_clients);
    drop(c_clients);
    on_b.until(|w| w.online() == 2);
    on_b.sync("done");
    on_c.until_message(&on_b.me, "done");
    assert_eq!(on_b.present, same_as(&on_c, &on_b), "{on_b:?}\n{on_c:?}");
    assert_eq!(on_c.online(), 2);
}

/// Publishes `payload` on the room's channel as any Redis client could.
fn publish(redis: &Redis, payload: &str) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("redis");
    let command = format!(
        "*3\r\n$7\r\nPUBLISH\r\n$8\r\nmio-chat\r\n${}\r\n{payload}\r\n",
        payload.len()
    );
    stream.write_all(command.as_bytes()).expect("publish");
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[0], b':', "PUBLISH answers with a count");
}

/// Anyone who can publish on the channel can forge envelopes. Garbage, marks and verdicts about
/// processes that never existed, a leave never joined and an end mark without its begin show
/// nothing; a forged verdict on a live process shows its members leaving, and it re-announces
/// them at once (it meets the verdict about itself): the invariant holds throughout, both
/// processes keep serving.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn forged_and_malformed_envelopes_on_the_channel_keep_the_invariant() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let (a, b) = (node(&url, "60"), node(&url, "60"));
    let mut on_a = Watcher::join(&a);
    let mut on_b = Watcher::join(&b);
    let b_node = node_of(&on_b);
    let _b_clients = clients(&b, 2);
    on_a.until(|w| w.of(&b_node) == 3);
    on_a.sync("before");
    let from_a = on_a.log.len();
    let envelope = |node: &str, rest: &str| format!(r#"{{"v":1,"node":"{node}","seq":1,{rest}}}"#);
    for payload in [
        "not json".to_string(),
        r#"{"v":1}"#.to_string(),
        envelope("f0", r#""kind":"shout""#),
        envelope("f1", r#""kind":"roster","body":"begin""#),
        envelope("f2", r#""kind":"gone","body":"nobody""#),
        envelope("f3", r#""kind":"roster""#),
        envelope("f4", r#""kind":"leave","member":1"#),
        envelope(&b_node, r#""kind":"roster""#),
        envelope(&b_node, r#""kind":"leave","member":999"#),
    ] {
        publish(&redis, &payload);
    }
    on_a.sync("forged");
    assert_eq!(on_a.log[from_a..], [format!("message {} forged", on_a.me)]);

    publish(
        &redis,
        &envelope("f5", &format!(r#""kind":"gone","body":"{b_node}""#)),
    );
    on_a.until(|w| w.of(&b_node) == 0);
    on_a.until(|w| w.of(&b_node) == 3);
    on_b.sync("still here");
    on_a.until_message(&on_b.me, "still here");
    assert_eq!(on_a.online(), 4, "{on_a:?}");
    on_b.until_message(&on_b.me.clone(), "still here");
    assert_eq!(
        on_b.online(),
        4,
        "B's own watcher saw nothing of it: {on_b:?}"
    );
    assert_eq!(
        on_b.log.iter().filter(|e| e.starts_with("leave")).count(),
        0
    );
}
