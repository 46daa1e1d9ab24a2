"""`rollover deploy`: ship a new release to a running rollover master with no downtime.

An app root holds one directory per release and a symlink to the live one::

    <root>/releases/<id>/          the app's files, its own venv (venv/) and
                                   .rollover-release.json (written last: the build is complete)
    <root>/current -> releases/<id>

and gunicorn runs through the symlink::

    <root>/current/venv/bin/python <root>/current/venv/bin/gunicorn \\
        -c python:rollover.hooks --chdir <root>/current --pid <pidfile> app:app

A deploy, step by step (each one printed; `--json` prints a summary object at the end):

1. build: copy the source dir into `releases/<id>/`, create `releases/<id>/venv` and pip
   install the requirements / wheels into it (never into a live venv);
2. preflight: in a subprocess run by the new release's interpreter, in its directory,
   import the app as gunicorn does and run the readiness probe in-process (a WSGI app is
   called with a synthetic environ; an ASGI app goes through lifespan startup, one http
   request and lifespan shutdown). A broken release stops here; nothing live was touched;
3. plan: HUP when the master already runs from the venv behind `current`, the release has
   the same Python (implementation and version), the same gunicorn and rollover versions,
   and no shared library the master has mapped changed (`changed_shared_objects`);
   otherwise a USR2 handoff;
4. switch: `current` is replaced atomically (a new symlink renamed over it);
5. reload: HUP: `rollover reload --wait` semantics; USR2: the master re-executes
   (through `current`) into a new master that inherits the listening sockets; once the
   new master's status shows all its workers READY, the pidfile is pointed at it and the
   old master gets SIGTERM (a graceful stop) and is waited for;
6. verify: the new workers' working directory is the new release;
7. prune: keep the `--keep` newest releases, never the live one, the rollback target, or
   one that a running process still uses (cwd, executable or a mapped file under it).

A failure in steps 4-6 switches `current` back and undoes the live change: after a HUP,
a second HUP rolls the workers back to the previous release (config and code); after a
USR2, the new master is stopped, the old one never stopped serving.

The preflight runs inside the new release's interpreter by loading this very file (not
the package, whose version in the release may differ), so everything at module level here
is standard library only; `rollover.cli` and `rollover.status` are imported where needed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EXIT_DEPLOYED = 0  # deployed (with --dry-run: the plan was made, nothing changed)
EXIT_ROLLED_BACK = 1  # the live step failed; rolled back, the previous release serves
EXIT_ERROR = 2  # bad usage or a precondition failed; nothing changed
EXIT_BUILD_FAILED = 3  # the release could not be built; nothing changed
EXIT_PREFLIGHT_FAILED = 4  # the release failed its preflight; nothing live was touched
EXIT_ROLLBACK_FAILED = 5  # the live step failed; the server is not known to serve either release
EXIT_INTERRUPTED = 130

EPILOG = f"""\
exit codes:
  {EXIT_DEPLOYED}    deployed (--dry-run: planned, nothing changed)
  {EXIT_ROLLED_BACK}    the live step failed; current and every READY worker are on the previous
       release (also when a step of the rollback failed: the cause is printed)
  {EXIT_ERROR}    bad usage or a failed precondition (no such root, not a rollover master,
       another deploy running, USR2 needed but impossible); nothing changed
  {EXIT_BUILD_FAILED}    building the release failed; nothing changed
  {EXIT_PREFLIGHT_FAILED}    the release failed its preflight (import or readiness probe); nothing
       live was touched
  {EXIT_ROLLBACK_FAILED}    the live step failed and the server is not known to serve either
       release (no READY worker, workers on both, or current disagrees): check it
  {EXIT_INTERRUPTED}  interrupted (a live step in progress is rolled back first)
"""

DEFAULT_KEEP = 5
DEFAULT_TIMEOUT = 300.0
DEFAULT_PREFLIGHT_TIMEOUT = 120.0
POLL_INTERVAL = 0.1
START_TIMEOUT = 60.0  # USR2: the new master must write <pidfile>.2 within this
METADATA = ".rollover-release.json"
BUILD_LOG = ".rollover-build.log"
LOCK_NAME = ".rollover-deploy.lock"
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
SOURCE_IGNORE = (".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv", "venv", ".tox",
                 ".mypy_cache", ".pytest_cache", ".ruff_cache", "releases", "current")
# an app spec on a gunicorn command line: module.path:expression
APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.()'\", =]*$")
SHARED_OBJECT = re.compile(r"\.so(\.[\w.]+)?$")


class DeployError(Exception):
    """A deploy problem: one line on stderr, and the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class LiveFailure(Exception):
    """The live step failed (after `current` was switched): roll back."""


# --- output ------------------------------------------------------------------------------


@dataclass
class Step:
    step: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class Report:
    """What the deploy did: printed step by step, and as one JSON object with --json."""

    json_mode: bool
    root: str = ""
    release: str | None = None
    previous: str | None = None
    method: str | None = None
    reasons: list[str] = field(default_factory=list)
    master_pid: int | None = None
    new_master_pid: int | None = None
    steps: list[Step] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    error: str | None = None
    rollback_error: str | None = None
    serving: str | None = None  # after a failed live step: the release all READY workers run
    start_command: list[str] | None = None
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def out(self) -> IO[str]:
        return sys.stderr if self.json_mode else sys.stdout

    def say(self, step: str, text: str) -> None:
        print(f"[{step}]{' ' * max(1, 10 - len(step))}{text}", file=self.out, flush=True)

    def done(self, step: str, started: float, detail: str, ok: bool = True) -> None:
        self.steps.append(Step(step, ok, round(time.monotonic() - started, 3), detail))

    def result(self, code: int) -> str:
        if self.dry_run and code == EXIT_DEPLOYED:
            return "planned"
        return {EXIT_DEPLOYED: "deployed", EXIT_ROLLED_BACK: "rolled-back",
                EXIT_BUILD_FAILED: "rejected", EXIT_PREFLIGHT_FAILED: "rejected",
                EXIT_ROLLBACK_FAILED: "rollback-failed",
                EXIT_INTERRUPTED: "interrupted"}.get(code, "error")

    def as_json(self, code: int) -> dict[str, Any]:
        return {
            "result": self.result(code),
            "exit_code": code,
            "root": self.root,
            "release": self.release,
            "previous": self.previous,
            "method": self.method,
            "reasons": self.reasons,
            "master_pid": self.master_pid,
            "new_master_pid": self.new_master_pid,
            "steps": [vars(s) for s in self.steps],
            "pruned": self.pruned,
            "kept": self.kept,
            "error": self.error,
            "rollback_error": self.rollback_error,
            "serving": self.serving,
            "start_command": self.start_command,
            "dry_run": self.dry_run,
            "seconds": round(time.monotonic() - self.started, 3),
        }


def _error(message: str) -> None:
    print(f"rollover: {message}", file=sys.stderr, flush=True)


# --- the app root ------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    id: str
    path: Path
    created: float
    complete: bool


