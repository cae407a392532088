//! One TCP connection to Redis, non-blocking, in the server's poll: opening it, noticing that
//! the connect completed, writing queued commands, and reading a chunk at a time. It knows
//! nothing of what the bytes mean (that is `crate::redis`) or of the other link.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::queue::OutQueue;
use crate::redis::{DecodeError, Limits, Reply, ReplyDecoder};

/// Bytes read from a link at a time (the event loop checks its batch in between).
pub const READ_CHUNK: usize = 64 * 1024;
/// Idle time after which the kernel probes a Redis connection, so a Redis host that vanished
/// without a reset is noticed in about 25 s rather than never.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// One TCP connection to Redis.
pub struct Link {
    pub token: Token,
    socket: Option<TcpStream>,
    /// TCP connected (the first WRITABLE event came without an error).
    pub connected: bool,
    pub input: Vec<u8>,
    /// Judges `input` as it comes, each byte once, within this link's limits.
    decoder: ReplyDecoder,
    pub output: OutQueue,
    /// WRITABLE interest is registered.
    writable: bool,
    /// Replies still owed to the AUTH and SELECT sent first.
    pub preamble_replies: usize,
    /// The subscriber's SUBSCRIBE was confirmed.
    pub subscribed: bool,
}

impl Link {
    pub fn new(token: Token, limits: Limits) -> Link {
        // Only the token survives a reconnection: everything else starts afresh.
        Link {
            token,
            socket: None,
            connected: false,
            input: Vec::new(),
            decoder: ReplyDecoder::new(limits),
            output: OutQueue::default(),
            writable: false,
            preamble_replies: 0,
            subscribed: false,
        }
    }

    pub fn open(&mut self, addr: SocketAddr, registry: &Registry) -> io::Result<()> {
        let mut socket = TcpStream::connect(addr)?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE / 2)
            .with_retries(3);
        socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
        socket.set_nodelay(true)?;
        registry.register(
            &mut socket,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.socket = Some(socket);
        self.writable = true;
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.socket.is_some()
    }

    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut socket) = self.socket.take() {
            if let Err(e) = registry.deregister(&mut socket) {
                debug!("redis: deregister: {e}");
            }
        }
        *self = Link::new(self.token, self.decoder.limits());
    }

    /// The next whole reply in `input` from byte `from` on (`from` is where the last one ended;
    /// the decoder resumes an unfinished reply where it stopped, without scanning it again).
    pub fn next_reply(&mut self, from: usize) -> Result<Option<(Reply, usize)>, DecodeError> {
        self.decoder.next_reply(&self.input[from..])
    }

    /// The first WRITABLE event of a non-blocking connect: did it work?
    pub fn check_connected(&mut self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        match socket.peer_addr() {
            Ok(_) => self.connected = true,
            // A spurious wake-up: the handshake is still going on; the next event will tell.
            Err(e) if e.kind() == ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Writes queued commands until done or the socket is full; WRITABLE is asked for only while
    /// bytes wait.
    pub fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        if !self.connected {
            return Ok(()); // the connect's WRITABLE event will flush
        }
        while !self.output.is_empty() {
            match socket.write(self.output.pending()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.output.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let want = !self.output.is_empty();
        if want != self.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(socket, self.token, interest)?;
            self.writable = want;
        }
        Ok(())
    }

    /// Reads one chunk into `input`; false when the socket has nothing more for now.
    pub fn read_chunk(&mut self) -> io::Result<bool> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(false);
        };
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let result = loop {
            match socket.read(&mut self.input[start..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(0) => {
                self.input.truncate(start);
                Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                ))
            }
            Ok(n) => {
                self.input.truncate(start + n);
                Ok(true)
            }
            Err(e) => {
                self.input.truncate(start);
                if e.kind() == ErrorKind::WouldBlock {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}
