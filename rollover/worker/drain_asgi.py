"""The drain for gunicorn's own `asgi` worker class (gunicorn 24.1+; see `rollover.worker.drain`).

gunicorn's asgi worker, on SIGTERM, marks itself not alive at once, so a connection closes
right after the response in progress even when that response did not say ``Connection:
close``: a keep-alive client's next request on it fails. `ASGIDrain`, in front of the
class, drains first, with the worker still alive to gunicorn: it stops accepting, gives
every response from then on ``Connection: close`` (the client closes after it), closes
websockets with 1012, waits for the connections to go, and before the master's SIGKILL
ends event streams and cuts other responses; then it runs lifespan shutdown as gunicorn's
own shutdown does.

Imported only in a master whose worker class is gunicorn's asgi one; it does not import
`gunicorn.workers.gasgi` itself (gunicorn 23 has none).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rollover.worker.drain import (
    CANCEL_GRACE,
    DrainState,
    StreamTracker,
    drain_deadline,
    graceful_timeout,
    stop_accepting,
)

if TYPE_CHECKING:
    from gunicorn.workers.gasgi import ASGIWorker as _Base
else:
    _Base = object

__all__ = ["ASGIDrain"]


class ASGIDrain(_Base):
    """Goes in front of gunicorn's `ASGIWorker` (or a subclass keeping its serving loop)."""

    asgi: Any  # gunicorn's worker sets it in load_wsgi
    _rollover_term_at: float | None = None
    _rollover_drain_task: asyncio.Task[None] | None = None
    _rollover_main: asyncio.Task[Any] | None = None
    _rollover_serving = False

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._rollover_state = DrainState()
        self._rollover_streams = StreamTracker()
        self.asgi = self._rollover_state.wrap(self._rollover_streams.wrap(self.asgi))

    def notify(self) -> None:
        super().notify()
        self._rollover_serving = True  # gunicorn's main loop runs (after lifespan startup)

    async def _serve(self) -> None:
        self._rollover_main = asyncio.current_task()
        await super()._serve()

    def handle_exit_signal(self) -> None:
        if self._rollover_drain_task is not None or not self.alive:
            return
        if not self._rollover_serving:
            super().handle_exit_signal()
            return
        self._rollover_term_at = self.loop.time()
        self._rollover_drain_task = self.loop.create_task(self._rollover_drain())

    def _quick(self) -> bool:
        # SIGQUIT/SIGINT arrived (gunicorn 25+ has the flag; 24.1 stops at once anyway)
        return bool(getattr(self, "_quick_shutdown", False))

    async def _rollover_drain(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._rollover_term_at is not None
        deadline = self._rollover_term_at + drain_deadline(graceful_timeout(self.cfg))
        self.log.info("Worker draining")
        self._rollover_state.draining = True
        await stop_accepting(self.servers)
        closed = self._rollover_streams.close_websockets()
        if closed:
            self.log.info("Closed %d websocket(s) with 1012 (Service Restart)", closed)
        while self.nr_conns > 0 and loop.time() < deadline and not self._quick():
            await asyncio.sleep(0.05)
        if self.nr_conns > 0 and not self._quick():
            ended = self._rollover_streams.end_event_streams()
            close_by = loop.time() + CANCEL_GRACE
            while self.nr_conns > 0 and loop.time() < close_by:
                await asyncio.sleep(0.05)
            self.log.info("Drain deadline: ended %d event stream(s); cutting %d connection(s)",
                          ended, self.nr_conns)
        # gunicorn's loop sleeps up to 1 s between checks of `alive`: wake it
        self.alive = False
        if self._rollover_main is not None and not self._rollover_main.done():
            self._rollover_main.cancel()

    async def _shutdown(self) -> None:
        if self._rollover_drain_task is None:
            await super()._shutdown()  # SIGQUIT/SIGINT, max_requests, parent gone
            return
        if not self._rollover_drain_task.done():  # a SIGQUIT/SIGINT cut the drain short
            self._rollover_drain_task.cancel()
        if self.lifespan and not self._quick():
            try:
                await self.lifespan.shutdown()
            except Exception as exc:
                self.log.error("ASGI lifespan shutdown error: %s", exc)