class Layout:
    """`<root>/releases/<id>/` and the `<root>/current` symlink."""

    def __init__(self, root: str) -> None:
        self.root = Path(os.path.abspath(root))
        self.releases = self.root / "releases"
        self.current = self.root / "current"

    def check(self, create: bool = False) -> None:
        if create and not self.root.exists():
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise DeployError(f"cannot create the app root {self.root}: "
                                  f"{exc.strerror}") from None
        if not self.root.is_dir():
            raise DeployError(f"app root {self.root}: no such directory")
        if self.current.exists() and not self.current.is_symlink():
            raise DeployError(f"{self.current} is not a symlink: it cannot be switched "
                              "atomically (move it into releases/ and link it)")
        self.releases.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise DeployError(f"another deploy is running on {self.root} "
                                  f"(pid {holder}, lock {path})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def current_id(self) -> str | None:
        """The release `current` names; None without a `current` link."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeployError(f"cannot read {self.current}: {exc.strerror}") from None
        resolved = Path(os.path.normpath(self.root / target))
        if resolved.parent != self.releases:
            raise DeployError(f"{self.current} -> {target} is not a release in {self.releases}")
        return resolved.name

    def path(self, release_id: str) -> Path:
        return self.releases / release_id

    def release(self, release_id: str) -> Release | None:
        path = self.path(release_id)
        if not path.is_dir() or path.is_symlink():
            return None
        meta = read_metadata(path)
        created = meta.get("created") if meta else None
        if not isinstance(created, int | float):
            created = path.stat().st_mtime
        return Release(release_id, path, float(created), bool(meta and meta.get("complete")))

    def list(self) -> list[Release]:
        """Every release dir (complete or not), newest first; hidden scratch dirs excluded."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.releases):
                if entry.name.startswith("."):
                    continue
                release = self.release(entry.name)
                if release is not None:
                    found.append(release)
        return sorted(found, key=lambda r: (r.created, r.id), reverse=True)

    def switch(self, release_id: str) -> None:
        """Point `current` at `releases/<id>` atomically: a new symlink renamed over it."""
        tmp = self.root / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", release_id), tmp)
        try:
            os.replace(tmp, self.current)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, path: Path) -> None:
        """Delete a release: renamed first, so a half-deleted one never looks like a release."""
        trash = self.releases / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def read_metadata(release_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((release_dir / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_metadata(release_dir: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".rollover-meta-", dir=release_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, release_dir / METADATA)


def new_release_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid() % 100000:05d}"


# --- the live master ---------------------------------------------------------------------


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


def _cli() -> Any:
    from rollover import cli

    return cli


def proc_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[1])


def pid_alive(pid: int) -> bool:
    return proc_ppid(pid) is not None


def proc_children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return {int(p) for p in fh.read().split()}
    except OSError:
        pass
    children = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and proc_ppid(int(entry)) == pid:
                children.add(int(entry))
    return children


def find_master(pidfile: str, status_path: str) -> LiveMaster | None:
    """The live rollover master; None when there is none (no pidfile, or a stale one)."""
    cli = _cli()
    if not os.path.exists(pidfile):
        return None
    try:
        pid = cli.read_pidfile(pidfile)
        if not cli.is_alive(pid):
            return None
        pid, status = cli.validate_master(pidfile, status_path)
    except cli.CliError as exc:
        raise DeployError(str(exc)) from None
    except PermissionError:
        raise DeployError(f"the master named by {pidfile} belongs to another user") from None
    return LiveMaster(pid, status, status_path, proc_argv(pid), proc_environ(pid))


# --- facts and the HUP / USR2 decision -----------------------------------------------------


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
    for site in venv.glob("lib/python*/site-packages"):
        for info in site.glob("*.dist-info"):
            name, _, version = info.name[: -len(".dist-info")].partition("-")
            tops: set[str] = set()
            with contextlib.suppress(OSError):
                tops |= set((info / "top_level.txt").read_text().split())
            with contextlib.suppress(OSError):
                for line in (info / "RECORD").read_text().splitlines():
                    first = line.split(",", 1)[0].split("/", 1)[0]
                    tops.add(first[:-3] if first.endswith(".py") else first)
            if tops & packages:
                found[name.lower()] = version
    return found


def _under(path: str, directory: Path) -> bool:
    """Whether `path`, taken literally (symlinks not resolved), lies under `directory`."""
    normal = os.path.normpath(os.path.abspath(path))
    for base in {str(directory), os.path.join(os.path.realpath(directory.parent),
                                              directory.name)}:
        if normal.startswith(base + os.sep):
            return True
    return False


@dataclass
class Plan:
    method: str  # "hup", "usr2" or "start" (no master running)
    reasons: list[str]  # why not HUP (empty for HUP)
    checked: list[str]  # what matched


def make_plan(layout: Layout, master: LiveMaster | None, facts: dict[str, Any],
              release_dir: Path, forced: str) -> Plan:
    if master is None:
        return Plan("start", [], ["no master is running"])
    reasons: list[str] = []
    checked: list[str] = []
    python = master.python_executable()
    if python is None:
        reasons.append("the master's interpreter path is unknown (its command line was "
                       "rewritten?), so a HUP may not see the new venv")
    elif not _under(python, layout.current):
        reasons.append(f"the master runs {python}, not the venv behind {layout.current}: a "
                       "HUP would not load the new release's packages")
    else:
        checked.append(f"master runs {python}")
    old_py = master_python(master)
    new_impl, new_ver = facts.get("implementation"), facts.get("version")
    if old_py is None:
        reasons.append("the master's Python version is unknown")
    elif (old_py.get("implementation"), old_py.get("version")) != (new_impl, new_ver):
        reasons.append(f"Python {old_py.get('implementation')} {old_py.get('version')} -> "
                       f"{new_impl} {new_ver}")
    else:
        checked.append(f"Python {new_impl} {new_ver}")
    for name, key in (("gunicorn", "gunicorn"), ("rollover", "rollover")):
        old, new = master.status.get(key), facts.get(key)
        if old != new:
            reasons.append(f"{name} {old} -> {new}")
        else:
            checked.append(f"{name} {new}")
    packages = worker_packages(master.worker_class())
    if packages:
        live = layout.current_id()
        old_v = installed_versions(layout.path(live) / "venv", packages) if live else {}
        new_v = installed_versions(release_dir / "venv", packages)
        if old_v != new_v:
            reasons.append(f"worker class packages {_versions(old_v)} -> {_versions(new_v)} "
                           "(the master keeps them across a HUP)")
        else:
            checked.append(f"worker class packages {_versions(new_v)}")
    try:
        with open(f"/proc/{master.pid}/maps", encoding="utf-8", errors="replace") as fh:
            maps = fh.read()
    except OSError as exc:
        reasons.append(f"cannot read the master's memory map ({exc.strerror}) to compare C "
                       "extensions")
    else:
        changed, compared = changed_shared_objects(maps, str(layout.releases), str(release_dir))
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more"
                                              if len(changed) > 3 else "")
            reasons.append(f"C extension loaded by the master changed: {shown}")
        else:
            checked.append(f"no changed C extension ({compared} mapped from releases)")
    if forced == "hup":
        return Plan("hup", reasons, checked)
    if forced == "usr2" or reasons:
        return Plan("usr2", reasons or ["--method usr2"], checked)
    return Plan("hup", [], checked)


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "none"


