"""Reload benchmark: ``python -m bench.reload [--out DIR] [options]`` (see bench/README.md).

For each server (stock gunicorn HUP, uvicorn --workers SIGHUP, rollover HUP, and the WSGI
variants on gthread) and each scenario (a good reload, a bad deploy, a reload with one
open SSE stream), it starts the server on a freshly written app, runs a closed-loop load,
deploys the next version mid-load and sends HUP, and measures what the clients saw. The
recycle scenario sends no HUP: the server runs with --max-requests (uvicorn:
--limit-max-requests) under the same load, and its workers recycle (bench/recycle.py).

Outputs in --out: results.json, results.md, timeline.png, timelines/*.csv (every
request), logs/*.log (every server's log).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench import metrics, recycle
from bench.app import AppCode
from bench.load import Load, Record, Stream
from bench.report import markdown, plot
from bench.servers import BASELINE, SERVER_NAMES, SPECS, RollEnd, Server

SCENARIOS = ("reload", "bad", "stream", "recycle")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: The recycle scenario's defaults (see bench/README.md for why these values).
MAX_REQUESTS = 1000
MAX_REQUESTS_JITTER = 200
RECYCLE_DURATION = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    servers: tuple[str, ...]
    scenarios: tuple[str, ...]
    workers: int
    boot: float
    cpu_boot: bool
    clients: int
    duration: float
    warmup: float
    hup_at: float
    tail: float
    think: float
    timeout: float
    graceful_timeout: float
    max_after: float
    client_retry: bool
    max_requests: int = 0
    max_requests_jitter: int = 0
    recycle_duration: float = 30.0

    @property
    def keepalive_clients(self) -> int:
        return (self.clients + 1) // 2


# ---------------------------------------------------------------------------- monitor


class Monitor(threading.Thread):
    """Samples the server's process tree RSS every 0.1 s and, after the HUP, watches for
    the end of the roll and for the last old worker to be gone (every 20 ms)."""

    def __init__(self, server: Server) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.server = server
        self.samples: list[tuple[float, int, int]] = []  # (t, tree RSS, processes)
        # (t, server tree CPU s, this benchmark's CPU s, whole machine's busy CPU s)
        self.cpu: list[tuple[float, float, float, float]] = []
        self._me = psutil.Process()
        self.hup_at: float | None = None
        self.roll_end: RollEnd | None = None
        self.old_gone_at: float | None = None
        self.master_exit: tuple[float, int] | None = None  # (when, exit code)
        self.boots: dict[int, dict[str, float]] = {}  # rollover: new workers' fork / READY
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        last_sample = 0.0
        while not self._stop_event.wait(0.02):
            now = time.monotonic()
            try:
                if now - last_sample >= 0.1:
                    rss, procs, tree_cpu = self.server.tree_usage()
                    self.samples.append((now, rss, procs))
                    mine = self._me.cpu_times()
                    machine = psutil.cpu_times()
                    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
                    busy -= getattr(machine, "guest", 0.0) + getattr(machine, "guest_nice", 0.0)
                    if tree_cpu > 0:
                        self.cpu.append((now, tree_cpu, mine.user + mine.system, busy))
                    last_sample = now
                if self.hup_at is not None:
                    if self.roll_end is None:
                        self.roll_end = self.server.poll_roll()
                        if self.server.spec.family == "rollover":
                            self.server.new_worker_boots(self.boots)
                    if self.old_gone_at is None and self.server.old_left() == 0:
                        self.old_gone_at = time.monotonic()
                    code = self.server.returncode()
                    if self.master_exit is None and code is not None:
                        self.master_exit = (time.monotonic(), code)
            except Exception as exc:  # keep sampling; report what went wrong
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


# ---------------------------------------------------------------------------- a scenario


def _rel(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 3)



async def tear_down(server: Server, monitor: Monitor, load: Load | None, logs: Path,
                    label: str, stream: Stream | None = None) -> dict[str, Any]:
    """Stop the load (and stream) and the server, keep its log as `logs/<label>.log`;
    the server's settings, read before it stopped."""
    monitor.stop()
    if load is not None and load.stop_requested_at is None:
        await load.stop()
    if stream is not None:
        await stream.stop()
    settings = server.settings()
    await asyncio.to_thread(server.stop)
    logs.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        shutil.copyfile(server.log_path, logs / f"{label}.log")
    return settings

