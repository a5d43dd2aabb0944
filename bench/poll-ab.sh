#!/usr/bin/env bash
# Polling A/B: nginx answering the polled JSON from memory, then each given progress-hub
# binary, alternating, ROUNDS times, each with `wrk -t1 -c64 -d SECS s` on
# GET /api/index-progress/poll-bench. Prints req/s, requests per server CPU-second and the
# ratio to the nginx run just before. For before/after comparisons of builds in one run:
#
#   bench/poll-ab.sh 3 5 /tmp/before/progress-hub target/release/progress-hub
#
# Needs nginx and wrk (bench/compare.sh installs them). Everything listens on 127.0.0.1.
set -u
ROUNDS=$1; SECS=$2; shift 2
W=$(mktemp -d /tmp/progress-hub-poll-ab.XXXXXX)
ulimit -n "$(ulimit -Hn)"
declare -a PIDS
port=18300
i=0
for bin in "$@"; do
  p=$((port+i)); "$bin" --listen 127.0.0.1:$p --data-dir $W/d$i --max-subscribers-per-task 100000 --max-subscribers 100000 >$W/h$i.log 2>&1 &
  PIDS[$i]=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$p/healthz && break; sleep 0.1; done
  curl -sf -o /dev/null -X POST http://127.0.0.1:$p/api/tasks -H 'Content-Type: application/json' -d '{"id":"poll-bench","name":"docs","total":20}'
  curl -sf -o /dev/null -X POST http://127.0.0.1:$p/api/tasks/poll-bench/progress -H 'Content-Type: application/json' -d '{"processed":9,"current_file":"document.pdf"}'
  i=$((i+1))
done
BODY="$(curl -sf http://127.0.0.1:$port/api/index-progress/poll-bench)"
mkdir -p $W/nginx
cat >$W/nginx/nginx.conf <<NG
worker_processes auto;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4000; }
http { access_log off; keepalive_requests 100000000;
 client_body_temp_path $W/nginx/body; proxy_temp_path $W/nginx/proxy; fastcgi_temp_path $W/nginx/f; uwsgi_temp_path $W/nginx/u; scgi_temp_path $W/nginx/s;
 server { listen 127.0.0.1:18399 backlog=4096; location = /poll { default_type application/json; return 200 '$BODY'; } } }
NG
nginx -c $W/nginx/nginx.conf -p $W/nginx -g 'daemon off;' & NGPID=$!
sleep 0.5
cpu() { local t=0; for p in "$@"; do t=$((t+$(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
run() { # name url pids
  local name=$1 url=$2; shift 2
  local c0=$(cpu "$@")
  local out=$(wrk -t1 -c64 -d${SECS}s $url 2>&1)
  local c1=$(cpu "$@")
  local rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  local n=$(echo "$out" | awk '/ requests in /{print $1}')
  local bad=$(echo "$out" | awk '/Non-2xx/{print $NF}')
  printf "%-40s rps %9.0f  req/cpu-s %7d  non2xx %s\n" "$name" "$rps" $(( n*100/( (c1-c0) > 0 ? (c1-c0) : 1) )) "${bad:-0}"
  echo "$rps"> $W/last
}
for r in $(seq $ROUNDS); do
  echo "-- round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  run nginx http://127.0.0.1:18399/poll $NGPID $(pgrep -P $NGPID)
  ng=$(cat $W/last)
  i=0
  for bin in "$@"; do
    run "$bin" http://127.0.0.1:$((port+i))/api/index-progress/poll-bench ${PIDS[$i]}
    hb=$(cat $W/last); echo "   ratio $(awk -v a=$hb -v b=$ng 'BEGIN{printf "%.3f", a/b}')"
    i=$((i+1))
  done
done
kill "$NGPID" "${PIDS[@]}"; wait 2>/dev/null
rm -rf "$W"
