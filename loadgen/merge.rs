//! `mio-chat-load merge A.json B.json …`: the reports of several generators that loaded one
//! chat at the same time (`broadcast --generator I/N --json`), as the report of one run.
//!
//! Counts add up; rates add up too (the generators ran side by side); faults add up by name;
//! and the latency percentiles come from the sum of the generators' histograms (each report
//! carries its whole histogram), never from averaged percentiles, which mean nothing.
//!
//! Merge refuses reports that are not one run: each must say which generator of how many
//! wrote it (`setup.generator`), and together they must be 0/N … N-1/N, each once; their
//! scenario and flags (`setup.parameters`) must be the same; and their spans on the wall clock
//! must overlap. Then it checks what no generator can alone: that every generator's messages
//! reached every other generator's clients, and no more often than sent × receivers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::faults::Entry;
use crate::report::{self, Latency};
use crate::series::Second;

/// The merged figures.
#[derive(Debug, Serialize)]
pub struct MergedReport {
    pub scenario: &'static str,
    /// `--max-p99` and `--min-rate` against the merged figures (set after the merge).
    pub thresholds: Vec<report::Threshold>,
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
    pub in_flight_at_end: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Deliveries of one generator's messages to another's clients: counted, not checked.
    pub foreign: u64,
    /// For each pair of generators, what one's clients got of the other's messages.
    pub across: Vec<Across>,
    /// The run second by second on the first generator's clock: counts and connections add
    /// up; p50 and p99 are the highest of the generators' (percentiles do not add).
    pub series: Vec<Second>,
    pub latency: Latency,
    pub faults: BTreeMap<String, Entry>,
    /// Each report's problems, prefixed with its name.
    pub problems: Vec<String>,
}

/// Generator `from`'s messages at generator `to`'s clients.
#[derive(Debug, Serialize)]
pub struct Across {
    pub from: u32,
    pub to: u32,
    pub delivered: u64,
    /// `from`'s sent × `to`'s receivers: the most there can be (fewer if `to`'s clients
    /// joined after `from` began sending, or left before it ended).
    pub at_most: u64,
}

/// The counts of a broadcast report's `traffic` that add up.
const SUMS: [&str; 10] = [
    "senders",
    "sent",
    "receivers",
    "expected_deliveries",
    "deliveries",
    "lost",
    "in_flight_at_end",
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
    let mut reports = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| format!("{name}: {e}"))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: not a JSON report: {e}"))?;
        traffic_of(&json).map_err(|e| format!("{name}: {e}"))?;
        reports.push((name, json));
    }
    one_run(&reports)?;
    let across = check_across(&reports, &mut faults, &mut problems);
    let series = merge_series(&reports);
    for (name, json) in &reports {
        let traffic = &json["traffic"];
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
    let [senders, sent, receivers, expected_deliveries, deliveries, lost, in_flight_at_end, duplicates, order_violations, foreign] =
        sums;
    Ok(MergedReport {
        scenario: "merge",
        thresholds: Vec::new(),
        reports: files.iter().map(|f| f.display().to_string()).collect(),
        senders,
        sent,
        receivers,
        expected_deliveries,
        deliveries,
        deliveries_per_s: rate,
        lost,
        in_flight_at_end,
        duplicates,
        order_violations,
        foreign,
        across,
        series,
        latency: Latency::of(&hist),
        faults,
        problems,
    })
}

