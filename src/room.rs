//! The chat room: who is in it, and who gets what. Pure logic, no sockets.
//!
//! The rules (the tutorial's pool, without its channels):
//! - a newcomer is a member before its join notice goes out, so it gets its own notice;
//! - a leaver stops being a member before its leave notice goes out, so only the others get it;
//! - a message goes to every member, the sender included.
//!
//! Frames meant for everyone collect in a [`Batch`] during a turn of the event loop;
//! [`Room::hand_out`] then hands the same bytes to every member, in one piece: one copy per member
//! per turn, however many messages the turn brought. Every member receives the batch in the same
//! order, so all clients see one order. A member that joined while the batch was collecting gets
//! it from its own join notice on, exactly as if the batch had gone out at that moment. A member
//! whose queue overflows during the fan-out is only reported: the event loop ends it afterwards,
//! and its leave notice becomes the next batch, so removals never disturb the iteration.
//!
//! Who joins and leaves, and when, is decided in one place: [`crate::presence`].
//!
//! **Two versions, one encoding each.** Members get the protocol's version 1 (the tutorial's
//! frames) unless they asked for version 2 ([`crate::message::V2Frame`]). The batch then holds
//! each frame twice, once per version, and a member gets the batch of its version: still one
//! encoding per frame per version, never one per member. Version 2 says "whose" by naming the
//! member, not by a flag that would differ for the sender, which is what keeps its bytes the same
//! for everyone. While no member speaks version 2, nothing of it is encoded: a room of the
//! tutorial's clients costs what it always did.

use std::time::SystemTime;

use crate::message::{self, MemberId, V2Frame, Version, JOINED, LEFT};

/// Frames waiting to go to every member, already encoded: encode once per version, copy many
/// times.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<u8>,
    /// How many frames `frames` holds (for the delivery count).
    count: u64,
    /// The batch holds a chat message, not only join and leave notices.
    chat: bool,
    /// The same frames in version 2, from the first one after a version 2 member joined.
    v2: Vec<u8>,
    v2_count: u64,
    /// Encode version 2 too: the room has (or is taking in) a member that speaks it.
    v2_on: bool,
}

impl Batch {
    /// `who` joined ("New User Joined..."); `online` members now.
    pub fn joined(&mut self, who: MemberId, online: usize) {
        self.push(JOINED, |time| V2Frame::Join {
            id: who,
            online,
            time,
        });
    }

    /// `who` left ("User Disconnected..."); `online` members now.
    pub fn left(&mut self, who: MemberId, online: usize) {
        self.push(LEFT, |time| V2Frame::Leave {
            id: who,
            online,
            time,
        });
    }

    /// `from` said `text`.
    pub fn said(&mut self, from: MemberId, text: &str) {
        self.push(text, |time| V2Frame::Message {
            from,
            body: text,
            time,
        });
        self.chat = true;
    }

    /// The batch holds join and leave notices only (which may wait a little; chat may not).
    pub fn only_notices(&self) -> bool {
        !self.chat
    }

    fn push<'a>(&mut self, body: &str, v2: impl FnOnce(u64) -> V2Frame<'a>) {
        message::push_chat_frame(&mut self.frames, body);
        self.count += 1;
        if self.v2_on {
            let time = message::unix_millis(SystemTime::now());
            message::push_v2_frame(&mut self.v2, &v2(time));
            self.v2_count += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes collected so far, in both versions (what the batch holds in memory).
    pub fn len(&self) -> usize {
        self.frames.len() + self.v2.len()
    }

    /// The encoded frames of version 1, for tests and tools.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frames
    }

    /// The encoded frames of version 2, for tests and tools.
    pub fn v2_bytes(&self) -> &[u8] {
        &self.v2
    }

    /// Where a newcomer speaking `version` finds its own join notice, about to be pushed.
    fn place(&self, version: Version) -> usize {
        match version {
            Version::V1 => self.frames.len(),
            Version::V2 => self.v2.len(),
        }
    }
}

/// A batch buffer up to this size is reused from turn to turn; a larger one (a burst, a huge
/// message) goes back to the allocator.
const KEEP_BATCH_CAPACITY: usize = 64 * 1024;

/// The members, by connection key, with O(1) join, leave and membership test.
#[derive(Debug, Default)]
pub struct Room {
    members: Vec<usize>,
    /// `position[key]` is 1 + the key's index in `members`, or 0 when not a member.
    position: Vec<u32>,
    /// `joined_at[key]`: where in the current batch a member that joined while it was collecting
    /// finds its own join notice (it gets the batch from there on); 0 for everyone else.
    joined_at: Vec<usize>,
    /// The keys with a nonzero `joined_at`, to reset after the fan-out.
    newcomers: Vec<usize>,
    /// `version[key]`: the frames a member gets.
    version: Vec<Version>,
    /// Members that get version 2.
    v2_members: usize,
    /// Version 2 newcomers' `hello` frames, each handed over just before its batch.
    hellos: Vec<(usize, Box<[u8]>)>,
}

