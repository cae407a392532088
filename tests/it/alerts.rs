//! The Prometheus alerting rules in `docs/alerts.yml`: valid (`promtool check rules`), firing
//! when and only when they should (`promtool test rules docs/alerts.test.yml`: series in,
//! alerts out), and naming only metrics the server really exports (`up` aside: Prometheus makes
//! it). The promtool tests are ignored where promtool is not installed; CI installs it.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.test.yml");

fn promtool(args: &[&str]) {
    let Some(promtool) = common::tool::require("promtool", "prometheus") else {
        return;
    };
    let out = Command::new(promtool)
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(not(any(ci, have_promtool)), ignore = "promtool is not installed")]
fn the_alert_rules_are_valid() {
    promtool(&["check", "rules", RULES]);
}

#[test]
#[cfg_attr(not(any(ci, have_promtool)), ignore = "promtool is not installed")]
fn the_alert_rules_fire_on_their_test_series() {
    promtool(&["test", "rules", RULE_TESTS]);
}

/// The rules' expressions: each `expr:` line, with the lines that continue it (`expr: >`
/// folds several) up to the rule's next key.
fn expressions(rules: &str) -> Vec<String> {
    let mut exprs: Vec<String> = Vec::new();
    let mut open = false;
    for line in rules.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("expr:") {
            exprs.push(rest.to_string());
            open = true;
        } else if open && !line.is_empty() && !is_key(line) {
            exprs.last_mut().expect("an expression").push_str(line);
        } else {
            open = false;
        }
    }
    exprs
}

/// `for: 5m`, `labels:`, `- alert: X`: a YAML key, not a line of an expression.
fn is_key(line: &str) -> bool {
    let line = line.trim_start_matches("- ");
    line.split_once(':').is_some_and(|(key, _)| {
        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

/// Every `mio_chat_*` and `process_*` name in the rules' expressions, histogram suffixes removed.
fn metrics_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(RULES).expect("read docs/alerts.yml");
    let mut names = BTreeSet::new();
    for expr in expressions(&rules) {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("mio_chat_") || word.starts_with("process_") {
                names.insert(word.trim_end_matches("_bucket").to_string());
            }
        }
    }
    names
}

/// The certificate gauge, which only a server with `--tls-cert` exports (`tests/it/tls.rs` scrapes
/// one): here from the library's renderer, with a certificate made for it.
fn exported_with_tls() -> String {
    let dir = std::env::temp_dir().join(format!("mio-chat-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let cert = dir.join("cert.pem");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    std::fs::write(&cert, made.cert.pem()).expect("write the certificate");
    let mut metrics = mio_chat::metrics::Metrics::default();
    metrics.certificate_loaded(&cert);
    let _ = std::fs::remove_dir_all(&dir);
    metrics.render(mio_chat::metrics::Gauges::default())
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    // An unreachable Redis: the backplane's metrics are there too (mio_chat_redis_up 0).
    let server = TestServer::start(&["--redis", "redis://127.0.0.1:1"]);
    let exported = http_get(&server, "/metrics").body_text() + &exported_with_tls();
    let names = metrics_in_rules();
    assert!(
        names.len() >= 9,
        "too few metrics found in the rules: {names:?}"
    );
    for name in names {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which /metrics does not export"
        );
    }
}
