//! Who is in the room, and how each member was announced: the one owner of joins and leaves.
//!
//! Every path by which a client comes or goes passes through here: a handshake completing, an
//! ending in the same read as that handshake, a drop during the fan-out, a ping timeout,
//! shutdown, and Redis going down or coming back. The event loop only reports what happened
//! ([`Presence::join`], [`Presence::said`], [`Presence::leave`], [`Presence::land`]); the
//! decisions about notices live in this file alone.
//!
//! **The invariant.** At every client of every process, every join notice for a member X is
//! followed by exactly one leave notice for X (unless the client leaves first), never a leave
//! without its join, and everything that went through Redis comes in Redis's one order. It
//! holds because of one record and three rules:
//!
//! - **`shown`**: per process (its node id, this one's included), the ids of its members whose
//!   join this process has shown its clients. A join notice goes out only for an id not in it
//!   (and puts it in); a leave notice only for an id in it (and takes it out). So a join
//!   announced again (a process that comes back re-announces all of its members) is shown once,
//!   and a leave for a member never shown, or already shown leaving, is not shown at all.
//! - A **message** from a member not shown is preceded by its join notice: every process meets
//!   the message at the same place in Redis's order, so they all decide the same.
//! - A **verdict** "process X is gone" (published by whichever process noticed X silent past
//!   `--node-timeout`, see `backplane/peers.rs`) makes every process show a leave for each
//!   member of X it shows, where the verdict sits in Redis's order, by ascending id; a second
//!   verdict finds nothing left to show.
//! - **Coming back**: a process whose Redis link came up (at start, or healed), or that meets
//!   the verdict about itself (it was stalled), or that hears another process say `hello` (it
//!   came up), re-announces its members, before anything its clients say next: a `roster`
//!   begin mark, a leave for each member that left while it was cut off (shown only here
//!   then), a `rejoin` for each member now here, and a `roster` end mark. At the begin mark
//!   every receiver marks that process's members it shows as unconfirmed; any notice or
//!   message about one confirms it; at the end mark those still unconfirmed are shown leaving.
//!   With the rules above, the re-announcement makes every receiver's view of that process
//!   exact, whatever it missed; a short cut is silent for everyone.
//!
//! While a process is cut off from Redis its clients form a room of their own: joins, leaves and
//! messages go into its batch only, and the others, after `--node-timeout`, show its members
//! leaving. When the link heals both sides become true again as above. A restarted process is a
//! new node; its predecessor's members are shown leaving by the verdict.
//! `tests/it/presence_properties.rs` checks the invariant over random interleavings with a fake
//! Redis, `tests/it/cluster_properties.rs` over random schedules of crashes, cuts and stalls of
//! 2 to 5 processes on a simulated Redis, and `tests/it/cluster_faults.rs` with real processes
//! killed, stopped, cut off, restarted, with Redis restarted, and with forged envelopes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use log::{debug, info};

use crate::envelope::Kind;

use crate::message::{self, MemberId, V2Frame, Version};
use crate::room::{Batch, Room};

/// How many verdicts [`Presence`] remembers acting on (the latest): enough for the second and
/// later verdicts on one process, which come within a beat or two of the first, and bounded
/// against verdicts forged about processes that never existed.
const JUDGED_KEPT: usize = 64;

/// A local client: its slab key and its id (keys are reused; ids are not).
pub type Member = (usize, u64);

/// Where events go that every process must see: the Redis backplane, while it is up.
pub trait Publish {
    /// Sends one event about `member`, one of this process's clients.
    fn publish(&mut self, kind: Kind, body: &str, member: Member);
}

/// An event for the local room, handed back by Redis (or, in an outage, by the backplane's own
/// record of what it had published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing<'a> {
    /// Someone joined: `who`. `local` is set when it is one of this process's clients;
    /// `through_redis` says whether Redis handed it back (every subscribed process saw it) or
    /// the backplane landed it itself when the link broke.
    Join {
        local: Option<Member>,
        who: MemberId<'a>,
        through_redis: bool,
    },
    Leave {
        who: MemberId<'a>,
    },
    Message {
        from: MemberId<'a>,
        body: &'a str,
    },
    /// The verdict that process `node` is gone (the first of them in Redis's order counts).
    Gone {
        node: &'a str,
    },
    /// Process `node` shut down (its clients' leaves went before this): no verdict is needed.
    Farewell {
        node: &'a str,
    },
    /// Process `node` came back after a cut and asks everyone to re-announce their members.
    Hello {
        node: &'a str,
    },
    /// Process `node` begins (`begin`) or ends re-announcing all of its members.
    Roster {
        node: &'a str,
        begin: bool,
    },
    /// This process's link to Redis came back after an outage.
    Back,
}

