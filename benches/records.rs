//! What one client that makes the server work hard for little costs everyone else: a bystander's
//! round trips while an attacker floods unsolicited pongs, over ws:// and over wss:// with one
//! WebSocket byte per TLS record (issue 20, finding 1). The same WebSocket bytes both ways; over
//! wss:// they come as about 23 bytes of ciphertext each, every one a record to decrypt.
//!
//!   cargo bench --bench records                                   # target/release/mio-chat
//!   RECORDS_SERVER=/tmp/old/mio-chat RECORDS_RUNS=3 cargo bench --bench records
//!
//! Each run floods `RECORDS_PONGS` pongs (default 250,000: 1.5 MB of WebSocket bytes, 1.5 M records
//! over wss://, as in the issue), encrypted beforehand so the attacker's socket never runs dry,
//! while the bystander says something and waits to hear it, again and again; over ws:// also
//! 23 times as many (as many bytes on the wire as over wss://). Printed per row:
//! round trips during the flood, their median and maximum, and how long the flood lasted (until
//! the socket took its last byte). Not a test: nothing is asserted.

#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

/// Bytes on the wire per WebSocket byte sent one per TLS 1.3 record: a 5-byte header, the byte,
/// its content type and a 16-byte tag.
const WSS_WIRE_PER_BYTE: usize = 23;

/// A client's frame masked with a zero key (the payload stays as it is).
fn pong() -> [u8; 6] {
    [0x8a, 0x80, 0, 0, 0, 0]
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

struct Setup {
    tls: Option<Arc<ClientConfig>>,
    addr: String,
}

impl Setup {
    fn connect(&self) -> Stream {
        let socket = TcpStream::connect(&self.addr).unwrap();
        socket.set_nodelay(true).unwrap();
        match &self.tls {
            None => Stream::Plain(socket),
            Some(config) => {
                let name = ServerName::try_from("localhost").unwrap();
                let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
                let mut tls = StreamOwned::new(conn, socket);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).unwrap();
                }
                Stream::Tls(Box::new(tls))
            }
        }
    }

    fn websocket(&self) -> WebSocket<Stream> {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://localhost/ws");
        tungstenite::client::client(url, self.connect()).unwrap().0
    }
}

fn tls_files(dir: &std::path::Path) -> (Arc<ClientConfig>, [String; 2]) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let paths = [cert_path, key_path].map(|p| p.to_str().unwrap().to_string());
    (Arc::new(config), paths)
}

/// The attacker: upgraded by hand, then its flood encrypted beforehand (over TLS, one byte per
/// record) and written from a thread; what the room sends it is drained unread.
fn flood(setup: &Setup, pongs: usize) -> (std::thread::JoinHandle<()>, usize) {
    let mut stream = setup.connect();
    let request = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let plain: Vec<u8> = (0..pongs).flat_map(|_| pong()).collect();
    let (socket, bytes) = match stream {
        Stream::Plain(socket) => (socket, plain),
        Stream::Tls(tls) => {
            let StreamOwned { mut conn, sock } = *tls;
            let mut records = Vec::with_capacity(plain.len() * 24);
            for byte in &plain {
                conn.writer().write_all(std::slice::from_ref(byte)).unwrap();
                conn.write_tls(&mut records).unwrap();
            }
            (sock, records)
        }
    };
    let mut drain = socket.try_clone().unwrap();
    std::thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
    let len = bytes.len();
    let mut writer = socket;
    let handle = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        // Then an ordinary close: the server reads the whole flood before the Close.
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    (handle, len)
}

fn round_trip(ws: &mut WebSocket<Stream>, text: &str) -> Duration {
    let start = Instant::now();
    ws.send(Message::text(text)).unwrap();
    loop {
        if let Message::Text(got) = ws.read().unwrap() {
            if got.as_str().contains(text) {
                return start.elapsed();
            }
        }
    }
}

fn run(binary: &str, scheme: &str, pongs: usize) {
    let dir = std::env::temp_dir().join(format!("mio-chat-records-{}", std::process::id()));
    let (config, paths) = tls_files(&dir);
    let mut args = vec!["--client-rate", "0", "--ping-interval", "0"];
    if scheme == "wss" {
        args.extend(["--tls-cert", &paths[0], "--tls-key", &paths[1]]);
    }
    let server = server::Server::start(binary, &args, &[], "listening");
    let setup = Setup {
        tls: (scheme == "wss").then_some(config),
        addr: server.addr.clone(),
    };
    let mut bystander = setup.websocket();
    let _ = bystander.read(); // its join notice
    round_trip(&mut bystander, "warm-up");
    let (writer, wire) = flood(&setup, pongs);
    let start = Instant::now();
    let mut rtts = Vec::new();
    let mut n = 0;
    while !writer.is_finished() || rtts.len() < 3 {
        n += 1;
        rtts.push(round_trip(&mut bystander, &format!("bystander {n}")));
    }
    let flood_lasted = start.elapsed();
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{scheme:3} {pongs} pongs ({:.1} MB on the wire): flood lasted {:.0} ms; \
         bystander: {} round trips, median {:.2} ms, max {:.2} ms",
        wire as f64 / 1e6,
        ms(flood_lasted),
        rtts.len(),
        ms(rtts[rtts.len() / 2]),
        ms(*rtts.last().unwrap()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list`: nothing to run quickly
    }
    let binary =
        std::env::var("RECORDS_SERVER").unwrap_or_else(|_| "target/release/mio-chat".to_string());
    let pongs = std::env::var("RECORDS_PONGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(250_000);
    let runs: usize = std::env::var("RECORDS_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    println!("server {binary}");
    for _ in 0..runs {
        run(&binary, "ws", pongs);
        // The same bytes on the wire as over wss://: the budget's unit is the wire's byte.
        run(&binary, "ws", pongs * WSS_WIRE_PER_BYTE);
        run(&binary, "wss", pongs);
    }
}
