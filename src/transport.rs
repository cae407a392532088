//! The transport between a client's socket and its connection: bytes as they are, or through TLS.
//!
//! It moves bytes and reports TLS events; it makes no protocol decision. [`Transport`] is one
//! enum, `Plain` or `Tls`, so the reactor reads and writes every client the same way:
//! [`Transport::read`] hands over plaintext and what reading it cost, [`Transport::deliver`]
//! writes plaintext (a connection's queue, or a room batch straight from the room's buffer),
//! [`Transport::say_goodbye`] makes TLS's close_notify once the connection has said all, and
//! [`Transport::flush`] writes the records held here. The client side, for `rediss://` and
//! `mio-chat-load`'s `wss://`, is [`client`].
//!
//! TLS is rustls's *unbuffered* server connection (`UnbufferedServerConnection`): rustls keeps
//! the session's state and keys, and the buffers are ours. Ciphertext is read into the upper half
//! of the loop's one read buffer and decrypted there (`open`); what is left of a record waits
//! in the client's `inbox`. Records are sealed into one buffer for the thread and written from
//! it; what a full socket refuses waits in the client's `outbox`. Both are dropped when they
//! empty, so an idle wss client holds rustls's state and nothing else (3.9 KiB in all at 10,000
//! idle connections, against 8 KiB with rustls's buffered connection, whose 4 KiB receive buffer
//! stays once a record has been read: `docs/performance.md`, section TLS). The price is the
//! state machine rustls's buffered API would drive: every `ConnectionState` is handled here, in
//! `open` (reading) and `Tls::writer` (writing). The handshake advances with each read, a step
//! at a time, however the bytes are split; its deadline is the connection's
//! (`--handshake-timeout`, from the accept).
//!
//! Two rules the loop relies on:
//! - **A read's cost is what came off the wire, and each record.** Under TLS that is the
//!   ciphertext, headers and tags included, plus [`RECORD_COST`] for each record: a peer sending
//!   one byte per record pays for every record it makes us decrypt.
//! - **Bytes held here are output too.** Ciphertext a full socket refused is owed to the socket
//!   like the connection's queue: [`Transport::holds_output`] says so, and the loop's one "has
//!   output" predicate includes it. At most one write's records (64 KiB) wait per client: plaintext waits
//!   in the connection's own queue (where `--max-outbound` counts it) and is encrypted only when
//!   the socket has taken everything encrypted before it. Both buffers are counted in the memory
//!   ledger ([`Transport::buffer_capacity`]).

pub mod client;

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use rustls::ServerConfig;

pub use crate::config::TlsFiles;
use crate::nonblocking::{interrupted, would_block, READ_CHUNK};
pub use client::{client_config, ClientTls};

/// What decrypting one TLS record costs beyond its bytes, as the bytes of plaintext frames that
/// take as long to handle: `benches/records.rs` measured about 0.6 µs a record (11,400 one-byte
/// records a 256 KiB slice of ciphertext: a bystander's median round trip 12-18 ms) against about
/// 7 ns a byte of pongs over ws:// (0.6 ms). A full 16 KiB record pays 0.6 % more for it.
pub const RECORD_COST: usize = 100;

/// Plaintext encrypted per step by the client side (`client`): one TLS record's worth (16 KiB).
const TLS_CHUNK: usize = 16 * 1024;

/// Plaintext the server seals per write: four records' worth (64 KiB), written with one call.
/// One record a write made a room batch of 23 KB two writes: at max rate over wss, 2 writes per
/// client per turn against 1 over ws. At most this much ciphertext waits in the outbox of a
/// peer whose socket is full (counted in the memory ledger).
const SEAL_CHUNK: usize = 64 * 1024;

/// Reads the PEM files and builds the server's TLS settings: TLS 1.2 and 1.3, the `ring`
/// provider, ALPN `http/1.1`. An error is a sentence for the operator (the start fails; a reload
/// keeps the old pair).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "--tls-cert {} with --tls-key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate", path.display()));
    }
    Ok(chain)
}

/// What the transport needs of a socket: a byte stream whose next byte can be looked at without
/// taking it. A `mio` `TcpStream` in the server; a fake in the tests (a socket that takes a few
/// bytes and then refuses, to cut a record).
pub trait Socket: Read + Write {
    fn peek(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::peek(self, buf)
    }
}

/// What one read gave.
#[derive(Debug)]
pub enum Input {
    /// `len` plaintext bytes at the front of the buffer, and what reading them cost, in bytes:
    /// in plaintext, `len`; under TLS, the ciphertext this read took off the socket plus
    /// [`RECORD_COST`] for each record in it (for one-byte records, over a hundred times the
    /// plaintext; none when rustls had decrypted them already). The loop charges `cost` to the
    /// client's read budget.
    Data { len: usize, cost: usize },
    /// Nothing more for now.
    WouldBlock,
    /// The peer is done (EOF, a TLS close_notify, or a TCP reset).
    Eof,
    /// The TLS peer broke the protocol (a garbage ClientHello, no common version): its alert is
    /// queued, and the connection must end.
    TlsFailed(rustls::Error),
    /// The first bytes on the TLS port look like a plaintext HTTP request.
    PlainHttp,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Plaintext bytes taken (the rest is the caller's to keep): written to the socket, or
    /// encrypted into records the transport now holds.
    pub taken: usize,
    /// Bytes the socket took (ciphertext under TLS), for the metrics.
    pub wire: usize,
}

/// One client's TLS state: rustls's unbuffered connection and the two buffers it leaves to us.
/// Both are empty, and hold no allocation, whenever no record is half-way: an idle wss client
/// holds the connection's state and keys and nothing else.
pub struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet decrypted: the start of a record still arriving (or, mid
    /// handshake, fragments rustls joins into one message). At most `MAX_INBOX` bytes: a
    /// peer that needs more is refused.
    inbox: Vec<u8>,
    /// Whole records wait in the inbox that rustls has not looked at: a read stopped when the
    /// plaintext buffer filled, which it does right after a record of application data, so
    /// rustls keeps no place in them (no handshake message half joined). The next read opens
    /// them first; meanwhile the writer shows rustls none of them, so a write never waits for
    /// a read (the loop takes a write left undone for a full socket, and waits for WRITABLE).
    unopened: bool,
    /// Ciphertext made and not yet taken by the socket: a handshake flight, an alert, or the end
    /// of a record a full socket refused. Written before anything newer is encrypted.
    outbox: Vec<u8>,
    /// Whether the first bytes have been looked at (plain HTTP on the TLS port).
    looked: bool,
    /// Our close_notify is made (or cannot be: the handshake never finished).
    said_goodbye: bool,
    /// The peer's close_notify has come: rustls says so once, and reading says so ever after.
    peer_closed: bool,
    /// rustls reported this error: it must not be asked to process anything again (it would
    /// meet the same bad bytes and fail a second time, which it refuses by panicking).
    failed: Option<rustls::Error>,

    /// Where the records begin in what we read, to charge each one.
    records: RecordScan,
}

pub enum Transport {
    Plain,
    /// Boxed: TLS's state is about a kilobyte, and plaintext clients share the enum.
    Tls(Box<Tls>),
}

impl Transport {
    /// The transport of a connection accepted on a TLS listener.
    pub fn tls(config: &Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        Ok(Transport::Tls(Box::new(Tls {
            conn: UnbufferedServerConnection::new(Arc::clone(config))?,
            inbox: Vec::new(),
            unopened: false,
            outbox: Vec::new(),
            looked: false,
            said_goodbye: false,
            peer_closed: false,
            failed: None,
            records: RecordScan::default(),
        })))
    }

