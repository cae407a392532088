//! Helpers shared by every integration test file.
//!
//! * [`TestServer`]: runs the real `mio-chat` binary on a free port, keeps its stderr drained,
//!   and kills it when the test ends.
//! * [`http_exchange`] / [`http_get`]: one raw HTTP request, the whole response read until EOF.
//! * [`ws_connect`] and friends: a well-behaved WebSocket client (tungstenite), for chat tests.
//! * [`Handshake`], [`RawClient`] and [`Frame`]: a WebSocket client written by hand, so tests can
//!   send exactly the bytes they want (bad frames, split writes, odd lengths) and read exactly
//!   what the server sends back (unmasked frames, close codes, EOF).
//! * [`fake_redis::FakeRedis`]: a Redis in the test code that can stall, pause, nest replies
//!   deep or never end them (for the backplane); [`redis::Redis`] runs the real one;
//!   [`cut_proxy::CutProxy`] sits between one process and Redis to cut and heal its link.
//!
//! Tests wait for events, never for time: every socket gets a read timeout ([`GUARD`]) only so
//! that a broken server makes a test fail instead of hang.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod cut_proxy;
pub mod fake_redis;
pub mod redis;
pub mod slow;
pub mod tool;

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// How long any single blocking step may take before the test gives up. It is a failure
/// guard, not a wait: a working server answers in milliseconds.
pub const GUARD: Duration = Duration::from_secs(15);

/// Flags that turn the per-client budget off (`--client-rate 0 --client-bytes-rate 0`), for
/// tests that pump more messages than a person could, about something else than the budget.
pub const NO_BUDGET: [&str; 4] = ["--client-rate", "0", "--client-bytes-rate", "0"];

/// The chat notices the server broadcasts (the `body` of a `{"type":1,...}` message).
pub const JOINED: &str = "New User Joined...";
pub const LEFT: &str = "User Disconnected...";

/// The example key and answer from RFC 6455 section 1.3.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A running `mio-chat` process, listening on a port of its own choosing.
pub struct TestServer {
    /// `None` once [`TestServer::wait_for_exit`] has handed the child to a waiter thread.
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    first_line: String,
    /// Lines logged so far; the condition variable is signalled at each new line.
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
    exited: bool,
}

impl TestServer {
    /// Starts `mio-chat --addr 127.0.0.1:0 <args>` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> TestServer {
        TestServer::start_with_env(args, &[])
    }

    /// Like [`TestServer::start`], with extra environment variables (e.g. `RUST_LOG`). `args`
    /// may name an `--addr` of their own.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::start_with(args, env, |_| {})
    }

    /// Like [`TestServer::start_with_env`], with a last say on the command before it is spawned
    /// (e.g. a `pre_exec` that sets resource limits).
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> TestServer {
        let any_port: &[&str] = if args.contains(&"--addr") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        let mut command = server_command();
        command
            .args(any_port)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn mio-chat");
        let pid = child.id();

        // A thread reads stderr for the whole life of the process: if nobody read it, the pipe
        // would fill up and the server would block on its next log line.
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (first_tx, first_rx) = mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                    let mut all = lines.0.lock().unwrap();
                    if all.is_empty() {
                        let _ = first_tx.send(line.clone());
                    }
                    all.push(line);
                    lines.1.notify_all();
                }
            });
        }

        let mut server = TestServer {
            child: Some(child),
            pid,
            addr: "127.0.0.1:0".parse().unwrap(),
            first_line: String::new(),
            stderr: lines,
            exited: false,
        };
        let first_line = first_rx
            .recv_timeout(GUARD)
            .expect("the server printed no first stderr line (did it start?)");
        // With `--log-format json` the line is an object whose `msg` holds the same words.
        let message = match serde_json::from_str::<serde_json::Value>(&first_line) {
            Ok(json) => json["msg"].as_str().unwrap_or_default().to_string(),
            Err(_) => first_line.clone(),
        };
        let addr = message
            .strip_prefix("listening on ")
            .and_then(|rest| rest.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!("first stderr line is not `listening on ADDR`: {first_line:?}")
            });
        server.addr = addr;
        server.first_line = first_line;
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, the value a client puts in its Host header.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn first_stderr_line(&self) -> &str {
        &self.first_line
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits until the server logs a line containing `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let (lines, logged) = &*self.stderr;
        let all = logged
            .wait_timeout_while(lines.lock().unwrap(), GUARD, |all| {
                !all.iter().any(|line| line.contains(needle))
            })
            .unwrap()
            .0;
        let found = all.iter().find(|line| line.contains(needle)).cloned();
        drop(all);
        found.unwrap_or_else(|| panic!("the server never logged {needle:?}"))
    }

    /// Waits until `n` lines containing `needle` have been logged; returns them.
    pub fn wait_for_log_count(&self, needle: &str, n: usize) -> Vec<String> {
        let (lines, logged) = &*self.stderr;
        let matching = |all: &Vec<String>| -> Vec<String> {
            all.iter().filter(|l| l.contains(needle)).cloned().collect()
        };
        let all = logged
            .wait_timeout_while(lines.lock().unwrap(), GUARD, |all| matching(all).len() < n)
            .unwrap()
            .0;
        let found = matching(&all);
        drop(all);
        assert!(
            found.len() >= n,
            "the server logged {needle:?} {} times, not {n}",
            found.len()
        );
        found
    }

    /// Sends a Unix signal (e.g. `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: libc::c_int) {
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// Blocks until the process exits, failing the test if it takes longer than `guard`.
    pub fn wait_for_exit(&mut self, guard: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("wait_for_exit called twice");
        // Child::wait blocks with no timeout, so it runs in a thread and the test waits on a
        // channel with one.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(guard)
            .unwrap_or_else(|_| panic!("the server did not exit within {guard:?}"))
            .expect("wait for the server");
        self.exited = true;
        status
    }
}

