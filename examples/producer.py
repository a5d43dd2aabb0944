#!/usr/bin/env python3
"""A producer in Python (requests): creates a task, reports each step of a loop, and
completes the task, or fails it with the error when the loop raises.

    python3 examples/producer.py [--server URL] [--token T] [--id ID] [--steps N]

--server defaults to $PROGRESS_HUB_SERVER or http://127.0.0.1:8080, --token to
$PROGRESS_HUB_TOKEN (needed when the server has --api-token). Prints the task id first,
so that something can follow it: `progress-hub watch ID`, or the page at /?task=ID.
"""

import argparse
import os
import sys
import time

import requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("PROGRESS_HUB_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("PROGRESS_HUB_TOKEN"))
    parser.add_argument("--id", help="a task id of your choosing; the server picks one otherwise")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds of 'work' per step")
    parser.add_argument("--fail-at", type=int, help="raise an error at this step (to see a failure)")
    args = parser.parse_args()

    hub = requests.Session()
    if args.token:
        hub.headers["Authorization"] = f"Bearer {args.token}"
    server = args.server.rstrip("/")

    def post(path: str, body: dict) -> dict:
        response = hub.post(f"{server}{path}", json=body, timeout=10)
        if not response.ok:
            # The server always explains itself as {"error": "..."}.
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
        return response.json()

    new_task = {"name": "example job (Python)", "total": args.steps}
    if args.id:
        new_task["id"] = args.id
    task_id = post("/api/tasks", new_task)["task_id"]
    print(task_id, flush=True)

    try:
        for step in range(1, args.steps + 1):
            if step == args.fail_at:
                raise RuntimeError(f"step {step} went wrong")
            time.sleep(args.delay)  # the real work goes here
            post(f"/api/tasks/{task_id}/progress", {"processed": step, "current_file": f"item-{step}.txt"})
    except Exception as error:
        post(f"/api/tasks/{task_id}/fail", {"error": str(error)})
        print(f"failed: {error}", file=sys.stderr)
        return 1
    post(f"/api/tasks/{task_id}/complete", {"results": {"items": args.steps}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
