#!/usr/bin/env bash
# Tern against Tern: the fan-in and pairs scenarios of compare.sh for two builds of the broker,
# taking turns run by run (this machine drifts by up to 2x over minutes), the broker pinned to
# CPU 0 and the load generator to CPU 1; prints the median rate of each and their ratio.
#
#   benches/ab.sh BEFORE_REV              # BEFORE_REV built in a temporary worktree vs HEAD
#   BEFORE=path/to/tern AFTER=path/to/tern benches/ab.sh
#   ROUNDS=3 COUNT=200000 PAYLOADS="64 1024" QOSES="0 1 2" SCENARIOS="fanin pairs"
#
# Needs taskset and python3. Results go to target/ab/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-200000}
PAYLOADS=${PAYLOADS:-64 1024}
QOSES=${QOSES:-0 1 2}
SCENARIOS=${SCENARIOS:-fanin pairs}
OUT=target/ab
mkdir -p "$OUT"

cargo build --release --quiet --bin tern --example load
LOAD=target/release/examples/load
AFTER=${AFTER:-target/release/tern}
if [ -z "${BEFORE:-}" ]; then
  rev=${1:?usage: benches/ab.sh BEFORE_REV (or BEFORE=binary)}
  tree=$OUT/before-tree
  rm -rf "$tree"
  git worktree add -q --force "$tree" "$rev"
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../before-target" cargo build --release --quiet --bin tern)
  git worktree remove --force "$tree"
  BEFORE=$OUT/before-target/release/tern
fi

# shellcheck source=benches/common.sh
source benches/common.sh

: > "$OUT/results"
for round in $(seq 1 "$ROUNDS"); do
  for payload in $PAYLOADS; do for qos in $QOSES; do for scenario in $SCENARIOS; do
    for side in before after; do
      if [ $side = before ]; then bin=$BEFORE; else bin=$AFTER; fi
      port=$(free_port)
      tern_config "$port" "$OUT/$side.toml"
      taskset -c 0 "$bin" -c "$OUT/$side.toml" > /dev/null 2>&1 &
      pid=$!
      wait_port "$port"
      if [ "$scenario" = fanin ]; then args=(fanin --publishers 4); else args=(pairs --pairs 4); fi
      line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$pid" --timeout 30 \
        "${args[@]}" --count $((COUNT / 4)) --qos "$qos" --payload "$payload" 2>/dev/null || echo failed=1)
      echo "$side ${scenario}_q${qos}_${payload}B $line" >> "$OUT/results"
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done; done; done
done

python3 - "$OUT/results" <<'EOF'
import collections, re, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, label, rest = line.split(" ", 2)
    runs[(label, side)].append(dict(re.findall(r"(\w+)=([^\s]+)", rest)))
def med(label, side, key):
    vals = [float(kv[key]) for kv in runs[(label, side)] if key in kv]
    return statistics.median(vals) if vals else float("nan")
labels = sorted({l for l, _ in runs}, key=lambda l: (l.split("_")[2], l.split("_")[1], l))
print(f"| {'scenario':<16} | {'before msg/s':>12} | {'after msg/s':>12} | {'after/before':>12} | {'lost after':>10} |")
print(f"|{'-'*18}|{'-'*14}|{'-'*14}|{'-'*14}|{'-'*12}|")
for l in labels:
    b, a = med(l, "before", "rate_msg_s"), med(l, "after", "rate_msg_s")
    lost = max(int(float(kv.get("lost", "-1"))) for kv in runs[(l, "after")])
    print(f"| {l:<16} | {b:>12,.0f} | {a:>12,.0f} | {a / b:>12.3f} | {lost:>10} |")
EOF