/// The `mio-chat` binary, without the developer's own settings: the first stderr line is part
/// of the contract, so a `RUST_LOG` from the shell must not put other lines in front of it, and
/// a `MIO_CHAT_*` variable would set a flag behind the test's back.
pub fn server_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mio-chat"));
    command.env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MIO_CHAT_") {
            command.env_remove(name);
        }
    }
    command
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if thread::panicking() {
            // Make a failed test easier to understand: show what the server logged.
            eprintln!("---- mio-chat stderr ----");
            for line in self.stderr_lines() {
                eprintln!("{line}");
            }
            eprintln!("-------------------------");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else if !self.exited {
            // A waiter thread owns the (still unreaped, so still ours) pid.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// Puts the failure guard on a socket: no read or write may block longer than [`GUARD`].
pub fn guarded(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(GUARD)).unwrap();
    stream.set_write_timeout(Some(GUARD)).unwrap();
    stream
}

pub fn tcp_connect(server: &TestServer) -> TcpStream {
    guarded(TcpStream::connect(server.addr()).expect("connect to the server"))
}

/// Connects with a tiny receive buffer. SO_RCVBUF must be set before `connect`, because the
/// TCP window scale is agreed during the SYN exchange.
pub fn tcp_connect_small_rcvbuf(server: &TestServer, bytes: usize) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket
        .connect(&SockAddr::from(server.addr()))
        .expect("connect to the server");
    guarded(socket.into())
}

/// Makes the next `drop` of this stream send a TCP RST instead of a FIN (SO_LINGER = 0).
pub fn reset_on_drop(stream: &TcpStream) {
    SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// True if `err` means "the peer closed or reset the connection".
fn is_closed(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads until the server closes the connection. A reset after the data counts as a close:
/// either way the server is done with us.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return data,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_closed(&e) => return data,
            Err(e) if is_timeout(&e) => panic!(
                "the server did not close the connection within {GUARD:?}; got so far: {:?}",
                String::from_utf8_lossy(&data)
            ),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP response, read until the server closed the connection.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses a complete response. The server always sends Content-Length; when present, the
    /// body must be exactly that long (nothing missing, nothing extra after it).
    pub fn parse(raw: &[u8]) -> HttpResponse {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not a complete HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(raw)
            ),
        };
        let parsed = HttpResponse {
            status: response.code.unwrap(),
            headers: response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: raw[head_len..].to_vec(),
        };
        if let Some(length) = parsed.header("Content-Length") {
            let length: usize = length.trim().parse().expect("numeric Content-Length");
            assert_eq!(
                parsed.body.len(),
                length,
                "body length differs from Content-Length in {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        parsed
    }
}

/// Sends `request` in one write and reads the whole response until the server closes.
pub fn http_exchange(server: &TestServer, request: &[u8]) -> HttpResponse {
    let mut stream = tcp_connect(server);
    stream.write_all(request).expect("send the request");
    HttpResponse::parse(&read_to_close(&mut stream))
}

pub fn http_get(server: &TestServer, path: &str) -> HttpResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.host());
    http_exchange(server, request.as_bytes())
}