    /// Records wait here for the socket (encrypted, refused by a full socket, or a handshake
    /// message or alert not yet sent). Part of the client's output: its bytes are owed.
    pub fn holds_output(&self) -> bool {
        matches!(self, Transport::Tls(tls) if !tls.outbox.is_empty())
    }

    /// A TLS handshake is under way: no plaintext can be sent yet ([`Transport::deliver`] takes
    /// none). A TLS event for the connection to act on (an answer it cannot give).
    pub fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.conn.is_handshaking())
    }

    /// The bytes the transport's buffers hold (the half records of TLS), for the memory ledger.
    pub fn buffer_capacity(&self) -> usize {
        match self {
            Transport::Plain => 0,
            Transport::Tls(tls) => tls.inbox.capacity() + tls.outbox.capacity(),
        }
    }

    /// Reads once, taking at most `budget` bytes off the wire: plaintext into `buf` (at least
    /// [`READ_MIN`] long), however many TLS records (or none) that takes.
    pub fn read(
        &mut self,
        socket: &mut impl Socket,
        buf: &mut [u8],
        budget: usize,
    ) -> io::Result<Input> {
        match self {
            Transport::Plain => match socket.read(&mut buf[..budget.min(READ_CHUNK)]) {
                Ok(0) => Ok(Input::Eof),
                Ok(n) => Ok(Input::Data { len: n, cost: n }),
                Err(e) if would_block(&e) => Ok(Input::WouldBlock),
                Err(e) => Err(e),
            },
            Transport::Tls(tls) => tls.read(socket, buf, budget),
        }
    }

    /// Writes the records held here, then as much of `plaintext` as the socket takes (encrypted
    /// a record at a time under TLS, and only once the socket has taken the records before it);
    /// nothing of `plaintext` while a TLS handshake is under way.
    pub fn deliver(&mut self, socket: &mut impl Write, plaintext: &[u8]) -> io::Result<Written> {
        match self {
            Transport::Plain => write_plain(socket, plaintext),
            Transport::Tls(tls) => tls.write(socket, plaintext),
        }
    }

    /// The connection has said all: under TLS, its close_notify alert is made (once), to go
    /// out with [`Transport::flush`] before our FIN, and reading only drops what comes until
    /// EOF. Returns whether anything was made.
    pub fn say_goodbye(&mut self) -> bool {
        match self {
            Transport::Tls(tls) if !tls.said_goodbye => {
                tls.said_goodbye = true;
                tls.close_notify()
            }
            _ => false,
        }
    }

    /// Writes the records held here (nothing new is encrypted) until they are gone or the
    /// socket is full; returns the bytes the socket took.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        if let Transport::Tls(tls) = self {
            tls.send_outbox(socket, &mut written)?;
        }
        Ok(written)
    }

    /// Before the socket is closed: a last try to send the records still held (the end of a
    /// close frame, an alert), without waiting for the socket.
    pub fn last_words(&mut self, socket: &mut impl Write) {
        let _ = self.flush(socket);
    }
}

/// Takes the peer's bytes and drops them unopened (what they cost is their length), until EOF.
fn drain(socket: &mut impl Read, buf: &mut [u8]) -> io::Result<Input> {
    match socket.read(buf) {
        Ok(0) => Ok(Input::Eof),
        Ok(n) => Ok(Input::Data { len: 0, cost: n }),
        Err(e) if would_block(&e) => Ok(Input::WouldBlock),
        Err(e) => Err(e),
    }
}

/// Writes plaintext until all is taken or the socket is full.
fn write_plain(socket: &mut impl Write, bytes: &[u8]) -> io::Result<Written> {
    let taken = write_some(socket, bytes)?;
    Ok(Written { taken, wire: taken })
}