async def run_scenario(
    name: str, scenario: str, cfg: Config, workroot: Path, outdir: Path
) -> dict[str, Any]:
    """Run one server through one scenario; the result dict plus the raw timeline."""
    spec = SPECS[name]
    workdir = workroot / f"{name}-{scenario}"
    workdir.mkdir(parents=True)
    app = AppCode(workdir / "app", boot=cfg.boot, cpu=cfg.cpu_boot)
    app.write("1")
    server = Server(spec, workdir, app, workers=cfg.workers, graceful_timeout=cfg.graceful_timeout)
    start_timeout = 30 + 3 * cfg.boot * cfg.workers
    result: dict[str, Any] = {
        "server": name,
        "scenario": scenario,
        "worker_class": spec.worker_class,
    }
    monitor = Monitor(server)
    load: Load | None = None
    stream: Stream | None = None
    try:
        await asyncio.to_thread(server.start, start_timeout)
        result["argv"] = shlex.join(server.argv())
        monitor.start()
        max_load = cfg.hup_at + cfg.max_after + 5
        load = Load(
            server.port,
            clients=cfg.clients,
            think=cfg.think,
            timeout=cfg.timeout,
            max_seconds=max_load,
            retry=cfg.client_retry,
        )
        if scenario == "stream":
            stream = Stream(server.port, max_seconds=max_load + 10, read_timeout=cfg.timeout)
            stream.start()
            if not await stream.opened(5):
                raise RuntimeError(f"the stream did not open: {stream.record.outcome}")
        load.start()
        await asyncio.sleep(max(0.0, load.started_at + cfg.hup_at - time.monotonic()))

        # Deploy the next version (or a broken one), then HUP.
        app.write("2", fail=scenario == "bad")
        hup = await asyncio.to_thread(server.hup)
        monitor.hup_at = hup

        def first_new() -> float | None:
            ends = [r.end for r in load.records if r.ok and r.version == "2"] if load else []
            return min(ends) if ends else None

        min_stop = load.started_at + cfg.duration
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if now >= hup + cfg.max_after:
                break
            roll = monitor.roll_end
            if now < min_stop or roll is None or now < roll.at + cfg.tail:
                continue
            new = first_new()
            rolled = scenario != "bad" and roll.result != "aborted"
            if rolled and new is None:
                continue  # stock servers: old workers gone, new ones not serving yet
            if rolled and (monitor.old_gone_at is None or now < monitor.old_gone_at + cfg.tail):
                continue  # rollover: the last retired worker is still draining
            if new is not None and now < new + cfg.tail:
                continue
            break
        await load.stop()
        load_stop = load.stop_requested_at or time.monotonic()
        if stream is not None:
            await stream.stop()
        # A roll still going (e.g. held up by the stream): wait for it, without load.
        deadline = time.monotonic() + cfg.workers * cfg.boot + cfg.graceful_timeout + 10
        while monitor.roll_end is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # one more RSS sample / old-worker check
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {name}/{scenario}: ERROR {result['error']}", file=sys.stderr)
        return {"result": result, "records": []}
    finally:
        settings = await tear_down(server, monitor, load, outdir / "logs",
                                   f"{name}-{scenario}", stream)

    records = sorted(load.records, key=lambda r: r.start)
    result.update(analyse(cfg, scenario, records, load.started_at, hup, load_stop, monitor))
    result["settings"] = settings
    if stream is not None:
        result["stream"] = stream_summary(stream, hup)
    if monitor.errors:
        result["monitor_errors"] = monitor.errors
    result["timeline_csv"] = write_timeline(outdir, name, scenario, records, hup)
    rel = [(r.start - hup, r.end - hup, r.ok) for r in records]
    return {"result": result, "records": rel}


