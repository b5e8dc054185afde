#!/usr/bin/env bash
# Runs the same load scenarios against Tern, Mosquitto and rumqttd, one broker at a time, each
# on an ephemeral port with equal limits (inflight 100, queue 10000, no persistence), the broker
# pinned to CPU 0 and the load generator to CPU 1, and prints one table with the ratios.
#
#   benches/compare.sh            # the full run (about 8-10 minutes on 2 cores)
#   QUICK=1 benches/compare.sh    # fewer messages, for a smoke test
#   DURABLE_ONLY=1 benches/compare.sh   # only the persistence table (about 2 minutes)
#   WS_ONLY=1 benches/compare.sh        # only the WebSocket table (about 2 minutes)
#   SHARED_ONLY=1 benches/compare.sh    # only the shared-subscription table (about 2 minutes)
#   BRIDGE_ONLY=1 benches/compare.sh    # only the bridge table (about 2 minutes)
#   TERN=path/to/tern DURABLE_ONLY=1 benches/compare.sh   # another build of Tern
#
# The persistence table runs QoS 1 fan-in (4 publishers, 64 B) to one subscriber with a
# persistent session and to a clean one, against Tern in memory, Tern with `persistence` on and
# each `sync` policy, and Mosquitto with `persistence false` and `persistence true`; beside it,
# the fdatasync rate of the disk under target/compare.
#
# Needs: mosquitto (apt-get install mosquitto), rumqttd (cargo install rumqttd), taskset.
# Results go to target/compare/ (one log per broker), the table to stdout, and the chart to
# benches/compare.svg (SVG=path to put it elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-200000}          # messages per publisher in flow scenarios
CLIENTS=${CLIENTS:-15000}       # idle connections
WS_CLIENTS=${WS_CLIENTS:-5000}  # idle connections per transport in the WebSocket table
# Connects in flight at once. rumqttd 0.20 resets connections when many more are in flight,
# so every broker gets the same 50.
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-50}
LAT_SECONDS=${LAT_SECONDS:-5}
# Latency and connect rate vary most between runs (~10%); each is run REPS (CONNECT_REPS) times
# on a fresh broker and the table shows the median.
REPS=${REPS:-3}
CONNECT_REPS=${CONNECT_REPS:-5}
if [ -n "${QUICK:-}" ]; then COUNT=20000; CLIENTS=2000; LAT_SECONDS=2; REPS=1; CONNECT_REPS=1; fi
OUT=target/compare
mkdir -p "$OUT"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bin tern --example load
LOAD=target/release/examples/load
TERN=${TERN:-target/release/tern}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
RUMQTTD=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
NEEDED="$MOSQUITTO"
[ -n "${DURABLE_ONLY:-}${WS_ONLY:-}${SHARED_ONLY:-}${BRIDGE_ONLY:-}" ] || NEEDED="$NEEDED $RUMQTTD"
for b in $NEEDED; do
  [ -x "$b" ] || { echo "missing $b: apt-get install mosquitto; cargo install rumqttd" >&2; exit 1; }
done

# shellcheck source=benches/common.sh
source benches/common.sh

start_broker() { # name port -> sets PID
  local name=$1 port=$2 conf
  case $name in
    tern)
      conf=$OUT/tern.toml
      tern_config "$port" "$conf"
      taskset -c 0 "$TERN" -c "$conf" > "$OUT/tern.out" 2>&1 &
      ;;
    tern-always|tern-interval|tern-never)
      conf=$OUT/$name.toml
      tern_config "$port" "$conf"
      rm -rf "$OUT/$name-data"
      cat >> "$conf" <<EOF
[persistence]
persistence = true
persistence_location = "$PWD/$OUT/$name-data"
sync = "${name#tern-}"
EOF
      taskset -c 0 "$TERN" -c "$conf" > "$OUT/$name.out" 2>&1 &
      ;;
    mosquitto|mosquitto-persist)
      conf=$OUT/$name.conf
      rm -rf "$OUT/$name-data"; mkdir -p "$OUT/$name-data"
      local persist=false
      [ "$name" = mosquitto-persist ] && persist=true
      cat > "$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_inflight_messages 100
