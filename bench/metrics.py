"""Figures computed from one scenario's timeline (all times are time.monotonic()).

- steady window: [load start + warmup, HUP); reload window: [HUP, load stop].
- latency: end - start of every attempt (answered or failed), as a client experiences it;
  "during the reload" means every request in flight at some point of the reload window.
- throughput: answered (ok) requests completed per 0.5 s bucket; buckets are aligned on the
  HUP and only whole buckets count. Steady mean = mean of the steady buckets; the reload
  figure is the lowest bucket of the reload window.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from bench.load import Record

BUCKET = 0.5


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def latency(records: Iterable[Record]) -> dict[str, float | int]:
    """{"n", "p50_ms", "p99_ms", "max_ms"} over the given records."""
    values = sorted(r.latency for r in records)
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round((values[-1] if values else 0.0) * 1000, 2),
    }


def buckets(records: Iterable[Record], origin: float, start: float, stop: float) -> list[int]:
    """Answered requests per whole BUCKET in [start, stop), buckets aligned on `origin`."""
    first = math.ceil((start - origin) / BUCKET - 1e-9)
    last = math.floor((stop - origin) / BUCKET + 1e-9)  # exclusive
    if last <= first:
        return []
    counts = [0] * (last - first)
    for r in records:
        if not r.ok:
            continue
        index = math.floor((r.end - origin) / BUCKET) - first
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def series(records: Sequence[Record], origin: float, start: float, stop: float) -> dict[str, Any]:
    """Throughput (req/s) and failures per whole bucket in [start, stop], for the plot.

    Times are bucket starts relative to `origin` (the HUP).
    """
    first = math.ceil((start - origin) / BUCKET - 1e-9)
    last = math.floor((stop - origin) / BUCKET + 1e-9)
    n = max(0, last - first)
    ok = [0] * n
    failed = [0] * n
    for r in records:
        index = math.floor((r.end - origin) / BUCKET) - first
        if 0 <= index < n:
            if r.ok:
                ok[index] += 1
            else:
                failed[index] += 1
    return {
        "t": [round((first + i) * BUCKET, 3) for i in range(n)],
        "ok_per_s": [c / BUCKET for c in ok],
        "failed": failed,
    }


def longest_gap(records: Iterable[Record], start: float, stop: float) -> float:
    """Longest time within [start, stop] with no answered request completing."""
    ends = sorted(r.end for r in records if r.ok and start <= r.end <= stop)
    points = [start, *ends, stop]
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


def failures(records: Iterable[Record]) -> dict[str, Any]:
    """Failed attempts: total, by kind, by client type."""
    failed = [r for r in records if not r.ok]
    return {
        "total": len(failed),
        "by_kind": dict(Counter(r.kind for r in failed).most_common()),
        "keepalive": sum(1 for r in failed if r.keepalive),
        "new_connection": sum(1 for r in failed if not r.keepalive),
    }


def rss_ratio(
    samples: Sequence[tuple[float, int, int]], hup: float, steady_from: float
) -> dict[str, Any]:
    """Steady (median) and peak total RSS of the process tree; samples are (t, rss, procs)."""
    steady = [rss for t, rss, _ in samples if steady_from <= t < hup and rss > 0]
    after = [(rss, procs) for t, rss, procs in samples if t >= hup and rss > 0]
    if not steady or not after:
        return {"steady_mb": None, "peak_mb": None, "ratio": None, "peak_procs": None}
    base = statistics.median(steady)
    peak = max(rss for rss, _ in after)
    return {
        "steady_mb": round(base / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1),
        "ratio": round(peak / base, 3),
        "peak_procs": max(procs for _, procs in after),
    }


def cpu_use(
    samples: Sequence[tuple[float, float, float, float]], start: float, stop: float
) -> dict[str, float | None]:
    """Mean CPU use in cores over [start, stop]: the server's process tree, this benchmark
    (load generator and monitor), and everything else on the machine (other work: noise).

    Samples are (t, server CPU s, benchmark CPU s, machine busy CPU s), cumulative.
    """
    inside = [s for s in samples if start <= s[0] <= stop]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
        return {"server": None, "bench": None, "other": None}
    first, last = inside[0], inside[-1]
    dt = last[0] - first[0]
    server = (last[1] - first[1]) / dt
    bench = (last[2] - first[2]) / dt
    machine = (last[3] - first[3]) / dt
    return {
        "server": round(server, 2),
        "bench": round(bench, 2),
        "other": round(max(0.0, machine - server - bench), 2),
    }