/// Writes `bytes` until all are taken or the socket is full; returns how many it took.
fn write_some(socket: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut taken = 0;
    while taken < bytes.len() {
        match socket.write(&bytes[taken..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => taken += n,
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(taken)
}

/// The plaintext buffer a TLS read needs: room for the largest record's plaintext, beside the
/// ciphertext it reads into the buffer's upper half.
pub const READ_MIN: usize = 2 * (MAX_PLAINTEXT + 1024);

const _: () = assert!(
    READ_MIN <= READ_CHUNK,
    "the loop's read buffer must take a TLS read"
);

/// The most plaintext one TLS record carries (2^14, RFC 8446 §5.1; rustls refuses more).
const MAX_PLAINTEXT: usize = 16 * 1024;

/// The most ciphertext a client's inbox may hold: a handshake message joined from pieces, up to
/// the 64 KiB rustls takes for one (its buffered connection holds no more while joining), and
/// the largest record after it (TLS 1.2's: 2^14 + 2048 and a header). rustls keeps each piece's
/// whole record until the message is complete, so a peer sending one byte of it a record,
/// padded to 16 KiB, would otherwise make it hold up to 65,535 of them, a gigabyte.
const MAX_INBOX: usize = 64 * 1024 + MAX_PLAINTEXT + 2048 + 5;

thread_local! {
    /// Where outgoing records are encrypted before the socket takes them. One for the thread's
    /// TLS clients (the loop is one thread): a client keeps ciphertext of its own only when its
    /// socket refused some (its `outbox`), so an idle one keeps none.
    static SEALED: RefCell<Vec<u8>> = RefCell::new(vec![0; SEAL_CHUNK + 1024]);
}

/// What one read from the socket gave.
enum Took {
    Bytes(usize),
    /// EOF.
    End,
    /// Nothing now (or an error left for the next read).
    Nothing,
}

/// Why decrypting stopped.
enum Opened {
    /// No whole record left: more must be read.
    More,
    /// The plaintext buffer cannot take another record.
    Full,
    /// The peer's close_notify has come.
    Closed,
    Failed(rustls::Error),
}

impl Tls {
    /// Opens what is held, then what the socket gives (at most `budget` bytes off the wire in
    /// all): the plaintext of whole records to the front of `buf`, the start of a record kept.
    /// The socket's bytes land in `buf`'s upper half and are decrypted there when nothing is
    /// held (the usual case: no copy, no allocation); otherwise after what is held.
    fn read(
        &mut self,
        socket: &mut impl Socket,
        buf: &mut [u8],
        budget: usize,
    ) -> io::Result<Input> {
        if let Some(input) = self.before_reading(socket, buf, budget)? {
            return Ok(input);
        }
        let (plain, wire) = buf.split_at_mut(buf.len() / 2);
        let (mut len, mut cost) = (0, 0);
        let mut ended = self.peer_closed;
        // Records held whole (the plaintext buffer was full) are opened before reading more.
        let mut read_first = !self.unopened;
        while !ended && cost < budget {
            let opened = if read_first {
                let want = (budget - cost).min(wire.len());
                match self.take(socket, &mut wire[..want], len, &mut cost)? {
                    Took::Bytes(n) => self.open_taken(&mut wire[..n], plain, &mut len),
                    Took::End => {
                        ended = true;
                        break;
                    }
                    Took::Nothing if len > 0 => break,
                    Took::Nothing => return Ok(Input::WouldBlock),
                }
            } else {
                self.open_inbox(plain, &mut len)
            };
            read_first = true;
            match self.judge(opened) {
                Opened::More => {}
                Opened::Full => break,
                Opened::Closed => ended = true,
                Opened::Failed(e) => {
                    let failed = self.fail(e);
                    if len == 0 {
                        return Ok(failed);
                    }
                    break; // the plaintext before the bad record first; the failure next read
                }
            }
        }
        self.peer_closed |= ended;
        Ok(if len == 0 && ended {
            Input::Eof
        } else {
            // A budget spent on half a record is still a read: the loop comes back for more.
            Input::Data { len, cost }
        })
    }

    /// What a read meets before any record: plaintext HTTP on the TLS port, an earlier failure,
    /// or the end after our goodbye (the peer's bytes are then drained unopened). `None`: read.
    fn before_reading(
        &mut self,
        socket: &mut impl Socket,
        buf: &mut [u8],
        budget: usize,
    ) -> io::Result<Option<Input>> {
        if !self.looked {
            match first_byte(socket)? {
                None => return Ok(Some(Input::WouldBlock)),
                Some(byte) if byte.is_ascii_uppercase() => return Ok(Some(Input::PlainHttp)),
                Some(_) => self.looked = true,
            }
        }
        if let Some(e) = &self.failed {
            return Ok(Some(Input::TlsFailed(e.clone())));
        }
        if self.said_goodbye && !self.peer_closed {
            // All is said: the connection reads nothing more, only the end. And rustls, once
            // it has sent its close_notify, must meet no bad record: it would send a second
            // alert, which it refuses by panicking (in a debug build).
            let take = budget.clamp(1, buf.len());
            return drain(socket, &mut buf[..take]).map(Some);
        }
        debug_assert!(
            buf.len() >= READ_MIN,
            "a TLS read needs READ_MIN bytes of buffer"
        );
        Ok(None)
    }

    /// One read from the socket into `wire`, its cost (bytes and records) added to `cost`. An
    /// error after plaintext was opened (`opened` bytes) is left for the next read to meet, so
    /// that plaintext goes first.
    fn take(
        &mut self,
        socket: &mut impl Socket,
        wire: &mut [u8],
        opened: usize,
        cost: &mut usize,
    ) -> io::Result<Took> {
        match socket.read(wire) {
            Ok(0) => Ok(Took::End),
            Ok(n) => {
                *cost += n + self.records.feed(&wire[..n]) * RECORD_COST;
                Ok(Took::Bytes(n))
            }
            Err(_) if opened > 0 => Ok(Took::Nothing),
            Err(e) if would_block(&e) => Ok(Took::Nothing),
            Err(e) => Err(e),
        }
    }

    /// Opens the bytes just read: where they lie when nothing is held (what is left of a
    /// record then goes to the inbox), or after what is held.
    fn open_taken(&mut self, taken: &mut [u8], plain: &mut [u8], len: &mut usize) -> Opened {
        if self.inbox.is_empty() {
            let (done, opened) = open(&mut self.conn, &mut self.outbox, taken, plain, len);
            self.inbox.extend_from_slice(&taken[done..]);
            opened
        } else {
            self.inbox.extend_from_slice(taken);
            self.open_inbox(plain, len)
        }
    }

    /// What an opening means for the inbox: records left unopened are noted, an inbox past
    /// `MAX_INBOX` is refused, and what follows the peer's close_notify goes (rustls reads
    /// nothing after it).
    fn judge(&mut self, opened: Opened) -> Opened {
        self.unopened = matches!(opened, Opened::Full);
        match opened {
            Opened::More if self.inbox.len() > MAX_INBOX => Opened::Failed(
                rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge),
            ),
            Opened::Closed => {
                self.discard(self.inbox.len());
                Opened::Closed
            }
            opened => opened,
        }
    }

    /// Opens the whole records held; the rest stays (and the buffer goes once empty).
    fn open_inbox(&mut self, plain: &mut [u8], len: &mut usize) -> Opened {
        let (done, opened) = open(
            &mut self.conn,
            &mut self.outbox,
            &mut self.inbox,
            plain,
            len,
        );
        self.discard(done);
        opened
    }

    /// Drops `done` bytes from the front of the inbox; an empty inbox keeps no allocation.
    fn discard(&mut self, done: usize) {
        self.inbox.drain(..done);
        if self.inbox.is_empty() {
            self.inbox = Vec::new();
        }
    }

    /// Encrypts `plaintext` and writes it after what is held, until all is taken or the socket
    /// is full. What the socket refuses of a write's records is kept (the outbox) and goes first
    /// next time, so at most one write's worth (`SEAL_CHUNK`) of ciphertext waits here.
    fn write(&mut self, socket: &mut impl Write, plaintext: &[u8]) -> io::Result<Written> {
        let mut done = Written::default();
        while self.send_outbox(socket, &mut done.wire)? && done.taken < plaintext.len() {
            let end = plaintext.len().min(done.taken + SEAL_CHUNK);
            let sent = SEALED.with_borrow_mut(|sealed| -> io::Result<bool> {
                let Some(n) = self.seal(&plaintext[done.taken..end], sealed)? else {
                    return Ok(false); // mid-handshake, or closed: nothing can be sent yet
                };
                if self.outbox.is_empty() {
                    let taken = write_some(socket, &sealed[..n])?;
                    done.wire += taken;
                    self.outbox.extend_from_slice(&sealed[taken..n]);
                } else {
                    // A record rustls made first (a key update) goes before it.
                    self.outbox.extend_from_slice(&sealed[..n]);
                }
                Ok(true)
            })?;
            if !sent {
                break;
            }
            done.taken = end;
        }
        Ok(done)
    }

    /// Encrypts `plaintext` into `sealed` (grown if rustls asks for more); the ciphertext's
    /// length, or `None` when no application data can be sent.
    fn seal(&mut self, plaintext: &[u8], sealed: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let result = self.writer(|mut traffic, _| loop {
            match traffic.encrypt(plaintext, sealed) {
                Err(EncryptError::InsufficientSize(size)) => sealed.resize(size.required_size, 0),
                other => return other,
            }
        });
        match result {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(e)) => Err(io::Error::other(e)),
        }
    }

    /// Makes our close_notify, after anything rustls still has to send; false if it cannot be
    /// made (the handshake is past its first message, or the connection is closed).
    fn close_notify(&mut self) -> bool {
        if self.conn.handshake_kind().is_none() && self.failed.is_none() {
            // No keys yet (a handshake cut off before our first message, answered with a 408):
            // the alert goes in the clear, as a plaintext record (RFC 8446 §6.1). rustls's
            // unbuffered API makes a close_notify only once the handshake is done.
            self.outbox.extend_from_slice(&PLAINTEXT_CLOSE_NOTIFY);
            return true;
        }
        let made = self.writer(|mut traffic, outbox| {
            let mut alert = [0u8; 64];
            let n = traffic.queue_close_notify(&mut alert).unwrap_or(0);
            outbox.extend_from_slice(&alert[..n]);
            n > 0
        });
        made == Some(true)
    }

    /// rustls failed: no more processing, and its alert to the outbox.
    fn fail(&mut self, e: rustls::Error) -> Input {
        self.failed = Some(e.clone());
        self.collect_alert();
        Input::TlsFailed(e)
    }

    /// After a TLS error: the alert rustls made for the peer, to the outbox (it goes out as the
    /// socket closes). rustls hands queued records out before it looks at input again, so while
    /// it has some, asking cannot make it meet the bad bytes a second time.
    fn collect_alert(&mut self) {
        while self.conn.wants_write() {
            match self.conn.process_tls_records(&mut self.inbox).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.outbox),
                _ => break,
            }
        }
    }

    /// Moves what rustls has to send (handshake messages, alerts) to the outbox until it can
    /// encrypt application data, then hands `seal` its writer; `None` if it cannot (a handshake
    /// under way, or an error). rustls is shown the inbox, whose offsets it may be keeping (a
    /// handshake message half joined), and which then holds no whole record it has not seen,
    /// so it has no application data to hand out here; records waiting unopened it is shown
    /// none of (it keeps no place in them).
    fn writer<R>(
        &mut self,
        seal: impl FnOnce(WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        if self.failed.is_some() {
            return None;
        }
        loop {
            let incoming: &mut [u8] = if self.unopened {
                &mut []
            } else {
                &mut self.inbox
            };
            let status = self.conn.process_tls_records(incoming);
            let discard = status.discard;
            let result = match status.state {
                Ok(ConnectionState::WriteTraffic(traffic)) => {
                    return Some(seal(traffic, &mut self.outbox))
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.outbox);
                    None
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done(); // the outbox has it: ours to send
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Err(e) => {
                    self.discard(discard);
                    self.fail(e);
                    return None;
                }
                Ok(_) => Some(()),
            };
            self.discard(discard);
            if result.is_some() {
                return None;
            }
        }
    }

    /// Writes the outbox until it is empty (true) or the socket is full (false).
    fn send_outbox(&mut self, socket: &mut impl Write, written: &mut usize) -> io::Result<bool> {
        if self.outbox.is_empty() {
            return Ok(true);
        }
        let taken = write_some(socket, &self.outbox)?;
        *written += taken;
        self.outbox.drain(..taken);
        if self.outbox.is_empty() {
            self.outbox = Vec::new(); // an idle client holds no buffer
            return Ok(true);
        }
        Ok(false)
    }
}

