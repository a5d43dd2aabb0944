#!/usr/bin/env bash
# Side-by-side load test: progress-hub (coalescing off, and the default 50 ms) against
# Nchan (nginx), same load tool, same run, same machine. Prints one table with both
# columns and the ratio; raw JSON results stay in the work directory it names.
#
#   bench/compare.sh            full run (~15 minutes)
#   bench/compare.sh --quick    small N, short durations: a smoke run (~2 minutes)
#   bench/compare.sh --only "sse-10k-100 idle"   some scenarios only
#   LOADGEN_ARGS="--worker-yield 0" bench/compare.sh ...   extra load tool arguments
#   PROFILE=profiling bench/compare.sh ...   build with line tables, to `perf record -p` the
#                                            server during a run (same code as release)
#
# Everything listens on 127.0.0.1; every loop is bounded; the servers it starts are
# stopped on exit. Needs root only to install nginx, the Nchan module and wrk when missing.
set -euo pipefail

MODE=full
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --only) ONLY="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--only 'scenario ...']" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/progress-hub-bench.XXXXXX)"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
# Ports can be moved (for example beside another run): BENCH_PORT_BASE=19180.
BASE="${BENCH_PORT_BASE:-18180}"
HUB0_PORT=$BASE              # --coalesce-ms 0: every update is an event (raw fan-out)
HUB50_PORT=$((BASE + 1))     # the default coalescing window
NCHAN_PORT=$((BASE + 2))
PROFILE="${PROFILE:-release}"
HUB_BIN="$ROOT/target/$PROFILE/progress-hub"
LOADGEN="$ROOT/target/$PROFILE/loadgen"

if [ "$MODE" = quick ]; then
    N1K=200; N10K=1000; NIDLE=2000; DUR=2; WRK_SECS=3
else
    N1K=1000; N10K=10000; NIDLE=19000; DUR=10; WRK_SECS=10
fi

log() { echo "== $*" >&2; }

# --- prerequisites -------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] \
    || ! command -v wrk >/dev/null; then
    log "installing nginx, libnginx-mod-nchan and wrk from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan wrk >/dev/null
fi
log "building ($PROFILE)"
(cd "$ROOT" && cargo build --profile "$PROFILE" --quiet -p progress-hub --bin progress-hub \
    && cargo build --profile "$PROFILE" --quiet -p loadgen)
# One process may open at most the hard limit (20,000 here); take all of it.
ulimit -n "$(ulimit -Hn)"

# --- servers -------------------------------------------------------------------------
declare -A PID
cleanup() {
    for name in "${!PID[@]}"; do stop "$name"; done
}
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

start_hub() { # name port coalesce_ms
    # The subscriber limits (1,000 per task, 10,000 in all by default) are raised to
    # what the scenarios open; everything else is the default configuration.
    "$HUB_BIN" --listen "127.0.0.1:$2" --coalesce-ms "$3" --data-dir "$WORK/data-$1" \
        --max-subscribers-per-task 100000 --max-subscribers 100000 \
        >"$WORK/$1.log" 2>&1 &
    PID[$1]=$!
    wait_port "$2"
}

write_nginx_conf() { # poll body
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
worker_rlimit_nofile $(ulimit -Hn);
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
events { worker_connections 19500; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$NCHAN_PORT backlog=4096;
        location = /pub { nchan_publisher; nchan_channel_id \$arg_id; }
        location = /sub { nchan_subscriber; nchan_channel_id \$arg_id; }
        location = /poll { default_type application/json; return 200 '$1'; }
    }
}
EOF
}

start_nchan() {
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
    PID[nchan]=$!
    wait_port "$NCHAN_PORT"
}

cpu_ticks() { # pids...: user+system CPU ticks (1/100 s) summed
    local total=0 pid
    for pid in "$@"; do
        total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
    done
    echo "$total"
}

server_pids() { # name: the process and its children (nginx workers)
    local pid="${PID[$1]}"
    echo "$pid" $(pgrep -P "$pid" || true)
}

start_all() {
    start_hub hub0 "$HUB0_PORT" 0
    start_hub hub50 "$HUB50_PORT" 50
    start_nchan
}

port_of() {
    case "$1" in hub0) echo "$HUB0_PORT" ;; hub50) echo "$HUB50_PORT" ;; nchan) echo "$NCHAN_PORT" ;; esac
}

# --- scenarios -----------------------------------------------------------------------
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

