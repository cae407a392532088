//! `mio-chat-load` against the tutorial's own Go server (`../shared/seed/go`, built with Debian's
//! Go and gorilla/websocket): a correct server by the protocol, which answers the 101 before it
//! adds the client to the room. Every scenario must pass it, over repeated runs: no false alarm.
//!
//! Needs `go` and the seed's code beside the project; where either is missing the test says so
//! and passes (see [`seed_server`]); in CI a missing `go` fails it.

#![cfg(feature = "loadgen")] // runs the generator's binary

use crate::common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_load as load, tool};

/// The seed's server, running; killed on drop.
struct Seed {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Seed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one place that decides whether the seed's server can run here: built into a temporary
/// directory and started, or `None` after saying why not (go missing: [`tool::require`]'s
/// rule; the seed's code missing: a visible skip, since it lives outside the project).
fn seed_server() -> Option<Seed> {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/go/build.sh");
    if !build.exists() {
        let why = format!("{} is not here", build.display());
        return tool::unavailable(
            "the seed's Go server",
            "(../shared beside the project)",
            why,
        );
    }
    tool::require("go", "golang-go golang-github-gorilla-websocket-dev")?;
    let dir = std::env::temp_dir().join(format!("mio-chat-seed-{}", std::process::id()));
    let binary = dir.join("chat");
    let built = Command::new("bash")
        .arg(&build)
        .arg(&binary)
        .output()
        .expect("run build.sh");
    if !built.status.success() {
        let why = String::from_utf8_lossy(&built.stderr).to_string();
        return tool::unavailable(
            "the seed's Go server",
            "golang-github-gorilla-websocket-dev",
            why,
        );
    }
    // A free port: taken from the kernel, then handed to the server.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&binary)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the seed server");
    let seed = Seed {
        child,
        url: format!("ws://127.0.0.1:{port}/ws"),
        dir,
    };
    // It prints nothing once listening: wait until a connection is accepted.
    let give_up = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < give_up, "the seed server did not listen");
        std::thread::yield_now();
    }
    Some(seed)
}

#[test]
#[cfg_attr(
    not(any(ci, all(have_go, have_seed))),
    ignore = "needs go and ../shared/seed (the tutorial's server)"
)]
fn the_tutorials_go_server_passes_every_scenario_repeatedly() {
    let Some(seed) = seed_server() else { return };
    // Joins one at a time: the 101 comes before the join, so only each client's own join
    // notice orders them (about half of such runs once reported `notice order`).
    for run in 0..10 {
        let (ok, report) = load(&seed.url, &["connect", "-n", "12", "--max-inflight", "1"]);
        assert!(ok, "connect, run {run}: {}", report["problems"]);
    }
    let broadcast = [
        "broadcast",
        "-n",
        "4",
        "--senders",
        "2",
        "--window",
        "4",
        "--duration",
        "1",
    ];
    let churn = [
        "churn",
        "-n",
        "2",
        "--cycles",
        "20",
        "--rate",
        "200",
        "--max-inflight",
        "1",
        "--settle",
        "3",
    ];
    for args in [&broadcast[..], &churn[..]] {
        for run in 0..3 {
            let (ok, report) = load(&seed.url, args);
            assert!(ok, "{args:?}, run {run}: {}", report["problems"]);
            assert_eq!(report["faults"], serde_json::json!({}), "{args:?}");
        }
    }
}
