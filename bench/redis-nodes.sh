#!/usr/bin/env bash
# Several nodes on Redis: the producer on node A, the followers spread over nodes B and C,
# against one progress-hub alone (producer and followers on it) and against Nchan with its
# Redis backend (three nginx instances on one Redis, the same spread), in the same run.
# Prints one Markdown table; raw JSON results stay in the work directory it names.
#
#   bench/redis-nodes.sh            10,000 followers, 10 s per scenario
#   bench/redis-nodes.sh --quick    1,000 followers, 3 s: a smoke run
#   FOLLOWERS=100 bench/redis-nodes.sh --quick    another number of followers
#
# The load tool runs in its plainest mode (one process, no nice value, no yields).
# Everything listens on 127.0.0.1; every loop is bounded; what it starts is stopped on
# exit. Needs root only to install redis-server, nginx and the Nchan module when missing.
set -euo pipefail

MODE=full
[ "${1:-}" = --quick ] && MODE=quick
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/progress-hub-redis-bench.XXXXXX)"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
BASE="${BENCH_PORT_BASE:-18280}"
ONE=$BASE; A=$((BASE + 1)); B=$((BASE + 2)); C=$((BASE + 3))
NA=$((BASE + 4)); NB=$((BASE + 5)); NC=$((BASE + 6)); REDIS=$((BASE + 9))
PROFILE="${PROFILE:-release}"
HUB_BIN="$ROOT/target/$PROFILE/progress-hub"
LOADGEN="$ROOT/target/$PROFILE/loadgen"
if [ "$MODE" = quick ]; then SUBS=1000; DUR=3; else SUBS=10000; DUR=10; fi
SUBS="${FOLLOWERS:-$SUBS}"

log() { echo "== $*" >&2; }

if ! command -v redis-server >/dev/null || ! command -v nginx >/dev/null \
    || ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    log "installing redis-server, nginx and libnginx-mod-nchan from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nginx libnginx-mod-nchan >/dev/null
fi
log "building ($PROFILE)"
(cd "$ROOT" && cargo build --profile "$PROFILE" --quiet -p progress-hub --bin progress-hub \
    && cargo build --profile "$PROFILE" --quiet -p loadgen)
ulimit -n "$(ulimit -Hn)"

declare -A PID
cleanup() { for name in "${!PID[@]}"; do stop "$name"; done; }
trap cleanup EXIT
stop() {
    local pid="${PID[$1]:-}"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    unset "PID[$1]"
}
wait_port() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

log "work directory $WORK"
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PID[redis]=$!
for _ in $(seq 100); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_hub() { # name port [extra flags...]
    local name="$1" port="$2"; shift 2
    "$HUB_BIN" --listen "127.0.0.1:$port" --coalesce-ms 0 --data-dir "$WORK/data-$name" \
        --max-subscribers-per-task 100000 --max-subscribers 100000 "$@" \
        >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    wait_port "$port"
}
start_hub one "$ONE"
for node in a:$A b:$B c:$C; do
    start_hub "${node%%:*}" "${node##*:}" --redis-url "redis://127.0.0.1:$REDIS"
done
for port in $A $B $C; do
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
        sleep 0.1
    done
done

start_nchan() { # name port
    local dir="$WORK/nginx-$1"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -Hn);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
events { worker_connections 19500; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    nchan_redis_url "redis://127.0.0.1:$REDIS";
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location = /pub { nchan_publisher; nchan_channel_id \$arg_id; nchan_use_redis on; }
        location = /sub { nchan_subscriber; nchan_channel_id \$arg_id; nchan_use_redis on; }
    }
}
EOF
    nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' &
    PID[$1]=$!
    wait_port "$2"
}
start_nchan nchan-a "$NA"
start_nchan nchan-b "$NB"
start_nchan nchan-c "$NC"

pids_of() { local p; for p in "$@"; do echo "--server-pid ${PID[$p]}"; pgrep -P "${PID[$p]}" | sed 's/^/--server-pid /' || true; done; }

run() { # scenario setup kind publish-port subscribe-ports servers... -- loadgen args
    local scenario="$1" setup="$2" kind="$3" pub="$4" subs="$5"; shift 5
    local servers=()
    while [ "$1" != -- ]; do servers+=("$1"); shift; done
    shift
    local sub_args=() port
    for port in $subs; do sub_args+=(--subscribe-server "127.0.0.1:$port"); done
    log "$scenario on $setup"
    # shellcheck disable=SC2046 # one argument per word
    "$LOADGEN" --server "127.0.0.1:$pub" --target "$kind" "${sub_args[@]}" \
        --label "$scenario" $(pids_of "${servers[@]}") "$@" \
        2>"$RESULTS/$scenario.$setup.log" | tail -n 1 >"$RESULTS/$scenario.$setup.json" || true
    tail -n 3 "$RESULTS/$scenario.$setup.log" >&2
}

for scenario in "sse-100:--rate 100" "sse-max:--rate 0"; do
    name="${scenario%%:*}"; rate="${scenario#*:}"
    # shellcheck disable=SC2086 # $rate is two words
    run "$name" one-node hub "$ONE" "$ONE" one -- --subs "$SUBS" $rate --duration "$DUR"
    # shellcheck disable=SC2086
    run "$name" three-nodes hub "$A" "$B $C" a b c redis -- --subs "$SUBS" $rate --duration "$DUR"
    # shellcheck disable=SC2086
    run "$name" nchan-redis nchan "$NA" "$NB $NC" nchan-a nchan-b nchan-c redis -- --subs "$SUBS" $rate --duration "$DUR"
done

echo
echo "machine: $(nproc) cores, load now: $(cut -d' ' -f1-3 /proc/loadavg); $SUBS followers, ${DUR} s per scenario"
python3 - "$RESULTS" <<'EOF'
import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
setups = ["one-node", "three-nodes", "nchan-redis"]
rows = [("connected", "followers connected"), ("publish_rate", "publishes/s"),
        ("delivered_per_sec", "events delivered/s"), ("lat_p50_ms", "delivery p50 ms"),
        ("lat_p99_ms", "delivery p99 ms"), ("ack_p99_ms", "publish ack p99 ms"),
        ("missed_final", "missed the final event"), ("server_cpu_secs", "server CPU s")]
for scenario in ["sse-100", "sse-max"]:
    data = {}
    for setup in setups:
        try:
            data[setup] = json.loads((results / f"{scenario}.{setup}.json").read_text())
        except Exception:
            data[setup] = {}
    print(f"\n### {scenario}\n")
    print("| | " + " | ".join(setups) + " |")
    print("|---|" + "---|" * len(setups))
    for key, label in rows:
        cells = []
        for setup in setups:
            v = data[setup].get(key)
            cells.append("-" if v is None else (f"{v:,.0f}" if isinstance(v, float) and v >= 1000 else str(v)))
        print(f"| {label} | " + " | ".join(cells) + " |")
EOF
echo "raw results: $RESULTS"