impl Room {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, key: usize) -> bool {
        self.position.get(key).is_some_and(|&p| p != 0)
    }

    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// Adds `key`, speaking `version`: it gets `batch` from its own join notice on, which the
    /// caller pushes next.
    pub fn join(&mut self, key: usize, version: Version, batch: &mut Batch) {
        if self.contains(key) {
            return;
        }
        if version == Version::V2 {
            batch.v2_on = true;
            self.v2_members += 1;
        }
        let from = batch.place(version);
        if key >= self.joined_at.len() {
            self.joined_at.resize(key + 1, 0);
            self.version.resize(key + 1, Version::V1);
        }
        self.version[key] = version;
        if from > 0 {
            self.joined_at[key] = from;
            self.newcomers.push(key);
        }
        if key >= self.position.len() {
            self.position.resize(key + 1, 0);
        }
        self.members.push(key);
        self.position[key] = self.members.len() as u32;
    }

    /// Gives member `key` the frame `hello` (its version 2 greeting) just before its batch.
    pub fn greet(&mut self, key: usize, hello: Box<[u8]>) {
        self.hellos.push((key, hello));
    }

    /// Removes `key`; returns whether it was a member.
    pub fn leave(&mut self, key: usize) -> bool {
        if !self.contains(key) {
            return false;
        }
        self.hellos.retain(|(k, _)| *k != key); // at most this batch's newcomers
        let index = self.position[key] as usize - 1;
        self.members.swap_remove(index);
        if let Some(&moved) = self.members.get(index) {
            self.position[moved] = index as u32 + 1;
        }
        self.position[key] = 0;
        self.joined_at[key] = 0;
        if self.version[key] == Version::V2 {
            self.v2_members -= 1;
        }
        true
    }

    /// Removes everyone without any notice (the server is going away).
    pub fn clear(&mut self) {
        self.members.clear();
        self.position.clear();
        self.joined_at.clear();
        self.newcomers.clear();
        self.version.clear();
        self.v2_members = 0;
        self.hellos.clear();
    }

    /// Delivers the batch in `broadcast` to every member, then empties it.
    ///
    /// `deliver` hands the bytes to one member and says whether it took them. One that did not
    /// (its backlog would pass its limit, its socket failed) stays a member here: the caller ends
    /// it, and its leave goes through [`crate::presence::Presence::leave`] like any other, into
    /// the next batch. Returns how many frames were handed over in all (frames × members).
    pub fn hand_out(
        &mut self,
        broadcast: &mut Batch,
        mut deliver: impl FnMut(usize, &[u8]) -> bool,
    ) -> u64 {
        let v1 = (std::mem::take(&mut broadcast.frames), broadcast.count);
        let v2 = (std::mem::take(&mut broadcast.v2), broadcast.v2_count);
        broadcast.count = 0;
        broadcast.v2_count = 0;
        broadcast.chat = false;
        let mut delivered = 0;
        for (key, hello) in self.hellos.drain(..) {
            deliver(key, &hello); // one that cannot take it cannot take the batch either
        }
        for &key in &self.members {
            let (batch, frames) = match self.version[key] {
                Version::V1 => (&v1.0, v1.1),
                Version::V2 => (&v2.0, v2.1),
            };
            let from = self.joined_at[key];
            if deliver(key, &batch[from..]) {
                delivered += if from == 0 {
                    frames
                } else {
                    frames_in(&batch[from..])
                };
            }
        }
        for key in self.newcomers.drain(..) {
            if let Some(at) = self.joined_at.get_mut(key) {
                *at = 0; // the next batch is theirs in full
            }
        }
        broadcast.v2_on = self.v2_members > 0;
        keep_buffer(&mut broadcast.frames, v1.0);
        keep_buffer(&mut broadcast.v2, v2.0);
        delivered
    }
}

/// Keeps a batch's buffer for the next batch, unless an unusual one made it large.
fn keep_buffer(slot: &mut Vec<u8>, mut buffer: Vec<u8>) {
    if slot.is_empty() && buffer.capacity() <= KEEP_BATCH_CAPACITY {
        buffer.clear();
        *slot = buffer;
    }
}

