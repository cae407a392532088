#!/usr/bin/env bash
# benches/cluster.sh: one room over P `--redis` processes, loaded by G generators, measured:
#
#   1. connect time: N clients (CLUSTER_CLIENTS) dealt round robin over the P processes by G
#      `mio-chat-load connect --generator I/G` runs started together; each generator's clients
#      are spread over all P processes, so each process holds N/P of them and each generator
#      N/G (both must stay under 19,000: the open-file limit is 20,000 per process);
#   2. join-flood drain: the N(N+1)/2 join notices, until the last one reached its client (each
#      generator's `drain_s`; the room's is the latest of them);
#   3. one broadcast to all: each generator's first client sends a stamped message once the
#      flood is over; the time until the last of that generator's clients (spread over all P
#      processes) had it (`probe.all_received_ms`; the latest of the G);
#   4. memory per connection: each process's RSS (VmRSS, /proc) with only the watchers in the
#      room, and again once the flood has drained, divided by its own clients and by the room's
#      members (each process keeps the ids of every other process's members it shows); and its
#      peak RSS beside the most its clients' buffers held at once (what --max-client-memory
#      bounds: `mio_chat_client_memory_peak_bytes`, read every 0.5 s while the process lives);
#   5. a crashed process: SIGKILL of the last process while the generators hold their clients,
#      then, at a watcher on every other process, the time until it was shown the leave of
#      every member of the dead process (its first and last leave notice after the kill), and
#      the time until that process had written every such leave notice to every one of its
#      clients' sockets (its `mio_chat_bytes_written_total` grown by clients x dead members x
#      42 bytes, the version 1 leave frame; /metrics polled every 0.2 s, and answered between
#      two loop turns). The verdict comes only after --node-timeout (CLUSTER_NODE_TIMEOUT: 3 s
#      here, not the default 5 s), and both figures include it.
#   6. memory given back: once every generator's client has closed, each surviving process's
#      RSS against its RSS with only the watchers (and its `mio_chat_memory_trims_total`).
#
#   bash benches/cluster.sh                                   # 2,000 clients, 2 processes, 2 generators
#   CLUSTER_CLIENTS=40000 CLUSTER_PROCESSES=4 CLUSTER_GENERATORS=4 CLUSTER_TIMEOUT=300 \
#       CLUSTER_HOLD=45 CLUSTER_KILL_BUDGET_MIB=14000 bash benches/cluster.sh   # about 2 minutes
#
# The figures, and why 75,000 clients on four processes do not hold on a 2-core machine:
# docs/performance.md, "One room over four processes".
#
# Why P ports and not one port with --reuse-port: the generator deals client i to target
# i mod P, so every process holds exactly N/P clients; behind one SO_REUSEPORT port the kernel
# spreads them by a hash of address and port, unevenly, and at 75,000 over 4 processes a few
# hundred over the average would cross the 20,000 open files of one process. P ports also let
# the script place one watcher on each process and know which process it kills.
#
# The watchers (benches/cluster_watch.py, python3 and its standard library only) are protocol
# version 2 clients: their notices name the member (`NODE.NUMBER`), so a watcher tells the dead
# process's leaves from the others'. They join before the generators, so each generator sees
# P more members than its own (its checks allow that with --generator).
# `mio-chat-load merge` combines `broadcast` reports only, so the G `connect` reports are
# combined here (the latest time of the G, sums of the counts) with python3.
#
# Environment (all optional):
#   CLUSTER_CLIENTS       clients in the room, N (default 2000)
#   CLUSTER_PROCESSES     mio-chat processes, P (default 2)
#   CLUSTER_GENERATORS    load generators, G (default 2)
#   CLUSTER_NODE_TIMEOUT  every process's --node-timeout, s (default 3)
#   CLUSTER_REDIS_TIMEOUT every process's --redis-timeout, s (default 2, the server's default)
#   CLUSTER_MAX_OUTBOUND  every process's --max-outbound, bytes (default 4 MiB: one client's
#                         share of the whole join flood, N+P notices of 40 bytes, fits; the
#                         1 MiB default drops a client that falls 26,000 notices behind)
#   CLUSTER_TIMEOUT       each generator's --timeout, s: connect, flood and probe (default 600)
#   CLUSTER_HOLD          each generator's --hold, s: time for the RSS, the kill and the leave
#                         flood (default 30 + N/2500)
#   CLUSTER_KILL_BUDGET_MIB  no SIGKILL if the survivors' leave flood could queue more than
#                         this (default 8192): the verdict hands a leave per dead member to every
#                         surviving client in one turn, and what a socket does not take at once
#                         waits in that client's queue (worst case: no client reads meanwhile)
#   CLUSTER_MIN_AVAILABLE_MIB  the memory guard: below this MemAvailable the servers and Redis
#                         are killed and the run fails (default 4096; the machine is shared)
#   CLUSTER_DIR           where the files go (default target/cluster-bench/YYYYmmdd-HHMMSS)
#
# Bounded: at most CLUSTER_TIMEOUT + CLUSTER_HOLD + 60 s of load; every process it started
# (redis-server, servers, watchers, generators) is killed on exit, whatever the exit. Loopback
# only (127.0.0.x). Exit status 0 when every figure was measured: the generators then exit 1
# themselves (their clients on the killed process were lost while holding), which is expected.
# Redis runs without persistence and without a pub/sub output-buffer limit: a process that falls
# behind during the flood is measured, not cut off (N joins are 116 bytes each to every
# subscriber, 8.7 MB at 75,000, past Redis's default soft limit of 8 MiB for 60 s).

