#!/bin/sh
# A producer in shell (curl): creates a task, reports each step of a loop, and completes
# the task, or fails it when a step fails.
#
#   examples/producer.sh [STEPS] [TASK_ID]
#
# PROGRESS_HUB_SERVER (default http://127.0.0.1:8080) and PROGRESS_HUB_TOKEN (needed when
# the server has --api-token) come from the environment. Prints the task id first, so
# that something can follow it: `progress-hub watch ID`, or the page at /?task=ID.
# FAIL_AT=N makes step N fail, to see a failure end to end.
set -eu

SERVER="${PROGRESS_HUB_SERVER:-http://127.0.0.1:8080}"
STEPS="${1:-20}"
ID="${2:-}"

# POST path json: prints the answer; fails (with the server's {"error": ...}) unless 2xx.
post() {
    if [ -n "${PROGRESS_HUB_TOKEN:-}" ]; then
        curl -sS --fail-with-body -X POST "$SERVER$1" -H 'Content-Type: application/json' \
            -H "Authorization: Bearer $PROGRESS_HUB_TOKEN" --data "$2"
    else
        curl -sS --fail-with-body -X POST "$SERVER$1" -H 'Content-Type: application/json' \
            --data "$2"
    fi
}

if [ -n "$ID" ]; then
    created="$(post /api/tasks "{\"id\": \"$ID\", \"name\": \"example job (shell)\", \"total\": $STEPS}")"
else
    created="$(post /api/tasks "{\"name\": \"example job (shell)\", \"total\": $STEPS}")"
fi
# The answer is one line of JSON: {"task_id":"...",...}. Task ids never hold quotes.
task_id="$(printf '%s' "$created" | sed -n 's/.*"task_id":"\([^"]*\)".*/\1/p')"
echo "$task_id"

work() {
    # The real work goes here; FAIL_AT shows what a failing step looks like.
    [ "$1" != "${FAIL_AT:-}" ] || { echo "step $1 went wrong" >&2; return 1; }
    sleep 0.05
}

step=1
while [ "$step" -le "$STEPS" ]; do
    if ! work "$step"; then
        post "/api/tasks/$task_id/fail" "{\"error\": \"step $step went wrong\"}" >/dev/null
        exit 1
    fi
    post "/api/tasks/$task_id/progress" "{\"processed\": $step, \"current_file\": \"item-$step.txt\"}" >/dev/null
    step=$((step + 1))
done
post "/api/tasks/$task_id/complete" "{\"results\": {\"items\": $STEPS}}" >/dev/null