/// A `/metrics` sample, named with its labels exactly as exposed. Labelled counters appear
/// only once they have counted something, so a missing one is 0.
pub fn metric(server: &TestServer, series: &str) -> u64 {
    metric_f64(server, series) as u64
}

/// Like [`metric`], for a sample that is not a whole number (seconds).
pub fn metric_f64(server: &TestServer, series: &str) -> f64 {
    let response = http_get(server, "/metrics");
    assert_eq!(response.status, 200);
    response
        .body_text()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a number"))
}

// ---------------------------------------------------------------------------------------------
// Chat messages
// ---------------------------------------------------------------------------------------------

/// Checks that `text` is exactly `{"type":1,"body":"..."}` and returns the body.
pub fn chat_body(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text:?}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {text}"));
    assert_eq!(
        object.len(),
        2,
        "expected exactly `type` and `body`: {text}"
    );
    assert_eq!(
        object.get("type"),
        Some(&serde_json::json!(1)),
        "type must be 1: {text}"
    );
    object
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or_else(|| panic!("body must be a string: {text}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// A well-behaved WebSocket client (tungstenite)
// ---------------------------------------------------------------------------------------------

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket on `path` (e.g. "/ws" or "/echo").
pub fn ws_connect(server: &TestServer, path: &str) -> Ws {
    let (ws, response) = tungstenite::client::client(server.url(path), tcp_connect(server))
        .unwrap_or_else(|e| panic!("WebSocket handshake on {path} failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Joins the chat room: connects, then waits for the join notice on the new client and on
/// every client already in the room. Once this returns, the server has registered the new
/// client and everybody's stream is at the same point.
pub fn join_chat(server: &TestServer, others: &mut [&mut Ws]) -> Ws {
    let mut ws = ws_connect(server, "/ws");
    expect_body(&mut ws, JOINED);
    for other in others.iter_mut() {
        expect_body(other, JOINED);
    }
    ws
}

pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send a text message");
}

/// The next data or close message. Pings and pongs are skipped (tungstenite answers pings
/// by itself on the next read or write).
pub fn next_message(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(message) => return message,
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                panic!("no message from the server within {GUARD:?}")
            }
            Err(e) => panic!("reading a message failed: {e}"),
        }
    }
}

/// The body of the next chat message.
pub fn next_body(ws: &mut Ws) -> String {
    match next_message(ws) {
        Message::Text(text) => chat_body(text.as_str()),
        other => panic!("expected a chat text message, got {other:?}"),
    }
}

pub fn expect_body(ws: &mut Ws, expected: &str) {
    assert_eq!(next_body(ws), expected);
}

/// Reads on until the server's Close frame and returns its code.
pub fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match next_message(ws) {
            Message::Close(Some(frame)) => return u16::from(frame.code),
            Message::Close(None) => panic!("server sent a Close frame without a code"),
            _ => continue,
        }
    }
}

/// Closes from our side with code 1000 and waits until the handshake is done (the server
/// answered with its Close frame).
pub fn close_ws(ws: &mut Ws) {
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("send Close");
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("closing handshake failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A WebSocket client written by hand
// ---------------------------------------------------------------------------------------------

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// An HTTP upgrade request, valid by default, that tests bend one header at a time.
#[derive(Clone)]
pub struct Handshake {
    path: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Handshake {
    /// `GET /ws HTTP/1.1` with every header a valid upgrade needs.
    pub fn new(server: &TestServer) -> Handshake {
        Handshake {
            path: "/ws".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), server.host()),
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Sec-WebSocket-Key".into(), SAMPLE_KEY.into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
            ],
        }
    }

    pub fn path(mut self, path: &str) -> Handshake {
        self.path = path.into();
        self
    }

    pub fn http_version(mut self, version: &str) -> Handshake {
        self.version = version.into();
        self
    }

    /// Sets a header, replacing any header of that name.
    pub fn header(self, name: &str, value: &str) -> Handshake {
        let mut this = self.without(name);
        this.headers.push((name.into(), value.into()));
        this
    }

    pub fn without(mut self, name: &str) -> Handshake {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = format!("GET {} {}\r\n", self.path, self.version);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    }
}