/// Whether the reports are one run (see the module comment), or why not.
fn one_run(reports: &[(String, Value)]) -> Result<(), String> {
    let place = |json: &Value| {
        let g = &json["setup"]["generator"];
        Some((g["index"].as_u64()?, g["of"].as_u64()?))
    };
    let mut seen = Vec::new();
    for (name, json) in reports {
        let (i, n) = place(json).ok_or_else(|| {
            format!("{name}: does not say which generator wrote it (setup.generator)")
        })?;
        seen.push((i, n, name));
    }
    let n = seen[0].1;
    if let Some((_, other, name)) = seen.iter().find(|&&(_, of, _)| of != n) {
        return Err(format!(
            "not one run: {} is of {n} generators, {name} of {other}",
            seen[0].2
        ));
    }
    seen.sort();
    for pair in seen.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(format!(
                "not one run: {} and {} are both generator {}/{n}",
                pair[0].2, pair[1].2, pair[0].0
            ));
        }
    }
    if seen.len() as u64 != n {
        let have: Vec<String> = seen.iter().map(|(i, _, _)| format!("{i}/{n}")).collect();
        return Err(format!(
            "not one run: {n} generators ran, {} reports given ({})",
            seen.len(),
            have.join(", ")
        ));
    }
    let (first, json) = &reports[0];
    for (name, other) in &reports[1..] {
        if other["setup"]["parameters"] != json["setup"]["parameters"] {
            return Err(format!(
                "not one run: {first} and {name} ran with different parameters ({} and {})",
                json["setup"]["parameters"], other["setup"]["parameters"]
            ));
        }
    }
    let span = |json: &Value| {
        let s = &json["setup"];
        (
            s["started_unix_ms"].as_u64().unwrap_or(0),
            s["ended_unix_ms"].as_u64().unwrap_or(0),
        )
    };
    let latest_start = reports.iter().map(|(_, j)| span(j).0).max().unwrap_or(0);
    let earliest_end = reports.iter().map(|(_, j)| span(j).1).min().unwrap_or(0);
    if latest_start >= earliest_end {
        return Err(format!(
            "not one run: the reports' times do not overlap (one ended at {earliest_end} ms, \
             another started at {latest_start} ms since 1970)"
        ));
    }
    Ok(())
}

/// Checks every generator's messages at every other generator's clients: some must have
/// arrived, and no more than sent × receivers.
fn check_across(
    reports: &[(String, Value)],
    faults: &mut BTreeMap<String, Entry>,
    problems: &mut Vec<String>,
) -> Vec<Across> {
    let index = |json: &Value| json["setup"]["generator"]["index"].as_u64().unwrap_or(0) as u32;
    let mut across = Vec::new();
    for (_, sender) in reports {
        let from = index(sender);
        let sent = sender["traffic"]["sent"].as_u64().unwrap_or(0);
        for (name, receiver) in reports {
            let to = index(receiver);
            if to == from {
                continue;
            }
            let traffic = &receiver["traffic"];
            let delivered = traffic["foreign_from"][from as usize].as_u64().unwrap_or(0);
            let at_most = sent * traffic["receivers"].as_u64().unwrap_or(0);
            let fault = if delivered == 0 && at_most > 0 {
                Some(("lost", format!(
                    "none of generator {from}'s {sent} messages reached generator {to}'s clients ({name})"
                )))
            } else if delivered > at_most {
                Some((
                    "duplicated",
                    format!(
                        "generator {to}'s clients ({name}) got {delivered} of generator {from}'s \
                     messages, more than its {sent} sent × their receivers"
                    ),
                ))
            } else {
                None
            };
            if let Some((fault, first)) = fault {
                problems.push(format!("{fault}: {first}"));
                faults
                    .entry(fault.to_string())
                    .or_insert(Entry { count: 0, first })
                    .count += 1;
            }
            across.push(Across {
                from,
                to,
                delivered,
                at_most,
            });
        }
    }
    across
}

