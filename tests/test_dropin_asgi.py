"""Drop-in, gunicorn's asgi worker: `-k asgi` (or `rollover.workers.ASGIWorker`) rolls with
readiness and rollover's drain, failing nothing and logging nothing at WARNING.

16 keep-alive and 16 new-connection clients through one HUP (4 workers, 1.5 s boot, the
readiness probe on, through ASGI). Without the drain the same class fails keep-alive
requests: tests/test_dropin_baselines.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import AppCode, Master
from worker_rolls import fault_lines, missing, roll_under_load, start_line

pytestmark = pytest.mark.process

CLASSES = ["asgi", "rollover.workers.ASGIWorker"]


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
    assert "[INFO]" in line and f"worker class {worker_class}: readiness, drain (" in line, line
    assert fault_lines(result.master) == [], result.master.tail(80)
    assert result.master.log_text().count("Worker draining") >= 4, result.master.tail()
