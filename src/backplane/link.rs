//! One TCP connection to Redis, non-blocking, in the server's poll: opening it, noticing that
//! the connect completed, writing queued commands, and reading a chunk at a time. It knows
//! nothing of what the bytes mean (that is `crate::redis`) or of the other link. It reads
//! [`READ_CHUNK`] at a time (the event loop checks its batch in between).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::nonblocking::{interrupted, would_block, READ_CHUNK};
use crate::queue::OutQueue;
use crate::redis::{DecodeError, Limits, RedisTls, Reply, ReplyDecoder};
use crate::transport::client::ClientTls;
/// Idle time after which the kernel probes a Redis connection, so a Redis host that vanished
/// without a reset is noticed in about 25 s rather than never.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// One TCP connection to Redis.
pub struct Link {
    pub token: Token,
    socket: Option<TcpStream>,
    /// With `rediss://`: the TLS session the RESP bytes go through.
    tls: Option<ClientTls>,
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
            tls: None,
            connected: false,
            input: Vec::new(),
            decoder: ReplyDecoder::new(limits),
            output: OutQueue::default(),
            writable: false,
            preamble_replies: 0,
            subscribed: false,
        }
    }

    pub fn open(
        &mut self,
        addr: SocketAddr,
        tls: Option<&RedisTls>,
        registry: &Registry,
    ) -> io::Result<()> {
        if let Some(tls) = tls {
            self.tls = Some(ClientTls::new(&tls.config, tls.name.clone())?);
        }
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
        write_out(socket, self.tls.as_mut(), &mut self.output)?;
        // While the TLS handshake goes on, WRITABLE stays asked for: the commands queued behind
        // it go out as soon as a read completes it, and a full socket then needs the event.
        let want = !self.output.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.wants_write() || t.is_handshaking());
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
            let read = match self.tls.as_mut() {
                None => socket.read(&mut self.input[start..]),
                Some(tls) => tls.read(socket, &mut self.input[start..]),
            };
            match read {
                Err(e) if interrupted(&e) => continue,
                other => break other,
            }
        };
        if self.connected && self.tls.as_ref().is_some_and(|t| !t.is_handshaking()) {
            // The read may have completed the handshake: what waited behind it goes now.
            write_out(socket, self.tls.as_mut(), &mut self.output)?;
        }
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
                if would_block(&e) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Writes queued bytes (through TLS with `rediss://`) until done or the socket is full.
fn write_out(
    socket: &mut TcpStream,
    mut tls: Option<&mut ClientTls>,
    output: &mut OutQueue,
) -> io::Result<()> {
    loop {
        let written = match tls.as_deref_mut() {
            None if output.is_empty() => return Ok(()),
            None => socket.write(output.pending()),
            Some(tls) => match tls.write(socket, output.pending())? {
                0 => return Ok(()), // handshaking, the socket is full, or all written
                n => Ok(n),
            },
        };
        match written {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => output.consume(n),
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
}
