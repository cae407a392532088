#!/usr/bin/env python3
"""A burst that fills the server's queues, drains and closes: does the memory go back?

The figure of docs/security.md ("Giving memory back"): the server's resident memory when idle,
at the burst's peak, and once every client of the burst has read all and gone, for one server
binary or several taking turns (the machine is shared and noisy: alternate, take medians).

The burst: N clients join the room through sockets with a 256 KiB receive buffer (less stalls loopback TCP: its 64 KiB segments
wait for a window that never opens that far) and read nothing,
so the kernel absorbs little and the server queues what they are sent; one more client sends
MESSAGES chat messages of SIZE bytes. Every reader's queue grows to about MESSAGES x SIZE (the
join notices besides), in steps of a doubling Vec, many of them below glibc's mmap threshold:
the heap grows and is left full of holes when the queues are freed. Then every reader reads
everything it was sent and closes. "after" is read once the server has closed them all and a
second has passed (the trim runs at most once a second, when the loop is about to sleep).

    python3 benches/burst.py target/release/mio-chat            # one build, 3 runs
    BURST_RUNS=5 python3 benches/burst.py old/mio-chat new/mio-chat   # builds take turns

Environment: BURST_N (3,000 readers), BURST_MESSAGES (100), BURST_SIZE (2,000 bytes),
BURST_RUNS (3). Loopback only; a run takes a few seconds.
"""

import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time

N = int(os.environ.get("BURST_N", 2000))
MESSAGES = int(os.environ.get("BURST_MESSAGES", 300))
SIZE = int(os.environ.get("BURST_SIZE", 1000))
RUNS = int(os.environ.get("BURST_RUNS", 3))
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1))


def heap_kib(pid):
    """Resident KiB in the [heap] mapping (glibc's main arena), the rest being mmaps and code."""
    resident, heap = 0, False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                heap = line.rstrip().endswith("[heap]")
            elif heap and line.startswith("Rss:"):
                resident += int(line.split()[1])
    return resident


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def frame(payload):
    """A masked client text frame (the mask is zero: the payload goes as it is)."""
    head = bytes([0x81])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


def start(binary):
    env = dict(os.environ, MIO_CHAT_CLIENT_RATE="0", MIO_CHAT_CLIENT_BYTES_RATE="0")
    server = subprocess.Popen(
        [binary, "--addr", "127.0.0.1:0", "--ping-interval", "0",
         "--max-connections", str(N + 100), "--max-client-memory", str(8 << 30),
         "--max-outbound", str(64 << 20)],
        stderr=subprocess.PIPE, env=env, text=True)
    for line in server.stderr:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return server, int(found.group(1))
    raise SystemExit(f"{binary} did not start")


def open_reader(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
    s.connect(("127.0.0.1", port))
    s.sendall(UPGRADE)
    return s


def settle(pid, want_fds):
    """Waits until the server holds `want_fds` descriptors, then for its memory to stop moving."""
    while fds(pid) != want_fds:
        time.sleep(0.05)
    last = rss_kib(pid)
    while True:
        time.sleep(1.2)  # longer than the trim's least interval
        now = rss_kib(pid)
        if now == last:
            return now
        last = now


def drain_all(readers, expected):
    """Reads every reader until it has `expected` bytes, then closes it."""
    poller = selectors.DefaultSelector()
    for s in readers:
        s.setblocking(False)
        poller.register(s, selectors.EVENT_READ, [0])
    while poller.get_map():
        ready = poller.select(timeout=5)
        if not ready:
            raise SystemExit(f"{len(poller.get_map())} readers stalled before reading {expected} bytes")
        for key, _ in ready:
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            key.data[0] += len(data)
            if not data or key.data[0] >= expected:
                poller.unregister(key.fileobj)
                key.fileobj.close()


def burst(pid, port, base_fds):
    """One burst: the readers join and fill their queues; then they read all and close."""
    readers = [open_reader(port) for _ in range(N)]
    sender = socket.create_connection(("127.0.0.1", port))
    sender.sendall(UPGRADE)
    payload = b"x" * SIZE
    sender.sendall(b"".join(frame(payload) for _ in range(MESSAGES)))
    # Every reader is owed at least the messages' frames (4 bytes of header each).
    expected = MESSAGES * (SIZE + 4)
    while fds(pid) < base_fds + N + 1:
        time.sleep(0.05)
    # The server has handed out the burst once it stops using CPU for half a second.
    last = -1
    while cpu_ticks(pid) != last:
        last = cpu_ticks(pid)
        time.sleep(0.5)
    print(f"  queued: RSS {rss_kib(pid) / 1024:.1f} MiB; draining", file=sys.stderr, flush=True)
    drain_all(readers, expected)
    sender.close()


def run(binary):
    """Two bursts (the first one's frees raise glibc's mmap threshold, so the second one's
    queues come from the heap, as in a long join flood); "after" follows the second."""
    server, port = start(binary)
    try:
        pid = server.pid
        base_fds = fds(pid)
        idle = settle(pid, base_fds)
        burst(pid, port, base_fds)
        settle(pid, base_fds)
        burst(pid, port, base_fds)
        after = settle(pid, base_fds)
        print(f"  after: {heap_kib(pid) / 1024:.1f} MiB of it in the heap", file=sys.stderr, flush=True)
        return idle, peak_kib(pid), after
    finally:
        server.terminate()
        server.wait()


def main():
    binaries = sys.argv[1:] or ["target/release/mio-chat"]
    results = {b: [] for b in binaries}
    for i in range(RUNS):
        for binary in binaries:
            idle, peak, after = run(binary)
            results[binary].append((idle, peak, after))
            print(f"run {i + 1}: {binary}: idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
                  f"after {after / 1024:.1f} MiB", flush=True)
    print(f"medians of {RUNS} ({N} readers, {MESSAGES} messages of {SIZE} bytes):")
    for binary, rows in results.items():
        idle, peak, after = (statistics.median(r[k] for r in rows) / 1024 for k in range(3))
        print(f"  {binary}: idle {idle:.1f} MiB, peak {peak:.1f} MiB, after {after:.1f} MiB "
              f"({after / idle:.1f}x idle)")


main()
