"""Talking to a running rollover master from outside: its pidfile, the process behind it,
its status file, and following a roll it is making.

Used by `rollover status` / `reload` (`rollover.cli`) and `rollover deploy`
(`rollover.deploy`); imports nothing of either. Other processes are read through psutil.
Every problem is a `MasterError` with a one-line message.

Following a roll is the pure function `follow`, so it can be tested on hand-written
status dicts; `follow_roll` polls the status file and applies it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psutil

from rollover.status import StatusError, parse_iso, read_status

POLL_INTERVAL = 0.1
CLOCK_SLACK = 0.5  # a roll that started this long before our HUP may still be ours


class MasterError(Exception):
    """No such master, not a rollover master, unreadable status...: one line."""


class RollTimeout(Exception):
    """The roll did not end in time; the message says where it stood."""


# --- following a roll (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """The roll covering our HUP is under way."""

    generation: int
    new_ready: int
    target: int
    canary: str | None = None  # "judging worker N", then its verdict and figures
    # every worker is new and READY, but these old ones may still accept: the roll waits
    accepting: int = 0

    def line(self) -> str:
        text = f"{self.new_ready}/{self.target} workers on generation {self.generation}"
        if self.canary:
            text += f" (canary {self.canary})"
        if self.accepting and self.new_ready >= self.target:
            text += (f" (waiting for {self.accepting} retired worker(s) to stop "
                     f"accepting)")
        return text


@dataclass(frozen=True)
class Done:
    """The roll covering our HUP ended: `result` is "succeeded" or "aborted"."""

    result: str
    record: dict[str, Any]


def covers(record: Any, before: int, sent_at: float) -> bool:
    """Whether a rollout record belongs to a HUP processed after ours was sent.

    `reload` is the master's HUP count when the roll started, so it must exceed the count
    we read before signalling; `started` guards against an earlier roll by someone else
    that the counter alone cannot tell apart (a burst of HUPs may count once).
    """
    if not isinstance(record, dict):
        return False
    reload, started = record.get("reload"), record.get("started")
    if not isinstance(reload, int) or isinstance(reload, bool) or reload <= before:
        return False
    try:
        return parse_iso(str(started)) >= sent_at - CLOCK_SLACK
    except (TypeError, ValueError, OverflowError):
        return False


def follow(status: dict[str, Any], before: int, sent_at: float) -> Progress | Done | None:
    """Where the roll covering our HUP stands in `status`; None while nothing covers it yet.

    A finished covering roll wins over one in progress (ours ended, someone else's began);
    a superseded one means keep following the roll that replaced it.
    """
    last = status.get("last_rollout")
    if covers(last, before, sent_at) and isinstance(last, dict) \
            and last.get("result") != "superseded":
        return Done(str(last.get("result")), last)
    current = status.get("rollout")
    if covers(current, before, sent_at) and isinstance(current, dict):
        return Progress(
            generation=_int(current.get("generation")),
            new_ready=_int(current.get("new_ready")),
            target=_int(current.get("target", status.get("workers_target"))),
            canary=_canary(current.get("canary")),
            accepting=_int(current.get("old_accepting")),
        )
    return None


def final_progress(done: Done, status: dict[str, Any], shown: Progress | None
                   ) -> Progress | None:
    """The `N/N` progress of a roll that succeeded, unless it was the last one shown (the
    master records success in the same status write that counts the last worker READY)."""
    if done.result != "succeeded":
        return None
    target = shown.target if shown is not None else _int(status.get("workers_target"))
    final = Progress(_int(done.record.get("generation")), target, target)
    if shown is not None and final == replace(shown, canary=None):  # a waiting line differs
        return None
    return None if target <= 0 else final


def draining_canary(record: Any) -> bool:
    """A roll ended by a failed canary that is still draining (its counts not yet final)."""
    canary = record.get("canary") if isinstance(record, dict) else None
    return (isinstance(canary, dict) and canary.get("verdict") == "failed"
            and canary.get("final") is False)


def _canary(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if record.get("verdict") is None:
        return f"judging worker {record.get('pid')}"
    return f"{record['verdict']}: {record.get('summary')}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def duration(record: dict[str, Any]) -> str:
    """How long a finished rollout record took: `4.2s` (`?s` if unknown)."""
    try:
        return f"{parse_iso(record['finished']) - parse_iso(record['started']):.1f}s"
    except (KeyError, TypeError, ValueError, OverflowError):
        return "?s"


# --- processes -----------------------------------------------------------------------------


def read_pidfile(pidfile: str) -> int:
    try:
        with open(pidfile, encoding="utf-8", errors="replace") as fh:
            text = fh.read(64).strip()
    except OSError as exc:
        raise MasterError(f"pidfile {pidfile}: {(exc.strerror or str(exc)).lower()}") from None
    if not text:
        raise MasterError(f"pidfile {pidfile}: empty")
    try:
        pid = int(text)
    except ValueError:
        raise MasterError(f"pidfile {pidfile}: not a pid: {text[:40]!r}") from None
    if pid <= 0 or pid > 2**31 - 1:  # kill(0) or kill(-n) would signal a process group
        raise MasterError(f"pidfile {pidfile}: not a pid: {text[:40]!r}")
    return pid


def pidfile_pid(path: str) -> int | None:
    """The pid a pidfile names; None if it is missing or holds no pid."""
    try:
        return read_pidfile(path)
    except MasterError:
        return None


def is_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie; PermissionError if it is someone else's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (anyone's)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def parent_pid(pid: int) -> int | None:
    """The parent of a live (not zombie) process; None if there is none."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.ppid()
    except psutil.Error:
        return None


def child_pids(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children()}
    except psutil.Error:
        return set()


def process_argv(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def process_environ(pid: int) -> dict[str, str]:
    try:
        return dict(psutil.Process(pid).environ())
    except psutil.Error:
        return {}


def process_cwd(pid: int) -> str | None:
    try:
        return str(psutil.Process(pid).cwd())
    except psutil.Error:
        return None


def memory_map(pid: int) -> str:
    """/proc/<pid>/maps as text (OSError if unreadable). Read by hand: psutil's
    memory_maps() reads the much larger smaps and drops the " (deleted)" mark, which tells
    a shared object replaced on disk."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def mapped_paths(maps: str) -> list[str]:
    """The file paths in a `memory_map` (each with its " (deleted)" mark, if any)."""
    paths = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            paths.append(parts[5].strip())
    return paths


def command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        raise MasterError(f"stale pidfile: no process {pid}") from None
    except psutil.Error as exc:
        raise MasterError(f"cannot read the command line of process {pid}: {exc}") from None


# --- the master ------------------------------------------------------------------------------


def validate_master(pidfile: str, status_path: str) -> tuple[int, dict[str, Any]]:
    """The master's pid and current status, or MasterError; nothing is signalled here."""
    pid = read_pidfile(pidfile)
    try:
        alive = is_alive(pid)
    except PermissionError:
        raise MasterError(f"process {pid} belongs to another user") from None
    except OSError as exc:
        raise MasterError(f"cannot check process {pid}: {exc.strerror or exc}") from None
    if not alive:
        raise MasterError(f"stale pidfile: no process {pid}")
    if "gunicorn" not in command_line(pid):
        raise MasterError(f"process {pid} is not a gunicorn master")
    try:
        status = read_status(status_path)
    except StatusError as exc:
        raise MasterError(str(exc)) from None
    if status["pid"] != pid:
        raise MasterError(
            f"master {pid} is not running rollover (status file names pid {status['pid']})"
        )
    return pid, status


def poll_status(path: str, pid: int) -> dict[str, Any] | None:
    """The status if readable and still our master's; None for a transient miss."""
    try:
        status = read_status(path)
    except StatusError:
        return None
    return status if status["pid"] == pid else None


def send_hup(pidfile: str, status_path: str) -> tuple[int, dict[str, Any], float]:
    """HUP the validated master: (its pid, its status just before, when it was sent)."""
    pid, status = validate_master(pidfile, status_path)
    sent_at = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise MasterError(f"stale pidfile: no process {pid}") from None
    except PermissionError:
        raise MasterError(f"process {pid} belongs to another user") from None
    return pid, status, sent_at


def follow_roll(pid: int, path: str, status: dict[str, Any], sent_at: float, timeout: float,
                on_progress: Callable[[Progress], None]) -> Done:
    """Poll the status until the roll covering a HUP sent at `sent_at` (to a master whose
    status before was `status`) ends. MasterError if the master exits meanwhile,
    RollTimeout after `timeout` seconds."""
    before = status["reloads"]
    deadline = time.monotonic() + timeout
    shown: Progress | None = None
    while True:
        alive = is_alive(pid)  # sampled before reading: a final status is never missed
        status = poll_status(path, pid) or status
        outcome = follow(status, before, sent_at)
        if isinstance(outcome, Done):
            if draining_canary(outcome.record) and alive and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)  # its final counts come once it has drained
                continue
            final = final_progress(outcome, status, shown)
            if final is not None:
                on_progress(final)
            return outcome
        if isinstance(outcome, Progress) and outcome != shown:
            # the canary's state is shown when it changes, not on every line
            same_canary = shown is not None and shown.canary == outcome.canary
            shown = outcome
            on_progress(replace(outcome, canary=None) if same_canary else outcome)
        if not alive:
            raise MasterError(f"master {pid} exited while waiting for the roll")
        if time.monotonic() >= deadline:
            where = f"state: {status.get('state', '?')}"
            if shown is not None:
                where += f", {shown.new_ready}/{shown.target} on generation {shown.generation}"
            elif status["reloads"] <= before:
                where += ", the master has not processed the HUP yet"
            raise RollTimeout(f"timed out after {timeout:g}s waiting for the roll; {where}; "
                              "the roll carries on in the master (`rollover status` shows it)")
        time.sleep(POLL_INTERVAL)


def timeout_seconds(text: str) -> float:
    """argparse type of every --timeout: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value
