"""The status file: what the master tells the world about its workers and rolls.

The master writes it atomically (temp file in the same directory + rename, mode 0600)
after every change; `rollover status` and `rollover reload --wait` read it. The schema
is documented in the README ("Status file"); `SCHEMA` is bumped on incompatible changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from typing import Any

SCHEMA = 1


class StatusError(Exception):
    """The status file is missing, unreadable or not a rollover status (one-line message)."""


def default_status_path(pidfile: str) -> str:
    """Where the status lives when `rollover_status_path` is not set: next to the pidfile.

    `/run/app/gunicorn.pid` -> `/run/app/gunicorn.rollover.json`.
    """
    base, ext = os.path.splitext(pidfile)
    return (base if ext == ".pid" else pidfile) + ".rollover.json"


def iso(ts: float | None) -> str | None:
    """A wall-clock timestamp as ISO-8601 UTC with microseconds (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` atomically (temp file in the same directory + rename),
    with file mode `mode`: a reader sees the old content or the new, never a part.
    The one writer of the status, a release's metadata and a pidfile."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rollover-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_status(path: str, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` atomically with mode 0600.

    Raises OSError (full disk, missing directory, permissions): the caller in the master
    logs it and carries on.
    """
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def read_status(path: str) -> dict[str, Any]:
    """Read and sanity-check a status file; StatusError with one line otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise StatusError(f"no status file at {path} (is the master running rollover?)") from None
    except OSError as exc:
        raise StatusError(f"cannot read status file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StatusError(f"status file {path} is corrupt: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise StatusError(f"status file {path} is not a rollover status (schema {SCHEMA})")
    for key, kind in (("pid", int), ("generation", int), ("state", str), ("reloads", int),
                      ("workers", list)):
        if not isinstance(data.get(key), kind):
            raise StatusError(f"status file {path} is corrupt: bad or missing {key!r}")
    return data


def remove_own(path: str | None, pid: int) -> None:
    """Remove the status file at `path` if it is `pid`'s (a master exiting cleanly): after
    a USR2 handoff the file may already be the new master's, which stays."""
    if path is None:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            owner = json.load(fh).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if owner == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