set -euo pipefail
cd "$(dirname "$0")/.."

N=${CLUSTER_CLIENTS:-2000}
P=${CLUSTER_PROCESSES:-2}
G=${CLUSTER_GENERATORS:-2}
NODE_TIMEOUT=${CLUSTER_NODE_TIMEOUT:-3}
REDIS_TIMEOUT=${CLUSTER_REDIS_TIMEOUT:-2}
MAX_OUTBOUND=${CLUSTER_MAX_OUTBOUND:-4194304}
TIMEOUT=${CLUSTER_TIMEOUT:-600}
HOLD=${CLUSTER_HOLD:-$((30 + N / 2500))}
DIR=${CLUSTER_DIR:-target/cluster-bench/$(date +%Y%m%d-%H%M%S)}
KILL_BUDGET_MIB=${CLUSTER_KILL_BUDGET_MIB:-8192}
MIN_AVAILABLE_MIB=${CLUSTER_MIN_AVAILABLE_MIB:-4096}
LIMIT=19000

for v in N P G NODE_TIMEOUT REDIS_TIMEOUT MAX_OUTBOUND TIMEOUT HOLD KILL_BUDGET_MIB MIN_AVAILABLE_MIB; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} < 1)); then
        echo "cluster: $v must be a positive whole number (got '${!v}')" >&2
        exit 2
    fi
done
if ((P < 2)); then
    echo "cluster: at least 2 processes (one is killed, the others watch)" >&2
    exit 2
fi
if (((N + P - 1) / P + G + 4 > LIMIT || (N + G - 1) / G + P > LIMIT)); then
    echo "cluster: $N clients need at most $LIMIT sockets per process and per generator:" \
        "raise CLUSTER_PROCESSES or CLUSTER_GENERATORS" >&2
    exit 2
fi