def check_usr2_possible(layout: Layout, master: LiveMaster, new_python: str) -> None:
    """A USR2 handoff starts the new release only if the master re-execs through `current`."""
    python = master.reexec_python()
    if python is not None and (_under(python, layout.current)
                               or os.path.abspath(python) == os.path.abspath(new_python)):
        return
    shown = python or "an unknown interpreter"
    raise DeployError(
        f"a USR2 handoff is needed but the master would re-exec {shown}, which does not "
        f"follow {layout.current}: start gunicorn as {layout.current}/venv/bin/python "
        f"{layout.current}/venv/bin/gunicorn ..., or set rollover_reexec_python="
        f"{layout.current}/venv/bin/python"
    )


# --- build ------------------------------------------------------------------------------


def default_python(layout: Layout) -> str:
    live = layout.current / "venv" / "bin" / "python"
    if live.exists():
        return os.path.realpath(live)
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _own_pip() -> bool:
    """Whether this interpreter's pip can install into another venv (`pip --python`)."""
    from importlib import metadata

    try:
        version = metadata.version("pip")
    except metadata.PackageNotFoundError:
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (22, 3)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line
    return lines[-1] if lines else "no output"


def build(opts: argparse.Namespace, release_dir: Path, python: str, report: Report) -> None:
    """Create `release_dir` with the app's files and its own venv; DeployError(3) on failure."""
    started = time.monotonic()
    release_dir.mkdir()
    inputs: dict[str, Any] = {}
    if opts.source:
        source = Path(opts.source).resolve()
        shutil.copytree(source, release_dir, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*SOURCE_IGNORE))
        inputs["source"] = str(source)
    requirements = [os.path.abspath(r) for r in opts.requirements]
    if not requirements and opts.source and (release_dir / "requirements.txt").is_file():
        requirements = [str(release_dir / "requirements.txt")]
    wheels = [os.path.abspath(w) for w in opts.wheel]
    inputs.update(requirements=requirements, wheels=wheels)
    venv = release_dir / "venv"
    own_pip = _own_pip()
    what = ", ".join([f"-r {r}" for r in requirements] + wheels) or "nothing"
    report.say("build", f"venv with {python}; pip install {what}")
    log_path = release_dir / BUILD_LOG
    with open(log_path, "w", encoding="utf-8") as log:
        venv_cmd = [python, "-m", "venv", *(["--without-pip"] if own_pip else []), str(venv)]
        _run_logged(venv_cmd, log, "creating the venv")
        new_python = str(venv / "bin" / "python")
        pip = ([sys.executable, "-m", "pip", "--python", new_python] if own_pip
               else [new_python, "-m", "pip"])
        args = ["install", "--disable-pip-version-check", "--no-input"]
        for link in opts.find_links:
            args += ["--find-links", os.path.abspath(link)]
        if opts.no_index:
            args.append("--no-index")
        args += opts.pip_arg
        for req in requirements:
            args += ["-r", req]
        args += wheels
        if requirements or wheels:
            _run_logged(pip + args, log, "pip install")
    meta = {
        "id": release_dir.name,
        "created": time.time(),
        "complete": True,
        "python": python,
        "inputs": inputs,
        "built_by": f"rollover deploy (pid {os.getpid()})",
    }
    write_metadata(release_dir, meta)
    report.say("build", f"done in {time.monotonic() - started:.1f}s")
    report.done("build", started, f"venv with {python}; pip install {what}")


def _run_logged(cmd: list[str], log: IO[str], what: str) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          stdin=subprocess.DEVNULL)
    log.write(proc.stdout + proc.stderr)
    log.flush()
    if proc.returncode != 0:
        line = _last_error_line(proc.stderr or proc.stdout)
        if "gunicorn-rollover" in line or "gunicorn_rollover" in line:
            line += (" (give rollover's wheel: --wheel gunicorn_rollover-<version>-py3-none-"
                     "any.whl, or 'gunicorn-rollover @ file:///<wheel>' in requirements)")
        raise DeployError(f"build failed: {what} exited {proc.returncode}: {line}",
                          EXIT_BUILD_FAILED)


# --- preflight (the part that runs inside the release's interpreter) --------------------------


_PREFLIGHT_LOADER = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_rollover_preflight', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.preflight_main(sys.argv[2:]))\n"
)


