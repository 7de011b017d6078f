#!/usr/bin/env bash
# Replicated produce: a 3-node cluster (replication factor 3, min.insync.replicas 2, acks=all)
# against a single node (replication factor 1, acks=all) in the same run on this machine, with
# `cascade bench produce` (1 KiB events, batches of 100, 8 requests in flight per producer).
# All nodes and the load generator share this machine's cores and disk, so the cluster pays
# for three copies of every write (and three fsyncs) out of the same budget.
#
#   bench/cluster.sh                  # builds the release binary, prints a Markdown report
#   MSGS=500000 bench/cluster.sh
#
# Every server is killed on exit; all traffic stays on loopback; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${MSGS:-300000}
cargo build --release --locked -q -p cascade-server --bin cascade
BIN=${CARGO_TARGET_DIR:-target}/release/cascade
work=$(mktemp -d)
cleanup() {
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_node() { # id [extra flags...]
  local id=$1; shift
  "$BIN" server --node-id "$id" --data-dir "$work/n$id" \
    --grpc-addr "127.0.0.1:$((50060 + id))" --http-addr "127.0.0.1:$((8090 + id))" "$@" \
    >"$work/n$id.out" 2>"$work/n$id.err" &
}
wait_ready() { # id
  for _ in $(seq 300); do
    grep -q '"event":"ready"' "$work/n$1.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 did not become ready:" >&2; tail -5 "$work/n$1.err" >&2; exit 1
}
stop_all() {
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"/n*
}
bench() { # label brokers topic producers
  "$BIN" bench --brokers "$2" produce --topic "$3" --producers "$4" --messages "$MSGS" \
    --size 1024 --batch 100 --acks all --quiet --output json | sed "s/^{/{\"label\":\"$1\",/"
}

results="$work/results.jsonl"
: >"$results"

echo "single node ..." >&2
start_node 1
wait_ready 1
one=127.0.0.1:50061
"$BIN" topic --brokers $one create single1 --partitions 1 >/dev/null
"$BIN" topic --brokers $one create single4 --partitions 4 >/dev/null
bench "1 node, RF 1, 1 producer" $one single1 1 >>"$results"
bench "1 node, RF 1, 4 producers" $one single4 4 >>"$results"
stop_all

echo "three nodes ..." >&2
start_node 1
wait_ready 1
start_node 2 --seeds 127.0.0.1:50061
start_node 3 --seeds 127.0.0.1:50061
wait_ready 2
wait_ready 3
all=127.0.0.1:50061,127.0.0.1:50062,127.0.0.1:50063
"$BIN" topic --brokers $all create rep1 --partitions 1 --replication-factor 3 >/dev/null
"$BIN" topic --brokers $all create rep4 --partitions 4 --replication-factor 3 >/dev/null
bench "3 nodes, RF 3, 1 producer" $all rep1 1 >>"$results"
bench "3 nodes, RF 3, 4 producers" $all rep4 4 >>"$results"
stop_all

python3 - "$results" "$MSGS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"`bench/cluster.sh` — {sys.argv[2]} events of 1 KiB per run, batches of 100, acks=all, "
      "8 requests in flight per producer; all processes on this machine.\n")
print("| setup | msgs/s | MB/s | p50 ms | p99 ms | p999 ms | max ms |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    l = r["latency_ms"]
    print(f"| {r['label']} | {r['msgs_per_sec']:,.0f} | {r['mb_per_sec']:.1f} | {l['p50']:.2f} | "
          f"{l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} |")
EOF
