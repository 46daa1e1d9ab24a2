"""The drain for gunicorn's `gthread` worker before 27.0.1 (27.0.1 drains on its own).

gunicorn 23's ThreadWorker, on SIGTERM, leaves its loop at once and closes its poller: the
keep-alive connections waiting in it are dropped without an answer, so a client sending its
next request on one gets a reset (measured: 12 failed requests per roll, 4 workers, 8
keep-alive clients). 24.0-26.x serve the open connections while stopping, but close one
right after a response that announced keep-alive (the client's next request on it fails:
1-3 per roll, intermittently, 27.0.0 too); 27.0.1 fixed that. `GthreadDrain`, in front of the class,
drains with the stock loop: on SIGTERM the worker stays alive to its loop, stops accepting,
answers every request still arriving on an open connection with ``Connection: close``
(gunicorn's own rule for too many kept-alive connections, its limit set to 0), lets an
idle keep-alive connection close at its keep-alive timeout as at any other time, and
leaves the loop (gunicorn's own shutdown follows) once no connection is open, or at the
drain deadline.

Stopping to accept is immediate on every version. gunicorn 23's loop kept accepting after
SIGTERM: it waits in `poller.select(1.0)` on the listeners and the kept-alive connections
only, nothing wakes it on a signal (24.0+ has `method_queue`, whose pipe the exit handler
writes), and the drain step runs in `notify()` at the top of the next turn: for up to a
second the retired worker went on accepting new connections and answering them with the
old code, after the master had counted it gone. Here, on 23, the worker's own signal pipe
(`self.PIPE`, gunicorn's `set_wakeup_fd`) is watched by the poller, so SIGTERM ends the
wait at once; and `accept` takes nothing once SIGTERM came (a listener event already
returned by that `select`). The master is told (`sender.unlisten`) once the listeners left
the poller, from the loop's own thread, the only one that accepts.

`GthreadUnlisten` goes in front of 27.0.1's class instead, which drains on its own: it only
tells the master once the stopping loop turned accepting off.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from typing import TYPE_CHECKING, Any

from rollover.worker import sender
from rollover.worker.drain import drain_deadline, graceful_timeout

if TYPE_CHECKING:
    from gunicorn.workers.gthread import ThreadWorker as _Base
else:
    _Base = object

__all__ = ["GthreadDrain", "GthreadUnlisten"]


class GthreadDrain(_Base):
    """Goes in front of gunicorn's `ThreadWorker` before 27.0.1 (or a subclass keeping its
    loop)."""

    rollover_summary = "Connection: close while draining, open connections served"
    _rollover_term_at: float | None = None
    _rollover_accepting = True
    _rollover_wakes = False
    nr_conns: int
    max_keepalived: int
    poller: Any
    sockets: list[Any]
    PIPE: tuple[int, int]

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM: drain first; the loop (through notify) ends the worker when drained
        if self._rollover_term_at is None:
            self._rollover_term_at = time.monotonic()
            queue = getattr(self, "method_queue", None)  # 24.0+: wake the poller
            if queue is not None:
                queue.defer(lambda: None)
            # 23: the signal itself woke the poller (its wakeup fd, watched since notify)

    def accept(self, *args: Any) -> None:
        # a listener event the poller returned before SIGTERM was handled: not taken
        if self._rollover_term_at is None:
            super().accept(*args)

    def set_accept_enabled(self, enabled: bool) -> None:
        # 24.0+'s loop turns accepting back on whenever it has room: not while draining
        if enabled and self._rollover_term_at is not None:
            return
        super().set_accept_enabled(enabled)

    def notify(self) -> None:
        super().notify()
        if not self._rollover_wakes:
            self._rollover_wakes = True
            self._rollover_watch_signals()
        if self._rollover_term_at is not None and self.alive:
            self._rollover_drain_step()

    def _rollover_watch_signals(self) -> None:
        """23 (no `method_queue`): let a signal end the poller's wait, through the pipe
        gunicorn's worker gave `signal.set_wakeup_fd`; the loop's first turn, main thread."""
        if hasattr(self, "method_queue") or not getattr(self, "PIPE", None):
            return
        with self._lock, contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.register(self.PIPE[0], selectors.EVENT_READ, self._rollover_woken)

    def _rollover_woken(self, _fileobj: Any) -> None:
        with contextlib.suppress(OSError):  # non-blocking: read what is there
            while os.read(self.PIPE[0], 512):
                pass

    def _rollover_drain_step(self) -> None:
        if self._rollover_accepting:
            self._rollover_accepting = False
            self.log.info("Worker draining")
            # every response decided from now on says Connection: close (gunicorn's own
            # "too many kept-alive connections" rule); cfg.keepalive stays, so a
            # connection whose keep-alive response was decided just before still gets
            # its keep-alive timeout for the request its client may be sending already
            self.max_keepalived = 0
            if hasattr(super(), "set_accept_enabled"):  # 24.0+
                self.set_accept_enabled(False)
            else:  # 23: the listeners are registered in the poller by run()
                with self._lock:
                    for sock in self.sockets:
                        with contextlib.suppress(KeyError, ValueError, OSError):
                            self.poller.unregister(sock)
            sender.unlisten()  # the loop's thread, the one that accepts: none from now on
        assert self._rollover_term_at is not None
        deadline = self._rollover_term_at + drain_deadline(graceful_timeout(self.cfg))
        if self.nr_conns <= 0 or time.monotonic() >= deadline:
            self.alive = False


class GthreadUnlisten(_Base):
    """Goes in front of gunicorn's `ThreadWorker` from 27.0.1, which drains on its own:
    tells the master when its loop, stopping, turned accepting off."""

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # the stopping loop (or one at its connection limit that SIGTERM just ended):
            # nothing turns accepting back on once `alive` is false
            sender.unlisten()
