"""What depends on what among the modules a master has loaded: the graph a HUP purges by.

`sys.modules` keeps no reverse edges, and a scan of module namespaces misses plain values
(`from dep import __version__ as DEP` leaves a str behind). So the graph comes from two
sources, both between top-level names (a package is purged with all its submodules):

- declared: `Requires-Dist` between the distributions installed on `sys.path` (read from
  their metadata directories; requirements that only apply to an extra are left out);
- recorded: import edges seen from the moment rollover is imported (`install()`, done when
  `rollover.refresh` loads): every `import` statement passes `builtins.__import__` the
  importer's globals, and a first load through `importlib.import_module` (a plugin
  registry, Django's INSTALLED_APPS) passes `sys.meta_path`, where a finder that finds
  nothing names the first caller outside the stdlib. The recorder is uninstalled in forked
  workers (`uninstall()`): only the master refreshes.

`select_purge(facts)` is the pure decision: purge the changed packages, the app's own
modules (those in no distribution) and everything that reaches either; never purge what
gunicorn, rollover, the worker class or a distribution with a loaded C extension hold
(those cannot be re-imported in-process): what they reach stays too, and a change there
is reported as needing a re-exec.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import sys
import zipfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NamedTuple

__all__ = [
    "Dist",
    "GraphFacts",
    "PurgePlan",
    "distributions",
    "gather",
    "install",
    "recorded_edges",
    "select_purge",
    "uninstall",
    "versioned",
]

# --------------------------------------------------------------------------- recorder

# importer top-level name -> top-level names it imported (both as given; filtered later)
_edges: dict[str, set[str]] = {}
_original_import = builtins.__import__
_SKIPPED_FRAMES = ("importlib", "_frozen_importlib", "_frozen_importlib_external", __name__)


def _record(importer: Any, name: str) -> None:
    if not isinstance(importer, str):
        return
    a, b = importer.partition(".")[0], name.partition(".")[0]
    if a != b:
        targets = _edges.get(a)
        if targets is None:
            _edges[a] = {b}
        elif b not in targets:
            targets.add(b)


def _recording_import(name: str, globals: Any = None, locals: Any = None,
                      fromlist: Any = (), level: int = 0) -> Any:
    # A relative import stays inside the importer's own package: no edge. Kept cheap:
    # it runs for every import statement the master executes (~0.2 µs here).
    if not level and globals:
        try:
            importer = globals["__name__"]
            a, b = importer.partition(".")[0], name.partition(".")[0]
            if a != b:
                targets = _edges.get(a)
                if targets is None:
                    _edges[a] = {b}
                else:
                    targets.add(b)
        except Exception:  # a globals without a str __name__: nothing to record
            pass
    return _original_import(name, globals, locals, fromlist, level)


class _Recorder:
    """First in `sys.meta_path`: finds nothing, notes who asked (the first caller outside
    importlib and the stdlib) for a module loaded for the first time."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        with contextlib.suppress(Exception):
            frame: FrameType | None = sys._getframe(1)
            for _ in range(64):
                if frame is None:
                    break
                importer = frame.f_globals.get("__name__")
                if isinstance(importer, str) and not (
                        importer.startswith(_SKIPPED_FRAMES) or is_stdlib(importer)):
                    _record(importer, name)
                    break
                frame = frame.f_back
        return None

    @staticmethod
    def invalidate_caches() -> None:
        pass


_RECORDER = _Recorder()


def is_stdlib(name: str) -> bool:
    """Whether module `name` belongs to the stdlib (or is built in), by its top-level name."""
    top = name.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def install() -> None:
    """Start recording import edges in this process (idempotent)."""
    if builtins.__import__ is not _recording_import:
        global _original_import
        _original_import = builtins.__import__
        builtins.__import__ = _recording_import
    if _RECORDER not in sys.meta_path:
        sys.meta_path.insert(0, _RECORDER)


def uninstall() -> None:
    """Stop recording (a forked worker never refreshes); leaves a wrapper put on top of
    ours by someone else in place."""
    if builtins.__import__ is _recording_import:
        builtins.__import__ = _original_import
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_RECORDER)


def installed() -> bool:
    return builtins.__import__ is _recording_import and _RECORDER in sys.meta_path


def recorded_edges() -> dict[str, frozenset[str]]:
    """A copy of the import edges recorded so far (top-level name -> what it imported)."""
    return {a: frozenset(bs) for a, bs in list(_edges.items())}


