//! The transport between a client's socket and its connection: bytes as they are, or through TLS.
//!
//! [`Transport`] is one enum, `Plain` or `Tls`, so the reactor reads and writes every client the
//! same way: [`Transport::read`] hands the connection plaintext, [`Transport::flush`] writes what
//! the connection queued, [`Transport::deliver`] writes a room batch straight from the room's
//! buffer. TLS is rustls's buffered `ServerConnection`, driven without blocking: the handshake
//! advances with each read, a step at a time, however the bytes are split; its deadline is the
//! connection's (`--handshake-timeout`, from the accept).
//!
//! The client side, [`ClientTls`], serves the Redis backplane's `rediss://` links and
//! `mio-chat-load`'s `wss://` clients the same way.
//!
//! What TLS costs an idle client (measured in the README, section TLS): the `ServerConnection`
//! itself, its traffic keys, and rustls's 4 KiB receive buffer, which rustls keeps once a record
//! has been read. Outbound ciphertext is bounded to one record's worth per client: plaintext
//! waits in the connection's own queue (where `--max-outbound` counts it) and is encrypted only
//! when the socket has taken everything encrypted before it.

use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::connection::Connection;

/// Plaintext encrypted per step: one TLS record's worth (16 KiB), so at most about that much
/// ciphertext waits in rustls for a client whose socket is full.
const TLS_CHUNK: usize = 16 * 1024;

/// The certificate chain and key files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

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

