//! The Prometheus alerting rules in `docs/alerts.yml`: valid (`promtool check rules`), firing
//! when and only when they should (`promtool test rules docs/alerts.test.yml`: series in,
//! alerts out), and naming only metrics the server really exports.

mod common;

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

/// Every `mio_chat_*` name in the rules' expressions, histogram suffixes removed.
fn metrics_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(RULES).expect("read docs/alerts.yml");
    let exprs = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"));
    let mut names = BTreeSet::new();
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("mio_chat_") {
                names.insert(word.trim_end_matches("_bucket").to_string());
            }
        }
    }
    names
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    // An unreachable Redis: the backplane's metrics are there too (mio_chat_redis_up 0).
    let server = TestServer::start(&["--redis", "redis://127.0.0.1:1"]);
    let exported = http_get(&server, "/metrics").body_text();
    let names = metrics_in_rules();
    assert!(
        names.len() >= 5,
        "too few metrics found in the rules: {names:?}"
    );
    for name in names {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the rules use {name}, which /metrics does not export"
        );
    }
}
