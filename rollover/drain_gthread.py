"""The drain for gunicorn 23's `gthread` worker (24.1+ drains on its own; see `rollover.drain`).

gunicorn 23's ThreadWorker, on SIGTERM, leaves its loop at once and closes its poller: the
keep-alive connections waiting in it are dropped without an answer, so a client sending its
next request on one gets a reset (measured: 7 failed requests per roll, 4 workers, 8
keep-alive clients). gunicorn 24.1 rewrote the loop to keep serving the open connections
until they close. `GthreadDrain`, in front of gunicorn 23's class, does the same with the
stock loop: on SIGTERM the worker stays alive to its loop, stops accepting, answers every
request still arriving on an open connection with ``Connection: close`` (gunicorn's
`keepalive` set to 0 in this worker only), lets an idle keep-alive connection close at its
keep-alive timeout as at any other time, and leaves the loop (gunicorn's own shutdown
follows) once no connection is open, or at the drain deadline.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from rollover.drain import drain_deadline, graceful_timeout

if TYPE_CHECKING:
    from gunicorn.workers.gthread import ThreadWorker as _Base
else:
    _Base = object

__all__ = ["GthreadDrain"]


class GthreadDrain(_Base):
    """Goes in front of gunicorn 23's `ThreadWorker` (or a subclass keeping its loop)."""

    rollover_summary = "Connection: close while draining, open connections served"
    _rollover_term_at: float | None = None
    _rollover_accepting = True
    nr_conns: int
    poller: Any
    sockets: list[Any]

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM: drain first; the loop (through notify) ends the worker when drained
        if self._rollover_term_at is None:
            self._rollover_term_at = time.monotonic()

    def notify(self) -> None:
        super().notify()
        if self._rollover_term_at is not None and self.alive:
            self._rollover_drain_step()

    def _rollover_drain_step(self) -> None:
        if self._rollover_accepting:
            self._rollover_accepting = False
            self.log.info("Worker draining")
            self.cfg.set("keepalive", 0)  # every response from now on: Connection: close
            with self._lock:
                for sock in self.sockets:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self.poller.unregister(sock)
        assert self._rollover_term_at is not None
        deadline = self._rollover_term_at + drain_deadline(graceful_timeout(self.cfg))
        if self.nr_conns <= 0 or time.monotonic() >= deadline:
            self.alive = False