async def run_recycle(name: str, cfg: Config, workroot: Path, outdir: Path) -> dict[str, Any]:
    """The recycle scenario: no HUP, no new code; the server runs with max_requests under
    the load for warm-up + recycle_duration seconds and its workers recycle (see
    bench/recycle.py). Times in the timeline are relative to the end of the warm-up."""
    spec = SPECS[name]
    scenario = "recycle"
    workdir = workroot / f"{name}-{scenario}"
    workdir.mkdir(parents=True)
    app = AppCode(workdir / "app", boot=cfg.boot, cpu=cfg.cpu_boot)
    app.write("1")
    server = Server(
        spec,
        workdir,
        app,
        workers=cfg.workers,
        graceful_timeout=cfg.graceful_timeout,
        max_requests=cfg.max_requests,
        max_requests_jitter=cfg.max_requests_jitter,
    )
    result: dict[str, Any] = {
        "server": name,
        "scenario": scenario,
        "worker_class": spec.worker_class,
        "max_requests": cfg.max_requests,
        "max_requests_jitter": cfg.max_requests_jitter,
    }
    monitor = Monitor(server)  # no HUP: RSS and CPU samples only
    load: Load | None = None
    status: dict[str, Any] | None = None
    try:
        await asyncio.to_thread(server.start, 30 + 3 * cfg.boot * cfg.workers)
        result["argv"] = shlex.join(server.argv())
        monitor.start()
        length = cfg.warmup + cfg.recycle_duration
        load = Load(
            server.port,
            clients=cfg.clients,
            think=cfg.think,
            timeout=cfg.timeout,
            max_seconds=length + 5,
            max_requests=1_000_000,
            retry=cfg.client_retry,
        )
        load.start()
        await asyncio.sleep(max(0.0, load.started_at + length - time.monotonic()))
        await load.stop()
        load_stop = load.stop_requested_at or time.monotonic()
        await asyncio.sleep(0.2)  # one more sample
        status = server.status()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {name}/{scenario}: ERROR {result['error']}", file=sys.stderr)
        return {"result": result, "records": []}
    finally:
        settings = await tear_down(server, monitor, load, outdir / "logs",
                                   f"{name}-{scenario}")

    records = sorted(load.records, key=lambda r: r.start)
    window_start = load.started_at + cfg.warmup
    result.update(recycle.analyse(records, load.started_at, window_start, load_stop, monitor.cpu))
    result["recycles"] = recycle.count_recycles(server.log_text(), status)
    result["settings"] = settings
    if monitor.errors:
        result["monitor_errors"] = monitor.errors
    result["timeline_csv"] = write_timeline(outdir, name, scenario, records, window_start)
    rel = [(r.start - window_start, r.end - window_start, r.ok) for r in records]
    return {"result": result, "records": rel}


