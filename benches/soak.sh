#!/usr/bin/env bash
# benches/soak.sh: does mio-chat stay flat under a long mixed load?
#
# Usage:
#   benches/soak.sh [DURATION_SECONDS]        # default 600 (10 minutes)
#   SOAK_SECONDS=60 benches/soak.sh           # a short run
#
# What it does:
#   1. builds the release binaries (cargo build --release);
#   2. starts the release server on a free port (target/release/mio-chat --addr 127.0.0.1:0,
#      with the per-client budget off: each sender says 50 messages a second, past its default),
#      reads the port from its first stderr line (`listening on HOST:PORT`) and its PID from a
#      pidfile written by the shell that execs it;
#   3. samples the server's RSS (VmRSS) and open fd count (/proc/PID/fd) every second into a
#      CSV, from a few idle seconds before the load until the fds are back after it;
#   4. runs two loads side by side against it:
#        broadcast: mio-chat-load broadcast -n 200 --senders 4 --rate 50 --duration DURATION
#                   --generator 0/2
#        churn:     mio-chat-load churn -n 0 --cycles RATE*T --rate RATE --generator 1/2
#      The churn starts once the broadcast is sending (its join check must not see the churn's
#      joins) and is sized to end before the broadcast does (its watcher must not hear the
#      broadcast's clients leave): T = DURATION - max(15 s, 10 % of DURATION). On a loaded
#      machine a stall can still make it overrun (open loop: late cycles pile up); the summary
#      then says so;
#   5. judges the samples taken while both loads ran, after a warm-up (the first 10 % of them):
#        RSS  the median of the last 10 % (SOAK_TAIL=max: their max) within SOAK_RSS_MARGIN_PCT %
#             + SOAK_RSS_MARGIN_KIB of the median of the first minute after warm-up (or of its
#             first quarter, if shorter);
#        fds  the same, within SOAK_FD_MARGIN (the churn's clients come and go), and after both
#             loads ended, back to the idle count within 10 s;
#      and both load generators must have exited 0 (nothing lost, duplicated, leaked).
#      The median by default because on a shared machine a stall of a few seconds (the sampler
#      then shows gaps) lets output queue up and churn clients pile up for a sample or two: a
#      spike, not a leak; a leak lifts the whole tail. The max is printed either way.
#
# Environment (all optional):
#   SOAK_SECONDS         duration of the broadcast, s (default 600, at least 30; the first
#                        argument wins)
#   SOAK_CHURN_RATE      churn cycles per second (default 100)
#   SOAK_RSS_MARGIN_PCT  allowed RSS growth, percent (default 10)
#   SOAK_RSS_MARGIN_KIB  allowed RSS growth on top, KiB (default 1024)
#   SOAK_FD_MARGIN       allowed fd spread during the load (default 64)
#   SOAK_TAIL            median or max: what of the last 10 % is judged (default median)
#   SOAK_DIR             where the files go (default target/soak/YYYYmmdd-HHMMSS)
#
# What it prints: where the files are, each generator's report (also in broadcast.txt and
# churn.txt), then a summary: samples, RSS idle / reference median / last median (and max) /
# after, fds the same, one verdict line per check, and `soak: OK` or `soak: FAILED (...)`. Exit status 0 only if
# every check passed. samples.csv has one line a second:
#   elapsed_s,phase,rss_kib,fds,cpu_s
# with phase one of idle, broadcast (alone, before the churn), both, tail (broadcast alone,
# after the churn), after (loads done).
#
# Bounded: every process it starts (server, generators, sampler) is killed on exit, whatever the
# exit; the generators get --timeout DURATION+120 s.

set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${1:-${SOAK_SECONDS:-600}}
CHURN_RATE=${SOAK_CHURN_RATE:-100}
RSS_MARGIN_PCT=${SOAK_RSS_MARGIN_PCT:-10}
RSS_MARGIN_KIB=${SOAK_RSS_MARGIN_KIB:-1024}
FD_MARGIN=${SOAK_FD_MARGIN:-64}
TAIL=${SOAK_TAIL:-median}
DIR=${SOAK_DIR:-target/soak/$(date +%Y%m%d-%H%M%S)}

if [[ $TAIL != median && $TAIL != max ]]; then
    echo "soak: SOAK_TAIL must be median or max (got '$TAIL')" >&2
    exit 2
fi
# The shortest run that can be judged: the churn runs DURATION less max(15 s, 10 %) less the
# broadcast's join flood (a second or two), and the judgement needs 10 samples of it (one a
# second), so 20 s gave about 4 and failed every time; 30 s gives about 13.
MIN_DURATION=30
if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < MIN_DURATION)); then
    echo "soak: DURATION must be a whole number of seconds, at least $MIN_DURATION (the churn" \
        "must run 10 s or more beside the broadcast to be judged; got '$DURATION')" >&2
    exit 2
