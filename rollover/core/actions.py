"""What the roll machine (`rollover.core.rollout`) asks the master to do: its actions.

Pure data. `Machine.tick` returns them; `RollingArbiter._execute` does them, one `match`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Action", "CanaryWindow", "Halt", "Kill", "Log", "Retire", "Revert", "RollBack",
           "Spawn"]


@dataclass(frozen=True)
class Spawn:
    """Fork one worker of `generation`; report it with `Machine.spawned`."""

    generation: int


@dataclass(frozen=True)
class Retire:
    """Ask a worker to stop gracefully (SIGTERM). `recycled`: why the worker asked to be
    replaced (its replacement is READY), None when a roll retires it."""

    pid: int
    recycled: str | None = None


@dataclass(frozen=True)
class Kill:
    """Stop a worker now (SIGKILL): it missed a deadline or boots code nobody wants."""

    pid: int
    reason: str


@dataclass(frozen=True)
class Revert:
    """An aborted roll: fork `generation`'s config again (the master kept it: its config,
    rollover settings, environment and cwd), dropping the aborted generation's."""

    generation: int


@dataclass(frozen=True)
class RollBack:
    """Make the master fork `generation`'s code again (it kept that code: preload_app)."""

    generation: int


@dataclass(frozen=True)
class Log:
    level: str  # "debug" | "info" | "warning" | "error"
    message: str


@dataclass(frozen=True)
class Halt:
    """Stop the master: only before any worker was ever READY (a broken first start)."""

    reason: str
    exit_code: int


@dataclass(frozen=True)
class CanaryWindow:
    """Open (`canary` set) or close (None) the canary's traffic window: the old workers
    answer one in `every` keep-alive requests with ``Connection: close`` so clients
    reconnect and some reach the canary."""

    canary: int | None
    every: int = 0


Action = Spawn | Retire | Kill | Revert | RollBack | Log | Halt | CanaryWindow
