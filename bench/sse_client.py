#!/usr/bin/env python3
"""A second, independent SSE load client, to cross-check tools/loadgen: Python's standard
library only, no yielding, no nice value, plain non-blocking reads (one thread, epoll).
It shares no code with loadgen.

It opens N SSE subscribers on one task (progress-hub) or channel (Nchan); a second process
publishes at a fixed rate through one keep-alive connection, each event carrying its
publish time (`"t":<ns since the epoch>`, the same shape loadgen publishes), so the
publishing schedule does not depend on how busy the reader is. The reader timestamps the
`data:` lines of every read when it returns. Prints one JSON line with the keys bench/table.py
reads (delivered_per_sec, lat_p50_ms, lat_p99_ms, ack_p99_ms, ...).

    python3 bench/sse_client.py --server 127.0.0.1:8080 --target hub --subs 1000 \
        --rate 100 --duration 10 [--server-pid PID ...]

Its own cost is higher than loadgen's (Python), and it is paid for every server alike:
compare ratios between servers, not its milliseconds with loadgen's.
"""

import argparse
import json
import multiprocessing
import os
import re
import resource
import select
import socket
import sys
import time

# A `data:` line of an event and its publish time. Read from the raw body: chunk size
# lines sit between events (each event is one chunk for both servers), never inside one.
# The terminal event (progress-hub's `completed`, the tool's `"final":true` for Nchan) is
# counted apart, like loadgen does.
ENDS = rb'(?:"event":"completed"|"final":true)'
TIMED = re.compile(rb'data:(?![^\n]*' + ENDS + rb')[^\n]*?"t":(\d+)')
FINAL = re.compile(rb'data:[^\n]*' + ENDS)
# The same for a read without a terminal event (nearly all), without scanning each line
# twice: TIMED costs 4 µs on a progress-hub event and 0.5 µs on Nchan's shorter one, which
# at 100,000 events a second made the reader's own load depend on the server's event length.
TIME = re.compile(rb'"t":(\d+)')
ENDS_PLAIN = (b'"event":"completed"', b'"final":true')


def http_request(sock_file, sock, host, path, body):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    status = int(sock_file.readline().split()[1])
    length, chunked, close = 0, False, False
    while True:
        line = sock_file.readline().strip().lower()
        if not line:
            break
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif line == b"transfer-encoding: chunked":
            chunked = True
        elif line == b"connection: close":
            close = True
    if chunked:
        while True:
            size = int(sock_file.readline().strip() or b"0", 16)
            sock_file.read(size + 2)
            if size == 0:
                break
    elif length:
        sock_file.read(length)
    return status, close


