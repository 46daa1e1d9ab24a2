"""Refresh the master's import state on HUP so new workers fork with what is on disk now.

Workers fork from the master and inherit its `sys.path`, `sys.modules` and importer
caches. After `pip install -U`, a new `.pth` file or egg, a zip archive replaced in place, an
editable install switched or a release symlink flipped, those are stale. `refresh()` runs in
the master before the first new-generation worker forks and:

1. asks a fresh interpreter (same executable, same flags, same environment, same cwd) for
   its `sys.path` and reconciles the running one with it (`reconcile`, a pure function);
2. removes stale setuptools editable finders (`__editable___<name>_<ver>_finder`) from
   `sys.meta_path`, `sys.path_hooks`, `sys.path` and `sys.modules`, then runs the import
   lines of new or changed `.pth` files (the way `site` does, but only those: `site.main()`
   is never called, it would rewrite `''` and grow `site.PREFIXES` every time);
3. drops importer caches of removed or changed paths, zipimport's directory cache of
   archives that changed, calls every finder's `invalidate_caches` one by one (a broken
   finder is a reported problem, not a failed refresh), and clears importlib.metadata's
   `FastPath` cache (3.11's `importlib.invalidate_caches` does not);
4. purges from `sys.modules` each top-level package (with all its submodules) whose files
   changed on disk, that now resolves somewhere else, or whose distribution's version
   changed (`changed_tops`, a pure function), with every package that depends on one of
   those and the app's own packages (`rollover.imports_graph.select_purge`, pure, on the
   graph of declared and recorded dependencies) -- never the stdlib, gunicorn, rollover
   itself, the names in `keep` (the worker class's), a distribution with a loaded C
   extension, or what any of those depends on. A change there cannot be refreshed
   in-process: it is reported in `RefreshReport.needs_reexec` (`kill -USR2`), the package
   stays loaded as a whole (its `__path__` pinned to the real directory it came from when
   a release symlink flipped) and stays reported on every HUP until a re-exec.

What "changed" means is kept in a module-level registry: fingerprints (device, inode,
size, mtime, ctime) of module files, `.pth` files, `sys.path` entries and zip archives,
the real directories of packages, and the distributions on the path. They are taken when
this module is imported (in the master: while gunicorn loads the config), before every
fork for modules imported since (a worker spawn: the config's and a preloaded app's
modules, still as imported), by `remember()`, and at the end of each refresh. A module
with no fingerprint yet counts as changed if its file was modified after the last pass.

A refresh that fails or times out raises `RefreshError` (one line) and leaves the import
state exactly as it was (`snapshot()`/`restore()`, which the arbiter also uses to make a
preload re-import transactional; a snapshot carries the registry, so a refresh after a
restore finds the same changes again). When the interpreter itself changed on disk
(another Python behind the same path), nothing is touched and `NeedsReexec`, a
`RefreshError`, says so: its site-packages would half-load into this process.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import linecache
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES, BuiltinImporter, FrozenImporter
from typing import Any, NamedTuple

from rollover import imports_graph
from rollover.imports_graph import Dist as _Dist
from rollover.imports_graph import PurgePlan, select_purge, versioned
from rollover.imports_graph import dist_tops as _dist_tops
from rollover.imports_graph import distributions as distributions

imports_graph.install()  # import edges from now on: what depends on what, for the purge

__all__ = [
    "Fingerprint",
    "ImportSnapshot",
    "NeedsReexec",
    "PurgePlan",
    "RefreshError",
    "RefreshReport",
    "reconcile",
    "refresh",
    "remember",
    "restore",
    "select_purge",
    "snapshot",
    "versioned",
]

DEFAULT_TIMEOUT = 10.0

# Top-level names never purged: rollover runs the arbiter, gunicorn is the arbiter. A
# change on disk to one of them (or to a name in `keep`) needs a re-exec.
ALWAYS_KEPT = frozenset({"gunicorn", "rollover"})

# Modules that are not packages anyone imports by name again: never considered.
_IGNORED = frozenset({
    "__main__", "__mp_main__", "__config__", "sitecustomize", "usercustomize", "_virtualenv",
})
_EDITABLE_FINDER = re.compile(r"^__editable___.+_finder$")

# A file written just before a pass may carry a ctime a little before the pass started
# (the kernel stamps files with a coarse clock): count such files as changed.
_CLOCK_SLACK_NS = 100_000_000

_MARK = "\x00rollover-fresh-sys-path\x00"


class RefreshError(RuntimeError):
    """The refresh failed or timed out; nothing was changed. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class NeedsReexec(RefreshError):
    """The interpreter itself changed on disk (another Python version or binary behind the
    same path): its stdlib and site-packages cannot be loaded into this process, and
    new workers forked from it would half-load them. Nothing was changed; only a re-exec
    (`kill -USR2`) can pick the change up. `reasons`: what changed, for the status."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"import refresh: needs a re-exec (kill -USR2): {'; '.join(reasons)}")


# --------------------------------------------------------------------------- report


def _short(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class RefreshReport:
    """What one refresh did (or found it could not do)."""

    paths_added: list[str] = field(default_factory=list)
    paths_removed: list[str] = field(default_factory=list)
    modules_purged: list[str] = field(default_factory=list)
    """Top-level names; each was purged together with all its submodules."""
    dependents_purged: list[str] = field(default_factory=list)
    """Those of `modules_purged` that did not change themselves: they depend on one that
    did, or they are the app's own (in no distribution)."""
    distributions_changed: dict[str, str] = field(default_factory=dict)
    """Distribution name -> "old -> new" ("none" for one that appeared or went away)."""
    finders_removed: list[str] = field(default_factory=list)
    """Stale setuptools editable finder modules taken out of `sys.meta_path`."""
    needs_reexec: list[str] = field(default_factory=list)
    """What changed on disk but cannot be refreshed in-process: re-exec (`kill -USR2`)."""
    problems: list[str] = field(default_factory=list)
    """Non-fatal trouble (a finder whose invalidate_caches raised, a bad .pth line)."""
    duration: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.paths_added or self.paths_removed or self.modules_purged
                    or self.distributions_changed or self.finders_removed)

    def summary(self) -> str:
        """One line for the log."""
        parts: list[str] = []
        if self.paths_added or self.paths_removed:
            moves = [f"+{p}" for p in self.paths_added] + [f"-{p}" for p in self.paths_removed]
            parts.append(f"sys.path +{len(self.paths_added)} -{len(self.paths_removed)} "
                         f"({_short(moves)})")
        changed = [t for t in self.modules_purged if t not in self.dependents_purged]
        dependents = _short(self.dependents_purged, 8)
        if changed:
            parts.append(f"purged {_short(changed, 8)}"
                         + (f" (+ dependents {dependents})" if self.dependents_purged else ""))
        elif self.dependents_purged:
            parts.append(f"purged dependents {dependents}")
        if self.distributions_changed:
            parts.append("distributions " + _short(
                [f"{k} {v}" for k, v in sorted(self.distributions_changed.items())]))
        if self.finders_removed:
            parts.append(f"editable finders removed {_short(self.finders_removed)}")
        if self.needs_reexec:
            parts.append(f"NEEDS RE-EXEC (kill -USR2): {'; '.join(self.needs_reexec)}")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s): {'; '.join(self.problems)}")
        if not parts:
            parts.append("no changes")
        return " ".join(f"{', '.join(parts)} in {self.duration:.3f}s".split())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the status file."""
        return {
            "paths_added": list(self.paths_added),
            "paths_removed": list(self.paths_removed),
            "modules_purged": list(self.modules_purged),
            "dependents_purged": list(self.dependents_purged),
            "distributions_changed": dict(self.distributions_changed),
            "finders_removed": list(self.finders_removed),
            "needs_reexec": list(self.needs_reexec),
            "problems": list(self.problems),
            "duration": round(self.duration, 4),
        }


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


# --------------------------------------------------------------------------- fingerprints


class Fingerprint(NamedTuple):
    """What identifies a file's content without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def newest_ns(self) -> int:
        return max(self.mtime_ns, self.ctime_ns)


