//! `wss://`: the TLS settings of the targets (`--ca PATH` or `--insecure`) and one client's TLS
//! session ([`mio_chat::transport::ClientTls`]: rustls's buffered `ClientConnection` with the
//! `ring` provider, driven without blocking). The WebSocket bytes above it do not change:
//! [`crate::client::Client`] reads and writes plaintext through [`Session`].

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

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
    match (ca, insecure) {
        (Some(path), _) => mio_chat::transport::client_config(path, "--ca"),
        (None, true) => Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        )),
        (None, false) => Err("a wss:// URL needs --ca PATH or --insecure".into()),
    }
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

/// One client's TLS session: the library's client side, shared with the Redis backplane.
pub type Session = mio_chat::transport::ClientTls;