fi

SERVER_PID='' SAMPLER_PID='' BROADCAST_PID='' CHURN_PID=''

cleanup() {
    local pid
    for pid in "$CHURN_PID" "$BROADCAST_PID" "$SAMPLER_PID"; do
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "soak: building the release binaries" >&2
cargo build --release --quiet --bin mio-chat --bin mio-chat-load

mkdir -p "$DIR"
SERVER=target/release/mio-chat
LOAD=target/release/mio-chat-load

# The shell writes its own PID, then becomes the server: the PID is the server's.
RUST_LOG=info sh -c 'echo $$ > "$1"; exec "$2" --addr 127.0.0.1:0 --client-rate 0 --client-bytes-rate 0' sh \
    "$DIR/server.pid" "$SERVER" 2>"$DIR/server.log" &
PORT=''
for _ in $(seq 100); do
    if [[ -s $DIR/server.log ]]; then
        line=$(head -n 1 "$DIR/server.log")
        if [[ $line =~ ^listening\ on\ .*:([0-9]+)$ ]]; then
            PORT=${BASH_REMATCH[1]}
            break
        fi
        echo "soak: the server said '$line' first" >&2
        exit 1
    fi
    sleep 0.1
done
SERVER_PID=$(cat "$DIR/server.pid" 2>/dev/null || true)
if [[ -z $PORT || -z $SERVER_PID ]] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "soak: the server did not start; see $DIR/server.log" >&2
    exit 1
fi
URL=ws://127.0.0.1:$PORT/ws
echo "soak: server PID $SERVER_PID on $URL; files in $DIR" >&2

TICKS=$(getconf CLK_TCK)
echo idle >"$DIR/phase"
sample_loop() {
    local start=${EPOCHREALTIME/./} now rss cpu fds stat phase
    echo "elapsed_s,phase,rss_kib,fds,cpu_s"
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        now=${EPOCHREALTIME/./}
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null) || break
        fds=("/proc/$SERVER_PID/fd/"*)
        # utime and stime: fields 14 and 15, counted after the ")" that ends the name.
        stat=$(<"/proc/$SERVER_PID/stat") || break
        cpu=$(awk -v t="$TICKS" '{ print ($12 + $13) / t }' <<<"${stat##*)}")
        phase=$(<"$DIR/phase")
        printf '%d.%03d,%s,%s,%d,%s\n' $(((now - start) / 1000000)) \
            $(((now - start) / 1000 % 1000)) "$phase" "$rss" "${#fds[@]}" "$cpu"
        sleep 1
    done
}
sample_loop >"$DIR/samples.csv" &
SAMPLER_PID=$!

fd_count() {
    local fds=("/proc/$SERVER_PID/fd/"*)
    echo "${#fds[@]}"
}

sleep 3
IDLE_FDS=$(fd_count)
TIMEOUT=$((DURATION + 120))
START=$SECONDS

echo broadcast >"$DIR/phase"
# Two generators in one room: each says so (--generator), so that the broadcast does not take
# the churn's notices, nor the churn the broadcast's messages, for faults.
"$LOAD" broadcast -n 200 --senders 4 --rate 50 --duration "$DURATION" --generator 0/2 \
    --timeout "$TIMEOUT" --url "$URL" --server-pid "$SERVER_PID" \
    >"$DIR/broadcast.txt" 2>"$DIR/broadcast.err" &
BROADCAST_PID=$!
# Its progress line says "sending:" once the join flood has drained and sending runs.
for _ in $(seq 300); do
    grep -q 'sending:' "$DIR/broadcast.err" 2>/dev/null && break
    kill -0 "$BROADCAST_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q 'sending:' "$DIR/broadcast.err"; then
    echo "soak: the broadcast load did not start sending; see $DIR/broadcast.*" >&2
    exit 1
fi

SEND_START=$SECONDS
MARGIN=$((DURATION / 10 > 15 ? DURATION / 10 : 15))
CHURN_SECONDS=$((DURATION - (SECONDS - START) - MARGIN))
((CHURN_SECONDS >= 1)) || CHURN_SECONDS=1
CYCLES=$((CHURN_SECONDS * CHURN_RATE))
echo "soak: broadcast sending; churn of $CYCLES cycles at $CHURN_RATE/s (${CHURN_SECONDS} s)" >&2
echo both >"$DIR/phase"
"$LOAD" churn -n 0 --cycles "$CYCLES" --rate "$CHURN_RATE" --generator 1/2 \
    --timeout "$TIMEOUT" --url "$URL" --server-pid "$SERVER_PID" \
    >"$DIR/churn.txt" 2>"$DIR/churn.err" &
