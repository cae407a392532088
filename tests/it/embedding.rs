//! The server as a library: bound on port 0 inside the test process, run on a thread of the
//! test's own, and stopped through its `StopHandle` (the in-process stand-in for SIGTERM).

use std::net::TcpStream;
use std::thread;

use mio_chat::{Config, Server};
use tungstenite::Message;

#[test]
fn a_server_bound_on_port_0_runs_and_stops_from_a_handle() {
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::bind(config).expect("bind");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "the real port is known before run()");
    let stop = server.stop_handle();
    let running = thread::spawn(move || server.run());

    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    let joined = ws.read().expect("join notice");
    assert_eq!(
        joined,
        Message::text(r#"{"type":1,"body":"New User Joined..."}"#)
    );

    stop.stop();
    // The client is told the server is going away, with close code 1001.
    let code = loop {
        match ws.read().expect("read until Close") {
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => continue,
        }
    };
    assert_eq!(code, Some(1001));
    // Reading on sends tungstenite's Close reply; the server then hangs up and, with no client
    // left, its loop ends.
    while ws.read().is_ok() {}
    drop(ws);
    running
        .join()
        .expect("no panic")
        .expect("run() ends with Ok");
}
