"""Smoke test of the reload benchmark (bench/): it runs and writes its three outputs.

Not a timed test: `python -m bench.reload --smoke` runs rollover through one reload under
load for a few seconds; only the outputs' presence and shape are checked, never the
figures. The benchmark needs aiohttp and psutil (the `bench` extra); matplotlib is
optional: without it no PNG is written, and the PNG is only checked when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.process


def test_bench_smoke_writes_json_table_and_png(tmp_path: Path) -> None:
    missing = [m for m in ("aiohttp", "psutil") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"the benchmark needs {', '.join(missing)}: install the bench extra "
            "(pip install -e '.[asgi,test,bench]')"
        )
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reload", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"

    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {"meta", "results", "targets"} <= set(data)
    assert {"command", "machine", "versions", "config", "png"} <= set(data["meta"])
    (result,) = data["results"]
    assert result["server"] == "rollover" and result["scenario"] == "reload"
    assert "error" not in result, result.get("error")
    for key in (
        "requests",
        "failed",
        "failed_after_hup",
        "latency",
        "throughput",
        "roll",
        "first_new_answer_s",
        "longest_gap_s",
        "rss",
        "timeline_csv",
    ):
        assert key in result, key
    assert {"total", "by_kind", "keepalive", "new_connection"} <= set(result["failed"])
    for window in ("steady", "reload"):
        assert {"n", "p50_ms", "p99_ms", "max_ms"} <= set(result["latency"][window])
    assert {"steady_mean_per_s", "reload_min_per_s", "ratio"} <= set(result["throughput"])
    assert {"result", "duration_s", "per_n_boot", "ended_after_hup_s"} <= set(result["roll"])
    assert {"steady_mb", "peak_mb", "ratio"} <= set(result["rss"])
    assert result["requests"] > 0 and result["answered"] > 0
    assert result["roll"]["result"] is not None, "the benchmark did not see the roll end"
    assert (out / result["timeline_csv"]).stat().st_size > 0
    (target,) = data["targets"]
    assert {"no_failures", "worst_latency", "throughput", "roll_duration", "rss"} <= set(
        target["checks"]
    )

    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| rollover | reload |" in table

    png = out / "timeline.png"
    if has_matplotlib:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png.exists() and data["meta"]["png"] is None
