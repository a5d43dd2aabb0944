#!/usr/bin/env bash
# Side-by-side load test: progress-hub (coalescing off, the same with --fast-paths off,
# and the default 50 ms window) against Nchan (nginx), same load tools, same run, same
# machine. Prints one table with every column and the ratios to Nchan; raw JSON results
# stay in the work directory it names.
#
# Every fan-out scenario runs with the load tool in two client modes:
#   plain  one worker process, no nice value, no yields: clients that do not cooperate
#   coop   the publisher at nice -5, the workers yielding their core every 256 reads
#          (how the figures before issue 20 were measured; docs/design/load-tool.md)
# and sse-1k-100 once more with a second, independent client (bench/sse_client.py).
#
#   bench/compare.sh            full run (~30 minutes)
#   bench/compare.sh --quick    small N, short durations: a smoke run (~4 minutes)
#   bench/compare.sh --only "sse-10k-100 idle"   some scenarios only
#   MODES=plain bench/compare.sh ...   one client mode only
#   LOADGEN_ARGS="..." bench/compare.sh ...   extra load tool arguments for every run
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
HUBOFF_PORT=$((BASE + 3))    # --coalesce-ms 0 --fast-paths off: everything through hyper
MODES="${MODES:-plain coop}"
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

start_hub() { # name port coalesce_ms [flags...]
    # The subscriber limits (1,000 per task, 10,000 in all by default) are raised to
    # what the scenarios open; everything else is the default configuration.
    local name="$1" port="$2" coalesce="$3"; shift 3
    "$HUB_BIN" --listen "127.0.0.1:$port" --coalesce-ms "$coalesce" --data-dir "$WORK/data-$name" \
        --max-subscribers-per-task 100000 --max-subscribers 100000 "$@" \
        >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    wait_port "$port"
}

start_hub_off() { start_hub hub0off "$HUBOFF_PORT" 0 --fast-paths off; }

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

port_of() {
    case "$1" in
        hub0) echo "$HUB0_PORT" ;; hub50) echo "$HUB50_PORT" ;;
        hub0off) echo "$HUBOFF_PORT" ;; nchan) echo "$NCHAN_PORT" ;;
    esac
}

mode_args() { # mode: the load tool's arguments for that client mode
    case "$1" in
        plain) echo "--worker-yield 0" ;;
        # The publishing thread at nice -5 (root only; otherwise it says so and goes on)
        # and the workers offering their core every 256 reads: the tool cooperates with
        # whichever server it measures, as real clients do not.
        coop) echo "--publisher-nice=-5 --worker-yield 256" ;;
    esac
}

# --- scenarios -----------------------------------------------------------------------
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

load() { # scenario mode target [loadgen args...]
    local scenario="$1" mode="$2" target="$3"; shift 3
    local kind=hub pids=() out="$RESULTS/$scenario.$mode.$target"
    [ "$target" = nchan ] && kind=nchan
    for p in $(server_pids "$target"); do pids+=(--server-pid "$p"); done
    log "$scenario ($mode) on $target"
    # shellcheck disable=SC2086 # mode_args and LOADGEN_ARGS are lists of arguments
    "$LOADGEN" --server "127.0.0.1:$(port_of "$target")" --target "$kind" \
        $(mode_args "$mode") ${LOADGEN_ARGS:-} \
        --label "$scenario" "${pids[@]}" "$@" 2>"$out.log" | tail -n 1 >"$out.json" || true
    tail -n 3 "$out.log" >&2
}

fanout() { # scenario targets loadgen-args...: every client mode, every target
    local scenario="$1" targets="$2"; shift 2
    wanted "$scenario" || return 0
    local workers
    for mode in $MODES; do
        # One worker process in the plain mode (loadgen's default below 18,000
        # subscribers, said explicitly here).
        workers=(); [ "$mode" = plain ] && workers=(--workers 1)
        for target in $targets; do load "$scenario" "$mode" "$target" "${workers[@]}" "$@"; done
    done
}

second_client() { # scenario targets sse_client-args...: bench/sse_client.py
    # progress-hub's events are full snapshots (about 360 bytes per `data:` line) where
    # Nchan sends the published body (about 50): Nchan runs twice, as it is ("py") and with
    # its events padded to progress-hub's size ("py-eq"), since this reader's cost grows
    # with the bytes it reads. The hubs run first so that their size is known.
    local scenario="$1" targets="$2"; shift 2
    wanted "$scenario" || return 0
    local target hub_bytes=""
    for target in $targets nchan-eq; do
        local kind=hub pids=() mode=py server=$target extra=()
        case "$target" in
            nchan) kind=nchan ;;
            nchan-eq) kind=nchan; mode=py-eq; server=nchan
                [ -n "$hub_bytes" ] || continue
                extra=(--nchan-bytes "$hub_bytes") ;;
        esac
        local out="$RESULTS/$scenario.$mode.$server"
        for p in $(server_pids "$server"); do pids+=(--server-pid "$p"); done
        log "$scenario (sse_client.py, $mode) on $server"
        python3 "$ROOT/bench/sse_client.py" --server "127.0.0.1:$(port_of "$server")" \
            --target "$kind" --label "$scenario" "${pids[@]}" "${extra[@]}" "$@" 2>"$out.log" \
            | tail -n 1 >"$out.json" || true
        tail -n 2 "$out.log" >&2
        if [ "$target" = hub0 ]; then
            hub_bytes="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("data_line_bytes") or "")' "$out.json" 2>/dev/null || true)"
        fi
    done
}