/// How a client's join notice went out; its leave notice must go the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Announced {
    #[default]
    No,
    /// Into this process's batch only.
    Locally { id: u64, version: Version },
    /// Published through Redis; a member here, getting frames of `version`, once Redis hands
    /// the join back.
    ThroughRedis { id: u64, version: Version },
}

/// The room, this turn's batch, and how every client in it was announced.
#[derive(Debug, Default)]
pub struct Presence {
    room: Room,
    batch: Batch,
    /// `announced[key]`, for every client key that has ever joined.
    announced: Vec<Announced>,
    /// This process's name in member ids (see [`MemberId`]): its node id with `--redis`, so
    /// that ids agree with what Redis carries, else empty.
    node: Arc<str>,
    /// `--max-message-size`, which version 2's `hello` tells each newcomer.
    max_message_size: usize,
    /// Per process (by node id, this one's included): its members whose join this process has
    /// shown to its clients (see the invariant above).
    shown: HashMap<String, BTreeSet<u64>>,
    /// The ids in `shown`, counted as they come and go (not summed per notice: a flood of
    /// joins forged from many node ids would make that quadratic).
    online: usize,
    /// Ids of this process's members that joined through Redis and left while it was cut off:
    /// shown leaving here only, their leaves are owed to the others at the heal.
    left_while_cut: Vec<u64>,
    /// This process must re-announce its members (see [`Presence::reannounce`]).
    rejoin_due: bool,
    /// Per other process re-announcing its members: those shown here that it has not confirmed
    /// yet (its `roster` end mark shows them leaving).
    unconfirmed: HashMap<String, BTreeSet<u64>>,
    /// The latest processes judged gone (a verdict on each landed here), at most
    /// [`JUDGED_KEPT`]: a later verdict on one of them is not counted again.
    judged: VecDeque<String>,
    /// Of them, how many (`mio_chat_cluster_processes_gone_total`).
    pub processes_gone: u64,
}

impl Presence {
    /// An empty room of the process named `node` (empty without Redis), whose clients may send
    /// messages of up to `max_message_size` bytes.
    pub fn new(node: String, max_message_size: usize) -> Presence {
        Presence {
            node: node.into(),
            max_message_size,
            ..Presence::default()
        }
    }

    /// A client completed its handshake on the chat route, asking for frames of `version`. With
    /// `redis`, its join is published and it becomes a member when Redis hands it back; without,
    /// it is a member now, and gets the batch from its own notice on.
    pub fn join(&mut self, (key, id): Member, version: Version, redis: Option<&mut dyn Publish>) {
        match redis {
            Some(redis) => {
                self.record(key, Announced::ThroughRedis { id, version });
                redis.publish(Kind::Join, "", (key, id));
            }
            None => {
                self.record(key, Announced::Locally { id, version });
                self.admit(key, id, version);
                let node = Arc::clone(&self.node);
                self.show_join(MemberId { node: &node, id });
            }
        }
    }

    /// Shows `who`'s join unless it is shown already; returns whether it did.
    fn show_join(&mut self, who: MemberId) -> bool {
        self.confirm(who);
        // Looked up before inserting: every message landing passes here, and `entry` would
        // allocate the node id each time.
        let inserted = match self.shown.get_mut(who.node) {
            Some(set) => set.insert(who.id),
            None => (self
                .shown
                .insert(who.node.to_string(), BTreeSet::from([who.id])))
            .is_none(),
        };
        if !inserted {
            return false;
        }
        self.online += 1;
        self.batch.joined(who, self.online);
        true
    }

