//! TLS on the listener (`--tls-cert`, `--tls-key`): https:// and wss:// through rustls inside the
//! one event loop. Certificates are made at test time (rcgen): a CA, and leaves it signs. Checked:
//! chat both ways over wss://, pages over https://, a handshake fed one byte at a time while
//! others chat, a stalled handshake timed out, plain HTTP and a garbage ClientHello on the TLS
//! port, a bad record after the server's close_notify, and SIGHUP rotation (a client from before
//! keeps chatting, one after sees the new certificate, a broken file keeps the old pair).

use crate::common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

type Tls = StreamOwned<ClientConnection, TcpStream>;
type Wss = tungstenite::WebSocket<Tls>;

/// A CA and the files the server is started with, in a directory of the test's own.
struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("mio-chat-tls-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca_der = params.self_signed(&key).unwrap().der().clone();
        let pki = Pki {
            dir,
            ca: Issuer::new(params, key),
            ca_der,
        };
        pki.issue();
        pki
    }

    /// Signs a new leaf for localhost and 127.0.0.1, writes it and its key where the server
    /// reads them, and returns its DER.
    fn issue(&self) -> CertificateDer<'static> {
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        fs::write(self.cert(), cert.pem()).unwrap();
        fs::write(self.key(), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn start(&self, extra: &[&str]) -> TestServer {
        let (cert, key) = (self.cert(), self.key());
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        TestServer::start(&args)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn session(&self) -> ClientConnection {
        let name = ServerName::try_from("localhost").unwrap();
        ClientConnection::new(self.client_config(), name).unwrap()
    }

    /// A TLS stream to the server, handshake done.
    fn connect(&self, server: &TestServer) -> Tls {
        let mut tls = StreamOwned::new(self.session(), tcp_connect(server));
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls
    }

    fn wss(&self, server: &TestServer) -> Wss {
        let url = format!("wss://localhost:{}/ws", server.port());
        let (ws, response) = tungstenite::client::client(url, self.connect(server))
            .unwrap_or_else(|e| panic!("wss:// handshake failed: {e}"));
        assert_eq!(response.status(), 101);
        ws
    }

    /// Joins the room over wss:// and waits for the join notice everywhere.
    fn join(&self, server: &TestServer, others: &mut [&mut Wss]) -> Wss {
        let mut ws = self.wss(server);
        expect(&mut ws, JOINED);
        for other in others.iter_mut() {
            expect(other, JOINED);
        }
        ws
    }

    fn https_get(&self, server: &TestServer, path: &str) -> HttpResponse {
        let mut tls = self.connect(server);
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        tls.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("reading the https answer: {e}"),
        }
        HttpResponse::parse(&raw)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn expect(ws: &mut Wss, body: &str) {
    loop {
        match ws.read().expect("read a message over wss://") {
            Message::Text(text) => return assert_eq!(chat_body(text.as_str()), body),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a chat message, got {other:?}"),
        }
    }
}

fn say(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).expect("send over wss://");
}

/// `a` says `text`, and both hear it: one round trip through the server's loop.
fn round_trip(a: &mut Wss, b: &mut Wss, text: &str) {
    say(a, text);
    expect(a, text);
    expect(b, text);
}

fn metric(pki: &Pki, server: &TestServer, name: &str) -> String {
    let page = pki.https_get(server, "/metrics").body_text();
    page.lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .to_string()
}

#[test]
fn chat_goes_both_ways_over_wss_and_the_pages_over_https() {
    let pki = Pki::new("chat");
    let server = pki.start(&[]);
    let mut a = pki.join(&server, &mut []);
    let mut b = pki.join(&server, &mut [&mut a]);
    round_trip(&mut a, &mut b, "hello from a");
    round_trip(&mut b, &mut a, "hello from b");
    let big = "x".repeat(60_000); // several TLS records each way
    round_trip(&mut a, &mut b, &big);

    let page = pki.https_get(&server, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.body_text().contains("wss://"),
        "the page picks wss:// on https"
    );
    assert_eq!(pki.https_get(&server, "/healthz").body_text(), "ok");
    drop(b);
    expect(&mut a, LEFT);
}

#[test]
fn a_handshake_fed_one_byte_at_a_time_completes_while_others_chat() {
    let pki = Pki::new("bytewise");
    let server = pki.start(&[]);
    let mut a = pki.join(&server, &mut []);
    let mut b = pki.join(&server, &mut [&mut a]);

    let mut slow = pki.session();
    let mut socket = tcp_connect(&server);
    socket.set_nodelay(true).unwrap();
    let mut sent = 0;
    while slow.is_handshaking() {
        let mut flight = Vec::new();
        while slow.wants_write() {
            slow.write_tls(&mut flight).unwrap();
        }
        for byte in flight {
            socket.write_all(&[byte]).unwrap();
            sent += 1;
            // The loop serves the others between any two bytes of the handshake.
            round_trip(&mut a, &mut b, &format!("byte {sent}"));
        }
        if slow.is_handshaking() && !slow.wants_write() {
            slow.read_tls(&mut socket).unwrap();
            slow.process_new_packets().expect("the server's flight");
        }
    }
    assert!(
        sent > 100,
        "a whole ClientHello and Finished went byte by byte ({sent})"
    );
    let url = format!("wss://localhost:{}/ws", server.port());
    let (mut c, _) = tungstenite::client::client(url, StreamOwned::new(slow, socket)).unwrap();
    expect(&mut c, JOINED);
    expect(&mut a, JOINED);
    round_trip(&mut c, &mut a, "made it");
}

#[test]
fn a_stalled_handshake_is_timed_out_and_others_go_on() {
    let pki = Pki::new("stall");
    let server = pki.start(&["--handshake-timeout", "0.3"]);
    let mut session = pki.session();
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    let mut stalled = tcp_connect(&server);
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();

    // The server ends it: its 408 cannot be said in the clear, so a TLS alert (close_notify, in
    // a plaintext record: no keys yet) says it, then EOF (the guard fails the test otherwise).
    let answer = read_to_close(&mut stalled);
    assert_eq!(
        answer,
        [0x15, 3, 3, 0, 2, 1, 0],
        "a close_notify alert record, nothing else"
    );
    let mut a = pki.join(&server, &mut []);
    let mut b = pki.join(&server, &mut [&mut a]);
    round_trip(&mut a, &mut b, "still here");
    assert!(metric(
        &pki,
        &server,
        "mio_chat_http_responses_total{status=\"408\"}"
    )
    .ends_with(" 1"));
}

#[test]
fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let pki = Pki::new("plain");
    let server = pki.start(&[]);
    let mut socket = tcp_connect(&server);
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = HttpResponse::parse(&read_to_close(&mut socket));
    assert_eq!(answer.status, 400);
    assert!(
        answer.body_text().contains("https://"),
        "{}",
        answer.body_text()
    );
    // And a plain WebSocket client gets the same, not a hang.
    let refused = tungstenite::client::client(server.url("/ws"), tcp_connect(&server));
    assert!(refused.is_err());
}

