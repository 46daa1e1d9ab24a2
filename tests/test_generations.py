"""Each generation owns its config, and the status says which one serves.

A HUP whose new config makes every new worker fail (its readiness probe path answers 404)
aborts; the master must then fork the previous generation's config, settings and
environment again: an old worker killed afterwards is replaced at once and READY, the
status shows the previous settings and `serving_generation` the old generation. An idle
master leaves its status file alone.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import AppCode, Master, exit_deadline, ready_workers, roll_done, run_cli, settled_with

from rollover.cli import render_status

pytestmark = pytest.mark.process

WORKERS = 3

APP = '''\
import json
import os


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    if path not in ("/", "/healthz"):
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    body = json.dumps({"pid": os.getpid(), "version": "v1",
                       "mark": os.environ.get("APP_MARK")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

CONFIG = '''\
from rollover.hooks import *  # noqa: F403

raw_env = ["APP_MARK={mark}"]
rollover_probe_path = "{probe}"
rollover_max_surge = {surge}
'''


def write_config(path: Path, *, mark: str, probe: str, surge: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(CONFIG.format(mark=mark, probe=probe, surge=surge))
    os.replace(tmp, path)


def test_after_an_aborted_roll_respawns_use_the_previous_config(
        make_app: Callable[..., AppCode], masters: Callable[..., Master], tmp_path: Path) -> None:
    app = make_app("wsgi")
    app.path.write_text(APP)
    config = tmp_path / "gunicorn_conf.py"
    write_config(config, mark="v1", probe="/healthz", surge=1)
    master = masters(app, workers=WORKERS, config=str(config))
    first = master.wait_status(settled_with(WORKERS), 30, "workers ready")
    assert first["settings"]["probe_path"] == "/healthz"

    write_config(config, mark="v2", probe="/missing", surge=2)
    master.hup()
    aborted = master.wait_status(roll_done(first["reloads"]), 30, "the roll to abort")
    assert aborted["last_rollout"]["result"] == "aborted", aborted["last_rollout"]
    assert "answered 404" in aborted["last_rollout"]["error"], aborted["last_rollout"]
    assert (aborted["generation"], aborted["serving_generation"]) == (1, 0)

    victim = ready_workers(aborted)[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    final = master.wait_status(
        lambda st: victim not in {w["pid"] for w in st["workers"]}
        and settled_with(WORKERS)(st), 10, "the killed worker to be replaced")
    replaced_in = time.monotonic() - killed_at
    print(f"\nold worker SIGKILLed after the abort: replaced and READY in {replaced_in:.2f}s")

    # a fork and an import of a 0 s boot, noticed by the master's loop: process start-up
    assert replaced_in < exit_deadline(5), replaced_in
    assert final["state"] == "idle"
    assert [w["generation"] for w in final["workers"]] == [0] * WORKERS, final["workers"]
    assert final["serving_generation"] == 0 and final["generation"] == 1
    assert final["settings"]["probe_path"] == "/healthz", final["settings"]
    assert final["settings"]["max_surge"] == 1, final["settings"]
    assert final["serving_code"] == "disk"
    assert master.wait_workers_answering(WORKERS)
    marks = {master.wait_serving()["mark"] for _ in range(10)}
    assert marks == {"v1"}, marks
    log = master.log_text()
    assert "respawns use generation 0's config and the code on disk" in log

    shown = run_cli("status", "--pidfile", str(master.pidfile))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(f"generation 0 · idle · {WORKERS}/{WORKERS} workers ready"), lines
    assert ("generation 1 was not rolled out: respawns use generation 0's config and the "
            "code on disk") in lines, lines


def test_an_idle_master_does_not_rewrite_its_status_file(
        make_app: Callable[..., AppCode], masters: Callable[..., Master]) -> None:
    app = make_app("wsgi")
    app.write("v1", boot_delay=0.0)
    master = masters(app, workers=2)
    master.wait_status(settled_with(2), 30, "workers ready")
    time.sleep(1.0)  # the first loop iterations after READY (hook check, gauges)
    before = os.stat(master.status_path)
    time.sleep(10.0)
    after = os.stat(master.status_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert master.alive()


def test_status_says_why_it_is_degraded() -> None:
    now = 1_000_000.0
    status = {
        "pid": 42, "generation": 4, "serving_generation": 3, "state": "degraded",
        "serving_code": "disk", "workers_target": 3, "reloads": 4,
        "workers": [{"pid": 43, "generation": 3, "state": "ready",
                     "since": "1970-01-12T13:46:00+00:00"}],
        "rollout": None, "last_rollout": None,
        "respawn": {"failures": 3, "last_failure": "readiness probe GET /x answered 404",
                    "next_at": "1970-01-12T13:46:44+00:00"},
    }
    lines = render_status(status, now).splitlines()
    assert lines[0] == "master 42 · generation 3 · degraded · 1/3 workers ready"
    assert lines[1] == ("degraded: last respawn failed: readiness probe GET /x answered 404; "
                        "next respawn in 4s")
    assert lines[2] == ("generation 4 was not rolled out: respawns use generation 3's config "
                        "and the code on disk")