    /// Shows `who`'s leave if its join was shown; returns whether it did.
    fn show_leave(&mut self, who: MemberId) -> bool {
        self.confirm(who);
        let Some(set) = self.shown.get_mut(who.node) else {
            return false;
        };
        if !set.remove(&who.id) {
            return false;
        }
        if set.is_empty() && who.node != &*self.node {
            self.shown.remove(who.node);
        }
        self.online -= 1;
        self.batch.left(who, self.online);
        true
    }

    /// Makes `key` a member, at this point of the batch; a version 2 one is greeted first.
    fn admit(&mut self, key: usize, id: u64, version: Version) {
        self.room.join(key, version, &mut self.batch);
        if version == Version::V2 {
            let mut hello = Vec::new();
            let hello_frame = V2Frame::Hello {
                you: MemberId {
                    node: &self.node,
                    id,
                },
                max_message_size: self.max_message_size,
                time: message::unix_millis(SystemTime::now()),
            };
            message::push_v2_frame(&mut hello, &hello_frame);
            self.room.greet(key, hello.into_boxed_slice());
        }
    }

    /// Client `(key, id)` said `text`: through Redis when it is up, so every process sees one
    /// order.
    pub fn said(&mut self, (key, id): Member, text: &str, redis: Option<&mut dyn Publish>) {
        match redis {
            Some(redis) => redis.publish(Kind::Message, text, (key, id)),
            None => {
                let from = MemberId {
                    node: &self.node,
                    id,
                };
                self.batch.said(from, text)
            }
        }
    }

    /// Client `key` is gone, for whatever reason. Its leave notice goes the way its join went;
    /// a client never announced (or already gone) makes no notice. Returns whether it made one.
    pub fn leave(&mut self, key: usize, redis: Option<&mut dyn Publish>) -> bool {
        let announced = self.announced.get_mut(key).map(std::mem::take);
        let was_member = self.room.leave(key);
        // A counted handle, not a copy: churn without Redis passes here once per leave.
        let node = Arc::clone(&self.node);
        match (announced, redis) {
            // Through Redis whenever it is up, even for a join shown here only: it then comes
            // back after everything this member said, and the others, who never showed its join,
            // skip it.
            (
                Some(Announced::Locally { id, .. } | Announced::ThroughRedis { id, .. }),
                Some(redis),
            ) => {
                redis.publish(Kind::Leave, "", (key, id));
                true
            }
            (Some(Announced::Locally { id, .. }), None) => {
                self.show_leave(MemberId { node: &node, id })
            }
            // Cut off from Redis: only this process can be told now, and only if it saw the
            // join; the others are told at the heal.
            (Some(Announced::ThroughRedis { id, .. }), None) if was_member => {
                self.left_while_cut.push(id);
                self.show_leave(MemberId { node: &node, id })
            }
            _ => false,
        }
    }

    /// Everyone here leaves at once (shutdown): nobody here is told, since all of them are going;
    /// the other processes are, for the clients they were told about, and then told that this
    /// process is going (a `gone` naming itself), so that none of them judges its silence.
    pub fn leave_all(&mut self, mut redis: Option<&mut dyn Publish>) {
        for (key, announced) in self.announced.drain(..).enumerate() {
            if let (Announced::ThroughRedis { id, .. }, Some(redis)) = (announced, redis.as_mut()) {
                redis.publish(Kind::Leave, "", (key, id));
            }
        }
        if let Some(redis) = redis {
            redis.publish(Kind::Gone, &self.node, (usize::MAX, 0));
        }
        self.room.clear();
    }