max_queued_messages 10000
persistence $persist
persistence_location $PWD/$OUT/$name-data/
log_dest none
EOF
      taskset -c 0 "$MOSQUITTO" -c "$conf" > "$OUT/$name.out" 2>&1 &
      ;;
    rumqttd)
      conf=$OUT/rumqttd.toml
      cat > "$conf" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
EOF
      taskset -c 0 "$RUMQTTD" -c "$conf" > "$OUT/rumqttd.out" 2>&1 &
      ;;
  esac
  PID=$!
  wait_port "$port"
}

# One scenario: prints "label value" lines into the broker's result file.
run() { # broker port label args...
  local broker=$1 port=$2 label=$3; shift 3
  local line
  line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$PID" --timeout 30 "$@" 2>>"$OUT/$broker.err" || echo "failed=1")
  echo "$line" >> "$OUT/$broker.log"
  echo "$label $line" >> "$OUT/$broker.results"
}

BROKERS="tern mosquitto rumqttd"
DURABLE_BROKERS=${DURABLE_BROKERS:-"tern tern-always tern-interval tern-never mosquitto mosquitto-persist"}
for broker in $BROKERS $DURABLE_BROKERS; do
  : > "$OUT/$broker.results"; : > "$OUT/$broker.log"; : > "$OUT/$broker.err"
done

# Persistence: QoS 1 fan-in to a persistent subscriber and to a clean one, each broker fresh.
durable() {
  for rep in $(seq 1 "$REPS"); do
    for broker in $DURABLE_BROKERS; do
      port=$(free_port); start_broker "$broker" "$port"
      # Clean first: a broker with persistence on and no persistent session writes nothing.
      run "$broker" "$port" "durable_clean#$rep" fanin --publishers 4 --count $((COUNT / 4)) --qos 1 --payload 64
      run "$broker" "$port" "durable_persistent#$rep" fanin --publishers 4 --count $((COUNT / 4)) --qos 1 --payload 64 --persistent-subscriber
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
  # The disk's own rate of small write + fdatasync pairs, for scale.
  python3 - "$OUT" > "$OUT/fdatasync.txt" <<'EOF'
import os, sys, time
path = os.path.join(sys.argv[1], "fdatasync.probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
n, start = 0, time.monotonic()
while time.monotonic() - start < 3 and n < 100000:
    os.write(fd, b"x" * 128)
    os.fdatasync(fd)
    n += 1
os.close(fd); os.unlink(path)
print(f"{n / (time.monotonic() - start):.0f}")
EOF
  python3 - "$OUT" "$DURABLE_BROKERS" <<'EOF'
import sys, re, statistics
out, brokers = sys.argv[1], sys.argv[2].split()
rows = {}
for b in brokers:
    for line in open(f"{out}/{b}.results"):
        label, _, rest = line.strip().partition(" ")
        if not label.startswith("durable_"):
            continue
        kv = dict(re.findall(r"(\w+)=([^\s]+)", rest))
        rows.setdefault((label.split("#")[0], b), []).append(kv)
def med(key, label, b):
    vals = [float(kv[key]) for kv in rows.get((label, b), []) if key in kv]
    return statistics.median(vals) if vals else None
fmt = lambda v: "-" if v is None else f"{v:,.0f}"
print(f"fdatasync/s on this disk: {open(out + '/fdatasync.txt').read().strip()}")
print()
print(f"| {'subscriber':<10} | {'broker':<17} | {'msg/s':>9} | {'vs tern':>7} | {'lost':>7} | {'ack p50 us':>10} | {'ack p99 us':>10} | {'disk B/msg':>10} |")
print(f"|{'-'*12}|{'-'*19}|{'-'*11}|{'-'*9}|{'-'*9}|{'-'*12}|{'-'*12}|{'-'*12}|")
for label in ("durable_persistent", "durable_clean"):
    base = med("rate_msg_s", label, "tern")
    for b in brokers:
        rate = med("rate_msg_s", label, b)
        ratio = "-" if rate is None or not base else f"{rate / base:.2f}"
        print(f"| {label[8:]:<10} | {b:<17} | {fmt(rate):>9} | {ratio:>7} | {fmt(med('lost', label, b)):>7} | {fmt(med('ack_p50_us', label, b)):>10} | {fmt(med('ack_p99_us', label, b)):>10} | {fmt(med('broker_disk_bytes_per_msg', label, b)):>10} |")
EOF
}
# MQTT over WebSocket beside TCP: Tern and Mosquitto, each with a TCP and a WebSocket
# listener, the same flows over both, and idle clients' memory over both.
start_ws_broker() { # name tcp_port ws_port -> sets PID
  local name=$1 tcp=$2 ws=$3 conf
  case $name in
    tern)
      conf=$OUT/tern-ws.toml
      tern_config "$tcp" "$conf"
      printf '[[listener]]\nbind = "127.0.0.1:%s"\nprotocol = "websockets"\n' "$ws" >> "$conf"
      taskset -c 0 "$TERN" -c "$conf" > "$OUT/tern-ws.out" 2>&1 &
      ;;
    mosquitto)
      conf=$OUT/mosquitto-ws.conf
      cat > "$conf" <<EOF