def forget(tops: Iterable[str]) -> None:
    """Drop the edges recorded from purged packages: a re-import records them anew."""
    for top in tops:
        _edges.pop(top, None)


# --------------------------------------------------------------------------- distributions

_VERSIONED = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.]*?)-(?P<version>\d[A-Za-z0-9_.!+]*?)"
    r"(?:-py\d+(?:\.\d+)?)?(?:-[A-Za-z0-9_.]+)*(?:\.(?:egg|zip|whl))?$"
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def versioned(entry: str) -> tuple[str, str] | None:
    """(normalized distribution name, version) for a versioned path such as
    `.../pkg-1.0-py3.11.egg` or `.../pkg-1.0`; None otherwise."""
    match = _VERSIONED.match(os.path.basename(os.path.normpath(entry)) if entry else "")
    if match is None:
        return None
    return normalize(match["name"]), match["version"]


class Dist(NamedTuple):
    name: str
    version: str
    meta: str  # the .dist-info / .egg-info / EGG-INFO directory (or zip member path)


_DIST_INFO = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py\d[^-]*)?"
                        r"\.(?:dist-info|egg-info)$", re.IGNORECASE)
_BARE_INFO = re.compile(r"^(?P<name>[^-]+)\.egg-info$", re.IGNORECASE)


def _meta_version(meta: str) -> str:
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(meta, name), encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.lower().startswith("version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return "?"


def _dists_in(entry: str) -> Iterable[Dist]:
    base = os.path.basename(os.path.normpath(entry)) if entry else ""
    if base.lower().endswith(".egg"):
        parsed = versioned(entry)
        if parsed is not None:
            yield Dist(parsed[0], parsed[1], os.path.join(entry, "EGG-INFO"))
            return
    if os.path.isdir(entry or "."):
        try:
            children = sorted(os.listdir(entry or "."))
        except OSError:
            return
        for child in children:
            match = _DIST_INFO.match(child)
            if match is not None:
                yield Dist(normalize(match["name"]), match["version"],
                            os.path.join(entry, child))
                continue
            match = _BARE_INFO.match(child)
            if match is not None:
                meta = os.path.join(entry, child)
                yield Dist(normalize(match["name"]), _meta_version(meta), meta)
    elif zipfile.is_zipfile(entry):
        try:
            with zipfile.ZipFile(entry) as archive:
                tops = sorted({n.split("/", 1)[0] for n in archive.namelist()})
        except (OSError, zipfile.BadZipFile):
            return
        for child in tops:
            match = _DIST_INFO.match(child)
            if match is not None:
                yield Dist(normalize(match["name"]), match["version"],
                            f"{entry}/{child}")


def distributions(path: Sequence[str]) -> dict[str, Dist]:
    """Normalized name -> the distribution a fresh import finds first on `path`.

    Read from directory names (`name-version.dist-info`, eggs), so it costs one listdir
    per path entry; a versionless `.egg-info` has its `PKG-INFO` read."""
    found: dict[str, Dist] = {}
    for entry in path:
        with contextlib.suppress(OSError, ValueError):
            for dist in _dists_in(entry):
                found.setdefault(dist.name, dist)
    return found


def dist_tops(dist: Dist) -> set[str]:
    """Top-level import names a distribution provides (top_level.txt, else RECORD)."""
    tops = {dist.name}
    if not os.path.isdir(dist.meta):
        return tops
    top_level = os.path.join(dist.meta, "top_level.txt")
    with contextlib.suppress(OSError), open(top_level, encoding="utf-8") as fh:
        tops.update(line.strip() for line in fh if line.strip())
        return tops
    with contextlib.suppress(OSError), open(os.path.join(dist.meta, "RECORD"),
                                            encoding="utf-8") as fh:
        for line in fh:
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first.endswith(".py"):
                first = first[:-3]
            if (first and first.isidentifier() and not first.startswith("__editable__")
                    and first != "__pycache__"):
                tops.add(first)
    return tops



_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)")


