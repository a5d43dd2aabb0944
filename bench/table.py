"""Renders bench/compare.sh results (one JSON file per scenario, client mode and server) as
one Markdown table: Nchan, progress-hub with coalescing off, their ratio, the same with
--fast-paths off and its ratio, and progress-hub with the default 50 ms window. Usage:
python3 bench/table.py RESULTS_DIR"""

import json
import pathlib
import sys

ORDER = [
    "sse-1k-10", "sse-1k-100", "sse-10k-10", "sse-10k-100", "sse-10k-max",
    "ws-10k-100", "sse-1k-max", "stall-1k-max", "idle", "poll",
]
# (key, label, better): better is "up" when a larger number is better.
FANOUT = [
    ("connected", "subscribers connected", "up"),
    ("delivered_per_sec", "events delivered/s", "up"),
    ("lat_p50_ms", "deliver latency p50 ms", "down"),
    ("lat_p99_ms", "deliver latency p99 ms", "down"),
    ("lat_p999_ms", "deliver latency p99.9 ms", "down"),
    ("publish_rate", "publishes/s", "up"),
    ("ack_p99_ms", "publish ack p99 ms", "down"),
    ("missed_final", "missed the final event", "down"),
    ("server_cpu_secs", "server CPU s", "down"),
    ("tool_cpu_secs", "load tool CPU s", "down"),
]
IDLE = [
    ("connected", "idle subscribers held", "up"),
    ("failed", "connections failed", "down"),
    ("rss_per_conn_bytes", "server RSS per subscriber, bytes", "down"),
    ("connect_secs", "time to connect all, s", "down"),
]
POLL = [
    ("rps", "requests/s (wrk -c 64)", "up"),
    ("p99", "latency p99", "down"),
    ("non2xx", "non-2xx answers", "down"),
    ("server_cpu_secs", "server CPU s", "down"),
    ("requests_per_cpu_sec", "requests per server CPU-second", "up"),
]


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def number(value):
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                try:
                    return float(value[: -len(unit)]) * scale
                except ValueError:
                    return None
    return None


def ratio(hub, nchan):
    h, n = number(hub), number(nchan)
    if h is None or n is None or n == 0:
        return "-"
    return f"{h / n:.2f}"


# Client modes in the order they are shown: loadgen plain and cooperative, then the
# second client (bench/sse_client.py).
MODES = ["plain", "coop", "py", "py-eq"]
MODE_NAMES = {
    "plain": "loadgen, plain",
    "coop": "loadgen, coop",
    "py": "sse_client.py",
    "py-eq": "sse_client.py, Nchan's events as long as progress-hub's",
}
# A mode whose progress-hub figures are those of another: "py-eq" pads Nchan's events only.
SAME_HUB_RUN = {"py-eq": "py"}
TARGETS = ("nchan", "hub0", "hub0off", "hub50")


def main(directory):
    results = {}
    for path in pathlib.Path(directory).glob("*.json"):
        scenario, mode, target = path.stem.rsplit(".", 2)
        try:
            results[(scenario, mode, target)] = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            results[(scenario, mode, target)] = {}
    print(
        "| scenario | client | metric | Nchan | progress-hub (coalesce 0) | ratio "
        "| fast paths off | ratio | progress-hub (coalesce 50 ms) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario in ORDER:
        for mode in MODES:
            if not any(s == scenario and m == mode for s, m, _ in results):
                continue
            metrics = IDLE if scenario == "idle" else POLL if scenario == "poll" else FANOUT
            client = "wrk" if scenario == "poll" else MODE_NAMES[mode]
            for key, label, better in metrics:
                cells = [
                    results.get((scenario, SAME_HUB_RUN.get(mode, mode) if t != "nchan" else mode, t), {}).get(key)
                    for t in TARGETS
                ]
                arrow = "higher is better" if better == "up" else "lower is better"
                print(
                    f"| {scenario} | {client} | {label} ({arrow}) | {fmt(cells[0])} "
                    f"| {fmt(cells[1])} | {ratio(cells[1], cells[0])} "
                    f"| {fmt(cells[2])} | {ratio(cells[2], cells[0])} | {fmt(cells[3])} |"
                )


if __name__ == "__main__":
    main(sys.argv[1])
