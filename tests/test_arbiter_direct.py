"""`RollingArbiter` is a real gunicorn `Arbiter`: built directly, or switched in by the hook.

A custom gunicorn `Application` may build its arbiter itself (`RollingArbiter(app).run()`);
that master must roll on HUP like one started with `-c python:rollover.hooks`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from harness import (
    AppCode,
    Load,
    check_roll,
    exit_deadline,
    free_port,
    group_members,
    roll_done,
    settled_with,
    wait_for,
)

from rollover.master.arbiter import RollingArbiter, activate
from rollover.status import default_status_path, read_status


class _Bare(BaseApplication):  # type: ignore[misc]
    def init(self, parser: Any, opts: Any, args: Any) -> None:
        return None

    def load_config(self) -> None:
        return None

    def load(self) -> Any:
        return None


def _state(arbiter: Arbiter) -> set[str]:
    return {name for name in vars(arbiter) if not name.startswith("__")}


def test_built_directly_and_switched_by_the_hook_hold_the_same_state() -> None:
    built = RollingArbiter(_Bare())
    switched = Arbiter(_Bare())
    assert activate(switched) is True
    assert type(switched) is RollingArbiter
    assert _state(built) == _state(switched)
    assert built.machine.workers == {} and built.settings.max_surge == 1
    assert built.worker_class is switched.worker_class
    assert activate(built) is False  # already rolling: the hook changes nothing


_RUNNER = '''
import sys
from gunicorn.app.base import BaseApplication
from rollover import RollingArbiter


class App(BaseApplication):
    """A custom Application that builds its arbiter itself."""

    def __init__(self, options):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        import app
        return app.app

    def run(self):
        RollingArbiter(self).run()


sys.path.insert(0, {app_dir!r})
App({{"bind": "127.0.0.1:{port}", "workers": 3, "worker_class": "gthread",
      "pidfile": {pidfile!r}, "graceful_timeout": 5}}).run()
'''


@pytest.mark.process
def test_a_custom_application_running_rolling_arbiter_rolls_on_hup(tmp_path: Path) -> None:
    boot = 1.0
    app = AppCode(tmp_path / "app", "wsgi")
    app.write("v1", boot_delay=boot)
    port, pidfile = free_port(), tmp_path / "gunicorn.pid"
    runner = tmp_path / "run.py"
    runner.write_text(textwrap.dedent(_RUNNER).format(app_dir=str(app.dir), port=port,
                                                      pidfile=str(pidfile)))
    log = tmp_path / "master.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(runner)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    status_path = default_status_path(str(pidfile))

    def status() -> dict[str, Any] | None:
        try:
            return read_status(status_path)
        except Exception:
            return None

    def tail() -> str:
        return "\n" + log.read_text(errors="replace")[-3000:]

    try:
        wait_for(lambda: (s := status()) and settled_with(3)(s), 30, what="3 ready workers",
                 on_timeout=tail)
        with Load(port, clients=6, keepalive=True) as load:
            load.run_for(0.5, min_requests=6)
            app.write("v2", boot_delay=boot)
            hup_at = time.monotonic()
            os.kill(proc.pid, signal.SIGHUP)
            done = roll_done(0)
            final = wait_for(lambda: (s := status()) and done(s) and s, 30,
                             what="the roll to end", on_timeout=tail)
            done_at = time.monotonic()
            load.run_for(0.5, min_requests=6)
        assert final["last_rollout"]["result"] == "succeeded", final
        problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v2")
        assert problems == [], f"{problems}{tail()}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(exit_deadline(20)) == 0, tail()
    assert group_members(proc.pid) == []
    assert not pidfile.exists()
