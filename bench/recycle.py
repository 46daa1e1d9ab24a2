"""The recycle scenario's figures: worker recycling at max_requests under steady load.

No HUP and no new code: the server runs with gunicorn's ``--max-requests`` /
``--max-requests-jitter`` (uvicorn: ``--limit-max-requests`` / ``--limit-max-requests-jitter``)
for the whole window, so each worker reaches its limit several times. Stock gunicorn and
uvicorn: the worker exits at its limit and only then is a replacement started, which must
boot. rollover: the worker asks for a replacement, serves on, and is retired once the
replacement is READY.

The window is [load start + warm-up, load stop]; times in the timeline are relative to its
start. Throughput: answered requests per whole 0.5 s bucket of the window (buckets aligned
on its start); the lowest bucket is compared with the median bucket of the same window
(recycles happen all along it, so there is no separate steady window).

Recycles are counted from the server's log (its whole run, start-up and shut-down
included):

- a worker exiting at its limit: gunicorn's sync/gthread ``Autorestarting worker after
  current request.`` (once per worker pid: gthread's threads may each log it), uvicorn's
  (standalone, and gunicorn's uvicorn worker) ``Maximum request limit of N exceeded``;
- rollover: ``recycling worker <pid> (generation G): its replacement is READY``, its
  ``without a replacement`` retirements, and the ``worker <pid> asks to be replaced``
  requests (asked but not yet recycled at the end: rollover was behind).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from bench import metrics
from bench.load import Record

EXIT_AT_LIMIT = ("Autorestarting worker after current request.", "Maximum request limit of")
_READY_FIRST = re.compile(r"recycling worker (\d+) \(generation \d+\): its replacement is READY")
_NO_REPLACEMENT = re.compile(r"recycling worker (\d+) without a replacement")
_ASKED = re.compile(r"worker (\d+) asks to be replaced \(([^)]*)\)")
_EXITED_FIRST = re.compile(r"worker (\d+) .* before a replacement was READY")
_GUNICORN_PID = re.compile(r"^\[[^]]*\] \[(\d+)\] ")  # "[time] [pid] [LEVEL] message"


def count_recycles(log: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recycles seen in a server's log (see the module docstring); `status`: rollover's
    status file at the end, whose `recycles` total is kept as a cross-check."""
    lines = log.splitlines()
    # One per worker: gthread's threads can each log "Autorestarting" for the same worker.
    exits = len(
        {
            m.group(1) if (m := _GUNICORN_PID.match(line)) else f"line {i}"
            for i, line in enumerate(lines)
            if any(p in line for p in EXIT_AT_LIMIT)
        }
    )
    ready_first = {m.group(1) for line in lines if (m := _READY_FIRST.search(line))}
    without = {m.group(1) for line in lines if (m := _NO_REPLACEMENT.search(line))}
    asked = {m.group(1) for line in lines if (m := _ASKED.search(line))}
    exited_first = {m.group(1) for line in lines if (m := _EXITED_FIRST.search(line))}
    out: dict[str, Any] = {
        "total": exits + len(ready_first) + len(without),
        "exit_at_limit": exits,
        "ready_first": len(ready_first),
        "without_replacement": len(without),
        "asked": len(asked),
        "asked_not_recycled": len(asked - ready_first - without - exited_first),
        "exited_before_replacement": len(exited_first),
    }
    if status is not None and isinstance(status.get("recycles"), int):
        out["status_recycles"] = status["recycles"]
    return out


def analyse(
    records: Sequence[Record],
    load_start: float,
    window_start: float,
    load_stop: float,
    cpu: Sequence[tuple[float, float, float, float]],
) -> dict[str, Any]:
    """Figures of one recycle run; `records` sorted by start, times time.monotonic()."""
    window = [r for r in records if r.start >= window_start]
    counts = metrics.buckets(records, window_start, window_start, load_stop)
    median = statistics.median(counts) if counts else 0.0
    lowest = min(counts) if counts else None
    lowest_at = counts.index(lowest) * metrics.BUCKET if lowest is not None else None
    pids = {r.pid for r in window if r.ok and r.pid is not None}
    last: dict[int, float] = {}
    for r in records:
        if r.ok and r.pid is not None:
            last[r.pid] = max(last.get(r.pid, r.end), r.end)
    return {
        "requests": len(records),
        "answered": sum(1 for r in records if r.ok),
        "failed": metrics.failures(records),
        "latency": {"window": metrics.latency(window)},
        "throughput": {
            "bucket_s": metrics.BUCKET,
            "buckets": len(counts),
            "median_per_s": round(median / metrics.BUCKET, 1),
            "mean_per_s": round(sum(counts) / len(counts) / metrics.BUCKET, 1) if counts else None,
            "lowest_per_s": None if lowest is None else lowest / metrics.BUCKET,
            "lowest_at_s": lowest_at,
            "ratio": round(lowest / median, 3) if lowest is not None and median else None,
            "below_0_9": sum(1 for c in counts if c < 0.9 * median),
        },
        "longest_gap_s": round(metrics.longest_gap(records, window_start, load_stop), 3),
        "pids_answering": len(pids),
        # When each worker that went away answered for the last time (its exit or its
        # retirement), from the window start: the plot's recycle marks.
        "worker_last_answers_s": sorted(
            round(t - window_start, 3) for t in last.values() if window_start <= t < load_stop - 1.0
        ),
        "cpu_cores": {"window": metrics.cpu_use(cpu, window_start, load_stop)},
        "times": {
            "load_start_s": round(load_start - window_start, 3),
            "load_stop_s": round(load_stop - window_start, 3),
        },
        "series": metrics.series(records, window_start, load_start, load_stop),
    }
