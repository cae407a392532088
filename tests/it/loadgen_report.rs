//! What `mio-chat-load` reports, beyond its verdict on the server: thresholds with their own
//! exit status, the per-second series, ramp-up, the progress line in a log, a run where nobody
//! connected, and the HTML report, opened in Chromium (headless) as a user would open it.

#![cfg(feature = "loadgen")] // runs the generator's binary

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{tool, TestServer};
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_mio-chat-load");

/// A short broadcast against `url` with `extra` flags.
fn broadcast(url: &str, extra: &[&str]) -> Output {
    Command::new(LOAD)
        .args(["broadcast", "-n", "6", "--senders", "2", "--rate", "100"])
        .args(["--duration", "1", "--url", url, "--timeout", "60"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mio-chat-load")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mio-chat-report-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn thresholds_fail_the_run_with_their_own_status() {
    let server = TestServer::start(&["--client-rate", "0", "--client-bytes-rate", "0"]);
    let url = server.url("/ws");
    let met = broadcast(
        &url,
        &["--json", "--quiet", "--max-p99", "60000", "--min-rate", "1"],
    );
    let report = json(&met);
    assert_eq!(met.status.code(), Some(0), "{}", report["problems"]);
    assert_eq!(report["thresholds"][0]["passed"], true, "{report}");
    // No delivery takes 0 ms, and no loopback run makes a trillion deliveries a second.
    for flags in [["--max-p99", "0"], ["--min-rate", "1e12"]] {
        let out = broadcast(&url, &["--json", "--quiet", flags[0], flags[1]]);
        let report = json(&out);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{flags:?}: {}",
            report["thresholds"]
        );
        assert_eq!(
            report["problems"],
            serde_json::json!([]),
            "the server was fine"
        );
        assert_eq!(report["thresholds"][0]["flag"], flags[0]);
        assert_eq!(report["thresholds"][0]["passed"], false);
    }
    // The readable report says it too.
    let out = broadcast(&url, &["--quiet", "--max-p99", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("thresholds   --max-p99 0: ") && text.contains("FAILED"),
        "{text}"
    );
    // Thresholds belong to runs that measure latency and rate.
    let out = Command::new(LOAD)
        .args(["connect", "-n", "1", "--url", &url, "--max-p99", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("apply to broadcast and merge"));
}

#[test]
fn the_series_counts_every_second_and_the_ramp_spreads_the_joins() {
    let server = TestServer::start(&["--client-rate", "0", "--client-bytes-rate", "0"]);
    let out = broadcast(&server.url("/ws"), &["--json", "--quiet", "--ramp-up", "1"]);
    let report = json(&out);
    assert!(out.status.success(), "{}", report["problems"]);
    let series = report["series"].as_array().unwrap();
    let sum = |key: &str| series.iter().map(|s| s[key].as_u64().unwrap()).sum::<u64>();
    let traffic = &report["traffic"];
    assert_eq!(sum("sent"), traffic["sent"].as_u64().unwrap(), "{series:?}");
    assert_eq!(sum("delivered"), traffic["deliveries"].as_u64().unwrap());
    for (i, s) in series.iter().enumerate() {
        assert_eq!(s["t_s"], i, "one entry a second, in order");
    }
    // Joining took the ramp's second at least: the first clients were open before the last.
    assert!(
        report["join"]["connect_s"].as_f64().unwrap() >= 5.0 / 6.0,
        "{report}"
    );
    assert!(series[0]["connections"].as_u64().unwrap() <= 6);
}

/// stderr is a pipe here: every progress update is a line of its own, with no `\r`.
#[test]
fn progress_in_a_log_is_one_line_per_update() {
    let server = TestServer::start(&["--client-rate", "0", "--client-bytes-rate", "0"]);
    let out = Command::new(LOAD)
        .args(["broadcast", "-n", "4", "--rate", "50", "--duration", "3"])
        .args(["--url", &server.url("/ws")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains('\r'), "{log:?}");
    assert!(
        log.lines().filter(|l| l.starts_with("sending: ")).count() >= 2,
        "{log:?}"
    );
}

#[test]
fn a_run_where_nobody_connected_claims_nothing() {
    // A port nobody listens on: taken from the kernel, then given back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(LOAD)
        .args(["connect", "-n", "3", "--quiet", "--url"])
        .arg(format!("ws://127.0.0.1:{port}/ws"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("nobody connected"), "{text}");
    assert!(!text.contains("every client got its own"), "{text}");
    assert!(!text.contains("0.00 ms"), "{text}");
}

/// `--server-pid` naming a process that does not listen on the target is said; the server's
/// own is not.
#[test]
fn a_server_pid_not_listening_on_the_target_is_said() {
    let server = TestServer::start(&[]);
    let run = |pid: u32| {
        let out = Command::new(LOAD)
            .args(["connect", "-n", "2", "--quiet", "--url", &server.url("/ws")])
            .args(["--server-pid", &pid.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(!run(server.pid()).contains("not listening"));
    // This test's own process holds no listening socket on the server's port.
    let warned = run(std::process::id());
    assert!(
        warned.contains("is not listening on the target's port"),
        "{warned}"
    );
}

/// Chromium, or `None` after saying why not ([`tool::require`]'s rule: CI must have it).
fn chromium() -> Option<PathBuf> {
    tool::require("chromium", "chromium")
}

/// Opens `page` in headless Chromium: its DOM after rendering, and a screenshot in `png`.
fn open_in_chromium(browser: &Path, page: &Path, png: &Path) -> String {
    let run = |what: &str| {
        let out = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--window-size=1000,1300")
            .arg(what)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&format!("--screenshot={}", png.display()));
    String::from_utf8(run("--dump-dom").stdout).unwrap()
}

#[test]
#[cfg_attr(not(any(ci, have_chromium)), ignore = "chromium is not installed")]
fn the_html_report_opens_in_chromium_with_its_charts() {
    let server = TestServer::start(&["--client-rate", "0", "--client-bytes-rate", "0"]);
    let dir = temp_dir("html");
    let page = dir.join("report.html");
    let out = broadcast(
        &server.url("/ws"),
        &[
            "--json",
            "--quiet",
            "--html",
            page.to_str().unwrap(),
            "--max-p99",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("result: FAILED") && html.contains("threshold --max-p99 0"));
    assert!(!html.contains("<script"), "no script");

    // Two generators' reports merged: merge writes the page too.
    let merged_page = dir.join("merged.html");
    let reports: Vec<PathBuf> = ["0/2", "1/2"]
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let file = dir.join(format!("g{i}.json"));
            let child = Command::new(LOAD)
                .args(["broadcast", "-n", "3", "--rate", "50", "--duration", "1"])
                .args([
                    "--generator",
                    g,
                    "--json",
                    "--quiet",
                    "--url",
                    &server.url("/ws"),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (file, child)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(file, child)| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::fs::write(&file, &out.stdout).unwrap();
            file
        })
        .collect();
    let out = Command::new(LOAD)
        .args(["merge", "--quiet", "--html", merged_page.to_str().unwrap()])
        .args(&reports)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(std::fs::read_to_string(&merged_page)
        .unwrap()
        .contains("result: OK"));

    let Some(browser) = chromium() else { return };
    for page in [&page, &merged_page] {
        let png = page.with_extension("png");
        let dom = open_in_chromium(&browser, page, &png);
        // The verdict first, then the four charts, each with its lines drawn.
        let verdict = dom.find("id=\"verdict\"").expect("a verdict");
        for chart in ["latency", "distribution", "throughput", "connections"] {
            let at = dom.find(&format!("id=\"chart-{chart}\"")).expect(chart);
            assert!(verdict < at, "{chart} below the verdict");
            let svg = &dom[at..];
            let end = svg.find("</svg>").unwrap();
            assert!(svg[..end].contains("<polyline"), "{chart}: no line");
        }
        let png = std::fs::read(&png).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real screenshot"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
