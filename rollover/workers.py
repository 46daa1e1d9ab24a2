"""Worker classes by name, for ``-k``: the stock ASGI classes with rollover's drain.

Nothing needs them: whatever ``-k`` the config names (``uvicorn_worker.UvicornWorker``,
``uvicorn.workers.UvicornWorker``, ``asgi``, ``gthread``, ...), the master extends it at start
(`rollover.worker.extend`). These names stay valid, and drain even under a gunicorn without
rollover's arbiter:

- ``rollover.workers.UvicornWorker``: ``uvicorn_worker.UvicornWorker`` with
  `rollover.worker.drain_uvicorn.UvicornDrain`;
- ``rollover.workers.UvicornH11Worker``: ``uvicorn_worker.UvicornH11Worker`` with it;
- ``rollover.workers.ASGIWorker``: gunicorn's ``asgi`` worker (gunicorn 24.1+) with
  `rollover.worker.drain_asgi.ASGIDrain`.

Each is made on first access, so importing this module imports neither uvicorn nor
gunicorn's asgi worker. How a worker drains: `rollover.worker.drain`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    UvicornWorker: type
    UvicornH11Worker: type
    ASGIWorker: type

__all__ = ["ASGIWorker", "UvicornH11Worker", "UvicornWorker"]

# name -> (module, stock class, what to install if the module is missing)
_ALIASES = {
    "UvicornWorker": ("uvicorn_worker", "UvicornWorker", "pip install 'gunicorn-rollover[asgi]'"),
    "UvicornH11Worker": ("uvicorn_worker", "UvicornH11Worker",
                         "pip install 'gunicorn-rollover[asgi]'"),
    "ASGIWorker": ("gunicorn.workers.gasgi", "ASGIWorker", "gunicorn 24.1 or newer"),
}


def __getattr__(name: str) -> Any:
    alias = _ALIASES.get(name)
    if alias is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, class_name, needs = alias
    try:
        stock = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ImportError(f"rollover.workers.{name} needs {module_name} ({needs})") from exc
    from rollover.worker.extend import drained

    worker_class = drained(stock)
    if worker_class is not stock:
        # named by the path that finds it (`-k`, pickle, tools printing a class path)
        worker_class.__module__, worker_class.__qualname__ = __name__, name
    globals()[name] = worker_class
    return worker_class
