"""The gunicorn config module: `gunicorn -c python:rollover.hooks app:app`.

In your own config file, `from rollover.hooks import *` brings rollover's hooks in. If
you define a hook of the same name, chain ours from it, either by calling it::

    from rollover import hooks as rollover_hooks

    def on_starting(server):
        rollover_hooks.on_starting(server)
        ...

or with the decorator, which runs rollover's hook first, then yours::

    from rollover.hooks import extend

    @extend
    def on_starting(server):
        ...

A hook of yours that replaces rollover's without chaining it is reported at start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rollover.master.arbiter import HOOK_NAMES, activate, check_gunicorn_version

__all__ = ["on_starting", "when_ready"]

_problem = check_gunicorn_version()
if _problem is not None:
    # One line and exit code 1, the way gunicorn itself reports a bad config.
    raise SystemExit(f"rollover: {_problem}")


def on_starting(server: Any) -> None:
    """Switch the arbiter to rollover's `RollingArbiter` before any worker is forked."""
    _activate(server, "on_starting")


def when_ready(server: Any) -> None:
    """Fallback when a user's `on_starting` replaced ours: switch now, still before the
    first worker is forked (the arbiter warns about the replaced hook)."""
    _activate(server, "when_ready")


HOOKS: dict[str, Callable[..., None]] = {"on_starting": on_starting, "when_ready": when_ready}
assert tuple(HOOKS) == HOOK_NAMES  # the arbiter names the hooks it expects to run


def _activate(server: Any, hook: str) -> None:
    if activate(server) and hook != "on_starting":
        server.init_signals()  # gunicorn bound its signal handlers before the switch
        if server.notifier.address:
            server.log.warning(
                "rollover: activated in %s, after gunicorn sent systemd READY=1 before any "
                "worker serves; chain rollover's on_starting for READY=1 once they do", hook)
    server.hook_ran(hook)


def extend(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a hook of yours so rollover's hook of the same name runs first."""
    ours = HOOKS.get(func.__name__)
    if ours is None:
        raise ValueError(f"rollover defines no hook named {func.__name__!r} "
                         f"(it defines: {', '.join(HOOKS)})")

    @functools.wraps(func)  # keeps the signature, so gunicorn's arity check passes
    def hook(*args: Any) -> Any:
        ours(*args)
        return func(*args)

    return hook
