"""Refresh the master's import state on HUP so new workers fork with what is on disk now.

Runs in the master (and nowhere else: a forked worker uninstalls the import recorder). The
package holds the refresh's parts: `paths` (sys.path as a fresh interpreter sees it, .pth
files), `caches` (finders and importer caches), `state` (fingerprints of what was imported),
`unload` (what is dropped from sys.modules), `imports_graph` (what depends on what, and the
pure purge decision), `report` (what a refresh did, and its one-line error).

Workers fork from the master and inherit its `sys.path`, `sys.modules` and importer
caches. After `pip install -U`, a new `.pth` file or egg, a zip archive replaced in place, an
editable install switched or a release symlink flipped, those are stale. `refresh()` runs in
the master before the first new-generation worker forks and:

1. asks a fresh interpreter (same executable, same flags, same environment, same cwd) for
   its `sys.path` and reconciles the running one with it (`reconcile`, a pure function;
   `rollover.refresh.paths`);
2. removes stale setuptools editable finders (`__editable___<name>_<ver>_finder`) from
   `sys.meta_path`, `sys.path_hooks`, `sys.path` and `sys.modules`, then runs the import
   lines of new or changed `.pth` files (the way `site` does, but only those: `site.main()`
   is never called, it would rewrite `''` and grow `site.PREFIXES` every time;
   `rollover.refresh.caches`);
3. drops importer caches of removed or changed paths, zipimport's directory cache of
   archives that changed, calls every finder's `invalidate_caches` one by one (a broken
   finder is a reported problem, not a failed refresh), and clears importlib.metadata's
   `FastPath` cache (3.11's `importlib.invalidate_caches` does not);
4. purges from `sys.modules` each top-level package (with all its submodules) whose files
   changed on disk, that now resolves somewhere else, or whose distribution's version
   changed (`changed_tops`, a pure function; `rollover.refresh.state`), with every
   package that depends on one of those and the app's own packages
   (`rollover.refresh.imports_graph.select_purge`, pure, on the graph of declared and recorded
   dependencies) -- never the stdlib, gunicorn, rollover itself, the names in `keep` (the
   worker class's), a distribution with a loaded C extension, or what any of those
   depends on. A change there cannot be refreshed
   in-process: it is reported in `RefreshReport.needs_reexec` (`kill -USR2`), the package
   stays loaded as a whole (its `__path__` pinned to the real directory it came from when
   a release symlink flipped) and stays reported on every HUP until a re-exec
   (`rollover.refresh.unload`).

What "changed" means is kept in a module-level registry: fingerprints (device, inode,
size, mtime, ctime) of module files, `.pth` files, `sys.path` entries and zip archives,
the real directories of packages, and the distributions on the path. They are taken when
this module is imported (in the master: while gunicorn loads the config), before every
fork for modules imported since (a worker spawn: the config's and a preloaded app's
modules, still as imported) and at the end of each refresh (`rollover.refresh.state`). A
module with no fingerprint yet counts as changed if its file was modified after the last
pass.

A refresh that fails or times out raises `RefreshError` (one line) and leaves the import
state exactly as it was (`snapshot()`/`restore()`, which the arbiter also uses to make a
preload re-import transactional; a snapshot carries the registry, so a refresh after a
restore finds the same changes again). When the interpreter itself changed on disk
(another Python behind the same path), nothing is touched and `NeedsReexec`, a
`RefreshError`, says so: its site-packages would half-load into this process.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollover.refresh import imports_graph
from rollover.refresh.caches import (
    invalidate_caches,
    moved_tops,
    remove_stale_finders,
    rerun_pth_imports,
)
from rollover.refresh.imports_graph import Dist, PurgePlan, distributions, select_purge, versioned
from rollover.refresh.paths import (
    DEFAULT_TIMEOUT,
    ask_fresh_interpreter,
    interpreter_flags,
    path_key,
    reconcile,
)
from rollover.refresh.report import NeedsReexec, RefreshError, RefreshReport
from rollover.refresh.state import (
    CHANGED,
    CLOCK_SLACK_NS,
    Fingerprint,
    Registry,
    archive_fps,
    changed_tops,
    finder_fps,
    fingerprint,
    fingerprint_new_modules,
    identity,
    interpreter_changes,
    loaded_files,
    real_package_dirs,
    take_registry,
)
from rollover.refresh.unload import (
    distribution_changes,
    is_extension,
    needs_reexec,
    pinned_by,
    purge,
    running_tops,
    same_content,
)

imports_graph.install()  # import edges from now on: what depends on what, for the purge

__all__ = [
    "DEFAULT_TIMEOUT",
    "Fingerprint",
    "ImportSnapshot",
    "NeedsReexec",
    "PurgePlan",
    "RefreshError",
    "RefreshReport",
    "ask_fresh_interpreter",
    "changed_tops",
    "interpreter_flags",
    "reconcile",
    "refresh",
    "restore",
    "select_purge",
    "snapshot",
    "versioned",
]

# Top-level names never purged: rollover runs the arbiter, gunicorn is the arbiter. A
# change on disk to one of them (or to a name in `keep`) needs a re-exec.
ALWAYS_KEPT = frozenset({"gunicorn", "rollover"})

# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class ImportSnapshot:
    """The import state of this process at one moment (shallow copies)."""

    modules: dict[str, Any]
    path: list[str]
    meta_path: list[Any]
    path_hooks: list[Any]
    path_importer_cache: dict[str, Any]
    registry: Any = field(default=None, repr=False)
    """refresh's own baseline (fingerprints) that goes with these modules: restored with
    them, so a refresh after a roll-back finds the same changes again."""


def snapshot() -> ImportSnapshot:
    """Capture `sys.modules`, `sys.path`, `sys.meta_path`, `sys.path_hooks` and
    `sys.path_importer_cache` (copies of the containers, the same module/finder objects),
    with refresh's baseline."""
    return ImportSnapshot(
        modules=dict(sys.modules),
        path=list(sys.path),
        meta_path=list(sys.meta_path),
        path_hooks=list(sys.path_hooks),
        path_importer_cache=dict(sys.path_importer_cache),
        registry=_registry,
    )


