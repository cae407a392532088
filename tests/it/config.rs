//! Starting the server: flags and their environment variables, the Redis password kept off the
//! command line, and the settings refused at start rather than failing later (durations too
//! long for a deadline, an open-file limit too small to serve).

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::redis::Redis;
use common::*;

/// Runs the server with settings it must refuse, and returns its stderr. Fails at once if it
/// starts listening instead.
fn refused_at_start(args: &[&str], adjust: impl FnOnce(&mut Command)) -> String {
    let mut command = server_command();
    command
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    adjust(&mut command);
    let mut child = command.spawn().expect("spawn mio-chat");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(GUARD) {
        if line.starts_with("listening on ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("started with {args:?}: {line}");
        }
        lines.push(line);
    }
    let status = child.wait().expect("wait for mio-chat");
    assert_eq!(status.code(), Some(2), "exit status; stderr: {lines:?}");
    lines.join("\n")
}

#[test]
fn every_flag_names_its_environment_variable() {
    let out = server_command()
        .arg("--help")
        .output()
        .expect("mio-chat --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ';', ':']))
        .filter(|w| {
            w.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(
        flags.len() >= 14,
        "too few flags found in --help: {flags:?}"
    );
    for flag in flags {
        let var = format!("MIO_CHAT_{}", flag[2..].replace('-', "_").to_uppercase());
        assert!(
            help.contains(&format!("[env: {var}")),
            "--help does not name {var}"
        );
    }
}

#[test]
fn variables_set_flags_and_a_flag_wins_over_its_variable() {
    let server = TestServer::start_with_env(
        &[],
        &[
            ("MIO_CHAT_ECHO", "true"),
            ("MIO_CHAT_ADDR", "127.0.0.1:1"), // the test's own --addr must win
            ("MIO_CHAT_ALLOW_ORIGIN", "http://a.example,http://b.example"),
        ],
    );
    assert_ne!(server.port(), 1);
    let mut echo = ws_connect(&server, "/echo");
    send_text(&mut echo, "back");
    assert_eq!(
        next_message(&mut echo).into_text().unwrap().as_str(),
        "back"
    );
    for origin in ["http://a.example", "http://b.example"] {
        let request = Handshake::new(&server).header("Origin", origin);
        let client = RawClient::handshake(tcp_connect(&server), &request);
        drop(client); // a 101, or `handshake` would have failed
    }
    let foreign = Handshake::new(&server).header("Origin", "http://c.example");
    assert_eq!(http_exchange(&server, &foreign.to_bytes()).status, 403);
}

/// A password no other test uses, so finding it anywhere is this test's doing.
const PASSWORD: &str = "pw-kept-off-the-command-line-5b1e";

/// A Redis that refuses every command until AUTH with [`PASSWORD`] (checked here, so that a
/// subscription below proves the server authenticated).
fn redis_with_password() -> Option<Redis> {
    let redis = Redis::start_with_args(&["--requirepass", PASSWORD])?;
    let mut raw = guarded(TcpStream::connect(("127.0.0.1", redis.port)).expect("connect redis"));
    raw.write_all(b"PING\r\n").expect("PING");
    let mut reply = [0u8; 7];
    raw.read_exact(&mut reply).expect("PING reply");
    assert_eq!(
        &reply, b"-NOAUTH",
        "redis-server did not require the password"
    );
    Some(redis)
}

fn assert_not_on_command_line(server: &TestServer) {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(PASSWORD), "password in {cmdline:?}");
    assert!(
        cmdline.contains("mio-chat"),
        "not the server's: {cmdline:?}"
    );
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_redis_password_from_the_environment_is_not_on_the_command_line() {
    let Some(redis) = redis_with_password() else {
        return;
    };
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let server = TestServer::start_with_env(&[], &[("MIO_CHAT_REDIS", &url)]);
    server.wait_for_log("redis: subscribed to");
    assert_eq!(http_get(&server, "/healthz").body_text(), "ok");
    assert_not_on_command_line(&server);
    // The environment, unlike the command line, is readable by the process's owner only.
    let environ = std::fs::metadata(format!("/proc/{}/environ", server.pid())).expect("environ");
    assert_eq!(environ.permissions().mode() & 0o077, 0);
}

#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn a_redis_password_from_a_file_is_not_on_the_command_line() {
    let Some(redis) = redis_with_password() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mio-chat-password-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let path = file.to_string_lossy().into_owned();
    let server = TestServer::start(&["--redis", &url, "--redis-password-file", &path]);
    server.wait_for_log("redis: subscribed to");
    assert_not_on_command_line(&server);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_password_file_is_refused_at_start() {
    let stderr = refused_at_start(
        &[
            "--redis",
            "redis://127.0.0.1:1",
            "--redis-password-file",
            "/nonexistent/password",
        ],
        |_| {},
    );
    assert!(
        stderr.contains("--redis-password-file /nonexistent/password"),
        "{stderr}"
    );
}

#[test]
fn durations_longer_than_a_day_are_refused_at_start() {
    for flag in ["--handshake-timeout", "--ping-interval"] {
        let stderr = refused_at_start(&[flag, "1e19"], |_| {});
        assert!(stderr.contains(flag), "{stderr}");
        assert!(stderr.contains("more than 86400 seconds"), "{stderr}");
    }
}

#[test]
fn a_hard_open_file_limit_of_256_still_serves_many_connections() {
    let server = TestServer::start_with(&[], &[], |command| open_file_limit(command, 256));
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut others: Vec<&mut Ws> = clients.iter_mut().collect();
        let client = join_chat(&server, &mut others);
        clients.push(client);
    }
    assert_eq!(http_get(&server, "/healthz").status, 200);
    let metrics = http_get(&server, "/metrics").body_text();
    assert!(
        metrics.contains("\nmio_chat_max_connections 128\n"),
        "{metrics}"
    );
}

#[test]
fn an_open_file_limit_too_small_to_serve_is_refused_at_start() {
    let stderr = refused_at_start(&[], |command| open_file_limit(command, 20));
    assert!(stderr.contains("open-file limit is 20"), "{stderr}");
    // With an explicit --max-connections the operator has decided: it starts.
    let server = TestServer::start_with(&["--max-connections", "4"], &[], |command| {
        open_file_limit(command, 20)
    });
    assert_eq!(http_get(&server, "/healthz").status, 200);
}

#[test]
fn a_bad_redis_url_is_refused_without_showing_its_password() {
    let url = format!("redis://:{PASSWORD}@127.0.0.1:notaport");
    let stderr = refused_at_start(&[], |command| {
        command.env("MIO_CHAT_REDIS", &url);
    });
    assert!(stderr.contains("--redis"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

/// A bad value from an environment variable is reported under the variable's name (the
/// operator may never have typed the flag); a bad value typed on the command line, under the
/// flag's, even when the variable is set too (the flag wins).
#[test]
fn a_bad_value_is_reported_under_the_name_it_came_from() {
    for (variable, value) in [
        ("MIO_CHAT_MAX_CONNECTIONS", "abc"),
        ("MIO_CHAT_PING_INTERVAL", "soon"),
        ("MIO_CHAT_ECHO", "maybe"),
        ("MIO_CHAT_LOG_FORMAT", "xml"),
    ] {
        let stderr = refused_at_start(&[], |command| {
            command.env(variable, value);
        });
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{variable}")),
            "{variable}={value}: {stderr}"
        );
    }
    let stderr = refused_at_start(&["--max-connections", "x"], |command| {
        command.env("MIO_CHAT_MAX_CONNECTIONS", "abc");
    });
    assert!(
        stderr.contains("invalid value 'x' for '--max-connections"),
        "{stderr}"
    );
    assert!(!stderr.contains("MIO_CHAT_MAX_CONNECTIONS"), "{stderr}");
}
