//! What sealing a TLS record costs on this machine: the AEAD alone (`ring`, in place) against
//! rustls's unbuffered writer, which the server encrypts through (it seals each record into a
//! buffer of its own and copies it out). The floor under what a wss:// delivery costs more than
//! a ws:// one: docs/performance.md, section TLS.
//!
//!   cargo bench --bench seal
//!
//! Each row: a cipher suite, a record's plaintext size, nanoseconds per record and per byte
//! (median of 5 timings of a loop of about 200 MB). Not a test: nothing is asserted.

use std::sync::Arc;
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, SupportedCipherSuite};

const SIZES: [usize; 2] = [8_600, 16_384];

/// Median nanoseconds per call of `f`, over 5 timings of `rounds` calls.
fn time_per_call(rounds: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut timings: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for i in 0..rounds {
                f(i);
            }
            start.elapsed().as_secs_f64() * 1e9 / rounds as f64
        })
        .collect();
    timings.sort_by(f64::total_cmp);
    timings[2]
}

fn row(what: &str, size: usize, ns: f64) {
    println!(
        "{what:34} {size:6} B: {ns:7.0} ns a record, {:.3} ns a byte",
        ns / size as f64
    );
}

/// The AEAD alone, sealing in place, as a record layer of our own would.
fn ring_alone(name: &str, algorithm: &'static ring::aead::Algorithm) {
    let key = vec![7; algorithm.key_len()];
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &key).expect("a key"));
    for size in SIZES {
        let mut record = vec![1u8; size];
        let ns = time_per_call(200_000_000 / size, |i| {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from([23, 3, 3, 0, 0]),
                    &mut record,
                )
                .expect("sealed");
            let _ = std::hint::black_box(tag);
        });
        row(&format!("ring {name}, in place"), size, ns);
    }
}

/// rustls's unbuffered writer, after a handshake in memory that settled on `suite`.
fn rustls_writer(name: &str, suite: SupportedCipherSuite) {
    let mut server = handshake(suite);
    let mut sealed = vec![0u8; 20_000];
    for size in SIZES {
        let plaintext = vec![1u8; size];
        let ns = time_per_call(200_000_000 / size, |_| {
            match server.process_tls_records(&mut []).state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let n = traffic.encrypt(&plaintext, &mut sealed).expect("sealed");
                    std::hint::black_box(n);
                }
                other => panic!("not ready to write: {other:?}"),
            }
        });
        row(&format!("rustls {name}, unbuffered"), size, ns);
    }
}

/// A server connection whose handshake with a rustls client is done, on `suite`.
fn handshake(suite: SupportedCipherSuite) -> UnbufferedServerConnection {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a cert");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("a key");
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    });
    let server_config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("a server config");
    let mut roots = RootCertStore::empty();
    roots.add(der).expect("a root");
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = UnbufferedServerConnection::new(Arc::new(server_config)).expect("a server");
    let name = ServerName::try_from("localhost").expect("a name");
    let mut client = ClientConnection::new(Arc::new(client_config), name).expect("a client");
    let (mut inbox, mut outbox) = (Vec::new(), Vec::new());
    while client.is_handshaking() || server.is_handshaking() {
        while client.wants_write() {
            client.write_tls(&mut inbox).expect("written");
        }
        loop {
            let status = server.process_tls_records(&mut inbox);
            let (discard, done) = match status.state.expect("a handshake") {
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut record = vec![0; 8192];
                    let n = data.encode(&mut record).expect("encoded");
                    outbox.extend_from_slice(&record[..n]);
                    (status.discard, false)
                }
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    (status.discard, false)
                }
                _ => (status.discard, true),
            };
            inbox.drain(..discard);
            if done {
                break;
            }
        }
        let mut written = &outbox[..];
        while !written.is_empty() {
            client.read_tls(&mut written).expect("read");
            client.process_new_packets().expect("processed");
        }
        outbox.clear();
    }
    server
}

fn main() {
    ring_alone("AES-128-GCM", &AES_128_GCM);
    rustls_writer("AES-128-GCM", TLS13_AES_128_GCM_SHA256);
    ring_alone("AES-256-GCM", &AES_256_GCM);
    rustls_writer("AES-256-GCM", TLS13_AES_256_GCM_SHA384);
}