listener $tcp 127.0.0.1
listener $ws 127.0.0.1
protocol websockets
allow_anonymous true
max_inflight_messages 100
max_queued_messages 10000
log_dest none
EOF
      taskset -c 0 "$MOSQUITTO" -c "$conf" > "$OUT/mosquitto-ws.out" 2>&1 &
      ;;
  esac
  PID=$!
  wait_port "$tcp"; wait_port "$ws"
}
websocket() {
  : > "$OUT/ws.results"
  for rep in $(seq 1 "$REPS"); do
    for broker in tern mosquitto; do
      tcp=$(free_port); ws=$(free_port); start_ws_broker "$broker" "$tcp" "$ws"
      for qos in 0 1; do
        for t in tcp ws; do
          port=$tcp; flag=""
          [ "$t" = ws ] && { port=$ws; flag="--websocket"; }
          line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$PID" --timeout 30 $flag fanin --publishers 4 --count $((COUNT / 4)) --qos "$qos" --payload 64 2>>"$OUT/ws.err" || echo "failed=1")
          echo "$broker $t fanin_q${qos}#$rep $line" >> "$OUT/ws.results"
          line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$PID" --timeout 30 $flag pairs --pairs 4 --count $((COUNT / 4)) --qos "$qos" --payload 64 2>>"$OUT/ws.err" || echo "failed=1")
          echo "$broker $t pairs_q${qos}#$rep $line" >> "$OUT/ws.results"
        done
      done
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
  for broker in tern mosquitto; do
    for t in tcp ws; do
      tcp=$(free_port); ws=$(free_port); start_ws_broker "$broker" "$tcp" "$ws"
      port=$tcp; flag=""
      [ "$t" = ws ] && { port=$ws; flag="--websocket"; }
      line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$PID" --timeout 30 $flag connections --clients "$WS_CLIENTS" --concurrency "$CONNECT_CONCURRENCY" 2>>"$OUT/ws.err" || echo "failed=1")
      echo "$broker $t connections $line" >> "$OUT/ws.results"
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
  python3 - "$OUT/ws.results" <<'EOF'
import sys, re, statistics
rows = {}
for line in open(sys.argv[1]):
    broker, t, label, rest = line.split(" ", 3)
    kv = dict(re.findall(r"(\w+)=([^\s]+)", rest))
    rows.setdefault((broker, label.split("#")[0]), {}).setdefault(t, []).append(kv)
def med(kvs, key):
    vals = [float(kv[key]) for kv in kvs if key in kv]
    return statistics.median(vals) if vals else None
print("| scenario         | broker    |    TCP msg/s |     WS msg/s | WS/TCP | WS vs Tern WS |")
print("|------------------|-----------|--------------|--------------|--------|---------------|")
for label in ("fanin_q0", "pairs_q0", "fanin_q1", "pairs_q1"):
    tern_ws = med(rows.get(("tern", label), {}).get("ws", []), "rate_msg_s")
    for broker in ("tern", "mosquitto"):
        r = rows.get((broker, label), {})
        tcp, ws = med(r.get("tcp", []), "rate_msg_s"), med(r.get("ws", []), "rate_msg_s")
        f = lambda v: "-" if v is None else f"{v:,.0f}"
        ratio = "-" if not tcp or ws is None else f"{ws / tcp:.2f}"
        vs = "-" if not ws or tern_ws is None else f"{ws / tern_ws:.2f}"
        print(f"| {label:<16} | {broker:<9} | {f(tcp):>12} | {f(ws):>12} | {ratio:>6} | {vs:>13} |")
print()
print("| idle clients     | broker    | TCP bytes/conn | WS bytes/conn | WS/TCP |")
print("|------------------|-----------|----------------|---------------|--------|")
for broker in ("tern", "mosquitto"):
    r = rows.get((broker, "connections"), {})
    tcp, ws = med(r.get("tcp", []), "bytes_per_conn"), med(r.get("ws", []), "bytes_per_conn")
    f = lambda v: "-" if v is None else f"{v:,.0f}"
    ratio = "-" if not tcp or ws is None else f"{ws / tcp:.2f}"
    print(f"| {'connections':<16} | {broker:<9} | {f(tcp):>14} | {f(ws):>13} | {ratio:>6} |")
EOF
}

