#!/usr/bin/env bash
# Compare Cascade with NATS JetStream (file storage) and Redis Streams (AOF, appendfsync always),
# all measured in this run on this machine, and print a Markdown report on stdout.
#
#   bench/compare.sh            # full run, a few minutes
#   bench/compare.sh --quick    # ~1 minute smoke run (a tenth of the messages, 3 s fixed rate)
#
# Installs nats-server and redis-server (Debian packages) if missing, builds `cascade` and
# `peerbench` in release mode, then for each system starts a fresh server on 127.0.0.1
# (non-default ports, data in a fresh temporary directory), runs the workloads, stops it.
# Every server is killed on exit; all traffic stays on loopback; every wait is bounded.
# Progress goes to stderr; the report (and the raw JSON of every run) goes to stdout.
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use --quick or nothing)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=127.0.0.1
REDIS_PORT=${REDIS_PORT:-16379}
NATS_PORT=${NATS_PORT:-14222}
CASCADE_GRPC_PORT=${CASCADE_GRPC_PORT:-15051}
CASCADE_HTTP_PORT=${CASCADE_HTTP_PORT:-15082}

# Workload sizes. The same message counts for every system.
if ((QUICK)); then
    N_1K=50000; N_100B=100000; N_4P=100000; RATE_SECS=3
else
    N_1K=500000; N_100B=1000000; N_4P=1000000; RATE_SECS=10
fi
RATE=10000
N_RATE=$((RATE * RATE_SECS))
# Fixed rate is an open-loop test: the in-flight window (1000 requests = 100 ms of traffic at
# 10,000/s) must not be what limits the sender, or latency measures the window.
RATE_IN_FLIGHT=1000
RUN_TIMEOUT=600 # seconds, per benchmark command

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}" >&2
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed to format the report"

log "building cascade (release)"
(cd "$ROOT" && cargo build --release --quiet -p cascade-server) >&2
log "building peerbench (release)"
(cd "$ROOT" && cargo build --release --quiet --manifest-path bench/peers/Cargo.toml) >&2
CASCADE="$ROOT/target/release/cascade"
PEERBENCH="$ROOT/bench/peers/target/release/peerbench"

# ---------------------------------------------------------------- servers
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cascade-compare.XXXXXX")
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
SERVER_PID=""

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do # up to 10 s for a graceful stop
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    local rc=$?
    stop_server
    if ((rc != 0)); then
        log "failed (exit $rc); server logs:"
        tail -n 20 "$WORK"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
wait_port() { # port, what
    for _ in $(seq 1 100); do # up to 20 s
        port_open "$1" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "$2 exited while starting"
        sleep 0.2
    done
    die "$2 did not listen on $HOST:$1 within 20 s"
}
check_free() { port_open "$1" && die "port $1 is already in use (set ${2}=another)" || true; }

start_redis() {
    check_free "$REDIS_PORT" REDIS_PORT
    mkdir -p "$WORK/redis"
    redis-server --bind "$HOST" --port "$REDIS_PORT" --dir "$WORK/redis" \
        --appendonly yes --appendfsync always --save "" --daemonize no \
        --protected-mode yes --logfile "$WORK/redis.log" >>"$WORK/redis.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$REDIS_PORT" redis-server
}
start_nats() {
    check_free "$NATS_PORT" NATS_PORT
    mkdir -p "$WORK/nats"
    nats-server -a "$HOST" -p "$NATS_PORT" -js -sd "$WORK/nats" -l "$WORK/nats.log" >>"$WORK/nats.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$NATS_PORT" nats-server
}
start_cascade() {
    check_free "$CASCADE_GRPC_PORT" CASCADE_GRPC_PORT
    check_free "$CASCADE_HTTP_PORT" CASCADE_HTTP_PORT
    "$CASCADE" server --data-dir "$WORK/cascade" \
        --grpc-addr "$HOST:$CASCADE_GRPC_PORT" --http-addr "$HOST:$CASCADE_HTTP_PORT" \
        >"$WORK/cascade.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$CASCADE_GRPC_PORT" "cascade server"
    for _ in $(seq 1 50); do # ready: answers an admin call (up to 10 s)
        "$CASCADE" topic list --brokers "$HOST:$CASCADE_GRPC_PORT" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "cascade server did not answer within 10 s"
}