# Stands for "changed" in the registry: a file that changed but could not be purged stays
# changed until the master is re-executed.
_CHANGED = Fingerprint(-1, -1, -1, -1, -1)


def fingerprint(path: str) -> Fingerprint | None:
    """The file's fingerprint; for a path inside an archive (`x.zip/pkg/mod.py`), the
    archive's. None when there is no such file."""
    probe = path
    for _ in range(64):
        try:
            st = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(probe)
            if not parent or parent == probe:
                return None
            probe = parent
            continue
        except OSError:
            return None
        if probe != path and not os.path.isfile(probe):
            return None  # a missing file in a real directory
        return Fingerprint(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return None


def _identity(path: str) -> tuple[int, int, int] | None:
    """A path entry's identity (device, inode, kind): changes when a symlink is flipped or
    a directory is replaced by another one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode >> 12)


def _key(entry: str) -> str:
    """How two sys.path entries compare: '' (the cwd, read at each import) stays itself."""
    return os.path.normpath(entry) if entry else entry


# --------------------------------------------------------------------------- reconcile

def reconcile(
    running: Sequence[str],
    fresh: Sequence[str],
    protected: Collection[str] = frozenset(),
    *,
    site_derived: Collection[str] = frozenset(),
    exists: Callable[[str], bool] = os.path.exists,
) -> tuple[list[str], list[str], list[str]]:
    """Reconcile the running `sys.path` with a fresh interpreter's: (new_path, added, removed).

    Entries are compared by `os.path.normpath` (`''` stays `''`). Each running entry, in
    the running order, is

    - kept when the fresh interpreter has it too (its position stays where it is: the
      running order wins for entries on both lists);
    - else kept when it is `''` or in `protected` (gunicorn's `chdir` and `pythonpath`);
    - else removed when it is site-derived: in `site_derived`, the entries known to come
      from site processing (site directories, `.pth` lines, and every entry a fresh
      interpreter had at an earlier refresh) -- gone from a fresh interpreter means its
      `.pth` line, site directory or environment entry is gone;
    - else removed when it is superseded: a versioned path (`pkg-1.0-py3.11.egg`,
      `pkg-1.0`) whose distribution the fresh interpreter has at another version;
    - else kept if it exists (something else put it there -- the script directory, the
      app, the config -- and the fresh interpreter cannot know about it), removed if not.

    Later duplicates of a kept entry are dropped (the first one wins imports anyway).
    Entries only the fresh interpreter has are added right after the nearest entry that
    precedes them on the fresh path and is on the new path, or, when none precedes them,
    right before the first fresh entry on the new path (so `chdir`, the script directory
    and `''` keep their precedence); appended when the new path has no fresh entry at all.
    The result is idempotent: reconciling it again with the same fresh path changes nothing.
    """
    protected_keys = {_key(p) for p in protected}
    derived_keys = {_key(p) for p in site_derived}
    fresh_keys: dict[str, str] = {}
    for entry in fresh:
        fresh_keys.setdefault(_key(entry), entry)
    fresh_versions: dict[str, set[str]] = {}
    for entry in fresh_keys.values():
        parsed = versioned(entry)
        if parsed is not None:
            fresh_versions.setdefault(parsed[0], set()).add(parsed[1])

    def superseded(entry: str) -> bool:
        parsed = versioned(entry)
        if parsed is None:
            return False
        others = fresh_versions.get(parsed[0], set())
        return bool(others - {parsed[1]})

    result: list[str] = []
    seen: set[str] = set()
    removed: list[str] = []
    for entry in running:
        key = _key(entry)
        if key in seen:
            continue
        if key in fresh_keys or entry == "" or key in protected_keys:
            keep = True
        elif key in derived_keys or superseded(entry):
            keep = False
        else:
            keep = exists(entry)
        if keep:
            result.append(entry)
            seen.add(key)
        else:
            removed.append(entry)

    added: list[str] = []
    result_keys = [_key(p) for p in result]
    fresh_order = list(fresh_keys)
    for index, key in enumerate(fresh_order):
        if key in result_keys:
            continue
        position: int | None = None
        for before in reversed(fresh_order[:index]):
            if before in result_keys:
                position = result_keys.index(before) + 1
                break
        if position is None:
            later = [result_keys.index(k) for k in fresh_order[index + 1:] if k in result_keys]
            position = min(later) if later else len(result)
        result.insert(position, fresh_keys[key])
        result_keys.insert(position, key)
        added.append(fresh_keys[key])
    return result, added, removed


# --------------------------------------------------------------------------- what changed


def changed_tops(
    files: Mapping[str, str | None],
    before: Mapping[str, Fingerprint],
    now: Mapping[str, Fingerprint | None],
    *,
    since_ns: int,
    moved: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Top-level packages that changed on disk -> why (the first reason found).

    `files` maps each loaded module (the caller leaves out the stdlib) to its file (None
    for a module without one); `before` holds the fingerprints of the previous pass,
    `now` the current ones (None: the file is gone). A module changed when its file is
    gone, when its fingerprint differs from `before`, or -- a file without an earlier
    fingerprint, e.g. imported since -- when it was modified after `since_ns`. `moved`
    maps top-level names to a reason they changed as a whole (they resolve to another
    location now, their distribution's version changed). Which of them are purged, with
    what depends on them, is `select_purge`'s decision (rollover.imports_graph).
    """
    out: dict[str, str] = {}
    for name in sorted(files):
        path = files[name]
        if path is None:
            continue
        top = name.partition(".")[0]
        current = now.get(path)
        old = before.get(path)
        if current is None:
            why = f"{path} is gone"
        elif old is not None:
            if old == current:
                continue
            why = f"{path} changed"
        elif current.newest_ns > since_ns:
            why = f"{path} changed"
        else:
            continue
        out.setdefault(top, why)
    for top, why in (moved or {}).items():
        out[top] = why
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- .pth files


def _pth_files(site_dirs: Iterable[str]) -> list[tuple[str, str]]:
    """(site dir, .pth path) in the order `site` processes them."""
    out = []
    for sitedir in site_dirs:
        try:
            names = sorted(os.listdir(sitedir))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".pth"):
                continue
            if sys.version_info >= (3, 13) and name.startswith("."):
                continue  # 3.13 skips hidden .pth files
            out.append((sitedir, os.path.join(sitedir, name)))
    return out


def _pth_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        import locale

        text = data.decode(locale.getpreferredencoding(False), errors="replace")
    return text.splitlines()


def _pth_paths(sitedir: str, path: str) -> list[str]:
    """The path lines of a .pth file, made absolute the way `site.addpackage` does."""
    out = []
    for line in _pth_lines(path):
        if not line.strip() or line.startswith("#") or line.startswith(("import ", "import\t")):
            continue
        out.append(os.path.abspath(os.path.join(sitedir, line.rstrip())))
    return out


def _run_pth_line(sitedir: str, line: str) -> None:
    # Like site.addpackage: `sitedir` is a local of the calling frame, which some .pth
    # files read (sys._getframe(1).f_locals["sitedir"]).
    exec(line)


def _running_site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages()) if not sys.flags.no_site else []
    if not sys.flags.no_site and site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