/// Counts the frames in a run of whole server frames (for a newcomer's part of a batch).
fn frames_in(mut bytes: &[u8]) -> u64 {
    let mut count = 0;
    while let [_, len, rest @ ..] = bytes {
        let (payload, header) = match len & 0x7F {
            126 => (
                rest.get(..2)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize),
                4,
            ),
            127 => (
                rest.get(..8).map_or(0, |b| {
                    u64::from_be_bytes(b.try_into().unwrap_or([0; 8])) as usize
                }),
                10,
            ),
            n => (n as usize, 2),
        };
        bytes = bytes.get(header + payload..).unwrap_or(&[]);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use std::collections::HashMap;

    /// Someone, as version 2 would name it (these tests are about version 1's bytes).
    const ID: MemberId = MemberId { node: "", id: 0 };

    /// Splits a run of encoded frames back into bodies (frames here are all short).
    fn bodies(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, start) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            let msg: Message = serde_json::from_slice(&bytes[start..start + len]).unwrap();
            out.push(msg.body.into_owned());
            bytes = &bytes[start + len..];
        }
        out
    }

    /// A stand-in for the clients' queues, each with a byte limit.
    struct Queues {
        got: HashMap<usize, Vec<u8>>,
        limit: HashMap<usize, usize>,
    }

    impl Queues {
        fn new() -> Self {
            Queues {
                got: HashMap::new(),
                limit: HashMap::new(),
            }
        }

        fn deliver(&mut self, key: usize, frames: &[u8]) -> bool {
            let queue = self.got.entry(key).or_default();
            if queue.len() + frames.len() > *self.limit.get(&key).unwrap_or(&usize::MAX) {
                return false;
            }
            queue.extend_from_slice(frames);
            true
        }

        fn bodies(&self, key: usize) -> Vec<String> {
            bodies(self.got.get(&key).map_or(&[][..], |v| v))
        }
    }

    #[test]
    fn newcomer_gets_its_own_join_notice_and_leaver_gets_none() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        room.join(0, Version::V1, &mut b);
        b.joined(ID, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        room.join(1, Version::V1, &mut b);
        b.joined(ID, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        b.said(ID, "hi");
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert!(room.leave(0));
        b.left(ID, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(0), [JOINED, JOINED, "hi"]);
        assert_eq!(q.bodies(1), [JOINED, "hi", LEFT]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_newcomer_gets_the_batch_from_its_own_join_notice_on() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        room.join(0, Version::V1, &mut b);
        b.said(ID, "before");
        room.join(1, Version::V1, &mut b);
        b.joined(ID, 1);
        b.said(ID, "after");
        let delivered = room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(0), ["before", JOINED, "after"]);
        assert_eq!(q.bodies(1), [JOINED, "after"]);
        assert_eq!(delivered, 3 + 2);
        b.said(ID, "next");
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(1), [JOINED, "after", "next"]);
    }

    #[test]
    fn a_member_that_cannot_take_the_batch_is_not_counted_and_stays_for_the_caller_to_end() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        for key in 0..5 {
            room.join(key, Version::V1, &mut b);
        }
        q.limit.insert(1, 10);
        q.limit.insert(3, 10);
        b.said(ID, "this is longer than ten bytes");
        let mut refused = Vec::new();
        let delivered = room.hand_out(&mut b, |k, f| {
            let took = q.deliver(k, f);
            if !took {
                refused.push(k);
            }
            took
        });
        assert_eq!(delivered, 3, "one message to three members");
        refused.sort();
        assert_eq!(refused, [1, 3]);
        assert_eq!(room.len(), 5, "leaving is the caller's decision");
        assert!(b.is_empty());
    }

    #[test]
    fn join_and_leave_keep_membership_exact() {
        let (mut room, mut b) = (Room::default(), Batch::default());
        for key in [5, 0, 9, 3] {
            room.join(key, Version::V1, &mut b);
        }
        room.join(9, Version::V1, &mut b); // twice is once
        assert_eq!(room.len(), 4);
        assert!(room.leave(5));
        assert!(!room.leave(5));
        assert!(!room.leave(1000));
        let mut members = room.members().to_vec();
        members.sort();
        assert_eq!(members, [0, 3, 9]);
        assert!(room.contains(9) && !room.contains(5));
        room.clear();
        assert!(room.is_empty() && !room.contains(9));
    }

    /// The `type`s of a run of version 2 frames, with the member each names.
    fn v2_frames(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = bytes[1] as usize;
            let v: serde_json::Value = serde_json::from_slice(&bytes[2..2 + len]).unwrap();
            let who = v.get("id").or(v.get("from")).unwrap();
            out.push(format!(
                "{} {}",
                v["type"].as_str().unwrap(),
                who.as_str().unwrap()
            ));
            bytes = &bytes[2 + len..];
        }
        out
    }

    #[test]
    fn each_member_gets_its_version_and_version_2_is_encoded_only_while_wanted() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        let (old, new) = (MemberId { node: "", id: 1 }, MemberId { node: "", id: 2 });
        room.join(0, Version::V1, &mut b);
        b.joined(old, 1);
        b.said(old, "alone");
        assert!(
            b.v2_bytes().is_empty(),
            "no version 2 member, nothing encoded"
        );
        room.join(1, Version::V2, &mut b);
        b.joined(new, 2);
        b.said(new, "hi");
        let delivered = room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(delivered, 4 + 2);
        assert_eq!(q.bodies(0), [JOINED, "alone", JOINED, "hi"]);
        assert_eq!(v2_frames(&q.got[&1]), ["join 2", "message 2"]);

        assert!(room.leave(1));
        b.left(new, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        b.said(old, "quiet again");
        assert!(b.v2_bytes().is_empty(), "the last version 2 member left");
        assert_eq!(b.len(), b.as_bytes().len());
    }

    #[test]
    fn a_version_2_newcomer_starts_at_its_own_join() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        let (a, c) = (MemberId { node: "n", id: 1 }, MemberId { node: "n", id: 2 });
        room.join(0, Version::V2, &mut b);
        b.joined(a, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        b.said(a, "before");
        room.join(1, Version::V2, &mut b);
        b.joined(c, 2);
        let delivered = room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(delivered, 2 + 1);
        assert_eq!(
            v2_frames(&q.got[&0]),
            ["join n.1", "message n.1", "join n.2"]
        );
        assert_eq!(v2_frames(&q.got[&1]), ["join n.2"]);
    }

    #[test]
    fn a_reused_key_gets_only_its_own_hello_in_the_turn_its_first_holder_came_and_went() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        let hello = |id: u64| -> Box<[u8]> {
            let mut out = Vec::new();
            message::push_v2_frame(
                &mut out,
                &V2Frame::Hello {
                    you: MemberId { node: "", id },
                    max_message_size: 1,
                    time: 0,
                },
            );
            out.into_boxed_slice()
        };
        let (first, second, third) = (
            MemberId { node: "", id: 1 },
            MemberId { node: "", id: 2 },
            MemberId { node: "", id: 3 },
        );
        room.join(0, Version::V2, &mut b);
        room.greet(0, hello(1));
        b.joined(first, 1);
        assert!(room.leave(0));
        b.left(first, 0);
        room.join(0, Version::V2, &mut b); // the same key, a new client
        room.greet(0, hello(2));
        b.joined(second, 1);
        assert!(room.leave(0));
        b.left(second, 0);
        room.join(0, Version::V1, &mut b); // and again, speaking version 1
        b.joined(third, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(0), [JOINED], "no hello of another client");

        room.leave(0);
        b.left(third, 0);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        q.got.clear();
        room.join(0, Version::V2, &mut b);
        room.greet(0, hello(4));
        b.joined(MemberId { node: "", id: 4 }, 1);
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        let got = String::from_utf8_lossy(&q.got[&0]).into_owned();
        assert_eq!(got.matches(r#""type":"hello""#).count(), 1, "{got}");
        assert!(
            got.find(r#""you":"4""#) < got.find(r#""type":"join""#),
            "{got}"
        );
    }

    #[test]
    fn newcomers_of_both_versions_start_at_their_own_join_when_version_2_switches_on_mid_batch() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        let id = |id| MemberId { node: "", id };
        room.join(0, Version::V1, &mut b);
        b.joined(id(0), 1);
        b.said(id(0), "one");
        room.join(1, Version::V1, &mut b);
        b.joined(id(1), 2);
        b.said(id(1), "two");
        room.join(2, Version::V2, &mut b); // version 2 is encoded from here on
        b.joined(id(2), 3);
        b.said(id(0), "three");
        room.join(3, Version::V2, &mut b);
        b.joined(id(3), 4);
        b.said(id(3), "four");
        let delivered = room.hand_out(&mut b, |k, f| q.deliver(k, f));
        let all = [
            JOINED, "one", JOINED, "two", JOINED, "three", JOINED, "four",
        ];
        assert_eq!(q.bodies(0), all);
        assert_eq!(q.bodies(1), all[2..]);
        assert_eq!(
            v2_frames(&q.got[&2]),
            ["join 2", "message 0", "join 3", "message 3"]
        );
        assert_eq!(v2_frames(&q.got[&3]), ["join 3", "message 3"]);
        assert_eq!(delivered, 8 + 6 + 4 + 2);
    }
}