REDIS_PID='' GUARD_PID='' PIDS=() WATCHERS=() GENERATORS=() SAMPLERS=()
cleanup() {
    local pid
    for pid in "$GUARD_PID" "${SAMPLERS[@]}" "${GENERATORS[@]}" "${WATCHERS[@]}" "${PIDS[@]}" "$REDIS_PID"; do
        [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "cluster: building the release binaries" >&2
cargo build --release --quiet --bin mio-chat --bin mio-chat-load
SERVER=target/release/mio-chat
LOAD=target/release/mio-chat-load
WATCH=benches/cluster_watch.py
mkdir -p "$DIR"
echo "cluster: N=$N P=$P G=$G --node-timeout $NODE_TIMEOUT --redis-timeout $REDIS_TIMEOUT;" \
    "files in $DIR" >&2

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "cluster: gave up waiting for: $*" >&2
            return 1
        fi
        sleep 0.1
    done
}
metric() { # port, name: the value of an unlabelled metric (as printed: awk's %d stops at 2^31)
    curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
now() { echo "$EPOCHREALTIME"; }
TICKS=$(getconf CLK_TCK)
cpu_s() { awk -v t="$TICKS" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$1/stat"; }

# Redis on a free port (the kernel picks it; closed again at once), no persistence.
REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit 'pubsub 0 0 0' >"$DIR/redis.log" 2>&1 &
REDIS_PID=$!
wait_for 10 redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1

# P processes, each on a port of its own; the shell writes its PID, then becomes the server.
PORTS=()
for ((i = 0; i < P; i++)); do
    RUST_LOG=info sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$DIR/server$i.pid" \
        "$SERVER" --addr 127.0.0.1:0 --redis "redis://127.0.0.1:$REDIS_PORT" \
        --node-timeout "$NODE_TIMEOUT" --redis-timeout "$REDIS_TIMEOUT" --client-rate 0 --client-bytes-rate 0 \
        --max-outbound "$MAX_OUTBOUND" 2>"$DIR/server$i.log" &
    disown # its SIGKILL below is no news for the shell to print
    wait_for 10 grep -qs 'subscribed to' "$DIR/server$i.log"
    PIDS+=("$(cat "$DIR/server$i.pid")")
    PORTS+=("$(grep -m1 -o 'listening on [0-9.]*:[0-9]*' "$DIR/server$i.log" | sed 's/.*://')")
done
# Every process hears the P-1 others (their beats) before anyone joins.
sees_all() {
    local port
    for port in "${PORTS[@]}"; do
        curl -sf "http://127.0.0.1:$port/metrics" |
            grep -q "^mio_chat_cluster_processes $((P - 1))\$" || return 1
    done
}
wait_for 20 sees_all

# The memory guard: below CLUSTER_MIN_AVAILABLE_MIB of MemAvailable the servers and Redis are
# killed (not the generators: their reports still come, saying what they lost).
guard() {
    local low=999999999 avail
    while sleep 0.25; do
        avail=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
        ((avail < low)) && low=$avail && echo "$low" >"$DIR/lowest-available-mib"
        if ((avail < MIN_AVAILABLE_MIB)); then
            echo "MemAvailable $avail MiB < $MIN_AVAILABLE_MIB MiB" >"$DIR/memory-stop"
            kill -KILL "$@" 2>/dev/null
            return
        fi
    done
}
guard "${PIDS[@]}" "$REDIS_PID" &
GUARD_PID=$!

# The most a process's clients' buffers held at once, as last read, kept in a file (read again
# and again: the last process is killed in step 5).
ledger_peak() { # port, file
    local most=0 bytes
    while sleep 0.5; do
        bytes=$(metric "$1" mio_chat_client_memory_peak_bytes) || continue
        [[ $bytes =~ ^[0-9]+$ ]] && ((bytes > most)) && most=$bytes && echo "$most" >"$2"
    done
}
for ((i = 0; i < P; i++)); do
    ledger_peak "${PORTS[i]}" "$DIR/ledger-peak$i" &
    SAMPLERS+=("$!")
done

# One watcher a process, one after another (a newcomer hears only later joins: so every
# watcher hears the last process's watcher join); all are in once each was shown all P.
for ((i = 0; i < P; i++)); do
    python3 "$WATCH" listen "${PORTS[i]}" "$DIR/watch$i.log" 2>"$DIR/watch$i.err" &
    WATCHERS+=("$!")
    wait_for 10 grep -qs ' join ' "$DIR/watch$i.log"
done
all_watchers_in() {
    local i
    for ((i = 0; i < P; i++)); do
        (($(python3 "$WATCH" online "$DIR/watch$i.log") >= P)) || return 1
    done
}
wait_for 20 all_watchers_in
RSS_BEFORE=() FDS_BEFORE=()
for pid in "${PIDS[@]}"; do
    RSS_BEFORE+=("$(rss_kib "$pid")")
    FDS_BEFORE+=("$(ls "/proc/$pid/fd" | wc -l)")
done

# G generators, started together; generator I takes N/G clients (the first ones the rest).
URLS=$(printf 'ws://127.0.0.1:%s/ws,' "${PORTS[@]}")
URLS=${URLS%,}
PER_PROCESS=()
for ((i = 0; i < P; i++)); do PER_PROCESS+=(0); done
echo "cluster: $G generators connecting $N clients to $URLS" >&2
for ((g = 0; g < G; g++)); do
    n=$((N / G + (g < N % G ? 1 : 0)))
    for ((i = 0; i < P; i++)); do
        PER_PROCESS[i]=$((PER_PROCESS[i] + n / P + (i < n % P ? 1 : 0)))
    done
    "$LOAD" connect -n "$n" --hold "$HOLD" --generator "$g/$G" --url "$URLS" \
        --timeout "$TIMEOUT" --json >"$DIR/gen$g.json" 2>"$DIR/gen$g.err" &
    GENERATORS+=("$!")
done
START=$(now)

# Holding: every generator has drained the flood and timed its broadcast.
all_holding() {
    local g
    for ((g = 0; g < G; g++)); do
        grep -q 'holding' "$DIR/gen$g.err" 2>/dev/null || return 1
    done
}
if ! wait_for "$TIMEOUT" all_holding; then
    echo "cluster: the generators did not reach their hold; see $DIR/gen*.err" >&2
    tail -n 3 "$DIR"/gen*.err >&2 || true
    exit 1
fi
HOLDING=$(now)
# The longest loop turn so far, as the bound of its histogram bucket (`le`): what a beat may
# have waited behind, against --node-timeout.
longest_turn() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk '
        /^mio_chat_loop_turn_seconds_count / { count = $2 }
        /^mio_chat_loop_turn_seconds_bucket/ { split($1, a, "\""); le[++n] = a[2]; c[n] = $2 }
        END { for (i = 1; i <= n; i++) if (c[i] == count) { print "<= " le[i] " s"; exit } }'
}
RSS_AFTER=() HWM=() WRITTEN=() TURN=() CPU=()
REDIS_CPU=$(cpu_s "$REDIS_PID")
for ((i = 0; i < P; i++)); do
    CPU+=("$(cpu_s "${PIDS[i]}")")
    TURN+=("$(longest_turn "${PORTS[i]}")")
    RSS_AFTER+=("$(rss_kib "${PIDS[i]}")")
    HWM+=("$(hwm_kib "${PIDS[i]}")")
    WRITTEN+=("$(metric "${PORTS[i]}" mio_chat_bytes_written_total)")
done

# SIGKILL the last process; each other watcher must be shown every member of it leaving.
VICTIM=$((P - 1))
VICTIM_NODE=$(python3 "$WATCH" node "$DIR/watch$VICTIM.log")
LEAVE_FRAME=42 # {"type":1,"body":"User Disconnected..."} and a 2-byte header
DEAD_MEMBERS=$((PER_PROCESS[VICTIM] + 1))
# The verdict hands each survivor's every client one leave per dead member, in one turn, copied
# per client: at worst (no client reads meanwhile) this many bytes wait in the survivors.
WORST=0
for ((i = 0; i < VICTIM; i++)); do WORST=$((WORST + PER_PROCESS[i] * DEAD_MEMBERS * LEAVE_FRAME)); done
KILL_SKIPPED=''
if ((WORST > KILL_BUDGET_MIB * 1048576)); then
    KILL_SKIPPED="its leave flood may queue $((WORST / 1048576)) MiB (clients x dead members"
    KILL_SKIPPED+=" x $LEAVE_FRAME bytes), over CLUSTER_KILL_BUDGET_MIB=$KILL_BUDGET_MIB"
    echo "cluster: no SIGKILL: $KILL_SKIPPED" >&2
fi
KILLED=$(now)
[[ -z $KILL_SKIPPED ]] && kill -KILL "${PIDS[VICTIM]}"
[[ -z $KILL_SKIPPED ]] && echo "cluster: killed process $VICTIM (node $VICTIM_NODE)" \
    "$(awk -v a="$START" -v b="$KILLED" 'BEGIN { printf "%.1f", b - a }') s after the generators started" >&2
WRITTEN_AT=() SHOWN_LEAVING=0
for ((i = 0; i < VICTIM; i++)); do WRITTEN_AT+=(''); done
# Polls until every survivor has written its leave flood and every watcher was shown it.
leave_flood_done() {
    local i done=1 joined still bytes
    for ((i = 0; i < VICTIM; i++)); do
        [[ -n ${WRITTEN_AT[i]} ]] && continue
        bytes=$(metric "${PORTS[i]}" mio_chat_bytes_written_total || true)
        if [[ -n $bytes ]] && ((bytes - WRITTEN[i] >= PER_PROCESS[i] * DEAD_MEMBERS * LEAVE_FRAME)); then
            WRITTEN_AT[i]=$(now)
        else
            done=0
        fi
    done
    if ((!SHOWN_LEAVING && (done || ++POLLS % 5 == 0))); then # the logs: less often
        SHOWN_LEAVING=1
        for ((i = 0; i < VICTIM; i++)); do
            read -r joined still _ < <(python3 "$WATCH" leaves "$DIR/watch$i.log" "$VICTIM_NODE" "$KILLED")
            ((joined > 0 && still == 0)) || SHOWN_LEAVING=0
        done
    fi
    ((done && SHOWN_LEAVING))
}
POLLS=0 LEAVES_OK=1
HOLD_LEFT=$(awk -v h="$HOLD" -v a="$HOLDING" -v b="$(now)" 'BEGIN { printf "%d", h - (b - a) }')
DEADLINE=$((SECONDS + (HOLD_LEFT > 1 ? HOLD_LEFT : 1)))
until [[ -n $KILL_SKIPPED ]] || leave_flood_done; do
    if ((SECONDS >= DEADLINE)); then
        LEAVES_OK=0
        break
    fi
    sleep 0.2
done

HWM_KILL=()
for ((i = 0; i < VICTIM; i++)); do HWM_KILL+=("$(hwm_kib "${PIDS[i]}" 2>/dev/null || echo 0)"); done
echo "cluster: waiting for the generators' reports (their hold ends $HOLD s after the flood)" >&2
for pid in "${GENERATORS[@]}"; do wait "$pid" || true; done
GENERATORS=()

# 6. Once every generator's client has closed: each survivor's RSS, against its RSS with the
# watchers only (a drained burst is handed back: the trim runs at most once a second).
all_closed() {
    local i
    for ((i = 0; i < VICTIM; i++)); do
        (($(ls "/proc/${PIDS[i]}/fd" | wc -l) <= FDS_BEFORE[i])) || return 1
    done
}
RSS_CLOSED=() TRIMS=()
if wait_for 60 all_closed; then
    sleep 2.5
    for ((i = 0; i < VICTIM; i++)); do
        RSS_CLOSED+=("$(rss_kib "${PIDS[i]}")")
        TRIMS+=("$(metric "${PORTS[i]}" mio_chat_memory_trims_total)")
    done
fi

# --- the figures
echo "--- cluster: $N clients in one room, $P processes (--redis, --node-timeout $NODE_TIMEOUT," \
    "--redis-timeout $REDIS_TIMEOUT)," \
    "$G generators; files in $DIR"
python3 - "$N" "$G" "$DIR" <<'EOF'
import json, sys
n, g, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
reports = []
for i in range(g):
    try:
        reports.append(json.load(open(f"{d}/gen{i}.json")))
    except (OSError, ValueError) as e:
        print(f"generator {i}: no report ({e})")
if len(reports) == g:
    join = [r["join"] for r in reports]
    probe = [r.get("probe") or {} for r in reports]
    opened = sum(j["opened"] for j in join)
    heard = sum(j["join_notices"] for j in join)
    latest = lambda xs: max((x for x in xs if x is not None), default=None)
    fmt = lambda x, unit: "-" if x is None else f"{x:.2f} {unit}"
    print(f"connected  {opened} of {n}; failed {sum(j['failed'] for j in join)};"
          f" all open after {fmt(latest(j['connect_s'] for j in join), 's')}"
          f" (per generator: {', '.join(fmt(j['connect_s'], 's') for j in join)})")
    print(f"join flood {heard} notices of {n * (n + 1) // 2} (N(N+1)/2); the last one"
          f" {fmt(latest(j['drain_s'] for j in join), 's')} after the start"
          f" (per generator: {', '.join(fmt(j['drain_s'], 's') for j in join)})")
    print(f"broadcast  one message to all: the last client had it after"
          f" {fmt(latest(p.get('all_received_ms') for p in probe), 'ms')}"
          f" (per generator, to its {', '.join(str(p.get('receivers')) for p in probe)} clients:"
          f" {', '.join(fmt(p.get('all_received_ms'), 'ms') for p in probe)})")
    for i, r in enumerate(reports):
        for p in r.get("problems", []):
            print(f"generator {i}: {p}")
EOF
for ((i = 0; i < P; i++)); do
    members=$((N + P))
    ledger=$(cat "$DIR/ledger-peak$i" 2>/dev/null || echo 0)
    awk -v i="$i" -v b="${RSS_BEFORE[i]}" -v a="${RSS_AFTER[i]}" -v h="${HWM[i]}" -v l="$ledger" \
        -v own="${PER_PROCESS[i]}" -v m="$members" -v t="${TURN[i]}" -v c="${CPU[i]}" 'BEGIN {
        printf "memory     process %d: RSS %.1f MiB with the watchers, %.1f MiB after the flood" \
            " (peak %.1f MiB; clients'"'"' buffers at most %.1f MiB at once): %.2f KiB per own" \
            " client (%d), %.2f KiB per member of the room (%d); longest loop turn %s; CPU %s s" \
            " until then\n",
            i, b / 1024, a / 1024, h / 1024, l / 1048576, (a - b) / own, own, (a - b) / m, m, t, c }'
