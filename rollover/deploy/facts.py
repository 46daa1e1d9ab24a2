"""The facts the HUP / USR2 decision needs: the live master (its command line, environment,
interpreter, memory map), the release's venv against the live one. Reading them touches
the live system (psutil, /proc, a subprocess, venv scans); deciding is `plan.plan`, pure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rollover.client import (
    MasterError,
    is_alive,
    memory_map,
    process_argv,
    process_environ,
    read_pidfile,
    validate_master,
)
from rollover.deploy.layout import Layout, under
from rollover.deploy.report import DeployError

APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.()'\", =]*$")
SHARED_OBJECT = re.compile(r"\.so(\.[\w.]+)?$")


@dataclass
class LiveMaster:
    pid: int
    status: dict[str, Any]
    status_path: str
    argv: list[str]
    environ: dict[str, str]

    @property
    def probe_path(self) -> str | None:
        settings = self.status.get("settings")
        value = settings.get("probe_path") if isinstance(settings, dict) else None
        return value if isinstance(value, str) and value else None

    @property
    def graceful_timeout(self) -> float:
        settings = self.status.get("settings")
        value = settings.get("graceful_timeout") if isinstance(settings, dict) else None
        return float(value) if isinstance(value, int | float) else 30.0

    def python_executable(self) -> str | None:
        """The master's `sys.executable` as it was started (not resolved)."""
        python = self.status.get("python")
        if isinstance(python, dict) and isinstance(python.get("executable"), str):
            return str(python["executable"])
        if self.argv and os.path.isabs(self.argv[0]):
            return self.argv[0]
        return None

    def reexec_python(self) -> str | None:
        """What USR2 will exec: `rollover_reexec_python`, else the master's interpreter."""
        settings = self.status.get("settings")
        if isinstance(settings, dict) and isinstance(settings.get("reexec_python"), str):
            return str(settings["reexec_python"])
        if self.environ.get("ROLLOVER_REEXEC_PYTHON"):
            return self.environ["ROLLOVER_REEXEC_PYTHON"]
        return self.python_executable()

    def app_spec(self) -> str | None:
        """The last `module:callable` on the master's command line (gunicorn's APP_MODULE)."""
        for arg in reversed(self.argv[1:]):
            if APP_SPEC.match(arg) and not arg.startswith("python:"):
                return arg
        return None

    def worker_class(self) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg in ("-k", "--worker-class") and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith("--worker-class="):
                return arg.split("=", 1)[1]
        return None


def find_master(pidfile: str, status_path: str) -> LiveMaster | None:
    """The live rollover master; None when there is none (no pidfile, or a stale one)."""
    if not os.path.exists(pidfile):
        return None
    try:
        pid = read_pidfile(pidfile)
        if not is_alive(pid):
            return None
        pid, status = validate_master(pidfile, status_path)
    except MasterError as exc:
        raise DeployError(str(exc)) from None
    except PermissionError:
        raise DeployError(f"the master named by {pidfile} belongs to another user") from None
    return LiveMaster(pid, status, status_path, process_argv(pid), process_environ(pid))


@dataclass(frozen=True)
class Facts:
    """What `plan.plan` decides on; gathered by `gather`."""

    current: str  # the `current` link, for messages
    master_python: str | None  # the master's interpreter as started (None: unknown)
    python_follows_current: bool  # ... lies in the venv behind `current`
    old_python: dict[str, Any] | None  # the master's interpreter: implementation, version
    new_python: dict[str, Any]  # the release's, from its preflight (and its gunicorn, rollover)
    old_versions: dict[str, Any]  # gunicorn and rollover versions of the master
    worker_packages: tuple[dict[str, str], dict[str, str]] | None  # (live, new); None: none
    shared_objects: tuple[list[str], int] | str  # (changed, compared), or why unknown


def gather(layout: Layout, master: LiveMaster, release: dict[str, Any],
           release_dir: Path) -> Facts:
    """Read what the decision needs; `release` is the preflight's facts of the release."""
    python = master.python_executable()
    packages = worker_packages(master.worker_class())
    versions = None
    if packages:
        live = layout.current_id()
        versions = (installed_versions(layout.path(live) / "venv", packages) if live else {},
                    installed_versions(release_dir / "venv", packages))
    shared: tuple[list[str], int] | str
    try:
        maps = memory_map(master.pid)
    except OSError as exc:
        shared = str(exc.strerror)
    else:
        shared = changed_shared_objects(maps, str(layout.releases), str(release_dir))
    return Facts(
        current=str(layout.current),
        master_python=python,
        python_follows_current=python is not None and under(python, layout.current),
        old_python=master_python(master),
        new_python=release,
        old_versions={key: master.status.get(key) for key in ("gunicorn", "rollover")},
        worker_packages=versions,
        shared_objects=shared,
    )