def _restore_dict(target: dict[str, Any], saved: Mapping[str, Any]) -> None:
    # In place and without ever emptying the dict: another thread may be importing.
    for key in [k for k in target if k not in saved]:
        target.pop(key, None)
    for key, value in saved.items():
        if key not in target or target[key] is not value:
            target[key] = value


def restore(snap: ImportSnapshot) -> None:
    """Put back exactly what `snapshot()` captured (the same objects, in place)."""
    global _registry
    _restore_dict(sys.modules, snap.modules)
    sys.path[:] = snap.path
    sys.meta_path[:] = snap.meta_path
    sys.path_hooks[:] = snap.path_hooks
    _restore_dict(sys.path_importer_cache, snap.path_importer_cache)
    if snap.registry is not None:
        _registry = snap.registry


# --------------------------------------------------------------------------- the baseline

# Taken when this module is imported (in the master: while gunicorn loads the config),
# completed before every fork, replaced by each refresh and by `restore`.
_registry: Registry = take_registry(time.time_ns())

os.register_at_fork(before=lambda: fingerprint_new_modules(_registry))


# --------------------------------------------------------------------------- refresh


def refresh(
    *,
    timeout: float = DEFAULT_TIMEOUT,
    keep: Iterable[str] = (),
    protect_paths: Iterable[str] = (),
    executable: str | None = None,
    environ: Mapping[str, str] | None = None,
    dependents: bool = True,
) -> RefreshReport:
    """Refresh this process's import state to what a fresh interpreter would see now.

    `keep`: extra top-level module names never purged (the worker class's); a change to
    them is reported as needing a re-exec. `dependents`: also purge what depends on a
    changed package, and the app's own modules (`select_purge`). `protect_paths`:
    sys.path entries never removed (gunicorn's `chdir` and `pythonpath`). `timeout`
    bounds the fresh interpreter. Raises RefreshError (nothing changed) on failure or
    timeout, NeedsReexec (a RefreshError, nothing changed) when the interpreter changed.
    """
    global _registry
    started = time.monotonic()
    pass_ns = time.time_ns()
    reg = _registry
    fresh = ask_fresh_interpreter(timeout, executable, environ)
    report = RefreshReport()
    interpreter = interpreter_changes(reg, fresh)
    if interpreter:
        # Its site-packages and stdlib belong to another interpreter: loading from them
        # would half-load. Leave everything as it is; only a re-exec can pick this up.
        raise NeedsReexec(interpreter)
    saved = snapshot()
    try:
        _registry = _apply(report, reg, fresh, set(keep), list(protect_paths), pass_ns,
                           dependents)
    except BaseException as exc:
        restore(saved)
        if not isinstance(exc, Exception):
            raise
        raise RefreshError(f"import refresh failed, nothing changed: "
                           f"{type(exc).__name__}: {exc}") from exc
    report.duration = time.monotonic() - started
    return report


def _apply(
    report: RefreshReport,
    reg: Registry,
    fresh: Mapping[str, Any],
    keep: set[str],
    protect_paths: list[str],
    pass_ns: int,
    dependents: bool = True,
) -> Registry:
    """The refresh proper, in order; returns the next baseline. Fills `report`."""
    fresh_path = [str(p) for p in fresh["path"]]
    site_dirs = [str(d) for d in fresh["site_dirs"]]
    since = reg.since_ns - CLOCK_SLACK_NS
    # 1. sys.path, stale editable finders, .pth import lines
    pth_now, site_entries = _refresh_path(report, reg, fresh_path, site_dirs,
                                          {"", *protect_paths}, since)
    # 2. importer caches
    invalidate_caches(reg, report.paths_removed, since, report.problems)
    # 3. what changed, what depends on it, and the purge
    dists = distributions(sys.path)
    files = loaded_files()
    now = {path: fingerprint(path) for path in set(filter(None, files.values()))}
    changed, plan = _plan_purge(report, reg, files, dists, now, keep, since, dependents)
    purge(plan.purge)
    report.modules_purged = sorted(plan.purge)
    report.dependents_purged = sorted(t for t in plan.purge if t not in changed)
    report.needs_reexec.extend(needs_reexec(plan, changed, reg, dists))
    # 4. the new baseline
    return _next_registry(reg, plan, changed, files, now, dists, pass_ns,
                          pth_now, site_entries | {path_key(p) for p in fresh_path})


