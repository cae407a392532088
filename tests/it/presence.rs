//! Presence balances: every way a chat client can end shows the room exactly one leave notice
//! for its one join notice, however its bytes are split, with or without `--redis`.
//!
//! Each ending is sent right after the upgrade request: in the same write, in a second write
//! once the client has joined, and one byte per write. A watcher that joined first must hear
//! exactly JOINED, the text if one was sent, LEFT. "Nothing else" is checked by events: once the
//! ending client has its Close frame, a watcher sends a marker, and everything heard before the
//! marker comes back is compared.

use crate::common;

use std::io::Write;
use std::net::TcpStream;

use common::redis::Redis;
use common::*;

/// One way for a client to end, as the bytes that follow its upgrade request.
struct Ending {
    bytes: Vec<u8>,
    /// A text message among the bytes: the room hears it between the join and the leave.
    said: Option<&'static str>,
    /// The close code the server answers with.
    code: u16,
}

impl Ending {
    fn frames(frames: &[Frame], said: Option<&'static str>, code: u16) -> Ending {
        let bytes = frames.iter().flat_map(Frame::encode).collect();
        Ending { bytes, said, code }
    }
}

const SAID: &str = "said before leaving";

fn close_frame(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::close(1000, b"bye")], None, 1000)
}

fn text_then_close(_: &TestServer) -> Ending {
    let frames = [Frame::text(SAID), Frame::close(1000, b"bye")];
    Ending::frames(&frames, Some(SAID), 1000)
}

fn ping_then_close(_: &TestServer) -> Ending {
    let frames = [Frame::ping(b"still there?"), Frame::close(1000, b"bye")];
    Ending::frames(&frames, None, 1000)
}

fn binary_frame(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::binary(&[0, 1, 2])], None, 1003)
}

fn unmasked_frame(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::text("bare").unmasked()], None, 1002)
}

fn rsv_bits(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::text("extended").rsv(0b100)], None, 1002)
}

fn invalid_utf8(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::new(OP_TEXT, vec![0xc3, 0x28])], None, 1007)
}

fn huge_length(_: &TestServer) -> Ending {
    Ending::frames(&[Frame::text("huge").declared_len(1 << 40)], None, 1009)
}

/// Bytes that are not a frame: `G` (0x47) sets RSV1 and names no opcode.
fn second_http_request(server: &TestServer) -> Ending {
    let bytes = Handshake::new(server).to_bytes();
    Ending {
        bytes,
        said: None,
        code: 1002,
    }
}

const EVERY_ENDING: [fn(&TestServer) -> Ending; 9] = [
    close_frame,
    text_then_close,
    ping_then_close,
    binary_frame,
    unmasked_frame,
    rsv_bits,
    invalid_utf8,
    huge_length,
    second_http_request,
];

/// How the request and the ending reach the server.
#[derive(Clone, Copy)]
enum Split {
    /// Request and ending in one write: the server reads them together.
    OneWrite,
    /// The request; then, once the client has heard its own join notice, the ending.
    TwoWrites,
    /// Every byte in a write of its own (TCP_NODELAY, no pauses): reads split them anyhow.
    ByteByByte,
}

/// Connects, sends the upgrade request and `ending` split as told, and checks the server's
/// answer: 101, then its Close frame with the ending's code. Once that has arrived, the server
/// has handled the whole ending. The client is returned so that its socket stays open.
fn end_a_client(server: &TestServer, ending: &Ending, split: Split) -> RawClient {
    let request = Handshake::new(server);
    let mut stream = tcp_connect(server);
    match split {
        Split::OneWrite => {
            let all = [request.to_bytes(), ending.bytes.clone()].concat();
            stream.write_all(&all).expect("send request and ending");
        }
        Split::TwoWrites => {
            let mut client = RawClient::handshake(stream, &request);
            client.expect_body(JOINED);
            client.write_raw(&ending.bytes);
            return expect_answer(client, ending);
        }
        Split::ByteByByte => {
            stream.set_nodelay(true).unwrap();
            for byte in request.to_bytes().iter().chain(&ending.bytes) {
                stream.write_all(&[*byte]).expect("send one byte");
            }
        }
    }
    expect_answer(RawClient::read_handshake_response(stream), ending)
}

fn expect_answer(mut client: RawClient, ending: &Ending) -> RawClient {
    assert_eq!(
        client.expect_close(),
        Some(ending.code),
        "the server's answer"
    );
    client
}

/// What a watcher must hear from a client that ends after saying `said`.
fn joined_said_left(said: Option<&str>) -> Vec<String> {
    [Some(JOINED), said, Some(LEFT)]
        .into_iter()
        .flatten()
        .map(String::from)
        .collect()
}

/// Every body `ws` hears before `marker` (which someone has just sent).
fn heard_before(ws: &mut Ws, marker: &str) -> Vec<String> {
    let mut heard = Vec::new();
    loop {
        let body = next_body(ws);
        if body == marker {
            return heard;
        }
        heard.push(body);
    }
}

/// One process: the watcher joins, a client ends, the watcher hears exactly its join, its text
/// and its leave.
fn balances_alone(ending: fn(&TestServer) -> Ending, split: Split) {
    let server = TestServer::start(&[]);
    let mut watcher = join_chat(&server, &mut []);
    let ending = ending(&server);
    let mut client = end_a_client(&server, &ending, split);
    send_text(&mut watcher, "marker-1");
    let heard = heard_before(&mut watcher, "marker-1");
    assert_eq!(
        heard,
        joined_said_left(ending.said),
        "what the watcher heard"
    );
    client.expect_eof();
}

