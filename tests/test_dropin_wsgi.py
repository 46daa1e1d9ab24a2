"""Drop-in, WSGI families: the user's own `-k` (sync, gthread, gevent, eventlet) rolls with
readiness and gunicorn's own drain, failing nothing and logging nothing at WARNING.

16 keep-alive and 16 new-connection clients through one HUP (4 workers, 1.5 s boot, the
readiness probe on). The able-to-fail baseline for WSGI is stock gunicorn's HUP stall
(tests/test_stock_baseline.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import AppCode, Master
from worker_rolls import fault_lines, missing, roll_under_load, start_line

pytestmark = pytest.mark.process

CLASSES = ["sync", "gthread", "gevent", "eventlet"]


@pytest.mark.interpreters(worker_class="sync")
@pytest.mark.parametrize("worker_class", CLASSES)
def test_roll_fails_nothing_and_logs_no_warning(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], worker_class: str
) -> None:
    reason = missing(worker_class)
    if reason is not None:
        pytest.skip(reason)
    result = roll_under_load(masters, make_app, worker_class, "wsgi")
    print("\n" + result.figures(worker_class))
    assert result.problems() == [], f"{result.problems()}\n{result.describe()}"
    line = start_line(result.master)
    assert "[INFO]" in line and "readiness, drain: gunicorn's own" in line, line
    assert fault_lines(result.master) == [], result.master.tail(80)
