"""Undoing a failed live step (`current` back, the server back), and what to say about it
afterwards (`failure_outcome`, from what is true then)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable

from rollover.client import pid_alive, pidfile_pid, poll_status, process_cwd
from rollover.deploy.facts import LiveMaster
from rollover.deploy.layout import Layout
from rollover.deploy.live import (
    Handoff,
    hup_and_wait,
    new_status_path,
    stop_new_master,
    wait_verified,
)
from rollover.deploy.report import (
    EXIT_DEPLOYED,
    EXIT_INTERRUPTED,
    EXIT_ROLLBACK_FAILED,
    EXIT_ROLLED_BACK,
    LiveFailure,
    Report,
)


def rollback(opts: argparse.Namespace, layout: Layout, master: LiveMaster, previous: str | None,
             method: str, handoff: Handoff, report: Report) -> str | None:
    """Undo the live step: `current` back, the server back; None, or why it failed."""
    started = time.monotonic()
    problems = []
    if method == "usr2" and handoff.old_stopped:
        # past the point of no return: the old master is gone or going, the new one (on
        # the new release, which `current` keeps naming) is all there is
        alive = handoff.new_pid is not None and pid_alive(handoff.new_pid)
        problem = (f"the old master was stopped already; the new master {handoff.new_pid} "
                   f"{'serves the new release' if alive else 'is gone: nothing may serve'}")
        report.done("rollback", started, problem, ok=False)
        return problem
    if previous is not None:
        layout.switch(previous)
        report.say("rollback", f"current -> releases/{previous}")
    if method == "usr2":
        if handoff.new_pid is not None and pid_alive(handoff.new_pid):
            report.say("rollback", f"stopping the new master {handoff.new_pid}")
            stopping = stop_new_master(handoff.new_pid, master.graceful_timeout)
            if stopping:
                report.say("rollback", stopping)
        _remove_stale(opts.pidfile + ".2", pidfile_pid)
        if new_status_path(opts, master) != master.status_path:
            _remove_stale(new_status_path(opts, master), _status_pid)
        if not pid_alive(master.pid):
            problems.append(f"the old master {master.pid} is gone")
    elif previous is None:
        problems.append("there is no previous release to go back to")
    elif method == "hup":
        # the aborted roll may have left the new config in the master and new workers READY
        try:
            record = hup_and_wait(opts.pidfile, master.status_path, opts.timeout, report,
                                  "rollback")
            report.say("rollback", wait_verified(master.status_path, master.pid,
                                                 layout.path(previous),
                                                 record.get("generation")))
        except LiveFailure as exc:
            problems.append(f"rolling back to {previous} failed: {exc}")
    report.done("rollback", started, "; ".join(problems) or f"back on {previous}",
                ok=not problems)
    return "; ".join(problems) or None


def _status_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as fh:
            pid = json.load(fh).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def _remove_stale(path: str, read_pid: Callable[[str], int | None]) -> None:
    """Remove a pidfile or status file left by a master that is gone."""
    pid = read_pid(path)
    if pid is None or not pid_alive(pid):
        with contextlib.suppress(OSError):
            os.unlink(path)


def failure_outcome(new: str, previous: str | None, current: str | None,
                    serving: str | None, cause: str, problem: str | None,
                    interrupted: bool) -> tuple[int, str]:
    """After a failed live step and the rollback: (exit code, the one line), from what is
    true now. `serving`: the release every READY worker of the live master runs (None: no
    READY worker, workers on several releases, or no master)."""
    rolled_back = EXIT_INTERRUPTED if interrupted else EXIT_ROLLED_BACK
    if problem is None:
        return rolled_back, f"deploy of {new} failed, rolled back to {previous}: {cause}"
    if previous is not None and serving == previous and current == previous:
        return rolled_back, (f"deploy of {new} failed, {previous} serves (current and every "
                             f"READY worker): {cause}; the rollback reported: {problem}")
    if serving == new and current == new:
        return EXIT_DEPLOYED, (f"warning: {cause}; but {new} serves (current and every READY "
                               f"worker): deployed")
    return EXIT_ROLLBACK_FAILED, (
        f"deploy of {new} failed ({cause}) and the rollback failed: {problem}; current names "
        f"{current or 'nothing'}, READY workers run {serving or 'no single release'}: check "
        "the server")


def serving_release(layout: Layout, pidfile: str, status_path: str) -> str | None:
    """The release every READY worker of the master named by `pidfile` runs (its cwd);
    None without a live master, READY workers, or when they run different releases."""
    pid = pidfile_pid(pidfile)
    if pid is None:
        return None
    status = poll_status(status_path, pid)
    if not status or not pid_alive(pid):
        return None
    prefix = os.path.realpath(layout.releases) + os.sep
    found: set[str] = set()
    for worker in status.get("workers", []):
        if not isinstance(worker, dict) or worker.get("state") != "ready":
            continue
        pid = worker.get("pid")
        cwd = process_cwd(pid) if isinstance(pid, int) else None
        if cwd is None:
            continue
        cwd = os.path.realpath(cwd)
        if not cwd.startswith(prefix):
            return None
        found.add(cwd[len(prefix):].split(os.sep, 1)[0])
    return found.pop() if len(found) == 1 else None
