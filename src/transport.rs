//! The transport between a client's socket and its connection: bytes as they are, or through TLS.
//!
//! It moves bytes and reports TLS events; it makes no protocol decision. [`Transport`] is one
//! enum, `Plain` or `Tls`, so the reactor reads and writes every client the same way:
//! [`Transport::read`] hands over plaintext and what reading it cost, [`Transport::deliver`]
//! writes plaintext (a connection's queue, or a room batch straight from the room's buffer),
//! [`Transport::say_goodbye`] queues TLS's close_notify once the connection has said all, and
//! [`Transport::flush`] writes the records held here. TLS is
//! rustls's buffered `ServerConnection`, driven without blocking: the handshake advances with each
//! read, a step at a time, however the bytes are split; its deadline is the connection's
//! (`--handshake-timeout`, from the accept). The client side, for `rediss://` and `mio-chat-load`'s
//! `wss://`, is [`client`].
//!
//! Two rules the loop relies on:
//! - **A read's cost is what came off the wire, and each record.** Under TLS that is the
//!   ciphertext, headers and tags included, plus [`RECORD_COST`] for each record: a peer sending
//!   one byte per record pays for every record it makes us decrypt.
//! - **Bytes held here are output too.** Ciphertext rustls encrypted that a full socket refused
//!   is owed to the socket like the connection's queue: [`Transport::holds_output`] says so, and
//!   the loop's one "has output" predicate includes it.
//!
//! What TLS costs an idle client (measured in `docs/performance.md`, section TLS): the
//! `ServerConnection` itself, its traffic keys, and rustls's 4 KiB receive buffer, which rustls
//! keeps once a record has been read. Outbound ciphertext is bounded to one record's worth per
//! client: plaintext waits in the connection's own queue (where `--max-outbound` counts it) and
//! is encrypted only when the socket has taken everything encrypted before it.

pub mod client;

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ConnectionCommon, ServerConfig, ServerConnection};

pub use crate::config::TlsFiles;
use crate::nonblocking::{interrupted, would_block};
pub use client::{client_config, ClientTls};

/// What decrypting one TLS record costs beyond its bytes, as the bytes of plaintext frames that
/// take as long to handle: `benches/records.rs` measured about 0.6 µs a record (11,400 one-byte
/// records a 256 KiB slice of ciphertext: a bystander's median round trip 12-18 ms) against about
/// 7 ns a byte of pongs over ws:// (0.6 ms). A full 16 KiB record pays 0.6 % more for it.
pub const RECORD_COST: usize = 100;

/// Plaintext encrypted per step: one TLS record's worth (16 KiB), so at most about that much
/// ciphertext waits in rustls for a peer whose socket is full.
const TLS_CHUNK: usize = 16 * 1024;

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

/// One client's TLS state.
pub struct Tls {
    conn: ServerConnection,
    /// Whether the first bytes have been looked at (plain HTTP on the TLS port).
    looked: bool,
    /// Our close_notify is queued.
    said_goodbye: bool,
    /// Where the records begin in what we read, to charge each one.
    records: RecordScan,
}

pub enum Transport {
    Plain,
    /// Boxed: a `ServerConnection` is over a kilobyte, and plaintext clients share the enum.
    Tls(Box<Tls>),
}

impl Transport {
    /// The transport of a connection accepted on a TLS listener.
    pub fn tls(config: &Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        Ok(Transport::Tls(Box::new(Tls {
            conn: ServerConnection::new(Arc::clone(config))?,
            looked: false,
            said_goodbye: false,
            records: RecordScan::default(),
        })))
    }

    /// Records wait here for the socket (encrypted, refused by a full socket, or a handshake
    /// message or alert not yet sent). Part of the client's output: its bytes are owed.
    pub fn holds_output(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.conn.wants_write())
    }

    /// A TLS handshake is under way: no plaintext can be sent yet ([`Transport::deliver`] takes
    /// none). A TLS event for the connection to act on (an answer it cannot give).
    pub fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.conn.is_handshaking())
    }

    /// Reads once: plaintext into `buf`, however many TLS records (or none) that takes.
    pub fn read(&mut self, socket: &mut impl Socket, buf: &mut [u8]) -> io::Result<Input> {
        match self {
            Transport::Plain => match socket.read(buf) {
                Ok(0) => Ok(Input::Eof),
                Ok(n) => Ok(Input::Data { len: n, cost: n }),
                Err(e) if would_block(&e) => Ok(Input::WouldBlock),
                Err(e) => Err(e),
            },
            Transport::Tls(tls) => tls.read(socket, buf),
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

    /// The connection has said all: under TLS, its close_notify alert is queued (once), to go
    /// out with [`Transport::flush`] before our FIN. Returns whether anything was queued.
    pub fn say_goodbye(&mut self) -> bool {
        match self {
            Transport::Tls(tls) if !tls.said_goodbye => {
                tls.said_goodbye = true;
                tls.conn.send_close_notify();
                true
            }
            _ => false,
        }
    }

    /// Writes the records held here (nothing new is encrypted) until they are gone or the
    /// socket is full; returns the bytes the socket took.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        if let Transport::Tls(tls) = self {
            write_records(&mut tls.conn, socket, &mut written)?;
        }
        Ok(written)
    }

    /// Before the socket is closed: a last try to send the records still held (the end of a
    /// close frame, an alert), without waiting for the socket.
    pub fn last_words(&mut self, socket: &mut impl Write) {
        let _ = self.flush(socket);
    }
}

