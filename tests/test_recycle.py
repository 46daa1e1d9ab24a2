"""Recycling without a dip: a worker at its limit is replaced new-ready-first.

gunicorn's `max_requests` makes a worker exit at its limit; only then is a replacement
forked, which must boot, so capacity drops for a whole boot per recycle. Under rollover the
worker asks the master for a replacement and keeps serving until that one is READY; the
master then retires exactly the worker that asked (drained as in a roll). The same checks
with `rollover_recycle` off (gunicorn's own exit) show the boot-long wait.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from harness import AppCode, Load, Master, stall_allowance, stalled, wait_for

pytestmark = pytest.mark.process

BOOT = 1.5


def asked_and_recycled(master: Master) -> tuple[list[int], list[int]]:
    """Pids that asked for a replacement, and pids SIGTERM'd as recycled, from the log."""
    log = master.log_text()
    asked = [int(p) for p in re.findall(r"worker (\d+) asks to be replaced", log)]
    recycled = [int(p) for p in re.findall(
        r"rollover: recycling worker (\d+) \(generation \d+\): its replacement is READY", log)]
    return asked, recycled


def waited(load: Load) -> list[float]:
    """Latencies of the requests that waited a quarter of a boot or more (a capacity dip;
    measured on an idle machine: recycling off 40-48 per run, on 0)."""
    return [round(r.latency, 3) for r in load.records() if r.latency >= BOOT / 4]


def waited_a_boot(load: Load) -> list[float]:
    """Latencies of the requests that waited a boot (harness.stalled): a request held
    while a replacement boots. Load cannot make these, a stall cannot hide from them."""
    return sorted(round(r.latency, 3) for r in stalled(load, load.started_at, boot=BOOT))


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


@pytest.mark.interpreters(worker_class="gthread")
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
    # A request queued on a worker that leaves before its replacement is READY waits for
    # that boot (the bug this replaced: 1.02 s of a 1 s boot); one request alone is the
    # loaded machine. A quarter boot is a capacity dip, but at load average 8 CPU
    # starvation alone makes dozens of those: printed, not asserted.
    print(f"waited a quarter boot: {len(waited(load))}; a boot: {waited_a_boot(load)}")
    assert len(waited_a_boot(load)) <= stall_allowance(load.clients), (
        f"{waited_a_boot(load)}: latency {latency} (boot {BOOT}s)")
    status = master.status() or {}
    assert status.get("recycles", 0) >= len(recycled) - 1
    assert "WARNING" not in master.log_text() and "ERROR" not in master.log_text(), \
        master.tail(60)


def test_max_requests_with_recycling_off_waits_a_boot(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """The able-to-fail baseline: gunicorn's own exit at max_requests."""
    master, load = recycle_under_load(masters, make_app, "gthread", recycle=False)
    print(f"\ngthread recycling off: {load.describe()}; waited a quarter boot: "
          f"{len(waited(load))}")
    _, recycled = asked_and_recycled(master)
    assert recycled == []
    # gunicorn's own exit at the limit, then a fork after it: the capacity dip the test above
    # avoids. Its waits (a quarter boot: 40-48 per run on an idle machine) are printed, not
    # asserted: at load average 20 a run saw none (max 0.31 s), and one recycled worker
    # never makes a request wait a whole boot.
    restarts = master.log_text().count("Autorestarting worker after current request")
    assert restarts >= 2, f"{restarts} exits at max_requests{master.tail(40)}"


def test_status_shows_each_workers_requests(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    master, load = recycle_under_load(masters, make_app, "gthread", seconds=4.0)
    status = master.wait_status(
        lambda s: sum(w.get("requests", {}).get("requests", 0) for w in s["workers"]) > 0,
        5, "request counts in the status")
    for worker in status["workers"]:
        assert set(worker["requests"]) == {"requests", "ok", "4xx", "5xx", "failed"}
    served = sum(w["requests"]["requests"] for w in status["workers"])
    assert 0 < served <= load.total


_GROWING_APP = '''\
import json, os, time
time.sleep({boot!r})
KEPT = []

def app(environ, start_response):
    KEPT.append(b"x" * (512 * 1024))  # every request keeps half a MiB: a leak
    body = json.dumps({{"pid": os.getpid(), "version": "v1"}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def test_rss_limit_replaces_a_leaking_worker(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    app.path.write_text(_GROWING_APP.format(boot=1.0))
    master = masters(app, workers=2, worker_class="gthread",
                     env={"ROLLOVER_MAX_WORKER_RSS": "80"})
    master.wait_serving()
    with Load(master.port, clients=2, keepalive=True, think=0.02) as load:
        load.run_for(8.0, min_requests=300)
    asked, recycled = asked_and_recycled(master)
    print(f"\nrss limit: {load.describe()}; asked {asked}, recycled {recycled}")
    assert load.failed() == [], load.describe()
    assert recycled and set(recycled) <= set(asked), master.tail(60)
    assert "max_worker_rss:" in master.log_text()
    assert len(waited(load)) <= 1, load.describe()


def test_age_limit_recycles_one_at_a_time_within_the_surge(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    app.write("v1", boot_delay=1.0)
    master = masters(app, workers=4, worker_class="gthread",
                     env={"ROLLOVER_MAX_WORKER_AGE": "2", "ROLLOVER_MAX_WORKER_AGE_JITTER": "1"})
    master.wait_status(lambda s: s.get("state") == "idle", 30, "all 4 workers READY")
    most_booting = 0
    with Load(master.port, clients=4, keepalive=True, think=0.01) as load:
        deadline = time.monotonic() + 9.0
        while time.monotonic() < deadline:
            status = master.status() or {}
            booting = sum(1 for w in status.get("workers", []) if w["state"] == "booting")
            most_booting = max(most_booting, booting)
            time.sleep(0.02)
    asked, recycled = asked_and_recycled(master)
    print(f"\nage limit: {load.describe()}; {len(recycled)} recycled, "
          f"at most {most_booting} booting")
    assert load.failed() == [], load.describe()
    assert len(recycled) >= 4 and set(recycled) <= set(asked), master.tail(60)
    assert most_booting == 1  # max_surge 1: never two replacements booting at once
    assert "max_worker_age:" in master.log_text()


def test_when_no_replacement_can_boot_the_worker_serves_on_then_goes_at_the_hard_cap(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.5)
    master = masters(app, workers=2, worker_class="gthread",
                     extra_args=["--max-requests", "150", "--max-requests-jitter", "0"])
    master.wait_serving()
    app.write("v2", boot_delay=0.0, error="the code on disk broke")  # no HUP: respawns fail
    with Load(master.port, clients=2, keepalive=True, think=0.01) as load:
        wait_for(lambda: "without a replacement" in master.log_text(), 30,
                 what="a worker retired at its hard cap", on_timeout=master.tail)
        # the last worker serving is never retired without a replacement: past its hard
        # cap too, it serves on and its status says so
        master.wait_status(lambda s: any(w.get("overdue") and w["state"] == "ready"
                                         for w in s["workers"]), 30,
                           "the last worker past its hard cap, serving")
        load.run_for(1.0)
    log = master.log_text()
    print(f"\nno replacement: {load.describe()}")
    assert "asks to be replaced (max_requests: served" in log
    assert "the code on disk broke" in log  # the failed respawns, with their cause
    assert master.alive()
    assert load.failed() == [], load.describe()
    status = master.status() or {}
    assert status.get("respawn") and status["respawn"]["failures"] >= 1, status
    assert [w["state"] for w in status["workers"] if w.get("overdue")] == ["ready"], status
