"""`<root>/shared/`: state that outlives releases (uploads, an SQLite database, the env
file), linked into every release before its build step and preflight; never pruned.

Each entry (`--shared` or `shared = [...]` in rollover.toml) is a path relative to the
release: `media/` (a trailing `/` makes it a directory), `db.sqlite3`, `conf/local.py`.
The release gets a relative symlink `releases/<id>/<path> -> ../../shared/<path>`; the
source's copy of that path is not copied into the release. If `shared/<path>` does not
exist yet it is seeded once from the source's copy (if any), else created empty (a
directory, or an empty file); it is never overwritten afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rollover.deploy.report import DeployError

SHARED = "shared"
_RESERVED = {"venv", ".rollover-release.json", ".rollover-build.log"}


@dataclass(frozen=True)
class Entry:
    path: str  # relative, normalised, no trailing slash
    is_dir: bool | None  # True: directory, False: file, None: not said (decided on disk)


def entries(names: list[str]) -> list[Entry]:
    """The `--shared` names checked (pure): relative, inside the release, not its venv."""
    found: dict[str, Entry] = {}
    for name in names:
        norm = os.path.normpath(name.strip())
        if (not name.strip() or os.path.isabs(name) or norm == "." or norm.startswith("..")
                or norm.split(os.sep, 1)[0] in _RESERVED):
            raise DeployError(f"--shared {name!r}: must be a path inside the release (not "
                              "absolute, not '..', not venv/ or rollover's own files)")
        is_dir = True if name.rstrip().endswith("/") else None
        found[norm] = Entry(norm, is_dir or found.get(norm, Entry(norm, None)).is_dir)
    paths = sorted(found)
    for a in paths:
        for b in paths:
            if b.startswith(a + os.sep):
                raise DeployError(f"--shared {b!r} lies inside --shared {a!r}: name one")
    return [found[p] for p in paths]


def copy_ignore(source: Path, shared: list[Entry]) -> Callable[[str, list[str]], set[str]]:
    """For `shutil.copytree(source, ...)`: skip the shared paths (they are linked)."""
    skip = {e.path for e in shared}

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(directory, source)
        return {n for n in names
                if os.path.normpath(os.path.join(rel, n)) in skip}

    return ignore


def prepare(shared_dir: Path, shared: list[Entry], source: Path | None) -> list[str]:
    """Make each missing `shared/<path>` (seeded from the source's copy, else empty); what
    was made, for the output."""
    made = []
    for entry in shared:
        target = shared_dir / entry.path
        if target.exists() or target.is_symlink():
            continue
        origin = source / entry.path if source is not None else None
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin is not None and (origin.exists() and not origin.is_symlink()):
            if origin.is_dir():
                shutil.copytree(origin, target, symlinks=True)
            else:
                shutil.copy2(origin, target)
            made.append(f"{SHARED}/{entry.path} (seeded from the source)")
        elif entry.is_dir is False:
            target.touch()
            made.append(f"{SHARED}/{entry.path} (empty file)")
        elif entry.is_dir:
            target.mkdir()
            made.append(f"{SHARED}/{entry.path}/ (empty)")
        else:
            target.touch()
            made.append(f"{SHARED}/{entry.path} (empty file; end the name with / for a "
                        "directory)")
    return made


def link(release_dir: Path, shared_dir: Path, shared: list[Entry]) -> None:
    """`releases/<id>/<path> -> ../../shared/<path>` (relative: the root may move)."""
    for entry in shared:
        here = release_dir / entry.path
        here.parent.mkdir(parents=True, exist_ok=True)
        if here.is_symlink():
            here.unlink()
        elif here.exists():
            raise DeployError(f"{here} is the release's own copy, not a link to "
                              f"{shared_dir / entry.path} (built before it was shared?): "
                              "build a new release")
        target = os.path.relpath(shared_dir / entry.path, here.parent)
        try:
            os.symlink(target, here)
        except OSError as exc:
            raise DeployError(f"cannot link {here} to {target}: {exc.strerror}") from None