/// Decrypts the whole records at the front of `cipher` while `plain` has room for one more
/// record's plaintext, appending it at `*len`; handshake records rustls makes meanwhile go to
/// `outbox`. Returns how many bytes of `cipher` rustls is done with, and why it stopped. Called
/// with room for a record, it is full only right after one (see `Tls::unopened`).
fn open(
    conn: &mut UnbufferedServerConnection,
    outbox: &mut Vec<u8>,
    cipher: &mut [u8],
    plain: &mut [u8],
    len: &mut usize,
) -> (usize, Opened) {
    debug_assert!(plain.len() - *len >= MAX_PLAINTEXT, "called with no room");
    let mut done = 0;
    loop {
        if plain.len() - *len < MAX_PLAINTEXT {
            return (done, Opened::Full);
        }
        let status = conn.process_tls_records(&mut cipher[done..]);
        let discard = status.discard;
        let stop = match status.state {
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut stop = None;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            let end = *len + record.payload.len();
                            let Some(room) = plain.get_mut(*len..end) else {
                                stop = Some(Opened::Failed(rustls::Error::General(
                                    "a record larger than TLS allows".into(),
                                )));
                                break;
                            };
                            room.copy_from_slice(record.payload);
                            *len = end;
                        }
                        Err(e) => {
                            stop = Some(Opened::Failed(e));
                            break;
                        }
                    }
                }
                stop
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                encode(&mut data, outbox);
                None
            }
            Ok(ConnectionState::TransmitTlsData(data)) => {
                data.done(); // the outbox has it: the loop sends it
                None
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Opened::Closed),
            // Early data is never offered (the config's `max_early_data_size` is 0).
            Ok(ConnectionState::ReadEarlyData(mut early)) => {
                while early.next_record().is_some() {}
                None
            }
            Ok(_) => Some(Opened::More), // a handshake or traffic waiting for more bytes
            Err(e) => Some(Opened::Failed(e)),
        };
        done += discard;
        if let Some(stop) = stop {
            return (done, stop);
        }
    }
}