    /// Puts one event from the backplane into the batch. A join of one of our own clients that is
    /// still here makes it a member at this point of the batch.
    pub fn land(&mut self, landing: Landing) {
        match landing {
            Landing::Join {
                local,
                who,
                through_redis,
            } => {
                if let Some((key, id)) = local {
                    self.admit_echoed(key, id, through_redis);
                }
                self.show_join(who);
            }
            Landing::Leave { who } => {
                self.show_leave(who);
            }
            Landing::Message { from, body } => {
                self.show_join(from); // a member shown gone that speaks is back: one order
                self.batch.said(from, body)
            }
            Landing::Gone { node } if node == &*self.node => {
                info!("cluster: declared gone by another process; re-announcing our members");
                self.rejoin_due = true;
            }
            Landing::Gone { node } => self.show_gone(node),
            Landing::Farewell { node } if node == &*self.node => {}
            Landing::Farewell { node } => {
                self.unconfirmed.remove(node);
                let ids = self.shown.get(node).cloned().unwrap_or_default();
                let left = self.show_leaves(node, &ids);
                info!("cluster: process {node} shut down; {left} members shown leaving");
            }
            Landing::Hello { node } if node != &*self.node => self.rejoin_due = true,
            Landing::Hello { .. } => {}
            Landing::Roster { node, .. } if node == &*self.node => {}
            // Nothing shown of it, nothing to confirm: no record (a begin without its end, or
            // forged about a process that never existed, must leave nothing behind).
            Landing::Roster { node, begin: true } => match self.shown.get(node) {
                Some(ids) => _ = self.unconfirmed.insert(node.to_string(), ids.clone()),
                None => _ = self.unconfirmed.remove(node),
            },
            Landing::Roster { node, begin: false } => self.roster(node),
            Landing::Back => self.back(),
        }
    }

    /// `who` is known to be a member (or known to leave): no longer unconfirmed.
    fn confirm(&mut self, who: MemberId) {
        if let Some(ids) = self.unconfirmed.get_mut(who.node) {
            ids.remove(&who.id);
        }
    }

    /// A leave for each of `ids` of `node` that is shown, by ascending id; returns how many.
    fn show_leaves(&mut self, node: &str, ids: &BTreeSet<u64>) -> usize {
        (ids.iter())
            .filter(|&&id| self.show_leave(MemberId { node, id }))
            .count()
    }

    /// The verdict on `node`: a leave for each of its members shown, by ascending id. The first
    /// verdict on a process is counted and logged; a later one (another process judged it too)
    /// finds nothing to show.
    fn show_gone(&mut self, node: &str) {
        self.unconfirmed.remove(node);
        let ids = self.shown.get(node).cloned().unwrap_or_default();
        let left = self.show_leaves(node, &ids);
        if !self.judged.iter().any(|judged| judged == node) {
            if self.judged.len() == JUDGED_KEPT {
                self.judged.pop_front();
            }
            self.judged.push_back(node.to_string());
            self.processes_gone += 1;
            info!("cluster: process {node} is gone; {left} of its members shown leaving");
        } else {
            debug!("cluster: process {node} judged gone again; {left} members shown leaving");
        }
    }

    /// The link came up: whatever the others did meanwhile is unknown here. They were asked to
    /// re-announce (the backplane said `hello`); ours are re-announced now.
    fn back(&mut self) {
        self.rejoin_due = true;
    }

    /// `node` re-announced all of its members: those still unconfirmed have left.
    fn roster(&mut self, node: &str) {
        let Some(ids) = self.unconfirmed.remove(node) else {
            return;
        };
        let left = self.show_leaves(node, &ids);
        if left > 0 {
            info!("cluster: {left} members of process {node} left while we were cut off");
        }
    }

    /// Whether this process owes the others a re-announcement of its members.
    pub fn rejoin_due(&self) -> bool {
        self.rejoin_due
    }

    /// Re-announces this process's members through `redis`: a leave for each that left while
    /// it was cut off, then a `rejoin` for each member now here. Announced through Redis from now
    /// on, so their leaves are published. Returns (leaves, rejoins) published.
    pub fn reannounce(&mut self, redis: &mut dyn Publish) -> (usize, usize) {
        self.rejoin_due = false;
        redis.publish(Kind::Roster, "begin", (usize::MAX, 0));
        let leaves = self.left_while_cut.len();
        for id in self.left_while_cut.drain(..) {
            redis.publish(Kind::Leave, "", (usize::MAX, id));
        }
        let mut rejoins = 0;
        for (key, announced) in self.announced.iter_mut().enumerate() {
            let (Announced::Locally { id, version } | Announced::ThroughRedis { id, version }) =
                *announced
            else {
                continue;
            };
            // A join still on its way through Redis is announced again too: it comes before
            // the begin mark, and the end mark must not take it for a member gone.
            *announced = Announced::ThroughRedis { id, version };
            redis.publish(Kind::Rejoin, "", (key, id));
            rejoins += 1;
        }
        redis.publish(Kind::Roster, "", (usize::MAX, 0));
        info!("cluster: re-announced {rejoins} members and {leaves} leaves");
        (leaves, rejoins)
    }

