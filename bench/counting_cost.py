"""What counting requests costs (the canary's and the recycling limits' per-request counts).

One-off measurement (not run by CI):

    .venv/bin/python -m bench.counting_cost [--seconds 10] [--rounds 3] [--workers 4]

A rollover master (`-k gthread`, a plain WSGI app answering a small JSON body) is started
with counting on (the default: `rollover_canary` on) and off (`ROLLOVER_CANARY=0`, no
recycling limit: the app is not wrapped and no reporter thread runs), alternately, `rounds`
times each. Each run drives `clients` closed-loop keep-alive clients (threads, no pause) for
`seconds`, and reports requests per second, p50 and p99 latency; the medians per setting
are printed, with the difference.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

APP = """\
import json, os

def app(environ, start_response):
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the master did not serve")


def drive(port: int, clients: int, seconds: float) -> list[float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        out = latencies[index]
        while not stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            out.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(15)
    return sorted(v for per in latencies for v in per)


def run(workdir: Path, counting: bool, args: argparse.Namespace) -> tuple[float, float, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOVER_")}
    env["ROLLOVER_CANARY"] = "1" if counting else "0"
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "-c", "python:rollover.hooks", "-k", "gthread", "-w", str(args.workers),
         "-b", f"127.0.0.1:{port}", "--chdir", str(workdir), "--log-level", "warning",
         "app:app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        serving(port, time.monotonic() + 30)
        time.sleep(1.0)  # every worker up
        values = drive(port, args.clients, args.seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rate = len(values) / args.seconds
    return rate, values[len(values) // 2], values[int(len(values) * 0.99)]


def per_call() -> tuple[float, float]:
    """Microseconds per call of a WSGI app, bare and wrapped as a counting worker wraps it
    (count, status class, the canary window's board read)."""
    import timeit

    from rollover.worker import spread
    from rollover.worker.counting import Tally, counted_wsgi

    namespace: dict[str, object] = {}
    exec(APP, namespace)
    app = namespace["app"]
    spread.create()
    wrapped = counted_wsgi(app, Tally(), spread.Spreader().should_close)  # type: ignore[arg-type]
    environ: dict[str, object] = {}

    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        return None

    number = 200_000
    bare = min(timeit.repeat(lambda: app(environ, start_response), number=number, repeat=5))  # type: ignore[operator]
    counted = min(timeit.repeat(lambda: wrapped(environ, start_response), number=number,
                                repeat=5))
    return bare / number * 1e6, counted / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(APP)
        results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for counting in (True, False):
                results[counting].append(run(workdir, counting, args))
                rate, p50, p99 = results[counting][-1]
                print(f"counting {'on ' if counting else 'off'}: {rate:7.0f} req/s  "
                      f"p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms", flush=True)
    medians = {c: tuple(statistics.median(r[i] for r in results[c]) for i in range(3))
               for c in results}
    on, off = medians[True], medians[False]
    print(f"\nmedians of {args.rounds} runs, {args.workers} gthread workers, "
          f"{args.clients} keep-alive clients, {args.seconds:g} s each:")
    print("| counting | req/s | p50 | p99 |\n| --- | --- | --- | --- |")
    for label, (rate, p50, p99) in (("on", on), ("off", off)):
        print(f"| {label} | {rate:.0f} | {p50 * 1000:.3f} ms | {p99 * 1000:.3f} ms |")
    print(f"| difference | {(on[0] / off[0] - 1) * 100:+.1f}% | "
          f"{(on[1] - off[1]) * 1e6:+.0f} µs | {(on[2] - off[2]) * 1e6:+.0f} µs |")
    bare, counted = per_call()
    print(f"\nper call, in-process: the app {bare:.2f} µs, counted {counted:.2f} µs "
          f"(+{counted - bare:.2f} µs per request)")


if __name__ == "__main__":
    main()