#[test]
fn a_garbage_client_hello_gets_an_alert_and_the_end() {
    let pki = Pki::new("garbage");
    let server = pki.start(&[]);
    let mut a = pki.join(&server, &mut []);
    let mut b = pki.join(&server, &mut [&mut a]);
    for garbage in [
        &[
            0x16, 0x03, 0x01, 0x00, 0x08, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef,
        ][..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..], // a record longer than TLS allows
        &[0x00; 64][..],
    ] {
        let mut socket = tcp_connect(&server);
        socket.write_all(garbage).unwrap();
        let answer = read_to_close(&mut socket);
        assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
        round_trip(&mut a, &mut b, "unbothered");
    }
    assert!(metric(&pki, &server, "mio_chat_tls_failures_total").ends_with(" 3"));
}

#[test]
fn a_bad_record_after_the_servers_close_notify_ends_only_that_client() {
    let pki = Pki::new("after-goodbye");
    let server = pki.start(&[]);
    let mut a = pki.join(&server, &mut []);
    let mut b = pki.join(&server, &mut [&mut a]);

    // An https answer, then the server's close_notify and FIN; the client has not closed.
    let mut tls = pki.connect(&server);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).expect("a clean close_notify");
    assert!(answer.starts_with(b"HTTP/1.1 "));
    // rustls, having sent its close_notify, must not be shown a bad record: it would answer
    // with a second alert, which it refuses by panicking.
    tls.sock
        .write_all(&[
            0x17, 3, 3, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(&mut tls.sock);
    round_trip(&mut a, &mut b, "unbothered");
}

#[test]
fn sighup_rotates_the_certificate_without_dropping_anyone() {
    let pki = Pki::new("rotate");
    let server = pki.start(&[]);
    let mut before = pki.join(&server, &mut []);

    let new_cert = pki.issue();
    server.signal(libc::SIGHUP);
    server.wait_for_log("tls: reloaded");
    let after_tls = pki.connect(&server);
    let seen = after_tls.conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        seen, new_cert,
        "a handshake after SIGHUP gets the new certificate"
    );
    drop(after_tls);
    let mut after = pki.join(&server, &mut [&mut before]);
    round_trip(&mut before, &mut after, "from before");
    round_trip(&mut after, &mut before, "from after");

    // A key that does not load keeps the pair in use.
    fs::write(pki.key(), "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload failed, keeping the previous certificate");
    let still = pki.connect(&server);
    assert_eq!(still.conn.peer_certificates().unwrap()[0], new_cert);
    round_trip(&mut before, &mut after, "nobody dropped");
}

