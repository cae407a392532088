//! `--html FILE`: the report as one self-contained page, for people and CI artefacts alike.
//! The verdict on top (problems and thresholds), the figures, then four charts drawn as inline
//! SVG: latency over time (p50 and p99 per second), the latency distribution (latency by
//! percentile, from the whole histogram), throughput (sent and delivered per second) and
//! connections open. No script, no stylesheet or font fetched: it opens anywhere, offline.

use std::fmt::Write;

use crate::merge::MergedReport;
use crate::report::{self, BroadcastReport, Latency, Threshold};
use crate::series::Second;

/// What the page shows.
pub struct Page<'a> {
    /// `broadcast` or `merge`, and what ran (the setup line of the text report).
    pub title: String,
    pub problems: &'a [String],
    pub thresholds: &'a [Threshold],
    /// Figures as (label, value), shown as a table.
    pub figures: Vec<(String, String)>,
    pub latency: &'a Latency,
    pub series: &'a [Second],
}

/// The page of a `broadcast` run.
pub fn of_broadcast<'a>(r: &'a BroadcastReport, none: &'a Latency) -> Page<'a> {
    let mut figures = vec![
        ("target".to_string(), r.setup.url.clone()),
        (
            "clients".into(),
            format!(
                "{} of {} connected, {} failed",
                r.join.opened, r.join.clients, r.join.failed
            ),
        ),
    ];
    if let Some(t) = &r.traffic {
        figures.extend([
            (
                "traffic".to_string(),
                format!(
                    "{}, {}, {:.1} s, {}-byte texts",
                    report::plural(t.senders as u64, "sender", "senders"),
                    t.pace,
                    t.duration_s,
                    t.message_bytes
                ),
            ),
            (
                "deliveries".into(),
                format!(
                    "{} of {} ({:.0}/s); {} sent to {} receivers",
                    t.deliveries, t.expected_deliveries, t.deliveries_per_s, t.sent, t.receivers
                ),
            ),
            (
                "missing".into(),
                format!(
                    "lost {}, in flight at the end {}, duplicates {}, out of order {}",
                    t.lost, t.in_flight_at_end, t.duplicates, t.order_violations
                ),
            ),
            ("latency".into(), report::latency_text(&t.latency)),
        ]);
    }
    Page {
        title: format!("mio-chat-load broadcast: {}", r.setup.url),
        problems: &r.problems,
        thresholds: &r.thresholds,
        figures,
        latency: r.traffic.as_ref().map_or(none, |t| &t.latency),
        series: &r.series,
    }
}

/// The page of a merged run.
pub fn of_merge(r: &MergedReport) -> Page<'_> {
    let figures = vec![
        ("reports".to_string(), r.reports.join(", ")),
        (
            "deliveries".into(),
            format!(
                "{} of {} ({:.0}/s); {} sent to {} receivers",
                r.deliveries, r.expected_deliveries, r.deliveries_per_s, r.sent, r.receivers
            ),
        ),
        (
            "missing".into(),
            format!(
                "lost {}, in flight at the end {}, duplicates {}, out of order {}",
                r.lost, r.in_flight_at_end, r.duplicates, r.order_violations
            ),
        ),
        ("latency".into(), report::latency_text(&r.latency)),
        (
            "per second".into(),
            "counts add up over the generators; p50 and p99 are the highest generator's".into(),
        ),
    ];
    Page {
        title: format!("mio-chat-load merge: {} generators", r.reports.len()),
        problems: &r.problems,
        thresholds: &r.thresholds,
        figures,
        latency: &r.latency,
        series: &r.series,
    }
}

/// Writes the page to `path`.
pub fn write(path: &std::path::Path, page: &Page) -> Result<(), String> {
    std::fs::write(path, render(page)).map_err(|e| format!("--html {}: {e}", path.display()))
}

