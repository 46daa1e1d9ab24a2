"""What the master forks: the configured worker class, extended with readiness and the drain.

Whatever ``-k`` the config names, `extend_worker_class` finds the class's family by its
base classes and composes:

- readiness (`readiness.with_readiness`): READY on the first heartbeat, failures reported,
  the readiness probe run through the family's interface (WSGI, gunicorn's asgi, uvicorn);
- the drain, for the ASGI families: `drain_uvicorn.UvicornDrain` or `drain_asgi.ASGIDrain`
  put in front of the class (see `drain`), and for gthread before gunicorn 27.0.1,
  `drain_gthread.GthreadDrain`. The other WSGI families (`sync`, `gevent`, `eventlet`,
  gthread from gunicorn 27.0.1) keep gunicorn's own drain, which fails no request when
  workers are retired one at a time; for `gevent` and 27.0.1's gthread a small mixin
  (`Family.unlisten`) tells the master when the stock loop stops accepting.

Every class tells the master when it accepts no more connections (`sender.unlisten`): the
drains as soon as they stop accepting, the others when their serving loop returns.

A family is known by `issubclass` against its stock classes, looked up only in modules
already imported (a class cannot derive from a module that was never imported): nothing is
imported to find out, so a WSGI master never imports uvicorn. A class that overrides the
stock serving loop (`_serve`, `run`, ... defined below the stock class) gets readiness
only: the drain relies on that loop.

`Extension.line` is the master's start-up line saying what was added; `warn` is set when
that line reports a fault (the drain cannot be added).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from rollover.worker import readiness
from rollover.worker.drain import SUMMARY
from rollover.worker.readiness import Interface

__all__ = ["FAMILIES", "Extension", "Family", "drained", "extend_worker_class", "family_of"]


@dataclass(frozen=True)
class Family:
    """Worker classes sharing a stock base class, and what rollover adds to them."""

    name: str
    interface: Interface
    # (module, class) of the stock base classes; a class deriving from one is in the family
    bases: tuple[tuple[str, str], ...]
    # (module, class) of the mixin rollover puts in front of the class; None: gunicorn's own
    drain: tuple[str, str] | None = None
    # methods of the stock serving loop the drain relies on: overriding one rules it out
    loop: tuple[str, ...] = ("_serve", "run")
    # (module, attribute) whose presence says the stock class drains on its own: no mixin
    drains_itself_if: tuple[str, str] | None = None
    # (module, class) of the mixin that, when gunicorn's own drain is kept, tells the master
    # as soon as the stock loop stops accepting (`sender.unlisten`); None: readiness says it
    # when the serving loop returns
    unlisten: tuple[str, str] | None = None

    def stock_base(self, worker_class: type) -> type | None:
        """The family's stock class `worker_class` derives from, or None."""
        for module_name, class_name in self.bases:
            module = sys.modules.get(module_name)
            base = getattr(module, class_name, None) if module is not None else None
            if isinstance(base, type) and issubclass(worker_class, base):
                return base
        return None

    def unlisten_mixin(self) -> type | None:
        if self.unlisten is None:
            return None
        module_name, class_name = self.unlisten
        mixin: type = getattr(importlib.import_module(module_name), class_name)
        return mixin

    def drain_mixin(self) -> type | None:
        if self.drain is None:
            return None
        if self.drains_itself_if is not None:
            module_name, marker = self.drains_itself_if
            if hasattr(sys.modules.get(module_name), marker):
                return None
        module_name, class_name = self.drain
        mixin: type = getattr(importlib.import_module(module_name), class_name)
        return mixin


_UVICORN_LOOP = ("_serve", "run")
_ASGI_LOOP = ("_serve", "run", "handle_exit_signal", "_shutdown")

FAMILIES: tuple[Family, ...] = (
    Family("uvicorn", "uvicorn",
           (("uvicorn_worker", "UvicornWorker"), ("uvicorn.workers", "UvicornWorker")),
           drain=("rollover.worker.drain_uvicorn", "UvicornDrain"), loop=_UVICORN_LOOP),
    Family("asgi", "asgi", (("gunicorn.workers.gasgi", "ASGIWorker"),),
           drain=("rollover.worker.drain_asgi", "ASGIDrain"), loop=_ASGI_LOOP),
    Family("gevent", "wsgi", (("gunicorn.workers.ggevent", "GeventWorker"),),
           unlisten=("rollover.worker.drain_gevent", "GeventUnlisten")),
    Family("eventlet", "wsgi", (("gunicorn.workers.geventlet", "EventletWorker"),)),
    Family("gthread", "wsgi", (("gunicorn.workers.gthread", "ThreadWorker"),),
           drain=("rollover.worker.drain_gthread", "GthreadDrain"),
           loop=("run", "handle_exit", "set_accept_enabled"),
           # 27.0.1 keeps kept-alive connections STOP_KEEPALIVE_LINGER while stopping
           drains_itself_if=("gunicorn.workers.gthread", "STOP_KEEPALIVE_LINGER"),
           unlisten=("rollover.worker.drain_gthread", "GthreadUnlisten")),
    Family("sync", "wsgi", (("gunicorn.workers.sync", "SyncWorker"),)),
)


