#!/usr/bin/env bash
# The TLS figures of docs/performance.md, measured over loopback on this machine:
#   1. idle memory per connection at N (10,000) open connections: mio-chat over ws://, mio-chat
#      over wss:// (buffered rustls), and the idiomatic peer (benches/peers/tokio-tls: tokio +
#      tokio-rustls + tokio-tungstenite) over wss://, each in the same run;
#   2. the handshake flood: N wss:// clients at once, handshakes per second and server CPU per
#      handshake, with an ECDSA P-256 and an RSA 2048 certificate (ws:// beside them);
#   3. CPU per delivery, ws:// against wss://, at max rate and at 1,000 clients x 100 msg/s, with
#      the peer over wss:// beside them.
# The servers take turns within each run (the machine is shared and noisy); medians at the end.
# Not part of `cargo test` or CI: it builds the peer itself (its own workspace, in target/peers).
#
#   bash benches/tls.sh              # 3 runs (about 10 minutes)
#   TLS_RUNS=1 TLS_ONLY=idle bash benches/tls.sh
#   TLS_SERVER=/tmp/old/mio-chat bash benches/tls.sh   # another server build (all mio-chat rows)
#   TLS_RUNS=1 TLS_ONLY=maxrate TLS_SERVER=... bash benches/tls.sh   # CPU per delivery, max rate
#
# Idle connections are opened on /echo (outside the room), so no join flood runs: what is left
# after the handshakes is what an idle connection holds. The generator is left waiting for join
# notices that never come; the figures are read from /proc once every connection is open (the
# server's fd count), then it is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${TLS_N:-10000}
RUNS=${TLS_RUNS:-3}
ONLY=${TLS_ONLY:-}
OUT=target/tls-bench
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
: >"$RESULTS"
TICKS=$(getconf CLK_TCK)

make_cert() { # name, then openssl's -newkey arguments
    local name=$1
    shift
    [ -f "$OUT/$name-cert.pem" ] && return
    openssl req -x509 "$@" -nodes -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -keyout "$OUT/$name-key.pem" -out "$OUT/$name-cert.pem" 2>/dev/null
}
make_cert ec -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
make_cert rsa -newkey rsa:2048

cargo build --release --bins --quiet
(cd benches/peers/tokio-tls && CARGO_TARGET_DIR="$PWD/../../../target/peers" cargo build --release --quiet)
SERVER=${TLS_SERVER:-target/release/mio-chat}
LOAD=target/release/mio-chat-load
PEER=target/peers/release/tokio-tls-peer

PID= PORT=
# Starts one server: plain | ec | rsa (mio-chat) | peer (tokio, ECDSA, tungstenite's defaults)
# | peer4k (the same with a 4 KiB WebSocket read buffer); sets PID and PORT.
# The per-client budget is off, as for every load test: the broadcasts measure the server, not
# the budget's pace.
start() {
    local log="$OUT/server.log"
    rm -f "$log" # else the wait below may read the previous server's port
    export MIO_CHAT_CLIENT_RATE=0 MIO_CHAT_CLIENT_BYTES_RATE=0
    case $1 in
    plain) "$SERVER" --addr 127.0.0.1:0 --echo --ping-interval 0 2>"$log" & ;;
    ec | rsa) "$SERVER" --addr 127.0.0.1:0 --echo --ping-interval 0 \
        --tls-cert "$OUT/$1-cert.pem" --tls-key "$OUT/$1-key.pem" 2>"$log" & ;;
    peer) "$PEER" 127.0.0.1:0 "$OUT/ec-cert.pem" "$OUT/ec-key.pem" 2>"$log" & ;;
    peer4k) "$PEER" 127.0.0.1:0 "$OUT/ec-cert.pem" "$OUT/ec-key.pem" 4096 2>"$log" & ;;
    esac
    PID=$!
    until grep -q "listening on" "$log" 2>/dev/null; do sleep 0.05; done
    PORT=$(grep -m1 -o 'listening on [0-9.]*:[0-9]*' "$log" | sed 's/.*://')
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }
scheme() { [ "$1" = plain ] && echo ws || echo wss; }
cpu_s() { awk -v t="$TICKS" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$RESULTS"; }

# N idle connections on /echo: KiB per connection; connections per second and CPU per
# connection (the TLS handshake, or the TCP accept and HTTP upgrade over ws://).
idle() {
    local kind=$1
    start "$kind"
    sleep 0.2
    local rss0 cpu0 fd0 t0 t1
    rss0=$(rss_kib "$PID") cpu0=$(cpu_s "$PID") fd0=$(fds "$PID")
    t0=$(date +%s.%N)
    "$LOAD" connect -n "$N" --url "$(scheme "$kind")://127.0.0.1:$PORT/echo" --insecure \
        --timeout 120 --quiet --json >"$OUT/idle-$kind.json" 2>/dev/null &
    local load=$!
    until [ "$(fds "$PID")" -ge $((fd0 + N)) ]; do sleep 0.02; done
    t1=$(date +%s.%N)
    sleep 1 # late handshake messages (TLS 1.3 session tickets) settle
    local rss1 cpu1
    rss1=$(rss_kib "$PID") cpu1=$(cpu_s "$PID")
    kill "$load" 2>/dev/null
    wait "$load" 2>/dev/null || true
    stop
    record "idle_kib_per_conn" "$kind" "$(echo "($rss1 - $rss0) / $N" | bc -l | xargs printf %.2f)"
    record "connects_per_s" "$kind" "$(echo "$N / ($t1 - $t0)" | bc -l | xargs printf %.0f)"
    record "cpu_ms_per_connect" "$kind" "$(echo "($cpu1 - $cpu0) * 1000 / $N" | bc -l | xargs printf %.3f)"
}

# One broadcast run; records the server's CPU per million deliveries and the p99 latency.
broadcast() {
    local kind=$1 name=$2
    shift 2
    start "$kind"
    "$LOAD" broadcast "$@" --url "$(scheme "$kind")://127.0.0.1:$PORT/ws" --insecure \
        --server-pid "$PID" --quiet --json >"$OUT/$name-$kind.json" 2>/dev/null || true
    stop
    local json="$OUT/$name-$kind.json"
    record "${name}_cpu_s_per_M" "$kind" "$(jq '.server.cpu_s_per_million_deliveries' "$json")"
    record "${name}_deliveries_per_s" "$kind" "$(jq '.traffic.deliveries_per_s | floor' "$json")"
    record "${name}_p99_ms" "$kind" "$(jq '.traffic.latency.p99_ms' "$json")"
    record "${name}_problems" "$kind" "$(jq -c '.problems' "$json")"
}

for run in $(seq "$RUNS"); do
    echo "run $run of $RUNS" >&2
    if [ -z "$ONLY" ] || [ "$ONLY" = idle ]; then
        for kind in plain ec rsa peer peer4k; do idle "$kind"; done
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = broadcast ] || [ "$ONLY" = maxrate ]; then
        for kind in plain ec peer; do
            broadcast "$kind" maxrate -n 100 --senders 10 --window 64 --duration 10 --size 64
            if [ "$ONLY" != maxrate ]; then
                broadcast "$kind" paced -n 1000 --senders 1 --rate 100 --duration 10 --size 64
            fi
        done
    fi
done

echo "medians ($RUNS runs, N=$N):"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    measure, kind, value = line.rstrip("\n").split("\t")
    rows.setdefault((measure, kind), []).append(value)
for (measure, kind), values in rows.items():
    try:
        print(f"{measure:32} {kind:6} {statistics.median(float(v) for v in values):g}")
    except ValueError:
        print(f"{measure:32} {kind:6} {values}")
EOF
