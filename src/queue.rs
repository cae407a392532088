//! A connection's outbound bytes: appended at the back, written from the front.
//!
//! Bytes, not messages: a broadcast frame is copied in once per recipient, and whatever has piled
//! up goes out in a single `write`. An idle connection should cost almost nothing, so a drained
//! queue gives its memory back: ten thousand idle clients must not each sit on the peak of a
//! burst. (Allocating again for the next burst costs far less than the `write` that drains it.)
//!
//! Once the connection says that only WebSocket frames follow ([`OutQueue::frames_follow`]), the
//! queue can find where the frame being written ends, so an evicted client can be cut to it and
//! told why with a Close frame ([`OutQueue::cut_to_frame`]). Finding it walks frame headers (a
//! body is skipped by its length), each at most once: the mark only moves forward.

#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    sent: usize,
    /// Where in `buf` a frame begins, at or before `sent` (after it while the 101 answer is
    /// still unsent), once only frames follow: no frame begins between it and `sent`, except
    /// those the next walk finds. `None` while the queue may hold HTTP.
    frame_at: Option<usize>,
}

impl OutQueue {
    /// Bytes still to write.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held, for measurements.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Slide the unsent tail to the front rather than grow, once half the buffer is spent.
        if self.sent > 0
            && self.sent >= self.buf.len() / 2
            && self.buf.capacity() - self.buf.len() < bytes.len()
        {
            // Not past the frame under way: the mark must stay a frame's start.
            let cut = match self.walk_frames() {
                Some(at) => at.min(self.sent),
                None => self.sent,
            };
            self.buf.drain(..cut);
            self.sent -= cut;
            self.frame_at = self.frame_at.map(|at| at - cut);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// From here on, only WebSocket frames are queued (the connection's 101 answer is queued).
    pub fn frames_follow(&mut self) {
        self.frame_at = Some(self.buf.len());
    }

    /// Moves the frame mark to the start of the frame under way (the one `sent` is in, or the
    /// next one); returns it. A header that does not add up (it cannot happen: the queue only
    /// holds frames we encoded) forgets the mark.
    fn walk_frames(&mut self) -> Option<usize> {
        let mut at = self.frame_at?;
        while at < self.sent {
            match frame_len(&self.buf[at..]) {
                Some(len) if at + len <= self.sent => at += len,
                Some(_) => break,
                None => {
                    self.frame_at = None;
                    return None;
                }
            }
        }
        self.frame_at = Some(at);
        Some(at)
    }

    /// Drops every byte after the frame being written (which must go on: the peer has its
    /// start) and gives the memory back. False if the queue may hold HTTP (no frames yet): then
    /// nothing can follow it.
    pub fn cut_to_frame(&mut self) -> bool {
        let Some(at) = self.walk_frames() else {
            return false;
        };
        let end = if at < self.sent {
            at + frame_len(&self.buf[at..]).unwrap_or(0)
        } else {
            at
        };
        let mut rest = self.buf[self.sent..end.max(self.sent)].to_vec();
        rest.shrink_to_fit();
        self.buf = rest;
        self.sent = 0;
        self.frame_at = Some(self.buf.len());
        true
    }

    /// Lets a caller encode straight into the queue.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The bytes to hand to `write`.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Records that `write` took `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        debug_assert!(self.sent <= self.buf.len());
        if self.sent == self.buf.len() {
            self.sent = 0;
            self.buf = Vec::new();
            self.frame_at = self.frame_at.map(|_| 0);
        }
    }
}

/// The length of the server frame (header and payload) at the start of `bytes`, if its header is
/// all there (server frames are never masked).
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len7 = *bytes.get(1)? & 0x7F;
    let (header, payload) = match len7 {
        126 => (
            4,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as u64,
        ),
        127 => (10, u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    usize::try_from(payload).ok()?.checked_add(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_partial_writes() {
        let mut q = OutQueue::default();
        let mut written = Vec::new();
        for round in 0..50u8 {
            q.push(&[round; 37]);
            let n = q.pending().len().min(23); // a socket that takes 23 bytes at a time
            written.extend_from_slice(&q.pending()[..n]);
            q.consume(n);
        }
        while !q.is_empty() {
            let n = q.pending().len().min(23);
            written.extend_from_slice(&q.pending()[..n]);
            q.consume(n);
        }
        let expected: Vec<u8> = (0..50u8).flat_map(|r| [r; 37]).collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let mut q = OutQueue::default();
        q.push(&[0; 100_000]);
        q.consume(100_000);
        assert_eq!(q.capacity(), 0);
        q.push(&[0; 100]);
        q.consume(60);
        assert!(q.capacity() >= 100);
        q.consume(40);
        assert_eq!(q.capacity(), 0);
    }

    fn frames(sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for (i, &size) in sizes.iter().enumerate() {
            crate::frame::push_frame(
                &mut bytes,
                crate::frame::OpCode::Text,
                &vec![b'a' + i as u8; size],
            );
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    proptest::proptest! {
        /// However the frames were pushed and partly written, cutting keeps exactly the rest of
        /// the frame under way (so what the peer gets is whole frames) and nothing after it.
        #[test]
        fn a_cut_ends_at_the_frame_under_way(
            sizes in proptest::collection::vec(0..70_000usize, 1..12),
            writes in proptest::collection::vec(1..40_000usize, 0..12),
            head in 0..200usize,
        ) {
            let (bytes, ends) = frames(&sizes);
            let mut q = OutQueue::default();
            q.push(&vec![b'H'; head]); // the 101 answer
            q.frames_follow();
            let mut written = 0;
            let mut pushed = 0;
            for (i, &w) in writes.iter().enumerate() {
                if let Some(&end) = ends.get(i) {
                    q.push(&bytes[pushed..end]);
                    pushed = end;
                }
                let n = w.min(q.len());
                q.consume(n);
                written += n;
            }
            proptest::prop_assert!(q.cut_to_frame());
            let left = q.pending().len();
            let total = written + left;
            // What the peer gets ends at the first boundary (the 101 answer's end, or a
            // frame's) at or after what it has already been given.
            let first = std::iter::once(head).chain(ends.iter().map(|e| head + e))
                .find(|&b| b >= written);
            proptest::prop_assert_eq!(Some(total), first);
        }
    }
}
