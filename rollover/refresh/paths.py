"""The running `sys.path` against a fresh interpreter's: asking a fresh interpreter
(`ask_fresh_interpreter`), reconciling the two (`reconcile`, pure) and reading `.pth` files
the way `site` does (without ever re-running `site.main()`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from rollover.refresh.imports_graph import versioned
from rollover.refresh.report import RefreshError

DEFAULT_TIMEOUT = 10.0

_MARK = "\x00rollover-fresh-sys-path\x00"


def path_key(entry: str) -> str:
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
    protected_keys = {path_key(p) for p in protected}
    derived_keys = {path_key(p) for p in site_derived}
    fresh_keys: dict[str, str] = {}
    for entry in fresh:
        fresh_keys.setdefault(path_key(entry), entry)
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
        key = path_key(entry)
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
    result_keys = [path_key(p) for p in result]
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

# --------------------------------------------------------------------------- .pth files


def pth_files(site_dirs: Iterable[str]) -> list[tuple[str, str]]:
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


def pth_lines(path: str) -> list[str]:
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


def pth_paths(sitedir: str, path: str) -> list[str]:
    """The path lines of a .pth file, made absolute the way `site.addpackage` does."""
    out = []
    for line in pth_lines(path):
        if not line.strip() or line.startswith("#") or line.startswith(("import ", "import\t")):
            continue
        out.append(os.path.abspath(os.path.join(sitedir, line.rstrip())))
    return out


def run_pth_line(sitedir: str, line: str) -> None:
    # Like site.addpackage: `sitedir` is a local of the calling frame, which some .pth
    # files read (sys._getframe(1).f_locals["sitedir"]).
    exec(line)


def running_site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages()) if not sys.flags.no_site else []
    if not sys.flags.no_site and site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs

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

