//! A release server for the end-to-end benchmarks: started on a free port with the given
//! arguments and environment, ready once it has logged a line containing `ready`, its log
//! drained so it never blocks on a full pipe, and stopped with SIGTERM when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(binary: &str, args: &[&str], env: &[(&str, &str)], ready: &str) -> Server {
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mio-chat");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .to_string();
        let mut line = first;
        while !line.contains(ready) {
            line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("mio-chat exited before logging {ready:?}"),
            };
        }
        thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