# --------------------------------------------------------------------------- registry


def _is_stdlib(name: str) -> bool:
    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _module_file(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) and path else None


def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple({os.path.join(paths[k], "") for k in ("stdlib", "platstdlib") if k in paths})


# The stdlib's own directories: a module there that `sys.stdlib_module_names` does not
# name (`_sysconfigdata_<abi>_<platform>`) is the stdlib all the same.
_STDLIB_DIRS = _stdlib_dirs()


def _considered(name: str, module: Any) -> bool:
    """Modules the purge looks at: loaded, not the stdlib, not startup-only modules."""
    if module is None or name in _IGNORED or _is_stdlib(name):
        return False
    top = name.partition(".")[0]
    if top in _IGNORED or top.startswith("__editable__") or _alias_of(name, module):
        return False
    path = _module_file(module)
    return not (path and path.startswith(_STDLIB_DIRS) and "-packages" not in path)


def _alias_of(name: str, module: Any) -> str | None:
    """The real name of a module that is in `sys.modules` under another name too (Cython's
    `_cyutility` is `pandas._libs._cyutility`): it goes with the real name's package."""
    real = getattr(getattr(module, "__spec__", None), "name", None)
    return real if isinstance(real, str) and real != name and sys.modules.get(real) is module \
        else None


