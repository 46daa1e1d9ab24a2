"""Applying a purge and what it must respect: which packages changed by distribution
version, which ones kept code holds or runs (never purged), whether a kept package changed
only in place (same bytes in another release), the purge itself (modules, import edges,
finalizers of purged code) and what is reported as needing a re-exec."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection, Mapping
from importlib.machinery import EXTENSION_SUFFIXES
from types import FrameType
from typing import Any

from rollover.refresh import imports_graph
from rollover.refresh.imports_graph import Dist, PurgePlan, dist_tops, is_stdlib
from rollover.refresh.state import IGNORED, Fingerprint, Registry, alias_of, fingerprint


def distribution_changes(
    before: Mapping[str, Dist], after: Mapping[str, Dist],
) -> tuple[dict[str, str], dict[str, str]]:
    """(distribution name -> "old -> new", top-level name -> why it moved) for every
    distribution whose version changed, appeared or went away ("none")."""
    changed: dict[str, str] = {}
    moved: dict[str, str] = {}
    for name in sorted(set(before) | set(after)):
        old_dist, new_dist = before.get(name), after.get(name)
        dist = new_dist or old_dist
        old_version = old_dist.version if old_dist else "none"
        new_version = new_dist.version if new_dist else "none"
        if dist is None or old_version == new_version:
            continue
        changed[dist.name] = f"{old_version} -> {new_version}"
        for top in dist_tops(dist):
            moved.setdefault(top, f"distribution {dist.name} {old_version} -> {new_version}")
    return changed, moved


def purge(tops: Collection[str]) -> None:
    """Take the packages `tops` (with all their submodules, also under a second name) out
    of `sys.modules`, forget their import edges and detach the finalizers that would keep
    them alive."""
    for name, module in list(sys.modules.items()):
        real = alias_of(name, module) or name
        if real.partition(".")[0] in tops:
            sys.modules.pop(name, None)
    imports_graph.forget(tops)
    _detach_finalizers(set(tops))


def needs_reexec(plan: PurgePlan, changed: Collection[str], reg: Registry,
                 dists: Mapping[str, Dist]) -> list[str]:
    """What changed but stays loaded (the blocked packages, their directories pinned when
    a release symlink flipped), and a gunicorn on disk that is not the one running."""
    out = []
    for top, why in plan.blocked.items():
        pins = _pin_package_dirs(top, reg.package_dirs) if top in changed else []
        kept_at = f"; submodules still load from {', '.join(pins)}" if pins else ""
        out.append(f"{top}: {why}{kept_at}")
    loaded_gunicorn = getattr(sys.modules.get("gunicorn"), "__version__", None)
    on_disk = dists.get("gunicorn")
    if loaded_gunicorn and on_disk and on_disk.version != loaded_gunicorn \
            and "gunicorn" not in plan.blocked:
        out.append(f"gunicorn {loaded_gunicorn} is running, {on_disk.version} is on disk")
    return out


def pinned_by(kept: Collection[str], candidates: Collection[str]) -> dict[str, str]:
    """Packages the kept code (gunicorn, rollover, the worker class) holds references to
    (a module, a class or a function of theirs in a kept module's namespace): purging one
    would leave the kept code on the old version and the rest on the new one."""
    out: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        holder = name.partition(".")[0]
        if holder not in kept or module is None:
            continue
        with contextlib.suppress(Exception):
            for value in list(vars(module).values()):
                owner = value.__name__ if isinstance(value, type(sys)) else getattr(
                    value, "__module__", None)
                if not isinstance(owner, str):
                    continue
                top = owner.partition(".")[0]
                if top in candidates and top not in kept:
                    out.setdefault(top, holder)
    return out


def running_tops() -> set[str]:
    """Top-level packages with code on a thread's stack right now (not the stdlib)."""
    out: set[str] = set()
    for top_frame in list(sys._current_frames().values()):
        frame: FrameType | None = top_frame
        for _ in range(500):
            if frame is None:
                break
            name = frame.f_globals.get("__name__")
            if isinstance(name, str) and name not in IGNORED and not is_stdlib(name):
                out.add(name.partition(".")[0])
            frame = frame.f_back
    return out


def _owner_top(obj: Any) -> str | None:
    """The top-level package whose code `obj` is (a function, a bound method, a class, or
    an instance of a class), None when unknown."""
    target = getattr(obj, "__func__", obj)
    owner = getattr(target, "__module__", None) if isinstance(
        target, type | type(_owner_top)) else type(target).__module__
    return owner.partition(".")[0] if isinstance(owner, str) else None


def _detach_finalizers(purged: Collection[str]) -> int:
    """`weakref.finalize` entries whose object and callback both belong to purged code
    (Django's signals register one per weakly connected receiver): they would keep the
    purged modules alive for the life of the master, one copy per HUP. Detached, the
    purged code is collected; returns how many."""
    import weakref

    registry = getattr(weakref.finalize, "_registry", None)
    if not purged or not isinstance(registry, dict):
        return 0
    detached = 0
    for finalizer, info in list(registry.items()):
        with contextlib.suppress(Exception):
            obj = info.weakref()
            if (obj is not None and _owner_top(info.func) in purged
                    and _owner_top(obj) in purged):
                finalizer.detach()
                detached += 1
    return detached


def _pin_package_dirs(top: str, recorded: Mapping[str, list[str]]) -> list[str]:
    """A package that changed but stays loaded (blocked): when its directory was reached
    through a symlink since flipped (a release dir), point its `__path__` back at the real
    directory it was loaded from, so the submodules it has not imported yet come from the
    same version as the rest. Returns the directories pinned."""
    pinned: list[str] = []
    prefix = top + "."
    for name, module in list(sys.modules.items()):
        if not (name == top or name.startswith(prefix)):
            continue
        locations = getattr(module, "__path__", None)
        old = recorded.get(name)
        if not isinstance(locations, list) or not old:
            continue
        now = [os.path.realpath(p) for p in locations if isinstance(p, str)]
        if now != old and all(os.path.isdir(p) for p in old):
            locations[:] = old  # the same list as __spec__.submodule_search_locations
            pinned.extend(p for p in old if p not in pinned)
    return pinned


def _digest(path: str) -> bytes | None:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").digest()
    except OSError:
        return None


def same_content(top: str, files: Mapping[str, str | None], reg: Registry,
                  now: Mapping[str, Fingerprint | None]) -> bool:
    """Whether every file of package `top` whose fingerprint changed since the baseline
    holds the same bytes as the file the baseline saw (found through the package's
    directories as resolved then: `<root>/releases/v1/...` for `<root>/current/...`)."""
    module = sys.modules.get(top)
    literal = getattr(module, "__path__", None)
    resolved = reg.package_dirs.get(top)
    if not isinstance(literal, list) or not resolved or len(literal) != len(resolved):
        return False
    pairs = [(os.path.abspath(a) + os.sep, b + os.sep) for a, b in zip(literal, resolved,
                                                                      strict=True)]
    for name, path in files.items():
        if name.partition(".")[0] != top or path is None:
            continue
        before, current = reg.modules.get(path), now.get(path)
        if before is not None and before == current:
            continue
        if current is None or (before is not None and before.size != current.size):
            return False
        old = next((b + path[len(a):] for a, b in pairs if path.startswith(a)), None)
        if old is None or old == os.path.realpath(path):
            return False
        fp = fingerprint(old)
        # the file the baseline saw (or, for a module imported since, the one still there)
        if fp is None or (before is not None and fp != before):
            return False
        new_digest = _digest(path)
        if new_digest is None or _digest(old) != new_digest:
            return False
    return True


def is_extension(path: str | None) -> bool:
    return bool(path) and str(path).endswith(tuple(EXTENSION_SUFFIXES))
