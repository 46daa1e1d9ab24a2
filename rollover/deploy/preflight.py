"""The preflight: in a subprocess run by the new release's interpreter, in its directory,
import the app as gunicorn does and run the readiness probe in-process.

The subprocess runs `rollover/probe.py` by path (standard library only), not the release's
installed rollover, whose version may differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rollover import probe as probe_module
from rollover.deploy.build import last_error_line
from rollover.deploy.report import EXIT_PREFLIGHT_FAILED, DeployError, Report

# runs a file as __main__ with the rest of argv (`-c`: no script directory on sys.path)
_LOADER = ("import runpy, sys; sys.argv = sys.argv[1:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


def preflight(release_dir: Path, app: str, probe: str | None, interface: str,
              timeout: float, report: Report,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Import the app and probe it in a subprocess of the release, in `env` (the deploy's
    environment with the env file's on top); its facts, or DeployError."""
    started = time.monotonic()
    python = release_dir / "venv" / "bin" / "python"
    if not python.exists():
        raise DeployError(f"preflight failed: {python} does not exist", EXIT_PREFLIGHT_FAILED)
    shown = f"import {app}" + (f", GET {probe}" if probe else " (no probe path: give "
                                                                 "--probe-path)")
    report.say("preflight", f"{shown} with {python}")
    fd, out_path = tempfile.mkstemp(prefix="rollover-preflight-", suffix=".json")
    os.close(fd)
    request = json.dumps({"app": app, "probe": probe, "interface": interface,
                          "out": out_path, "timeout": timeout})
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.Popen(
        [str(python), "-c", _LOADER, os.path.abspath(probe_module.__file__), request],
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
        cause = cause or f"exited {proc.returncode}: {last_error_line(text)}"
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