def parse_requires(metadata: str, requires_txt: str = "") -> frozenset[str]:
    """Normalized names of the distributions a distribution requires: `Requires-Dist`
    headers of its METADATA/PKG-INFO text (an egg's `requires.txt` when it has none),
    without those only an extra asks for (`; extra == "x"`, a `[x]` section)."""
    out: set[str] = set()
    for line in metadata.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line; the description follows
        key, _, value = line.partition(":")
        if key.strip().lower() != "requires-dist":
            continue
        requirement, _, marker = value.partition(";")
        match = _REQUIREMENT.match(requirement)
        if match is not None and "extra" not in marker:
            out.add(normalize(match["name"]))
    if not out and requires_txt:
        section = ""
        for line in requires_txt.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
                continue
            match = _REQUIREMENT.match(line)
            # `[:python_version < "3.12"]` is a marker section, `[extra]` an extra's
            if match is not None and (not section or section.startswith(":")):
                out.add(normalize(match["name"]))
    return frozenset(out)


def _read(path: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return ""


def _read_meta(dist: Dist, name: str) -> str:
    if os.path.isdir(dist.meta):
        return _read(os.path.join(dist.meta, name))
    archive, _, member = dist.meta.rpartition(".zip/")  # a dist-info inside a zip on the path
    if archive and member:
        with contextlib.suppress(OSError, KeyError, zipfile.BadZipFile), \
                zipfile.ZipFile(archive + ".zip") as zf:
            return zf.read(f"{member}/{name}").decode("utf-8", errors="replace")
    return ""


# (metadata dir, version) -> (top-level names, required distributions): metadata of an
# installed version does not change, so each is read once per process
_facts_cache: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {}


def dist_facts(dist: Dist) -> tuple[frozenset[str], frozenset[str]]:
    """(top-level names it provides, normalized names of the distributions it requires)."""
    key = (dist.meta, dist.version)
    cached = _facts_cache.get(key)
    if cached is None:
        metadata = _read_meta(dist, "METADATA") or _read_meta(dist, "PKG-INFO")
        requires = parse_requires(metadata, _read_meta(dist, "requires.txt"))
        cached = (frozenset(dist_tops(dist)), requires)
        _facts_cache[key] = cached
    return cached


# --------------------------------------------------------------------------- purge selection


class PurgePlan(NamedTuple):
    purge: dict[str, str]
    """Top-level name -> why it is purged (with all its submodules)."""
    blocked: dict[str, str]
    """Top-level name -> why it needs a re-exec: it changed (or, with a loaded C extension,
    depends on something that changed) but stays loaded as a whole."""


@dataclass(frozen=True)
class GraphFacts:
    """What `select_purge` decides on; every name is a top-level module name."""

    loaded: frozenset[str]
    """Loaded packages the purge may consider (not the stdlib)."""
    changed: Mapping[str, str] = field(default_factory=dict)
    """Package -> what changed on disk (its files, its location, its distribution)."""
    edges: Mapping[str, Collection[str]] = field(default_factory=dict)
    """Package -> the packages it depends on (Requires-Dist and recorded imports)."""
    app: frozenset[str] = frozenset()
    """The app's own packages: in no installed distribution; always purged."""
    protected: frozenset[str] = frozenset()
    """Never purged: gunicorn, rollover, the worker class's packages."""
    held: Mapping[str, str] = field(default_factory=dict)
    """Package -> the protected package whose code holds a reference into it."""
    native: Mapping[str, str] = field(default_factory=dict)
    """Package -> a loaded C extension module of its distribution: it cannot be
    re-initialised in-process, so the distribution is never purged."""
    dependents: bool = True
    """Purge what reaches a changed package, and the app's own packages."""


def select_purge(facts: GraphFacts) -> PurgePlan:
    """Which packages to purge, and which changed but must stay (they need a re-exec).

    1. Kept, whatever changed: protected and native packages, the packages `held` by
       protected code, and everything any of those depends on, transitively (purging a
       dependency would leave the kept code on the old version and the rest on the new).
    2. Purged: every changed package not kept; with `dependents`, also the app's own
       packages and every package that depends, directly or not, on one purged.
    3. Blocked (needs a re-exec): every changed package that is kept, and every native
       package that depends on one (kept whole, never half re-imported).
    """
    loaded = facts.loaded

    def deps(top: str) -> list[str]:
        return sorted(u for u in facts.edges.get(top, ()) if u in loaded and u != top)

    holder: dict[str, str] = {}  # kept package -> the protected/native package it is kept for
    queue = [t for t in sorted(loaded) if t in facts.protected or t in facts.native]
    holder.update((t, t) for t in queue)
    for top, by in sorted(facts.held.items()):
        if top in loaded and top not in holder:
            holder[top] = by
            queue.append(top)
    while queue:
        top = queue.pop(0)
        for dep in deps(top):
            if dep not in holder:
                holder[dep] = holder[top]
                queue.append(dep)

    purge = {t: why for t, why in sorted(facts.changed.items())
             if t in loaded and t not in holder}
    if facts.dependents:
        for top in sorted(facts.app):
            if top in loaded and top not in holder:
                purge.setdefault(top, "the app's own package")
        users: dict[str, set[str]] = {}
        for top in loaded:
            for dep in deps(top):
                users.setdefault(dep, set()).add(top)
        queue = list(purge)
        while queue:
            dep = queue.pop(0)
            for top in sorted(users.get(dep, ())):
                if top not in purge and top not in holder:
                    purge[top] = f"depends on {dep}"
                    queue.append(top)

    blocked: dict[str, str] = {}
    for top, why in sorted(facts.changed.items()):
        if top not in loaded or top not in holder:
            continue
        by = holder[top]
        if top in facts.native:
            blocked[top] = f"{why}; holds the loaded C extension {facts.native[top]}, kept whole"
        elif by == top:
            blocked[top] = why
        elif by in facts.native:
            blocked[top] = f"{why} (held by {by}, which holds a loaded C extension)"
        else:
            blocked[top] = f"{why} (held by {by}, which is never purged)"
    for top in sorted(t for t in facts.native if t in loaded and t not in blocked):
        seen, queue = {top}, [top]
        while queue:
            dep = queue.pop(0)
            if dep in facts.changed and dep in blocked and dep != top:
                blocked[top] = (f"depends on {dep}, which changed; holds the loaded C "
                                f"extension {facts.native[top]}, kept whole")
                break
            for nxt in deps(dep):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
    return PurgePlan(purge, blocked)


# --------------------------------------------------------------------------- gathering


def gather(
    files: Mapping[str, str | None],
    dists: Mapping[str, Dist],
    *,
    changed: Mapping[str, str],
    protected: Collection[str],
    held: Mapping[str, str],
    extensions: Collection[str],
    dependents: bool = True,
    modules: Mapping[str, Any] | None = None,
) -> GraphFacts:
    """The facts about this process: `files` maps each loaded module the purge considers
    to its file, `dists` the distributions on the path; `extensions` names the loaded C
    extension modules. Reads distribution metadata (cached) and the recorded edges."""
    modules = sys.modules if modules is None else modules
    loaded = frozenset(name.partition(".")[0] for name in files)
    provided: dict[str, list[str]] = {}  # top -> distributions providing it
    facts_of = {}
    for name, dist in dists.items():
        tops, requires = dist_facts(dist)
        facts_of[name] = (tops, requires)
        for top in tops:
            provided.setdefault(top, []).append(name)
    edges: dict[str, set[str]] = {}
    for tops, requires in facts_of.values():
        mine = tops & loaded
        if not mine:
            continue
        targets: set[str] = set()
        for required in requires:
            if required in facts_of:
                targets |= facts_of[required][0] & loaded
        for top in mine:
            edges.setdefault(top, set()).update(targets)
    for top, recorded in recorded_edges().items():
        # gunicorn and rollover import the app and the worker class on its behalf: what
        # they hold is known from their Requires-Dist and from `held`
        if top in loaded and top not in protected:
            edges.setdefault(top, set()).update(recorded)
    native: dict[str, str] = {}
    for name in sorted(extensions):
        native.setdefault(name.partition(".")[0], name)
    for top, module_name in list(native.items()):  # a distribution goes as a whole
        for dist_name in provided.get(top, ()):
            for other in facts_of[dist_name][0] & loaded:
                native.setdefault(other, module_name)
    app = frozenset(top for top in loaded
                    if top not in provided and top not in protected and _from_files(
                        modules.get(top)))
    return GraphFacts(loaded=loaded, changed=dict(changed),
                      edges={k: frozenset(v) for k, v in edges.items()}, app=app,
                      protected=frozenset(protected), held=dict(held), native=native,
                      dependents=dependents)


def _from_files(module: Any) -> bool:
    """Loaded from files (a module with a location, or a package with a path)."""
    spec = getattr(module, "__spec__", None)
    return bool(spec is not None and (getattr(spec, "has_location", False)
                                      or getattr(spec, "submodule_search_locations", None)))