def preflight(release_dir: Path, app: str, probe: str | None, interface: str,
              timeout: float, report: Report) -> dict[str, Any]:
    """Import the app and probe it in a subprocess of the release; its facts, or DeployError."""
    started = time.monotonic()
    python = release_dir / "venv" / "bin" / "python"
    if not python.exists():
        raise DeployError(f"preflight failed: {python} does not exist", EXIT_PREFLIGHT_FAILED)
    shown = f"import {app}" + (f", GET {probe}" if probe else "")
    report.say("preflight", f"{shown} with {python}")
    fd, out_path = tempfile.mkstemp(prefix="rollover-preflight-", suffix=".json")
    os.close(fd)
    request = json.dumps({"app": app, "probe": probe, "interface": interface,
                          "out": out_path, "timeout": timeout})
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.Popen(
        [str(python), "-c", _PREFLIGHT_LOADER, os.path.abspath(__file__), request],
        cwd=release_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        try:
            output, _ = proc.communicate(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise DeployError(f"preflight failed: no answer within {timeout:g}s",
                              EXIT_PREFLIGHT_FAILED) from None
        try:
            with open(out_path, encoding="utf-8") as fh:
                result = json.load(fh)
        except (OSError, ValueError):
            result = {}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out_path)
    text = output.decode(errors="replace")
    if not isinstance(result, dict) or not result.get("ok"):
        cause = result.get("error") if isinstance(result, dict) else None
        cause = cause or f"exited {proc.returncode}: {_last_error_line(text)}"
        for line in text.splitlines()[-12:]:
            report.say("preflight", f"| {line}")
        raise DeployError(f"preflight failed: {cause}", EXIT_PREFLIGHT_FAILED)
    facts = result.get("facts") or {}
    detail = f"{shown}: {result.get('detail', 'ok')}"
    report.say("preflight", f"ok in {time.monotonic() - started:.1f}s ({result.get('detail')}); "
               f"{facts.get('implementation')} {facts.get('version')}, gunicorn "
               f"{facts.get('gunicorn')}, rollover {facts.get('rollover')}")
    report.done("preflight", started, detail)
    return dict(facts)


def preflight_main(argv: list[str]) -> int:
    """In the release's interpreter: import the app and probe it; the result goes to a file."""
    request = json.loads(argv[0])
    result: dict[str, Any] = {"ok": False, "facts": _python_facts()}

    def finish(error: str | None, detail: str = "") -> int:
        result.update(ok=error is None, error=error, detail=detail)
        with open(request["out"], "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0 if error is None else 1

    facts = result["facts"]
    if facts.get("gunicorn") is None:
        return finish("gunicorn is not installed in the release's venv")
    if facts.get("rollover") is None:
        return finish("rollover (gunicorn-rollover) is not installed in the release's venv: "
                      "give --wheel gunicorn_rollover-<version>-py3-none-any.whl (pip wheel "
                      "--no-deps <rollover checkout>), or the requirements line "
                      "'gunicorn-rollover @ file:///<path to that wheel>'")
    cwd = os.getcwd()
    if "" in sys.path:
        sys.path.remove("")
    sys.path.insert(0, cwd)  # like gunicorn's --chdir
    try:
        from gunicorn.util import import_app

        app = import_app(request["app"])
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return finish(f"importing {request['app']} failed: {_describe(exc)}")
    kind = request["interface"]
    if kind == "auto":
        kind = "asgi" if _is_asgi(app) else "wsgi"
    probe = request.get("probe")
    timeout = float(request.get("timeout") or 60)
    try:
        if kind == "asgi":
            import asyncio

            error, detail = asyncio.run(_asgi_preflight(app, probe, timeout))
        else:
            error, detail = _wsgi_preflight(app, probe)
    except Exception as exc:
        return finish(f"preflight of {request['app']} failed: {_describe(exc)}")
    return finish(error, f"{kind}; {detail}")


def _python_facts() -> dict[str, Any]:
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "implementation": sys.implementation.name,
        "version": platform.python_version(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "gunicorn": version("gunicorn"),
        "rollover": version("gunicorn-rollover"),
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" ({os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}".strip()


def _is_asgi(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    if inspect.isclass(app) or inspect.isroutine(app):
        return False
    return inspect.iscoroutinefunction(type(app).__call__) if callable(app) else False


def _judge(path: str, status: Any) -> str | None:
    try:
        code = int(str(status).split(" ", 1)[0])
    except (TypeError, ValueError):
        return f"readiness probe GET {path} answered a malformed status {status!r}"
    if 200 <= code < 300:
        return None
    return f"readiness probe GET {path} answered {code}"


def _wsgi_preflight(app: Callable[..., Any], path: str | None) -> tuple[str | None, str]:
    if not path:
        return None, "imported (no probe path)"
    path_only, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path_only,
        "QUERY_STRING": query, "RAW_URI": path, "SERVER_NAME": "localhost",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0", "HTTP_HOST": "localhost", "HTTP_USER_AGENT": "rollover-preflight",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        status[:] = [line]
        return lambda data: None

    try:
        body = app(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        return f"readiness probe GET {path} raised {_describe(exc)}", ""
    if not status:
        return f"readiness probe GET {path} returned without calling start_response", ""
    error = _judge(path, status[0])
    return error, f"GET {path} -> {status[0].split(' ', 1)[0]}"


async def _asgi_preflight(app: Callable[..., Any], path: str | None,
                          timeout: float) -> tuple[str | None, str]:
    """Lifespan startup, one http request (if `path`), lifespan shutdown."""
    import asyncio

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    startup: asyncio.Future[str | None] = loop.create_future()
    shutdown: asyncio.Future[None] = loop.create_future()
    state: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete" and not startup.done():
            startup.set_result(None)
        elif kind == "lifespan.startup.failed" and not startup.done():
            startup.set_result(str(message.get("message") or "no message"))
        elif (kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
              and not shutdown.done()):
            shutdown.set_result(None)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
             "state": state}
    task = asyncio.ensure_future(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait({task, startup}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    lifespan = True
    if startup.done():
        cause = startup.result()
        if cause is not None:
            return f"lifespan startup failed: {cause}", ""
    elif task.done():
        lifespan = False  # the app does not support lifespan (returned or raised at once)
    else:
        task.cancel()
        return f"lifespan startup did not complete within {timeout:g}s", ""
    details = ["lifespan startup ok" if lifespan else "no lifespan support"]
    error = None
    if path:
        error, detail = await _asgi_request(app, path, dict(state) if lifespan else None,
                                            timeout)
        details.append(detail)
    if lifespan and not task.done():
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait({task, shutdown}, timeout=min(timeout, 10),
                           return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    return error, "; ".join(d for d in details if d)


async def _asgi_request(app: Callable[..., Any], path: str, state: dict[str, Any] | None,
                        timeout: float) -> tuple[str | None, str]:
    import asyncio

    path_only, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path_only,
        "raw_path": path_only.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"localhost"), (b"user-agent", b"rollover-preflight")],
        "client": ("127.0.0.1", 0), "server": ("localhost", 80),
    }
    if state is not None:
        scope["state"] = state
    status: list[Any] = []
    answered = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            status[:] = [message.get("status")]
        elif message.get("type") == "http.response.body" and not message.get("more_body"):
            answered.set()

    task = asyncio.ensure_future(app(scope, receive, send))
    waiter = asyncio.ensure_future(answered.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if answered.is_set() and not task.done():
            await asyncio.wait({task}, timeout=1.0)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        assert exc is not None
        return f"readiness probe GET {path} raised {_describe(exc)}", ""
    if not answered.is_set():
        return f"readiness probe GET {path} did not answer within {timeout:g}s", ""
    code = status[0] if status else None
    return _judge(path, code), f"GET {path} -> {code}"


# --- the live step: HUP ------------------------------------------------------------------


def hup_and_wait(pidfile: str, status_path: str, timeout: float, report: Report,
                 step: str) -> dict[str, Any]:
    """`rollover reload --wait`: HUP, follow the roll; its record, or LiveFailure."""
    cli = _cli()
    try:
        pid, status = cli.validate_master(pidfile, status_path)
    except cli.CliError as exc:
        raise LiveFailure(str(exc)) from None
    before = status["reloads"]
    sent_at = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise LiveFailure(f"cannot signal master {pid}: {exc.strerror}") from None
    report.say(step, f"sent HUP to master {pid}")
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        alive = cli.is_alive(pid)
        status = cli.poll_status(status_path, pid) or status
        outcome = cli.follow(status, before, sent_at)
        if isinstance(outcome, cli.Done):
            record = outcome.record
            if outcome.result == "succeeded":
                report.say(step, f"rolled out generation {record.get('generation')} in "
                           f"{cli.duration(record)} (min ready {record.get('min_ready')})")
                return dict(record)
            raise LiveFailure(f"rollout of generation {record.get('generation')} "
                              f"{outcome.result}: {record.get('error') or 'no cause recorded'}")
        if isinstance(outcome, cli.Progress) and outcome != shown:
            shown = outcome
            report.say(step, f"{shown.new_ready}/{shown.target} workers on generation "
                       f"{shown.generation}")
        if not alive:
            raise LiveFailure(f"master {pid} exited during the roll")
        if time.monotonic() >= deadline:
            raise LiveFailure(f"timed out after {timeout:g}s waiting for the roll "
                              f"(state {status.get('state')})")
        time.sleep(POLL_INTERVAL)


def verify_workers(status: dict[str, Any], release_dir: Path, generation: int | None) -> str:
    """Check the READY workers (of `generation`) run in `release_dir`; LiveFailure if not."""
    expected = os.path.realpath(release_dir)
    workers = [w for w in status.get("workers", []) if isinstance(w, dict)
               and w.get("state") == "ready"
               and (generation is None or w.get("generation") == generation)]
    if not workers:
        raise LiveFailure("no READY worker to verify")
    wrong = []
    for worker in workers:
        try:
            cwd = os.readlink(f"/proc/{worker['pid']}/cwd")
        except OSError:
            continue  # gone meanwhile
        if os.path.realpath(cwd) != expected:
            wrong.append(f"{worker['pid']} in {cwd}")
    if wrong:
        raise LiveFailure(
            f"workers do not run the new release ({', '.join(wrong[:3])}): is gunicorn "
            f"started with --chdir {release_dir.parent.parent / 'current'}?"
        )
    return f"{len(workers)} workers run {release_dir.parent.name}/{release_dir.name}"


def live_hup(opts: argparse.Namespace, master: LiveMaster, release_dir: Path,
             report: Report) -> None:
    started = time.monotonic()
    record = hup_and_wait(opts.pidfile, master.status_path, opts.timeout, report, "reload")
    report.done("reload", started, f"HUP: rolled out generation {record.get('generation')}")
    started = time.monotonic()
    detail = wait_verified(master.status_path, master.pid, release_dir,
                           record.get("generation"))
    report.say("verify", detail)
    report.done("verify", started, detail)


def wait_verified(status_path: str, pid: int, release_dir: Path, generation: int | None,
                  timeout: float = 10.0) -> str:
    """`verify_workers` on the master's status, retried briefly over transient misses."""
    deadline = time.monotonic() + timeout
    while True:
        status = _cli().poll_status(status_path, pid) or {}
        try:
            return verify_workers(status, release_dir, generation)
        except LiveFailure:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_INTERVAL)


# --- the live step: USR2 handoff -------------------------------------------------------------


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(64).strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def write_pidfile(path: str, pid: int) -> None:
    """Name `pid` in `path` atomically (as gunicorn writes it: mode 0644)."""
    fd, tmp = tempfile.mkstemp(prefix=".rollover-pid-", dir=os.path.dirname(path) or ".")
    try:
        os.write(fd, f"{pid}\n".encode())
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _new_status_path(opts: argparse.Namespace, master: LiveMaster) -> str:
    from rollover.status import default_status_path

    if master.status_path == default_status_path(opts.pidfile):
        return default_status_path(opts.pidfile + ".2")
    return master.status_path  # an explicit path: both masters write it, told apart by pid


def _all_ready(status: dict[str, Any]) -> bool:
    workers = [w for w in status.get("workers", []) if isinstance(w, dict)]
    target = status.get("workers_target")
    ready = sum(1 for w in workers if w.get("state") == "ready")
    return (isinstance(target, int) and target > 0 and ready >= target
            and all(w.get("state") == "ready" for w in workers)
            and status.get("state") == "idle")


@dataclass
class Handoff:
    old_pid: int
    new_pid: int | None = None
    old_stopped: bool = False


def live_usr2(opts: argparse.Namespace, master: LiveMaster, release_dir: Path,
              facts: dict[str, Any], report: Report, handoff: Handoff) -> None:
    cli = _cli()
    old = master.pid
    pid2_path = opts.pidfile + ".2"
    new_status_path = _new_status_path(opts, master)
    stale = _read_pid(pid2_path)
    if stale is not None and pid_alive(stale):
        raise LiveFailure(f"{pid2_path} names a running process {stale}: a USR2 handoff is "
                          "already under way")
    started = time.monotonic()
    deadline = started + opts.timeout
    os.kill(old, signal.SIGUSR2)
    report.say("handoff", f"sent USR2 to master {old}")
    # 1. the new master: a child of the old one, named in <pidfile>.2 once it listens
    start_deadline = min(deadline, started + START_TIMEOUT)
    new_pid = None
    while new_pid is None:
        pid = _read_pid(pid2_path)
        if pid is not None and proc_ppid(pid) == old:
            new_pid = pid
            break
        if not pid_alive(old):
            raise LiveFailure(f"master {old} exited after USR2")
        if time.monotonic() >= start_deadline:
            raise LiveFailure(f"no new master wrote {pid2_path} within "
                              f"{start_deadline - started:.0f}s of USR2 (did it fail to start? "
                              "see the gunicorn log)")
        time.sleep(POLL_INTERVAL)
    handoff.new_pid = new_pid
    report.new_master_pid = new_pid
    report.say("handoff", f"new master {new_pid} started; waiting for its workers")
    # 2. its workers READY
    shown = None
    while True:
        if not pid_alive(new_pid):
            raise LiveFailure(f"the new master {new_pid} exited before its workers were ready "
                              "(see the gunicorn log)")
        status = cli.poll_status(new_status_path, new_pid)
        if status is not None:
            ready = sum(1 for w in status.get("workers", [])
                        if isinstance(w, dict) and w.get("state") == "ready")
            progress = (ready, status.get("workers_target"))
            if progress != shown:
                shown = progress
                report.say("handoff", f"{ready}/{status.get('workers_target')} workers of the "
                           f"new master ready")
            if _all_ready(status):
                break
        if time.monotonic() >= deadline:
            raise LiveFailure(f"the new master's workers were not all ready within "
                              f"{opts.timeout:g}s")
        time.sleep(POLL_INTERVAL)
    if status.get("gunicorn") != facts.get("gunicorn"):
        raise LiveFailure(f"the new master runs gunicorn {status.get('gunicorn')}, not the "
                          f"release's {facts.get('gunicorn')}: did it re-exec through current?")
    detail = verify_workers(status, release_dir, None)
    report.say("verify", detail)
    # 3. the pidfile names the new master before the old one exits (under systemd with
    # PIDFile=, the main PID moves to the new master when the old one exits)
    write_pidfile(opts.pidfile, new_pid)
    old_workers = proc_children(old) - {new_pid}
    os.kill(old, signal.SIGTERM)
    handoff.old_stopped = True
    report.say("handoff", f"pidfile names {new_pid}; sent SIGTERM to the old master {old}")
    stop_deadline = time.monotonic() + master.graceful_timeout + 30
    while pid_alive(old) and time.monotonic() < stop_deadline:
        time.sleep(POLL_INTERVAL)
    if pid_alive(old):
        report.say("handoff", f"old master {old} still running after its graceful timeout: "
                   "SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)
    left = [p for p in old_workers if pid_alive(p) and proc_argv(p) == master.argv]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        report.say("handoff", f"killed old workers left behind: {left}")
    # 4. the new master is promoted: its status moves to the normal path
    promote_deadline = time.monotonic() + 15
    while time.monotonic() < promote_deadline:
        promoted = cli.poll_status(master.status_path, new_pid)
        if promoted is not None and not os.path.exists(pid2_path):
            break
        time.sleep(POLL_INTERVAL)
    else:
        report.say("handoff", f"warning: master {new_pid} has not moved its status to "
                   f"{master.status_path} yet")
    if _read_pid(opts.pidfile) != new_pid:
        raise LiveFailure(f"{opts.pidfile} does not name the new master {new_pid}")
    if not pid_alive(new_pid):
        raise LiveFailure(f"the new master {new_pid} exited after the handoff")
    report.say("handoff", f"master {old} -> {new_pid} in {time.monotonic() - started:.1f}s")
    report.done("handoff", started, f"USR2: master {old} -> {new_pid}; {detail}")


def stop_new_master(pid: int, grace: float) -> str | None:
    """Stop a new master started by USR2 (rollback); the cause if it would not go."""
    children = proc_children(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    problem = None
    if pid_alive(pid):
        problem = f"new master {pid} ignored SIGTERM; killed"
        children |= proc_children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for child in children:
        if pid_alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    return problem


# --- rollback and prune ------------------------------------------------------------------------


def rollback(opts: argparse.Namespace, layout: Layout, master: LiveMaster, previous: str | None,
             method: str, handoff: Handoff, report: Report) -> str | None:
    """Undo the live step: `current` back, the server back; None, or why it failed."""
    started = time.monotonic()
    problems = []
    if method == "usr2" and handoff.old_stopped:
        # past the point of no return: the old master is gone or going, the new one (on
        # the new release, which `current` keeps naming) is all there is
        alive = handoff.new_pid is not None and pid_alive(handoff.new_pid)
        problem = (f"the old master was stopped already; the new master {handoff.new_pid} "
                   f"{'serves the new release' if alive else 'is gone: nothing may serve'}")
        report.done("rollback", started, problem, ok=False)
        return problem
    if previous is not None:
        layout.switch(previous)
        report.say("rollback", f"current -> releases/{previous}")
    if method == "usr2":
        if handoff.new_pid is not None and pid_alive(handoff.new_pid):
            report.say("rollback", f"stopping the new master {handoff.new_pid}")
            problem = stop_new_master(handoff.new_pid, master.graceful_timeout)
            if problem:
                report.say("rollback", problem)
        _remove_stale(opts.pidfile + ".2", _read_pid)
        if _new_status_path(opts, master) != master.status_path:
            _remove_stale(_new_status_path(opts, master), _status_pid)
        if not pid_alive(master.pid):
            problems.append(f"the old master {master.pid} is gone")
    elif previous is None:
        problems.append("there is no previous release to go back to")
    elif method == "hup":
        # the aborted roll may have left the new config in the master and new workers READY
        try:
            record = hup_and_wait(opts.pidfile, master.status_path, opts.timeout, report,
                                  "rollback")
            report.say("rollback", wait_verified(master.status_path, master.pid,
                                                 layout.path(previous),
                                                 record.get("generation")))
        except LiveFailure as exc:
            problems.append(f"rolling back to {previous} failed: {exc}")
    report.done("rollback", started, "; ".join(problems) or f"back on {previous}",
                ok=not problems)
    return "; ".join(problems) or None


def _status_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as fh:
            pid = json.load(fh).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def _remove_stale(path: str, read_pid: Callable[[str], int | None]) -> None:
    """Remove a pidfile or status file left by a master that is gone."""
    pid = read_pid(path)
    if pid is None or not pid_alive(pid):
        with contextlib.suppress(OSError):
            os.unlink(path)


def releases_in_use(layout: Layout) -> dict[str, set[int]]:
    """Release ids some process uses (cwd, executable or a mapped file), with the pids."""
    prefix = os.path.realpath(layout.releases) + os.sep
    used: dict[str, set[int]] = {}

    def note(path: str, pid: int) -> None:
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if path.startswith(prefix):
            release = path[len(prefix):].split(os.sep, 1)[0]
            used.setdefault(release, set()).add(pid)

    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        for link in ("cwd", "exe"):
            with contextlib.suppress(OSError):
                note(os.readlink(f"/proc/{pid}/{link}"), pid)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", errors="replace") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6:
                    note(parts[5].strip(), pid)
    return used


def prune_plan(releases: list[Release], keep: int, protect: set[str],
               in_use: set[str]) -> tuple[list[Release], list[Release]]:
    """(kept, removed): the `keep` newest releases, plus every protected or used one."""
    kept, removed = [], []
    for index, release in enumerate(releases):  # newest first
        if index < keep or release.id in protect or release.id in in_use:
            kept.append(release)
        else:
            removed.append(release)
    return kept, removed


def prune(layout: Layout, keep: int, protect: set[str], report: Report, dry_run: bool,
          referenced: list[str] | None = None) -> None:
    started = time.monotonic()
    used = releases_in_use(layout)
    prefix = os.path.realpath(layout.releases) + os.sep
    for path in referenced or []:
        real = os.path.realpath(path)
        if real.startswith(prefix):
            used.setdefault(real[len(prefix):].split(os.sep, 1)[0], set())
    kept, removed = prune_plan(layout.list(), keep, protect, set(used))
    report.kept = [r.id for r in kept]
    report.pruned = [r.id for r in removed]
    verb = "would remove" if dry_run else "removed"
    held = sorted(set(used) & {r.id for r in kept})
    text = f"kept {', '.join(report.kept) or 'none'}"
    if held:
        text += f" (in use: {', '.join(held)})"
    text += f"; {verb} {', '.join(report.pruned) or 'none'}"
    if not dry_run:
        for release in removed:
            layout.remove(release.path)
        with contextlib.suppress(OSError):
            for entry in os.scandir(layout.releases):
                if entry.name.startswith((".trash-", ".dry-run-")) and entry.is_dir():
                    shutil.rmtree(entry.path, ignore_errors=True)
    report.say("prune", text)
    report.done("prune", started, text)


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rollover deploy`'s options (--pidfile and --status come with every subcommand)."""
    from rollover.cli import timeout_seconds

    parser.add_argument("--root", required=True, metavar="DIR",
                        help="the app root: releases/<id>/ and the current symlink (made "
                        "by --init or the first deploy)")
    parser.add_argument("--init", action="store_true",
                        help="make the app root, releases/ and the pidfile's directory, and "
                        "print the start command and a systemd unit for them; deploy nothing")
    parser.add_argument("--bind", default="127.0.0.1:8000", metavar="ADDRESS",
                        help="for the printed start command (default 127.0.0.1:8000)")
    parser.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                        help="for the printed start command (default 4)")
    parser.add_argument("--app", metavar="MODULE:CALLABLE",
                        help="the app to preflight (default: taken from the master's command "
                        "line)")
    build_group = parser.add_argument_group("building a release (at least one, or --release "
                                            "naming a built one)")
    build_group.add_argument("--source", metavar="DIR",
                             help="the app's files, copied into the release (its "
                             "requirements.txt is installed unless --requirements is given)")
    build_group.add_argument("--requirements", action="append", default=[], metavar="FILE",
                             help="pip install -r FILE into the release's venv (repeatable)")
    build_group.add_argument("--wheel", action="append", default=[], metavar="FILE",
                             help="pip install FILE into the release's venv (repeatable)")
    build_group.add_argument("--find-links", action="append", default=[], metavar="DIR",
                             help="passed to pip (repeatable)")
    build_group.add_argument("--no-index", action="store_true", help="passed to pip")
    build_group.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                             help="another argument for pip install (repeatable)")
    build_group.add_argument("--python", metavar="PY",
                             help="the interpreter of the release's venv (default: the live "
                             "release's, else the one running rollover)")
    parser.add_argument("--release", metavar="ID",
                        help="the release id (default: a UTC timestamp); without build inputs "
                        "it names a release already built, e.g. to go back to it")
    parser.add_argument("--probe-path", metavar="PATH",
                        help="the readiness probe for the preflight (default: the master's "
                        "rollover_probe_path; '' for none)")
    parser.add_argument("--interface", choices=("auto", "wsgi", "asgi"), default="auto",
                        help="how to call the app in the preflight (default: from the "
                        "master's worker class, else from the app object)")
    parser.add_argument("--method", choices=("auto", "hup", "usr2"), default="auto",
                        help="how to switch the live master (default: auto, see README)")
    parser.add_argument("--keep", type=_positive_int, default=DEFAULT_KEEP, metavar="K",
                        help=f"releases to keep (default {DEFAULT_KEEP}); the live one, the "
                        "rollback target and releases in use are never removed")
    parser.add_argument("--timeout", type=timeout_seconds, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS", help="for each live step (roll, handoff) "
                        f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--preflight-timeout", type=timeout_seconds,
                        default=DEFAULT_PREFLIGHT_TIMEOUT, metavar="SECONDS",
                        help=f"for the preflight (default {DEFAULT_PREFLIGHT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary on stdout (progress goes to stderr)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build and preflight in a scratch dir, print the plan; change "
                        "nothing live")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def run(opts: argparse.Namespace) -> int:
    """`rollover deploy`: returns the exit code; never raises (one line on stderr)."""
    report = Report(json_mode=opts.json, dry_run=opts.dry_run)
    try:
        code = deploy(opts, report)
    except DeployError as exc:
        code = exc.code
        report.error = str(exc)
        _error(str(exc))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        report.error = report.error or "interrupted"
        _error("interrupted")
    except Exception as exc:  # never a traceback
        code = EXIT_ERROR
        report.error = f"unexpected error: {type(exc).__name__}: {exc}"
        _error(report.error)
    if opts.json:
        print(json.dumps(report.as_json(code), indent=2), flush=True)
    return code


def deploy(opts: argparse.Namespace, report: Report) -> int:
    from rollover.status import default_status_path

    if opts.init:
        return init(opts, report)
    layout = Layout(opts.root)
    report.root = str(layout.root)
    building = bool(opts.source or opts.requirements or opts.wheel)
    if not building and not opts.release:
        raise DeployError("nothing to deploy: give --source, --requirements or --wheel, or "
                          "--release naming a built release")
    if opts.release is not None and not RELEASE_ID.match(opts.release):
        raise DeployError(f"bad release id {opts.release!r} (letters, digits, . _ + -)")
    if opts.source and not os.path.isdir(opts.source):
        raise DeployError(f"--source {opts.source}: no such directory")
    for path in [*opts.requirements, *opts.wheel]:
        if not os.path.isfile(path):
            raise DeployError(f"{path}: no such file")
    layout.check(create=building and not opts.dry_run)
    if building and not opts.dry_run and not os.path.exists(opts.pidfile):
        _pidfile_dir(opts.pidfile)
    status_path = opts.status or default_status_path(opts.pidfile)
    with layout.lock():
        previous = layout.current_id()
        report.previous = previous
        master = find_master(opts.pidfile, status_path)
        if master is not None:
            report.master_pid = master.pid
            if master.status.get("state") == "rolling":
                raise DeployError(f"master {master.pid} is rolling already; try again when it "
                                  "is idle")
        app = opts.app or (master.app_spec() if master else None)
        if not app:
            raise DeployError("which app? give --app MODULE:CALLABLE")
        probe = opts.probe_path if opts.probe_path is not None else (
            master.probe_path if master else None)
        interface = opts.interface
        if interface == "auto" and master is not None:
            worker = (master.worker_class() or "").lower()
            if "uvicorn" in worker or worker.endswith("asgi") or "asgiworker" in worker:
                interface = "asgi"
        release_id = opts.release or new_release_id()
        report.release = release_id
        live = f"live: {previous or 'none'}" + (f", master {master.pid}" if master else
                                                 ", no master running")
        print(f"rollover deploy: release {release_id} into {layout.root} ({live})",
              file=report.out, flush=True)
        if building:
            if layout.path(release_id).exists():
                raise DeployError(f"release {release_id} exists already "
                                  f"({layout.path(release_id)})")
            release_dir = (layout.releases / f".dry-run-{release_id}-{os.getpid()}"
                           if opts.dry_run else layout.path(release_id))
        else:
            found = layout.release(release_id)
            if found is None or not found.complete:
                raise DeployError(f"no complete release {release_id} in {layout.releases}")
            if release_id == previous:
                raise DeployError(f"release {release_id} is live already")
            release_dir = found.path
        scratch = building and opts.dry_run
        try:
            try:
                if building:
                    build(opts, release_dir, opts.python or default_python(layout), report)
                facts = preflight(release_dir, app, probe, interface, opts.preflight_timeout,
                                  report)
            except BaseException:
                if building and not scratch:
                    layout.remove(release_dir)  # a rejected build leaves nothing behind
                raise
            plan = make_plan(layout, master, facts, release_dir, opts.method)
            report.method, report.reasons = plan.method, plan.reasons
            _say_plan(plan, report)
            if plan.method == "usr2" and master is not None:
                check_usr2_possible(layout, master, str(release_dir / "venv" / "bin" / "python"))
            if opts.dry_run:
                prune(layout, opts.keep, {r for r in (previous,) if r}, report, dry_run=True)
                print(f"dry run: would switch current to {release_id} by "
                      f"{plan.method.upper() if plan.method != 'start' else 'no reload'}",
                      file=report.out, flush=True)
                return EXIT_DEPLOYED
        finally:
            if scratch:
                shutil.rmtree(release_dir, ignore_errors=True)
        return go_live(opts, layout, master, previous, release_id, release_dir, facts, plan,
                       report)


def _say_plan(plan: Plan, report: Report) -> None:
    started = time.monotonic()
    if plan.method == "start":
        text = "no master running: switch current only (start gunicorn afterwards)"
    elif plan.method == "hup":
        text = "HUP: " + "; ".join(plan.checked)
        if plan.reasons:
            text += " (forced, although: " + "; ".join(plan.reasons) + ")"
    else:
        text = "USR2 handoff: " + "; ".join(plan.reasons)
    report.say("plan", text)
    report.done("plan", started, text)


def go_live(opts: argparse.Namespace, layout: Layout, master: LiveMaster | None,
            previous: str | None, release_id: str, release_dir: Path, facts: dict[str, Any],
            plan: Plan, report: Report) -> int:
    handoff = Handoff(old_pid=master.pid if master else 0)
    started = time.monotonic()
    layout.switch(release_id)
    report.say("switch", f"current -> releases/{release_id}")
    report.done("switch", started, f"current -> releases/{release_id}")
    interrupted = False
    try:
        if master is None:
            report.say("reload", f"no master running (pidfile {opts.pidfile}): start gunicorn "
                       f"to serve {release_id}")
        elif plan.method == "hup":
            live_hup(opts, master, release_dir, report)
        else:
            live_usr2(opts, master, release_dir, facts, report, handoff)
    except (LiveFailure, KeyboardInterrupt, OSError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        cause = "interrupted" if interrupted else str(exc)
        if isinstance(exc, OSError):
            cause = f"{type(exc).__name__}: {exc}"
        report.error = cause
        report.say("handoff" if plan.method == "usr2" else "reload", f"failed: {cause}")
        assert master is not None
        problem = rollback(opts, layout, master, previous, plan.method, handoff, report)
        report.rollback_error = problem
        current = _current_or_none(layout)
        report.serving = serving_release(layout, opts.pidfile, master.status_path)
        code, line = failure_outcome(release_id, previous, current, report.serving, cause,
                                     problem, interrupted)
        if code != EXIT_DEPLOYED:
            _mark(release_dir, f"rolled back {_now()}: {cause}" if code != EXIT_ROLLBACK_FAILED
                  else f"failed {_now()}: {cause}; rollback: {problem}")
            _error(line)
            return code
        report.say("verify", line)
    how = {"start": "no reload", "hup": "HUP", "usr2": "USR2 handoff"}[plan.method]
    _mark(release_dir, f"deployed {_now()} ({how})")
    protect = {release_id} | ({previous} if previous else set())
    prune(layout, opts.keep, protect, report, dry_run=False,
          referenced=master_references(opts.pidfile, master.status_path if master else None))
    if master is None:
        report.start_command = start_command(layout, opts)
        print("start gunicorn on it with:\n  " + shlex.join(report.start_command),
              file=report.out, flush=True)
    print(f"deployed {release_id} in {time.monotonic() - report.started:.1f}s ({how})",
          file=report.out, flush=True)
    return EXIT_DEPLOYED


def start_command(layout: Layout, opts: argparse.Namespace) -> list[str]:
    """How to start gunicorn on this root: everything through `current` (the interpreter,
    the chdir), so HUPs and USR2 handoffs follow it."""
    current = str(layout.current)
    return [f"{current}/venv/bin/python", f"{current}/venv/bin/gunicorn",
            "-c", "python:rollover.hooks", "--chdir", current,
            "--pid", os.path.abspath(opts.pidfile), "--bind", opts.bind,
            "--workers", str(opts.workers), opts.app or "app:app"]


SYSTEMD_UNIT = """\
# {unit_path}: gunicorn + rollover on the app root {root} (made by
# `rollover deploy --init`; see deploy/systemd/app.service for the notes)
[Unit]
Description={name} (gunicorn with rollover)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=all
# User={user}
RuntimeDirectory={runtime}
RuntimeDirectoryPreserve=yes
PIDFile={pidfile}
WorkingDirectory={current}
ExecStart={start}
ExecReload={current}/venv/bin/rollover reload --pidfile {pidfile} --wait --timeout 300
TimeoutStartSec=330
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(layout: Layout, opts: argparse.Namespace) -> str:
    pidfile = os.path.abspath(opts.pidfile)
    name = layout.root.name or "app"
    run_dir = os.path.dirname(pidfile)
    runtime = run_dir[len("/run/"):] if run_dir.startswith("/run/") else name
    command = start_command(layout, opts)
    start = " \\\n    ".join(
        [shlex.join(command[:2])]
        + [shlex.join(command[i:i + 2]) for i in range(2, len(command) - 1, 2)]
        + [shlex.quote(command[-1])])
    return SYSTEMD_UNIT.format(unit_path=f"/etc/systemd/system/{name}.service",
                               root=layout.root, name=name, user=os.environ.get("USER", "app"),
                               runtime=runtime, pidfile=pidfile, current=layout.current,
                               start=start)


def init(opts: argparse.Namespace, report: Report) -> int:
    """`--init`: the app root, releases/ and the pidfile's directory; print how to start."""
    layout = Layout(opts.root)
    report.root = str(layout.root)
    layout.check(create=True)
    _pidfile_dir(opts.pidfile)
    report.start_command = start_command(layout, opts)
    out = report.out
    print(f"app root {layout.root}: releases/ ready, pidfile in "
          f"{os.path.dirname(os.path.abspath(opts.pidfile))}", file=out)
    print("\n1. deploy the first release (no master yet: it only switches current), e.g.:\n  "
          + shlex.join(["rollover", "deploy", "--root", str(layout.root), "--pidfile",
                        os.path.abspath(opts.pidfile), "--app", opts.app or "app:app",
                        "--source", "./app", "--wheel", "gunicorn_rollover-*.whl"]), file=out)
    print("\n2. start gunicorn through current:\n  " + shlex.join(report.start_command),
          file=out)
    print("\n   or as a systemd unit:\n", file=out)
    print(systemd_unit(layout, opts), file=out)
    print("3. later releases: the same `rollover deploy` (HUP or USR2 handoff, with rollback)",
          file=out, flush=True)
    return EXIT_DEPLOYED


def _pidfile_dir(pidfile: str) -> None:
    directory = os.path.dirname(os.path.abspath(pidfile))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create the pidfile's directory {directory}: "
                          f"{exc.strerror}") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _current_or_none(layout: Layout) -> str | None:
    try:
        return layout.current_id()
    except DeployError:
        return None


def failure_outcome(new: str, previous: str | None, current: str | None,
                    serving: str | None, cause: str, problem: str | None,
                    interrupted: bool) -> tuple[int, str]:
    """After a failed live step and the rollback: (exit code, the one line), from what is
    true now. `serving`: the release every READY worker of the live master runs (None: no
    READY worker, workers on several releases, or no master)."""
    rolled_back = EXIT_INTERRUPTED if interrupted else EXIT_ROLLED_BACK
    if problem is None:
        return rolled_back, f"deploy of {new} failed, rolled back to {previous}: {cause}"
    if previous is not None and serving == previous and current == previous:
        return rolled_back, (f"deploy of {new} failed, {previous} serves (current and every "
                             f"READY worker): {cause}; the rollback reported: {problem}")
    if serving == new and current == new:
        return EXIT_DEPLOYED, (f"warning: {cause}; but {new} serves (current and every READY "
                               f"worker): deployed")
    return EXIT_ROLLBACK_FAILED, (
        f"deploy of {new} failed ({cause}) and the rollback failed: {problem}; current names "
        f"{current or 'nothing'}, READY workers run {serving or 'no single release'}: check "
        "the server")


def serving_release(layout: Layout, pidfile: str, status_path: str) -> str | None:
    """The release every READY worker of the master named by `pidfile` runs (its cwd);
    None without a live master, READY workers, or when they run different releases."""
    cli = _cli()
    try:
        pid = cli.read_pidfile(pidfile)
        status = cli.poll_status(status_path, pid)
    except Exception:
        return None
    if not status or not pid_alive(pid):
        return None
    prefix = os.path.realpath(layout.releases) + os.sep
    found: set[str] = set()
    for worker in status.get("workers", []):
        if not isinstance(worker, dict) or worker.get("state") != "ready":
            continue
        try:
            cwd = os.path.realpath(os.readlink(f"/proc/{worker['pid']}/cwd"))
        except (OSError, KeyError, TypeError):
            continue
        if not cwd.startswith(prefix):
            return None
        found.add(cwd[len(prefix):].split(os.sep, 1)[0])
    return found.pop() if len(found) == 1 else None


def master_references(pidfile: str, status_path: str | None) -> list[str]:
    """Paths the live master captured at start and uses later (the directory a USR2
    re-exec starts in, the `chdir` default each HUP validates, its interpreter)."""
    if status_path is None:
        return []
    cli = _cli()
    try:
        pid = cli.read_pidfile(pidfile)
        status = cli.poll_status(status_path, pid) or {}
    except Exception:
        return []
    paths = []
    for key, section in (("start", ("cwd", "chdir_default")),
                         ("python", ("executable", "prefix"))):
        data = status.get(key)
        if isinstance(data, dict):
            paths += [v for k in section if isinstance(v := data.get(k), str) and v]
    return paths


def _mark(release_dir: Path, note: str) -> None:
    meta = read_metadata(release_dir)
    if meta is not None:
        meta["note"] = note
        with contextlib.suppress(OSError):
            write_metadata(release_dir, meta)
