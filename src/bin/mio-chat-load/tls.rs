//! `wss://`: the TLS settings of the targets (`--ca PATH` or `--insecure`) and one client's TLS
//! session, driven without blocking like the server's (rustls's buffered `ClientConnection`, the
//! `ring` provider). The WebSocket bytes above it do not change: [`crate::client::Client`] reads
//! and writes plaintext through [`Session`].

use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::target::Target;

/// What a `wss://` target's clients start their sessions from.
#[derive(Debug, Clone)]
pub struct Secure {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// Gives every `wss://` target its TLS settings: certificates checked against the CA file
/// `ca`, or not at all with `insecure`. A `wss://` URL with neither is an error.
pub fn secure(targets: &mut [Target], ca: Option<&Path>, insecure: bool) -> Result<(), String> {
    if !targets.iter().any(|t| t.wss) {
        return Ok(());
    }
    let config = client_config(ca, insecure)?;
    for target in targets.iter_mut().filter(|t| t.wss) {
        let host = target
            .host
            .rsplit_once(':')
            .map_or(&*target.host, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{}: {host}: {e}", target.url))?;
        target.tls = Some(Secure {
            config: Arc::clone(&config),
            name,
        });
    }
    Ok(())
}

fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let mut config = match (ca, insecure) {
        (Some(path), _) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
                let cert = cert.map_err(|e| pem_error(path, e))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        (None, false) => return Err("a wss:// URL needs --ca PATH or --insecure".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> String {
    format!("--ca {}: {e}", path.display())
}

/// `--insecure`: any certificate is accepted (the handshake's signatures are still checked, so
/// the cost per handshake is the real one).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One client's TLS session.
pub struct Session(Box<ClientConnection>);

impl Session {
    pub fn new(secure: &Secure) -> io::Result<Session> {
        let conn = ClientConnection::new(Arc::clone(&secure.config), secure.name.clone())
            .map_err(io::Error::other)?;
        Ok(Session(Box::new(conn)))
    }

    /// Ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.0.wants_write()
    }

    /// Like `socket.read`: plaintext into `buf`, `Ok(0)` at the end (EOF or close_notify).
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
            self.write_ciphertext(socket)?; // handshake answers, at once
        }
    }

    /// Encrypts `plaintext` (once the handshake is done) and writes; returns how much of it
    /// was taken. Before the handshake completes nothing is taken.
    pub fn write(&mut self, socket: &mut TcpStream, plaintext: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        while self.write_ciphertext(socket)? && !self.0.is_handshaking() && taken < plaintext.len()
        {
            let end = plaintext.len().min(taken + 16 * 1024);
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
