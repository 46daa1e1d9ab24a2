"""Helpers for the `rollover deploy` tests: a local wheelhouse, release sources, app roots
and masters that run through `<root>/current`.

The release venvs install gunicorn and rollover offline from one wheelhouse per test session
(`pip wheel` of this checkout, `pip download` of the gunicorn releases and psutil, from pip's cache
after the first run), shared between xdist workers under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from harness import (
    REPO,
    ROLLOVER_CLI,
    AppCode,
    Master,
    children_of,
    pid_alive,
    wait_for,
)
from harness import group_members as process_group

GUNICORN_LIVE = "27.0.1"  # what the project venv runs
GUNICORN_OTHER = "27.0.0"  # another 27.x, to force a USR2 handoff
BOOT_DELAY = 1.0


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A directory shared by every xdist worker of this test session."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def wheelhouse(factory: pytest.TempPathFactory) -> Path:
    """rollover (this checkout) and gunicorn 27.0.1 + 27.0.0 wheels, built once a session."""
    base = shared_dir(factory)
    house = base / "deploy-wheels"
    with file_lock(base / "deploy-wheels.lock"):
        if (house / ".complete").exists():
            return house
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir()
        # build from a copy: an in-tree build would write build/ into the checkout
        src = base / "deploy-wheel-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        for package in ("rollover",):
            shutil.copytree(REPO / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        pip = [sys.executable, "-m", "pip"]
        _run([*pip, "wheel", "-q", "--no-deps", str(src), "-w",
              str(house)])
        for version in (GUNICORN_LIVE, GUNICORN_OTHER):
            _run([*pip, "download", "-q", "--no-deps", f"gunicorn=={version}", "-d",
                  str(house)])
        # rollover's own runtime dependency (it reads other processes through psutil)
        _run([*pip, "download", "-q", "--no-deps", f"psutil=={metadata.version('psutil')}",
              "-d", str(house)])
        (house / ".complete").write_text("ok\n")
    return house


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}"
                           f"{proc.stderr}")


# --------------------------------------------------------------------------- releases


def write_source(
    directory: Path,
    version: str,
    *,
    gunicorn: str = GUNICORN_LIVE,
    boot_delay: float = BOOT_DELAY,
    error: str | None = None,
    live_only_error: str | None = None,
    live_only_status: str | None = None,
    lazy: bool = False,
) -> Path:
    """A release source: the harness's WSGI test app plus requirements.txt.

    `error`: the import always raises (fails the preflight). `live_only_error`: the import
    raises only when the environment has APP_STAGE=live, as the test masters do and the
    deploy command does not (passes the preflight, fails in the live roll).
    """
    app = AppCode(directory, "wsgi")
    app.write(version, boot_delay=boot_delay, error=error)
    if live_only_error is not None:
        text = app.path.read_text(encoding="utf-8")
        text = text.replace(
            "time.sleep(BOOT_DELAY)\n",
            "time.sleep(BOOT_DELAY)\n"
            f"if os.environ.get('APP_STAGE') == 'live':\n"
            f"    raise RuntimeError({live_only_error!r})\n",
        )
        app.path.write_text(text, encoding="utf-8")
    if live_only_status is not None:
        # boots fine and passes the probe (/healthz), but answers `live_only_status` on
        # every other path when APP_STAGE=live: what only the canary catches
        text = app.path.read_text(encoding="utf-8")
        text = text.replace(
            "time.sleep(BOOT_DELAY)\n",
            "time.sleep(BOOT_DELAY)\n"
            f"STATUS = {live_only_status!r} if os.environ.get('APP_STAGE') == 'live' "
            f"else '200 OK'\n",
        ).replace('start_response("200 OK",',
                  'start_response(STATUS if environ.get("PATH_INFO") != "/healthz" '
                  'else "200 OK",')
        app.path.write_text(text, encoding="utf-8")
    if lazy:
        write_lazy_package(directory, version)
    (directory / "requirements.txt").write_text(
        f"gunicorn=={gunicorn}\ngunicorn-rollover\n", encoding="utf-8"
    )
    return directory


LAZY_MODULES = 4000

_LAZY_ROUTE = """\
    if environ.get("PATH_INFO") == "/lazy":
        # a module this worker has not imported yet, on every request: imported lazily,
        # through the package's __path__ (and sys.path for the package itself)
        global _LAZY
        _LAZY += 1
        import importlib
        mod = importlib.import_module(f"lazypkg.m{_LAZY % LAZY_MODULES}")
        body = json.dumps({"pid": os.getpid(),
                           "version": VERSION + "/" + mod.VERSION}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
"""


def write_lazy_package(directory: Path, version: str) -> None:
    """`lazypkg` with LAZY_MODULES submodules that each hold `VERSION`, and a /lazy route
    in the app answering "<app version>/<the lazily imported module's version>"."""
    package = directory / "lazypkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    for i in range(LAZY_MODULES):
        (package / f"m{i}.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    app = directory / "app.py"
    text = app.read_text(encoding="utf-8")
    text = text.replace("def app(environ, start_response):\n",
                        f"_LAZY = 0\nLAZY_MODULES = {LAZY_MODULES}\n\n"
                        "def app(environ, start_response):\n" + _LAZY_ROUTE, 1)
    app.write_text(text, encoding="utf-8")


def deploy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ROLLOVER_") and k != "APP_STAGE"}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Deployed:
    """The outcome of one `rollover deploy --json` run."""

    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.proc = proc
        self.seconds = seconds
        self.rc = proc.returncode
        try:
            self.json: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            self.json = {}

    def __str__(self) -> str:
        return (f"rollover deploy exited {self.rc} after {self.seconds:.1f}s\n--- stdout\n"
                f"{self.proc.stdout}\n--- stderr\n{self.proc.stderr}")


def run_deploy(root: Path, *args: str, timeout: float = 240.0) -> Deployed:
    """`rollover deploy --root ROOT --pidfile ROOT/run/gunicorn.pid --json ARGS`."""
    cmd = [str(ROLLOVER_CLI), "deploy", "--root", str(root), "--pidfile",
           str(root / "run" / "gunicorn.pid"), "--app", "app:app", "--json", *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=deploy_env(), stdin=subprocess.DEVNULL, check=False)
    return Deployed(proc, time.monotonic() - started)


def build_args(wheels: Path, source: Path, release: str) -> list[str]:
    return ["--source", str(source), "--release", release, "--find-links", str(wheels),
            "--no-index"]


def current_release(root: Path) -> str:
    return os.path.basename(os.readlink(root / "current"))


# --------------------------------------------------------------------------- masters


class ReleaseMaster(Master):
    """A master started the way deploy/ recommends: through `<root>/current`.

        <root>/current/venv/bin/python <root>/current/venv/bin/gunicorn \\
            -c python:rollover.hooks --chdir <root>/current --pid <root>/run/gunicorn.pid
    """

    def __init__(self, root: Path, *, workers: int = 2, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        run = root / "run"
        run.mkdir(exist_ok=True)
        super().__init__(run, AppCode(root / "placeholder-app"), workers=workers,
                         extra_args=extra_args, env=env)
        self.root = root

    def argv(self) -> list[str]:
        current = self.root / "current"
        return [
            str(current / "venv" / "bin" / "python"), str(current / "venv" / "bin" / "gunicorn"),
            "-c", "python:rollover.hooks",
            "-b", f"127.0.0.1:{self.port}",
            "--pid", str(self.pidfile),
            "-w", str(self.workers),
            "-k", "gthread",
            "--no-control-socket",
            "--graceful-timeout", "5",
            "--timeout", "30",
            "--chdir", str(current),
            *self.extra_args,
            "app:app",
        ]

    def live_pid(self) -> int:
        """The pid the pidfile names now (the master after a USR2 handoff)."""
        return int(self.pidfile.read_text().strip())



def stop_live_master(master: ReleaseMaster, timeout: float = 30.0) -> list[int]:
    """Stop whichever master the pidfile names (SIGTERM), then the original one; return
    processes of the masters' group still alive afterwards (orphans), after killing them."""
    pgid = master.pid if master.proc is not None else 0
    with contextlib.suppress(OSError, ValueError):
        live = master.live_pid()
        if live != master.pid and pid_alive(live):
            workers = children_of(live)
            os.kill(live, signal.SIGTERM)
            wait_for(lambda: not pid_alive(live) and not any(pid_alive(w) for w in workers),
                     timeout, what=f"master {live} and its workers to exit")
    master.stop()
    if not pgid:
        return []
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not process_group(pgid), 10, what="the process group to empty")
    left = process_group(pgid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
