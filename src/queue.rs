//! A connection's outbound bytes: appended at the back, written from the front.
//!
//! Bytes, not messages: a broadcast frame is copied in once per recipient, and whatever has piled
//! up goes out in a single `write`. An idle connection should cost almost nothing, so a drained
//! queue gives its memory back: ten thousand idle clients must not each sit on the peak of a
//! burst. (Allocating again for the next burst costs far less than the `write` that drains it.)

#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    sent: usize,
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
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.buf.extend_from_slice(bytes);
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
        }
    }
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
}
