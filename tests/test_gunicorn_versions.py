"""The same rollover on every supported gunicorn (23.0 through 27.x), each in its own venv.

`VersionCases` holds the cases; one `TestGunicorn<N>` class per version runs them against
that version's `gunicorn` and `rollover` commands (a venv of tests/matrix.py, rollover
installed editable from this checkout):

- a roll under keep-alive load (8 clients, gthread, 4 workers, 1 s boot): no failed
  request, no stall (requests that waited a boot, counted), only the new code answering after;
- a bad deploy (the new code raises at import): `rollover reload --wait` exits 1, the
  master lives, the old workers keep answering;
- a config file with a syntax error at HUP: the reload is aborted, the old workers keep
  serving, `reload --wait` exits 1; the fixed config then rolls out;
- SIGTERM mid-roll: the master exits 0, no worker outlives it, the pidfile is removed;
- from gunicorn 24.1 (which added `-k asgi`): a roll of a Starlette app with gunicorn's
  `asgi` worker (a new connection per request: it cannot drain keep-alive connections) and
  with `rollover.workers.ASGIWorker` (keep-alive).

The classes are split over two files, 23.0-25.3 here and 26.2-27.0 in
test_gunicorn_versions_late.py, so that `pytest -n 3 --dist loadfile` runs them on two
workers at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from harness import (
    AppCode,
    Load,
    Master,
    assert_settled_on,
    booting_workers,
    check_roll,
    exit_deadline,
    figures,
    group_members,
    ready_workers,
    roll_done,
    roll_under_load,
    run_cli,
    settled_with,
    start_settled,
    wait_for,
    wait_only,
)
from matrix import EVENTLET_GUNICORN

from rollover.status import parse_iso

pytestmark = pytest.mark.process

CLIENTS = 8

_CONFIG = "from rollover.hooks import *  # noqa: F403\n"
_BROKEN_CONFIG = "from rollover.hooks import *  # noqa: F403\nworkers = (\n"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class VersionCases:
    """The cases, for gunicorn `VERSION` (set by each `TestGunicorn<N>` subclass)."""

    VERSION: str

    @pytest.fixture
    def venv(self, gunicorn_venv: Callable[[str], Path]) -> Path:
        return gunicorn_venv(self.VERSION)

    @pytest.fixture
    def start(self, masters: Callable[..., Master], venv: Path) -> Callable[..., Master]:
        """`masters`, running this version's gunicorn."""
        return partial(masters, venv=venv)

    def cli(self, venv: Path, master: Master, *args: str) -> tuple[int, str, str]:
        """`rollover <args> --pidfile P` with this version's CLI: (exit, stdout, stderr)."""
        cp = run_cli(*args, "--pidfile", str(master.pidfile), timeout=90, venv=venv)
        return cp.returncode, cp.stdout, cp.stderr

    # ------------------------------------------------------------------------ a. a roll

    def test_roll_under_keepalive_load(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master]
    ) -> None:
        boot, workers = 1.0, 4
        app = make_app("wsgi")
        app.write("v1", boot_delay=boot)
        master, first = start_settled(start, app, workers, worker_class="gthread")
        assert first["gunicorn"] == self.VERSION, first

        with Load(master.port, clients=CLIENTS, keepalive=True) as load:
            load.run_for(1.0, min_requests=CLIENTS)
            hup_at, done_at, final = roll_under_load(
                master, app, load, version="v2", boot=boot, workers=workers
            )
        print("\n" + figures(load, hup_at=hup_at, done_at=done_at,
                             label=f"gunicorn {self.VERSION} gthread keep-alive"))

        problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v2")
        assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"
        last = final["last_rollout"]
        assert last["result"] == "succeeded", final
        assert last["min_ready"] >= workers, final
        assert final["generation"] == 1, final
        assert_settled_on(master, final, workers)

    # ------------------------------------------------------------------------ b. bad deploy

    def test_bad_deploy_keeps_the_old_code_serving(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master], venv: Path
    ) -> None:
        boot, workers = 1.0, 2
        app = make_app("wsgi")
        app.write("v1", boot_delay=boot)
        master, before = start_settled(start, app, workers, worker_class="gthread")
        v1_pids = sorted(w["pid"] for w in before["workers"])

        with Load(master.port, clients=4, keepalive=True) as load:
            load.run_for(0.5, min_requests=4)
            app.write("v2", boot_delay=boot, error="v2 is broken: missing SETTING")
            hup_at = time.monotonic()
            code, out, err = self.cli(venv, master, "reload", "--wait", "--timeout", "60")
            print(f"\n[gunicorn {self.VERSION} bad deploy] reload --wait: exit {code}\n{out}{err}")
            assert code == 1, f"exit {code}: {out}{err}{master.tail()}"
            assert "v2 is broken: missing SETTING" in out + err, out + err
            aborted = master.wait_status(roll_done(before["reloads"]), 10, "the abort")
            aborted_at = time.monotonic()
            load.wait_requests(2 * load.clients, after=aborted_at)

        assert master.alive(), master.tail()
        last = aborted["last_rollout"]
        assert last["result"] == "aborted", aborted
        assert "v2 is broken: missing SETTING" in (last["error"] or ""), aborted
        assert sorted(w["pid"] for w in ready_workers(aborted)) == v1_pids, aborted
        wait_only(master, v1_pids)
        assert load.failed() == [], load.describe()
        assert set(load.versions_after(hup_at)) == {"v1"}, load.describe()

    # ------------------------------------------------------------------------ c. bad config

    def test_config_syntax_error_at_hup_aborts_the_reload(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master], venv: Path,
        tmp_path: Path,
    ) -> None:
        boot, workers = 1.0, 2
        config = tmp_path / "gunicorn_conf.py"
        config.write_text(_CONFIG, encoding="utf-8")
        app = make_app("wsgi")
        app.write("v1", boot_delay=boot)
        master, before = start_settled(start, app, workers, config=str(config))
        pids = sorted(w["pid"] for w in before["workers"])

        with Load(master.port, clients=4, keepalive=True) as load:
            load.run_for(0.5, min_requests=4)
            config.write_text(_BROKEN_CONFIG, encoding="utf-8")
            app.write("v2", boot_delay=boot)  # not rolled out: the reload stops before
            hup_at = time.monotonic()
            code, out, err = self.cli(venv, master, "reload", "--wait", "--timeout", "30")
            print(f"\n[gunicorn {self.VERSION} bad config] reload --wait: exit {code}\n{out}{err}")
            assert code == 1, f"exit {code}: {out}{err}{master.tail()}"
            assert "SyntaxError" in err, out + err
            st = master.wait_status(roll_done(before["reloads"]), 10, "the abort")
            assert st["last_rollout"]["result"] == "aborted", st
            assert "SyntaxError" in (st["last_rollout"]["error"] or ""), st
            assert st["generation"] == 0, st
            assert sorted(w["pid"] for w in ready_workers(st)) == pids, st
            assert master.worker_pids() == pids, master.tail()
            load.wait_requests(2 * load.clients, after=time.monotonic())
            assert set(load.versions_after(hup_at)) == {"v1"}, load.describe()

            # the config put back is a working one: the fixed config rolls v2 out
            config.write_text(_CONFIG, encoding="utf-8")
            code, out, err = self.cli(venv, master, "reload", "--wait", "--timeout", "60")
            assert code == 0, f"exit {code}: {out}{err}{master.tail()}"
            final = master.wait_status(settled_with(workers), 30, "settled on v2")
            done_at = wait_only(master, [w["pid"] for w in final["workers"]])
            load.wait_requests(2 * load.clients, after=done_at)

        assert master.alive(), master.tail()
        assert load.failed() == [], load.describe()
        assert set(load.versions_after(done_at)) == {"v2"}, load.describe()
        assert final["generation"] == 1, final

    # ------------------------------------------------------------------------ d. SIGTERM

    def test_sigterm_mid_roll_stops_cleanly(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master]
    ) -> None:
        boot, workers, graceful = 1.5, 3, 4
        app = make_app("wsgi")
        app.write("v1", boot_delay=boot)
        master, _ = start_settled(
            start, app, workers, extra_args=["--graceful-timeout", str(graceful)]
        )
        app.write("v2", boot_delay=boot)
        master.hup()
        # A new worker READY and one booting for 0.3 s at least (one signalled in its first
        # milliseconds, before it installs its own handlers, is another test's subject:
        # tests/test_faults.py).
        mid = master.wait_status(
            lambda st: (
                st["state"] == "rolling"
                and bool(ready_workers(st, 1))
                and any(
                    time.time() - parse_iso(w["since"]) >= 0.3 for w in booting_workers(st, 1)
                )
            ),
            20,
            "mid-roll: a new worker READY and one booting",
        )
        master.worker_pids()  # remember every worker, to look for orphans afterwards
        sent = time.monotonic()
        os.kill(master.pid, signal.SIGTERM)
        code = master.wait_exit(graceful + 10)
        took = time.monotonic() - sent
        with contextlib.suppress(TimeoutError):  # the kernel may take a moment to reap
            wait_for(
                lambda: not master.leftover_workers() and not group_members(master.pid),
                2,
                what="no process left",
            )
        states = [(w["pid"], w["generation"], w["state"]) for w in mid["workers"]]
        print(f"\n[gunicorn {self.VERSION} SIGTERM mid-roll] workers {states}; "
              f"exit {code} after {took:.2f}s")
        assert code == 0, master.tail()
        assert took <= graceful + exit_deadline(3.0), f"stopped after {took:.2f}s{master.tail()}"
        assert master.leftover_workers() == [], "orphaned workers"
        assert group_members(master.pid) == [], "processes left in the master's group"
        assert not master.pidfile.exists(), "pidfile left behind"

    # ------------------------------------------------------------------------ e. ASGI

    @pytest.mark.parametrize(
        ("worker_class", "keepalive"),
        [("asgi", False), ("rollover.workers.ASGIWorker", True)],
        ids=["asgi-new-connections", "rollover-asgi-keepalive"],
    )
    def test_asgi_roll(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master],
        worker_class: str, keepalive: bool,
    ) -> None:
        if version_tuple(self.VERSION) < (24, 1):
            pytest.skip(f"gunicorn {self.VERSION} has no asgi worker (new in 24.1)")
        # 1.5 s: a new connection per request costs more CPU, and on 2 busy cores the worst
        # latency alone came near 0.5 s. graceful 3 s: 25.3's asgi worker counts closed
        # connections as open ("Waiting for 303 connections to finish...") and drains until
        # killed, one retired worker at a time.
        boot, workers, graceful = 1.5, 3, 3
        app = make_app("asgi")
        app.write("v1", boot_delay=boot)
        master, _ = start_settled(
            start, app, workers, worker_class=worker_class,
            extra_args=["--graceful-timeout", str(graceful)],
        )

        with Load(master.port, clients=CLIENTS, keepalive=keepalive) as load:
            load.run_for(1.0, min_requests=CLIENTS)
            hup_at, done_at, final = roll_under_load(
                master, app, load, version="v2", boot=boot, workers=workers
            )
        label = f"gunicorn {self.VERSION} {worker_class} {'keep-alive' if keepalive else 'new'}"
        print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label=label))

        problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v2")
        assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"
        assert final["last_rollout"]["result"] == "succeeded", final
        assert_settled_on(master, final, workers)


    # ------------------------------------------------------------------------ f. eventlet

    def test_eventlet_roll(
        self, make_app: Callable[..., AppCode], start: Callable[..., Master]
    ) -> None:
        """gunicorn's eventlet module monkey-patches the master when `-k eventlet` is
        resolved: the master's loop must still wake and read its pipes (it crashed with
        "Unhandled exception in main loop" at the first HUP before)."""
        if self.VERSION != EVENTLET_GUNICORN:
            pytest.skip(f"eventlet is installed in the gunicorn {EVENTLET_GUNICORN} venv only")
        boot, workers = 1.0, 3
        app = make_app("wsgi")
        app.write("v1", boot_delay=boot)
        master, _ = start_settled(start, app, workers, worker_class="eventlet")
        with Load(master.port, clients=CLIENTS, keepalive=True) as load:
            load.run_for(1.0, min_requests=CLIENTS)
            hup_at, done_at, final = roll_under_load(
                master, app, load, version="v2", boot=boot, workers=workers
            )
        print("\n" + figures(load, hup_at=hup_at, done_at=done_at,
                              label=f"gunicorn {self.VERSION} eventlet keep-alive"))
        problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v2")
        assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"
        assert final["last_rollout"]["result"] == "succeeded", final
        assert "Unhandled exception in main loop" not in master.log_text(), master.tail()
        assert_settled_on(master, final, workers)


class TestGunicorn23(VersionCases):
    VERSION = "23.0.0"


class TestGunicorn24(VersionCases):
    VERSION = "24.1.1"


class TestGunicorn25(VersionCases):
    VERSION = "25.3.0"