def _loaded_files() -> dict[str, str | None]:
    return {name: _module_file(module) for name, module in list(sys.modules.items())
            if _considered(name, module)}


def _finder_fps() -> dict[str, Fingerprint]:
    """Fingerprints of the loaded setuptools editable finder modules' files."""
    out = {}
    for name, module in list(sys.modules.items()):
        path = _module_file(module) if _EDITABLE_FINDER.match(name) else None
        fp = fingerprint(path) if path else None
        if path and fp is not None:
            out[path] = fp
    return out


@dataclass
class _Registry:
    since_ns: int
    modules: dict[str, Fingerprint]
    pth: dict[str, Fingerprint]
    paths: dict[str, tuple[int, int, int] | None]
    archives: dict[str, Fingerprint]
    dists: dict[str, _Dist]
    site_entries: set[str]
    package_dirs: dict[str, list[str]]
    executable: str
    executable_fp: Fingerprint | None
    base_prefix: str
    version: str


def _package_dirs(names: Iterable[str]) -> dict[str, list[str]]:
    """Package name -> the real directories of its `__path__` (symlinks resolved)."""
    out = {}
    for name in names:
        locations = getattr(sys.modules.get(name), "__path__", None)
        if isinstance(locations, list) and locations:
            out[name] = [os.path.realpath(p) for p in locations if isinstance(p, str)]
    return out


def _archive_fps(extra: Iterable[str] = ()) -> dict[str, Fingerprint]:
    import zipimport

    out = {}
    cache: dict[str, Any] = getattr(zipimport, "_zip_directory_cache", {})
    for archive in [*list(cache), *extra]:
        fp = fingerprint(archive)
        if fp is not None and os.path.isfile(archive):
            out[archive] = fp
    return out