/// Writes plaintext until all is taken or the socket is full.
fn write_plain(socket: &mut impl Write, bytes: &[u8]) -> io::Result<Written> {
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
    Ok(Written { taken, wire: taken })
}

impl Tls {
    fn read(&mut self, socket: &mut impl Socket, buf: &mut [u8]) -> io::Result<Input> {
        if !self.looked {
            match first_byte(socket)? {
                None => return Ok(Input::WouldBlock),
                Some(byte) if byte.is_ascii_uppercase() => return Ok(Input::PlainHttp),
                Some(_) => self.looked = true,
            }
        }
        let mut cost = 0;
        loop {
            // Plaintext already decrypted goes first: rustls refuses to read more while it holds
            // some.
            match self.conn.reader().read(buf) {
                Ok(0) => return Ok(Input::Eof), // close_notify
                Ok(len) => return Ok(Input::Data { len, cost }),
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Input::Eof),
                Err(e) => return Err(e),
            }
            // At most 4 KiB of records a pass (rustls's read size), so a read's cost is bounded.
            let mut counted = Counted {
                socket: &mut *socket,
                scan: &mut self.records,
                records: 0,
            };
            match self.conn.read_tls(&mut counted) {
                Ok(n) => {
                    // EOF (0) too: rustls records it, and the reader says so on the next pass.
                    cost += n + counted.records * RECORD_COST;
                    if let Err(e) = self.conn.process_new_packets() {
                        return Ok(Input::TlsFailed(e));
                    }
                }
                Err(e) if would_block(&e) => return Ok(Input::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    fn write(&mut self, socket: &mut impl Write, plaintext: &[u8]) -> io::Result<Written> {
        let mut done = Written::default();
        while write_records(&mut self.conn, socket, &mut done.wire)?
            && !self.conn.is_handshaking()
            && done.taken < plaintext.len()
        {
            let end = plaintext.len().min(done.taken + TLS_CHUNK);
            done.taken += self.conn.writer().write(&plaintext[done.taken..end])?;
        }
        Ok(done)
    }
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

/// A socket whose reads are scanned for records (rustls reads through it).
struct Counted<'a, S> {
    socket: &'a mut S,
    scan: &'a mut RecordScan,
    records: usize,
}

impl<S: Read> Read for Counted<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        self.records += self.scan.feed(&buf[..n]);
        Ok(n)
    }
}

/// Writes the records rustls holds, adding what the socket took to `written`; false if the
/// socket filled up first. The one ciphertext write, for the server's side and the client's.
fn write_records<D>(
    tls: &mut ConnectionCommon<D>,
    socket: &mut impl Write,
    written: &mut usize,
) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// A socket in memory: it reads what the test put in `inbound`, and takes at most `room`
    /// more bytes into `outbound` before it refuses (`WouldBlock`), as a full socket does.
    #[derive(Default)]
    struct Fake {
        inbound: Vec<u8>,
        read_at: usize,
        outbound: Vec<u8>,
        room: usize,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let waiting = &self.inbound[self.read_at..];
            if waiting.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = waiting.len().min(buf.len());
            buf[..n].copy_from_slice(&waiting[..n]);
            self.read_at += n;
            Ok(n)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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
        let mut transport = Transport::tls(&server).unwrap();
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
            let input = transport.read(&mut socket, &mut [0; 4096]).unwrap();
            assert!(matches!(input, Input::WouldBlock), "{input:?}");
            transport.flush(&mut socket).unwrap();
            to_client(&mut client, &mut socket);
        }
        (transport, client, socket)
    }

    /// Plaintext of the client's records, read as the loop does; returns (plaintext, cost).
    fn read_all(transport: &mut Transport, socket: &mut Fake) -> (usize, usize) {
        let (mut len_sum, mut cost_sum) = (0, 0);
        loop {
            match transport.read(socket, &mut [0; 64 * 1024]).unwrap() {
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
}