def family_of(worker_class: type) -> tuple[Family, type] | None:
    """The family of `worker_class` and the stock class it derives from, or None."""
    for family in FAMILIES:
        stock = family.stock_base(worker_class)
        if stock is not None:
            return family, stock
    return None


@dataclass(frozen=True)
class Extension:
    worker_class: type
    """What the master forks."""
    line: str
    """One line for the master's log: what was added."""
    warn: bool = False
    """The line reports a fault (log it at WARNING)."""


def extend_worker_class(worker_class: type, *, drain: bool = True,
                        name: str | None = None) -> Extension:
    """`worker_class` with readiness and, unless `drain` is false, rollover's drain.

    `name` is how the config names the class (gunicorn's `worker_class_str`).
    """
    head = f"rollover: worker class {name or _name(worker_class)}: readiness"
    found = family_of(worker_class)
    if found is None:
        tested = ", ".join(f.name for f in FAMILIES)
        return Extension(readiness.with_readiness(worker_class, None),
                         f"{head}; drain: untested (the class derives from none of {tested}), "
                         f"a roll may fail requests", warn=True)
    family, stock = found
    mixin = family.drain_mixin()
    if mixin is None:
        told = family.unlisten_mixin()
        if told is not None and _loop_override(worker_class, (stock, told), family.loop) is None:
            worker_class = _with_mixin(worker_class, told)
        return Extension(readiness.with_readiness(worker_class, family.interface),
                         f"{head}, drain: gunicorn's own")
    override = _loop_override(worker_class, (stock, mixin), family.loop)
    if override is not None:
        return Extension(readiness.with_readiness(worker_class, family.interface),
                         f"{head}; the drain cannot be added: {override} replaces the stock "
                         f"serving loop, so a roll may fail keep-alive requests", warn=True)
    if issubclass(worker_class, mixin):  # rollover.workers.*: the drain is built in
        composed = worker_class
    elif not drain:
        return Extension(readiness.with_readiness(worker_class, family.interface),
                         f"{head}; drain: off (rollover_drain)")
    else:
        composed = _with_mixin(worker_class, mixin)
    summary = getattr(mixin, "rollover_summary", SUMMARY)
    return Extension(readiness.with_readiness(composed, family.interface),
                     f"{head}, drain ({summary})")


def drained(worker_class: type) -> type:
    """`worker_class` with rollover's drain in front (no readiness): what the
    `rollover.workers` aliases are. TypeError for a class rollover has no drain for."""
    found = family_of(worker_class)
    mixin = found[0].drain_mixin() if found is not None else None
    if found is None or mixin is None:
        raise TypeError(f"rollover has no drain for {_name(worker_class)}")
    if issubclass(worker_class, mixin):
        return worker_class
    return _with_mixin(worker_class, mixin)


_composed: dict[tuple[type, type], type] = {}


def _with_mixin(worker_class: type, mixin: type) -> type:
    cached = _composed.get((worker_class, mixin))
    if cached is None:
        cached = type(worker_class.__name__, (mixin, worker_class),
                      # named as the class it extends: its path finds that class, which
                      # the master extends the same way (`rollover.workers` renames its own)
                      {"__qualname__": worker_class.__qualname__,
                       "__module__": worker_class.__module__,
                       "__doc__": f"{_name(worker_class)} with {mixin.__name__}."})
        _composed[(worker_class, mixin)] = cached
    return cached


def _loop_override(worker_class: type, stop: tuple[type, ...],
                   methods: tuple[str, ...]) -> str | None:
    """`module.Class.method` of the first serving-loop method defined below the stock class
    (or rollover's mixin) in the MRO; None if the class keeps the stock loop."""
    for cls in worker_class.__mro__:
        if cls in stop:
            return None
        if vars(cls).get("_rollover_reports"):  # readiness (a class extended already)
            continue
        for method in methods:
            if method in vars(cls):
                return f"{_name(cls)}.{method}"
    return None


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
