//! The backplane's bookkeeping, with no sockets: the envelopes this process published and Redis
//! has not handed back yet, their sequence numbers, and what each envelope from the channel
//! means for the local room.
//!
//! The rules, each unit-tested below:
//! - our envelope that comes back lands in the room then (with its joiner, so that a newcomer
//!   joins the room at its own notice), so every process sees Redis's order;
//! - one of ours that comes back while older ones of ours are still pending proves those were
//!   lost on the way (Redis keeps one connection's order): they land first, locally;
//! - one that comes back after it was landed (late, or after an outage) is skipped by its number:
//!   nothing is delivered twice;
//! - on an outage every pending envelope lands locally, in order: a local message is never lost;
//! - what lands for one of ours is what we published, not what came back: the echo only
//!   acknowledges it (anyone who can write to the channel can forge our node id);
//! - another process's message longer than our `--max-message-size` is skipped and counted: no
//!   client here could have sent it, and its copies could drop every reader as a slow consumer.
//! - every envelope from another process says it is alive ([`Peers`]); this process beats and
//!   judges the silent ones ([`Ledger::keep_alive`]), and says `hello` when its links come up
//!   ([`Ledger::up`]); a verdict of ours that never came back through Redis is judged again;
//! - `beat`, and a `gone` or `hello` or `roster` that did not go through Redis, land nothing.

use std::collections::VecDeque;
use std::time::Instant;

use log::{debug, warn};

use crate::envelope::{self, Envelope, Kind, Unusable};
use crate::message::MemberId;
use crate::metrics::BackplaneStats;
use crate::presence::{Landing, Member};

use super::peers::Peers;

/// One of our envelopes on its way through Redis.
#[derive(Debug)]
struct Pending {
    seq: u64,
    kind: Kind,
    /// The client it is about.
    member: Member,
    body: String,
    /// When it was published: it must come back within the backplane's timeout.
    at: Instant,
}

impl Pending {
    /// How it lands here: `through_redis` if Redis handed it back, else by the backplane itself.
    fn landing<'a>(&'a self, node: &'a str, through_redis: bool) -> Option<Landing<'a>> {
        let who = MemberId {
            node,
            id: self.member.1,
        };
        let local = (self.kind == Kind::Join).then_some(self.member);
        landing(self.kind, local, who, &self.body, through_redis)
    }
}

/// What an envelope means for the room; `None` for a heartbeat. A verdict or a `hello` that
/// never went through Redis means nothing: the others never heard it.
fn landing<'a>(
    kind: Kind,
    local: Option<Member>,
    who: MemberId<'a>,
    body: &'a str,
    through_redis: bool,
) -> Option<Landing<'a>> {
    Some(match kind {
        Kind::Join => Landing::Join {
            local,
            who,
            through_redis,
        },
        Kind::Rejoin => Landing::Join {
            local: None,
            who,
            through_redis,
        },
        Kind::Leave => Landing::Leave { who },
        Kind::Message => Landing::Message { from: who, body },
        Kind::Gone if through_redis && body == who.node => Landing::Farewell { node: body },
        Kind::Gone if through_redis => Landing::Gone { node: body },
        Kind::Hello if through_redis => Landing::Hello { node: who.node },
        Kind::Roster if through_redis => Landing::Roster {
            node: who.node,
            begin: body == "begin",
        },
        Kind::Beat | Kind::Gone | Kind::Hello | Kind::Roster => return None,
    })
}

/// A verdict of ours that never went through Redis: nobody acted on it, so the process it named
/// is judged again if it stays silent (it was forgotten when judged). Not our own farewell.
fn lost_verdict(peers: &mut Peers, pending: &Pending, node: &str) {
    if pending.kind == Kind::Gone && pending.body != node {
        peers.heard(&pending.body, pending.at);
    }
}

/// What a pending envelope costs beyond its body, for [`Ledger::pending_bytes`].
const PENDING_OVERHEAD: usize = 64;