# Shared subscriptions: QoS 0 and 1 fan-in (4 publishers, 64 B) to one subscriber, and to a
# `$share` group of 8 members, on the same broker; the ratio is what the group costs per
# delivered message.
shared_subs() {
  : > "$OUT/shared-tern.results"; : > "$OUT/shared-mosquitto.results"
  for rep in $(seq 1 "$REPS"); do
    for broker in tern mosquitto; do
      port=$(free_port); start_broker "$broker" "$port"
      for qos in 0 1; do
        for s in fanin shared; do
          extra=""; [ "$s" = shared ] && extra="--members 8"
          line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$PID" --timeout 30 $s --publishers 4 $extra --count $((COUNT / 4)) --qos "$qos" --payload 64 2>>"$OUT/shared.err" || echo "failed=1")
          echo "${s}_q$qos#$rep $line" >> "$OUT/shared-$broker.results"
        done
      done
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
  (cd benches && python3 - "../$OUT" <<'EOF'
import sys
from chart import load
print("| QoS | broker    | fan-in to 1 msg/s | to a group of 8 msg/s | group/one | lost | dup |")
print("|-----|-----------|-------------------|-----------------------|-----------|------|-----|")
for q in ("0", "1"):
    for broker in ("tern", "mosquitto"):
        rows = load(f"{sys.argv[1]}/shared-{broker}.results")
        one, group = rows.get(f"fanin_q{q}", {}), rows.get(f"shared_q{q}", {})
        a, b = one.get("rate_msg_s"), group.get("rate_msg_s")
        f = lambda v: "-" if v is None else f"{v:,.0f}"
        ratio = "-" if not a or b is None else f"{b / a:.2f}"
        lost, dup = f(group.get("lost")), f(group.get("dup"))
        print(f"| {q:<3} | {broker:<9} | {f(a):>17} | {f(b):>21} | {ratio:>9} | {lost:>4} | {dup:>3} |")
EOF
  )
}