# ---------------------------------------------------------------- runs
# CPU accounting, to show who used the cores during a run: the server, the load generator,
# or something else on the machine (other processes, kernel threads, steal).
TCK=$(getconf CLK_TCK)
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; } # jiffies, all CPUs
proc_cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }  # jiffies, one process

# Other agents of this machine (builds, tests) would skew a run, so before each run wait (within
# a budget for the whole script) until nothing else uses the cores, and repeat a run in which
# something else used more than OTHER_MAX cores, keeping the least disturbed attempt.
QUIET_BUDGET=${QUIET_BUDGET:-120} # seconds
OTHER_MAX=0.25                    # cores
ATTEMPTS=3
busy_cores_1s() {
    local a b
    a=$(cpu_busy); sleep 1; b=$(cpu_busy)
    awk -v a="$a" -v b="$b" -v t="$TCK" 'BEGIN {printf "%.2f", (b - a) / t}'
}
BUSY_BEFORE=""                    # cores in use in the last second before a run ("" unknown)
wait_quiet() {
    local c
    BUSY_BEFORE=""
    while ((QUIET_BUDGET > 0)); do
        c=$(busy_cores_1s)
        QUIET_BUDGET=$((QUIET_BUDGET - 1))
        BUSY_BEFORE=$c
        awk -v c="$c" -v m="$OTHER_MAX" 'BEGIN {exit !(c < m)}' && return 0
        log "  machine busy ($c cores in use while idle here), waiting"
    done
}

# measure SYSTEM WORKLOAD NOTE ATTEMPT command...: one run; prints its JSON with labels and the
# CPU used meanwhile (in cores: CPU seconds per second of wall time).
measure() {
    local system=$1 workload=$2 note=$3 attempt=$4
    shift 4
    local busy0 srv0 t0 busy1 srv1 t1 out
    busy0=$(cpu_busy); srv0=$(proc_cpu "$SERVER_PID"); t0=$(date +%s.%N)
    local TIMEFORMAT='%3U %3S'
    { time timeout "$RUN_TIMEOUT" "$@" >"$WORK/run.out" 2>"$WORK/run.err"; } 2>"$WORK/run.time" \
        || { cat "$WORK/run.err" >&2; die "$system / $workload failed: $*"; }
    busy1=$(cpu_busy); srv1=$(proc_cpu "$SERVER_PID"); t1=$(date +%s.%N)
    out=$(grep '^{' "$WORK/run.out" | tail -n 1 || true)
    [[ -n "$out" ]] || die "$system / $workload printed no JSON"
    python3 - "$system" "$workload" "$note" "$attempt" "$out" "$busy0" "$busy1" "$srv0" "$srv1" \
        "$t0" "$t1" "$(cat "$WORK/run.time")" "$TCK" "$BUSY_BEFORE" <<'PY'
import json, sys
system, workload, note, attempt, out, b0, b1, s0, s1, t0, t1, client, tck, before = sys.argv[1:]
wall = max(float(t1) - float(t0), 1e-9)
tck = float(tck)
total = (float(b1) - float(b0)) / tck
server = (float(s1) - float(s0)) / tck
client = sum(float(x) for x in client.split())
cpu = {"server": server / wall, "client": client / wall,
       "other": max(total - server - client, 0.0) / wall}
print(json.dumps({"system": system, "workload": workload, "note": note, "attempt": int(attempt),
                  "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
                  "busy_before_cores": float(before) if before else None,
                  "result": json.loads(out)}))
PY
}

# record SYSTEM WORKLOAD NOTE -- command...: up to ATTEMPTS runs, keeps the least disturbed.
record() {
    local system=$1 workload=$2 note=$3
    shift 4
    log "$system: $workload"
    local attempt line other best="" best_other=""
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        sync # no run pays for the writeback of an earlier run's dirty pages
        wait_quiet
        line=$(measure "$system" "$workload" "$note" "$attempt" "$@")
        other=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["cpu_cores"]["other"])' "$line")
        log "  $line"
        if [[ -z "$best" ]] || awk -v a="$other" -v b="$best_other" 'BEGIN {exit !(a < b)}'; then
            best=$line; best_other=$other
        fi
        awk -v c="$other" -v m="$OTHER_MAX" 'BEGIN {exit !(c <= m)}' && break
        ((attempt < ATTEMPTS)) && log "  disturbed: $other cores used by others; again"
    done
    printf '%s\n' "$best" >>"$RESULTS"
}

