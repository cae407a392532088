#!/usr/bin/env bash
# benches/redis_fanout.sh: how many pub/sub deliveries one Redis core makes, for the paper
# estimate of docs/cluster.md (one room of a million clients).
#
#   S=16 N=300000 bash benches/redis_fanout.sh     # 16 subscribers, 300,000 publishes
#   S=128 N=100000 bash benches/redis_fanout.sh
#
# One redis-server (a free port, no persistence, no pub/sub output-buffer limit), S subscribers
# to "mio-chat" that read and discard (python3, standard library: no parsing, so Redis is what
# is measured), and one redis-benchmark client pipelining N PUBLISHes (64 at a time) of a
# 154-byte envelope, the size of a 64-byte chat message's. Prints the deliveries (N × S) per
# second of Redis's CPU (utime + stime from /proc) and per second of wall time. Loopback only;
# every process it starts is killed on exit.
set -euo pipefail
S=${S:-16} N=${N:-200000}
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit 'pubsub 0 0 0' >/dev/null &
RP=$!
PIDS=()
trap 'kill ${PIDS[@]:-} $RP 2>/dev/null; wait 2>/dev/null' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
for ((i = 0; i < S; i++)); do
    python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$8\r\nmio-chat\r\n")
while s.recv(1 << 20): pass' "$PORT" &
    PIDS+=($!)
done
until [[ $(redis-cli -p "$PORT" pubsub numsub mio-chat | tail -n 1) == "$S" ]]; do sleep 0.1; done
BODY=$(printf 'x%.0s' $(seq 64))
ENV="{\"v\":1,\"node\":\"5f0c9a2e41d7b386\",\"seq\":1234567,\"kind\":\"message\",\"member\":123456,\"body\":\"$BODY\"}"
T=$(getconf CLK_TCK)
cpu() { awk -v t="$T" '{ print ($14 + $15) / t }' "/proc/$RP/stat"; }
C0=$(cpu) W0=$EPOCHREALTIME
redis-benchmark -p "$PORT" -n "$N" -c 1 -P 64 -q PUBLISH mio-chat "$ENV" >/dev/null
C1=$(cpu) W1=$EPOCHREALTIME
awk -v c0="$C0" -v c1="$C1" -v w0="$W0" -v w1="$W1" -v n="$N" -v s="$S" -v b="${#ENV}" 'BEGIN {
    printf "%d publishes of %d bytes to %d subscribers: %.2f s, Redis CPU %.2f s: %.0f deliveries" \
        " per Redis CPU second, %.0f per wall second\n",
        n, b, s, w1 - w0, c1 - c0, n * s / (c1 - c0), n * s / (w1 - w0) }'