/// A close_notify alert in a plaintext record: type 21 (alert), legacy version 3.3, length 2,
/// level 1 (warning), description 0 (close_notify).
const PLAINTEXT_CLOSE_NOTIFY: [u8; 7] = [21, 3, 3, 0, 2, 1, 0];

/// Appends a handshake record (or alert) rustls made to `outbox`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, outbox: &mut Vec<u8>) {
    let need = match data.encode(&mut []) {
        Err(EncodeError::InsufficientSize(size)) => size.required_size,
        _ => return,
    };
    let at = outbox.len();
    outbox.resize(at + need, 0);
    let made = data.encode(&mut outbox[at..]).unwrap_or(0);
    outbox.truncate(at + made);
}

/// Follows TLS record boundaries through the bytes read, however they are split: a 5-byte header
/// (type, version, a 16-bit length), then that many bytes. A few bytes per connection; work in
/// proportion to the records, not the bytes (a record's body is skipped by its length).
#[derive(Debug, Default)]
struct RecordScan {
    header: [u8; 5],
    /// Bytes of the current header seen so far.
    seen: usize,
    /// Bytes of the current record's body still to come.
    left: usize,
}

impl RecordScan {
    /// Takes the next bytes of the stream; returns how many records begin in them.
    fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let mut begun = 0;
        while !bytes.is_empty() {
            if self.left > 0 {
                let skip = self.left.min(bytes.len());
                self.left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.seen] = bytes[0];
            self.seen += 1;
            bytes = &bytes[1..];
            if self.seen == self.header.len() {
                self.seen = 0;
                self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                begun += 1;
            }
        }
        begun
    }
}

