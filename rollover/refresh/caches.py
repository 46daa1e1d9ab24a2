"""Finders and importer caches: stale setuptools editable finders out, the import lines of
new or changed `.pth` files run again, importer caches of changed paths and archives
dropped, every finder's `invalidate_caches` called, and which loaded packages a fresh
import would now find somewhere else (`moved_tops`)."""

from __future__ import annotations

import inspect
import linecache
import os
import sys
from collections.abc import Collection, Iterable
from importlib.machinery import BuiltinImporter, FrozenImporter
from typing import Any

from rollover.refresh.paths import path_key, pth_files, pth_lines, pth_paths, run_pth_line
from rollover.refresh.state import (
    EDITABLE_FINDER,
    Fingerprint,
    Registry,
    fingerprint,
    identity,
    module_file,
)


def _changed_since(fp: Fingerprint | None, old: Fingerprint | None, since_ns: int) -> bool:
    """A file that is gone, whose fingerprint differs from the baseline's, or, with no
    baseline, that was modified after `since_ns`."""
    return fp is None or (old is not None and old != fp) or (
        old is None and fp.newest_ns > since_ns)


def remove_stale_finders(reg: Registry, since_ns: int) -> list[str]:
    """Take out the setuptools editable finders whose module file changed or is gone;
    returns their module names."""
    removed: list[str] = []
    for name, module in list(sys.modules.items()):
        if not EDITABLE_FINDER.match(name):
            continue
        path = module_file(module)
        now = fingerprint(path) if path else None
        old = reg.modules.get(path) if path else None
        if _changed_since(now, old, since_ns):
            _remove_finder_module(name, module)
            removed.append(name)
    return removed


def rerun_pth_imports(
    reg: Registry,
    site_dirs: Iterable[str],
    removed_finders: Collection[str],
    problems: list[str],
) -> tuple[dict[str, Fingerprint], set[str]]:
    """Run the import lines of the `.pth` files that are new or changed, or that install a
    finder just removed. Returns the `.pth` fingerprints now and the site-derived path
    entries (the site directories and every `.pth` path line), for the next baseline."""
    site_dirs = list(site_dirs)
    pth_now: dict[str, Fingerprint] = {}
    site_entries = set(reg.site_entries) | {path_key(d) for d in site_dirs}
    for sitedir, path in pth_files(site_dirs):
        fp = fingerprint(path)
        if fp is None:
            continue
        pth_now[path] = fp
        site_entries.update(path_key(p) for p in pth_paths(sitedir, path))
        lines = pth_lines(path)
        rerun = reg.pth.get(path) != fp or any(
            f in line for f in removed_finders for line in lines)
        if not rerun:
            continue
        for number, line in enumerate(lines, 1):
            if not line.startswith(("import ", "import\t")):
                continue
            try:
                run_pth_line(sitedir, line.rstrip())
            except (Exception, SystemExit) as exc:
                problems.append(f"{path} line {number} raised {type(exc).__name__}: {exc}")
    return pth_now, site_entries


def invalidate_caches(reg: Registry, paths_removed: Iterable[str], since_ns: int,
                      problems: list[str]) -> None:
    """Drop zipimport's cache of changed archives and the importer cache entries of
    removed or replaced path entries, then call every finder's `invalidate_caches` (a
    broken finder is a problem reported, not a failure) and clear importlib.metadata's
    caches and linecache."""
    import zipimport

    zip_cache: dict[str, Any] = getattr(zipimport, "_zip_directory_cache", {})
    changed_archives = set()
    for archive in list(zip_cache):
        if _changed_since(fingerprint(archive), reg.archives.get(archive), since_ns):
            changed_archives.add(archive)
            zip_cache.pop(archive, None)
    removed_keys = {path_key(p) for p in paths_removed}
    for key, finder in list(sys.path_importer_cache.items()):
        drop = (
            finder is None
            or not os.path.isabs(key)
            or path_key(key) in removed_keys
            or getattr(finder, "archive", None) in changed_archives
            or (key in reg.paths and reg.paths[key] != identity(key))
        )
        if drop:
            sys.path_importer_cache.pop(key, None)
    for key, entry_finder in list(sys.path_importer_cache.items()):
        _invalidate(entry_finder, f"path entry finder for {key}", problems)
    for meta_finder in list(sys.meta_path):
        _invalidate(meta_finder, _finder_label(meta_finder), problems)
    _invalidate_metadata_caches(problems)
    linecache.clearcache()


def _invalidate_metadata_caches(problems: list[str]) -> None:
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
            problems.append(f"{name}.MetadataPathFinder.invalidate_caches() raised "
                            f"{type(exc).__name__}: {exc}")


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


def moved_tops(tops: Iterable[str]) -> dict[str, str]:
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