def _take_registry(since_ns: int) -> _Registry:
    files = _loaded_files()
    modules = {}
    for path in set(filter(None, files.values())):
        fp = fingerprint(path)
        if fp is not None:
            modules[path] = fp
    modules.update(_finder_fps())
    site_dirs = _running_site_dirs()
    pth: dict[str, Fingerprint] = {}
    site_entries = {_key(d) for d in site_dirs}
    for sitedir, path in _pth_files(site_dirs):
        fp = fingerprint(path)
        if fp is not None:
            pth[path] = fp
        site_entries.update(_key(p) for p in _pth_paths(sitedir, path))
    executable = os.path.realpath(sys.executable) if sys.executable else ""
    keys = [*sys.path, *list(sys.path_importer_cache)]
    return _Registry(
        since_ns=since_ns,
        modules=modules,
        pth=pth,
        paths={p: _identity(p) for p in keys if p},
        archives=_archive_fps(p for p in sys.path if os.path.isfile(p or ".")),
        dists=distributions(sys.path),
        site_entries=site_entries,
        package_dirs=_package_dirs(files),
        executable=executable,
        executable_fp=fingerprint(executable) if executable else None,
        base_prefix=os.path.realpath(sys.base_prefix),
        version=sys.version,
    )


_registry: _Registry = _take_registry(time.time_ns())


def _fingerprint_new_modules() -> None:
    """Before each fork (a worker spawn): fingerprint the modules imported since the last
    pass (the config's, a preloaded app's), while they are still what was imported. A
    later change is then found by identity, which the time of a file cannot show when a
    release symlink flips to files older than the import."""
    with contextlib.suppress(Exception):
        known, dirs = _registry.modules, _registry.package_dirs
        files = _loaded_files()
        for path in set(filter(None, files.values())) - known.keys():
            fp = fingerprint(path)
            if fp is not None:
                known[path] = fp
        dirs.update(_package_dirs(name for name in files if name not in dirs))


os.register_at_fork(before=_fingerprint_new_modules)


def remember() -> None:
    """Take fingerprints of everything loaded now as the baseline of the next refresh.

    Done when this module is imported; the arbiter calls it again once the app is set up
    (config loaded, preload done) so that every module the master imported has one."""
    global _registry
    fresh_entries = _registry.site_entries
    _registry = _take_registry(time.time_ns())
    _registry.site_entries |= fresh_entries


# --------------------------------------------------------------------------- fresh interpreter

_CHILD = """\
import json, os, site, sys
path = sys.path[:] if sys.flags.safe_path else sys.path[1:]
dirs = [] if sys.flags.no_site else list(site.getsitepackages())
if not sys.flags.no_site and site.ENABLE_USER_SITE:
    dirs.append(site.getusersitepackages())
print()
print(MARK + json.dumps({
    "path": path,
    "site_dirs": dirs,
    "version": sys.version,
    "executable": os.path.realpath(sys.executable),
    "base_prefix": os.path.realpath(sys.base_prefix),
}))
"""


def interpreter_flags() -> list[str]:
    """Command-line options that shape `sys.path` the way this interpreter's were given."""
    flags = sys.flags
    argv: list[str] = []
    if flags.isolated:
        argv.append("-I")
    else:
        if flags.ignore_environment:
            argv.append("-E")
        if flags.no_user_site:
            argv.append("-s")
        if flags.safe_path:
            argv.append("-P")
    if flags.no_site:
        argv.append("-S")
    for name, value in sys._xoptions.items():
        argv += ["-X", name if value is True else f"{name}={value}"]
    return argv


