"""preload_app: a roll that aborts after some slots went to the new code rolls back.

With `preload_app` the master holds the code it forks. rollover keeps the previous
generation's modules until a roll ends; when a new worker then fails, the master restores
them and replaces the new generation's READY workers one for one: the end state is one
consistent generation, the old one, and no request fails on the way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import AppCode, Load, Master, figures

pytestmark = pytest.mark.process

CLIENTS = 8

# v2 imports fine in the master, but only its first forked worker survives: from the
# second fork on, a child exits at once (before READY) while the master's `app` is v2.
_V2 = '''\
import json, os, sys

VERSION = "v2"
_COUNTER = {counter!r}


def _fail_from_the_second_fork():
    app = sys.modules.get("app")
    if app is None or getattr(app, "VERSION", None) != "v2":
        return  # rolled back: the master forks v1 again
    with open(_COUNTER, "a+") as fh:
        fh.write("x")
        fh.seek(0)
        forks = len(fh.read())
    if forks >= 2:
        os._exit(7)


os.register_at_fork(after_in_child=_fail_from_the_second_fork)


def app(environ, start_response):
    body = json.dumps({{"pid": os.getpid(), "version": VERSION}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def test_preload_roll_aborted_midway_rolls_back_to_one_generation(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], tmp_path: Path
) -> None:
    workers = 3
    app = make_app("wsgi")
    app.write("v1", boot_delay=0.2)
    master = masters(app, workers=workers, extra_args=["--preload"])
    master.wait_serving()
    master.wait_status(lambda st: len([w for w in st["workers"] if w["state"] == "ready"])
                       == workers, 30, "all workers ready")

    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(0.5, min_requests=CLIENTS)
        tmp = app.dir / ".v2.tmp"
        tmp.write_text(_V2.format(counter=str(tmp_path / "forks")), encoding="utf-8")
        os.replace(tmp, app.path)
        hup_at = master.hup()
        final = master.wait_status(
            lambda st: (st["last_rollout"] or {}).get("rollback") == "succeeded"
            and st["state"] == "idle"
            and all(w["state"] == "ready" for w in st["workers"]),
            60, "the rollback to finish")
        done_at = time.monotonic()
        load.wait_requests(2 * CLIENTS, after=done_at)
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label="preload rollback"))

    last = final["last_rollout"]
    assert last["result"] == "aborted", last
    assert "exited with code 7 before READY" in last["error"], last
    assert [w["generation"] for w in final["workers"]] == [0] * workers, final
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v1"}, load.versions_after(done_at)
    assert master.alive(), master.tail()
