#!/usr/bin/env bash
# A Tern cluster beside one Tern: QoS 0 fan-in (4 publishers, 64 B) and the end-to-end
# latency at 10,000 msg/s, with the publishers on node 1 and the subscriber on node 2 of a
# cluster over three nats-server processes with JetStream, and both on one single node.
#
#   benches/cluster.sh                 # REPS=3 runs of each, medians
#   REPS=5 COUNT=400000 benches/cluster.sh
#
# Each Tern is pinned to CPU 0 and the load generator to CPU 1; the NATS servers run where
# the kernel puts them (this machine has two cores: every figure is shared with them).
# Needs nats-server (apt-get install nats-server), taskset and python3. Logs go to
# target/cluster-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
COUNT=${COUNT:-200000}
LAT_SECONDS=${LAT_SECONDS:-5}
OUT=target/cluster-bench
rm -rf "$OUT"; mkdir -p "$OUT"
cargo build --release --quiet --bin tern --example load
LOAD=target/release/examples/load
TERN=${TERN:-target/release/tern}
# shellcheck source=benches/common.sh
source benches/common.sh

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# Three NATS servers routed to each other.
ports=(); cports=(); mports=()
for i in 0 1 2; do ports+=("$(free_port)"); cports+=("$(free_port)"); mports+=("$(free_port)"); done
routes=$(for i in 0 1 2; do printf 'nats://127.0.0.1:%s,' "${cports[$i]}"; done); routes=${routes%,}
for i in 0 1 2; do
  nats-server -js -sd "$OUT/nats$i" --server_name "n$i" -a 127.0.0.1 -p "${ports[$i]}" \
    -m "${mports[$i]}" --cluster_name bench --cluster "nats://127.0.0.1:${cports[$i]}" \
    --routes "$routes" > "$OUT/nats$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:${mports[$i]}/healthz?js-enabled-only=true" > /dev/null 2>&1 && break
    sleep 0.1
  done
done
urls=$(for i in 0 1 2; do printf '"nats://127.0.0.1:%s",' "${ports[$i]}"; done); urls=${urls%,}

node() { # name port -> sets PID
  local conf=$OUT/$1.toml
  tern_config "$2" "$conf"
  cat >> "$conf" <<EOC
[cluster]
nats = [$urls]
node_name = "$1"
prefix = "bench"
EOC
  taskset -c 0 "$TERN" -c "$conf" > "$OUT/$1.log" 2>&1 &
  PID=$!; PIDS+=($PID)
  wait_port "$2"
}

single=$(free_port); tern_config "$single" "$OUT/single.toml"
taskset -c 0 "$TERN" -c "$OUT/single.toml" > "$OUT/single.log" 2>&1 & SPID=$!; PIDS+=($SPID)
wait_port "$single"
n1=$(free_port); node node1 "$n1"; N1PID=$PID
n2=$(free_port); node node2 "$n2"

run() { # label args...
  local label=$1; shift
  for rep in $(seq 1 "$REPS"); do
    line=$(taskset -c 1 timeout 180 "$LOAD" --timeout 60 "$@" 2>>"$OUT/load.err" || echo "failed=1")
    echo "$label $line" >> "$OUT/results"
  done
}
: > "$OUT/results"
fanin=(fanin --publishers 4 --count $((COUNT / 4)) --qos 0 --payload 64 --warmup-ms 500)
lat=(latency --rate 10000 --seconds "$LAT_SECONDS" --qos 0 --payload 64 --warmup-ms 500)
run single_fanin --port "$single" --broker-pid "$SPID" "${fanin[@]}"
run cluster_fanin --port "$n1" --broker-pid "$N1PID" "${fanin[@]}" --subscribe-port "$n2"
run single_latency --port "$single" "${lat[@]}"
run cluster_latency --port "$n1" "${lat[@]}" --subscribe-port "$n2"

python3 - "$OUT/results" <<'EOP'
import collections, re, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, rest = line.split(" ", 1)
    runs[label].append(dict(re.findall(r"(\w+)=([^\s]+)", rest)))
def med(label, key):
    vals = [float(r[key]) for r in runs[label] if key in r]
    return statistics.median(vals) if vals else float("nan")
s, c = med("single_fanin", "rate_msg_s"), med("cluster_fanin", "rate_msg_s")
print(f"| QoS 0 fan-in, 64 B   | single node {s:>10,.0f} msg/s | across nodes {c:>10,.0f} msg/s | {c / s:.2f} |")
print(f"|   lost across nodes  | {max(int(float(r.get('lost', 0))) for r in runs['cluster_fanin'])} |")
for q in ("p50_us", "p99_us"):
    a, b = med("single_latency", q), med("cluster_latency", q)
    print(f"| latency {q:<6} at 10k/s | single node {a:>8,.0f} us | across nodes {b:>8,.0f} us | added {b - a:>6,.0f} us |")
EOP
