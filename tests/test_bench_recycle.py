"""The benchmark's recycle scenario (bench/recycle.py): its log counting, and a smoke run.

Not a timed test: `python -m bench.reload --smoke --scenarios recycle` runs rollover with a
small max_requests under load for a few seconds; only the outputs' shape is checked, and
that rollover recycled at least one worker ready-first, never the figures.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

STOCK_GTHREAD_LOG = """\
[2026-12-01 02:43:16 +0000] [27070] [INFO] Autorestarting worker after current request.
[2026-12-01 02:43:16 +0000] [27304] [INFO] Booting worker with pid: 27304
[2026-12-01 02:43:26 +0000] [27076] [INFO] Autorestarting worker after current request.
[2026-12-01 02:43:26 +0000] [27076] [INFO] Autorestarting worker after current request.
"""

UVICORN_LOG = """\
INFO:     Maximum request limit of 1043 exceeded. Terminating process.
INFO:     Child process [31000] died
INFO:     Maximum request limit of 1187 exceeded. Terminating process.
"""

ROLLOVER_LOG = """\
[t] [9] [INFO] rollover: worker 27802 asks to be replaced (max_requests: served 1049 of 1042)
[t] [9] [INFO] rollover: recycling worker 27802 (generation 0): its replacement is READY
[t] [9] [INFO] rollover: worker 27803 asks to be replaced (max_requests: served 1112 of 1056)
"""


def test_count_recycles_one_per_worker_and_per_kind() -> None:
    from bench.recycle import count_recycles

    stock = count_recycles(STOCK_GTHREAD_LOG)
    assert (stock["total"], stock["exit_at_limit"]) == (2, 2)  # 27076 logged it twice
    assert count_recycles(UVICORN_LOG)["exit_at_limit"] == 2
    roll = count_recycles(ROLLOVER_LOG, {"recycles": 1})
    assert (roll["total"], roll["ready_first"], roll["exit_at_limit"]) == (1, 1, 0)
    assert (roll["asked"], roll["asked_not_recycled"], roll["status_recycles"]) == (2, 1, 1)


@pytest.mark.process
def test_bench_recycle_smoke(tmp_path: Path) -> None:
    missing = [m for m in ("aiohttp", "psutil") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"the benchmark needs {', '.join(missing)}: install the bench extra "
            "(pip install -e '.[asgi,test,bench]')"
        )
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.reload",
            "--smoke",
            "--scenarios",
            "recycle",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"

    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (result,) = data["results"]
    assert result["server"] == "rollover" and result["scenario"] == "recycle"
    assert "error" not in result, result.get("error")
    assert data["targets"] == []  # no HUP, no roll targets
    assert {"n", "p50_ms", "p99_ms", "max_ms"} <= set(result["latency"]["window"])
    assert {"median_per_s", "lowest_per_s", "ratio", "below_0_9"} <= set(result["throughput"])
    assert result["requests"] > 0 and result["answered"] > 0
    recycles = result["recycles"]
    assert recycles["ready_first"] >= 1, (recycles, (out / "logs").iterdir())
    assert recycles["exit_at_limit"] == 0, recycles
    assert (out / result["timeline_csv"]).stat().st_size > 0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "## Recycling at max_requests" in table and "| rollover | 100 + 0..20 |" in table
