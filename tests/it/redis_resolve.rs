//! Redis found by name, without blocking the loop, and found again at a new address.
//!
//! Each process is pointed at a `resolv.conf` and a hosts file of the test's own through the
//! test-only variables `MIO_CHAT_TEST_RESOLV_CONF` and `MIO_CHAT_TEST_HOSTS` (see
//! `src/backplane/resolve.rs`); the `resolv.conf` names a fake name server on a free UDP port of
//! 127.0.0.1 (`nameserver [127.0.0.1]:PORT`), which answers what the test says, or nothing.
//! Every wait is for an event: a query reaching the fake server, a log line, a chat message.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;

use common::redis::{free_port, Redis};
use common::*;
use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, ResourceRecord, CLASS, QTYPE, TYPE};

/// What the fake name server does, and what it has seen.
#[derive(Default)]
struct DnsState {
    /// The address every A query gets; `None`: no answer at all (a server that never replies).
    answer: Option<Ipv4Addr>,
    /// The answer goes out from another port of the same address (as a forger's would).
    from_another_port: bool,
    queries: usize,
}

/// A name server on 127.0.0.1 that answers every A query with one address (AAAA queries get
/// no records), or stays silent.
struct FakeDns {
    addr: SocketAddr,
    state: Arc<(Mutex<DnsState>, Condvar)>,
}

impl FakeDns {
    fn start(answer: Option<Ipv4Addr>) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the fake name server");
        let addr = socket.local_addr().expect("its address");
        let state = DnsState {
            answer,
            ..DnsState::default()
        };
        let state = Arc::new((Mutex::new(state), Condvar::new()));
        let shared = Arc::clone(&state);
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind the forger's socket");
        // The thread ends with the test process (the socket blocks in recv_from until then).
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let (answer, forged) = {
                    let mut s = shared.0.lock().unwrap();
                    s.queries += 1;
                    shared.1.notify_all();
                    (s.answer, s.from_another_port)
                };
                let out = if forged { &stranger } else { &socket };
                if let Some(reply) = answer.and_then(|ip| reply(&buf[..n], ip)) {
                    let _ = out.send_to(&reply, from);
                }
            }
        });
        FakeDns { addr, state }
    }

    fn answer_from_another_port(&self) {
        self.state.0.lock().unwrap().from_another_port = true;
    }

    fn answer_with(&self, ip: Ipv4Addr) {
        self.state.0.lock().unwrap().answer = Some(ip);
    }

    fn queries(&self) -> usize {
        self.state.0.lock().unwrap().queries
    }

    /// Blocks until `n` queries have come (fails the test after the guard time).
    fn wait_for_queries(&self, n: usize) {
        let (lock, changed) = &*self.state;
        let (state, timeout) = changed
            .wait_timeout_while(lock.lock().unwrap(), GUARD, |s| s.queries < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the name server got {} queries, not {n}",
            state.queries
        );
    }
}

/// The reply to `query`: its question, and `ip` for an A query.
fn reply(query: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let query = Packet::parse(query).ok()?;
    let question = query.questions.first()?.clone();
    let mut reply = Packet::new_reply(query.id());
    if question.qtype == QTYPE::TYPE(TYPE::A) {
        let address = RData::A(A {
            address: u32::from(ip),
        });
        let record = ResourceRecord::new(question.qname.clone(), CLASS::IN, 0, address);
        reply.answers.push(record);
    }
    reply.questions.push(question);
    reply.build_bytes_vec().ok()
}

/// A `resolv.conf` and a hosts file of the test's own, and the variables that point a process
/// at them.
struct ResolverFiles {
    resolv_conf: PathBuf,
    hosts: PathBuf,
}

impl ResolverFiles {
    fn new(resolv_conf: &str, hosts: &str) -> ResolverFiles {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let stem = format!(
            "mio-chat-resolve-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir();
        let files = ResolverFiles {
            resolv_conf: dir.join(format!("{stem}.resolv.conf")),
            hosts: dir.join(format!("{stem}.hosts")),
        };
        std::fs::write(&files.resolv_conf, resolv_conf).expect("write resolv.conf");
        std::fs::write(&files.hosts, hosts).expect("write hosts");
        files
    }

    /// Only `dns` is asked, `options` as given; an empty hosts file.
    fn for_dns(dns: &FakeDns, options: &str) -> ResolverFiles {
        let conf = format!("nameserver [127.0.0.1]:{}\n{options}\n", dns.addr.port());
        ResolverFiles::new(&conf, "")
    }

    fn env(&self) -> [(&str, &str); 2] {
        [
            (
                "MIO_CHAT_TEST_RESOLV_CONF",
                self.resolv_conf.to_str().unwrap(),
            ),
            ("MIO_CHAT_TEST_HOSTS", self.hosts.to_str().unwrap()),
        ]
    }

    fn server(&self, redis_url: &str) -> TestServer {
        TestServer::start_with_env(&["--redis", redis_url], &self.env())
    }
}

impl Drop for ResolverFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.resolv_conf);
        let _ = std::fs::remove_file(&self.hosts);
    }
}

/// A `redis-server` on `ip:port` (any address of 127.0.0.0/8), ready; killed when dropped.
struct RedisAt(Child);