_FACTS_CODE = (
    "import json, platform, sys; print(json.dumps({'implementation': sys.implementation.name,"
    " 'version': platform.python_version(), 'executable': sys.executable}))"
)


def master_python(master: LiveMaster) -> dict[str, Any] | None:
    """Implementation and version of the interpreter the master runs (None if unknown)."""
    python = master.status.get("python")
    if isinstance(python, dict) and python.get("version") and python.get("implementation"):
        return python
    exe = f"/proc/{master.pid}/exe"
    try:
        if os.readlink(exe).endswith(" (deleted)"):
            return {"implementation": "?", "version": "replaced on disk", "executable": exe}
        out = subprocess.run([exe, "-I", "-S", "-c", _FACTS_CODE], capture_output=True,
                             text=True, timeout=30, check=True, stdin=subprocess.DEVNULL)
        data = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return data if isinstance(data, dict) else None


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size:
        return False
    return _digest(a) == _digest(b)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def changed_shared_objects(maps: str, releases_dir: str, new_release: str) -> tuple[list[str], int]:
    """Shared objects (C extensions, bundled libraries) the master has mapped from a release
    that differ in, or are missing from, the new release: ([descriptions], how many compared).

    The heuristic: the kernel lists every file a process has mapped in /proc/<pid>/maps,
    by its resolved path. A C extension module the master imported is mapped from
    `<root>/releases/<old>/venv/...`; the same relative path in the new release must hold
    the same bytes, or the master (which cannot unload an extension) would keep running the
    old one while its new workers import the new one: a HUP cannot deliver that, a USR2
    re-exec can. Extensions the workers load but the master never imported are not in its
    maps and need nothing: every new worker is a new process.
    """
    prefix = os.path.realpath(releases_dir) + os.sep
    new_real = os.path.realpath(new_release)
    seen: set[str] = set()
    changed: list[str] = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[: -len(" (deleted)")]
        if not path.startswith(prefix) or path in seen:
            continue
        seen.add(path)
        release_id, _, inner = path[len(prefix):].partition(os.sep)
        if not inner or not SHARED_OBJECT.search(os.path.basename(inner)):
            continue
        if os.path.join(os.path.realpath(releases_dir), release_id) == new_real:
            continue
        candidate = os.path.join(new_real, inner)
        if deleted:
            changed.append(f"{inner} (replaced on disk under release {release_id})")
        elif not os.path.exists(candidate):
            changed.append(f"{inner} (not in the new release)")
        elif not _same_file(path, candidate):
            changed.append(f"{inner} (changed)")
    compared = sum(1 for p in seen if SHARED_OBJECT.search(os.path.basename(p)))
    return changed, compared


def worker_packages(worker_class: str | None) -> set[str]:
    """Top-level packages of a worker class the master imports and keeps across HUPs
    (rollover's refresh never purges them): `uvicorn_worker.UvicornWorker` -> uvicorn_worker
    and uvicorn. gunicorn's own classes (`gthread`, `sync`, ...) come with gunicorn."""
    if not worker_class or "." not in worker_class:
        return set()
    names = {worker_class.split(".", 1)[0].replace("-", "_")}
    if "uvicorn" in worker_class.lower():
        names.add("uvicorn")
    return names - {"gunicorn", "rollover"}


def installed_versions(venv: Path, packages: set[str]) -> dict[str, str]:
    """{distribution: version} in `venv` for the distributions that install `packages`."""
    found: dict[str, str] = {}
    sites = [str(site) for site in venv.glob("lib/python*/site-packages")]
    if not sites:
        return found
    for dist in metadata.distributions(path=sites):
        tops = set((dist.read_text("top_level.txt") or "").split())
        for file in dist.files or []:
            first = file.parts[0] if file.parts else ""
            tops.add(first[:-3] if first.endswith(".py") else first)
        if tops & packages:
            name = re.sub(r"[-_.]+", "_", dist.metadata["Name"] or "?").lower()
            found[name] = dist.version
    return found