def ask_fresh_interpreter(
    timeout: float = DEFAULT_TIMEOUT,
    executable: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Start this interpreter again (same executable, flags, environment and cwd) and
    return what its `sys.path` is now. RefreshError when it cannot answer in time."""
    executable = executable or sys.executable
    if not executable:
        raise RefreshError("import refresh: sys.executable is unknown, cannot ask a fresh "
                           "interpreter for its sys.path")
    argv = [executable, *interpreter_flags(), "-c", _CHILD.replace("MARK", repr(_MARK))]
    env = dict(os.environ if environ is None else environ)
    # Synchronous on purpose, the master's loop is blocked meanwhile: subprocess reaps its
    # own child with waitpid(pid), and the arbiter's reap_workers (waitpid(-1), which
    # would steal the exit status) cannot run until we return. The old workers go on
    # serving. close_fds (the default) keeps the listeners and pipes out of the child.
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RefreshError(f"import refresh: a fresh interpreter ({executable}) did not "
                           f"answer within {timeout:g}s") from None
    except OSError as exc:
        raise RefreshError(f"import refresh: cannot start {executable}: {exc}") from None
    out = done.stdout.decode("utf-8", errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        err = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        tail = err[-1] if err else f"exit status {done.returncode}"
        raise RefreshError(f"import refresh: a fresh interpreter ({executable}) failed: {tail}")
    try:
        data = json.loads(lines[-1][len(_MARK):])
        if not isinstance(data.get("path"), list) or not isinstance(data.get("site_dirs"), list):
            raise ValueError("missing fields")
    except ValueError as exc:
        raise RefreshError(f"import refresh: bad answer from a fresh interpreter: {exc}") from None
    return dict(data)


# --------------------------------------------------------------------------- refresh


def _interpreter_changes(reg: _Registry, fresh: Mapping[str, Any]) -> list[str]:
    """Why the interpreter a fresh start gets is not this one (empty: it is the same)."""
    version = str(fresh.get("version", "")).split()[:1]
    executable = str(fresh.get("executable", ""))
    base_prefix = str(fresh.get("base_prefix", ""))
    if version and version != reg.version.split()[:1]:
        return [f"the interpreter changed: Python {reg.version.split()[0]} is running, "
                f"{version[0]} is on disk ({executable})"]
    if fresh.get("version") != reg.version or (executable and executable != reg.executable):
        return [f"the interpreter changed: {reg.executable} is running, {executable} is on "
                f"disk"]
    if executable and fingerprint(executable) != reg.executable_fp:
        return [f"the interpreter binary {executable} changed on disk"]
    if base_prefix and base_prefix != reg.base_prefix:
        return [f"the base Python changed: {reg.base_prefix} -> {base_prefix}"]
    return []


def _remove_finder_module(name: str, module: Any) -> None:
    def ours(obj: Any) -> bool:
        owner = getattr(obj, "__module__", None)
        return owner == name or type(obj).__module__ == name

    sys.meta_path[:] = [f for f in sys.meta_path if not ours(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not ours(h)]
    placeholder = getattr(module, "PATH_PLACEHOLDER", None)
    if isinstance(placeholder, str):
        sys.path[:] = [p for p in sys.path if p != placeholder]
        sys.path_importer_cache.pop(placeholder, None)
    for key, finder in list(sys.path_importer_cache.items()):
        if finder is not None and ours(finder):
            sys.path_importer_cache.pop(key, None)
    sys.modules.pop(name, None)


def _invalidate(obj: Any, label: str, problems: list[str]) -> None:
    invalidate = getattr(obj, "invalidate_caches", None)
    if invalidate is None:
        return
    try:
        invalidate()
    except Exception as exc:
        problems.append(f"{label}.invalidate_caches() raised {type(exc).__name__}: {exc}")


def _finder_label(finder: Any) -> str:
    name = getattr(finder, "__qualname__", None) or type(finder).__qualname__
    return f"{getattr(finder, '__module__', type(finder).__module__)}.{name}"


def _resolve_now(top: str) -> Any:
    """The spec a fresh `import top` would get from sys.meta_path now; Ellipsis when a
    finder raised (unknown)."""
    for finder in sys.meta_path:
        if finder is BuiltinImporter or finder is FrozenImporter:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(top, None)
        except Exception:
            return ...
        if spec is not None:
            return spec
    return None


def _where(spec: Any) -> tuple[str | None, frozenset[str]]:
    origin = spec.origin if getattr(spec, "has_location", False) else None
    locations = getattr(spec, "submodule_search_locations", None) or ()
    norm = os.path.normpath(os.path.abspath(origin)) if origin else None
    return norm, frozenset(os.path.normpath(os.path.abspath(p)) for p in locations)


def _moved_tops(tops: Iterable[str]) -> dict[str, str]:
    """Loaded top-level modules that a fresh import would now find somewhere else."""
    out: dict[str, str] = {}
    for top in tops:
        module = sys.modules.get(top)
        spec = getattr(module, "__spec__", None)
        if spec is None:
            continue
        old_origin, old_locations = _where(spec)
        if old_origin is None and not old_locations:
            continue  # not loaded from a file: nothing to compare
        new = _resolve_now(top)
        if new is ...:
            continue
        if new is None:
            out[top] = f"{top} is no longer importable"
            continue
        new_origin, new_locations = _where(new)
        if old_origin is not None:
            if new_origin != old_origin and (
                    new_origin is None
                    or os.path.realpath(new_origin) != os.path.realpath(old_origin)):
                out[top] = f"{top} now resolves to {new_origin or 'a namespace package'}"
        elif new_locations != old_locations:
            out[top] = f"{top} now resolves to {', '.join(sorted(new_locations))}"
    return out


def _pinned_by(kept: Collection[str], candidates: Collection[str]) -> dict[str, str]:
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


def _running_tops() -> set[str]:
    """Top-level packages with code on a thread's stack right now (not the stdlib)."""
    out: set[str] = set()
    for frame in list(sys._current_frames().values()):
        for _ in range(500):
            if frame is None:
                break
            name = frame.f_globals.get("__name__")
            if isinstance(name, str) and name not in _IGNORED and not _is_stdlib(name):
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
    pinned = []
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


def _same_content(top: str, files: Mapping[str, str | None], reg: _Registry,
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


def _is_extension(path: str | None) -> bool:
    return bool(path) and str(path).endswith(tuple(EXTENSION_SUFFIXES))


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
    interpreter = _interpreter_changes(reg, fresh)
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
    reg: _Registry,
    fresh: Mapping[str, Any],
    keep: set[str],
    protect_paths: list[str],
    pass_ns: int,
    dependents: bool = True,
) -> _Registry:
    fresh_path = [str(p) for p in fresh["path"]]
    site_dirs = [str(d) for d in fresh["site_dirs"]]
    protected = {"", *protect_paths}

    # 1. sys.path
    new_path, added, removed = reconcile(sys.path, fresh_path, protected,
                                         site_derived=reg.site_entries)
    sys.path[:] = new_path

    # 2. stale editable finders out, then the import lines of new or changed .pth files
    since = reg.since_ns - _CLOCK_SLACK_NS
    removed_finders: list[str] = []
    for name, module in list(sys.modules.items()):
        if not _EDITABLE_FINDER.match(name):
            continue
        path = _module_file(module)
        now = fingerprint(path) if path else None
        old = reg.modules.get(path) if path else None
        if now is None or (old is not None and old != now) or (
                old is None and now.newest_ns > since):
            _remove_finder_module(name, module)
            removed_finders.append(name)
    report.finders_removed = removed_finders

    pth_now: dict[str, Fingerprint] = {}
    site_entries = set(reg.site_entries) | {_key(d) for d in site_dirs}
    for sitedir, path in _pth_files(site_dirs):
        fp = fingerprint(path)
        if fp is None:
            continue
        pth_now[path] = fp
        site_entries.update(_key(p) for p in _pth_paths(sitedir, path))
        lines = _pth_lines(path)
        rerun = reg.pth.get(path) != fp or any(
            f in line for f in removed_finders for line in lines)
        if not rerun:
            continue
        for number, line in enumerate(lines, 1):
            if not line.startswith(("import ", "import\t")):
                continue
            try:
                _run_pth_line(sitedir, line.rstrip())
            except (Exception, SystemExit) as exc:
                report.problems.append(f"{path} line {number} raised "
                                       f"{type(exc).__name__}: {exc}")
    # an import line may have added entries (editable placeholders): reconcile once more
    new_path, added2, removed2 = reconcile(sys.path, fresh_path, protected,
                                           site_derived=reg.site_entries)
    sys.path[:] = new_path
    added += [p for p in added2 if p not in added]
    removed += [p for p in removed2 if p not in removed]
    report.paths_added = [p for p in added if p not in removed]
    report.paths_removed = [p for p in removed if p not in added]

    # 3. importer caches
    import zipimport

    zip_cache: dict[str, Any] = getattr(zipimport, "_zip_directory_cache", {})
    changed_archives = set()
    for archive in list(zip_cache):
        fp = fingerprint(archive)
        old = reg.archives.get(archive)
        if fp is None or (old is not None and old != fp) or (old is None and fp.newest_ns > since):
            changed_archives.add(archive)
            zip_cache.pop(archive, None)
    removed_keys = {_key(p) for p in report.paths_removed}
    for key, finder in list(sys.path_importer_cache.items()):
        drop = (
            finder is None
            or not os.path.isabs(key)
            or _key(key) in removed_keys
            or getattr(finder, "archive", None) in changed_archives
            or (key in reg.paths and reg.paths[key] != _identity(key))
        )
        if drop:
            sys.path_importer_cache.pop(key, None)
    for key, finder in list(sys.path_importer_cache.items()):
        _invalidate(finder, f"path entry finder for {key}", report.problems)
    for finder in list(sys.meta_path):
        _invalidate(finder, _finder_label(finder), report.problems)
    for name in ("importlib.metadata", "importlib_metadata"):
        # its FastPath cache (lookups keyed by directory mtime) is never cleared by 3.11's
        # importlib.invalidate_caches(); there invalidate_caches lacks @classmethod
        finder_class = getattr(sys.modules.get(name), "MetadataPathFinder", None)
        invalidate = getattr(finder_class, "invalidate_caches", None)
        if invalidate is None:
            continue
        try:
            invalidate() if inspect.ismethod(invalidate) else invalidate(finder_class)
        except Exception as exc:
            report.problems.append(f"{name}.MetadataPathFinder.invalidate_caches() raised "
                                   f"{type(exc).__name__}: {exc}")
    linecache.clearcache()

    # 4. what changed: distributions, locations, files; then purge
    dists = distributions(sys.path)
    moved: dict[str, str] = {}
    for name in sorted(set(reg.dists) | set(dists)):
        old_dist, new_dist = reg.dists.get(name), dists.get(name)
        dist = new_dist or old_dist
        old_version = old_dist.version if old_dist else "none"
        new_version = new_dist.version if new_dist else "none"
        if dist is None or old_version == new_version:
            continue
        report.distributions_changed[dist.name] = f"{old_version} -> {new_version}"
        for top in _dist_tops(dist):
            moved.setdefault(top, f"distribution {dist.name} {old_version} -> {new_version}")
    if report.distributions_changed or report.paths_added or report.paths_removed:
        moved.setdefault("pkg_resources", "its working set predates changed distributions")

    files = _loaded_files()
    tops = sorted({name.partition(".")[0] for name in files})
    for top, why in _moved_tops(tops).items():
        moved.setdefault(top, why)
    moved = {top: why for top, why in moved.items() if top in tops}
    now = {path: fingerprint(path) for path in set(filter(None, files.values()))}
    changed = changed_tops(files, reg.modules, now, since_ns=since, moved=moved)
    # code running now (a frame on some thread's stack: pytest around an in-process
    # arbiter, the module whose run() started it) cannot be replaced under itself
    kept = ALWAYS_KEPT | keep | _running_tops()
    facts = imports_graph.gather(
        files, dists, changed=changed, protected=kept, held=_pinned_by(kept, tops),
        extensions={name for name, path in files.items() if _is_extension(path)},
        dependents=dependents)
    plan = select_purge(facts)
    # a package that must stay (gunicorn, rollover, C extensions) and "changed" only by
    # inode/mtime -- each release holds its own copy -- is compared by content first
    same = [top for top in plan.blocked if top in changed and top not in moved
            and _same_content(top, files, reg, now)]
    if same:
        changed = {top: why for top, why in changed.items() if top not in same}
        facts = imports_graph.gather(
            files, dists, changed=changed, protected=kept, held=_pinned_by(kept, tops),
            extensions={name for name, path in files.items() if _is_extension(path)},
            dependents=dependents)
        plan = select_purge(facts)
    for name, module in list(sys.modules.items()):
        real = _alias_of(name, module) or name
        if real.partition(".")[0] in plan.purge:
            sys.modules.pop(name, None)
    imports_graph.forget(plan.purge)
    _detach_finalizers(set(plan.purge))
    report.modules_purged = sorted(plan.purge)
    report.dependents_purged = sorted(t for t in plan.purge if t not in changed)
    for top, why in plan.blocked.items():
        pins = _pin_package_dirs(top, reg.package_dirs) if top in changed else []
        kept_at = f"; submodules still load from {', '.join(pins)}" if pins else ""
        report.needs_reexec.append(f"{top}: {why}{kept_at}")
    loaded_gunicorn = getattr(sys.modules.get("gunicorn"), "__version__", None)
    on_disk = dists.get("gunicorn")
    if loaded_gunicorn and on_disk and on_disk.version != loaded_gunicorn \
            and "gunicorn" not in plan.blocked:
        report.needs_reexec.append(f"gunicorn {loaded_gunicorn} is running, "
                                   f"{on_disk.version} is on disk")

    # 5. the new baseline (a blocked package keeps its old one: still stale)
    modules: dict[str, Fingerprint] = {}
    package_dirs = _package_dirs(n for n in files if n.partition(".")[0] not in plan.purge)
    for name, path in files.items():
        top = name.partition(".")[0]
        if top in plan.blocked and top in changed:
            if name in reg.package_dirs:
                package_dirs[name] = reg.package_dirs[name]
            if path is not None:
                modules[path] = _CHANGED  # stale until a re-exec: reported every time
            continue
        fp = now.get(path) if path is not None and top not in plan.purge else None
        if path is not None and fp is not None:
            modules[path] = fp
    modules.update(_finder_fps())
    return _Registry(
        since_ns=pass_ns,
        modules=modules,
        pth=pth_now,
        paths={p: _identity(p) for p in [*sys.path, *list(sys.path_importer_cache)] if p},
        archives=_archive_fps(p for p in sys.path if os.path.isfile(p or ".")),
        dists=dists,
        site_entries=site_entries | {_key(p) for p in fresh_path},
        package_dirs=package_dirs,
        executable=reg.executable,
        executable_fp=reg.executable_fp,
        base_prefix=reg.base_prefix,
        version=reg.version,
    )