/// What one read gave.
#[derive(Debug)]
pub enum Input {
    /// This many plaintext bytes, at the front of the buffer.
    Data(usize),
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

/// One client's TLS state.
pub struct Tls {
    conn: ServerConnection,
    /// Whether the first bytes have been looked at (plain HTTP on the TLS port).
    looked: bool,
    /// Our close_notify is queued.
    said_goodbye: bool,
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
        })))
    }

    /// Ciphertext waits in rustls for the socket.
    pub fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.conn.wants_write())
    }

    /// Reads once: plaintext into `buf`, however many TLS records (or none) that takes.
    pub fn read(&mut self, socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<Input> {
        let tls = match self {
            Transport::Plain => {
                return match socket.read(buf) {
                    Ok(0) => Ok(Input::Eof),
                    Ok(n) => Ok(Input::Data(n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Input::WouldBlock),
                    Err(e) => Err(e),
                }
            }
            Transport::Tls(tls) => tls,
        };
        if !tls.looked {
            match first_byte(socket)? {
                None => return Ok(Input::WouldBlock),
                Some(byte) if byte.is_ascii_uppercase() => return Ok(Input::PlainHttp),
                Some(_) => tls.looked = true,
            }
        }
        loop {
            // Plaintext already decrypted goes first: rustls refuses to read more while it holds
            // some.
            match tls.conn.reader().read(buf) {
                Ok(0) => return Ok(Input::Eof), // close_notify
                Ok(n) => return Ok(Input::Data(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Input::Eof),
                Err(e) => return Err(e),
            }
            match tls.conn.read_tls(socket) {
                Ok(_) => {
                    // EOF (0) too: rustls records it, and the reader says so on the next pass.
                    if let Err(e) = tls.conn.process_new_packets() {
                        return Ok(Input::TlsFailed(e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Input::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what the connection queued (encrypting it first under TLS) until all is written or
    /// the socket is full; returns the bytes the socket took. Under TLS, our close_notify goes
    /// before our FIN; a plaintext answer queued before the handshake completed (a 408) cannot be
    /// sent, and is replaced by the close_notify alert.
    pub fn flush(&mut self, socket: &mut TcpStream, conn: &mut Connection) -> io::Result<usize> {
        let mut written = 0;
        let tls = match self {
            Transport::Plain => {
                while !conn.output().is_empty() {
                    match socket.write(conn.output().pending()) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            conn.sent(n);
                            written += n;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(written);
            }
            Transport::Tls(tls) => tls,
        };
        loop {
            if !tls.write_ciphertext(socket, &mut written)? {
                return Ok(written); // the socket is full
            }
            if tls.conn.is_handshaking() && !conn.output().is_empty() {
                conn.sent(conn.output().len()); // a 408 mid-handshake: the alert says it
                tls.goodbye();
                continue;
            }
            if conn.should_half_close() && !tls.said_goodbye {
                tls.goodbye();
                continue;
            }
            let pending = conn.output().pending();
            if pending.is_empty() {
                return Ok(written);
            }
            let n = tls
                .conn
                .writer()
                .write(&pending[..pending.len().min(TLS_CHUNK)])?;
            conn.sent(n);
        }
    }

    /// Writes a room batch for a client with nothing queued, straight from the room's buffer;
    /// returns how many of its bytes were taken (the rest is the caller's to queue) and how many
    /// bytes the socket took.
    pub fn deliver(&mut self, socket: &mut TcpStream, frames: &[u8]) -> io::Result<(usize, usize)> {
        let tls = match self {
            Transport::Plain => {
                return match socket.write(frames) {
                    Ok(n) => Ok((n, n)),
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                    {
                        Ok((0, 0))
                    }
                    Err(e) => Err(e),
                }
            }
            Transport::Tls(tls) => tls,
        };
        let (mut taken, mut written) = (0, 0);
        while tls.write_ciphertext(socket, &mut written)? && taken < frames.len() {
            let chunk = &frames[taken..frames.len().min(taken + TLS_CHUNK)];
            taken += tls.conn.writer().write(chunk)?;
        }
        Ok((taken, written))
    }

    /// Before the socket is closed: a last try to send the ciphertext still waiting (the end of
    /// a close frame, the close_notify), without waiting for the socket.
    pub fn last_words(&mut self, socket: &mut TcpStream) {
        if let Transport::Tls(tls) = self {
            let _ = tls.write_ciphertext(socket, &mut 0);
        }
    }
}

impl Tls {
    /// Writes the ciphertext rustls holds; returns false if the socket filled up first.
    fn write_ciphertext(
        &mut self,
        socket: &mut TcpStream,
        written: &mut usize,
    ) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn goodbye(&mut self) {
        if !self.said_goodbye {
            self.said_goodbye = true;
            self.conn.send_close_notify();
        }
    }
}

/// The first byte waiting on a TLS connection, peeked (rustls still reads it), to tell a
/// plaintext HTTP request from TLS: a TLS record starts with its content type (22 for a
/// handshake), a request with an upper-case method. `None`: nothing has come yet. At EOF, a
/// zero stands in (not HTTP: rustls then reads the EOF itself).
fn first_byte(socket: &mut TcpStream) -> io::Result<Option<u8>> {
    let mut first = [0u8; 1];
    match socket.peek(&mut first) {
        Ok(_) => Ok(Some(first[0])),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The client side, for `rediss://` (the Redis backplane) and `wss://` (`mio-chat-load`): TLS
/// under a non-blocking socket, driven like the server's. Plaintext is taken only once the
/// handshake is done; until then the caller keeps it.
pub struct ClientTls(Box<ClientConnection>);

impl ClientTls {
    pub fn new(config: &Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<ClientTls> {
        let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        Ok(ClientTls(Box::new(conn)))
    }

    /// Ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.0.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    /// Like `socket.read`: plaintext into `buf`, `Ok(0)` at the end (EOF or close_notify),
    /// `WouldBlock` when nothing more has come. Handshake answers are written at once.
    pub fn read(&mut self, socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.0.read_tls(socket)?; // WouldBlock ends the read; EOF shows on the next pass
            self.0
                .process_new_packets()
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            self.write_ciphertext(socket)?;
        }
    }

    /// Encrypts `plaintext` (once the handshake is done) and writes; returns how much of it was
    /// taken: 0 while handshaking or when the socket is full.
    pub fn write(&mut self, socket: &mut TcpStream, plaintext: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while self.write_ciphertext(socket)? && !self.0.is_handshaking() && taken < plaintext.len()
        {
            let end = plaintext.len().min(taken + TLS_CHUNK);
            taken += self.0.writer().write(&plaintext[taken..end])?;
        }
        Ok(taken)
    }

    /// Writes the ciphertext waiting; false if the socket filled up first.
    fn write_ciphertext(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        while self.0.wants_write() {
            match self.0.write_tls(socket) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Client TLS settings that trust the CA certificates (PEM) in `ca`; `flag` names the option
/// in errors (`--redis-ca`, `--ca`).
pub fn client_config(ca: &Path, flag: &str) -> Result<Arc<ClientConfig>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", ca.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(&e))? {
        roots
            .add(cert.map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
    }
    if roots.is_empty() {
        return Err(fail(&"no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
