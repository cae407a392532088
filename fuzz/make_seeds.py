#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/, in each target's input layout.

The seeds are the inputs that matter: valid handshakes, each refusal, frames of every kind and
length form, fragmented messages, close frames, and the malformed cases the server must refuse.
Run it from fuzz/ after changing a layout; libFuzzer grows the rest from here.
"""

import os
import struct

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path="/ws", extra="", version="1.1", key=KEY, ws_version="13"):
    return (
        f"GET {path} HTTP/{version}\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {ws_version}\r\n{extra}\r\n"
    ).encode()


def frame(first, payload=b"", mask=b"\x01\x02\x03\x04", length_form=None):
    """A client frame: `first` is FIN/RSV/opcode; masked unless `mask` is None."""
    n = len(payload)
    form = length_form or (0 if n < 126 else 126 if n < 65536 else 127)
    bit = 0x80 if mask is not None else 0
    if form == 0:
        head = bytes([first, bit | n])
    elif form == 126:
        head = bytes([first, bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return frame(0x88, struct.pack(">H", code) + reason)


def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


# http_request: a flag byte (bit 0 --echo, bits 1-2 origin policy), then the bytes.
http = {
    "upgrade": b"\x00" + upgrade(),
    "upgrade-then-frame": b"\x00" + upgrade() + frame(0x81, b"hi"),
    "upgrade-echo": b"\x01" + upgrade("/echo?x=1"),
    "upgrade-bare-lf": b"\x00" + upgrade().replace(b"\r\n", b"\n"),
    "upgrade-ipv6-origin": b"\x00"
    + upgrade(extra="Origin: http://[::1]:3000\r\n").replace(b"localhost:8080", b"[::1]:8080"),
    "origin-refused": b"\x00" + upgrade(extra="Origin: http://evil.example\r\n"),
    "origin-listed": b"\x04" + upgrade(extra="Origin: http://evil.example\r\n"),
    "http10-upgrade": b"\x00" + upgrade(version="1.0"),
    "version-8": b"\x00" + upgrade(ws_version="8"),
    "bad-key": b"\x00" + upgrade(key="short=="),
    "page": b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "healthz": b"\x00GET /healthz?probe=1 HTTP/1.0\r\n\r\n",
    "metrics": b"\x00GET /metrics HTTP/1.1\r\n\r\n",
    "post": b"\x00POST /ws HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "tls-hello": b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "no-colon": b"\x00GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    "many-headers": b"\x00GET / HTTP/1.1\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(70))
    + b"\r\n",
}
for name, data in http.items():
    write("http_request", name, data)

# frame_decoder: a limit selector (0 none, 1 125, 2 65536, 3 next 8 bytes LE), then the bytes.
frames = {
    "text": b"\x00" + frame(0x81, b"hello, world"),
    "len16": b"\x00" + frame(0x82, b"\x07" * 300),
    "len64": b"\x00" + frame(0x82, b"\x07" * 20, length_form=127),
    "too-big": b"\x02" + frame(0x81, b"", length_form=127)[:2] + struct.pack(">Q", 1 << 20) + b"\1\2\3\4",
    "top-bit": b"\x00\x81\xff\x80\0\0\0\0\0\0\0\1\2\3\4",
    "unmasked": b"\x00" + frame(0x81, b"hi", mask=None),
    "rsv1": b"\x00" + frame(0xC1, b"x"),
    "opcode3": b"\x00" + frame(0x83, b""),
    "fragmented-ping": b"\x00" + frame(0x09, b"p"),
    "long-ping": b"\x00" + frame(0x89, b"\0" * 126),
    "close-1000": b"\x01" + close(1000, b"bye"),
    "close-1005": b"\x01" + close(1005),
    "close-bad-utf8": b"\x01" + close(1000, b"\xff"),
    "close-one-byte": b"\x01" + frame(0x88, b"\x03"),
    "limit-explicit": b"\x03" + struct.pack("<Q", 10) + frame(0x81, b"eleven byte"),
}
for name, data in frames.items():
    write("frame_decoder", name, data)


# connection: flags (bits 0-1 request prefix: 0 none, 1 /ws, 2 /echo, 3 /ws with --echo;
# bits 2-3 max_message_size 65536/125/16/1000; bit 4 no pings), op count, 3-byte ops, stream.
def conn(flags, ops, stream):
    return bytes([flags, len(ops)]) + b"".join(bytes(op) for op in ops) + stream


def feed(n):
    return (0, n & 0xFF, n >> 8)


def sent(n):
    return (1, n & 0xFF, n >> 8)


def deadline(secs=0):
    return (2, secs, 0)


PEER_CLOSED = (3, 0, 0)

fragmented = frame(0x01, "h\u00e9".encode()[:2]) + frame(0x89, b"p") + frame(0x80, "h\u00e9llo".encode()[2:])
connection = {
    "raw-request-and-text": conn(0, [], upgrade() + frame(0x81, b"hi")),
    "text": conn(1, [], frame(0x81, b"hello")),
    "fragmented-with-ping": conn(1, [], fragmented),
    "fragmented-bytewise": conn(1, [feed(1)] * 20, fragmented),
    "close": conn(1, [sent(200)], close(1000) + frame(0x81, b"after")),
    "close-then-eof": conn(1, [feed(8), sent(500), PEER_CLOSED], close(1001)),
    "echo-binary": conn(2, [], frame(0x82, bytes(range(40)))),
    "echo-fragmented": conn(3, [], frame(0x02, b"ab") + frame(0x80, b"cd") + frame(0x81, b"x")),
    "binary-in-chat": conn(1, [], frame(0x82, b"bin")),
    "bad-utf8": conn(1, [], frame(0x01, b"a") + frame(0x80, b"\xc0")),
    "too-big-fragments": conn(1 | 8, [], frame(0x01, b"a" * 10) + frame(0x80, b"a" * 10)),
    "continuation-first": conn(1, [], frame(0x80, b"x")),
    "ping-timeout": conn(1, [deadline(), sent(10), deadline()], b""),
    "pong-resets-keepalive": conn(1, [deadline(), feed(6), deadline(), deadline()], frame(0x8A)),
    "slow-request-408": conn(0, [feed(16), deadline(11)], b"GET / HTTP/1.1\r\n"),
    "page": conn(0, [feed(5), sent(100)], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "metrics": conn(0, [], b"GET /metrics HTTP/1.1\r\n\r\n"),
    "control-chars": conn(1, [], frame(0x81, bytes(range(32)) + b'"\\')),
}
for name, data in connection.items():
    write("connection", name, data)

# redis_reply: what Redis sends the backplane (the input is the byte stream itself).
def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)

def message(payload, channel=b"mio-chat"):
    return b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload)

envelope = b'{"v":1,"node":"5f0c9a2e41d7b386","seq":42,"kind":"message","body":"hi \\"you\\""}'
redis_reply = {
    "subscribed-then-message": b"*3\r\n" + bulk(b"subscribe") + bulk(b"mio-chat") + b":1\r\n"
    + message(envelope),
    "publish-replies": b"+OK\r\n:2\r\n:0\r\n-ERR unknown command\r\n",
    "join-and-leave": message(b'{"v":1,"node":"a","seq":1,"kind":"join"}')
    + message(b'{"v":1,"node":"a","seq":2,"kind":"leave"}'),
    "newer-version": message(b'{"v":2,"node":"a","seq":1,"kind":"join","more":[1]}'),
    "not-an-envelope": message(b"hello"),
    "incomplete": message(envelope)[:-7],
    "nested-and-null": b"*2\r\n*1\r\n$-1\r\n$0\r\n\r\n",
}
# The target's 9-byte header: mode, max_depth + 10 × max_elements (20 and up: no width limit),
# max_bulk (u16 LE), max_reply / 16 (u16 LE), cut seed, repeat count (u16 LE). Mode bit 0 repeats
# the stream's second line; bit 1 takes the backplane's limits.
def reply_header(mode=2, depth=1, max_bulk=65535, max_reply=65535, seed=7, repeat=0):
    return struct.pack("<BBHHBH", mode, depth, max_bulk, max_reply, seed, repeat)

for name, data in redis_reply.items():
    write("redis_reply", name, reply_header() + data)
    write("redis_reply", name + "-small-limits", reply_header(0, 43, 40, 8, 200) + data)
# Deep, wide and endless, as in issue 11.
write("redis_reply", "deep-nesting", reply_header(1, 209, 100, 4096, 3, 32768) + b"*1\r\n*1\r\n")
write("redis_reply", "unfinished-wide-array",
      reply_header(3, 1, 0, 0, 16, 60000) + b"*100000\r\n:1\r\n")
write("redis_reply", "unfinished-wide-array-no-width-limit",
      reply_header(1, 201, 100, 65535, 16, 60000) + b"*100000\r\n:1\r\n")
write("redis_reply", "endless-bulk",
      reply_header(3, 1, 0, 0, 17, 65535) + b"$209715200\r\n" + b"x" * 63 + b"\n")
write("redis_reply", "endless-line",
      reply_header(1, 1, 1000, 1000, 5, 65535) + b"+\n" + b"a" * 60 + b"\n")
