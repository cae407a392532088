//! TLS on the client's side, for the Redis backplane's `rediss://` links and `mio-chat-load`'s
//! `wss://` clients: rustls's buffered `ClientConnection` under a non-blocking socket (a few
//! connections per process, or a load generator's: their buffers are not what this project
//! measures, unlike the server's, which uses rustls's unbuffered API). Plaintext is taken only
//! once the handshake is done; until then the caller keeps it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::TLS_CHUNK;
use crate::nonblocking::{interrupted, would_block};

/// One client TLS session (boxed: a `ClientConnection` is over a kilobyte).
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
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.0.read_tls(socket)?; // WouldBlock ends the read; EOF shows on the next pass
            self.0
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            write_records(&mut self.0, socket, &mut 0)?;
        }
    }

    /// Encrypts `plaintext` (once the handshake is done) and writes; returns how much of it was
    /// taken: 0 while handshaking or when the socket is full.
    pub fn write(&mut self, socket: &mut TcpStream, plaintext: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while write_records(&mut self.0, socket, &mut 0)?
            && !self.0.is_handshaking()
            && taken < plaintext.len()
        {
            let end = plaintext.len().min(taken + TLS_CHUNK);
            taken += self.0.writer().write(&plaintext[taken..end])?;
        }
        Ok(taken)
    }
}

/// Writes the records rustls holds, adding what the socket took to `written`; false if the
/// socket filled up first.
fn write_records(
    tls: &mut ClientConnection,
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
