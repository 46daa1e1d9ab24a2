"""Release symlinks (`<root>/current`): what a master addresses through them, what each
generation of workers is pinned to.

A master started through `<root>/current` (its `--chdir`, its venv) keeps addressing it
through the symlink, so that a HUP after `current` was flipped loads the new release. A
worker must not: an old worker that imports a module lazily after the flip would load it
from the next release's files, mixing versions in one process. So at fork a worker's
`sys.path` entries and its packages' `__path__` that pass through a release symlink are
rewritten to the release the symlink resolved to when its generation was prepared (the
HUP, or the start), and a USR2 re-exec goes the other way: what gunicorn captured at start
as a resolved release path (`START_CTX['cwd']`, the `chdir` default) is put back through
the symlink, so that pruning that release cannot break the new master.

Standard library only; nothing here raises.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any


def release_links(paths: Iterable[str | None]) -> dict[str, str]:
    """Symlinked directories along `paths` (e.g. `<root>/current` along `--chdir` and
    `sys.prefix`) -> where each resolves now. Taken literally: the paths are not resolved."""
    links: dict[str, str] = {}
    for path in paths:
        if not path:
            continue
        path = os.path.normpath(os.path.abspath(path))
        parts = path.split(os.sep)
        for end in range(2, len(parts) + 1):
            prefix = os.sep.join(parts[:end])
            with contextlib.suppress(OSError):
                if os.path.islink(prefix):
                    links[prefix] = os.path.realpath(prefix)
    return links


def _rewrite(path: str, mapping: Mapping[str, str]) -> str:
    """`path` with its longest prefix found in `mapping` replaced."""
    best = None
    for prefix in mapping:
        if (path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)) and (
                best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        return path
    return mapping[best] + path[len(best):]


def resolve(path: str, links: Mapping[str, str]) -> str:
    """`path` through the links' targets (`<root>/current/x` -> `<root>/releases/v2/x`)."""
    return _rewrite(path, links)


def unresolve(path: str, links: Mapping[str, str]) -> str:
    """`path` back through the links (`<root>/releases/v1/x` -> `<root>/current/x`), when
    it lies in what a link resolved to; otherwise unchanged."""
    return _rewrite(path, {target: link for link, target in links.items()
                           if target != link})


def pin(links: Mapping[str, str]) -> int:
    """In a new worker: `sys.path` and packages' `__path__` through `links` point at the
    targets. Returns how many entries were rewritten."""
    if not links:
        return 0
    count = 0

    def fix(entries: list[str]) -> None:
        nonlocal count
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                new = _rewrite(entry, links)
                if new != entry:
                    entries[i] = new
                    count += 1

    with contextlib.suppress(Exception):
        fix(sys.path)
    for module in list(sys.modules.values()):
        with contextlib.suppress(Exception):
            search = vars(module).get("__path__")
            if type(search) is list:  # namespace paths recompute from their parent's
                fix(search)
    with contextlib.suppress(Exception):
        cwd = os.environ.get("PWD")
        if cwd:
            os.environ["PWD"] = _rewrite(cwd, links)
    return count


def address_start_through_links(arbiter: Any, links: dict[str, str]) -> None:
    """What gunicorn captured at start as a resolved release dir (the directory a USR2
    re-exec starts in, the `chdir` default every HUP validates), through the symlink."""
    if not links:
        return
    cwd = arbiter.START_CTX.get("cwd")
    if isinstance(cwd, str):
        arbiter.START_CTX["cwd"] = unresolve(cwd, links)
    from gunicorn import config

    chdir = getattr(config, "Chdir", None)
    default = getattr(chdir, "default", None)
    if chdir is not None and isinstance(default, str):
        chdir.default = unresolve(default, links)


def chdir_default() -> str | None:
    from gunicorn import config

    default = getattr(getattr(config, "Chdir", None), "default", None)
    return default if isinstance(default, str) else None