W_P1_1K="produce, 1 producer, 1 KiB, batch 100"
W_P1_100="produce, 1 producer, 100 B, batch 100"
W_P4_1K="produce, 4 producers, 1 KiB, batch 100"
W_CONS="consume the 1-producer 1 KiB data"
W_RATE="fixed rate ${RATE}/s, batch 1, 1 KiB, ${RATE_SECS} s"

run_cascade() {
    local b=(bench --brokers "$HOST:$CASCADE_GRPC_PORT" --output json)
    local note_always="fsync before ack (flush=always, group commit)"
    local note_never="no fsync (flush=never): acked once written to the page cache"
    local flush note suffix
    for flush in always never; do
        if [[ $flush == always ]]; then note=$note_always; suffix=""; else note=$note_never; suffix=" [flush=never]"; fi
        record cascade "$W_P1_1K$suffix" "$note" -- "$CASCADE" "${b[@]}" produce --quiet --fresh \
            --flush "$flush" --topic "p1-1k-$flush" --messages "$N_1K" --size 1024 --batch 100
        record cascade "$W_P1_100$suffix" "$note" -- "$CASCADE" "${b[@]}" produce --quiet --fresh \
            --flush "$flush" --topic "p1-100b-$flush" --messages "$N_100B" --size 100 --batch 100
        record cascade "$W_P4_1K$suffix" "$note" -- "$CASCADE" "${b[@]}" produce --quiet --fresh \
            --flush "$flush" --topic "p4-1k-$flush" --messages "$N_4P" --size 1024 --batch 100 \
            --producers 4 --partitions 4
        if [[ $flush == always ]]; then
            record cascade "$W_CONS" "reads what was acknowledged" -- "$CASCADE" "${b[@]}" consume \
                --quiet --topic "p1-1k-$flush" --messages "$N_1K" --size 1024 --batch 100
        fi
        record cascade "$W_RATE$suffix" "$note" -- "$CASCADE" "${b[@]}" produce --quiet --fresh \
            --flush "$flush" --topic "rate-$flush" --messages "$N_RATE" --size 1024 --batch 1 \
            --rate "$RATE" --in-flight "$RATE_IN_FLIGHT"
    done
}

run_peer() { # system note
    local sys=$1 note=$2 addr
    case "$sys" in
        redis) addr="$HOST:$REDIS_PORT" ;;
        nats) addr="$HOST:$NATS_PORT" ;;
    esac
    local p=("$PEERBENCH" "$sys" --addr "$addr")
    local t=(--timeout-secs "$RUN_TIMEOUT")
    record "$sys" "$W_P1_1K" "$note" -- "${p[@]}" produce "${t[@]}" --fresh --name p1-1k \
        --messages "$N_1K" --size 1024 --batch 100
    record "$sys" "$W_P1_100" "$note" -- "${p[@]}" produce "${t[@]}" --fresh --name p1-100b \
        --messages "$N_100B" --size 100 --batch 100
    record "$sys" "$W_P4_1K" "$note" -- "${p[@]}" produce "${t[@]}" --fresh --name p4-1k \
        --messages "$N_4P" --size 1024 --batch 100 --producers 4
    record "$sys" "$W_CONS" "reads what was acknowledged" -- "${p[@]}" consume "${t[@]}" --name p1-1k \
        --messages "$N_1K" --size 1024 --batch 100
    record "$sys" "$W_RATE" "$note" -- "${p[@]}" fixed-rate "${t[@]}" --fresh --name rate \
        --messages "$N_RATE" --size 1024 --batch 1 --rate "$RATE" --in-flight "$RATE_IN_FLIGHT"
}

NOTE_REDIS="appendfsync always: AOF written and fsynced once per event-loop pass, before replies"
NOTE_NATS="acked once written to the page cache, no fsync; 2.9.10 fsyncs each stream every 2 min in the background"

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$SECONDS

