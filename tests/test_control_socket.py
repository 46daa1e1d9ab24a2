"""gunicorn's control socket (`gunicornc`, 25.3+) under rollover: its `reload` is a rolling
reload, its stats count reloads, and `worker add` mid-roll ends with the new count."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, AppCode, Master, roll_done, settled_with

pytestmark = pytest.mark.process

GUNICORNC = BIN / "gunicornc"
if not GUNICORNC.exists():
    pytest.skip("this gunicorn has no control socket (gunicornc: 25.3+)", allow_module_level=True)


class ControlledMaster(Master):
    """A master with its control socket on (the harness turns it off by default)."""

    @property
    def ctl(self) -> Path:
        return self.workdir / "gunicorn.ctl"

    def argv(self) -> list[str]:
        argv = [a for a in super().argv() if a != "--no-control-socket"]
        return [*argv[:-1], "--control-socket", str(self.ctl), argv[-1]]

    def gunicornc(self, command: str) -> dict[str, Any]:
        out = subprocess.run([str(GUNICORNC), "-s", str(self.ctl), "-c", command, "-j"],
                             capture_output=True, text=True, timeout=30, check=True)
        return dict(json.loads(out.stdout))


@pytest.fixture
def master(tmp_path: Path) -> Iterator[ControlledMaster]:
    app = AppCode(tmp_path / "app", "wsgi")
    app.write("v1", boot_delay=0.5)
    workdir = tmp_path / "master"
    workdir.mkdir()
    # no canary: its roll would hold a second for traffic
    m = ControlledMaster(workdir, app, workers=2, env={"ROLLOVER_CANARY": "0"})
    try:
        m.start()
        m.wait_status(settled_with(2), 30, "2 ready workers")
        yield m
    finally:
        m.stop()


def test_gunicornc_reload_is_a_rolling_reload_and_is_counted(master: ControlledMaster) -> None:
    assert master.gunicornc("show stats")["reloads"] == 0
    master.app.write("v2", boot_delay=0.5)
    assert master.gunicornc("reload")["status"] == "reloading"
    status = master.wait_status(roll_done(0), 30, "the roll to end")
    assert status["last_rollout"]["result"] == "succeeded", status
    assert master.gunicornc("show stats")["reloads"] == 1
    assert "[WARNING]" not in master.log_text(), master.tail()


def test_gunicornc_worker_add_mid_roll_ends_with_the_new_count(master: ControlledMaster) -> None:
    master.app.write("v2", boot_delay=0.5)
    master.hup()
    # after the HUP has reloaded the config: like gunicorn's own reload, that resets the
    # count to the config's `workers` (an add racing the reload would be undone)
    master.wait_status(lambda st: st["reloads"] >= 1, 30, "the HUP to be processed")
    master.gunicornc("worker add 1")
    status = master.wait_status(lambda st: roll_done(0)(st) and settled_with(3)(st), 30,
                                "the roll to end with 3 workers")
    assert status["last_rollout"]["result"] == "succeeded", status
    assert {w["generation"] for w in status["workers"]} == {1}, status
