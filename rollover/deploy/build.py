"""Building a release: the app's files copied into `releases/<id>/` and its own venv,
pip-installed (never into a live venv)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from rollover.deploy import shared as shared_paths
from rollover.deploy.layout import BUILD_LOG, Layout, write_metadata
from rollover.deploy.report import EXIT_BUILD_FAILED, DeployError, Report

SOURCE_IGNORE = (".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv", "venv", ".tox",
                 ".mypy_cache", ".pytest_cache", ".ruff_cache", "releases", "current")


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


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line
    return lines[-1] if lines else "no output"


def build(opts: argparse.Namespace, release_dir: Path, python: str, report: Report,
          layout: Layout, shared: list[shared_paths.Entry], env: dict[str, str]) -> None:
    """Create `release_dir` with the app's files (the shared paths linked to
    `<root>/shared/`) and its own venv, then run the build commands in it with `env`;
    DeployError(3) on failure (the release dir stays, marked failed)."""
    started = time.monotonic()
    release_dir.mkdir()
    write_metadata(release_dir, {"id": release_dir.name, "created": time.time(),
                                 "complete": False, "state": "building"})
    inputs: dict[str, Any] = {}
    source = Path(opts.source).resolve() if opts.source else None
    if source is not None:
        skip_names = shutil.ignore_patterns(*SOURCE_IGNORE)
        skip_shared = shared_paths.copy_ignore(source, shared)

        def ignore(directory: str, names: list[str]) -> set[str]:
            return set(skip_names(directory, names)) | skip_shared(directory, names)

        shutil.copytree(source, release_dir, symlinks=True, dirs_exist_ok=True, ignore=ignore)
        inputs["source"] = str(source)
    if shared:
        for made in shared_paths.prepare(layout.shared, shared, source):
            report.say("shared", f"created {made}")
        shared_paths.link(release_dir, layout.shared, shared)
        report.say("shared", "linked " + ", ".join(
            e.path + ("/" if (layout.shared / e.path).is_dir() else "") for e in shared)
            + f" -> {layout.shared}")
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
        if opts.dry_run and opts.build:
            report.say("build", f"dry run: not running the {len(opts.build)} build "
                       "command(s): they may change shared state (migrate)")
        else:
            for command in opts.build:
                run_build_command(command, release_dir, env, log, opts.build_timeout, report)
    meta = {
        "id": release_dir.name,
        "created": time.time(),
        "complete": True,
        "python": python,
        "inputs": inputs,
        "shared": [e.path for e in shared],
        "build": list(opts.build),
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
        line = last_error_line(proc.stderr or proc.stdout)
        if "gunicorn-rollover" in line or "gunicorn_rollover" in line:
            line += (" (give rollover's wheel: --wheel gunicorn_rollover-<version>-py3-none-"
                     "any.whl, or 'gunicorn-rollover @ file:///<wheel>' in requirements)")
        raise DeployError(f"build failed: {what} exited {proc.returncode}: {line}",
                          EXIT_BUILD_FAILED)


def build_environment(release_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """The build commands' environment: `env` with the release's venv first on PATH, so
    `python`, `pip` and the app's console scripts are the release's."""
    venv = release_dir / "venv"
    out = dict(env)
    out["VIRTUAL_ENV"] = str(venv)
    out["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", os.defpath)
    return out


TAIL = 12  # lines of a failed build command kept for the error


def run_build_command(command: str, release_dir: Path, env: dict[str, str], log: IO[str],
                      timeout: float, report: Report) -> None:
    """`sh -c COMMAND` in the release, its output shown as it comes (and logged);
    DeployError(3) with its last line if it fails or outlives `timeout`."""
    started = time.monotonic()
    report.say("build", f"$ {command}")
    log.write(f"$ {command}\n")
    log.flush()
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=release_dir,
                            env=build_environment(release_dir, env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    timer = _Deadline(proc, timeout)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            log.write(line + "\n")
            report.say("build", f"| {line}")
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        timer.cancel()
        log.flush()
    if timer.expired:
        report.output_tail = list(tail)
        raise DeployError(f"build failed: `{command}` ran longer than {timeout:g}s "
                          "(--build-timeout); killed", EXIT_BUILD_FAILED)
    if code != 0:
        report.output_tail = list(tail)
        last = next((ln.strip() for ln in reversed(tail) if ln.strip()), "no output")
        raise DeployError(f"build failed: `{command}` exited {code}: {last}",
                          EXIT_BUILD_FAILED)
    report.say("build", f"`{command}` ok in {time.monotonic() - started:.1f}s")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class _Deadline:
    """Kills a command's process group when `timeout` passes (a timer thread)."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.expired = False
        self._proc = proc
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.expired = True
        _kill_group(self._proc)

    def cancel(self) -> None:
        self._timer.cancel()