sync
log "cascade: starting server"
start_cascade
run_cascade
stop_server
rm -rf "$WORK/cascade"
sync # the next system must not pay for this one's dirty pages

log "redis: starting server"
start_redis
run_peer redis "$NOTE_REDIS"
stop_server
rm -rf "$WORK/redis"
sync

log "nats: starting server"
start_nats
run_peer nats "$NOTE_NATS"
stop_server
rm -rf "$WORK/nats"
sync

ELAPSED=$((SECONDS - T0))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
[[ -n "$cpu" ]] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain -- crates 2>/dev/null | wc -l)

cat <<EOF
# Cascade vs. NATS JetStream vs. Redis Streams

- started: $STARTED, took ${ELAPSED} s$( ((QUICK)) && echo " (--quick: smoke run, small counts)")
- nproc: $(nproc)
- CPU: ${cpu:-unknown}
- kernel: $(uname -r)
- memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')
- data directories: $(df -h "$WORK" | awk 'NR==2 {print $1 " (" $2 ")"}'), the same file system for every system
- cascade: git $rev ($dirty uncommitted paths under crates/ at run time), release build
- $(redis-server --version | cut -d' ' -f1-3)
- nats-server $(nats-server --version | sed 's/^nats-server: //')
- load average (1/5/15 min) before: $LOAD_START, after: $LOAD_END
- client and server share the same $(nproc) cores; every server listens on $HOST only; the
  systems run one after another, each on a fresh server and data directory; \`sync\` before every
  run, and a run is repeated (up to ${ATTEMPTS} times) when other work on the machine disturbed it

EOF

python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
order = {"cascade": 0, "nats": 1, "redis": 2}
workloads = []
for r in rows:
    if r["workload"].split(" [")[0] not in workloads:
        workloads.append(r["workload"].split(" [")[0])
def key(r):
    return (workloads.index(r["workload"].split(" [")[0]), order.get(r["system"], 9), r["workload"])
print("| system | workload | msgs/s | MB/s | p50 ms | p99 ms | p999 ms | CPU server / client / other | durability |")
print("|---|---|---:|---:|---:|---:|---:|---|---|")
for r in sorted(rows, key=key):
    x = r["result"]; l = x["latency_ms"]; c = r["cpu_cores"]
    print(f"| {r['system']} | {r['workload']} | {x['msgs_per_sec']:,.0f} | {x['mb_per_sec']:,.1f} "
          f"| {l['p50']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} "
          f"| {c['server']:.2f} / {c['client']:.2f} / {c['other']:.2f} | {r['note']} |")
noisy = [r for r in rows if r["cpu_cores"]["other"] > 0.25]
retried = [r for r in rows if r.get("attempt", 1) > 1]
if retried:
    print()
    print(f"{len(retried)} of {len(rows)} rows come from a repeated run (an earlier attempt had "
          "more than 0.25 cores of *other* CPU; the attempt with the least is kept).")
def quiet_before(r):
    b = r.get("busy_before_cores")
    return b is not None and b < 0.25
own = [r for r in noisy if quiet_before(r)]
busy = [r for r in noisy if not quiet_before(r)]
if own:
    print()
    print("*other* stayed above 0.25 cores in every attempt although the machine was idle in the "
          "second before the run: "
          + ", ".join(f"{r['system']} / {r['workload']} ({r['cpu_cores']['other']:.2f})" for r in own)
          + ". Either the run itself caused that much kernel work (journal commits and writeback "
          "for its fsyncs) or other work started during the run.")
if busy:
    print()
    print(f"**Warning:** in {len(busy)} of {len(rows)} rows something other than the server and "
          "the load generator used more than 0.25 cores even in the least disturbed of 3 attempts, "
          "and the machine was busy before the run: "
          + ", ".join(f"{r['system']} / {r['workload']}" for r in busy)
          + ". Those were measured on a busy machine.")
EOF

cat <<EOF

## What each row measures

- **produce**: \`--messages\` events (${N_1K} of 1 KiB, ${N_100B} of 100 B, ${N_4P} of 1 KiB over 4
  producers) sent as requests of 100 events, 8 requests in flight per producer; msgs/s over the
  whole run, latency per request from send to acknowledgement. Cascade: one partition per
  producer, one produce RPC per batch (all producers share one HTTP/2 connection). Redis: one
  stream key and one connection per producer, a request is a pipeline of 100 XADDs. NATS: one
  stream, one subject and one connection per producer, a request is 100 async JetStream publishes
  whose acks are all awaited.
- **consume**: reads back the ${N_1K} events of the 1-producer 1 KiB run from the start; latency
  per read request. Cascade: fetches of up to 1 MiB (\`--fetch-bytes\`, about 1000 events of 1 KiB;
  MB/s counts the stored batch bytes); Redis: XRANGE pages of 1000; NATS: a pull consumer (AckPolicy
  none) fetching batches of up to 1000. Everything read was written seconds earlier, so it comes
  from memory (page cache, or Redis's own memory) on every system.
- **fixed rate**: ${RATE} events/s, one event per request, for ${RATE_SECS} s, up to
  ${RATE_IN_FLIGHT} requests in flight; latency from each request's *scheduled* send time to its
  acknowledgement (no coordinated omission), so a server that falls behind shows its queueing.
- **CPU server / client / other**: cores in use on average during the run (CPU seconds per
  second): the server process, the load generator, and everything else (other processes, kernel
  threads such as the file system's journal, hypervisor steal), out of $(nproc).
- **[flush=never]**: Cascade with the topic set to \`flush=never\`: the cost of fsync is the
  difference from the row above it.

## Durability notes

- Cascade, \`flush=always\` (the default): an acknowledged produce has been fsynced; concurrent
  produces share one fsync (group commit). \`flush=never\`: acknowledged once written to the OS
  page cache (lost on power failure or kernel crash, not on a process crash).
- Redis 7.0, \`appendonly yes\`, \`appendfsync always\`, \`save ""\`: the AOF is written and
  fsynced in the event loop before replies to the commands of that pass are sent; everything
  read from all clients in one pass shares one fsync.
- NATS 2.9.10, JetStream file storage, one replica: a publish is acknowledged once the message
  is written to the stream's block file, i.e. in the OS page cache, without fsync. This version
  has no setting for it: its config parser rejects \`sync_interval\` as an unknown field (the
  \`sync_interval\` / \`sync_interval: always\` option arrived in 2.10). Its file store fsyncs a
  stream's files from a background timer with a hardcoded 2-minute period (\`defaultSyncInterval\`;
  checked with strace on this build: no fsync at all while 100 MB were published, then the first
  fsync of each stream's files 120 s after the stream was created). So up to about 2 minutes of
  acknowledged messages can be lost on power failure or kernel crash; NATS's answer to that is
  replication (R3), which this single-node comparison does not exercise.

## Fairness caveats

- One machine, $(nproc) cores, shared by the load generator and the server: a client that
  spends less CPU per message leaves more for its server. \`cascade bench\` encodes one batch
  and resends it; peerbench builds its payload once too, but redis-rs serialises the pipeline
  again for every request and async-nats frames every publish separately.
- Connections: \`cascade bench\` multiplexes all producers over one HTTP/2 connection; peerbench
  gives each producer its own connection (Redis, NATS). Redis reads at most 16 KiB from one
  connection per event-loop pass (PROTO_IOBUF_LEN), so with one connection only about 15-18
  XADDs of 1 KiB share each fdatasync (measured with strace: 2,809 fdatasyncs, about 60 us
  each, for 50,000 XADDs); with more connections (the 4-producer row) more commands share one.
  So its 1-producer 1 KiB row is bound more by that per-pass read size than by the disk.
- Request shape: a Cascade request carries 100 events in one RecordBatch; a Redis request is 100
  separate commands in one pipeline; a NATS request is 100 separate publishes, each with its
  own ack. That is how each system batches, but it is not the same work on the wire.
- Durability differs (see above): NATS does no fsync on the acknowledgement path at all, so
  its rows compare with Cascade's \`flush=never\` rows, not with the \`flush=always\` ones.
- Consume: a Cascade fetch of 1 MiB returns whole stored batches, about 1010 events of 1 KiB,
  against the peers' pages of exactly 1000; per-request latencies are for the same amount of
  data within 1%.
- Short runs on a shared VM are noisy; the load averages above show what else was running.

## Raw results (one JSON object per run)

\`\`\`
EOF
cat "$RESULTS"
echo '```'