# Bridges: QoS 1 fan-in (4 publishers, 64 B) published on an edge Tern whose bridge carries
# everything (`# out 1`) to a remote, with the subscriber on the remote; the remote is Tern or
# Mosquitto, beside fan-in straight to that remote. Both brokers share CPU 0.
bridge_bench() {
  : > "$OUT/bridge-tern.results"; : > "$OUT/bridge-mosquitto.results"
  for rep in $(seq 1 "$REPS"); do
    for remote in tern mosquitto; do
      port=$(free_port); start_broker "$remote" "$port"; RPID=$PID
      line=$(taskset -c 1 timeout 120 "$LOAD" --port "$port" --broker-pid "$RPID" --timeout 30 fanin --publishers 4 --count $((COUNT / 4)) --qos 1 --payload 64 2>>"$OUT/bridge.err" || echo "failed=1")
      echo "direct#$rep $line" >> "$OUT/bridge-$remote.results"
      edge=$(free_port); conf=$OUT/edge.toml
      tern_config "$edge" "$conf"
      printf '[[bridge]]\nname = "up"\naddress = "127.0.0.1:%s"\ntopic = ["# out 1"]\n' "$port" >> "$conf"
      taskset -c 0 "$TERN" -c "$conf" > "$OUT/edge.out" 2>&1 &
      EPID=$!
      wait_port "$edge"
      # Up once the bridge has subscribed on both sides (its state topic says 1).
      for _ in $(seq 1 100); do
        [ "$(timeout 2 mosquitto_sub -p "$edge" -t '$SYS/broker/connection/up/state' -C 1 2>/dev/null)" = 1 ] && break
        sleep 0.1
      done
      line=$(taskset -c 1 timeout 120 "$LOAD" --port "$edge" --broker-pid "$EPID" --timeout 30 fanin --publishers 4 --count $((COUNT / 4)) --qos 1 --payload 64 --subscribe-port "$port" 2>>"$OUT/bridge.err" || echo "failed=1")
      echo "bridged#$rep $line" >> "$OUT/bridge-$remote.results"
      kill "$EPID" "$RPID"; wait "$EPID" "$RPID" 2>/dev/null || true
    done
  done
  (cd benches && python3 - "../$OUT" <<'EOF'
import sys
from chart import load
print("| remote    | fan-in to the remote msg/s | through a bridge msg/s | bridged/direct | lost | dup |")
print("|-----------|----------------------------|------------------------|----------------|------|-----|")
for remote in ("tern", "mosquitto"):
    rows = load(f"{sys.argv[1]}/bridge-{remote}.results")
    d, b = rows.get("direct", {}), rows.get("bridged", {})
    a, c = d.get("rate_msg_s"), b.get("rate_msg_s")
    f = lambda v: "-" if v is None else f"{v:,.0f}"
    ratio = "-" if not a or c is None else f"{c / a:.2f}"
    print(f"| {remote:<9} | {f(a):>26} | {f(c):>22} | {ratio:>14} | {f(b.get('lost')):>4} | {f(b.get('dup')):>3} |")
EOF
  )
}

if [ -n "${DURABLE_ONLY:-}" ]; then durable; exit 0; fi
if [ -n "${BRIDGE_ONLY:-}" ]; then bridge_bench; exit 0; fi
if [ -n "${WS_ONLY:-}" ]; then websocket; exit 0; fi
if [ -n "${SHARED_ONLY:-}" ]; then shared_subs; exit 0; fi

