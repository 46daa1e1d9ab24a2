"""The app root: `<root>/releases/<id>/` (each with its metadata file) and the `<root>/current`
symlink, switched atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollover.deploy.report import DeployError
from rollover.status import write_atomic

METADATA = ".rollover-release.json"
BUILD_LOG = ".rollover-build.log"
LOCK_NAME = ".rollover-deploy.lock"
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


@dataclass(frozen=True)
class Release:
    id: str
    path: Path
    created: float
    complete: bool
    served: bool = False  # deployed successfully at least once
    failed: str | None = None  # why its build, preflight or live step failed (never served)

class Layout:
    """`<root>/releases/<id>/` and the `<root>/current` symlink."""

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(root))
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.shared = self.root / "shared"

    def check(self, create: bool = False) -> None:
        if create and not self.root.exists():
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise DeployError(f"cannot create the app root {self.root}: "
                                  f"{exc.strerror}") from None
        if not self.root.is_dir():
            raise DeployError(f"app root {self.root}: no such directory")
        if self.current.exists() and not self.current.is_symlink():
            raise DeployError(f"{self.current} is not a symlink: it cannot be switched "
                              "atomically (move it into releases/ and link it)")
        self.releases.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise DeployError(f"another deploy is running on {self.root} "
                                  f"(pid {holder}, lock {path})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def current_id(self) -> str | None:
        """The release `current` names; None without a `current` link."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeployError(f"cannot read {self.current}: {exc.strerror}") from None
        resolved = Path(os.path.normpath(self.root / target))
        if resolved.parent != self.releases:
            raise DeployError(f"{self.current} -> {target} is not a release in {self.releases}")
        return resolved.name

    def path(self, release_id: str) -> Path:
        return self.releases / release_id

    def release(self, release_id: str) -> Release | None:
        path = self.path(release_id)
        if not path.is_dir() or path.is_symlink():
            return None
        meta = read_metadata(path)
        created = meta.get("created") if meta else None
        if not isinstance(created, int | float):
            created = path.stat().st_mtime
        meta = meta or {}
        note = meta.get("note")
        served = bool(meta.get("served")) or (isinstance(note, str)
                                               and note.startswith("deployed"))
        failed = meta.get("failed")
        if not served and failed is None and not meta.get("complete"):
            failed = "incomplete build"
        return Release(release_id, path, float(created), bool(meta.get("complete")), served,
                       str(failed) if failed is not None and not served else None)

    def list(self) -> list[Release]:
        """Every release dir (complete or not), newest first; hidden scratch dirs excluded."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.releases):
                if entry.name.startswith("."):
                    continue
                release = self.release(entry.name)
                if release is not None:
                    found.append(release)
        return sorted(found, key=lambda r: (r.created, r.id), reverse=True)

    def switch(self, release_id: str) -> None:
        """Point `current` at `releases/<id>` atomically: a new symlink renamed over it."""
        tmp = self.root / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", release_id), tmp)
        try:
            os.replace(tmp, self.current)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def trash(self, path: Path) -> Path | None:
        """Take a release out of `releases/` (renamed to a hidden `.trash-*`, deleted
        later); the new path, or None if it was gone."""
        trash = self.releases / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash


def read_metadata(release_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((release_dir / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_metadata(release_dir: Path, data: dict[str, Any]) -> None:
    write_atomic(str(release_dir / METADATA), json.dumps(data, indent=2, sort_keys=True) + "\n",
                 0o644)


def new_release_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


def mark(release_dir: Path, note: str, *, served: bool = False,
         failed: str | None = None) -> None:
    """Record a release's latest outcome in its metadata: `note`; `served` (deployed
    successfully: counted by `--keep`) or `failed` (counted by `--keep-failed`)."""
    meta = read_metadata(release_dir) or {"id": release_dir.name, "complete": False}
    meta["note"] = note
    if served:
        meta["served"] = now()
        meta.pop("failed", None)
    if failed is not None and not meta.get("served"):
        meta["failed"] = failed
    meta.pop("state", None)
    with contextlib.suppress(OSError):
        write_metadata(release_dir, meta)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def current_or_none(layout: Layout) -> str | None:
    try:
        return layout.current_id()
    except DeployError:
        return None


def under(path: str, directory: Path) -> bool:
    """Whether `path`, taken literally (symlinks not resolved), lies under `directory`."""
    normal = os.path.normpath(os.path.abspath(path))
    for base in {str(directory), os.path.join(os.path.realpath(directory.parent),
                                              directory.name)}:
        if normal.startswith(base + os.sep):
            return True
    return False
