"""The command line against real masters (issue #16): `ROLLOVER_PIDFILE`, the final `N/N`
line, a timed-out `--wait` (the roll carries on), a config SyntaxError named by file and
line, and the status file's lifetime (removed on a clean exit, kept when the master halts
on an error)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import ROLLOVER_CLI, AppCode, Master, roll_done, start_settled

pytestmark = pytest.mark.process


def rollover(master: Master, *args: str, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    """The CLI with the master's pidfile in $ROLLOVER_PIDFILE (no --pidfile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOVER_")}
    env["ROLLOVER_PIDFILE"] = str(master.pidfile)
    return subprocess.run([str(ROLLOVER_CLI), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)


def test_reload_wait_with_rollover_pidfile_final_line_and_syntax_error(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        tmp_path: Path) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.2)
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("from rollover.hooks import *  # noqa\n")
    master, _ = start_settled(masters, app, 2, config=str(config))

    app.write("v2", boot_delay=0.2)
    result = rollover(master, "reload", "--wait")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0] == f"sent HUP to master {master.pid}", lines
    assert lines[-2] == "2/2 workers on generation 1", lines
    assert lines[-1].startswith("rolled out generation 1 in "), lines

    config.write_text("from rollover.hooks import *  # noqa\nworkers = (\n")
    result = rollover(master, "reload", "--wait")
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"rollover: rollout of generation 2 aborted: config reload "
                                    f"failed: {config}:2: SyntaxError: "), result.stderr

    status = rollover(master, "status")
    assert status.returncode == 0 and f"{config}:2: SyntaxError" in status.stdout, status


def test_reload_wait_timeout_says_the_roll_carries_on(
        make_app: Callable[..., AppCode], masters: Callable[..., Master]) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.1)
    master, before = start_settled(masters, app, 2)
    app.write("v2", boot_delay=1.5)
    result = rollover(master, "reload", "--wait", "--timeout", "0.5")
    assert result.returncode == 3, result
    # rolling, or (a busy machine: the HUP's import refresh still runs) not yet processed
    assert result.stderr.startswith((
        "rollover: timed out after 0.5s waiting for the roll; state: rolling",
        "rollover: timed out after 0.5s waiting for the roll; state: idle, the master has not "
        "processed the HUP yet")), result.stderr
    assert result.stderr.rstrip().endswith(
        "the roll carries on in the master (`rollover status` shows it)"), result.stderr
    status = master.wait_status(roll_done(before["reloads"]), 30, "the roll to end")
    assert status["last_rollout"]["result"] == "succeeded"


def test_status_file_removed_on_a_clean_exit_kept_on_a_halt(
        make_app: Callable[..., AppCode], masters: Callable[..., Master]) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.1)
    master, _ = start_settled(masters, app, 2)
    os.kill(master.pid, signal.SIGTERM)
    assert master.wait_exit(30) == 0
    assert not master.status_path.exists()

    broken = make_app()
    broken.write("v1", boot_delay=0.1, error="cannot boot")
    halted = masters(broken, workers=1)
    assert halted.wait_exit(30) != 0
    assert halted.status_path.exists(), "a master that halted on an error keeps its status"
