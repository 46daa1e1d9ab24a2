"""Pruning: keep the `--keep` newest releases, never the live one, the rollback target, or
one that a running process still uses (cwd, executable or a mapped file under it) or that
the live master captured at start."""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import psutil

from rollover.deploy.layout import Layout, Release
from rollover.deploy.report import Report
from rollover.master import mapped_paths, memory_map, pidfile_pid, poll_status


def releases_in_use(layout: Layout) -> dict[str, set[int]]:
    """Release ids some process uses (cwd, executable or a mapped file), with the pids."""
    prefix = os.path.realpath(layout.releases) + os.sep
    used: dict[str, set[int]] = {}

    def note(path: str | None, pid: int) -> None:
        if not path:
            return
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if path.startswith(prefix):
            release = path[len(prefix):].split(os.sep, 1)[0]
            used.setdefault(release, set()).add(pid)

    for process in psutil.process_iter():
        pid = process.pid
        for read in (process.cwd, process.exe):
            with contextlib.suppress(psutil.Error, OSError):
                note(read(), pid)
        with contextlib.suppress(OSError):
            for path in mapped_paths(memory_map(pid)):
                note(path, pid)
    return used


def prune_plan(releases: list[Release], keep: int, protect: set[str],
               in_use: set[str]) -> tuple[list[Release], list[Release]]:
    """(kept, removed): the `keep` newest releases, plus every protected or used one."""
    kept, removed = [], []
    for index, release in enumerate(releases):  # newest first
        if index < keep or release.id in protect or release.id in in_use:
            kept.append(release)
        else:
            removed.append(release)
    return kept, removed


def prune(layout: Layout, keep: int, protect: set[str], report: Report, dry_run: bool,
          referenced: list[str] | None = None) -> None:
    started = time.monotonic()
    used = releases_in_use(layout)
    prefix = os.path.realpath(layout.releases) + os.sep
    for path in referenced or []:
        real = os.path.realpath(path)
        if real.startswith(prefix):
            used.setdefault(real[len(prefix):].split(os.sep, 1)[0], set())
    kept, removed = prune_plan(layout.list(), keep, protect, set(used))
    report.kept = [r.id for r in kept]
    report.pruned = [r.id for r in removed]
    verb = "would remove" if dry_run else "removed"
    held = sorted(set(used) & {r.id for r in kept})
    text = f"kept {', '.join(report.kept) or 'none'}"
    if held:
        text += f" (in use: {', '.join(held)})"
    text += f"; {verb} {', '.join(report.pruned) or 'none'}"
    if not dry_run:
        for release in removed:
            layout.remove(release.path)
        with contextlib.suppress(OSError):
            for entry in os.scandir(layout.releases):
                if entry.name.startswith((".trash-", ".dry-run-")) and entry.is_dir():
                    shutil.rmtree(entry.path, ignore_errors=True)
    report.say("prune", text)
    report.done("prune", started, text)


def master_references(pidfile: str, status_path: str | None) -> list[str]:
    """Paths the live master captured at start and uses later (the directory a USR2
    re-exec starts in, the `chdir` default each HUP validates, its interpreter)."""
    if status_path is None:
        return []
    pid = pidfile_pid(pidfile)
    status = (poll_status(status_path, pid) if pid is not None else None) or {}
    paths = []
    for key, section in (("start", ("cwd", "chdir_default")),
                         ("python", ("executable", "prefix"))):
        data = status.get(key)
        if isinstance(data, dict):
            paths += [v for k in section if isinstance(v := data.get(k), str) and v]
    return paths
