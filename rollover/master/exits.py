"""How the master words a worker's exit: gunicorn's own log lines and HaltServer reasons
(tools grep for them), with the exits rollover asked for logged at INFO."""

from __future__ import annotations

import os
import signal
from typing import Any

from gunicorn.arbiter import Arbiter

from rollover.master import gunicorn_compat

# HaltServer reasons, as gunicorn words them
HALT_REASONS = {Arbiter.WORKER_BOOT_ERROR: "Worker failed to boot.",
                Arbiter.APP_LOAD_ERROR: "App failed to load."}

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGKILL)


def halt_reason(exit_code: int, cause: str | None) -> str:
    """gunicorn's HaltServer reason (`Worker failed to boot.`), then rollover's cause."""
    reason = HALT_REASONS.get(exit_code, HALT_REASONS[Arbiter.WORKER_BOOT_ERROR])
    return f"{reason} Cause: {cause}" if cause else reason


def describe(wstatus: int) -> tuple[str, int | None]:
    """(`exited with code N` | `was killed by SIGX`, the exit code or None)."""
    code = os.waitstatus_to_exitcode(wstatus)
    if code >= 0:
        return f"exited with code {code}", code
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}", None


def log_exit(log: Any, wpid: int, wstatus: int, planned: str | None) -> None:
    """gunicorn's lines for a worker's exit (the OOM hint on SIGKILL, the exit code, a
    SIGTERM at the level this gunicorn uses); at INFO when `planned` says why the master
    stopped it."""
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if planned is not None and sig in _STOP_SIGNALS:
            log.info("Worker (pid:%s) was sent %s! (%s)", wpid, name, planned)
        elif sig == signal.SIGKILL:
            log.error("Worker (pid:%s) was sent %s! Perhaps out of memory?", wpid, name)
        elif sig == signal.SIGTERM:
            getattr(log, gunicorn_compat.SIGTERM_LEVEL)("Worker (pid:%s) was sent %s!",
                                                        wpid, name)
        else:
            log.warning("Worker (pid:%s) was sent %s!", wpid, name)
    elif os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) != 0:
        log.error("Worker (pid:%s) exited with code %s.", wpid, os.WEXITSTATUS(wstatus))