/// A frame to send, built field by field. By default: FIN set, RSV clear, masked, and a length
/// field that matches the payload in the shortest form (7-bit, 16-bit or 64-bit).
#[derive(Clone, Debug)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// Overrides the length written in the header; the payload bytes are still what is sent.
    pub declared_len: Option<u64>,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            // Real clients pick a random key per frame; any key will do for the server.
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            payload: payload.into(),
            declared_len: None,
        }
    }

    pub fn text(text: &str) -> Frame {
        Frame::new(OP_TEXT, text.as_bytes())
    }

    pub fn binary(data: &[u8]) -> Frame {
        Frame::new(OP_BINARY, data)
    }

    pub fn continuation(data: &[u8]) -> Frame {
        Frame::new(OP_CONTINUATION, data)
    }

    pub fn ping(data: &[u8]) -> Frame {
        Frame::new(OP_PING, data)
    }

    pub fn pong(data: &[u8]) -> Frame {
        Frame::new(OP_PONG, data)
    }

    /// A Close frame carrying a status code and a reason.
    pub fn close(code: u16, reason: &[u8]) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        Frame::new(OP_CLOSE, payload)
    }

    pub fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    /// Sets the three RSV bits (0b100 = RSV1, 0b010 = RSV2, 0b001 = RSV3).
    pub fn rsv(mut self, bits: u8) -> Frame {
        self.rsv = bits & 0b111;
        self
    }

    pub fn unmasked(mut self) -> Frame {
        self.mask = None;
        self
    }

    pub fn declared_len(mut self, len: u64) -> Frame {
        self.declared_len = Some(len);
        self
    }

    /// The frame's bytes: a well-formed frame through the library's one client-frame encoder
    /// (`mio_chat::frame::push_masked`); an unmasked one, or one whose header lies about its
    /// length, by hand.
    pub fn encode(&self) -> Vec<u8> {
        let first = ((self.fin as u8) << 7) | (self.rsv << 4) | (self.opcode & 0x0f);
        if let (Some(key), None) = (self.mask, self.declared_len) {
            let mut out = Vec::new();
            mio_chat::frame::push_masked(&mut out, first, &self.payload, key);
            return out;
        }
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(((self.fin as u8) << 7) | (self.rsv << 4) | (self.opcode & 0x0f));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u16::MAX as u64 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// A frame as the server sent it.
#[derive(Debug)]
pub struct ServerFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code of a Close frame (`None` if the payload is empty).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a Close frame: {self:?}");
        match self.payload.len() {
            0 => None,
            1 => panic!("Close frame with a 1-byte payload"),
            _ => Some(u16::from_be_bytes([self.payload[0], self.payload[1]])),
        }
    }
}

/// A WebSocket connection driven byte by byte by the test.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes received but not parsed yet (a frame may arrive in pieces, or several at once).
    buffer: Vec<u8>,
}

impl RawClient {
    /// Connects to /ws with a valid handshake. The join notice is left unread.
    pub fn connect(server: &TestServer) -> RawClient {
        RawClient::handshake(tcp_connect(server), &Handshake::new(server))
    }

    /// Connects to /ws and reads its own join notice.
    pub fn join(server: &TestServer) -> RawClient {
        let mut client = RawClient::connect(server);
        client.expect_body(JOINED);
        client
    }

    /// Sends `request` on `stream` and expects `101 Switching Protocols`.
    pub fn handshake(mut stream: TcpStream, request: &Handshake) -> RawClient {
        stream
            .write_all(&request.to_bytes())
            .expect("send the handshake");
        RawClient::read_handshake_response(stream)
    }

    /// Reads the server's answer to a handshake already sent on `stream` and checks it is a
    /// correct 101 for [`SAMPLE_KEY`]. Bytes after the response head stay buffered: they are
    /// the first WebSocket frames.
    pub fn read_handshake_response(stream: TcpStream) -> RawClient {
        RawClient::read_handshake(stream).0
    }