/// The reports' time series on one clock: each second placed by its report's start.
fn merge_series(reports: &[(String, Value)]) -> Vec<Second> {
    let start = |json: &Value| json["setup"]["started_unix_ms"].as_u64().unwrap_or(0);
    let first = reports.iter().map(|(_, j)| start(j)).min().unwrap_or(0);
    let mut merged: Vec<Second> = Vec::new();
    for (_, json) in reports {
        let offset = (start(json) - first + 500) / 1000;
        let seconds = json["series"].as_array().into_iter().flatten();
        for s in seconds.filter_map(|s| serde_json::from_value::<Second>(s.clone()).ok()) {
            let t_s = s.t_s + offset;
            while merged.len() as u64 <= t_s {
                let t_s = merged.len() as u64;
                merged.push(Second {
                    t_s,
                    ..Second::default()
                });
            }
            let m = &mut merged[t_s as usize];
            m.sent += s.sent;
            m.delivered += s.delivered;
            m.connections += s.connections;
            let highest = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            m.p50_ms = highest(m.p50_ms, s.p50_ms);
            m.p99_ms = highest(m.p99_ms, s.p99_ms);
        }
    }
    merged
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
        "  traffic      {}, {} sent to {}",
        report::plural(r.senders, "sender", "senders"),
        r.sent,
        report::plural(r.receivers, "receiver", "receivers")
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
        "  latency      {} (of {})",
        report::latency_text(l),
        report::plural(l.count, "delivery", "deliveries")
    );
    report::thresholds_line(&mut out, &r.thresholds);
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

    /// Generator `index` of two's report: it sent 10 and got 5 of the other's.
    fn json(index: u32, samples: &[u64], problems: &[&str]) -> Value {
        let mut hist = report::new_histogram();
        for &s in samples {
            hist.record(s).unwrap();
        }
        let mut foreign_from = vec![5, 5];
        foreign_from[index as usize] = 0;
        serde_json::json!({
            "scenario": "broadcast",
            "setup": {
                "generator": {"index": index, "of": 2},
                "parameters": {"Broadcast": {"clients": 2}},
                "started_unix_ms": 1000, "ended_unix_ms": 2000,
            },
            "traffic": {
                "senders": 1, "sent": 10, "receivers": 2, "expected_deliveries": 20,
                "deliveries": samples.len(), "lost": 0, "duplicates": 0,
                "order_violations": 0, "foreign": 5, "foreign_from": foreign_from,
                "deliveries_per_s": 100.0, "latency": Latency::of(&hist),
            },
            "faults": if problems.is_empty() { serde_json::json!({}) }
                      else { serde_json::json!({"lost": {"count": 2, "first": "x"}}) },
            "problems": problems,
        })
    }

    fn write(dir: &std::path::Path, name: &str, json: &Value) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mio-chat-merge-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn counts_add_and_percentiles_come_from_the_sum() {
        let dir = temp_dir("sum");
        let a: Vec<u64> = (1..=90).collect();
        let b: Vec<u64> = (1000..1010).collect();
        let files = [
            write(&dir, "a.json", &json(0, &a, &[])),
            write(&dir, "b.json", &json(1, &b, &["lost: 2 (first: x)"])),
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
        assert_eq!(merged.across.len(), 2);
        let connect = dir.join("c.json");
        std::fs::write(&connect, r#"{"scenario":"connect"}"#).unwrap();
        assert!(merge(&[connect]).unwrap_err().contains("broadcast"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_is_not_one_run_is_refused() {
        let dir = temp_dir("refuse");
        let (a, b) = (json(0, &[1], &[]), json(1, &[1], &[]));
        let file = |name: &str, json: &Value| write(&dir, name, json);
        let edit = |json: &Value, path: &[&str], value: Value| {
            let mut json = json.clone();
            let mut at = &mut json;
            for key in path {
                at = &mut at[*key];
            }
            *at = value;
            json
        };
        let cases = [
            (vec![file("a", &a), file("a2", &a)], "both generator 0/2"),
            (vec![file("a", &a)], "2 generators ran, 1 reports given"),
            (
                vec![
                    file("a", &a),
                    file("b3", &edit(&b, &["setup", "generator", "of"], 3.into())),
                ],
                "of 2 generators",
            ),
            (
                vec![
                    file("alone", &edit(&a, &["setup", "generator", "of"], 1.into())),
                    file("b", &b),
                ],
                "of 1 generators",
            ),
            (
                vec![
                    file("a", &a),
                    file("bp", &edit(&b, &["setup", "parameters"], 7.into())),
                ],
                "different parameters",
            ),
            (
                vec![
                    file("a", &a),
                    file(
                        "later",
                        &edit(&b, &["setup", "started_unix_ms"], 2000.into()),
                    ),
                ],
                "do not overlap",
            ),
            (
                vec![
                    file("a", &a),
                    file("old", &edit(&b, &["setup"], Value::Null)),
                ],
                "which generator",
            ),
        ];
        for (files, why) in cases {
            let err = merge(&files).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
        // One run, but generator 1's messages never reached generator 0's clients.
        let starved = edit(&a, &["traffic", "foreign_from"], serde_json::json!([0, 0]));
        let merged = merge(&[file("a", &starved), file("b", &b)]).unwrap();
        assert!(
            merged.problems[0].contains("none of generator 1's 10 messages"),
            "{:?}",
            merged.problems
        );
        assert!(merged.faults.contains_key("lost"));
        let flooded = edit(&a, &["traffic", "foreign_from"], serde_json::json!([0, 21]));
        let merged = merge(&[file("a", &flooded), file("b", &b)]).unwrap();
        assert!(
            merged.faults.contains_key("duplicated"),
            "{:?}",
            merged.problems
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