log "work directory $WORK"
# The polling task must exist before nginx starts, so nginx can answer the same body.
start_hub hub0 "$HUB0_PORT" 0
start_hub hub50 "$HUB50_PORT" 50
start_hub_off
for port in "$HUB0_PORT" "$HUB50_PORT" "$HUBOFF_PORT"; do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/api/tasks" \
        -H 'Content-Type: application/json' -d '{"id":"poll-bench","name":"docs","total":20}'
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/api/tasks/poll-bench/progress" \
        -H 'Content-Type: application/json' -d '{"processed":9,"current_file":"document.pdf"}'
done
POLL_BODY="$(curl -sf "http://127.0.0.1:$HUB0_PORT/api/index-progress/poll-bench")"
write_nginx_conf "$POLL_BODY"
start_nchan

ALL="nchan hub0 hub0off hub50"
fanout sse-1k-10 "$ALL" --subs "$N1K" --rate 10 --duration "$DUR"
fanout sse-1k-100 "$ALL" --subs "$N1K" --rate 100 --duration "$DUR"
second_client sse-1k-100 "hub0 hub0off nchan" --subs "$N1K" --rate 100 --duration "$DUR"
fanout sse-10k-10 "$ALL" --subs "$N10K" --rate 10 --duration "$DUR"
fanout sse-10k-100 "$ALL" --subs "$N10K" --rate 100 --duration "$DUR"
fanout sse-10k-max "$ALL" --subs "$N10K" --rate 0 --duration "$DUR"
fanout ws-10k-100 "$ALL" --ws --subs "$N10K" --rate 100 --duration "$DUR"
# Slow subscribers: the same flat-out publisher with 1,000 readers, then with 1,000
# subscribers that stop reading (1 KiB events fill their 4 KiB receive buffers at once).
fanout sse-1k-max "nchan hub0 hub0off" --subs "$N1K" --rate 0 --duration "$DUR" --payload-bytes 1024
fanout stall-1k-max "nchan hub0 hub0off" --subs "$N1K" --rate 0 --duration "$DUR" --payload-bytes 1024 --stall

if wanted poll; then
    for target in nchan hub0 hub0off; do
        path=/api/index-progress/poll-bench
        [ "$target" = nchan ] && path=/poll
        log "poll on $target"
        cpu_before=$(cpu_ticks $(server_pids "$target"))
        wrk -t 1 -c 64 -d "${WRK_SECS}s" --latency "http://127.0.0.1:$(port_of "$target")$path" \
            >"$RESULTS/poll.plain.$target.log" 2>&1 || true
        cpu=$(( $(cpu_ticks $(server_pids "$target")) - cpu_before ))
        awk -v t="$target" -v cpu="$cpu" '
            /Requests\/sec/ { rps = $2 }
            /^ +99%/ { p99 = $2 }
            / requests in / { n = $1 }
            /Non-2xx/ { bad = $NF }
            END { printf "{\"label\":\"poll\",\"target\":\"%s\",\"requests\":%d,\"rps\":%s,\"p99\":\"%s\",\"non2xx\":%d,\"server_cpu_secs\":%.2f,\"requests_per_cpu_sec\":%d}\n", t, n, rps, p99, bad, cpu / 100, (cpu > 0 ? n * 100 / cpu : 0) }
        ' "$RESULTS/poll.plain.$target.log" >"$RESULTS/poll.plain.$target.json"
        tail -n 2 "$RESULTS/poll.plain.$target.log" >&2
    done
fi

if wanted idle; then
    # Memory per connection from a freshly started server, one loadgen driver with as
    # many worker processes as the subscribers need (one holds at most 18,000 sockets).
    for target in nchan hub0 hub0off; do
        stop "$target"
        case "$target" in
            nchan) start_nchan ;; hub0) start_hub hub0 "$HUB0_PORT" 0 ;; hub0off) start_hub_off ;;
        esac
        load idle plain "$target" --subs "$NIDLE" --workers 2 --rate 0 --duration 0 --settle-ms 2000
    done
fi

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), load now: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$ROOT/bench/table.py" "$RESULTS"
echo "raw results: $RESULTS"