def analyse(
    cfg: Config,
    scenario: str,
    records: list[Record],
    load_start: float,
    hup: float,
    load_stop: float,
    monitor: Monitor,
) -> dict[str, Any]:
    steady_from = load_start + cfg.warmup
    steady = [r for r in records if steady_from <= r.start < hup]
    during = [r for r in records if r.end >= hup and r.start <= load_stop]
    after_hup = [r for r in records if r.start >= hup]
    steady_buckets = metrics.buckets(records, hup, steady_from, hup)
    reload_buckets = metrics.buckets(records, hup, hup, load_stop)
    steady_mean = sum(steady_buckets) / len(steady_buckets) if steady_buckets else 0.0
    steady_min = min(steady_buckets) if steady_buckets else None
    reload_min = min(reload_buckets) if reload_buckets else None
    roll = monitor.roll_end
    n_boot = cfg.workers * cfg.boot
    new_ends = [r.end for r in records if r.ok and r.version == "2"]
    first_new = min(new_ends) if new_ends else None
    old_ends = [r.end for r in records if r.ok and r.version == "1" and r.end >= hup]
    last_old = max(old_ends) if old_ends else None
    roll_end_at = roll.at if roll is not None else None
    after_roll = [r for r in records if r.ok and roll_end_at is not None and r.start >= roll_end_at]
    failed_after = metrics.failures(after_hup)
    failed_after["fraction"] = (
        round(failed_after["total"] / len(after_hup), 4) if after_hup else None
    )
    return {
        "requests": len(records),
        "answered": sum(1 for r in records if r.ok),
        "failed": metrics.failures(records),
        "failed_after_hup": failed_after,
        "latency": {"steady": metrics.latency(steady), "reload": metrics.latency(during)},
        "throughput": {
            "bucket_s": metrics.BUCKET,
            "steady_mean_per_s": round(steady_mean / metrics.BUCKET, 1),
            "reload_min_per_s": None if reload_min is None else reload_min / metrics.BUCKET,
            "ratio": (
                round(reload_min / steady_mean, 3)
                if reload_min is not None and steady_mean
                else None
            ),
            # The same statistic within the steady window: the noise floor of this run.
            "steady_min_ratio": (
                round(steady_min / steady_mean, 3)
                if steady_min is not None and steady_mean
                else None
            ),
        },
        "roll": {
            # duration_s: rollover's own (status: finished - started); for the others,
            # the same as ended_after_hup_s (HUP -> last old worker gone / abort / halt).
            "result": roll.result if roll else None,
            "detail": roll.detail if roll else "",
            "duration_s": round(roll.duration, 3) if roll else None,
            "per_n_boot": round(roll.duration / n_boot, 3) if roll and n_boot else None,
            "ended_after_hup_s": _rel(roll_end_at, hup),
            "ended_after_hup_per_n_boot": (
                round((roll_end_at - hup) / n_boot, 3)
                if roll_end_at is not None and n_boot
                else None
            ),
            "old_workers_gone_after_hup_s": _rel(monitor.old_gone_at, hup),
            # rollover: each new worker's fork -> READY (status file), in roll order.
            "new_worker_boot_s": [
                round(b["ready"] - b["created"], 3)
                for _, b in sorted(monitor.boots.items(), key=lambda kv: kv[1].get("created", 0))
                if "ready" in b and "created" in b
            ],
            "ended_after_load_stop": roll_end_at is not None and roll_end_at > load_stop,
            "master_exit": (
                None
                if monitor.master_exit is None
                else {
                    "after_hup_s": _rel(monitor.master_exit[0], hup),
                    "code": monitor.master_exit[1],
                }
            ),
        },
        "first_new_answer_s": _rel(first_new, hup),
        "last_old_answer_s": _rel(last_old, hup),
        "longest_gap_s": round(metrics.longest_gap(records, hup, load_stop), 3),
        "versions_after_roll": dict(Counter(r.version for r in after_roll)),
        "rss": metrics.rss_ratio(monitor.samples, hup, steady_from),
        "cpu_cores": {
            "steady": metrics.cpu_use(monitor.cpu, steady_from, hup),
            "reload": metrics.cpu_use(monitor.cpu, hup, load_stop),
        },
        "times": {
            "load_start_s": _rel(load_start, hup),
            "steady_from_s": _rel(steady_from, hup),
            "load_stop_s": _rel(load_stop, hup),
        },
        "series": metrics.series(records, hup, load_start, load_stop),
    }


def stream_summary(stream: Stream, hup: float) -> dict[str, Any]:
    rec = stream.record
    versions: list[str] = []
    pids: list[int] = []
    for _, version, pid in rec.events:
        if not versions or versions[-1] != version:
            versions.append(version)
        if not pids or pids[-1] != pid:
            pids.append(pid)
    return {
        "outcome": rec.outcome,
        "cut": rec.cut,
        "events": len(rec.events),
        "versions": versions,
        "pids": pids,
        "opened_after_hup_s": _rel(rec.start, hup),
        "ended_after_hup_s": _rel(rec.end, hup),
    }