    /// Per process, the number of its members shown here (for `/metrics`).
    pub fn shown_per_node(&self) -> impl Iterator<Item = (&str, usize)> {
        self.shown
            .iter()
            .map(|(node, ids)| (node.as_str(), ids.len()))
    }

    fn admit_echoed(&mut self, key: usize, id: u64, through_redis: bool) {
        let Some(&Announced::ThroughRedis {
            id: waiting,
            version,
        }) = self.announced.get(key)
        else {
            return; // it left before its join came back: the others hear both, it needs neither
        };
        if waiting != id {
            return; // a join of an earlier client with this key
        }
        if !through_redis {
            // Landed by the backplane itself when the link broke: the others may never hear it.
            self.record(key, Announced::Locally { id, version });
        }
        self.admit(key, id, version);
    }

    fn record(&mut self, key: usize, announced: Announced) {
        if key >= self.announced.len() {
            self.announced.resize(key + 1, Announced::No);
        }
        self.announced[key] = announced;
    }

    /// Hands the batch to every member (see [`Room::hand_out`]); returns frames handed over.
    pub fn hand_out_batch(&mut self, deliver: impl FnMut(usize, &[u8]) -> bool) -> u64 {
        self.room.hand_out(&mut self.batch, deliver)
    }

    /// This turn's frames for the room, not yet fanned out.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The room's members as version 2's `online` counts them: those shown joining and not
    /// leaving, of every process (so it follows the notices exactly, a leave on its way through
    /// Redis included).
    pub fn online(&self) -> usize {
        self.online
    }

    /// Members of the room here (clients that receive its frames).
    pub fn members(&self) -> usize {
        self.room.len()
    }

    pub fn is_member(&self, key: usize) -> bool {
        self.room.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, JOINED, LEFT};
    use std::collections::HashMap;

    /// Redis as a list of what was published.
    #[derive(Default)]
    struct Published(Vec<(Kind, String, Option<Member>)>);

    impl Publish for Published {
        fn publish(&mut self, kind: Kind, body: &str, member: Member) {
            self.0.push((
                kind,
                body.to_string(),
                (kind == Kind::Join).then_some(member),
            ));
        }
    }

    /// Fans the batch out and returns what each member got, as bodies.
    fn fan_out(p: &mut Presence) -> HashMap<usize, Vec<String>> {
        let mut got: HashMap<usize, Vec<String>> = HashMap::new();
        p.hand_out_batch(|key, mut frames| {
            while !frames.is_empty() {
                let len = frames[1] as usize; // short frames only here
                let msg: Message = serde_json::from_slice(&frames[2..2 + len]).expect("json");
                got.entry(key).or_default().push(msg.body.into_owned());
                frames = &frames[2 + len..];
            }
            true
        });
        got
    }

    #[test]
    fn a_local_join_and_leave_in_one_turn_balance() {
        let mut p = Presence::default();
        p.join((0, 1), Version::V1, None);
        fan_out(&mut p);
        p.join((1, 2), Version::V1, None);
        p.said((9, 9), "hi", None);
        assert!(
            p.leave(1, None),
            "a join in this very turn still gets its leave"
        );
        assert_eq!(fan_out(&mut p)[&0], [JOINED, "hi", LEFT]);
        assert!(!p.leave(1, None), "one leave per join");
        assert!(!p.leave(7, None), "no leave without a join");
    }