done
for ((i = 0; i < ${#RSS_CLOSED[@]}; i++)); do
    awk -v i="$i" -v b="${RSS_BEFORE[i]}" -v c="${RSS_CLOSED[i]}" -v t="${TRIMS[i]}" 'BEGIN {
        printf "closed     process %d: RSS %.1f MiB once every generator'"'"'s client had closed," \
            " %.1f times its RSS with the watchers only (%.1f MiB); %s heap trims\n",
            i, c / 1024, c / b, b / 1024, t }'
done
((${#RSS_CLOSED[@]})) || echo "closed     not measured: the survivors kept connections 60 s after the generators ended"
for ((i = 0; i < VICTIM; i++)); do
    if [[ -n $KILL_SKIPPED ]]; then
        echo "SIGKILL    not measured: $KILL_SKIPPED"
        break
    fi
    read -r joined still first last < <(python3 "$WATCH" leaves "$DIR/watch$i.log" "$VICTIM_NODE" "$KILLED")
    shown=$(grep -o 'is gone; [0-9]* of its members' "$DIR/server$i.log" | head -n 1 || true)
    echo "SIGKILL    process $i: of the dead process's $joined members shown, $still still shown;" \
        "first leave ${first} s, last leave ${last} s after the kill (${shown:-no verdict logged})"
    echo "           process $i: all $DEAD_MEMBERS leaves written to its ${PER_PROCESS[i]} clients" \
        "$(awk -v a="$KILLED" -v b="${WRITTEN_AT[i]}" 'BEGIN { if (b == "") print "-"; else printf "%.3f", b - a }') s after the kill;" \
        "peak RSS then $(awk -v k="${HWM_KILL[i]}" 'BEGIN { printf "%.1f", k / 1024 }') MiB" \
        "(at worst $((PER_PROCESS[i] * DEAD_MEMBERS * LEAVE_FRAME / 1048576)) MiB queued)"
done
dropped=0
for ((i = 0; i < VICTIM; i++)); do # by reason: every labelled line summed
    n=$(curl -sf "http://127.0.0.1:${PORTS[i]}/metrics" |
        awk '/^mio_chat_clients_dropped_total/ { s += $2 } END { printf "%d", s }' || echo 0)
    dropped=$((dropped + n))
done
verdicts=$({ grep -c 'declaring it gone' "$DIR"/server*.log || true; } | awk -F: '{ s += $2 } END { print s }')
outages=$({ grep -c 'warn: redis' "$DIR"/server*.log || true; } | awk -F: '{ s += $2 } END { print s }')
echo "log        $verdicts verdicts published (1 expected: the killed process), $outages Redis outages," \
    "$dropped clients dropped by the surviving processes (slow consumers)"
echo "redis      CPU $REDIS_CPU s until the hold; $(redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' | grep -E '^total_commands_processed' || true)"
echo "machine    lowest MemAvailable $(cat "$DIR/lowest-available-mib" 2>/dev/null || echo '?') MiB during the run"
if [[ -f $DIR/memory-stop ]]; then
    echo "cluster: STOPPED by the memory guard ($(cat "$DIR/memory-stop")): servers and Redis killed"
    exit 1
fi
((LEAVES_OK)) || { echo "cluster: FAILED (not every dead member was shown leaving within the hold)"; exit 1; }
echo "cluster: OK"