/// What this process published and what it received, envelope by envelope.
#[derive(Debug)]
pub struct Ledger {
    node: String,
    next_seq: u64,
    /// Our envelopes not yet handed back by the subscription, oldest first.
    pending: VecDeque<Pending>,
    /// Bytes of the bodies in `pending` (what Redis holds of ours without handing it back).
    pending_bytes: usize,
    /// The longest body that lands from another process (our `--max-message-size`).
    max_body: usize,
    /// The last envelope's JSON (reused).
    scratch: Vec<u8>,
    stats: BackplaneStats,
    /// The other processes heard through Redis, and when.
    pub peers: Peers,
    /// This process said farewell (it is shutting down): it beats and judges no more.
    farewell: bool,
}

impl Ledger {
    /// A ledger for a process named `node` (see [`envelope::new_node_id`]) whose clients may
    /// send messages of up to `max_body` bytes.
    pub fn new(node: String, max_body: usize) -> Ledger {
        Ledger {
            node,
            next_seq: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            max_body,
            scratch: Vec::new(),
            stats: BackplaneStats::default(),
            peers: Peers::new(crate::config::DEFAULT_NODE_TIMEOUT),
            farewell: false,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn stats(&self) -> BackplaneStats {
        BackplaneStats {
            pending: self.pending.len() as u64,
            ..self.stats
        }
    }

    /// Counts an outage (the links went down after being up).
    pub fn count_outage(&mut self) {
        self.stats.outages += 1;
    }

    /// Bytes of our envelopes in flight (their bodies, and a little for each).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// When our oldest envelope still in flight was published.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.at)
    }

    /// Records one event of this process's clients and returns its envelope's JSON, to publish.
    pub fn publish(&mut self, kind: Kind, body: &str, member: Member, now: Instant) -> &[u8] {
        self.farewell |= kind == Kind::Gone && body == self.node;
        self.next_seq += 1;
        self.scratch.clear();
        Envelope {
            v: envelope::VERSION,
            node: self.node.as_str().into(),
            seq: self.next_seq,
            kind,
            member: member.1,
            body: body.into(),
        }
        .write_to(&mut self.scratch);
        self.pending_bytes += PENDING_OVERHEAD + body.len();
        self.pending.push_back(Pending {
            seq: self.next_seq,
            kind,
            member,
            body: body.to_string(),
            at: now,
        });
        self.stats.published += 1;
        &self.scratch
    }

    /// While up, at `now`: this process's beat when it is due, and a verdict on each other
    /// process silent past `--node-timeout`; each envelope goes to `publish`.
    pub fn keep_alive(&mut self, now: Instant, publish: &mut dyn FnMut(&[u8])) {
        if self.farewell {
            return; // a beat after it would make the others track us again, and judge us
        }
        if self.peers.beat_due(now) {
            publish(self.publish(Kind::Beat, "", (0, 0), now));
        }
        for node in self.peers.judge(now) {
            warn!("cluster: process {node} silent past --node-timeout; declaring it gone");
            publish(self.publish(Kind::Gone, &node, (0, 0), now));
        }
    }

    /// The links came up at `now`: the others get a fresh grace period (their silence was
    /// ours), and this process says `hello` through `publish`, so that everyone re-announces
    /// their members to it (at start, the members that were there before it; after an outage,
    /// the members that are still there).
    pub fn up(&mut self, now: Instant, publish: &mut dyn FnMut(&[u8])) {
        self.peers.up(now);
        publish(self.publish(Kind::Hello, "", (0, 0), now));
    }

    /// Lands everything still pending, in order (the links broke: it would never come back).
    pub fn land_pending(&mut self, land: &mut dyn FnMut(Landing)) {
        self.pending_bytes = 0;
        for pending in self.pending.drain(..) {
            lost_verdict(&mut self.peers, &pending, &self.node);
            if let Some(landing) = pending.landing(&self.node, false) {
                land(landing);
            }
        }
    }

    /// One message from the channel.
    pub fn receive(&mut self, payload: &[u8], now: Instant, land: &mut dyn FnMut(Landing)) {
        let envelope = match Envelope::parse(payload) {
            Ok(envelope) => envelope,
            Err(unusable) => return self.skip(unusable),
        };
        if envelope.node != self.node {
            self.peers.heard(&envelope.node, now);
            if envelope.kind == Kind::Gone {
                self.peers.forget(&envelope.body); // judged: nobody else need judge it again
            }
            if envelope.body.len() > self.max_body {
                return self.skip(Unusable::TooLarge(envelope.body.len()));
            }
            self.stats.received += 1;
            let who = MemberId {
                node: &envelope.node,
                id: envelope.member,
            };
            if let Some(landing) = landing(envelope.kind, None, who, &envelope.body, true) {
                land(landing);
            }
            return;
        }
        // Ours, back from Redis: everything before it in `pending` went out before it, so
        // anything older still there was lost on the way (it lands now, so nobody here misses it).
        while let Some(front) = self.pending.front() {
            if front.seq > envelope.seq {
                return; // already landed: a duplicate
            }
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= PENDING_OVERHEAD + pending.body.len();
            self.stats.received += 1;
            let through_redis = pending.seq == envelope.seq;
            if through_redis {
                self.peers.heard_self(now);
            } else {
                lost_verdict(&mut self.peers, &pending, &self.node);
            }
            if let Some(landing) = pending.landing(&self.node, through_redis) {
                land(landing);
            }
            if through_redis {
                return;
            }
            debug!(
                "redis: envelope {} never came back; delivered locally",
                pending.seq
            );
        }
    }

    /// A message on the channel that is not an envelope this build reads: warned about once,
    /// counted always (a flood of them must not flood the log).
    fn skip(&mut self, unusable: Unusable) {
        self.stats.unusable += 1;
        let why = match unusable {
            Unusable::Version(v) => {
                format!(
                    "an envelope of version {v} (this build reads {})",
                    envelope::VERSION
                )
            }
            Unusable::Malformed(e) => format!("a message that is not an envelope ({e})"),
            Unusable::TooLarge(n) => {
                format!("a message of {n} bytes, over this process's --max-message-size")
            }
        };
        if self.stats.unusable == 1 {
            warn!("redis: skipped {why}; further ones are counted in /metrics");
        } else {
            debug!("redis: skipped {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What landed, in a form tests can compare.
    pub(crate) fn landed(landing: Landing) -> String {
        match landing {
            Landing::Join {
                local: Some((key, id)),
                through_redis,
                ..
            } => format!(
                "join {key}/{id}{}",
                if through_redis { "" } else { " here" }
            ),
            Landing::Join {
                local: None, who, ..
            } => format!("join {}.{}", who.node, who.id),
            Landing::Leave { who } => format!("leave {}.{}", who.node, who.id),
            Landing::Message { from, body } => format!("say {body} from {}.{}", from.node, from.id),
            Landing::Gone { node } => format!("gone {node}"),
            Landing::Farewell { node } => format!("farewell {node}"),
            Landing::Hello { node } => format!("hello {node}"),
            Landing::Roster { node, begin } => format!("roster {node} {begin}"),
            Landing::Back => "back".into(),
        }
    }

    /// An envelope as `node` would publish it about its member 7.
    fn envelope(node: &str, seq: u64, kind: Kind, body: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Envelope {
            v: envelope::VERSION,
            node: node.into(),
            seq,
            kind,
            member: 7,
            body: body.into(),
        }
        .write_to(&mut out);
        out
    }

    fn receive(l: &mut Ledger, payload: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        l.receive(payload, Instant::now(), &mut |x| got.push(landed(x)));
        got
    }

    fn ledger() -> Ledger {
        Ledger::new("me".into(), 1 << 16)
    }

    #[test]
    fn publishing_numbers_envelopes_and_keeps_them_pending() {
        let mut l = ledger();
        let join =
            String::from_utf8_lossy(l.publish(Kind::Join, "", (3, 9), Instant::now())).into_owned();
        let hi = String::from_utf8_lossy(l.publish(Kind::Message, "hi", (3, 9), Instant::now()))
            .into_owned();
        assert!(join.contains(r#""seq":1,"kind":"join""#), "{join}");
        assert!(
            hi.contains(r#""seq":2,"kind":"message","member":9,"body":"hi""#),
            "{hi}"
        );
        assert_eq!(l.stats().pending, 2);
    }

    #[test]
    fn our_envelopes_land_when_they_come_back_with_their_joiner() {
        let mut l = ledger();
        l.publish(Kind::Join, "", (3, 9), Instant::now());
        l.publish(Kind::Message, "hi", (3, 9), Instant::now());
        assert_eq!(
            receive(&mut l, &envelope("other", 5, Kind::Join, "")),
            ["join other.7"]
        );
        assert_eq!(
            receive(&mut l, &envelope("me", 1, Kind::Join, "")),
            ["join 3/9"]
        );
        assert_eq!(
            receive(&mut l, &envelope("me", 2, Kind::Message, "hi")),
            ["say hi from me.9"]
        );
        assert_eq!(l.stats().pending, 0);
        assert!(receive(&mut l, &envelope("me", 2, Kind::Message, "hi")).is_empty());
    }

    #[test]
    fn an_envelope_that_never_came_back_lands_before_the_next_one() {
        let mut l = ledger();
        l.publish(Kind::Message, "one", (3, 9), Instant::now());
        l.publish(Kind::Message, "two", (3, 9), Instant::now());
        assert_eq!(
            receive(&mut l, &envelope("me", 2, Kind::Message, "two")),
            ["say one from me.9", "say two from me.9"]
        );
        assert!(receive(&mut l, &envelope("me", 1, Kind::Message, "one")).is_empty());
    }

    #[test]
    fn an_outage_lands_everything_pending_in_order_once() {
        let mut l = ledger();
        l.publish(Kind::Join, "", (1, 1), Instant::now());
        l.publish(Kind::Message, "in flight", (1, 1), Instant::now());
        l.publish(Kind::Leave, "", (1, 1), Instant::now());
        let mut got = Vec::new();
        l.land_pending(&mut |x| got.push(landed(x)));
        assert_eq!(
            got,
            ["join 1/1 here", "say in flight from me.1", "leave me.1"]
        );
        l.land_pending(&mut |_| panic!("nothing pending"));
        assert!(receive(&mut l, &envelope("me", 2, Kind::Message, "in flight")).is_empty());
    }

    /// Our subscription stalls (Redis takes our beats but hands nothing back, or we are far
    /// behind in reading it): the others' silence is then ours, and judging them would send
    /// every process's members leaving everywhere. Silence counts only up to the last of our
    /// own envelopes that came back.
    #[test]
    fn silence_counts_only_up_to_the_last_of_our_own_envelopes_back() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut l = ledger();
        l.peers.up(t0);
        l.receive(&envelope("other", 1, Kind::Beat, ""), t0, &mut |_| {});
        let mut verdicts = 0;
        for ms in (0..=12_000).step_by(500) {
            l.keep_alive(at(ms), &mut |e| {
                verdicts += usize::from(String::from_utf8_lossy(e).contains(r#""gone""#))
            });
        }
        assert_eq!(verdicts, 0, "nothing of ours came back: we know nothing");
        assert!(l.peers.next_deadline() > at(12_000), "and no busy wait");
        l.receive(
            &envelope("me", l.next_seq, Kind::Beat, ""),
            at(12_100),
            &mut |_| {},
        );
        l.keep_alive(at(12_200), &mut |e| {
            verdicts += usize::from(String::from_utf8_lossy(e).contains(r#""gone""#))
        });
        assert_eq!(verdicts, 1, "ours came back after 12 s of its silence");
    }

    #[test]
    fn foreign_payloads_are_skipped_and_counted() {
        let mut l = ledger();
        assert!(receive(&mut l, b"not json").is_empty());
        assert!(receive(&mut l, br#"{"v":9,"node":"x","seq":1,"kind":"join"}"#).is_empty());
        assert_eq!(l.stats().unusable, 2);
    }

    #[test]
    fn what_lands_for_ours_is_what_we_published_not_the_echo() {
        let mut l = ledger();
        l.publish(Kind::Join, "", (3, 9), Instant::now());
        let forged = receive(&mut l, &envelope("me", 1, Kind::Message, "forged"));
        assert_eq!(forged, ["join 3/9"]);
        assert_eq!(l.pending_bytes(), 0);
    }

    #[test]
    fn a_foreign_message_longer_than_ours_may_be_is_skipped_and_counted() {
        let mut l = Ledger::new("me".into(), 10);
        assert_eq!(
            receive(&mut l, &envelope("other", 1, Kind::Message, "0123456789")),
            ["say 0123456789 from other.7"]
        );
        assert!(receive(&mut l, &envelope("other", 2, Kind::Message, "01234567890")).is_empty());
        assert_eq!(l.stats().unusable, 1);
    }
}