    #[test]
    fn a_join_through_redis_becomes_a_member_when_it_comes_back() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((3, 9), Version::V1, Some(&mut redis));
        assert_eq!(redis.0, [(Kind::Join, String::new(), Some((3, 9)))]);
        assert!(!p.is_member(3));
        p.land(Landing::Join {
            local: Some((3, 9)),
            who: MemberId::default(),
            through_redis: true,
        });
        assert!(p.is_member(3));
        assert_eq!(fan_out(&mut p)[&3], [JOINED]);
        assert!(p.leave(3, Some(&mut redis)));
        assert_eq!(redis.0[1].0, Kind::Leave);
        assert!(
            p.batch().is_empty(),
            "the leave comes back through Redis too"
        );
    }

    #[test]
    fn a_stale_or_departed_joiner_is_not_admitted_but_everyone_hears_the_join() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((3, 9), Version::V1, Some(&mut redis));
        assert!(
            p.leave(3, Some(&mut redis)),
            "published before the join came back"
        );
        for id in [9, 8] {
            p.land(Landing::Join {
                local: Some((3, id)),
                who: MemberId { node: "", id },
                through_redis: true,
            });
            assert!(!p.is_member(3));
        }
        let mut two_joins = Batch::default();
        two_joins.joined(MemberId { node: "", id: 9 }, 0);
        two_joins.joined(MemberId { node: "", id: 8 }, 0);
        assert_eq!(p.batch().as_bytes(), two_joins.as_bytes());
    }

    #[test]
    fn a_join_landed_in_an_outage_leaves_through_redis_once_it_is_back() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((0, 1), Version::V1, None);
        p.join((4, 5), Version::V1, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((4, 5)),
            who: MemberId { node: "", id: 5 },
            through_redis: false,
        });
        fan_out(&mut p);
        assert!(p.leave(4, Some(&mut redis)));
        assert_eq!(
            redis.0[1].0,
            Kind::Leave,
            "after all it said, through Redis"
        );
        assert!(p.batch().is_empty());
        p.land(Landing::Leave {
            who: MemberId { node: "", id: 5 },
        });
        assert_eq!(fan_out(&mut p)[&0], [LEFT]);
    }

    #[test]
    fn a_member_through_redis_that_leaves_in_an_outage_is_told_here() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((0, 1), Version::V1, None);
        p.join((2, 3), Version::V1, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((2, 3)),
            who: MemberId { node: "", id: 3 },
            through_redis: true,
        });
        fan_out(&mut p);
        assert!(p.leave(2, None));
        assert_eq!(fan_out(&mut p)[&0], [LEFT]);
    }

    #[test]
    fn shutdown_publishes_a_leave_for_each_client_announced_through_redis() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((0, 1), Version::V1, None);
        p.join((1, 2), Version::V1, Some(&mut redis));
        p.join((2, 3), Version::V1, Some(&mut redis));
        p.leave_all(Some(&mut redis));
        let leaves = redis.0.iter().filter(|(k, _, _)| *k == Kind::Leave).count();
        assert_eq!(leaves, 2);
        assert_eq!(
            redis.0.last().map(|(k, _, _)| *k),
            Some(Kind::Gone),
            "then a farewell"
        );
        assert_eq!(p.members(), 0);
        assert!(
            !p.leave(0, None) && !p.leave(1, None),
            "nothing is owed after shutdown"
        );
    }

    #[test]
    fn online_counts_members_here_and_those_heard_joining_elsewhere() {
        let (mut p, mut redis) = (Presence::new("me".into(), 100), Published::default());
        let other = |id| MemberId { node: "other", id };
        p.join((0, 1), Version::V2, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((0, 1)),
            who: MemberId { node: "me", id: 1 },
            through_redis: true,
        });
        for id in [5, 6] {
            p.land(Landing::Join {
                local: None,
                who: other(id),
                through_redis: true,
            });
        }
        assert_eq!(p.online(), 3);
        p.land(Landing::Leave { who: other(5) });
        assert_eq!(p.online(), 2);
        p.land(Landing::Leave { who: other(9) }); // joined before we listened
        p.land(Landing::Leave { who: other(6) });
        assert_eq!(p.online(), 1, "never below this process's own members");
        let frames = String::from_utf8_lossy(p.batch().v2_bytes()).into_owned();
        for expected in [
            r#""type":"join","id":"me.1","online":1"#,
            r#""type":"join","id":"other.6","online":3"#,
            r#""type":"leave","id":"other.5","online":2"#,
            r#""type":"leave","id":"other.6","online":1"#,
        ] {
            assert!(frames.contains(expected), "{expected} in {frames}");
        }
    }

    /// The notices in the batch (version 2 frames), as "join node.id" / "leave node.id" /
    /// "message node.id".
    fn notices(p: &Presence) -> Vec<String> {
        let text = String::from_utf8_lossy(p.batch().v2_bytes()).into_owned();
        text.split(r#"{"type":""#)
            .skip(1)
            .map(|frame| {
                let kind = frame.split('"').next().unwrap_or("?");
                let id = (frame.split(r#""id":""#).nth(1))
                    .or(frame.split(r#""from":""#).nth(1))
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("?");
                format!("{kind} {id}")
            })
            .collect()
    }

    /// A presence named "me" with a version 2 watcher (key 50, id 100; only version 2 members
    /// make the batch's version 2 frames), its own join notice taken out.
    fn watched() -> Presence {
        let mut p = Presence::new("me".into(), 100);
        p.join((50, 100), Version::V2, None);
        p.hand_out_batch(|_, _| true);
        p
    }

    fn other(node: &str, id: u64) -> MemberId<'_> {
        MemberId { node, id }
    }

    fn join(who: MemberId) -> Landing {
        Landing::Join {
            local: None,
            who,
            through_redis: true,
        }
    }

    #[test]
    fn joins_are_shown_once_and_leaves_only_after_their_join() {
        let mut p = watched();
        p.land(join(other("b", 1)));
        p.land(join(other("b", 1))); // a rejoin
        p.land(Landing::Leave { who: other("b", 2) }); // never shown
        p.land(Landing::Leave { who: other("b", 1) });
        p.land(Landing::Leave { who: other("b", 1) }); // twice
        assert_eq!(
            notices(&p).iter().filter(|n| n.starts_with("join")).count(),
            1
        );
        assert_eq!(
            notices(&p)
                .iter()
                .filter(|n| n.starts_with("leave"))
                .count(),
            1
        );
        assert_eq!(p.online(), 1);
    }

    #[test]
    fn a_message_from_a_member_not_shown_brings_its_join_first() {
        let mut p = watched();
        p.land(Landing::Message {
            from: other("b", 4),
            body: "hi",
        });
        p.land(join(other("b", 4)));
        let n = notices(&p);
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(n[0], "join b.4");
        assert_eq!(p.online(), 2);
    }

    #[test]
    fn the_first_verdict_shows_each_member_leaving_in_id_order_and_the_next_nothing() {
        let mut p = watched();
        for id in [7, 3, 5] {
            p.land(join(other("b", id)));
        }
        p.land(join(other("c", 1)));
        p.land(Landing::Gone { node: "b" });
        p.land(Landing::Gone { node: "b" });
        let leaves: Vec<_> = notices(&p)
            .into_iter()
            .filter(|n| n.starts_with("leave"))
            .collect();
        assert_eq!(leaves, ["leave b.3", "leave b.5", "leave b.7"]);
        assert_eq!(p.online(), 2);
        assert!(!p.rejoin_due());
    }

    #[test]
    fn a_verdict_on_this_process_shows_nothing_here_and_re_announces_its_members() {
        let (mut p, mut redis) = (watched(), Published::default());
        p.join((0, 1), Version::V1, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((0, 1)),
            who: other("me", 1),
            through_redis: true,
        });
        p.join((1, 2), Version::V1, Some(&mut redis)); // not back yet: not re-announced
        let before = notices(&p).len();
        p.land(Landing::Gone { node: "me" });
        assert_eq!(notices(&p).len(), before);
        assert!(p.rejoin_due());
        redis.0.clear();
        assert_eq!(
            p.reannounce(&mut redis),
            (0, 3),
            "the watcher, 1, and 2 on its way"
        );
        let kinds: Vec<Kind> = redis.0.iter().map(|(k, _, _)| *k).collect();
        let rejoin = Kind::Rejoin;
        assert_eq!(kinds, [Kind::Roster, rejoin, rejoin, rejoin, Kind::Roster]);
        // Its own rejoin coming back shows nothing here: the join is shown already.
        p.land(join(other("me", 1)));
        assert_eq!(notices(&p).len(), before);
    }

    #[test]
    fn a_heal_publishes_the_leaves_of_the_cut_and_rejoins_members_joined_during_it() {
        let (mut p, mut redis) = (watched(), Published::default());
        p.land(join(other("b", 9)));
        for (key, id) in [(0, 1), (1, 2)] {
            p.join((key, id), Version::V1, Some(&mut redis));
            p.land(Landing::Join {
                local: Some((key, id)),
                who: other("me", id),
                through_redis: true,
            });
        }
        // Cut off: one leaves, one joins, both shown here only.
        assert!(p.leave(1, None));
        p.join((2, 3), Version::V1, None);
        p.land(Landing::Back);
        assert!(p.rejoin_due());
        redis.0.clear();
        assert_eq!(p.reannounce(&mut redis), (1, 3));
        let kinds: Vec<Kind> = redis.0.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                Kind::Roster,
                Kind::Leave,
                Kind::Rejoin,
                Kind::Rejoin,
                Kind::Rejoin,
                Kind::Roster
            ]
        );
        // The member that joined during the cut now leaves through Redis.
        redis.0.clear();
        assert!(p.leave(2, Some(&mut redis)));
        assert_eq!(redis.0[0].0, Kind::Leave);
    }

    #[test]
    fn a_hello_from_another_process_asks_for_a_re_announcement() {
        let mut p = watched();
        p.land(Landing::Hello { node: "me" });
        assert!(!p.rejoin_due());
        p.land(Landing::Hello { node: "b" });
        assert!(p.rejoin_due());
    }

    #[test]
    fn a_roster_shows_leaving_only_the_members_it_did_not_confirm() {
        let mut p = watched();
        for id in [1, 2, 3, 4] {
            p.land(join(other("b", id)));
        }
        p.land(join(other("c", 1)));
        p.hand_out_batch(|_, _| true);
        p.land(Landing::Roster {
            node: "b",
            begin: true,
        });
        p.land(join(other("b", 2))); // rejoins: shown already
        p.land(Landing::Message {
            from: other("b", 3),
            body: "still here",
        });
        p.land(Landing::Leave { who: other("b", 4) });
        p.land(join(other("b", 5))); // joined while we were cut off
        p.land(Landing::Roster {
            node: "b",
            begin: false,
        });
        p.land(Landing::Roster {
            node: "b",
            begin: false,
        });
        assert_eq!(
            notices(&p),
            ["message b.3", "leave b.4", "join b.5", "leave b.1"]
        );
        assert_eq!(p.online(), 1 + 3 + 1, "the watcher, b.2, b.3, b.5 and c.1");
    }

    #[test]
    fn a_farewell_shows_what_is_left_of_a_process_and_counts_no_verdict() {
        let mut p = watched();
        p.land(join(other("b", 1)));
        p.land(join(other("b", 2)));
        p.land(Landing::Leave { who: other("b", 1) });
        p.land(Landing::Farewell { node: "b" });
        p.land(Landing::Gone { node: "b" }); // a verdict that crossed it
        let n = notices(&p);
        assert_eq!(n[n.len() - 2..], ["leave b.1", "leave b.2"]);
        assert_eq!(p.online(), 1);
        p.land(Landing::Farewell { node: "me" }); // our own, back: nothing
        assert_eq!(p.online(), 1);
    }
}

