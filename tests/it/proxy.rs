//! Behind a reverse proxy: the nginx server block of `docs/deployment.md`, run in Debian's real `nginx` in front
//! of the server, carries a chat (join, message, leave), keeps `/metrics` internal and the
//! Origin rule working; and `--trusted-proxy` decides whose `X-Forwarded-For` names the client
//! in the logs (checked through nginx, and without it by sending the header ourselves).
//!
//! Clients bind to 127.0.0.2 and 127.0.0.3 (all of 127.0.0.0/8 is loopback on Linux), so that the
//! address a client really has differs from the proxy's 127.0.0.1.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use socket2::{Domain, Socket, Type};
use tungstenite::client::IntoClientRequest;

use common::*;

/// A TCP connection to `to` from the loopback address `from` (e.g. "127.0.0.2").
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let source: SocketAddr = format!("{from}:0").parse().expect("source address");
    socket
        .bind(&source.into())
        .expect("bind the source address");
    socket.connect(&to.into()).expect("connect");
    guarded(socket.into())
}

/// The server block of the "Behind nginx" section of `docs/deployment.md`.
fn documented_server_block() -> String {
    let page = include_str!("../../docs/deployment.md");
    let section = &page[page
        .find("## Behind nginx")
        .expect("docs/deployment.md: Behind nginx")..];
    let start = section
        .find("```nginx\n")
        .expect("docs/deployment.md: an nginx block")
        + "```nginx\n".len();
    let end = start
        + section[start..]
            .find("\n```")
            .expect("docs/deployment.md: the block's end");
    section[start..end].to_string()
}

/// Debian's `nginx`, run as this user from a temporary directory with the documented block, in
/// front of `upstream`; stopped (and its directory removed) when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// `None` where nginx is not installed (outside CI).
    fn start(upstream: SocketAddr) -> Option<Nginx> {
        let binary = common::tool::require("nginx", "nginx")?;
        let port = common::redis::free_port();
        let dir = std::env::temp_dir().join(format!("mio-chat-nginx-{port}"));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let block = documented_server_block()
            .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        assert!(block.contains(&upstream.to_string()) && block.contains(&port.to_string()));
        std::fs::write(dir.join("nginx.conf"), config(&dir, &block)).expect("nginx.conf");
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr"]) // not /var/log/nginx, which needs root
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        wait_until_listening(&mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Some(Nginx { child, addr, dir })
    }

    /// A WebSocket on `/ws` through nginx, from the loopback address `from`, with extra headers.
    fn ws_from(&self, from: &str, headers: &[(&'static str, &str)]) -> Ws {
        let url = format!("ws://{}/ws", self.addr);
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        let stream = connect_from(from, self.addr);
        let (ws, response) = tungstenite::client::client(request, stream)
            .unwrap_or_else(|e| panic!("WebSocket through nginx failed: {e}"));
        assert_eq!(response.status(), 101);
        ws
    }

    /// One request through nginx, the whole answer read until nginx closes.
    fn exchange(&self, request: &[u8]) -> HttpResponse {
        let mut stream = connect_from("127.0.0.2", self.addr);
        stream.write_all(request).expect("send the request");
        HttpResponse::parse(&read_to_close(&mut stream))
    }

    fn get(&self, path: &str) -> HttpResponse {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.exchange(request.as_bytes())
    }
}

/// nginx.conf around the documented block: in the foreground, one process, everything it writes
/// inside `dir`, and no keep-alive (each test request reads until nginx closes).
fn config(dir: &std::path::Path, server_block: &str) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log stderr notice;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 0;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n\
           scgi_temp_path {dir}/scgi;\n{server_block}\n}}\n"
    )
}

/// nginx logs its resource limits once its listening sockets are open: from then on, a
/// connection waits in the backlog until it is accepted. Its stderr is drained for good after.
fn wait_until_listening(child: &mut Child) {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("getrlimit(RLIMIT_NOFILE)") {
                let _ = tx.send(Ok(()));
            }
            log.push(line);
        }
        let _ = tx.send(Err(log.join("\n")));
    });
    match rx.recv_timeout(GUARD) {
        Ok(Ok(())) => {}
        Ok(Err(log)) => panic!("nginx exited:\n{log}"),
        Err(_) => panic!("nginx did not start within {GUARD:?}"),
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server behind the proxy, logging every connection with the address it settled on.
fn server_behind_proxy(trusted: &[&str]) -> TestServer {
    let args: Vec<&str> = trusted
        .iter()
        .flat_map(|range| ["--trusted-proxy", range])
        .collect();
    TestServer::start_with_env(&args, &[("RUST_LOG", "debug")])
}

#[test]
#[cfg_attr(not(any(ci, have_nginx)), ignore = "nginx is not installed")]
fn two_clients_chat_through_nginx_and_are_logged_by_their_own_addresses() {
    let server = server_behind_proxy(&["127.0.0.1"]);
    let Some(nginx) = Nginx::start(server.addr()) else {
        return;
    };
    // The first client forges a chain of its own; nginx appends the address it really has.
    let mut first = nginx.ws_from("127.0.0.2", &[("X-Forwarded-For", "203.0.113.66")]);
    expect_body(&mut first, JOINED);
    let mut second = nginx.ws_from("127.0.0.3", &[]);
    expect_body(&mut second, JOINED);
    expect_body(&mut first, JOINED);
    send_text(&mut first, "through nginx");
    expect_body(&mut first, "through nginx");
    expect_body(&mut second, "through nginx");
    send_text(&mut second, "and back");
    expect_body(&mut first, "and back");
    expect_body(&mut second, "and back");
    close_ws(&mut second);
    expect_body(&mut first, LEFT);

    server.wait_for_log("forwarded token=");
    server.wait_for_log("peer=127.0.0.2 via=127.0.0.1:");
    let second_line = server.wait_for_log("peer=127.0.0.3 via=127.0.0.1:");
    let token = token_of(&second_line);
    server.wait_for_log(&format!("closed token={token} peer=127.0.0.3"));
    let forged: Vec<String> = server
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("203.0.113.66"))
        .collect();
    assert!(
        forged.is_empty(),
        "a forged address was believed: {forged:?}"
    );
}

