//! `mio-chat-load merge A.json B.json …`: the reports of several generators that loaded one
//! chat at the same time (`broadcast --generator I/N --json`), as the report of one run.
//!
//! Counts add up; rates add up too (the generators ran side by side); faults add up by name;
//! and the latency percentiles come from the sum of the generators' histograms (each report
//! carries its whole histogram), never from averaged percentiles, which mean nothing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::faults::Entry;
use crate::report::{self, Latency};

/// The merged figures.
#[derive(Debug, Serialize)]
pub struct MergedReport {
    pub scenario: &'static str,
    /// The reports merged, as given.
    pub reports: Vec<String>,
    pub senders: u64,
    pub sent: u64,
    pub receivers: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    /// The generators' rates added up.
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Deliveries of one generator's messages to another's clients: counted, not checked.
    pub foreign: u64,
    pub latency: Latency,
    pub faults: BTreeMap<String, Entry>,
    /// Each report's problems, prefixed with its name.
    pub problems: Vec<String>,
}

/// The counts of a broadcast report's `traffic` that add up.
const SUMS: [&str; 9] = [
    "senders",
    "sent",
    "receivers",
    "expected_deliveries",
    "deliveries",
    "lost",
    "duplicates",
    "order_violations",
    "foreign",
];

/// Reads and merges the reports in `files`.
pub fn merge(files: &[PathBuf]) -> Result<MergedReport, String> {
    let mut sums = [0u64; SUMS.len()];
    let mut rate = 0.0;
    let mut hist = report::new_histogram();
    let mut faults: BTreeMap<String, Entry> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| format!("{name}: {e}"))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: not a JSON report: {e}"))?;
        let traffic = traffic_of(&json).map_err(|e| format!("{name}: {e}"))?;
        for (sum, key) in sums.iter_mut().zip(SUMS) {
            *sum += traffic[key].as_u64().unwrap_or(0);
        }
        rate += traffic["deliveries_per_s"].as_f64().unwrap_or(0.0);
        add_histogram(&mut hist, traffic).map_err(|e| format!("{name}: {e}"))?;
        add_faults(&mut faults, &json["faults"]);
        for problem in json["problems"].as_array().into_iter().flatten() {
            problems.push(format!("{name}: {}", problem.as_str().unwrap_or_default()));
        }
    }
    let [senders, sent, receivers, expected_deliveries, deliveries, lost, duplicates, order_violations, foreign] =
        sums;
    Ok(MergedReport {
        scenario: "merge",
        reports: files.iter().map(|f| f.display().to_string()).collect(),
        senders,
        sent,
        receivers,
        expected_deliveries,
        deliveries,
        deliveries_per_s: rate,
        lost,
        duplicates,
        order_violations,
        foreign,
        latency: Latency::of(&hist),
        faults,
        problems,
    })
}

/// A broadcast report's `traffic`, or why there is none.
fn traffic_of(json: &Value) -> Result<&Value, String> {
    if json["scenario"] != "broadcast" {
        return Err(format!(
            "a {} report; merge takes broadcast reports",
            json["scenario"]
        ));
    }
    let traffic = &json["traffic"];
    if traffic.is_null() {
        return Err("no traffic in the report (the run stopped before sending)".into());
    }
    Ok(traffic)
}

fn add_histogram(hist: &mut Histogram<u64>, traffic: &Value) -> Result<(), String> {
    let text = traffic["latency"]["histogram"]
        .as_str()
        .ok_or("no latency histogram in the report (from an older mio-chat-load?)")?;
    let other = report::decode_histogram(text)?;
    hist.add(&other)
        .map_err(|e| format!("histogram does not add up: {e:?}"))
}

fn add_faults(faults: &mut BTreeMap<String, Entry>, found: &Value) {
    for (name, entry) in found.as_object().into_iter().flatten() {
        let count = entry["count"].as_u64().unwrap_or(0);
        let merged = faults.entry(name.clone()).or_insert_with(|| Entry {
            count: 0,
            first: entry["first"].as_str().unwrap_or_default().to_string(),
        });
        merged.count += count;
    }
}

pub fn text(r: &MergedReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mio-chat-load merge: {} reports ({})",
        r.reports.len(),
        r.reports.join(", ")
    );
    let _ = writeln!(
        out,
        "  traffic      {} senders, {} sent to {} receivers",
        r.senders, r.sent, r.receivers
    );
    let _ = writeln!(
        out,
        "  deliveries   {}/{} ({:.0}/s); lost {}, duplicates {}, out of order {}; {} to other \
         generators' clients, not checked",
        r.deliveries,
        r.expected_deliveries,
        r.deliveries_per_s,
        r.lost,
        r.duplicates,
        r.order_violations,
        r.foreign
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "  latency      p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (of {} deliveries)",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
    );
    if r.problems.is_empty() {
        let _ = writeln!(out, "  result       OK");
    } else {
        let _ = writeln!(out, "  result       FAILED: {}", r.problems.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dir: &std::path::Path, name: &str, samples: &[u64], problems: &[&str]) -> PathBuf {
        let mut hist = report::new_histogram();
        for &s in samples {
            hist.record(s).unwrap();
        }
        let json = serde_json::json!({
            "scenario": "broadcast",
            "traffic": {
                "senders": 1, "sent": 10, "receivers": 2, "expected_deliveries": 20,
                "deliveries": samples.len(), "lost": 0, "duplicates": 0,
                "order_violations": 0, "foreign": 5, "deliveries_per_s": 100.0,
                "latency": Latency::of(&hist),
            },
            "faults": if problems.is_empty() { serde_json::json!({}) }
                      else { serde_json::json!({"lost": {"count": 2, "first": "x"}}) },
            "problems": problems,
        });
        let path = dir.join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn counts_add_and_percentiles_come_from_the_sum() {
        let dir = std::env::temp_dir().join(format!("mio-chat-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u64> = (1..=90).collect();
        let b: Vec<u64> = (1000..1010).collect();
        let files = [
            report(&dir, "a.json", &a, &[]),
            report(&dir, "b.json", &b, &["lost: 2 (first: x)"]),
        ];
        let merged = merge(&files).unwrap();
        assert_eq!(merged.deliveries, 100);
        assert_eq!((merged.sent, merged.foreign), (20, 10));
        assert_eq!(merged.deliveries_per_s, 200.0);
        // Averaged p99s would say about 0.5 ms; all samples together say about 1 ms.
        assert!((merged.latency.p99_ms - 1.009).abs() < 0.01, "{merged:?}");
        assert_eq!(merged.latency.count, 100);
        assert_eq!(merged.faults["lost"].count, 2);
        assert_eq!(merged.problems.len(), 1);
        assert!(merged.problems[0].contains("b.json"));
        let connect = dir.join("c.json");
        std::fs::write(&connect, r#"{"scenario":"connect"}"#).unwrap();
        assert!(merge(&[connect]).unwrap_err().contains("broadcast"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
