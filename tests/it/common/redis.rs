//! A `redis-server` of a test's (or benchmark's) own, on a free port, without persistence.
//!
//! Shared by `tests/it/cluster.rs` and `benches/e2e.rs` (which includes this file by path), so it
//! depends on nothing else in `tests/it/common` but `tool.rs` (which the benchmark includes too).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long Redis may take to say it is ready: a failure guard, not a wait.
const READY_GUARD: Duration = Duration::from_secs(15);

/// A `redis-server` of our own, without persistence, on 127.0.0.1.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts on a free port; `None` where redis-server is missing outside CI (the test then
    /// has nothing to run against).
    pub fn start() -> Option<Redis> {
        Redis::start_with_args(&[])
    }

    /// Like [`Redis::start`], with more `redis-server` arguments (e.g. `--requirepass PW`).
    pub fn start_with_args(extra: &[&str]) -> Option<Redis> {
        match Redis::start_on_with(free_port(), extra) {
            Ok(redis) => Some(redis),
            Err(e) => super::tool::unavailable("redis-server", "redis-server", e),
        }
    }

    /// Starts on `port` and waits for "Ready to accept connections".
    pub fn start_on(port: u16) -> std::io::Result<Redis> {
        Redis::start_on_with(port, &[])
    }

    fn start_on_with(port: u16, extra: &[&str]) -> std::io::Result<Redis> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut log = Vec::new();
            // Read to the end so that Redis never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(Ok(()));
                }
                log.push(line);
            }
            let _ = ready_tx.send(Err(log.join("\n")));
        });
        match ready_rx.recv_timeout(READY_GUARD) {
            Ok(Ok(())) => Ok(Redis { child, port }),
            Ok(Err(log)) => panic!("redis-server on port {port} exited:\n{log}"),
            Err(_) => panic!("redis-server on port {port} not ready within {READY_GUARD:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis vanishes without a goodbye, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new Redis on the same port (empty, as after a crash).
    pub fn restart(&mut self) {
        self.kill();
        *self = Redis::start_on(self.port).expect("restart redis-server");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}
