//! The Redis backplane over TLS (`--redis rediss://... --redis-ca PATH`), against Debian's
//! `redis-server` in TLS mode (`--port 0 --tls-port N`), with a CA and a leaf made at test time
//! (rcgen). Two processes are one room through it; a CA that did not sign Redis's certificate
//! leaves the process degraded (serving its own clients), never connected to an unverified Redis.
//! Where redis-server is missing the tests say so and pass, except in CI.

use crate::common;

use std::fs;
use std::path::PathBuf;

use common::redis::{free_port, Redis};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA (and, with `leaf`, a certificate it signed for 127.0.0.1) in a directory of its own.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str, leaf: bool) -> Files {
        let dir =
            std::env::temp_dir().join(format!("mio-chat-rediss-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        fs::write(
            dir.join("ca.pem"),
            params.self_signed(&ca_key).unwrap().pem(),
        )
        .unwrap();
        if leaf {
            let ca = Issuer::new(params, ca_key);
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".into()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// redis-server speaking TLS only, on a port of its own; returns it and its `rediss://` URL.
fn tls_redis(files: &Files) -> Option<(Redis, String)> {
    let port = free_port().to_string();
    let (cert, key, ca) = (
        files.path("cert.pem"),
        files.path("key.pem"),
        files.path("ca.pem"),
    );
    let redis = Redis::start_with_args(&[
        "--port",
        "0",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])?;
    Some((redis, format!("rediss://127.0.0.1:{port}")))
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn two_processes_are_one_room_over_rediss() {
    let files = Files::new("room", true);
    let Some((_redis, url)) = tls_redis(&files) else {
        return;
    };
    let ca = files.path("ca.pem");
    let node = || {
        let server = TestServer::start(&["--redis", &url, "--redis-ca", &ca]);
        server.wait_for_log("redis: subscribed");
        server
    };
    let (a, b) = (node(), node());
    let mut on_a = join_chat(&a, &mut []);
    let mut on_b = join_chat(&b, &mut [&mut on_a]);
    send_text(&mut on_a, "from a, through TLS");
    expect_body(&mut on_a, "from a, through TLS");
    expect_body(&mut on_b, "from a, through TLS");
    send_text(&mut on_b, "from b");
    expect_body(&mut on_a, "from b");
    expect_body(&mut on_b, "from b");
    close_ws(&mut on_b);
    expect_body(&mut on_a, LEFT);
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_redis_certificate_from_another_ca_is_refused() {
    let files = Files::new("served", true);
    let Some((_redis, url)) = tls_redis(&files) else {
        return;
    };
    let stranger = Files::new("stranger", false);
    let ca = stranger.path("ca.pem");
    let server = TestServer::start(&["--redis", &url, "--redis-ca", &ca]);
    let warning = server.wait_for_log("serving this process's clients only");
    assert!(warning.contains("certificate"), "{warning}");
    // Still serving its own clients, alone.
    let mut a = join_chat(&server, &mut []);
    send_text(&mut a, "alone");
    expect_body(&mut a, "alone");
}

#[test]
fn rediss_without_a_ca_is_refused_at_start() {
    let output = server_command()
        .args(["--addr", "127.0.0.1:0", "--redis", "rediss://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--redis-ca"));
}
