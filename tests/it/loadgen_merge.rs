//! Two `mio-chat-load` generators against one server at the same time (`--generator 0/2` and
//! `1/2`), their `--json` reports merged by `mio-chat-load merge`: the merged counts are the
//! sums of theirs, and its percentiles are those of one histogram holding every sample of both.

#![cfg(feature = "loadgen")] // runs the generator's binary

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestServer;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn histogram(report: &Value) -> Histogram<u64> {
    use base64::Engine;
    let text = report["traffic"]["latency"]["histogram"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    Deserializer::new().deserialize(&mut &bytes[..]).unwrap()
}

/// Runs generators `0/2` and `1/2` against `url` at the same time; writes their reports into
/// `dir` and returns the files and the reports.
fn run_two(url: &str, dir: &Path) -> (Vec<PathBuf>, Vec<Value>) {
    // Both at once: each generator's clients also receive the other's messages.
    let generators: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|g| {
            Command::new(LOAD)
                .args(["broadcast", "-n", "6", "--senders", "2", "--rate", "200"])
                .args(["--duration", "1", "--generator", g, "--url", url])
                .args(["--json", "--quiet", "--timeout", "60"])
                .env_remove("RUST_LOG")
                .spawn_output()
        })
        .collect();
    let mut files = Vec::new();
    let mut reports = Vec::new();
    for (i, child) in generators.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait for mio-chat-load");
        let report = json(&out);
        assert!(
            out.status.success(),
            "generator {i}: {}",
            report["problems"]
        );
        let file = dir.join(format!("g{i}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        files.push(file);
        reports.push(report);
    }
    (files, reports)
}

/// `mio-chat-load merge --json FILES`: whether it passed, and its report.
fn merge(files: &[PathBuf]) -> (bool, Value) {
    let out = Command::new(LOAD)
        .args(["merge", "--json"])
        .args(files)
        .output()
        .expect("run merge");
    (out.status.success(), json(&out))
}

#[test]
fn two_generators_merge_into_one_run() {
    let server = TestServer::start(&[]);
    let dir = std::env::temp_dir().join(format!("mio-chat-loadgen-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (files, reports) = run_two(&server.url("/ws"), &dir);
    // Each saw the other's messages, and did not count them as its own.
    for report in &reports {
        assert!(
            report["traffic"]["foreign"].as_u64().unwrap() > 0,
            "{report}"
        );
    }

    let (ok, merged) = merge(&files);
    assert!(ok, "{merged}");
    for key in [
        "sent",
        "deliveries",
        "expected_deliveries",
        "lost",
        "foreign",
    ] {
        let sum: u64 = reports
            .iter()
            .map(|r| r["traffic"][key].as_u64().unwrap())
            .sum();
        assert_eq!(merged[key].as_u64(), Some(sum), "{key}");
    }
    assert_eq!(merged["lost"], 0);

    // The percentiles of one histogram holding every sample of both.
    let mut all = histogram(&reports[0]);
    all.add(histogram(&reports[1])).unwrap();
    let latency = &merged["latency"];
    assert_eq!(latency["count"].as_u64(), Some(all.len()));
    for (key, q) in [("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)] {
        let want = all.value_at_quantile(q) as f64 / 1000.0;
        assert_eq!(latency[key].as_f64(), Some(want), "{key}");
    }
    assert_eq!(latency["max_ms"].as_f64(), Some(all.max() as f64 / 1000.0));

    // The same report twice is not one run: refused, with the reason.
    let out = Command::new(LOAD)
        .args(["merge", "--json"])
        .args([&files[0], &files[0]])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not one run") && stderr.contains("both generator 0/2"),
        "{stderr}"
    );

    // A failed generator fails the merge, named by its file.
    let mut bad = reports[1].clone();
    bad["problems"] = serde_json::json!(["lost: 1 (first: client 3 ...)"]);
    let bad_file = dir.join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let (ok, merged) = merge(&[files[0].clone(), bad_file]);
    assert!(!ok);
    assert!(merged["problems"][0].as_str().unwrap().contains("bad.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Command::spawn` with stdout and stderr piped, for `wait_with_output`.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mio-chat-load")
    }
}
