"""Drop-in, uvicorn's worker classes: whichever of them `-k` names (the deprecated
`uvicorn.workers` ones, uvicorn-worker's, rollover's aliases, a user's subclass that only
sets CONFIG_KWARGS), one HUP under load fails nothing and logs nothing at WARNING.

16 keep-alive and 16 new-connection clients through one HUP (4 workers, 1.5 s boot, the
readiness probe on, so each class is also probed through ASGI). The stock classes fail
keep-alive requests when the drain is off: tests/test_dropin_baselines.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import AppCode, Master
from worker_rolls import fault_lines, missing, roll_under_load, start_line

pytestmark = pytest.mark.process

CLASSES = [
    "uvicorn.workers.UvicornWorker",
    "uvicorn.workers.UvicornH11Worker",
    "uvicorn_worker.UvicornWorker",
    "uvicorn_worker.UvicornH11Worker",
    "rollover.workers.UvicornWorker",
    "rollover.workers.UvicornH11Worker",
    "custom_workers.H11Worker",
]

DRAIN_LINE = ("readiness, drain (Connection: close while draining, websockets 1012, "
              "event streams ended at the drain deadline)")


@pytest.mark.parametrize("worker_class", CLASSES)
def test_roll_fails_nothing_and_logs_no_warning(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], worker_class: str
) -> None:
    reason = missing(worker_class)
    if reason is not None:
        pytest.skip(reason)
    result = roll_under_load(masters, make_app, worker_class, "asgi")
    print("\n" + result.figures(worker_class))
    assert result.problems() == [], f"{result.problems()}\n{result.describe()}"
    line = start_line(result.master)
    assert "[INFO]" in line and f"worker class {worker_class}: {DRAIN_LINE}" in line, line
    assert fault_lines(result.master) == [], result.master.tail(80)
    # the drain ran in every retired worker
    assert result.master.log_text().count("Shutting down: draining") >= 4, result.master.tail()
