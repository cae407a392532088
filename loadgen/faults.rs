//! The faults a run can find in what the server sent, each under a fixed name that the report,
//! its `--json` form (`faults`) and the exit status all carry.
//!
//! A fault is kept as a count and the first instance described in words, so however wrong a
//! server is, the record stays a few lines long: one entry per kind, of which there are a dozen.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Something the server must never do. The names are what users (and tests) look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A message, notice or probe that never came, though something sent after it did.
    Lost,
    /// Messages sent but not delivered when the run ended, with nothing later of their
    /// sender's delivered either: still in flight (the server fell behind), or lost at the end.
    InFlight,
    /// The same message twice at one client.
    Duplicated,
    /// One sender's messages out of their sending order at one client.
    OutOfOrder,
    /// Two clients saw the same messages in different orders (the room has one order).
    Reordered,
    /// A message whose bytes are not the ones its sender sent.
    Changed,
    /// A message stamped later than the moment it arrived.
    FromTheFuture,
    /// A stamped message from a sender this run does not have.
    UnknownSender,
    /// A stamped message with a number its sender has not sent (yet).
    NeverSent,
    /// A chat message that none of our clients sent.
    Stray,
    /// A text frame that is not the chat's JSON envelope.
    NotChat,
    /// A binary frame (the chat only speaks text).
    Binary,
    /// A join or leave notice nobody's arrival or departure accounts for.
    ExtraNotice,
    /// Clients that stayed through the same events heard different sequences of notices.
    NoticeOrder,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Lost => "lost",
            Fault::InFlight => "in flight at the end",
            Fault::Duplicated => "duplicated",
            Fault::OutOfOrder => "out of order",
            Fault::Reordered => "reordered",
            Fault::Changed => "changed",
            Fault::FromTheFuture => "stamp from the future",
            Fault::UnknownSender => "unknown sender",
            Fault::NeverSent => "never sent",
            Fault::Stray => "stray message",
            Fault::NotChat => "not chat",
            Fault::Binary => "binary frame",
            Fault::ExtraNotice => "extra notice",
            Fault::NoticeOrder => "notice order",
        }
    }
}

/// How often one fault happened, and the first time in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub count: u64,
    pub first: String,
}

/// Every fault found so far.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    seen: BTreeMap<Fault, Entry>,
}

/// The longest description kept: details quote what the server sent, which may be long.
const MAX_DETAIL: usize = 200;

impl Faults {
    /// Counts `count` instances of `fault`; `detail` describes the first one and is only
    /// called for it, so that the common path builds no strings.
    pub fn record(&mut self, fault: Fault, count: u64, detail: impl FnOnce() -> String) {
        match self.seen.get_mut(&fault) {
            Some(entry) => entry.count += count,
            None => {
                let mut first = detail();
                truncate(&mut first, MAX_DETAIL);
                self.seen.insert(fault, Entry { count, first });
            }
        }
    }

    /// Sets the count of a fault already recorded (for counts only known at the end).
    pub fn set_count(&mut self, fault: Fault, count: u64) {
        if let Some(entry) = self.seen.get_mut(&fault) {
            entry.count = count;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn has(&self, fault: Fault) -> bool {
        self.seen.contains_key(&fault)
    }

    #[cfg(test)]
    pub fn count(&self, fault: Fault) -> u64 {
        self.seen.get(&fault).map_or(0, |e| e.count)
    }

    /// Adds `other`'s faults; where both have one, the first description stays this one's.
    pub fn merge(&mut self, other: &Faults) {
        for (&fault, entry) in &other.seen {
            self.record(fault, entry.count, || entry.first.clone());
        }
    }

    /// One line per fault for the report's verdict: `lost: 3 (first: ...)`.
    pub fn problems(&self, out: &mut Vec<String>) {
        for (fault, entry) in &self.seen {
            out.push(format!(
                "{}: {} (first: {})",
                fault.name(),
                entry.count,
                entry.first
            ));
        }
    }
}

impl Serialize for Faults {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.seen.len()))?;
        for (fault, entry) in &self.seen {
            map.serialize_entry(fault.name(), entry)?;
        }
        map.end()
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// A text the server sent, quoted for a report: at most 60 bytes of it.
pub fn quote(text: &str) -> String {
    let mut quoted = text.to_string();
    truncate(&mut quoted, 60);
    format!("{quoted:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_and_the_first_detail_stays() {
        let mut faults = Faults::default();
        assert!(faults.is_empty());
        faults.record(Fault::Lost, 2, || "first".into());
        faults.record(Fault::Lost, 3, || panic!("not asked again"));
        faults.record(Fault::Binary, 1, || "x".repeat(1000));
        assert_eq!(faults.count(Fault::Lost), 5);
        let mut lines = Vec::new();
        faults.problems(&mut lines);
        assert_eq!(lines[0], "lost: 5 (first: first)");
        assert!(lines[1].starts_with("binary frame: 1 (first: xxx"));
        assert!(lines[1].len() < 250, "details are bounded");
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["lost"]["count"], 5);
        assert_eq!(json["binary frame"]["count"], 1);
        let mut other = Faults::default();
        other.record(Fault::Lost, 1, || "other".into());
        other.record(Fault::Reordered, 1, || "r".into());
        faults.merge(&other);
        assert_eq!(faults.count(Fault::Lost), 6);
        assert!(faults.has(Fault::Reordered));
    }

    #[test]
    fn quotes_are_short_and_cut_on_characters() {
        assert_eq!(quote("hi"), "\"hi\"");
        let long = quote(&"ü".repeat(100));
        assert!(long.len() < 70 && long.ends_with("…\""), "{long}");
    }
}