load() { # scenario target [loadgen args...]
    local scenario="$1" target="$2"; shift 2
    local kind=hub pids=()
    [ "$target" = nchan ] && kind=nchan
    for p in $(server_pids "$target"); do pids+=(--server-pid "$p"); done
    log "$scenario on $target"
    # The publishing thread at nice -5 (root only; otherwise it says so and goes on): the
    # ack measured is then the server's, less the tool's own wait for a core. Same for
    # every server; the tool's subscriber workers keep nice 0 and offer their core every
    # 256 reads (loadgen's --worker-yield). LOADGEN_ARGS adds arguments to every run
    # (for example LOADGEN_ARGS="--worker-yield 0").
    # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of arguments
    "$LOADGEN" --server "127.0.0.1:$(port_of "$target")" --target "$kind" \
        --publisher-nice=-5 ${LOADGEN_ARGS:-} \
        --label "$scenario" "${pids[@]}" "$@" 2>"$RESULTS/$scenario.$target.log" \
        | tail -n 1 >"$RESULTS/$scenario.$target.json" || true
    tail -n 3 "$RESULTS/$scenario.$target.log" >&2
}

fanout() { # scenario targets loadgen-args...
    local scenario="$1" targets="$2"; shift 2
    wanted "$scenario" || return 0
    for target in $targets; do load "$scenario" "$target" "$@"; done
}

log "work directory $WORK"
# The polling task must exist before nginx starts, so nginx can answer the same body.
start_hub hub0 "$HUB0_PORT" 0
start_hub hub50 "$HUB50_PORT" 50
for port in "$HUB0_PORT" "$HUB50_PORT"; do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/api/tasks" \
        -H 'Content-Type: application/json' -d '{"id":"poll-bench","name":"docs","total":20}'
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/api/tasks/poll-bench/progress" \
        -H 'Content-Type: application/json' -d '{"processed":9,"current_file":"document.pdf"}'
done
POLL_BODY="$(curl -sf "http://127.0.0.1:$HUB0_PORT/api/index-progress/poll-bench")"
write_nginx_conf "$POLL_BODY"
start_nchan

ALL="nchan hub0 hub50"
fanout sse-1k-10 "$ALL" --subs "$N1K" --rate 10 --duration "$DUR"
fanout sse-1k-100 "$ALL" --subs "$N1K" --rate 100 --duration "$DUR"
fanout sse-10k-10 "$ALL" --subs "$N10K" --rate 10 --duration "$DUR"
fanout sse-10k-100 "$ALL" --subs "$N10K" --rate 100 --duration "$DUR"
fanout sse-10k-max "$ALL" --subs "$N10K" --rate 0 --duration "$DUR"
fanout ws-10k-100 "$ALL" --ws --subs "$N10K" --rate 100 --duration "$DUR"
# Slow subscribers: the same flat-out publisher with 1,000 readers, then with 1,000
# subscribers that stop reading (1 KiB events fill their 4 KiB receive buffers at once).
fanout sse-1k-max "nchan hub0" --subs "$N1K" --rate 0 --duration "$DUR" --payload-bytes 1024
fanout stall-1k-max "nchan hub0" --subs "$N1K" --rate 0 --duration "$DUR" --payload-bytes 1024 --stall

if wanted poll; then
    for target in nchan hub0; do
        path=/api/index-progress/poll-bench
        [ "$target" = nchan ] && path=/poll
        log "poll on $target"
        cpu_before=$(cpu_ticks $(server_pids "$target"))
        wrk -t 1 -c 64 -d "${WRK_SECS}s" --latency "http://127.0.0.1:$(port_of "$target")$path" \
            >"$RESULTS/poll.$target.log" 2>&1 || true
        cpu=$(( $(cpu_ticks $(server_pids "$target")) - cpu_before ))
        awk -v t="$target" -v cpu="$cpu" '
            /Requests\/sec/ { rps = $2 }
            /^ +99%/ { p99 = $2 }
            / requests in / { n = $1 }
            /Non-2xx/ { bad = $NF }
            END { printf "{\"label\":\"poll\",\"target\":\"%s\",\"requests\":%d,\"rps\":%s,\"p99\":\"%s\",\"non2xx\":%d,\"server_cpu_secs\":%.2f,\"requests_per_cpu_sec\":%d}\n", t, n, rps, p99, bad, cpu / 100, (cpu > 0 ? n * 100 / cpu : 0) }
        ' "$RESULTS/poll.$target.log" >"$RESULTS/poll.$target.json"
        tail -n 2 "$RESULTS/poll.$target.log" >&2
    done
fi

if wanted idle; then
    # Memory per connection from a freshly started server, one loadgen driver with as
    # many worker processes as the subscribers need.
    for target in nchan hub0; do
        stop "$target"
        if [ "$target" = nchan ]; then start_nchan; else start_hub hub0 "$HUB0_PORT" 0; fi
        load idle "$target" --subs "$NIDLE" --workers 2 --rate 0 --duration 0 --settle-ms 2000
    done
fi

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load now: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$ROOT/bench/table.py" "$RESULTS"
echo "raw results: $RESULTS"
