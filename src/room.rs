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

use crate::message::{self, JOINED, LEFT};

/// Frames waiting to go to every member, already encoded: encode once, copy many times.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<u8>,
    /// How many frames `frames` holds (for the delivery count).
    count: u64,
    /// The batch holds a chat message, not only join and leave notices.
    chat: bool,
}

impl Batch {
    /// Someone joined: "New User Joined...".
    pub fn joined(&mut self) {
        self.push(JOINED);
    }

    /// Someone left: "User Disconnected...".
    pub fn left(&mut self) {
        self.push(LEFT);
    }

    /// Someone said `text`.
    pub fn said(&mut self, text: &str) {
        self.push(text);
        self.chat = true;
    }

    /// The batch holds join and leave notices only (which may wait a little; chat may not).
    pub fn only_notices(&self) -> bool {
        !self.chat
    }

    fn push(&mut self, body: &str) {
        message::push_chat_frame(&mut self.frames, body);
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes collected so far; a newcomer's place in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The encoded frames, for tests and tools.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frames
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

    /// Adds `key`, which gets the current batch from byte `from` on (its own join notice).
    pub fn join(&mut self, key: usize, from: usize) {
        if self.contains(key) {
            return;
        }
        if key >= self.joined_at.len() {
            self.joined_at.resize(key + 1, 0);
        }
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

    /// Removes `key`; returns whether it was a member.
    pub fn leave(&mut self, key: usize) -> bool {
        if !self.contains(key) {
            return false;
        }
        let index = self.position[key] as usize - 1;
        self.members.swap_remove(index);
        if let Some(&moved) = self.members.get(index) {
            self.position[moved] = index as u32 + 1;
        }
        self.position[key] = 0;
        self.joined_at[key] = 0;
        true
    }

    /// Removes everyone without any notice (the server is going away).
    pub fn clear(&mut self) {
        self.members.clear();
        self.position.clear();
        self.joined_at.clear();
        self.newcomers.clear();
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
        let batch = std::mem::take(&mut broadcast.frames);
        let frames = std::mem::take(&mut broadcast.count);
        broadcast.chat = false;
        let mut delivered = 0;
        for &key in &self.members {
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
        // Keep the buffer for the next batch, unless an unusual one made it large.
        if broadcast.frames.is_empty() && batch.capacity() <= KEEP_BATCH_CAPACITY {
            broadcast.frames = batch;
            broadcast.frames.clear();
        }
        delivered
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
        room.join(0, 0);
        b.joined();
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        room.join(1, 0);
        b.joined();
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        b.said("hi");
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert!(room.leave(0));
        b.left();
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(0), [JOINED, JOINED, "hi"]);
        assert_eq!(q.bodies(1), [JOINED, "hi", LEFT]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_newcomer_gets_the_batch_from_its_own_join_notice_on() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        room.join(0, 0);
        b.said("before");
        room.join(1, b.len());
        b.joined();
        b.said("after");
        let delivered = room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(0), ["before", JOINED, "after"]);
        assert_eq!(q.bodies(1), [JOINED, "after"]);
        assert_eq!(delivered, 3 + 2);
        b.said("next");
        room.hand_out(&mut b, |k, f| q.deliver(k, f));
        assert_eq!(q.bodies(1), [JOINED, "after", "next"]);
    }

    #[test]
    fn a_member_that_cannot_take_the_batch_is_not_counted_and_stays_for_the_caller_to_end() {
        let (mut room, mut q, mut b) = (Room::default(), Queues::new(), Batch::default());
        for key in 0..5 {
            room.join(key, 0);
        }
        q.limit.insert(1, 10);
        q.limit.insert(3, 10);
        b.said("this is longer than ten bytes");
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
        let mut room = Room::default();
        for key in [5, 0, 9, 3] {
            room.join(key, 0);
        }
        room.join(9, 0); // twice is once
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
}
