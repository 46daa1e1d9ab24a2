"""The drain for uvicorn's gunicorn worker classes (see `rollover.worker.drain`).

`UvicornDrain` goes in front of a uvicorn worker class: `uvicorn_worker.UvicornWorker`,
`uvicorn.workers.UvicornWorker` (deprecated, same code), their H11 variants and users'
subclasses that keep the stock serving loop. Its `_serve` is the stock one with uvicorn's
`Server` replaced by `DrainingServer`, whose shutdown drains instead of closing idle and
just-accepted connections at once.

Imported only in a master whose worker class is a uvicorn one (uvicorn is loaded already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server

from rollover.worker.drain import (
    CANCEL_GRACE,
    DrainState,
    drain_deadline,
    graceful_timeout,
    stop_accepting,
)

if TYPE_CHECKING:
    from uvicorn_worker import UvicornWorker as _Base
else:
    _Base = object

__all__ = ["DrainingServer", "UvicornDrain"]

# uvicorn's worker classes point this logger at gunicorn's error log.
logger = logging.getLogger("uvicorn.error")


def _is_http(connection: Any) -> bool:
    """uvicorn's HTTP/1 protocols (h11, httptools) have a request/response `cycle`."""
    return hasattr(connection, "cycle") and hasattr(connection, "transport")


class DrainingServer(Server):
    """uvicorn's `Server` with a shutdown that drains instead of closing idle connections."""

    def __init__(self, config: Any, drain: DrainState, graceful_timeout: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.graceful_timeout = graceful_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop accepting now, not at uvicorn's next main-loop tick (0.1 s later),
        and answer with Connection: close from here on: a retired worker (a failed canary
        above all) takes no new connection meanwhile. `shutdown` does the rest."""
        super().handle_exit(sig, frame)
        self.drain.draining = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for server in getattr(self, "servers", None) or ():
            for sock in getattr(server, "sockets", None) or ():
                # a loop without remove_reader: `shutdown` closes the server
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())

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
        connection: Any  # uvicorn's protocols; HTTP/1 ones have a `cycle`
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
                await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=CANCEL_GRACE)
            except TimeoutError:
                logger.warning("Drain deadline: cancelling %d request(s) still running",
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
        """At the drain deadline: end what is still open (see `rollover.worker.drain`)."""
        ended = cut = 0
        connection: Any
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
    h11 = sys.modules.get("h11")  # loaded if uvicorn runs its h11 protocol
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


class UvicornDrain(_Base):
    """Goes in front of a uvicorn worker class: the stock `_serve`, with `DrainingServer`."""

    async def _serve(self) -> None:
        config = self.config
        config.app = self.wsgi
        if not config.loaded:
            config.load()
        drain = DrainState()
        config.loaded_app = drain.wrap(config.loaded_app)
        server = DrainingServer(config, drain, graceful_timeout(self.cfg))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
