#!/usr/bin/env bash
# Fan-out A/B: progress-hub builds (or load tools) alternating, ROUNDS times, each run on a
# freshly started server with `--coalesce-ms 0` (or COALESCE_MS) and the same loadgen
# arguments. Prints one line per run with what decides a before/after: delivered events/s,
# delivery p50/p99, publish ack p99, publishes/s, missed finals, server and tool CPU,
# connect time and RSS per connection. For example, a change to the relay with the
# publisher flat out:
#
#   bench/fanout-ab.sh 2 /tmp/before/progress-hub target/release/progress-hub -- \
#       --subs 10000 --rate 0 --duration 10
#
# A load tool A/B: LOADGENS="/tmp/old/loadgen target/release/loadgen" with one server
# binary. The coalescing window: COALESCE_MS=50 (default 0); other server flags:
# HUB_FLAGS="...". Builds with `cargo build --release` first. Everything listens on
# 127.0.0.1; every run is bounded by loadgen. The load tool runs in its plain mode (no
# nice, no yields) unless the loadgen arguments say otherwise.
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 ROUNDS SERVER-BIN... -- LOADGEN-ARGS..." >&2
    exit 2
fi
ROUNDS=$1; shift
SERVERS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SERVERS+=("$1"); shift; done
[ $# -gt 0 ] && shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
read -r -a TOOLS <<<"${LOADGENS:-$ROOT/target/release/loadgen}"
PORT=${BENCH_PORT:-18480}
W=$(mktemp -d /tmp/progress-hub-fanout-ab.XXXXXX)
ulimit -n "$(ulimit -Hn)"
HUB=""
trap '[ -n "$HUB" ] && kill "$HUB" 2>/dev/null' EXIT

for round in $(seq "$ROUNDS"); do
    for server in "${SERVERS[@]}"; do
        for tool in "${TOOLS[@]}"; do
            rm -rf "$W/data"
            # shellcheck disable=SC2086 # HUB_FLAGS is a list of flags
            "$server" --listen "127.0.0.1:$PORT" --coalesce-ms "${COALESCE_MS:-0}" --data-dir "$W/data" \
                --max-subscribers-per-task 100000 --max-subscribers 100000 ${HUB_FLAGS:-} \
                >"$W/hub.log" 2>&1 &
            HUB=$!
            for _ in $(seq 100); do
                curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
                sleep 0.1
            done
            result=$("$tool" --server "127.0.0.1:$PORT" --target hub \
                --server-pid "$HUB" "$@" 2>>"$W/loadgen.log" | tail -n 1)
            kill "$HUB" 2>/dev/null
            wait "$HUB" 2>/dev/null
            HUB=""
            printf 'round %s  server %s  tool %s\n  ' "$round" "$server" "$tool"
            echo "$result" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r:
    print("error:", r["error"]); sys.exit()
keys = [("delivered/s", "delivered_per_sec"), ("p50 ms", "lat_p50_ms"),
        ("p99 ms", "lat_p99_ms"), ("ack p99 ms", "ack_p99_ms"),
        ("publishes/s", "publish_rate"), ("missed final", "missed_final"),
        ("server CPU s", "server_cpu_secs"), ("tool CPU s", "tool_cpu_secs"),
        ("connect s", "connect_secs"), ("RSS B/conn", "rss_per_conn_bytes")]
print("  ".join(f"{name} {r.get(key)}" for name, key in keys))'
        done
    done
done
echo "logs: $W" >&2
