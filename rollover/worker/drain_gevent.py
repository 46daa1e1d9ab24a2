"""When gunicorn's `gevent` worker stops accepting, told to the master (its drain stays
gunicorn's own: retired one at a time, it fails no request).

On SIGTERM the stock worker only sets `alive = False`; its serving loop (`while self.alive:
self.notify(); gevent.sleep(1.0)`) sees that within a second, then closes its servers (no
accept from then on) and calls `notify()` while it waits for open connections, or returns
from `run()` (which readiness reports anyway). Meanwhile its servers go on accepting: up to
a second of new connections answered by the retired worker.

`GeventUnlisten` runs gunicorn's exit handler in a greenlet, as gunicorn's worker does for
SIGQUIT: `alive` then turns false only while the serving loop sleeps, never between its
check of `alive` and its `notify()`. So the first `notify()` with `alive` false comes after
the servers were closed, and tells the master.

Imported only in a master whose worker class is a gevent one (gevent is loaded already).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollover.worker import sender

if TYPE_CHECKING:
    from gunicorn.workers.ggevent import GeventWorker as _Base
else:
    _Base = object

__all__ = ["GeventUnlisten"]


class GeventUnlisten(_Base):
    """Goes in front of gunicorn's `GeventWorker` (or a subclass keeping its loop)."""

    alive: bool

    def handle_exit(self, sig: int, frame: Any) -> None:
        import gevent  # type: ignore[import-untyped]

        gevent.spawn(super().handle_exit, sig, frame)

    def notify(self) -> None:
        super().notify()
        if not self.alive:  # the servers are closed (see the module's docstring)
            sender.unlisten()