pub fn render(page: &Page) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let failed = !page.problems.is_empty() || page.thresholds.iter().any(|t| !t.passed);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n",
        title = escape(&page.title)
    );
    verdict(&mut out, page, failed);
    out.push_str("<table id=\"figures\">");
    for (label, value) in &page.figures {
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(label),
            escape(value)
        );
    }
    out.push_str("</table>\n");
    charts(&mut out, page);
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font:14px/1.4 sans-serif;margin:24px;max-width:960px;color:#222}\
h1{font-size:20px}#verdict{padding:12px 16px;border-radius:6px;font-weight:bold}\
.ok{background:#d9f2d9;color:#145214}.failed{background:#f9d6d5;color:#7a1512}\
#verdict ul{font-weight:normal;margin:6px 0 0}table{border-collapse:collapse;margin:16px 0}\
th,td{text-align:left;padding:2px 12px 2px 0;vertical-align:top}th{color:#555;font-weight:normal}\
figure{margin:16px 0}figcaption{font-weight:bold}svg text{font:11px sans-serif;fill:#444}";

fn verdict(out: &mut String, page: &Page, failed: bool) {
    let (class, word) = if failed {
        ("failed", "FAILED")
    } else {
        ("ok", "OK")
    };
    let _ = write!(out, "<div id=\"verdict\" class=\"{class}\">result: {word}");
    if failed {
        out.push_str("<ul>");
        for problem in page.problems {
            let _ = write!(out, "<li>{}</li>", escape(problem));
        }
        for t in page.thresholds.iter().filter(|t| !t.passed) {
            let value = t
                .value
                .map_or("nothing measured".into(), |v| format!("{v:.2}"));
            let _ = write!(out, "<li>threshold {} {}: {value}</li>", t.flag, t.limit);
        }
        out.push_str("</ul>");
    }
    out.push_str("</div>\n");
}

fn charts(out: &mut String, page: &Page) {
    let at = |s: &Second| s.t_s as f64 + 1.0;
    let points = |value: &dyn Fn(&Second) -> Option<f64>| -> Vec<(f64, f64)> {
        page.series
            .iter()
            .filter_map(|s| value(s).map(|v| (at(s), v)))
            .collect()
    };
    let p50 = points(&|s| s.p50_ms);
    let p99 = points(&|s| s.p99_ms);
    chart(
        out,
        ("latency", "Latency over time", "seconds", "ms", false),
        &[("p50", "#1f77b4", &p50), ("p99", "#d62728", &p99)],
    );
    let distribution = distribution(page.latency);
    chart(
        out,
        (
            "distribution",
            "Latency distribution",
            "percentile",
            "ms",
            true,
        ),
        &[("latency", "#d62728", &distribution)],
    );
    let sent = points(&|s| Some(s.sent as f64));
    let delivered = points(&|s| Some(s.delivered as f64));
    chart(
        out,
        ("throughput", "Throughput", "seconds", "per second", false),
        &[
            ("sent", "#2ca02c", &sent),
            ("delivered", "#1f77b4", &delivered),
        ],
    );
    let open = points(&|s| Some(s.connections as f64));
    chart(
        out,
        (
            "connections",
            "Connections open",
            "seconds",
            "connections",
            false,
        ),
        &[("open", "#9467bd", &open)],
    );
}

/// Latency by percentile, x as -log10(1 - q) (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, …).
fn distribution(latency: &Latency) -> Vec<(f64, f64)> {
    let Ok(hist) = report::decode_histogram(&latency.histogram) else {
        return Vec::new();
    };
    if hist.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, f64)> = hist
        .iter_quantiles(4)
        .map(|v| {
            let q = v.quantile_iterated_to().min(0.99999);
            (-(1.0 - q).log10(), v.value_iterated_to() as f64 / 1000.0)
        })
        .collect();
    points.dedup_by(|a, b| a.0 == b.0);
    points
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 30.0;

/// One line of a chart: its name, its colour, its points (x, y).
type Line<'a> = (&'a str, &'a str, &'a Vec<(f64, f64)>);

/// One chart: (id, caption, x label, y label, x as percentiles) and its lines.
fn chart(
    out: &mut String,
    (id, caption, x_label, y_label, percentiles): (&str, &str, &str, &str, bool),
    lines: &[Line],
) {
    let all = || lines.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let y_max = nice(all().map(|p| p.1).fold(0.0, f64::max));
    let (plot_w, plot_h) = (W - LEFT - 40.0, H - BOTTOM - 24.0);
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| 24.0 + plot_h - v / y_max * plot_h;
    let _ = write!(
        out,
        "<figure id=\"chart-{id}\"><figcaption>{caption}</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{caption}\">"
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 4.0,
            y(v) + 4.0,
            short(v),
            py = y(v)
        );
    }
    let ticks = x_ticks(x_max, percentiles);
    for (v, label) in ticks {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            x(v),
            H - BOTTOM + 14.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"4\" y=\"14\">{y_label}</text>",
        LEFT + plot_w / 2.0,
        H - 2.0
    );
    for (n, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"line\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" \
             points=\"{}\"/><text x=\"{}\" y=\"14\" fill=\"{color}\" style=\"fill:{color}\">\
             &#9644; {name}</text>",
            path.join(" "),
            LEFT + 120.0 + 90.0 * n as f64
        );
    }
    if lines.iter().all(|(_, _, p)| p.is_empty()) {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">nothing measured</text>",
            W / 2.0,
            H / 2.0
        );
    }
    out.push_str("</svg></figure>\n");
}

