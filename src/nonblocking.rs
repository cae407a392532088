//! What every non-blocking socket read and write here shares: telling "not now" from a failure
//! (as mio's `tcp_server` example does), and how much one read takes.
//!
//! A non-blocking call that cannot go on says so with an error: `WouldBlock` (come back when the
//! poll says the socket is ready: the edge-triggered event will come) or `Interrupted` (a signal
//! arrived: try again at once). Neither is a failure of the connection.

use std::io;

/// Bytes one read takes from a socket (a client's, or a Redis link's): the one buffer the loop
/// reads every client into, and the step at which the Redis links are read.
pub const READ_CHUNK: usize = 64 * 1024;

/// The socket has nothing more for now (or can take nothing more): wait for its next event.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: try it again.
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

#[cfg(test)]
mod tests {
    use super::*;
    use io::ErrorKind;

    #[test]
    fn each_helper_names_its_own_kind_and_no_other() {
        let kinds = [
            ErrorKind::WouldBlock,
            ErrorKind::Interrupted,
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
        ];
        for kind in kinds {
            let e = io::Error::from(kind);
            assert_eq!(would_block(&e), kind == ErrorKind::WouldBlock, "{kind:?}");
            assert_eq!(interrupted(&e), kind == ErrorKind::Interrupted, "{kind:?}");
        }
    }
}