#[test]
#[cfg_attr(not(any(ci, have_nginx)), ignore = "nginx is not installed")]
fn through_nginx_the_page_and_health_are_served_and_metrics_are_not() {
    let server = server_behind_proxy(&["127.0.0.1"]);
    let Some(nginx) = Nginx::start(server.addr()) else {
        return;
    };
    let page = nginx.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body_text().contains("<html"));
    assert_eq!(nginx.get("/healthz").body_text(), "ok");
    assert_eq!(nginx.get("/nope").status, 404);
    assert_eq!(nginx.get("/metrics").status, 403);
    assert_eq!(nginx.get("/metrics?x=1").status, 403);
    assert_eq!(http_get(&server, "/metrics").status, 200, "served directly");
}

#[test]
#[cfg_attr(not(any(ci, have_nginx)), ignore = "nginx is not installed")]
fn the_origin_rule_holds_behind_nginx() {
    let server = server_behind_proxy(&["127.0.0.1"]);
    let Some(nginx) = Nginx::start(server.addr()) else {
        return;
    };
    // A browser on the proxy's own site: Host and Origin name the same host.
    let site = format!("localhost:{}", nginx.addr.port());
    let same_site = Handshake::new(&server)
        .header("Host", &site)
        .header("Origin", &format!("http://{site}"));
    let stream = connect_from("127.0.0.2", nginx.addr);
    RawClient::handshake(stream, &same_site).expect_body(JOINED);
    // Another web site's page, in a visitor's browser.
    let foreign = same_site.header("Origin", "http://evil.example");
    assert_eq!(nginx.exchange(&foreign.to_bytes()).status, 403);
}

/// The `token=N` of a log line.
fn token_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("token="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token in {line:?}"))
}

/// A raw client from `from` that joins with `X-Forwarded-For: chain`, then leaves; returns the
/// `peer` of the server's `closed` line for it.
fn logged_peer_after_joining_with(server: &TestServer, from: &str, chain: &str) -> String {
    let request = Handshake::new(server).header("X-Forwarded-For", chain);
    let stream = connect_from(from, server.addr());
    let local = stream.local_addr().expect("local address");
    let mut client = RawClient::handshake(stream, &request);
    client.expect_body(JOINED);
    let accepted = server.wait_for_log(&format!("peer={local}"));
    let token = token_of(&accepted);
    drop(client);
    let closed = server.wait_for_log(&format!("closed token={token} "));
    closed
        .split_whitespace()
        .find_map(|field| field.strip_prefix("peer="))
        .unwrap_or_else(|| panic!("no peer in {closed:?}"))
        .to_string()
}

#[test]
fn a_forwarded_for_header_from_an_untrusted_peer_is_ignored() {
    let server = server_behind_proxy(&["127.0.0.1"]);
    let peer = logged_peer_after_joining_with(&server, "127.0.0.2", "203.0.113.9");
    assert!(peer.starts_with("127.0.0.2:"), "logged as {peer}");
    assert!(!server
        .stderr_lines()
        .iter()
        .any(|l| l.contains("203.0.113.9")));
}

#[test]
fn a_trusted_proxy_names_the_right_most_untrusted_address() {
    let server = server_behind_proxy(&["127.0.0.1", "203.0.113.0/24"]);
    // The client wrote 192.0.2.1 itself; 198.51.100.7 is what the first trusted proxy saw.
    let chain = "192.0.2.1, 198.51.100.7, 203.0.113.9";
    let peer = logged_peer_after_joining_with(&server, "127.0.0.1", chain);
    assert_eq!(peer, "198.51.100.7");
    let line = server.wait_for_log("forwarded token=");
    assert!(line.contains(" peer=198.51.100.7 via=127.0.0.1:"), "{line}");
}
