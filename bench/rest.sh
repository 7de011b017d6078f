#!/usr/bin/env bash
# REST vs gRPC on one node, in one run: produce and consume 1 KiB events in requests of 100,
# through the node's embedded REST API, through a separate `cascade gateway`, and over gRPC
# (`cascade bench`). Loopback only; every run is bounded in time. Needs `wrk` (Debian package,
# installed if missing) and builds `cascade` in release mode.
#
#   bench/rest.sh [SECONDS]        # seconds per REST run (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet -p cascade-server
BIN=$PWD/target/release/cascade
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" server --data-dir "$work/data" --grpc-addr 127.0.0.1:17051 --http-addr 127.0.0.1:17082 \
  >"$work/server.out" 2>"$work/server.err" & pids+=($!)
"$BIN" gateway --brokers 127.0.0.1:17051 --http-addr 127.0.0.1:17083 >"$work/gw.out" 2>"$work/gw.err" & pids+=($!)
for _ in $(seq 100); do
  curl -sf 127.0.0.1:17082/readyz >/dev/null && curl -sf 127.0.0.1:17083/readyz >/dev/null && break
  sleep 0.2
done
export CASCADE_BROKERS=127.0.0.1:17051
C="$BIN"
$C topic create rest-bench --partitions 1 >/dev/null
$C topic create grpc-bench --partitions 1 >/dev/null

# A produce body: 100 records of 1 KiB values (base64 in the binary embedded format).
python3 - "$work/body.json" <<'PY'
import base64, json, os, sys
v = base64.b64encode(os.urandom(1024)).decode()
json.dump({"records": [{"value": v} for _ in range(100)]}, open(sys.argv[1], "w"))
PY
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/vnd.kafka.binary.v2+json"
local f = io.open("$work/body.json", "r"); wrk.body = f:read("*a"); f:close()
LUA

report() { # name, wrk output file, events per request
  local rps p50 p99
  if grep -q "Non-2xx" "$2"; then
    echo "error: $1 got non-2xx answers:" >&2; cat "$2" >&2; exit 1
  fi
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1=="50%" {print $2}' "$2"); p99=$(awk '$1=="99%" {print $2}' "$2")
  printf '| %s | %.0f | %.0f | %s | %s |\n' "$1" "$rps" "$(echo "$rps * $3" | bc)" "$p50" "$p99"
}

echo "| path | requests/s | events/s | p50 | p99 |"
echo "|---|---|---|---|---|"
wrk -t1 -c8 -d"${SECS}s" --latency -s "$work/post.lua" http://127.0.0.1:17082/topics/rest-bench/partitions/0 >"$work/p1" 2>&1
report "REST produce, embedded (8 connections, 100 × 1 KiB per request)" "$work/p1" 100
wrk -t1 -c8 -d"${SECS}s" --latency -s "$work/post.lua" http://127.0.0.1:17083/topics/rest-bench/partitions/0 >"$work/p2" 2>&1
report "REST produce, gateway (8 connections, 100 × 1 KiB per request)" "$work/p2" 100
# Consume: stateless reads of 100 records (~140 KiB of JSON) from a fixed offset.
wrk -t1 -c8 -d"${SECS}s" --latency -H 'Accept: application/vnd.kafka.binary.v2+json' \
  "http://127.0.0.1:17082/topics/rest-bench/partitions/0/records?offset=0&max_bytes=140000" >"$work/c1" 2>&1
report "REST fetch, embedded (~100 events per request)" "$work/c1" 100
wrk -t1 -c8 -d"${SECS}s" --latency -H 'Accept: application/vnd.kafka.binary.v2+json' \
  "http://127.0.0.1:17083/topics/rest-bench/partitions/0/records?offset=0&max_bytes=140000" >"$work/c2" 2>&1
report "REST fetch, gateway (~100 events per request)" "$work/c2" 100
echo
echo "gRPC, same node, same run (cascade bench: 8 requests in flight, 100 × 1 KiB per request):"
$C bench produce --topic grpc-bench --messages 500000 --size 1024 --batch 100 --quiet
$C bench consume --topic grpc-bench --messages 500000 --quiet