class Publisher:
    """One keep-alive HTTP/1.1 connection, one request at a time (blocking)."""

    def __init__(self, addr, target, channel, nchan_bytes=0):
        self.addr, self.target, self.channel = addr, target, channel
        self.nchan_bytes = nchan_bytes
        self.host = f"{addr[0]}:{addr[1]}"
        self.connect()

    def connect(self):
        self.sock = socket.create_connection(self.addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def request(self, path, body):
        status, close = http_request(self.file, self.sock, self.host, path, body)
        if close:
            self.sock.close()
            self.connect()
        return status

    def setup(self):
        if self.target == "hub":
            status = self.request("/api/tasks", json.dumps({"id": self.channel}).encode())
            if status not in (201, 409):
                raise RuntimeError(f"create task: HTTP {status}")

    def event(self, n, t):
        if self.target == "hub":
            path = f"/api/tasks/{self.channel}/progress"
            body = f'{{"processed":{n},"detail":{{"t":{t},"pad":""}}}}'
        else:
            path = f"/pub?id={self.channel}"
            body = f'{{"n":{n},"t":{t},"pad":""}}'
            if self.nchan_bytes:
                # The padding before "t", as in progress-hub's snapshot, so that the
                # reader scans as many bytes to find it.
                pad = "x" * max(0, self.nchan_bytes - len("data: ") - len(body))
                body = f'{{"n":{n},"pad":"{pad}","t":{t}}}'
        return self.request(path, body.encode())

    def finish(self, t):
        if self.target == "hub":
            return self.request(f"/api/tasks/{self.channel}/complete", b"")
        return self.request(f"/pub?id={self.channel}", f'{{"final":true,"t":{t}}}'.encode())


def publish(args, addr, channel, go, report):
    """The publishing process: waits for `go`, publishes, sends its figures back."""
    publisher = Publisher(addr, args.target, channel, args.nchan_bytes)
    go.recv()
    acks_us, errors, published = [], 0, 0
    start_ns = time.time_ns()
    start = time.monotonic()
    planned = round(args.rate * args.duration)
    while published < planned:
        delay = start + published / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.time_ns()
        status = publisher.event(published + 1, t)
        acks_us.append((time.time_ns() - t) // 1000)
        published += 1
        errors += not 200 <= status < 300
    publish_secs = time.monotonic() - start
    errors += not 200 <= publisher.finish(time.time_ns()) < 300
    report.send((start_ns, published, errors, publish_secs, acks_us))


def cpu_secs(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def subscribe(addr, request, count):
    """Opens `count` streams; returns the sockets whose answer was `200`, non-blocking,
    each with what followed its head."""
    streams, failed = [], 0
    pending = []
    for i in range(count):
        sock = socket.socket()
        try:
            sock.bind((f"127.0.0.{2 + i % 8}", 0))
            sock.connect(addr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            pending.append(sock)
        except OSError:
            sock.close()
            failed += 1
    for sock in pending:
        sock.settimeout(10)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise OSError("closed")
                head += chunk
        except OSError:
            sock.close()
            failed += 1
            continue
        head, rest = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            sock.close()
            failed += 1
            continue
        sock.setblocking(False)
        streams.append((sock, rest))
    return streams, failed


def run(args):
    host, port = args.server.rsplit(":", 1)
    addr = (host, int(port))
    channel = args.channel or f"py-{os.getpid()}-{time.time_ns() % 1_000_000_000}"
    Publisher(addr, args.target, channel).setup()
    path = f"/api/index-progress/{channel}/events" if args.target == "hub" else f"/sub?id={channel}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {args.server}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    server_cpu_start = cpu_secs(args.server_pid)
    started = time.monotonic()
    streams, failed = subscribe(addr, request, args.subs)
    connect_secs = time.monotonic() - started
    connected = len(streams)

    go_recv, go_send = multiprocessing.Pipe(duplex=False)
    report_recv, report_send = multiprocessing.Pipe(duplex=False)
    publisher = multiprocessing.Process(
        target=publish, args=(args, addr, channel, go_recv, report_send), daemon=True)
    publisher.start()
    time.sleep(0.5)

    epoll = select.epoll()
    by_fd, carry = {}, {}
    for sock, rest in streams:
        by_fd[sock.fileno()] = sock
        carry[sock.fileno()] = rest
        epoll.register(sock.fileno(), select.EPOLLIN)
    latencies, finals, last_ns = [], 0, 0
    data_line_bytes = None
    add = latencies.append
    go_send.send(True)
    deadline = None
    open_fds = len(by_fd)
    while open_fds:
        if deadline is None and report_recv.poll():
            deadline = time.monotonic() + args.drain
        if deadline is not None and time.monotonic() > deadline:
            break
        for fd, _ in epoll.poll(0.1):
            sock = by_fd[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            now = time.time_ns()
            if not data:
                epoll.unregister(fd)
                open_fds -= 1
                continue
            if carry[fd]:
                data = carry[fd] + data
            cut = data.rfind(b"\n") + 1
            carry[fd] = data[cut:]
            lines = data[:cut]
            ending = ENDS_PLAIN[0] in lines or ENDS_PLAIN[1] in lines
            for t in (TIMED if ending else TIME).findall(lines):
                add((now - int(t)) // 1000)
            if data_line_bytes is None and latencies:
                line = next(l for l in lines.split(b"\n") if TIMED.match(l))
                data_line_bytes = len(line)
            if ending and FINAL.search(lines):
                finals += 1
                last_ns = now
                epoll.unregister(fd)
                open_fds -= 1
            elif lines:
                last_ns = now
    start_ns, published, errors, publish_secs, acks = report_recv.recv()
    publisher.join(5)
    server_cpu = cpu_secs(args.server_pid) - server_cpu_start
    for sock in by_fd.values():
        sock.close()

    lat = sorted(latencies)
    acks.sort()
    ms = lambda us: None if us is None else round(us / 1000, 3)
    delivery_secs = max(1e-9, (last_ns - start_ns) / 1e9)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "label": args.label,
        "client": "sse_client.py",
        "target": args.target,
        "subs": args.subs,
        "connected": connected,
        "failed": failed,
        "connect_secs": round(connect_secs, 3),
        "published": published,
        "publish_errors": errors,
        "publish_rate": round(published / max(publish_secs, 1e-9), 3),
        "ack_p50_ms": ms(percentile(acks, 0.5)),
        "ack_p99_ms": ms(percentile(acks, 0.99)),
        "delivered": len(lat),
        "expected": published * connected,
        "delivered_per_sec": round(len(lat) / delivery_secs, 3),
        "lat_p50_ms": ms(percentile(lat, 0.5)),
        "lat_p99_ms": ms(percentile(lat, 0.99)),
        "lat_p999_ms": ms(percentile(lat, 0.999)),
        "lat_max_ms": ms(lat[-1] if lat else None),
        "missed_final": connected - min(finals, connected),
        "server_cpu_secs": round(server_cpu, 3),
        "data_line_bytes": data_line_bytes,
        "tool_cpu_secs": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:8080")
    parser.add_argument("--target", choices=["hub", "nchan"], default="hub")
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--drain", type=float, default=15)
    parser.add_argument("--channel")
    parser.add_argument("--label", default="")
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument(
        "--nchan-bytes", type=int, default=0,
        help="pad Nchan's events so that each `data:` line is this long: progress-hub sends "
        "a full snapshot (about 360 bytes), Nchan the published body (about 50), and the "
        "reader's cost grows with the bytes it reads")
    args = parser.parse_args()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit[1], limit[1]))
    summary = run(args)
    print(f"delivered {summary['delivered']} of {summary['expected']}; latency p50 "
          f"{summary['lat_p50_ms']} p99 {summary['lat_p99_ms']} ms; ack p99 "
          f"{summary['ack_p99_ms']} ms; missed final {summary['missed_final']}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