impl RedisAt {
    fn start(ip: &str, port: u16) -> RedisAt {
        let mut child = Command::new("redis-server")
            .args(["--bind", ip, "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            // Read to the end so that Redis never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("redis-server on {ip}:{port} not ready"));
        RedisAt(child)
    }
}

impl Drop for RedisAt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn health(server: &TestServer) -> String {
    http_get(server, "/healthz").body_text()
}

/// A chat message from `from` reaches every client in `to`.
fn says(from: &mut Ws, to: &mut [&mut Ws], text: &str) {
    send_text(from, text);
    expect_body(from, text);
    for client in to.iter_mut() {
        expect_body(client, text);
    }
}

#[test]
fn a_name_server_that_never_answers_does_not_stall_the_loop() {
    let dns = FakeDns::start(None);
    // 30 s per try: the lookup is certainly still waiting while the clients chat.
    let files = ResolverFiles::for_dns(&dns, "options timeout:30 attempts:1");
    let server = files.server(&format!("redis://redis.test:{}", free_port()));
    dns.wait_for_queries(1);
    // The query is out and unanswered: the loop still accepts, upgrades, and relays.
    let mut first = join_chat(&server, &mut []);
    let mut second = join_chat(&server, &mut [&mut first]);
    says(&mut first, &mut [&mut second], "while the name is pending");
    assert_eq!(health(&server), "degraded");
    assert_eq!(
        dns.queries(),
        1,
        "one query in flight, not a retry per turn"
    );
}

#[test]
fn an_unanswered_lookup_times_out_in_the_loop_and_is_retried() {
    let dns = FakeDns::start(None);
    let files = ResolverFiles::for_dns(&dns, "options timeout:1 attempts:2");
    let server = files.server(&format!("redis://redis.test:{}", free_port()));
    // Two tries of the first lookup, then the outage, then the next attempt's lookup.
    server.wait_for_log("cannot resolve redis.test");
    dns.wait_for_queries(3);
    let mut alone = join_chat(&server, &mut []);
    says(&mut alone, &mut [], "still serving");
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_name_in_the_hosts_file_needs_no_name_server() {
    let Some(redis) = Redis::start() else { return };
    let dns = FakeDns::start(None);
    let conf = format!("nameserver [127.0.0.1]:{}\n", dns.addr.port());
    let files = ResolverFiles::new(&conf, "# test\n127.0.0.1 other redis.test\n");
    let server = files.server(&format!("redis://redis.test:{}", redis.port));
    server.wait_for_log("redis: subscribed");
    assert_eq!(dns.queries(), 0);
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn redis_is_found_again_at_its_new_address() {
    let Some(_) = common::tool::require("redis-server", "redis-server") else {
        return;
    };
    let port = free_port();
    let dns = FakeDns::start(Some(Ipv4Addr::new(127, 0, 0, 2)));
    let files = ResolverFiles::for_dns(&dns, "");
    let url = format!("redis://redis.test:{port}");
    let old = RedisAt::start("127.0.0.2", port);
    let (a, b) = (files.server(&url), files.server(&url));
    a.wait_for_log("redis: subscribed");
    b.wait_for_log("redis: subscribed");
    let mut on_a = join_chat(&a, &mut []);
    let mut on_b = join_chat(&b, &mut [&mut on_a]);
    says(&mut on_a, &mut [&mut on_b], "at the old address");

    // Redis moves: the old one goes, the name now points at the new one.
    dns.answer_with(Ipv4Addr::new(127, 0, 0, 3));
    drop(old);
    a.wait_for_log("serving this process's clients only");
    b.wait_for_log("serving this process's clients only");
    let _new = RedisAt::start("127.0.0.3", port);
    for server in [&a, &b] {
        server.wait_for_log("redis.test is now at 127.0.0.3");
        server.wait_for_log("redis: back");
    }
    says(&mut on_a, &mut [&mut on_b], "at the new address");
    says(&mut on_b, &mut [&mut on_a], "and back");
}

/// A UDP port of 127.0.0.1 where nothing listens: a query sent there is answered by an ICMP
/// "port unreachable".
fn closed_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
    socket.local_addr().expect("its address").port()
}

#[test]
fn a_name_server_that_is_not_there_is_passed_over_at_once() {
    let dns = FakeDns::start(None);
    // 30 s per try: only the refusal (not the deadline) can move the lookup on within the
    // guard time, to the second name server.
    let conf = format!(
        "nameserver [127.0.0.1]:{}\nnameserver [127.0.0.1]:{}\noptions timeout:30 attempts:1\n",
        closed_udp_port(),
        dns.addr.port()
    );
    let files = ResolverFiles::new(&conf, "");
    let _server = files.server(&format!("redis://redis.test:{}", free_port()));
    dns.wait_for_queries(1);
}

#[test]
fn an_answer_from_another_port_is_not_taken() {
    // The forged answer names a listener of the test's: the process must never connect there.
    let decoy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the decoy");
    decoy.set_nonblocking(true).expect("non-blocking decoy");
    let dns = FakeDns::start(Some(Ipv4Addr::LOCALHOST));
    dns.answer_from_another_port();
    let files = ResolverFiles::for_dns(&dns, "options timeout:1 attempts:1");
    let port = decoy.local_addr().unwrap().port();
    let server = files.server(&format!("redis://redis.test:{port}"));
    // The only try ends at its deadline: the answer that came was not the server's.
    server.wait_for_log("cannot resolve redis.test");
    assert_eq!(
        dns.queries(),
        1,
        "the forged answer was sent for this one query"
    );
    let accepted = decoy.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "connected to the forged address: {accepted:?}"
    );
}
