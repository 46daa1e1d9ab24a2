"""What the master has loaded and what changed on disk since: file fingerprints, the
registry of one pass (modules, `.pth` files, path entries, archives, distributions, package
directories, the interpreter), `changed_tops` (pure) and `interpreter_changes`."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from rollover.refresh.imports_graph import Dist, distributions, is_stdlib
from rollover.refresh.paths import path_key, pth_files, pth_paths, running_site_dirs

# Modules that are not packages anyone imports by name again: never considered.
IGNORED = frozenset({
    "__main__", "__mp_main__", "__config__", "sitecustomize", "usercustomize", "_virtualenv",
})
EDITABLE_FINDER = re.compile(r"^__editable___.+_finder$")

# A file written just before a pass may carry a ctime a little before the pass started
# (the kernel stamps files with a coarse clock): count such files as changed.
CLOCK_SLACK_NS = 100_000_000


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
CHANGED = Fingerprint(-1, -1, -1, -1, -1)


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


def identity(path: str) -> tuple[int, int, int] | None:
    """A path entry's identity (device, inode, kind): changes when a symlink is flipped or
    a directory is replaced by another one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode >> 12)



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
    what depends on them, is `select_purge`'s decision (rollover.refresh.imports_graph).
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

# --------------------------------------------------------------------------- registry


def module_file(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) and path else None


def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple({os.path.join(paths[k], "") for k in ("stdlib", "platstdlib") if k in paths})


# The stdlib's own directories: a module there that `sys.stdlib_module_names` does not
# name (`_sysconfigdata_<abi>_<platform>`) is the stdlib all the same.
_STDLIB_DIRS = _stdlib_dirs()


def considered(name: str, module: Any) -> bool:
    """Modules the purge looks at: loaded, not the stdlib, not startup-only modules."""
    if module is None or name in IGNORED or is_stdlib(name):
        return False
    top = name.partition(".")[0]
    if top in IGNORED or top.startswith("__editable__") or alias_of(name, module):
        return False
    path = module_file(module)
    return not (path and path.startswith(_STDLIB_DIRS) and "-packages" not in path)


def alias_of(name: str, module: Any) -> str | None:
    """The real name of a module that is in `sys.modules` under another name too (Cython's
    `_cyutility` is `pandas._libs._cyutility`): it goes with the real name's package."""
    real = getattr(getattr(module, "__spec__", None), "name", None)
    return real if isinstance(real, str) and real != name and sys.modules.get(real) is module \
        else None


def loaded_files() -> dict[str, str | None]:
    return {name: module_file(module) for name, module in list(sys.modules.items())
            if considered(name, module)}


def finder_fps() -> dict[str, Fingerprint]:
    """Fingerprints of the loaded setuptools editable finder modules' files."""
    out = {}
    for name, module in list(sys.modules.items()):
        path = module_file(module) if EDITABLE_FINDER.match(name) else None
        fp = fingerprint(path) if path else None
        if path and fp is not None:
            out[path] = fp
    return out


@dataclass
class Registry:
    since_ns: int
    modules: dict[str, Fingerprint]
    pth: dict[str, Fingerprint]
    paths: dict[str, tuple[int, int, int] | None]
    archives: dict[str, Fingerprint]
    dists: dict[str, Dist]
    site_entries: set[str]
    package_dirs: dict[str, list[str]]
    executable: str
    executable_fp: Fingerprint | None
    base_prefix: str
    version: str


def real_package_dirs(names: Iterable[str]) -> dict[str, list[str]]:
    """Package name -> the real directories of its `__path__` (symlinks resolved)."""
    out = {}
    for name in names:
        locations = getattr(sys.modules.get(name), "__path__", None)
        if isinstance(locations, list) and locations:
            out[name] = [os.path.realpath(p) for p in locations if isinstance(p, str)]
    return out


def archive_fps(extra: Iterable[str] = ()) -> dict[str, Fingerprint]:
    import zipimport

    out = {}
    cache: dict[str, Any] = getattr(zipimport, "_zip_directory_cache", {})
    for archive in [*list(cache), *extra]:
        fp = fingerprint(archive)
        if fp is not None and os.path.isfile(archive):
            out[archive] = fp
    return out


def take_registry(since_ns: int) -> Registry:
    files = loaded_files()
    modules = {}
    for path in set(filter(None, files.values())):
        fp = fingerprint(path)
        if fp is not None:
            modules[path] = fp
    modules.update(finder_fps())
    site_dirs = running_site_dirs()
    pth: dict[str, Fingerprint] = {}
    site_entries = {path_key(d) for d in site_dirs}
    for sitedir, path in pth_files(site_dirs):
        fp = fingerprint(path)
        if fp is not None:
            pth[path] = fp
        site_entries.update(path_key(p) for p in pth_paths(sitedir, path))
    executable = os.path.realpath(sys.executable) if sys.executable else ""
    keys = [*sys.path, *list(sys.path_importer_cache)]
    return Registry(
        since_ns=since_ns,
        modules=modules,
        pth=pth,
        paths={p: identity(p) for p in keys if p},
        archives=archive_fps(p for p in sys.path if os.path.isfile(p or ".")),
        dists=distributions(sys.path),
        site_entries=site_entries,
        package_dirs=real_package_dirs(files),
        executable=executable,
        executable_fp=fingerprint(executable) if executable else None,
        base_prefix=os.path.realpath(sys.base_prefix),
        version=sys.version,
    )




def fingerprint_new_modules(reg: Registry) -> None:
    """Before each fork (a worker spawn): fingerprint the modules imported since the last
    pass (the config's, a preloaded app's), while they are still what was imported. A
    later change is then found by identity, which the time of a file cannot show when a
    release symlink flips to files older than the import."""
    with contextlib.suppress(Exception):
        known, dirs = reg.modules, reg.package_dirs
        files = loaded_files()
        for path in set(filter(None, files.values())) - known.keys():
            fp = fingerprint(path)
            if fp is not None:
                known[path] = fp
        dirs.update(real_package_dirs(name for name in files if name not in dirs))


def interpreter_changes(reg: Registry, fresh: Mapping[str, Any]) -> list[str]:
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