#[test]
fn a_bad_certificate_file_stops_the_start_with_a_reason() {
    let pki = Pki::new("badstart");
    fs::write(pki.cert(), "nothing here").unwrap();
    let output = server_command()
        .args(["--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(pki.cert())
        .arg("--tls-key")
        .arg(pki.key())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

/// Writes a leaf from `pki`'s CA that expires at midnight (UTC) on `year`-01-01.
fn issue_expiring(pki: &Pki, year: i32) {
    let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca).unwrap();
    fs::write(pki.cert(), cert.pem()).unwrap();
    fs::write(pki.key(), key.serialize_pem()).unwrap();
}

/// `/metrics` says when the certificate in use expires: the one loaded at start, the one a
/// SIGHUP loaded, and still that one after a SIGHUP whose files do not load.
#[test]
fn the_expiry_gauge_follows_the_certificate_in_use() {
    const GAUGE: &str = "mio_chat_tls_certificate_expiry_timestamp_seconds ";
    let pki = Pki::new("expiry");
    issue_expiring(&pki, 2031);
    let server = pki.start(&[]);
    assert_eq!(metric(&pki, &server, GAUGE), format!("{GAUGE}1924992000"));
    assert!(metric(&pki, &server, "mio_chat_build_info").contains("tls=\"true\""));

    issue_expiring(&pki, 2033);
    server.signal(libc::SIGHUP);
    server.wait_for_log("tls: reloaded");
    assert_eq!(metric(&pki, &server, GAUGE), format!("{GAUGE}1988150400"));

    fs::write(pki.cert(), "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload failed, keeping the previous certificate");
    assert_eq!(metric(&pki, &server, GAUGE), format!("{GAUGE}1988150400"));
}

/// Issue 20, finding 1: a client pays for the records it makes the server decrypt. The attacker
/// sends one WebSocket byte per TLS record (unsolicited pongs, and every twenty pongs a
/// one-letter chat message that `/metrics` counts: a marker of how far the server has read it),
/// encrypted beforehand so its socket never runs dry. Two scrapes while it floods tell how many
/// markers the server read per loop turn: its read budget counts ciphertext and a charge per
/// record (256 KiB a turn, about 17 markers, however often the turn comes back to it). A budget
/// in plaintext would let one slice take 256 K records (2,064 markers), and the
/// whole flood would go through before a scrape was answered. Counted in turns and markers, never
/// in time.
#[test]
fn a_wss_client_pays_for_every_record_it_makes_the_server_decrypt() {
    const PONGS_PER_MARKER: usize = 20;
    const MARKERS: u64 = 3_000; // 381 K records, 8.8 MB: over seventy turns at the bound
    const BOUND_PER_TURN: u64 = 100; // one budget (and what one read takes past it), and more
    let pki = Pki::new("records");
    let server = pki.start(&["--client-rate", "0"]);

    let mut attacker = pki.connect(&server);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    attacker.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        attacker.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    let StreamOwned {
        conn: mut session,
        sock,
    } = attacker;
    let pong = Frame::pong(b"").encode();
    let marker = Frame::text("x").encode();
    let mut records = Vec::new();
    for _ in 0..MARKERS {
        let unit = pong.iter().cycle().take(pong.len() * PONGS_PER_MARKER);
        for byte in unit.chain(marker.iter()) {
            assert_eq!(session.writer().write(&[*byte]).unwrap(), 1);
            session.write_tls(&mut records).unwrap();
        }
    }
    let mut drain = sock.try_clone().unwrap();
    std::thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
    let mut flood = sock.try_clone().unwrap();
    std::thread::spawn(move || flood.write_all(&records));

    // Turns and markers from one page, so both are counted at the same moment.
    let scrape = || -> (u64, u64) {
        let page = pki.https_get(&server, "/metrics").body_text();
        let value = |name: &str| -> u64 {
            let line = page.lines().find(|l| l.starts_with(name)).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        (
            value("mio_chat_loop_turn_seconds_count"),
            value("mio_chat_messages_received_total"),
        )
    };
    // From the first scrape that finds the flood under way (scrapes until then are events too).
    let (turns0, read0) = (0..1000)
        .map(|_| scrape())
        .find(|&(_, read)| read > 0)
        .expect("the server never read a marker");
    let (turns1, read1) = scrape();
    let _ = sock.shutdown(std::net::Shutdown::Both);
    let per_turn = (read1 - read0) / (turns1 - turns0);
    eprintln!(
        "{} markers in {} turns ({per_turn} a turn); {read1} of {MARKERS} read by the last scrape",
        read1 - read0,
        turns1 - turns0
    );
    assert!(
        read1 < MARKERS,
        "the whole flood ({MARKERS} markers) was read before a scrape during it was answered"
    );
    assert!(read1 > read0, "the flood was read between the scrapes");
    assert!(
        per_turn <= BOUND_PER_TURN,
        "{per_turn} markers ({} records) read from one client a turn",
        per_turn * (PONGS_PER_MARKER as u64 * 6 + 7)
    );
}
