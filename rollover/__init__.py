"""rollover: zero-downtime rolling reload for Gunicorn.

Use it as the gunicorn config module: ``gunicorn -c python:rollover.hooks app:app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RollingArbiter", "__version__"]

if TYPE_CHECKING:
    from rollover.master.arbiter import RollingArbiter


def __getattr__(name: str) -> Any:
    # Imported lazily: `rollover.cli` must not pull in gunicorn's arbiter.
    if name == "RollingArbiter":
        from rollover.master.arbiter import RollingArbiter

        return RollingArbiter
    raise AttributeError(name)