/// Ticks along x: seconds, or percentiles at 0, 90, 99, 99.9 … .
fn x_ticks(x_max: f64, percentiles: bool) -> Vec<(f64, String)> {
    if percentiles {
        let names = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
        return names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, n.to_string()))
            .filter(|(v, _)| *v <= x_max)
            .collect();
    }
    let step = nice(x_max / 5.0).max(1.0);
    (0..=5)
        .map(|i| f64::from(i) * step)
        .filter(|v| *v <= x_max)
        .map(|v| (v, short(v)))
        .collect()
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (1 for nothing).
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&n| n >= v)
        .unwrap_or(10.0 * base)
}

/// A number for an axis: `1.5k`, `20`, `0.25`.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", trim(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim(v / 1e3)),
        v => trim(v),
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(problems: &'a [String], latency: &'a Latency, series: &'a [Second]) -> Page<'a> {
        Page {
            title: "mio-chat-load broadcast <test>".into(),
            problems,
            thresholds: &[],
            figures: vec![("sent".into(), "10".into())],
            latency,
            series,
        }
    }

    #[test]
    fn the_page_stands_alone_and_says_the_verdict_first() {
        let mut hist = report::new_histogram();
        for us in [900, 1000, 1100, 5000] {
            hist.record(us).unwrap();
        }
        let latency = Latency::of(&hist);
        let series: Vec<Second> = (0..3)
            .map(|t| Second {
                t_s: t,
                sent: 10,
                delivered: 40,
                p50_ms: Some(1.0),
                p99_ms: Some(5.0),
                connections: 4,
            })
            .collect();
        let ok = render(&page(&[], &latency, &series));
        assert!(ok.contains("class=\"ok\">result: OK"));
        assert!(
            ok.find("id=\"verdict\"") < ok.find("<svg"),
            "verdict on top"
        );
        assert_eq!(ok.matches("<svg").count(), 4);
        assert_eq!(ok.matches("class=\"line\"").count(), 6);
        assert!(!ok.contains("<script"));
        let svg_ns = "xmlns=\"http://www.w3.org/2000/svg\"";
        assert_eq!(ok.matches("http").count(), ok.matches(svg_ns).count());
        assert!(
            !ok.contains("src=") && !ok.contains("href="),
            "nothing fetched"
        );
        assert!(ok.contains("&lt;test&gt;"), "escaped");
        let problems = ["lost: 1 (first: <x>)".to_string()];
        let failed = render(&page(&problems, &latency, &series));
        assert!(failed.contains("class=\"failed\">result: FAILED"));
        assert!(failed.contains("<li>lost: 1 (first: &lt;x&gt;)</li>"));
        let empty = render(&page(&[], &Latency::default(), &[]));
        assert_eq!(empty.matches("nothing measured").count(), 4);
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(12.0), 20.0);
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(0.25), "0.25");
    }
}