CHURN_PID=$!

CHURN_RC=0
wait "$CHURN_PID" || CHURN_RC=$?
CHURN_PID=''
CHURN_END=$SECONDS
echo tail >"$DIR/phase"
BROADCAST_RC=0
wait "$BROADCAST_PID" || BROADCAST_RC=$?
BROADCAST_PID=''
echo after >"$DIR/phase"

# The server's fds, back to the idle count?
AFTER_FDS=$(fd_count)
for _ in $(seq 100); do
    ((AFTER_FDS <= IDLE_FDS)) && break
    sleep 0.1
    AFTER_FDS=$(fd_count)
done
sleep 2 # two more samples of the quiet server
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=''

echo "--- broadcast (exit $BROADCAST_RC)"
cat "$DIR/broadcast.txt"
echo "--- churn (exit $CHURN_RC)"
cat "$DIR/churn.txt"

# Column $2 of the samples in phase $1, one a line.
column_of() { awk -F, -v p="$1" -v c="$2" 'NR > 1 && $2 == p { print $c }' "$DIR/samples.csv"; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "" }'; }
max() { sort -n | tail -n 1; }

mapfile -t RSS < <(column_of both 3)
mapfile -t FDS < <(column_of both 4)
N=${#RSS[@]}
WARM=$((N / 10))
REF=$(((N - WARM) / 4 < 60 ? (N - WARM) / 4 : 60))
LAST=$((N / 10 > 1 ? N / 10 : 1))
FAILED=()
echo "--- soak summary: $N samples with both loads running; warm-up $WARM, reference $REF, last $LAST"
if ((N < 10 || REF < 1)); then
    FAILED+=("too few samples to judge ($N)")
else
    window() { printf '%s\n' "${@}"; }
    RSS_REF=$(window "${RSS[@]:WARM:REF}" | median)
    RSS_LAST=$(window "${RSS[@]: -LAST}" | "$TAIL")
    RSS_LAST_MAX=$(window "${RSS[@]: -LAST}" | max)
    FDS_REF=$(window "${FDS[@]:WARM:REF}" | median)
    FDS_LAST=$(window "${FDS[@]: -LAST}" | "$TAIL")
    FDS_LAST_MAX=$(window "${FDS[@]: -LAST}" | max)
    RSS_LIMIT=$((RSS_REF + RSS_REF * RSS_MARGIN_PCT / 100 + RSS_MARGIN_KIB))
    FDS_LIMIT=$((FDS_REF + FD_MARGIN))
    RSS_IDLE=$(column_of idle 3 | median)
    RSS_AFTER=$(column_of after 3 | max)
    echo "RSS KiB   idle $RSS_IDLE, reference median $RSS_REF, last $TAIL $RSS_LAST (limit $RSS_LIMIT; max $RSS_LAST_MAX), after the load $RSS_AFTER"
    echo "fds       idle $IDLE_FDS, reference median $FDS_REF, last $TAIL $FDS_LAST (limit $FDS_LIMIT; max $FDS_LAST_MAX), after the load $AFTER_FDS"
    if ((RSS_LAST > RSS_LIMIT)); then
        FAILED+=("RSS grew: $RSS_LAST KiB > $RSS_LIMIT KiB")
    else
        echo "check     RSS flat: OK"
    fi
    if ((FDS_LAST > FDS_LIMIT)); then
        FAILED+=("fds grew during the load: $FDS_LAST > $FDS_LIMIT")
    else
        echo "check     fds flat during the load: OK"
    fi
fi
if ((AFTER_FDS > IDLE_FDS)); then
    FAILED+=("fds not back after the load: $AFTER_FDS > $IDLE_FDS")
else
    echo "check     fds back to idle after the load: OK"
fi
((BROADCAST_RC == 0)) || FAILED+=("the broadcast load failed (exit $BROADCAST_RC)")
if ((CHURN_RC != 0)); then
    FAILED+=("the churn load failed (exit $CHURN_RC)")
    if ((CHURN_END - SEND_START >= DURATION)); then
        echo "note      the churn ended $((CHURN_END - SEND_START)) s after the broadcast started" \
            "sending, past its ${DURATION} s: its watcher may have heard the broadcast's" \
            "clients leave (a stalled machine?); lower SOAK_CHURN_RATE or run again"
    fi
fi
echo "elapsed   $((SECONDS - START)) s of load; samples in $DIR/samples.csv"
if ((${#FAILED[@]})); then
    printf 'soak: FAILED (%s)\n' "$(IFS=';'; echo "${FAILED[*]}")"
    exit 1
fi
echo "soak: OK"