/// A mio-chat process in the room on `redis`, once its subscription is in place.
fn node(redis: &Redis) -> TestServer {
    let server = TestServer::start(&["--redis", &redis.url()]);
    server.wait_for_log("redis: subscribed");
    server
}

/// Two processes on one Redis: the client ends on A; a watcher on B and one on A each hear its
/// join, its text and its leave exactly once. The marker comes from A's watcher: A publishes it
/// after the leave, on the same connection, so Redis orders it after the leave for everyone.
fn balances_across_redis(ending: fn(&TestServer) -> Ending, split: Split) {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let mut on_b = join_chat(&b, &mut []);
    let mut on_a = join_chat(&a, &mut [&mut on_b]);
    let ending = ending(&a);
    let mut client = end_a_client(&a, &ending, split);
    send_text(&mut on_a, "marker-1");
    let expected = joined_said_left(ending.said);
    assert_eq!(
        heard_before(&mut on_b, "marker-1"),
        expected,
        "watcher on B"
    );
    assert_eq!(
        heard_before(&mut on_a, "marker-1"),
        expected,
        "watcher on A"
    );
    client.expect_eof();
}

/// For each ending, a module of tests: each split, on one process and across Redis.
macro_rules! endings {
    ($($ending:ident),* $(,)?) => {$(
        mod $ending {
            use super::*;

            #[test]
            fn in_one_write_balances() {
                balances_alone(super::$ending, Split::OneWrite);
            }

            #[test]
            fn in_two_writes_balances() {
                balances_alone(super::$ending, Split::TwoWrites);
            }

            #[test]
            fn byte_by_byte_balances() {
                balances_alone(super::$ending, Split::ByteByByte);
            }

            #[test]
            #[cfg_attr(not(any(ci, have_redis_server)), ignore = "redis-server is not installed")]
            fn in_one_write_balances_across_redis() {
                balances_across_redis(super::$ending, Split::OneWrite);
            }

            #[test]
            #[cfg_attr(not(any(ci, have_redis_server)), ignore = "redis-server is not installed")]
            fn in_two_writes_balances_across_redis() {
                balances_across_redis(super::$ending, Split::TwoWrites);
            }

            #[test]
            #[cfg_attr(not(any(ci, have_redis_server)), ignore = "redis-server is not installed")]
            fn byte_by_byte_balances_across_redis() {
                balances_across_redis(super::$ending, Split::ByteByByte);
            }
        }
    )*};
}

endings!(
    close_frame,
    text_then_close,
    ping_then_close,
    binary_frame,
    unmasked_frame,
    rsv_bits,
    invalid_utf8,
    huge_length,
    second_http_request,
);

/// Three clients of each kind, interleaved, each sending its request and its ending in one
/// write; all write before any answer is read.
fn end_many_clients(server: &TestServer) -> Vec<(Ending, RawClient)> {
    let endings: Vec<Ending> = (0..3)
        .flat_map(|_| EVERY_ENDING.map(|ending| ending(server)))
        .collect();
    let streams: Vec<TcpStream> = endings
        .iter()
        .map(|ending| {
            let mut stream = tcp_connect(server);
            let all = [Handshake::new(server).to_bytes(), ending.bytes.clone()].concat();
            stream.write_all(&all).expect("send request and ending");
            stream
        })
        .collect();
    let answers = streams
        .into_iter()
        .zip(&endings)
        .map(|(stream, ending)| expect_answer(RawClient::read_handshake_response(stream), ending));
    let answers: Vec<RawClient> = answers.collect();
    endings.into_iter().zip(answers).collect()
}

/// Counts joins and leaves among what `ws` heard before `marker`: one of each per client, and
/// every text said.
fn expect_balanced_counts(ws: &mut Ws, marker: &str, clients: usize, texts: usize) {
    let heard = heard_before(ws, marker);
    let count = |body: &str| heard.iter().filter(|b| *b == body).count();
    assert_eq!(
        (count(JOINED), count(LEFT)),
        (clients, clients),
        "{heard:?}"
    );
    assert_eq!(count(SAID), texts, "{heard:?}");
}

/// The count: many clients ending in the read that holds their request. The watcher
/// hears as many leaves as joins, one of each per client.
#[test]
fn many_clients_ending_in_their_first_read_leave_as_often_as_they_join() {
    let server = TestServer::start(&[]);
    let mut watcher = join_chat(&server, &mut []);
    let ended = end_many_clients(&server);
    send_text(&mut watcher, "marker-1");
    let texts = ended
        .iter()
        .filter(|(ending, _)| ending.said.is_some())
        .count();
    expect_balanced_counts(&mut watcher, "marker-1", ended.len(), texts);
}

/// The same across Redis: the clients end on A; watchers on B and A count.
#[test]
#[cfg_attr(
    not(any(ci, have_redis_server)),
    ignore = "redis-server is not installed"
)]
fn many_clients_ending_in_their_first_read_leave_as_often_as_they_join_across_redis() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let mut on_b = join_chat(&b, &mut []);
    let mut on_a = join_chat(&a, &mut [&mut on_b]);
    let ended = end_many_clients(&a);
    send_text(&mut on_a, "marker-1");
    let texts = ended
        .iter()
        .filter(|(ending, _)| ending.said.is_some())
        .count();
    expect_balanced_counts(&mut on_b, "marker-1", ended.len(), texts);
    expect_balanced_counts(&mut on_a, "marker-1", ended.len(), texts);
}
