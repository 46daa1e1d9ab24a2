"""Baselines: what stock gunicorn's HUP does, measured with the harness rollover is held to.

These prove the checks can fail: stock gunicorn stops serving for a whole boot on HUP,
and halts the master when the new code cannot boot.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from harness import AppCode, Load, Master, check_roll, figures, http_get

pytestmark = pytest.mark.process

BOOT = 1.5
WORKERS = 4
CLIENTS = 8


def test_stock_hup_stalls_for_a_boot(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    app = make_app("wsgi")
    app.write("v1", boot_delay=BOOT)
    master = masters(app, workers=WORKERS, worker_class="gthread", config=None)
    master.wait_serving()
    master.wait_workers_answering(WORKERS)
    old = master.worker_pids()
    assert len(old) == WORKERS, master.tail()

    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(1.0, min_requests=CLIENTS)
        app.write("v2", boot_delay=BOOT)
        hup_at = master.hup()
        done_at = master.wait_workers_gone(old, timeout=30)
        load.wait_requests(2 * CLIENTS, after=done_at)
        load.wait_version("v2")
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label="stock gthread HUP"))

    problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=BOOT, version="v2")
    print(f"[stock gthread HUP] check_roll: {problems}")
    assert any("waited a boot" in p for p in problems), (
        f"stock gunicorn was expected to stall for about a boot ({BOOT}s) on HUP; "
        f"check_roll found {problems}; {load.describe()}{master.tail()}"
    )
    # The stall is a whole boot of the new code, not a scheduling hiccup.
    assert load.latency_window(hup_at).max >= BOOT * 0.8
    assert master.alive(), master.tail()


def test_stock_hup_onto_broken_code_halts_the_master(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    app = make_app("wsgi")
    app.write("v1", boot_delay=BOOT)
    master = masters(app, workers=WORKERS, worker_class="gthread", config=None)
    master.wait_serving()

    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(1.0, min_requests=CLIENTS)
        app.write("v2", boot_delay=BOOT, error="v2 is broken")
        hup_at = master.hup()
        code = master.wait_exit(timeout=30)
        exited_at = time.monotonic()
        # The load keeps going: every request from now on must fail.
        load.wait_requests(CLIENTS, after=exited_at + 0.1)

    failed = Counter(load.failed(since=hup_at))
    leftover = master.leftover_workers()
    print(
        f"\n[stock broken HUP] master exit code {code}; workers left running {leftover}; "
        f"{load.total} requests, "
        f"{sum(failed.values())} failed after HUP {dict(failed)}; "
        f"latency before HUP {load.latency(load.records(until=hup_at))}"
    )
    # The master halts with WORKER_BOOT_ERROR (3). When a second new worker fails while
    # the master is halting, gunicorn raises HaltServer again inside halt() and the master
    # dies of the traceback instead: exit code 1. Either way it is down.
    log = master.log_text()
    assert code in (3, 1), f"expected the master to halt (3, or 1), got {code}{master.tail()}"
    assert "Worker failed to boot." in log, master.tail()
    assert "v2 is broken" in log, master.tail()
    with pytest.raises(ConnectionRefusedError):
        http_get(master.port, timeout=2.0)
    after = load.records(since=exited_at + 0.1)
    assert after and not any(r.ok for r in after), load.describe()
    assert "ConnectionRefusedError" in failed, dict(failed)