#[cfg(test)]
mod forged {
    use super::*;

    /// Anyone who can publish on the channel can forge `roster` begin marks and verdicts about
    /// processes that never existed: what they leave behind here must stay bounded.
    #[test]
    fn forged_rosters_and_verdicts_about_unknown_processes_keep_bounded_state() {
        let mut p = Presence::new("me".into(), 100);
        for i in 0..10_000 {
            let node = format!("forged{i}");
            p.land(Landing::Roster {
                node: &node,
                begin: true,
            });
            p.land(Landing::Gone { node: &node });
        }
        assert!(p.unconfirmed.is_empty(), "{}", p.unconfirmed.len());
        assert!(p.judged.len() <= JUDGED_KEPT, "{}", p.judged.len());
        assert_eq!(p.online(), 0);
    }

    /// The record of verdicts acted on keeps the recent ones: a second verdict on a process
    /// (another process judged it too, a moment later) is still not counted twice.
    #[test]
    fn a_second_verdict_is_not_counted_while_it_is_recent() {
        let mut p = Presence::new("me".into(), 100);
        p.land(Landing::Gone { node: "b" });
        for i in 0..JUDGED_KEPT - 1 {
            p.land(Landing::Gone {
                node: &format!("x{i}"),
            });
        }
        p.land(Landing::Gone { node: "b" });
        assert_eq!(p.processes_gone, JUDGED_KEPT as u64);
    }
}