/// The first byte waiting on a TLS connection, peeked (rustls still reads it), to tell a
/// plaintext HTTP request from TLS: a TLS record starts with its content type (22 for a
/// handshake), a request with an upper-case method. `None`: nothing has come yet. At EOF, a
/// zero stands in (not HTTP: rustls then reads the EOF itself).
fn first_byte(socket: &mut impl Socket) -> io::Result<Option<u8>> {
    let mut first = [0u8; 1];
    match socket.peek(&mut first) {
        Ok(_) => Ok(Some(first[0])),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage};
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore};
    use rustls::{ContentType, ProtocolVersion, SupportedCipherSuite};

    /// A socket in memory: it reads what the test put in `inbound`, and takes at most `room`
    /// more bytes into `outbound` before it refuses (`WouldBlock`), as a full socket does.
    #[derive(Default)]
    struct Fake {
        inbound: Vec<u8>,
        read_at: usize,
        outbound: Vec<u8>,
        room: usize,
        /// Where a read stops short and the next fails once with this error.
        fails_at: Option<(usize, io::ErrorKind)>,
        /// The next write fails with this error (once).
        write_fails: Option<io::ErrorKind>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some((at, kind)) = self.fails_at {
                if self.read_at == at {
                    self.fails_at = None;
                    return Err(kind.into());
                }
            }
            let waiting = &self.inbound[self.read_at..];
            if waiting.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let stop = self
                .fails_at
                .map_or(usize::MAX, |(at, _)| at - self.read_at);
            let n = waiting.len().min(buf.len()).min(stop);
            buf[..n].copy_from_slice(&waiting[..n]);
            self.read_at += n;
            Ok(n)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(kind) = self.write_fails.take() {
                return Err(kind.into());
            }
            let n = self.room.min(buf.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.outbound.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for Fake {
        fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some((at, kind)) = self.fails_at {
                if self.read_at == at {
                    return Err(kind.into());
                }
            }
            match self.inbound.get(self.read_at) {
                Some(&byte) => {
                    buf[0] = byte;
                    Ok(1)
                }
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    /// Hands what the server wrote to the client.
    fn to_client(client: &mut ClientConnection, socket: &mut Fake) {
        let mut written = &socket.outbound[..];
        while !written.is_empty() {
            client.read_tls(&mut written).unwrap();
            client.process_new_packets().unwrap();
        }
        socket.outbound.clear();
    }

    /// A self-signed certificate for localhost, as a TLS 1.3 server's configuration and a
    /// client's that trusts it (also used by the loop's TLS tests).
    pub(crate) fn tls_configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A server transport and a rustls client, their handshake done over a `Fake`.
    fn connected() -> (Transport, ClientConnection, Fake) {
        let (server, client) = tls_configs();
        connected_with(&server, client)
    }

    fn connected_with(
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Transport, ClientConnection, Fake) {
        let mut transport = Transport::tls(server).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client, name).unwrap();
        let mut socket = Fake {
            room: usize::MAX,
            ..Fake::default()
        };
        while client.is_handshaking() || transport.is_handshaking() {
            while client.wants_write() {
                client.write_tls(&mut socket.inbound).unwrap();
            }
            let input = transport
                .read(&mut socket, &mut [0; READ_CHUNK], usize::MAX)
                .unwrap();
            assert!(matches!(input, Input::WouldBlock), "{input:?}");
            transport.flush(&mut socket).unwrap();
            to_client(&mut client, &mut socket);
        }
        (transport, client, socket)
    }

    /// A client that seals its records by hand once the handshake is done (rustls's client
    /// cannot make malformed ones): the transport, its socket, the client's traffic key and
    /// the sequence number of its next record.
    fn connected_by_hand() -> (Transport, Fake, Box<dyn MessageEncrypter>, u64) {
        let (server, client) = tls_configs();
        let mut client = (*client).clone();
        client.enable_secret_extraction = true;
        let (transport, client, socket) = connected_with(&server, Arc::new(client));
        let Some(SupportedCipherSuite::Tls13(suite)) = client.negotiated_cipher_suite() else {
            panic!("TLS 1.3 only");
        };
        let (seq, secrets) = client.dangerous_extract_secrets().unwrap().tx;
        let key = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                suite.aead_alg.encrypter(key, iv)
            }
            _ => panic!("an AEAD the ring provider does not offer"),
        };
        (transport, socket, key, seq)
    }

    /// A TLS 1.3 record sealed by hand: `content` of type `typ`, then `padding` zeros (RFC 8446
    /// §5.4: the receiver strips them).
    fn seal_by_hand(
        key: &mut Box<dyn MessageEncrypter>,
        seq: &mut u64,
        typ: u8,
        content: &[u8],
        padding: usize,
    ) -> Vec<u8> {
        // The encrypter appends the type byte itself: the last byte of the inner plaintext.
        let mut inner = content.to_vec();
        inner.push(typ);
        inner.resize(inner.len() + padding, 0);
        let last = inner.pop().unwrap();
        let message = OutboundPlainMessage {
            typ: ContentType::from(last),
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::from(&inner[..]),
        };
        let record = key.encrypt(message, *seq).unwrap().encode();
        *seq += 1;
        record
    }

    /// One handshake message spread over many records, a byte each padded to 16 KiB: rustls
    /// keeps every record until the message is whole (its header may announce 64 KiB, so up to
    /// a gigabyte). The transport refuses it once its inbox holds more than a message's worth.
    #[test]
    fn a_handshake_message_in_padded_pieces_is_refused_not_held() {
        let (mut transport, mut socket, mut key, mut seq) = connected_by_hand();
        let header = [24u8, 0, 0xff, 0xff]; // a KeyUpdate of 65,535 bytes
        let mut buf = vec![0; READ_CHUNK];
        for i in 0..1000 {
            let byte = header.get(i).copied().unwrap_or(0);
            socket
                .inbound
                .extend(seal_by_hand(&mut key, &mut seq, 22, &[byte], 16_000));
            match transport.read(&mut socket, &mut buf, usize::MAX).unwrap() {
                Input::TlsFailed(_) => return,
                Input::WouldBlock => {}
                other => panic!("{other:?}"),
            }
            let held = transport.buffer_capacity();
            assert!(held <= 256 * 1024, "{held} bytes held after {i} pieces");
        }
        panic!("a thousand pieces taken");
    }

    /// A read that filled its plaintext buffer leaves whole records in the inbox for the next
    /// read, which may come a turn later (the client's budget is spent). Meanwhile a write
    /// goes out: the loop asks for WRITABLE whenever a write leaves bytes, and a socket that
    /// took nothing because it was never full brings no WRITABLE once those records are read.
    #[test]
    fn records_waiting_to_be_opened_do_not_hold_up_a_write() {
        let (mut transport, mut client, mut socket) = connected();
        for i in 0..3 {
            client.writer().write_all(&[i; 9000]).unwrap();
            client.write_tls(&mut socket.inbound).unwrap();
        }
        let mut buf = vec![0; READ_CHUNK];
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(
            matches!(input, Input::Data { len: 18_000, .. }),
            "{input:?}"
        );
        assert_eq!(
            socket.read_at,
            socket.inbound.len(),
            "the third record is held"
        );

        let written = transport.deliver(&mut socket, b"reply").unwrap();
        assert_eq!(written.taken, 5, "a socket with room takes the reply");
        let mut replied = Vec::new();
        assert!(client_takes(&mut client, &mut socket, &mut replied));
        assert_eq!(replied, b"reply");

        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::Data { len: 9000, .. }), "{input:?}");
        assert_eq!(buf[..9000], [2; 9000]);
    }

    /// A client may send its close_notify and then more (garbage, or records it had queued):
    /// rustls reads nothing after the close_notify. The server still answers the half-closed
    /// client, and keeps none of those bytes.
    #[test]
    fn bytes_after_a_close_notify_neither_hold_up_the_answer_nor_stay() {
        let (mut transport, mut client, mut socket) = connected();
        client.writer().write_all(b"request").unwrap();
        client.send_close_notify();
        while client.wants_write() {
            client.write_tls(&mut socket.inbound).unwrap();
        }
        socket.inbound.extend_from_slice(&[23, 3, 3, 0, 20]);
        socket.inbound.extend_from_slice(&[0; 20]);
        let mut buf = vec![0; READ_CHUNK];
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::Data { len: 7, .. }), "{input:?}");
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::Eof), "{input:?}");

        assert_eq!(transport.deliver(&mut socket, b"answer").unwrap().taken, 6);
        assert!(transport.say_goodbye());
        assert!(transport.flush(&mut socket).is_ok());
        to_client(&mut client, &mut socket);
        let mut answer = Vec::new();
        assert!(client.reader().read_to_end(&mut answer).is_ok());
        assert_eq!(answer, b"answer");
        assert_eq!(transport.buffer_capacity(), 0, "nothing kept once closed");
    }

    /// A handshake message after the handshake (a KeyUpdate) may come in pieces: rustls keeps
    /// the first while it waits for the rest, and the server writes meanwhile.
    #[test]
    fn a_key_update_in_pieces_does_not_hold_up_a_write() {
        let (mut transport, mut socket, mut key, mut seq) = connected_by_hand();
        let mut buf = vec![0; READ_CHUNK];
        let update_not_requested = [24u8, 0, 0, 1, 0];
        socket.inbound.extend(seal_by_hand(
            &mut key,
            &mut seq,
            22,
            &update_not_requested[..2],
            0,
        ));
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::WouldBlock), "{input:?}");
        assert_eq!(transport.deliver(&mut socket, b"x").unwrap().taken, 1);

        socket.inbound.extend(seal_by_hand(
            &mut key,
            &mut seq,
            22,
            &update_not_requested[2..],
            0,
        ));
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::WouldBlock), "{input:?}");
        assert_eq!(
            transport.buffer_capacity(),
            0,
            "the KeyUpdate is whole and done"
        );
    }

    /// A KeyUpdate that asks for ours: rustls sends it with the next record, sealed with the
    /// old key and ahead of it, also when a full socket left part of an older record waiting.
    #[test]
    fn a_requested_key_update_goes_ahead_of_what_follows() {
        let (mut transport, mut client, mut socket) = connected();
        socket.room = 100;
        let cut = transport.deliver(&mut socket, &[b'a'; 5000]).unwrap();
        assert_eq!(cut.taken, 5000);
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"hello").unwrap();
        while client.wants_write() {
            client.write_tls(&mut socket.inbound).unwrap();
        }
        assert_eq!(read_all(&mut transport, &mut socket).0, 5);

        socket.room = usize::MAX;
        assert_eq!(transport.deliver(&mut socket, b"after").unwrap().taken, 5);
        let mut got = Vec::new();
        assert!(client_takes(&mut client, &mut socket, &mut got));
        assert_eq!(got.len(), 5005);
        assert!(got.starts_with(&[b'a'; 5000]) && got.ends_with(b"after"));
    }

    /// A read error after some records were opened in the same read (EINTR, which the loop
    /// retries; a reset, after which the next read says EOF) loses none of their plaintext:
    /// rustls has let go of those records.
    #[test]
    fn a_read_error_after_records_were_opened_loses_none_of_them() {
        for kind in [io::ErrorKind::Interrupted, io::ErrorKind::ConnectionReset] {
            let (mut transport, mut client, mut socket) = connected();
            let start = socket.inbound.len();
            client.writer().write_all(b"hello").unwrap();
            client.write_tls(&mut socket.inbound).unwrap();
            socket.fails_at = Some((socket.inbound.len(), kind));
            client.writer().write_all(b"world").unwrap();
            client.write_tls(&mut socket.inbound).unwrap();
            assert_eq!(socket.read_at, start);

            let mut got = Vec::new();
            let mut buf = vec![0; READ_CHUNK];
            loop {
                match transport.read(&mut socket, &mut buf, usize::MAX) {
                    Ok(Input::Data { len, .. }) => got.extend_from_slice(&buf[..len]),
                    Err(e) if e.kind() == kind => {}
                    other => {
                        assert!(matches!(other, Ok(Input::WouldBlock)), "{other:?}");
                        break;
                    }
                }
            }
            assert_eq!(got, b"helloworld", "{kind:?}");
        }
    }

    /// Once the server has said goodbye (its close_notify made), what the peer sends is taken
    /// and dropped unopened: a bad record would have rustls send a second alert, which it
    /// refuses by panicking.
    #[test]
    fn what_comes_after_our_goodbye_is_dropped_unopened() {
        let (mut transport, _client, mut socket) = connected();
        assert!(transport.say_goodbye());
        transport.flush(&mut socket).unwrap();
        socket.inbound.extend_from_slice(&[23, 3, 3, 0, 20]);
        socket.inbound.extend_from_slice(&[0; 20]);
        let mut buf = vec![0; READ_CHUNK];
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(
            matches!(input, Input::Data { len: 0, cost: 25 }),
            "{input:?}"
        );
        let input = transport.read(&mut socket, &mut buf, usize::MAX).unwrap();
        assert!(matches!(input, Input::WouldBlock), "{input:?}");
    }

    /// Plaintext of the client's records, read as the loop does; returns (plaintext, cost).
    fn read_all(transport: &mut Transport, socket: &mut Fake) -> (usize, usize) {
        let (mut len_sum, mut cost_sum) = (0, 0);
        loop {
            match transport
                .read(socket, &mut [0; READ_CHUNK], usize::MAX)
                .unwrap()
            {
                Input::Data { len, cost } => (len_sum, cost_sum) = (len_sum + len, cost_sum + cost),
                Input::WouldBlock => return (len_sum, cost_sum),
                other => panic!("{other:?}"),
            }
        }
    }

    /// The cost of a read is the ciphertext it took and a charge per record, whatever the
    /// plaintext: a thousand one-byte records cost as much as their bytes and a thousand charges.
    #[test]
    fn a_read_costs_its_ciphertext_and_each_record_not_its_plaintext() {
        let (mut transport, mut client, mut socket) = connected();
        let before = socket.inbound.len();
        for _ in 0..1000 {
            client.writer().write_all(b"x").unwrap();
            client.write_tls(&mut socket.inbound).unwrap();
        }
        let wire = socket.inbound.len() - before;
        assert!(wire > 20 * 1000, "one record per byte: {wire}");
        assert_eq!(
            read_all(&mut transport, &mut socket),
            (1000, wire + 1000 * RECORD_COST)
        );

        let mut plain = Fake {
            inbound: vec![b'x'; 1000],
            ..Fake::default()
        };
        assert_eq!(read_all(&mut Transport::Plain, &mut plain), (1000, 1000));
    }

    /// A record a full socket cut off stays the transport's output until the socket takes it
    /// all, ahead of anything newer, and every byte of it and the goodbye arrive.
    #[test]
    fn a_record_cut_off_by_a_full_socket_is_held_until_written() {
        let (mut transport, mut client, mut socket) = connected();
        socket.room = 100;
        let sent = transport.deliver(&mut socket, &[b'x'; 5000]).unwrap();
        assert_eq!(
            sent,
            Written {
                taken: 5000,
                wire: 100
            },
            "one record, cut off"
        );
        assert!(transport.holds_output());
        let more = transport.deliver(&mut socket, b"more").unwrap();
        assert_eq!(
            more,
            Written::default(),
            "nothing newer before the held record"
        );
        assert!(
            transport.say_goodbye() && !transport.say_goodbye(),
            "queued once"
        );
        assert!(transport.holds_output());

        socket.room = usize::MAX;
        assert!(transport.flush(&mut socket).unwrap() > 4900);
        assert!(!transport.holds_output());
        to_client(&mut client, &mut socket);
        let mut plain = Vec::new();
        let end = client.reader().read_to_end(&mut plain);
        assert!(end.is_ok(), "a clean close_notify at the end: {end:?}");
        assert_eq!(plain, [b'x'; 5000]);
    }

    /// Records of every length (empty, one byte, a full 16 KiB), split at every place.
    #[test]
    fn records_are_counted_however_the_stream_is_split() {
        let mut stream = Vec::new();
        let lengths = [0usize, 1, 23, 255, 256, 16_384 + 256];
        for (i, &len) in lengths.iter().enumerate() {
            stream.extend_from_slice(&[23, 3, 3]);
            stream.extend_from_slice(&(len as u16).to_be_bytes());
            stream.extend(std::iter::repeat_n(i as u8, len));
        }
        for step in [1, 2, 4, 5, 6, 7, 100, 4096, stream.len()] {
            let mut scan = RecordScan::default();
            let begun: usize = stream.chunks(step).map(|piece| scan.feed(piece)).sum();
            assert_eq!(begun, lengths.len(), "in pieces of {step}");
            assert_eq!((scan.seen, scan.left), (0, 0), "in pieces of {step}");
        }
    }

    /// What the client has decrypted so far (and whether it saw an error or the end).
    fn client_takes(client: &mut ClientConnection, socket: &mut Fake, got: &mut Vec<u8>) -> bool {
        let mut written = &socket.outbound[..];
        let mut ok = true;
        let mut buf = [0; 4096];
        while ok && !written.is_empty() {
            ok = client.read_tls(&mut written).is_ok() && client.process_new_packets().is_ok();
            while let Ok(n @ 1..) = client.reader().read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        socket.outbound.clear();
        ok
    }

    /// The loop's read of one client, once: until it would block, ends, or the budget is spent.
    /// Returns false once the transport reports the end or an error.
    fn read_once(
        transport: &mut Transport,
        socket: &mut Fake,
        budget: usize,
        got: &mut Vec<u8>,
    ) -> bool {
        let mut buf = vec![0; READ_CHUNK];
        let mut spent = 0;
        while spent < budget {
            match transport.read(socket, &mut buf, budget - spent).unwrap() {
                Input::Data { len, cost } => {
                    got.extend_from_slice(&buf[..len]);
                    spent += cost;
                }
                Input::WouldBlock => return true,
                Input::Eof | Input::TlsFailed(_) => return false,
                Input::PlainHttp => panic!("plaintext HTTP after a handshake"),
            }
        }
        true
    }

    /// Before the first byte: nothing yet is "nothing now", and a reset is an error (not a
    /// connection left to wait for its handshake deadline).
    #[test]
    fn before_the_first_byte_nothing_waits_and_a_reset_ends() {
        let (server, _) = tls_configs();
        let mut transport = Transport::tls(&server).unwrap();
        let mut socket = Fake::default();
        let input = transport.read(&mut socket, &mut [0; READ_CHUNK], usize::MAX);
        assert!(matches!(input, Ok(Input::WouldBlock)), "{input:?}");
        socket.fails_at = Some((0, io::ErrorKind::ConnectionReset));
        let input = transport.read(&mut socket, &mut [0; READ_CHUNK], usize::MAX);
        assert_eq!(
            input.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    /// A socket's errors are the caller's, both ways and over both transports (an interrupted
    /// write is tried again): a reset is never taken for "nothing now".
    #[test]
    fn socket_errors_reach_the_caller_and_an_interrupted_write_is_retried() {
        let (mut tls, _client, mut tls_socket) = connected();
        let mut plain_socket = Fake {
            room: usize::MAX,
            ..Fake::default()
        };
        let mut plain = Transport::Plain;
        for (transport, socket) in [(&mut plain, &mut plain_socket), (&mut tls, &mut tls_socket)] {
            socket.write_fails = Some(io::ErrorKind::Interrupted);
            let written = transport.deliver(socket, b"hello").unwrap();
            assert_eq!(written.taken, 5, "an interrupted write is tried again");

            socket.write_fails = Some(io::ErrorKind::BrokenPipe);
            let refused = transport.deliver(socket, b"hello").map(|w| w.taken);
            assert_eq!(
                refused.map_err(|e| e.kind()),
                Err(io::ErrorKind::BrokenPipe)
            );

            socket.inbound.push(0x8a); // a byte to read; the read fails before it
            socket.fails_at = Some((socket.read_at, io::ErrorKind::ConnectionReset));
            let read = transport.read(socket, &mut [0; READ_CHUNK], usize::MAX);
            assert_eq!(
                read.map(|_| ()).map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionReset)
            );
        }
        // After our goodbye the peer's bytes are drained unopened: a reset is still an error.
        assert!(tls.say_goodbye());
        tls_socket.fails_at = Some((tls_socket.read_at, io::ErrorKind::ConnectionReset));
        let read = tls.read(&mut tls_socket, &mut [0; READ_CHUNK], usize::MAX);
        assert_eq!(
            read.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// However the client's records are split on the wire, whatever each read may spend and
        /// whatever the socket takes of each write: the server reads exactly the plaintext sent,
        /// the client exactly what was delivered, in order; a changed byte ends the connection
        /// with a TLS error after a prefix of the plaintext, never a panic or a wrong byte.
        #[test]
        fn tls_bytes_arrive_whole_however_split(
            sends in proptest::collection::vec(0..40_000usize, 1..6),
            pieces in proptest::collection::vec(1..50_000usize, 1..30),
            budgets in proptest::collection::vec(1..300_000usize, 1..10),
            rooms in proptest::collection::vec(0..40_000usize, 1..10),
            replies in proptest::collection::vec(1..40_000usize, 0..5),
            flip in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), 1..=255u8)),
        ) {
            let (mut transport, mut client, mut socket) = connected();
            let mut sent = Vec::new();
            let mut wire = Vec::new();
            for (i, &size) in sends.iter().enumerate() {
                let bytes: Vec<u8> = (0..size).map(|j| (i * 31 + j % 251) as u8).collect();
                client.writer().write_all(&bytes).unwrap();
                sent.extend_from_slice(&bytes);
                while client.wants_write() {
                    client.write_tls(&mut wire).unwrap();
                }
            }
            if let Some((at, xor)) = flip {
                let at = at.index(wire.len());
                wire[at] ^= xor;
            }
            let delivered: Vec<u8> = replies
                .iter()
                .enumerate()
                .flat_map(|(i, &size)| (0..size).map(move |j| (i * 7 + j % 253) as u8))
                .collect();

            let (mut got, mut replied, mut pending) = (Vec::new(), Vec::new(), &delivered[..]);
            let (mut at, mut step, mut open) = (0, 0, true);
            while open && (at < wire.len() || !pending.is_empty()) {
                let piece = pieces[step % pieces.len()].min(wire.len() - at);
                socket.inbound.extend_from_slice(&wire[at..at + piece]);
                at += piece;
                open = read_once(&mut transport, &mut socket, budgets[step % budgets.len()], &mut got);
                socket.room = rooms[step % rooms.len()];
                let written = transport.deliver(&mut socket, pending).unwrap();
                pending = &pending[written.taken..];
                if let Transport::Tls(tls) = &transport {
                    proptest::prop_assert!(tls.outbox.len() <= SEAL_CHUNK + 1024, "one write's records wait, no more");
                }
                open &= client_takes(&mut client, &mut socket, &mut replied);
                step += 1;
            }
            while open && read_once(&mut transport, &mut socket, usize::MAX, &mut got) && socket.read_at < socket.inbound.len() {}
            socket.room = usize::MAX;
            transport.flush(&mut socket).unwrap();
            let client_ok = client_takes(&mut client, &mut socket, &mut replied);

            proptest::prop_assert!(sent.starts_with(&got), "a prefix of what was sent, unchanged");
            if flip.is_none() {
                proptest::prop_assert_eq!(got.len(), sent.len());
                proptest::prop_assert!(client_ok && open);
                proptest::prop_assert_eq!(replied, delivered);
                proptest::prop_assert!(!transport.holds_output());
                proptest::prop_assert_eq!(transport.buffer_capacity(), 0, "an idle client holds no buffer");
            }
        }
    }
}