def _refresh_path(
    report: RefreshReport,
    reg: Registry,
    fresh_path: list[str],
    site_dirs: list[str],
    protected: set[str],
    since: int,
) -> tuple[dict[str, Fingerprint], set[str]]:
    """Reconcile `sys.path`, take out stale editable finders, run the import lines of new
    or changed `.pth` files and reconcile once more (an import line may have added
    entries: editable placeholders). Returns `rerun_pth_imports`'s baseline parts."""
    new_path, added, removed = reconcile(sys.path, fresh_path, protected,
                                         site_derived=reg.site_entries)
    sys.path[:] = new_path
    report.finders_removed = remove_stale_finders(reg, since)
    pth_now, site_entries = rerun_pth_imports(reg, site_dirs, report.finders_removed,
                                              report.problems)
    new_path, added2, removed2 = reconcile(sys.path, fresh_path, protected,
                                           site_derived=reg.site_entries)
    sys.path[:] = new_path
    added += [p for p in added2 if p not in added]
    removed += [p for p in removed2 if p not in removed]
    report.paths_added = [p for p in added if p not in removed]
    report.paths_removed = [p for p in removed if p not in added]
    return pth_now, site_entries


def _plan_purge(
    report: RefreshReport,
    reg: Registry,
    files: Mapping[str, str | None],
    dists: Mapping[str, Dist],
    now: Mapping[str, Fingerprint | None],
    keep: set[str],
    since: int,
    dependents: bool,
) -> tuple[dict[str, str], PurgePlan]:
    """(changed top-level package -> why, the purge plan): what changed on disk, moved or
    changed distribution version, and `select_purge`'s plan for it."""
    report.distributions_changed, moved = distribution_changes(reg.dists, dists)
    if report.distributions_changed or report.paths_added or report.paths_removed:
        moved.setdefault("pkg_resources", "its working set predates changed distributions")
    tops = sorted({name.partition(".")[0] for name in files})
    for top, why in moved_tops(tops).items():
        moved.setdefault(top, why)
    moved = {top: why for top, why in moved.items() if top in tops}
    changed = changed_tops(files, reg.modules, now, since_ns=since, moved=moved)
    # code running now (a frame on some thread's stack: pytest around an in-process
    # arbiter, the module whose run() started it) cannot be replaced under itself
    kept = ALWAYS_KEPT | keep | running_tops()
    held = pinned_by(kept, tops)
    extensions = {name for name, path in files.items() if is_extension(path)}

    def plan_for(changed: dict[str, str]) -> PurgePlan:
        return select_purge(imports_graph.gather(
            files, dists, changed=changed, protected=kept, held=held,
            extensions=extensions, dependents=dependents))

    plan = plan_for(changed)
    # a package that must stay (gunicorn, rollover, C extensions) and "changed" only by
    # inode/mtime -- each release holds its own copy -- is compared by content first
    same = [top for top in plan.blocked if top in changed and top not in moved
            and same_content(top, files, reg, now)]
    if same:
        changed = {top: why for top, why in changed.items() if top not in same}
        plan = plan_for(changed)
    return changed, plan


def _next_registry(
    reg: Registry,
    plan: PurgePlan,
    changed: Mapping[str, str],
    files: Mapping[str, str | None],
    now: Mapping[str, Fingerprint | None],
    dists: dict[str, Dist],
    pass_ns: int,
    pth_now: dict[str, Fingerprint],
    site_entries: set[str],
) -> Registry:
    """The baseline of the next refresh. A blocked package that changed keeps its old one
    (and its files count as changed): it stays stale, reported on every HUP."""
    modules: dict[str, Fingerprint] = {}
    package_dirs = real_package_dirs(n for n in files if n.partition(".")[0] not in plan.purge)
    for name, path in files.items():
        top = name.partition(".")[0]
        if top in plan.blocked and top in changed:
            if name in reg.package_dirs:
                package_dirs[name] = reg.package_dirs[name]
            if path is not None:
                modules[path] = CHANGED  # stale until a re-exec: reported every time
            continue
        # a purged module's file as found now: what its re-import reads (a file written
        # just before this pass would otherwise count as changed again at the next one)
        fp = now.get(path) if path is not None else None
        if path is not None and fp is not None:
            modules[path] = fp
    modules.update(finder_fps())
    return Registry(
        since_ns=pass_ns,
        modules=modules,
        pth=pth_now,
        paths={p: identity(p) for p in [*sys.path, *list(sys.path_importer_cache)] if p},
        archives=archive_fps(p for p in sys.path if os.path.isfile(p or ".")),
        dists=dists,
        site_entries=site_entries,
        package_dirs=package_dirs,
        executable=reg.executable,
        executable_fp=reg.executable_fp,
        base_prefix=reg.base_prefix,
        version=reg.version,
    )
