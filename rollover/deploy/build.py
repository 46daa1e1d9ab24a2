"""Building a release: the app's files copied into `releases/<id>/` and its own venv,
pip-installed (never into a live venv)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

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
        line = last_error_line(proc.stderr or proc.stdout)
        if "gunicorn-rollover" in line or "gunicorn_rollover" in line:
            line += (" (give rollover's wheel: --wheel gunicorn_rollover-<version>-py3-none-"
                     "any.whl, or 'gunicorn-rollover @ file:///<wheel>' in requirements)")
        raise DeployError(f"build failed: {what} exited {proc.returncode}: {line}",
                          EXIT_BUILD_FAILED)