def write_timeline(
    outdir: Path, name: str, scenario: str, records: list[Record], hup: float
) -> str:
    """Every request as CSV, times in seconds relative to the HUP; returns the path."""
    directory = outdir / "timelines"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}-{scenario}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["client", "keepalive", "start", "end", "kind", "version", "pid"])
        for r in records:
            writer.writerow(
                [
                    r.client,
                    int(r.keepalive),
                    f"{r.start - hup:.4f}",
                    f"{r.end - hup:.4f}",
                    r.kind,
                    r.version or "",
                    r.pid or "",
                ]
            )
    return str(path.relative_to(outdir))


# ---------------------------------------------------------------------------- targets


def evaluate_targets(cfg: Config, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for each rollover variant, against its stock baseline."""
    by_key = {
        (r["server"], r["scenario"]): r
        for r in results
        if not r.get("error") and r["scenario"] != "recycle"  # no HUP: no roll targets
    }
    out = []
    for (server, scenario), r in by_key.items():
        if server not in BASELINE:
            continue
        stock = by_key.get((BASELINE[server], scenario))
        settings = r.get("settings") or {}
        surge = int(settings.get("max_surge") or 1)
        draining = int(settings.get("max_draining") or 1)
        worst = r["latency"]["reload"]["max_ms"]
        stock_worst = stock["latency"]["reload"]["max_ms"] if stock else None
        stretch = 3 * r["latency"]["steady"]["p99_ms"]
        roll_limit = cfg.workers * cfg.boot + 1
        roll_s = r["roll"]["ended_after_hup_s"]  # strict: from the HUP, preparation included
        roll_applies = scenario != "bad"
        rss_limit = (cfg.workers + surge + draining) / cfg.workers + 0.10
        rss = r["rss"]["ratio"]
        ratio = r["throughput"]["ratio"]
        checks = {
            "no_failures": {"ok": r["failed"]["total"] == 0, "value": r["failed"]["total"]},
            "worst_latency": {
                "ok": None if stock_worst is None else worst <= stock_worst / 10,
                "value": worst,
                "limit": None if stock_worst is None else stock_worst / 10,
                "baseline": BASELINE[server],
            },
            "worst_latency_stretch": {"ok": worst <= stretch, "value": worst, "limit": stretch},
            "throughput": {"ok": None if ratio is None else ratio >= 0.9, "value": ratio},
            "roll_duration": {
                "ok": (roll_s is not None and roll_s <= roll_limit) if roll_applies else None,
                "value": roll_s,
                "limit": roll_limit,
                "own_duration_s": r["roll"]["duration_s"],
                "result": r["roll"]["result"],
            },
            "rss": {
                "ok": None if rss is None else rss <= rss_limit,
                "value": rss,
                "limit": round(rss_limit, 3),
            },
        }
        out.append({"server": server, "scenario": scenario, "checks": checks})
    order = {s: i for i, s in enumerate(SCENARIOS)}
    return sorted(out, key=lambda t: (SERVER_NAMES.index(t["server"]), order[t["scenario"]]))


# ---------------------------------------------------------------------------- run


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    out = {}
    for dist in ("gunicorn", "uvicorn", "uvicorn-worker", "gunicorn-rollover", "aiohttp"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


async def run_all(cfg: Config, outdir: Path, workroot: Path) -> list[dict[str, Any]]:
    runs = []
    total = len(cfg.servers) * len(cfg.scenarios)
    index = 0
    for scenario in cfg.scenarios:
        for name in cfg.servers:
            index += 1
            t0 = time.monotonic()
            print(f"[{index}/{total}] {name} / {scenario} ...", file=sys.stderr, flush=True)
            if scenario == "recycle":
                run = await run_recycle(name, cfg, workroot, outdir)
                r = run["result"]
                if not r.get("error"):
                    print(
                        f"  {time.monotonic() - t0:.1f}s: {r['requests']} requests, "
                        f"{r['failed']['total']} failed {r['failed']['by_kind']}, latency "
                        f"p99 {r['latency']['window']['p99_ms']:.0f} / max "
                        f"{r['latency']['window']['max_ms']:.0f} ms, min bucket "
                        f"{r['throughput']['ratio']} of median, recycles "
                        f"{r['recycles']['total']}",
                        file=sys.stderr,
                        flush=True,
                    )
                runs.append(run)
                continue
            run = await run_scenario(name, scenario, cfg, workroot, outdir)
            r = run["result"]
            if not r.get("error"):
                print(
                    f"  {time.monotonic() - t0:.1f}s: {r['requests']} requests, "
                    f"{r['failed']['total']} failed {r['failed']['by_kind']}, worst "
                    f"{r['latency']['reload']['max_ms']:.0f} ms, min bucket "
                    f"{r['throughput']['ratio']}, roll {r['roll']['result']} "
                    f"{r['roll']['duration_s']} s, rss x{r['rss']['ratio']}",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(run)
    return runs


def parse_args(argv: list[str] | None) -> tuple[Config, Path, bool, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reload",
        description="Reload benchmark: stock gunicorn vs uvicorn --workers vs rollover.",
    )
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<stamp>)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_NAMES),
        help=f"comma-separated, from {', '.join(SERVER_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=(
            "comma-separated, from reload, bad (bad deploy), stream, recycle (default: all four)"
        ),
    )
    parser.add_argument("--workers", type=int, default=4, help="N workers (default 4)")
    parser.add_argument("--boot", type=float, default=2.0, help="import-time boot seconds (2)")
    parser.add_argument("--cpu-boot", action="store_true", help="spin a core while booting")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (8)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="minimum seconds of load per scenario (10)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted (1)")
    parser.add_argument("--hup-at", type=float, default=5.0, help="HUP this far into the load (5)")
    parser.add_argument(
        "--tail", type=float, default=1.5, help="load kept this long after the roll ended (1.5)"
    )
    parser.add_argument("--think", type=float, default=0.02, help="client pause, s (0.02)")
    parser.add_argument("--timeout", type=float, default=10.0, help="request timeout, s (10)")
    parser.add_argument(
        "--graceful-timeout", type=float, default=5.0, help="drain limit for every server, s (5)"
    )
    parser.add_argument(
        "--max-after",
        type=float,
        help="hard cap on load seconds after the HUP (default 2*N*boot + graceful + 10)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=MAX_REQUESTS,
        help=f"recycle scenario: gunicorn's --max-requests (uvicorn: --limit-max-requests) "
        f"({MAX_REQUESTS})",
    )
    parser.add_argument(
        "--max-requests-jitter",
        type=int,
        default=MAX_REQUESTS_JITTER,
        help=f"recycle scenario: gunicorn's --max-requests-jitter (uvicorn: "
        f"--limit-max-requests-jitter) ({MAX_REQUESTS_JITTER})",
    )
    parser.add_argument(
        "--recycle-duration",
        type=float,
        default=RECYCLE_DURATION,
        help=f"recycle scenario: seconds of load measured after the warm-up ({RECYCLE_DURATION:g})",
    )
    parser.add_argument(
        "--client-retry",
        action="store_true",
        help="let aiohttp retry a request once on a closed keep-alive connection",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI smoke: rollover, one reload (or the --scenarios given, e.g. recycle), seconds",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scenario work dirs")
    args = parser.parse_args(argv)
    if args.smoke:  # one server, one scenario, a few seconds (CI)
        args.servers, args.scenarios = "rollover", args.scenarios or "reload"
        args.workers, args.boot, args.clients = 2, 0.2, 4
        args.duration, args.warmup, args.hup_at, args.tail = 2.0, 0.3, 1.0, 0.3
        args.recycle_duration, args.max_requests, args.max_requests_jitter = 3.0, 100, 20
    if args.scenarios is None:
        args.scenarios = ",".join(SCENARIOS)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    for s in servers:
        if s not in SPECS:
            parser.error(f"unknown server {s!r} (choose from {', '.join(SERVER_NAMES)})")
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    if args.workers < 1 or args.clients < 1 or args.boot < 0:
        parser.error("--workers and --clients must be >= 1, --boot >= 0")
    if args.hup_at <= args.warmup:
        parser.error("--hup-at must be later than --warmup")
    if args.max_requests < 0 or args.max_requests_jitter < 0 or args.recycle_duration <= 0:
        parser.error("--max-requests and its jitter must be >= 0, --recycle-duration > 0")
    max_after = args.max_after
    if max_after is None:
        max_after = 2 * args.workers * args.boot + args.graceful_timeout + 10
    cfg = Config(
        servers=tuple(sorted(servers, key=SERVER_NAMES.index)),
        scenarios=tuple(sorted(scenarios, key=SCENARIOS.index)),
        workers=args.workers,
        boot=args.boot,
        cpu_boot=args.cpu_boot,
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        hup_at=args.hup_at,
        tail=args.tail,
        think=args.think,
        timeout=args.timeout,
        graceful_timeout=args.graceful_timeout,
        max_after=max_after,
        client_retry=args.client_retry,
        max_requests=args.max_requests,
        max_requests_jitter=args.max_requests_jitter,
        recycle_duration=args.recycle_duration,
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = args.out or RESULTS_DIR / (stamp + ("-smoke" if args.smoke else ""))
    return cfg, outdir, args.keep_tmp, args


def main(argv: list[str] | None = None) -> int:
    cfg, outdir, keep_tmp, _ = parse_args(argv)
    outdir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        ["python", "-m", "bench.reload", *(sys.argv[1:] if argv is None else argv)]
    )
    meta: dict[str, Any] = {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "versions": versions(),
        "config": {
            **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "keepalive_clients": cfg.keepalive_clients,
        },
        "worker_classes": {name: SPECS[name].worker_class for name in cfg.servers},
    }
    load1 = os.getloadavg()[0]
    if load1 > (os.cpu_count() or 1):
        print(
            f"note: load average {load1:.1f} on {os.cpu_count()} cores: other work is running, "
            "figures will be noisy (compare ratios within this run only)",
            file=sys.stderr,
        )
    workroot = Path(tempfile.mkdtemp(prefix="rollover-bench-"))
    t0 = time.monotonic()
    try:
        runs = asyncio.run(run_all(cfg, outdir, workroot))
    finally:
        if keep_tmp:
            print(f"work dirs kept in {workroot}", file=sys.stderr)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = [run["result"] for run in runs]
    targets = evaluate_targets(cfg, results)

    png = outdir / "timeline.png"
    try:
        what = "Reload under load"
        if "recycle" in cfg.scenarios:
            limit = f"max_requests {cfg.max_requests} + 0..{cfg.max_requests_jitter}"
            only = cfg.scenarios == ("recycle",)
            what = f"Recycling ({limit}) under load" if only else f"{what}; recycle: {limit}"
        title = (
            f"{what}: {cfg.workers} workers, {cfg.boot:g} s boot, "
            f"{cfg.clients} clients ({meta['machine']['cores']} cores, {meta['started']})"
        )
        plot(png, runs, cfg.servers, cfg.scenarios, title)
        meta["png"] = str(png)
    except ImportError as exc:  # matplotlib is optional: table and JSON still get written
        meta["png"] = None
        meta["png_skipped"] = f"matplotlib not available ({exc})"
        print(f"no PNG: {meta['png_skipped']}", file=sys.stderr)

    out_json = outdir / "results.json"
    out_md = outdir / "results.md"
    out_json.write_text(
        json.dumps({"meta": meta, "results": results, "targets": targets}, indent=1) + "\n",
        encoding="utf-8",
    )
    out_md.write_text(markdown(meta, results, targets), encoding="utf-8")
    print(f"results: {out_json}\ntable:   {out_md}\ntimeline: {meta['png']}", file=sys.stderr)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
