#!/usr/bin/env python3
"""The watcher of benches/cluster.sh: one protocol version 2 client, standard library only.

    cluster_watch.py listen PORT LOG        # join the room on 127.0.0.1:PORT; log its notices
    cluster_watch.py online LOG             # the `online` of the last notice logged (or -1)
    cluster_watch.py node LOG               # this watcher's own node id (from its `hello`)
    cluster_watch.py leaves LOG NODE SINCE  # of NODE's members: shown, still shown, and the
                                            # first and last leave after SINCE (Unix seconds)

`listen` speaks just enough RFC 6455 for a client that only reads: the upgrade asks for the
subprotocol `mio-chat.v2` (whose notices name their member, `NODE.NUMBER`), frames from the
server are unmasked, a ping is answered with a masked pong, and it never sends a message (so
the load generator's checks see a member that never speaks). Each `hello`, `join` and `leave`
is appended to LOG as one line, `UNIX_SECONDS TYPE ID ONLINE`, flushed at once, so that the
other subcommands (run by the script while this one listens) see every notice as it came.
The time is taken as each read returns: a notice is logged when it reached this client.
"""
import base64
import json
import os
import socket
import struct
import sys
import time


def upgrade(sock, port):
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mio-chat.v2\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("watch: the server closed during the upgrade")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        sys.exit(f"watch: no upgrade: {lines[0]}")
    if not any(l.lower() == "sec-websocket-protocol: mio-chat.v2" for l in lines):
        sys.exit("watch: the server did not choose mio-chat.v2")
    return rest


def frames(sock, buf):
    """Yields (opcode, payload) of every frame; fragments are not expected from this server.
    An offset walks the buffer (no copy per frame); what is left is kept for the next read."""
    at = 0
    while True:
        while len(buf) - at >= 2:
            size, head = buf[at + 1] & 0x7F, 2
            if size == 126:
                if len(buf) - at < 4:
                    break
                size, head = struct.unpack_from(">H", buf, at + 2)[0], 4
            elif size == 127:
                if len(buf) - at < 10:
                    break
                size, head = struct.unpack_from(">Q", buf, at + 2)[0], 10
            if len(buf) - at < head + size:
                break
            yield buf[at] & 0x0F, buf[at + head : at + head + size]
            at += head + size
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buf, at = buf[at:] + chunk, 0


def send_frame(sock, opcode, payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


def listen(port, log_path):
    sock = socket.create_connection(("127.0.0.1", int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rest = upgrade(sock, port)
    with open(log_path, "a", buffering=1) as log:
        for opcode, payload in frames(sock, rest):
            now = time.time()
            if opcode == 9:
                send_frame(sock, 10, payload[:125])
            elif opcode == 8:
                return
            elif opcode == 1:
                frame = json.loads(payload)
                kind = frame.get("type")
                if kind == "hello":
                    log.write(f"{now:.6f} hello {frame['you']} -1\n")
                elif kind in ("join", "leave"):
                    log.write(f"{now:.6f} {kind} {frame['id']} {frame['online']}\n")


def entries(log_path):
    try:
        with open(log_path) as log:
            for line in log:
                parts = line.split()
                if len(parts) == 4:
                    yield float(parts[0]), parts[1], parts[2], int(parts[3])
    except FileNotFoundError:
        return


def online(log_path):
    last = -1
    for _, kind, _, count in entries(log_path):
        if kind != "hello":
            last = count
    print(last)


def node(log_path):
    for _, kind, who, _ in entries(log_path):
        if kind == "hello":
            print(who.rsplit(".", 1)[0])
            return
    print("")


def leaves(log_path, node_id, since):
    """`SHOWN STILL FIRST LAST`: members of NODE shown joining, those not yet shown leaving,
    and the first and last leave after SINCE, in seconds after it (- if none)."""
    shown, joined, first, last = set(), 0, None, None
    for at, kind, who, _ in entries(log_path):
        if who.rsplit(".", 1)[0] != node_id:
            continue
        if kind == "join":
            shown.add(who)
            joined += 1
        elif kind == "leave":
            shown.discard(who)
            if at >= float(since):
                first = at if first is None else first
                last = at
    fmt = lambda t: "-" if t is None else f"{t - float(since):.3f}"
    print(joined, len(shown), fmt(first), fmt(last))


if __name__ == "__main__":
    commands = {"listen": listen, "online": online, "node": node, "leaves": leaves}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
