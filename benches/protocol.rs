//! Micro-benchmarks of the hot paths, in memory, without sockets (`cargo bench --bench protocol`):
//! encoding one broadcast frame, fanning one message out to 10,000 client queues, parsing an
//! upgrade request, decoding a run of masked client frames, and decoding what Redis sends the
//! backplane (a run of pub/sub messages; an unfinished 12 MiB array fed in 64 KiB reads).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mio_chat::budget::FairShare;
use mio_chat::config::Config;
use mio_chat::connection::{Connection, Context, Event};
use mio_chat::frame;
use mio_chat::http::{self, OriginPolicy};
use mio_chat::message;
use mio_chat::queue::OutQueue;
use mio_chat::redis::{self, Limits, Reply, ReplyDecoder};
use mio_chat::room::{Batch, Room};

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:3000\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36\r\n\
    Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// A masked client text frame, as a browser sends it.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::push_client_frame(
        &mut out,
        frame::OpCode::Text,
        payload,
        [0x37, 0xFA, 0x21, 0x3D],
    );
    out
}

fn encode_broadcast_frame(c: &mut Criterion) {
    let body = "s=3 q=17 t=123456789 the quick brown fox jumps over the lazy dog";
    let mut out = Vec::with_capacity(256);
    c.bench_function("encode one broadcast frame (64-byte text)", |b| {
        b.iter(|| {
            out.clear();
            message::push_chat_frame(&mut out, black_box(body));
            black_box(out.len())
        })
    });
}

fn fan_out_to_10k(c: &mut Criterion) {
    const CLIENTS: usize = 10_000;
    let mut room = Room::default();
    let mut joining = Batch::default();
    for key in 0..CLIENTS {
        room.join(key, message::Version::V1, &mut joining);
    }
    let mut queues: Vec<OutQueue> = (0..CLIENTS).map(|_| OutQueue::default()).collect();
    let mut group = c.benchmark_group("fan out one message");
    group.throughput(Throughput::Elements(CLIENTS as u64));
    group.bench_function("to 10,000 client queues", |b| {
        b.iter_custom(|iterations| {
            let mut busy = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let mut broadcast = Batch::default();
                broadcast.said(
                    message::MemberId::default(),
                    "s=3 q=17 t=123456789 hello everyone",
                );
                let start = Instant::now();
                room.hand_out(&mut broadcast, |key, frames| {
                    queues[key].push(frames);
                    true
                });
                busy += start.elapsed();
                // The sockets take it all; not timed, as the kernel's part is not ours.
                for queue in &mut queues {
                    let n = queue.len();
                    queue.consume(n);
                }
            }
            busy
        })
    });
    group.finish();
}

fn parse_upgrade_request(c: &mut Criterion) {
    let origins = OriginPolicy::default();
    c.bench_function("parse an upgrade request (browser-sized)", |b| {
        b.iter(|| http::decide(black_box(UPGRADE), &origins, false))
    });
}

fn decode_client_frames(c: &mut Criterion) {
    const FRAMES: usize = 1000;
    let stream: Vec<u8> = (0..FRAMES)
        .flat_map(|i| client_frame(format!("message {i:>5} {}", "x".repeat(40)).as_bytes()))
        .collect();
    let mut group = c.benchmark_group("decode masked client frames");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("headers and unmasking, 1000 frames of 54 bytes", |b| {
        b.iter_batched_ref(
            || stream.clone(),
            |buf| {
                let mut at = 0;
                while let Ok(Some(h)) = frame::parse_header(&buf[at..], 65536) {
                    let payload = &mut buf[at + h.header_len..at + h.frame_len()];
                    frame::unmask(payload, h.mask);
                    at += h.frame_len();
                }
                black_box(at)
            },
            BatchSize::SmallInput,
        )
    });
    // The whole path a chat message takes before the fan-out: a connection's state machine
    // reading the frames, checking UTF-8 and encoding each as a broadcast frame. Without a
    // budget: the same client says the 1000 frames again at every iteration, at one instant.
    let config = Config {
        fair_share: FairShare::off(),
        ..Config::default()
    };
    group.bench_function(
        "through a connection into the broadcast, 1000 frames",
        |b| {
            let now = Instant::now();
            let mut conn = Connection::new(now);
            let mut request = UPGRADE.to_vec();
            let cx = Context {
                now,
                config: &config,
                degraded: false,
            };
            conn.receive(&mut request, &cx, &mut |_| {});
            b.iter_batched_ref(
                || stream.clone(),
                |buf| {
                    let mut broadcast = Batch::default();
                    conn.receive(buf, &cx, &mut |event| {
                        if let Event::Said(text) = event {
                            broadcast.said(message::MemberId::default(), text);
                        }
                    });
                    black_box(broadcast.len())
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

fn decode_redis_replies(c: &mut Criterion) {
    let mut messages = Vec::new();
    let payload = [b'x'; 1000];
    for _ in 0..1000 {
        redis::command(&mut messages, &[b"message", b"mio-chat", &payload]);
    }
    let mut group = c.benchmark_group("decode Redis replies");
    group.throughput(Throughput::Bytes(messages.len() as u64));
    group.bench_function("1000 pub/sub messages of 1000 bytes, in one buffer", |b| {
        b.iter(|| {
            let mut decoder = ReplyDecoder::new(Limits::for_payloads(16 << 20));
            let (mut used, mut count) = (0, 0);
            while let Ok(Some((reply, n))) = decoder.next_reply(&messages[used..]) {
                count += usize::from(matches!(reply, Reply::Message { .. }));
                used += n;
            }
            black_box(count)
        })
    });
    let mut wide = b"*4000000\r\n".to_vec();
    wide.extend(b":1\r\n".repeat(3 << 20));
    group.throughput(Throughput::Bytes(wide.len() as u64));
    group.sample_size(10);
    group.bench_function("an unfinished 12 MiB array, in 64 KiB reads", |b| {
        b.iter(|| {
            // No width limit, so that every element is judged (the real limits refuse this
            // array at its header).
            let mut decoder = ReplyDecoder::new(Limits {
                max_elements: usize::MAX,
                ..Limits::for_payloads(16 << 20)
            });
            for end in (64 << 10..wide.len()).step_by(64 << 10).chain([wide.len()]) {
                black_box(decoder.next_reply(&wide[..end]).ok());
            }
            assert_eq!(decoder.examined(), wide.len() as u64);
            black_box(decoder.examined())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    encode_broadcast_frame,
    fan_out_to_10k,
    parse_upgrade_request,
    decode_client_frames,
    decode_redis_replies
);
criterion_main!(benches);
