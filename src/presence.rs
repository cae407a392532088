//! Who is in the room, and how each member was announced: the one owner of joins and leaves.
//!
//! Every path by which a client comes or goes passes through here: a handshake completing, an
//! ending in the same read as that handshake, a drop during the fan-out, a ping timeout,
//! shutdown, and Redis going down or coming back. The event loop only reports what happened
//! ([`Presence::join`], [`Presence::said`], [`Presence::leave`], [`Presence::land`]); the
//! decisions about notices live in this file alone.
//!
//! **The invariant.** Every client shown a join notice for X is later shown exactly one leave
//! notice for X, unless it leaves first itself; no client is shown a leave notice without the
//! join. It holds because a leave notice goes out only for a client recorded as announced, the
//! record is taken (not read) when it goes out, and it goes out the way the join went:
//!
//! - announced **locally** (no Redis, or Redis down): into this process's batch, both times;
//! - announced **through Redis**: published both times, so every process that saw the join sees
//!   the leave, in Redis's order. A joiner becomes a member here only when Redis hands its own
//!   join back, so it gets its own notice and everything after it, like everyone else.
//!
//! Across processes it holds while Redis carries both notices. Two cases cannot be told apart by
//! notices that carry no identity, and are documented rather than guessed at: a client that
//! joined through Redis and leaves while this process is cut off from Redis is announced here
//! only (the others cannot be reached); and a join that Redis had not handed back when the link
//! broke lands here as a local one (it may or may not have reached the others), so its leave
//! stays local too. `tests/presence_properties.rs` checks the invariant over random interleavings,
//! with a fake Redis.

use crate::envelope::Kind;
use std::time::SystemTime;

use crate::message::{self, MemberId, V2Frame, Version};
use crate::room::{Batch, Room};

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
}

/// How a client's join notice went out; its leave notice must go the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Announced {
    #[default]
    No,
    /// Into this process's batch only.
    Locally { id: u64 },
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
    node: String,
    /// `--max-message-size`, which version 2's `hello` tells each newcomer.
    max_message_size: usize,
    /// Members of other processes: joins minus leaves that Redis handed us since we subscribed.
    /// It does not know who was there before that, nor who a crashed process took with it.
    remote: usize,
}

impl Presence {
    /// An empty room of the process named `node` (empty without Redis), whose clients may send
    /// messages of up to `max_message_size` bytes.
    pub fn new(node: String, max_message_size: usize) -> Presence {
        Presence {
            node,
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
                self.record(key, Announced::Locally { id });
                self.admit(key, id, version);
                let who = MemberId {
                    node: &self.node,
                    id,
                };
                self.batch.joined(who, self.online());
            }
        }
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
        let online = self.online();
        let who = |id| MemberId {
            node: &self.node,
            id,
        };
        match (announced, redis) {
            (Some(Announced::Locally { id }), _) => self.batch.left(who(id), online),
            (Some(Announced::ThroughRedis { id, .. }), Some(redis)) => {
                redis.publish(Kind::Leave, "", (key, id))
            }
            // Cut off from Redis: only this process can be told, and only if it saw the join.
            (Some(Announced::ThroughRedis { id, .. }), None) if was_member => {
                self.batch.left(who(id), online)
            }
            _ => return false,
        }
        true
    }

    /// Everyone here leaves at once (shutdown): nobody here is told, since all of them are going;
    /// the other processes are, for the clients they were told about.
    pub fn leave_all(&mut self, mut redis: Option<&mut dyn Publish>) {
        for (key, announced) in self.announced.drain(..).enumerate() {
            if let (Announced::ThroughRedis { id, .. }, Some(redis)) = (announced, redis.as_mut()) {
                redis.publish(Kind::Leave, "", (key, id));
            }
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
                match local {
                    Some((key, id)) => self.admit_echoed(key, id, through_redis),
                    None => self.remote += 1,
                }
                self.batch.joined(who, self.online());
            }
            Landing::Leave { who } => {
                if who.node != self.node {
                    self.remote = self.remote.saturating_sub(1);
                }
                self.batch.left(who, self.online())
            }
            Landing::Message { from, body } => self.batch.said(from, body),
        }
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
            self.record(key, Announced::Locally { id });
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

    /// The room's members as version 2's `online` counts them: this process's, and those of
    /// other processes it heard join through Redis and not leave.
    pub fn online(&self) -> usize {
        self.room.len() + self.remote
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
        for local in [Some((3, 9)), Some((3, 8))] {
            p.land(Landing::Join {
                local,
                who: MemberId::default(),
                through_redis: true,
            });
            assert!(!p.is_member(3));
        }
        let mut two_joins = Batch::default();
        two_joins.joined(MemberId::default(), 0);
        two_joins.joined(MemberId::default(), 0);
        assert_eq!(p.batch().as_bytes(), two_joins.as_bytes());
    }

    #[test]
    fn a_join_landed_in_an_outage_leaves_locally_even_once_redis_is_back() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((0, 1), Version::V1, None);
        p.join((4, 5), Version::V1, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((4, 5)),
            who: MemberId::default(),
            through_redis: false,
        });
        fan_out(&mut p);
        assert!(p.leave(4, Some(&mut redis)));
        assert_eq!(redis.0.len(), 1, "only the join was published");
        assert_eq!(fan_out(&mut p)[&0], [LEFT]);
    }

    #[test]
    fn a_member_through_redis_that_leaves_in_an_outage_is_told_here() {
        let (mut p, mut redis) = (Presence::default(), Published::default());
        p.join((0, 1), Version::V1, None);
        p.join((2, 3), Version::V1, Some(&mut redis));
        p.land(Landing::Join {
            local: Some((2, 3)),
            who: MemberId::default(),
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
}
