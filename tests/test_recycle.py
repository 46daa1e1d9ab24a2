"""Recycling without a dip: a worker at its limit is replaced new-ready-first.

gunicorn's `max_requests` makes a worker exit at its limit; only then is a replacement
forked, which must boot, so capacity drops for a whole boot per recycle. Under rollover the
worker asks the master for a replacement and keeps serving until that one is READY; the
master then retires exactly the worker that asked (drained as in a roll). The same checks
with `rollover_recycle` off (gunicorn's own exit) show the boot-long wait.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import pytest
from harness import AppCode, Load, Master

pytestmark = pytest.mark.process

BOOT = 1.5


def asked_and_recycled(master: Master) -> tuple[list[int], list[int]]:
    """Pids that asked for a replacement, and pids SIGTERM'd as recycled, from the log."""
    log = master.log_text()
    asked = [int(p) for p in re.findall(r"worker (\d+) asks to be replaced", log)]
    recycled = [int(p) for p in re.findall(
        r"rollover: recycling worker (\d+) \(generation \d+\): its replacement is READY", log)]
    return asked, recycled


def recycle_under_load(masters: Callable[..., Master], make_app: Callable[..., AppCode],
                       worker_class: str, *, kind: str = "wsgi", recycle: bool = True,
                       seconds: float = 12.0) -> tuple[Master, Load]:
    app = make_app(kind)
    app.write("v1", boot_delay=BOOT)
    master = masters(app, worker_class=worker_class,
                     extra_args=["--max-requests", "300", "--max-requests-jitter", "100"],
                     env={"ROLLOVER_RECYCLE": "1" if recycle else "0"})
    master.wait_serving()
    with Load(master.port, clients=8, keepalive=True) as load:
        load.run_for(seconds, min_requests=1000)
    return master, load


@pytest.mark.parametrize(("worker_class", "kind"), [
    ("gthread", "wsgi"),
    ("uvicorn_worker.UvicornWorker", "asgi"),
])
def test_max_requests_recycles_without_a_boot_long_wait(
    masters: Callable[..., Master], make_app: Callable[..., AppCode], worker_class: str,
    kind: str,
) -> None:
    master, load = recycle_under_load(masters, make_app, worker_class, kind=kind)
    latency = load.latency()
    print(f"\n{worker_class} recycling on: {load.describe()}")
    asked, recycled = asked_and_recycled(master)
    assert load.failed() == [], load.describe()
    assert len(recycled) >= 2, master.tail(80)
    # exactly the workers that asked were retired, each once
    assert set(recycled) <= set(asked) and len(set(recycled)) == len(recycled)
    assert latency.max < BOOT / 4, f"worst latency {latency} (boot {BOOT}s)"
    status = master.status() or {}
    assert status.get("recycles", 0) >= len(recycled) - 1
    assert "WARNING" not in master.log_text() and "ERROR" not in master.log_text(), \
        master.tail(60)


def test_max_requests_with_recycling_off_waits_a_boot(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """The able-to-fail baseline: gunicorn's own exit at max_requests."""
    master, load = recycle_under_load(masters, make_app, "gthread", recycle=False)
    print(f"\ngthread recycling off: {load.describe()}")
    _, recycled = asked_and_recycled(master)
    assert recycled == []
    assert load.latency().max >= BOOT / 4, load.describe()


def test_status_shows_counts_and_why(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    master, _ = recycle_under_load(masters, make_app, "gthread", seconds=6.0)
    status = master.status() or {}
    counts = status.get("counts") or {}
    assert counts and sum(c["requests"] for c in counts.values()) > 0, status
    assert Counter(k for c in counts.values() for k in c) == Counter(
        {"requests": len(counts), "ok": len(counts), "4xx": len(counts), "5xx": len(counts),
         "failed": len(counts)})