# This machine's speed drifts by up to 2x over minutes, so every group of runs goes through
# the brokers in turn, close together in time: a drift touches all of them alike.
for payload in 64 1024; do
  for qos in 0 1 2; do
    for broker in $BROKERS; do
      # A fresh broker per group keeps one scenario's leftovers out of the next.
      port=$(free_port); start_broker "$broker" "$port"
      run "$broker" "$port" "fanin_q${qos}_${payload}B" fanin --publishers 4 --count $((COUNT / 4)) --qos "$qos" --payload "$payload"
      run "$broker" "$port" "fanout_q${qos}_${payload}B" fanout --subscribers 8 --count $((COUNT / 8)) --qos "$qos" --payload "$payload"
      run "$broker" "$port" "pairs_q${qos}_${payload}B" pairs --pairs 4 --count $((COUNT / 4)) --qos "$qos" --payload "$payload"
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
done
for rep in $(seq 1 "$REPS"); do
  for broker in $BROKERS; do
    port=$(free_port); start_broker "$broker" "$port"
    for rate in 2000 10000; do
      for qos in 0 1; do
        run "$broker" "$port" "latency_q${qos}_${rate}#$rep" latency --rate "$rate" --seconds "$LAT_SECONDS" --qos "$qos" --payload 64
      done
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
done
# Peak memory under a QoS 1 fan-in, on a fresh broker.
for broker in $BROKERS; do
  port=$(free_port); start_broker "$broker" "$port"
  run "$broker" "$port" "fanin_q1_memory" fanin --publishers 4 --count $((COUNT / 4)) --qos 1 --payload 1024
  kill "$PID"; wait "$PID" 2>/dev/null || true
done
for rep in $(seq 1 "$CONNECT_REPS"); do
  for broker in $BROKERS; do
    port=$(free_port); start_broker "$broker" "$port"
    run "$broker" "$port" "connections#$rep" connections --clients "$CLIENTS" --concurrency "$CONNECT_CONCURRENCY"
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
done

durable > "$OUT/durable.table"
websocket > "$OUT/websocket.table"

# The table: one row per figure; ratios are Tern / other (higher is better for rates,
# lower is better for latency, memory and bytes per connection).
python3 - "$OUT" <<'EOF'
import sys
out = sys.argv[1]
# Repeated scenarios ("label#n") become one row of medians: benches/chart.py reads them so.
sys.path.insert(0, "benches")
from chart import load
res = {b: load(f"{out}/{b}.results") for b in ("tern", "mosquitto", "rumqttd")}
figures = []
for label in res["tern"]:
    if label.startswith(("fanin_q", "fanout", "pairs")) and not label.endswith("memory"):
        figures.append((label, "rate_msg_s", "msg/s"))
        figures.append((label, "lost", "lost"))
    elif label.startswith("latency"):
        figures.append((label, "p50_us", "p50 us"))
        figures.append((label, "p99_us", "p99 us"))
        figures.append((label, "p999_us", "p99.9 us"))
    elif label == "connections":
        figures.append((label, "connect_rate_s", "connects/s"))
        figures.append((label, "connect_p99_us", "p99 us"))
        figures.append((label, "broker_connect_cpu_s", "CPU ms", 1000))
        figures.append((label, "bytes_per_conn", "bytes/conn"))
    elif label.endswith("memory"):
        figures.append((label, "broker_peak_rss_kib", "peak RSS KiB"))
def val(b, label, key):
    try:
        return float(res[b][label][key])
    except (KeyError, ValueError):
        return None
def fmt(v):
    return "-" if v is None else f"{v:,.0f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
print(f"| {'scenario':<22} | {'figure':<12} | {'tern':>12} | {'mosquitto':>12} | {'rumqttd':>12} | {'t/mosq':>7} | {'t/rumq':>7} |")
print(f"|{'-'*24}|{'-'*14}|{'-'*14}|{'-'*14}|{'-'*14}|{'-'*9}|{'-'*9}|")
for label, key, name, *scale in figures:
    t, m, r = (val(b, label, key) for b in ("tern", "mosquitto", "rumqttd"))
    if scale:
        t, m, r = (None if v is None else v * scale[0] for v in (t, m, r))
    print(f"| {label:<22} | {name:<12} | {fmt(t):>12} | {fmt(m):>12} | {fmt(r):>12} | {ratio(t, m):>7} | {ratio(t, r):>7} |")
EOF
# The same figures as a picture, for the README.
python3 benches/chart.py "$OUT" "${SVG:-benches/compare.svg}"

echo
cat "$OUT/durable.table"
echo
cat "$OUT/websocket.table"
