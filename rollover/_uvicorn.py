"""`rollover.workers.UvicornWorker` and `UvicornH11Worker` (see `rollover.workers`)."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter

from rollover.workers import (
    _CANCEL_GRACE,
    DrainState,
    _graceful_timeout,
    drain_deadline,
    logger,
    stop_accepting,
)

try:
    from uvicorn.server import Server
    from uvicorn_worker import UvicornWorker as _StockUvicornWorker
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("rollover.workers.UvicornWorker needs uvicorn and uvicorn-worker: "
                      "pip install 'gunicorn-rollover[asgi]'") from exc


def _is_http(connection: Any) -> bool:
    """uvicorn's HTTP/1 protocols (h11, httptools) have a request/response `cycle`."""
    return hasattr(connection, "cycle") and hasattr(connection, "transport")


class DrainingServer(Server):
    """uvicorn's `Server` with a shutdown that drains instead of closing idle connections."""

    def __init__(self, config: Any, drain: DrainState, graceful_timeout: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.graceful_timeout = graceful_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = drain_deadline(self.graceful_timeout)
        logger.info("Shutting down: draining (streams end in %.1fs)", deadline)

        # Stop accepting new connections (without dropping those accepted just now).
        await stop_accepting(self.servers)
        for sock in sockets or []:
            sock.close()

        # From now on every response says Connection: close.
        self.drain.draining = True
        loop = asyncio.get_running_loop()
        linger = max(float(self.config.timeout_keep_alive or 0), 0.5)
        for connection in list(self.server_state.connections):
            if not _is_http(connection):
                connection.shutdown()  # websockets: close code 1012
            elif connection.cycle is None:
                # accepted, no request read yet: give it time to arrive
                loop.call_later(linger, self._close_if_unused, connection)
            # else: a response in progress, or idle between requests (its keep-alive
            # timer closes it); the next response carries Connection: close.

        try:
            await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=deadline)
        except TimeoutError:
            self._end_streams()
            try:
                await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=_CANCEL_GRACE)
            except TimeoutError:
                logger.error("Cancel %s running task(s), timeout graceful shutdown exceeded",
                             len(self.server_state.tasks))
                for task in self.server_state.tasks:
                    task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")

        if not self.force_exit:
            await self.lifespan.shutdown()

    @staticmethod
    def _close_if_unused(connection: Any) -> None:
        if connection.cycle is None and not connection.transport.is_closing():
            connection.shutdown()

    def _end_streams(self) -> None:
        """At the drain deadline: end what is still open (see the module docstring)."""
        ended = cut = 0
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is None or transport.is_closing():
                continue
            if not _is_http(connection):
                connection.shutdown()
                continue
            cycle = connection.cycle
            if cycle is None or cycle.response_complete:
                connection.shutdown()  # idle: close now
                continue
            if not cycle.response_started:
                continue  # uvicorn cancels it: 500 + Connection: close
            if id(cycle.scope) in self.drain.event_streams and _finish_body(connection):
                ended += 1
            else:
                cut += 1
            transport.close()  # the app sees http.disconnect
        if ended or cut:
            logger.info("Drain deadline: ended %d event stream(s), cut %d other response(s)",
                        ended, cut)


def _finish_body(connection: Any) -> bool:
    """Write the end of the response body in progress, if its framing allows; True if so."""
    try:
        import h11
    except ImportError:  # pragma: no cover - h11 is a uvicorn dependency
        h11 = None
    h11_connection = getattr(connection, "conn", None)
    if h11 is not None and isinstance(h11_connection, h11.Connection):
        try:
            data = h11_connection.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # Content-Length not reached: cannot end cleanly
            return False
        if data:
            connection.transport.write(data)
        return True
    cycle = connection.cycle
    if getattr(cycle, "chunked_encoding", None):  # httptools
        connection.transport.write(b"0\r\n\r\n")
        return True
    # close-delimited (HTTP/1.0): closing is the clean end; Content-Length: it is not
    return getattr(cycle, "chunked_encoding", None) is None


class UvicornWorker(_StockUvicornWorker):
    """``-k rollover.workers.UvicornWorker``: uvicorn-worker's class, draining without
    failing a request (see the module docstring)."""

    async def _serve(self) -> None:
        config = self.config
        config.app = self.wsgi
        if not config.loaded:
            config.load()
        drain = DrainState()
        config.loaded_app = drain.wrap(config.loaded_app)
        server = DrainingServer(config, drain, _graceful_timeout(self.cfg))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class UvicornH11Worker(UvicornWorker):
    """``-k rollover.workers.UvicornH11Worker``: the same on the asyncio loop with h11."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}


for _cls in (UvicornWorker, UvicornH11Worker):
    _cls.__module__ = "rollover.workers"
