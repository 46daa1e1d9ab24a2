"""Pruning: keep the `--keep` newest releases that served and the `--keep-failed` newest of
the others (failed, rolled back, never deployed), never the live one, the rollback target,
or one that a running process still uses (cwd, executable or a mapped file under it) or
that the live master captured at start. `prune_plan` decides (pure); `prune` moves what
goes out of `releases/` and leaves the deleting to a detached process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

from rollover.client import mapped_paths, memory_map, pidfile_pid, poll_status
from rollover.deploy.layout import Layout, Release
from rollover.deploy.report import Report


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


def prune_plan(releases: list[Release], keep: int, protect: set[str], in_use: set[str],
               keep_failed: int | None = None) -> tuple[list[Release], list[Release]]:
    """(kept, removed), pure. Kept: the `keep` newest releases that served (deployed
    successfully), the `keep_failed` newest of the others (failed, rolled back, never
    deployed), and every protected or used one. `keep_failed` None: as `keep`."""
    limit = {True: keep, False: keep if keep_failed is None else keep_failed}
    seen = {True: 0, False: 0}
    kept, removed = [], []
    for release in releases:  # newest first
        good = release.served
        seen[good] += 1
        if seen[good] <= limit[good] or release.id in protect or release.id in in_use:
            kept.append(release)
        else:
            removed.append(release)
    return kept, removed


def prune(layout: Layout, keep: int, protect: set[str], report: Report, dry_run: bool,
          referenced: list[str] | None = None, keep_failed: int | None = None) -> None:
    """Decide, and move what goes out of `releases/` (a rename each: instant); the files
    are deleted afterwards by a background process (`remove_in_background`), so the
    deploy ends without waiting for a big venv to be unlinked."""
    started = time.monotonic()
    used = releases_in_use(layout)
    prefix = os.path.realpath(layout.releases) + os.sep
    for path in referenced or []:
        real = os.path.realpath(path)
        if real.startswith(prefix):
            used.setdefault(real[len(prefix):].split(os.sep, 1)[0], set())
    releases = layout.list()
    kept, removed = prune_plan(releases, keep, protect, set(used), keep_failed)
    report.kept = [r.id for r in kept]
    report.pruned = [r.id for r in removed]
    verb = "would remove" if dry_run else "removing"
    held = sorted(set(used) & {r.id for r in kept})
    failed = [r.id for r in kept if not r.served]
    text = f"kept {', '.join(r.id for r in kept if r.served) or 'none'}"
    if failed:
        text += f", failed or never deployed: {', '.join(failed)}"
    if held:
        text += f" (in use: {', '.join(held)})"
    text += f"; {verb} {', '.join(report.pruned) or 'none'}"
    if not dry_run:
        for release in removed:
            layout.trash(release.path)
        if remove_in_background(layout) and removed:
            text += " (deleted in the background)"
    report.say("prune", text)
    report.done("prune", started, text)


PRUNE_LOCK = ".rollover-prune.lock"
TRASH = ".trash-"

# run by a detached interpreter: delete releases/.trash-* under the prune lock
_REMOVER = """import fcntl, os, shutil, sys
releases, lock = sys.argv[1], sys.argv[2]
fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
while True:
    try:
        names = [n for n in os.listdir(releases) if n.startswith(sys.argv[3])]
    except OSError:
        break
    if not names:
        break
    for name in names:
        shutil.rmtree(os.path.join(releases, name), ignore_errors=True)
        if os.path.lexists(os.path.join(releases, name)):
            sys.exit(1)
"""


def remove_in_background(layout: Layout) -> bool:
    """Start a detached process deleting `releases/.trash-*` (one at a time per root: it
    waits for the prune lock); False when there is nothing to delete."""
    try:
        pending = [e.name for e in os.scandir(layout.releases)
                   if e.name.startswith((TRASH, ".dry-run-"))]
    except OSError:
        return False
    dry = [n for n in pending if n.startswith(".dry-run-")]
    for name in dry:  # scratch dirs of interrupted dry runs
        layout.trash(layout.releases / name)
    if not pending:
        return False
    subprocess.Popen(
        [sys.executable, "-I", "-c", _REMOVER, str(layout.releases),
         str(layout.root / PRUNE_LOCK), TRASH],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, cwd="/",
    )
    return True


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
