"""Drop-in, the other side: what the drain is worth, and what rollover cannot add.

- The stock ASGI classes with `ROLLOVER_DRAIN=0` (readiness only) fail keep-alive requests
  in a roll (up to 3 HUPs, 16 keep-alive clients): proof that the drain-on checks in
  tests/test_dropin_uvicorn.py and tests/test_dropin_asgi.py can fail.
- A user's subclass that overrides the serving loop (`_serve`) still gets readiness (its
  workers are probed and roll), and one WARNING line says the drain cannot be added.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from harness import AppCode, Master
from worker_rolls import (
    failing_rolls,
    fault_lines,
    missing,
    roll,
    start,
    start_line,
    write_custom_workers,
)

pytestmark = pytest.mark.process

STOCK = ["uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornWorker", "asgi"]


@pytest.mark.parametrize("worker_class", STOCK)
def test_stock_class_without_the_drain_fails_keepalive_clients(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], worker_class: str
) -> None:
    reason = missing(worker_class)
    if reason is not None:
        pytest.skip(reason)
    failed = failing_rolls(masters, make_app, worker_class, {"ROLLOVER_DRAIN": "0"})
    print(f"[{worker_class}, drain off] (keep-alive, new-conn) requests failed per roll: "
          f"{failed}")
    assert failed[-1][0] > 0, (f"{worker_class} without the drain failed no keep-alive request "
                               f"in {len(failed)} rolls: {failed}")


def test_subclass_overriding_serve_gets_readiness_and_one_warning(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    app = make_app("asgi")
    write_custom_workers(app)
    master = start(masters, app, "custom_workers.OwnServeWorker")
    result = roll(master, app, "v2", keepalive_clients=4, new_conn_clients=4)
    print("\n" + result.figures("custom_workers.OwnServeWorker"))
    assert result.final["last_rollout"]["result"] == "succeeded", result.describe()
    assert set(result.keepalive.versions_after(result.done_at)) == {"v2"}, result.describe()
    log = master.log_text()
    # readiness: READY reported, the probe run through ASGI (a WSGI probe of this app
    # raises TypeError and the master exits 3 at start)
    assert len(re.findall(r"rollover: worker \d+ ready", log)) >= 4, master.tail()
    assert "custom _serve" in log, master.tail()
    (warning,) = fault_lines(master)
    print(f"[custom_workers.OwnServeWorker] {warning}")
    assert warning == start_line(master), master.tail()
    assert "[WARNING]" in warning, warning
    assert ("worker class custom_workers.OwnServeWorker: readiness; the drain cannot be added: "
            "custom_workers.OwnServeWorker._serve replaces the stock serving loop") in warning


def test_drain_off_is_said_at_start(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    app = make_app("asgi")
    master = start(masters, app, "uvicorn_worker.UvicornWorker", {"ROLLOVER_DRAIN": "0"})
    line = start_line(master)
    assert "[INFO]" in line, line
    assert line.endswith("rollover: worker class uvicorn_worker.UvicornWorker: readiness; "
                         "drain: off (rollover_drain)"), line