    /// [`RawClient::read_handshake_response`], with the 101's head for the caller to check.
    pub fn read_handshake(stream: TcpStream) -> (RawClient, HttpResponse) {
        let mut client = RawClient {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(pos) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            client.fill("the handshake response");
        };
        let head: Vec<u8> = client.buffer.drain(..head_end).collect();
        let response = HttpResponse::parse(&head);
        assert_eq!(
            response.status,
            101,
            "expected 101, got {:?}",
            String::from_utf8_lossy(&head)
        );
        assert!(response
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
        assert!(response
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
        assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
        (client, response)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes bytes exactly as given.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    pub fn send(&mut self, frame: &Frame) {
        self.write_raw(&frame.encode());
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(&Frame::text(text));
    }

    /// Reads more bytes into the buffer; panics if the server closed or went quiet.
    fn fill(&mut self, waiting_for: &str) {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("server closed the connection while we waited for {waiting_for}"),
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                panic!("nothing from the server within {GUARD:?} ({waiting_for})")
            }
            Err(e) => panic!("read failed while waiting for {waiting_for}: {e}"),
        }
    }

    fn fill_to(&mut self, len: usize) {
        while self.buffer.len() < len {
            self.fill("a frame");
        }
    }

    /// Reads the next frame of any kind. Server frames must never be masked (RFC 6455 5.1)
    /// and, with no extension negotiated, never carry RSV bits (5.2).
    pub fn read_frame(&mut self) -> ServerFrame {
        self.fill_to(2);
        let (b0, b1) = (self.buffer[0], self.buffer[1]);
        assert_eq!(b1 & 0x80, 0, "the server sent a masked frame");
        // No extension was negotiated, so no RSV bit may be set.
        assert_eq!(b0 & 0x70, 0, "the server set RSV bits");
        let (len, header) = match b1 & 0x7f {
            126 => {
                self.fill_to(4);
                (
                    u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                    4,
                )
            }
            127 => {
                self.fill_to(10);
                let bytes: [u8; 8] = self.buffer[2..10].try_into().unwrap();
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            short => (short as usize, 2),
        };
        self.fill_to(header + len);
        let payload = self.buffer[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        ServerFrame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0b111,
            opcode: b0 & 0x0f,
            payload,
        }
    }

    /// The next frame that is not a ping or pong (data or Close).
    pub fn read_frame_skipping_pings(&mut self) -> ServerFrame {
        loop {
            let frame = self.read_frame();
            if frame.opcode != OP_PING && frame.opcode != OP_PONG {
                return frame;
            }
        }
    }

    /// The body of the next chat message (the server sends each one as a single text frame).
    pub fn next_body(&mut self) -> String {
        let frame = self.read_frame_skipping_pings();
        assert_eq!(
            frame.opcode, OP_TEXT,
            "expected a text frame, got {frame:?}"
        );
        assert!(frame.fin, "expected an unfragmented text frame");
        chat_body(std::str::from_utf8(&frame.payload).expect("text frame is UTF-8"))
    }

    pub fn expect_body(&mut self, expected: &str) {
        assert_eq!(self.next_body(), expected);
    }

    /// Skips data frames until the server's Close frame; returns its code.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = self.read_frame();
            if frame.opcode == OP_CLOSE {
                assert!(frame.fin, "Close frame without FIN");
                return frame.close_code();
            }
        }
    }

    /// Checks that the server closed the TCP connection and sent nothing more.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buffer.is_empty(),
            "unexpected bytes after the Close frame: {:?}",
            self.buffer
        );
        let rest = read_to_close(&mut self.stream);
        assert!(
            rest.is_empty(),
            "unexpected bytes after the Close frame: {rest:?}"
        );
    }

    /// The server's Close frame must carry `code`, and the TCP connection must end after it.
    pub fn expect_close_code(&mut self, code: u16) {
        assert_eq!(self.expect_close(), Some(code));
        self.expect_eof();
    }
}

// ---------------------------------------------------------------------------------------------
// The server process as /proc sees it
// ---------------------------------------------------------------------------------------------

impl TestServer {
    /// The server's process id, for reading `/proc/PID/status` (memory) and `/proc/PID/fd`.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Sets the process's open-file limit, soft and hard, before the server starts.
pub fn open_file_limit(command: &mut Command, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Runs the load generator with `args` against `url`; returns whether it passed, and its JSON
/// report (panics, with what it printed, if there is none).
pub fn run_load(url: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mio-chat-load"))
        .args(args)
        .args(["--url", url, "--json", "--quiet", "--timeout", "60"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run mio-chat-load");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}
