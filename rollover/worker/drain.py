"""How a retired ASGI worker drains without failing a request: the pieces its servers share.

Measured with the stock classes (4 workers, 16 clients, one HUP roll): uvicorn's worker
(`uvicorn_worker.UvicornWorker`, `uvicorn.workers.UvicornWorker`) fails 8-22 keep-alive
requests per roll, gunicorn's `asgi` worker 0-4 (under CPU load):

- uvicorn closes every idle keep-alive connection at once, while the client may be sending
  its next request on it (ConnectionResetError); it also closes connections it accepted but
  has not read a request from yet, as if they were idle;
- gunicorn's asgi worker closes a connection right after the response in progress even
  when that response did not say ``Connection: close`` (RemoteDisconnected on the client's
  next request);
- both stop accepting with asyncio's `Server.close()`, which drops the connections
  accepted an instant earlier whose transports are not made yet (the client gets a
  reset: see `stop_accepting`);
- both wait for open streaming responses until the master's SIGKILL; gunicorn's leaves
  websockets open until then too (the client sees 1006, no close frame).

A draining worker (`rollover.worker.drain_uvicorn`, `rollover.worker.drain_asgi`):

1. stops accepting, after making transports for every connection already accepted (the
   listening socket stays open in the master and the other workers, so nothing queued on
   it is lost);
2. answers every request that arrives on an open connection with ``Connection: close``,
   and closes the connection after that response; a connection that has not sent its
   first request yet gets ``max(keep-alive timeout, 0.5 s)`` (gunicorn's ``--keep-alive``,
   2 s by default) to send one (uvicorn); an idle keep-alive connection is closed by its
   keep-alive timer, as at any other time;
3. closes open websockets at once with close code 1012 (Service Restart), so clients
   reconnect, to a new worker;
4. lets streaming responses run until shortly before the master's SIGKILL (the drain
   deadline, `drain_deadline`), then ends them: a ``text/event-stream`` response ends
   cleanly (its final chunk is written: the client sees the response end, as an
   EventSource does before it reconnects); any other response still streaming is cut (the
   connection closes without the final chunk, so the client sees an incomplete body, never
   a silently truncated one). The app sees ``http.disconnect`` (uvicorn) or an ``OSError``
   from ``send`` (gunicorn's asgi, ASGI 2.4), as when a client goes away. A request whose
   response has not started `CANCEL_GRACE` after the deadline is cancelled: uvicorn
   answers 500 with ``Connection: close``, gunicorn's asgi worker closes the connection.
   Then lifespan shutdown runs.

WSGI workers (`sync`, `gthread`, `gevent`, `eventlet`) need none of this: retired one at a
time, gunicorn's own drain fails no request.

This module imports neither uvicorn nor gunicorn's asgi worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["CANCEL_GRACE", "CLOSE_HEADER", "SUMMARY", "DrainState", "StreamTracker",
           "drain_deadline", "graceful_timeout", "stop_accepting"]

from rollover.worker import sender
from rollover.worker.counting import CLOSE_HEADER

logger = logging.getLogger(__name__)

# What a draining worker does, in the master's start-up line.
SUMMARY = ("Connection: close while draining, websockets 1012, "
           "event streams ended at the drain deadline")


# How long after the drain deadline ended streams get to finish before the rest is cancelled.
CANCEL_GRACE = 0.5


def drain_deadline(graceful_timeout: float) -> float:
    """Seconds after SIGTERM at which a draining worker ends what is still streaming.

    It leaves the worker time to finish (lifespan shutdown) before the master's SIGKILL at
    `graceful_timeout`: 20% of it, at least 1.5 s and at most 5 s (half of it under 3 s).
    """
    if graceful_timeout < 3:
        return max(0.0, graceful_timeout / 2)
    return graceful_timeout - min(max(1.5, graceful_timeout * 0.2), 5.0)


def graceful_timeout(cfg: Any) -> float:
    """The master's SIGKILL deadline for a retired worker: `rollover_graceful_timeout`
    (inherited from the master at fork), else gunicorn's `graceful_timeout`."""
    from rollover.worker import readiness

    if readiness.settings is not None:
        return float(readiness.settings.graceful_timeout)
    return float(cfg.graceful_timeout)


async def stop_accepting(servers: Iterable[asyncio.AbstractServer]) -> None:
    """Stop accepting without dropping the connections accepted an instant earlier.

    asyncio accepts connections in batches and creates their transports in tasks; a task
    that runs after `Server.close()` fails (`Server._attach` asserts the server is open),
    and its connection is dropped unanswered: the client gets a reset. (Both uvicorn's and
    gunicorn's asgi worker close their servers that way.) So: stop watching the listening
    sockets first, let those tasks run, then close the servers.
    """
    servers = list(servers)
    loop = asyncio.get_running_loop()
    unwatched = True
    for server in servers:
        for sock in getattr(server, "sockets", None) or ():
            try:
                loop.remove_reader(sock.fileno())
            except Exception:  # e.g. a loop without remove_reader
                unwatched = False
    if unwatched:
        sender.unlisten()  # no accept runs from here on (the loop's thread is this one)
    await asyncio.sleep(0.05)
    for server in servers:
        server.close()
    sender.unlisten()


class DrainState:
    """What the server and the ASGI wrapper share while a worker drains."""

    def __init__(self) -> None:
        self.draining = False
        # id() of the scope of each response in progress that is a text/event-stream
        self.event_streams: set[int] = set()

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """An ASGI app that adds ``Connection: close`` to responses started while draining
        and notes which responses are event streams."""

        async def draining_app(scope: dict[str, Any], receive: Any, send: Any) -> Any:
            if scope.get("type") != "http":
                return await app(scope, receive, send)
            key = id(scope)

            async def send_wrapper(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    headers = list(message.get("headers") or ())
                    if is_event_stream(headers):
                        self.event_streams.add(key)
                    if self.draining and not _closes(headers):
                        message = {**message, "headers": [*headers, CLOSE_HEADER]}
                await send(message)

            try:
                return await app(scope, receive, send_wrapper)
            finally:
                self.event_streams.discard(key)

        return draining_app


def is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type"
               and value.split(b";", 1)[0].strip().lower() == b"text/event-stream"
               for name, value in headers)


def _closes(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower()
               for name, value in headers)


class _Session:
    """An open websocket, or an event-stream response, as the ASGI app sees it."""

    __slots__ = ("ended", "lock", "send")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.lock = asyncio.Lock()
        self.ended = False


class StreamTracker:
    """ASGI middleware that knows the open websockets and event streams, so a draining
    worker can close them (server-agnostic: it only sends ASGI messages)."""

    def __init__(self) -> None:
        self.websockets: set[_Session] = set()
        self.event_streams: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        async def tracked(scope: dict[str, Any], receive: Any, send: Any) -> Any:
            kind = scope.get("type")
            if kind not in ("http", "websocket"):
                return await app(scope, receive, send)
            session = _Session(send)
            opened = self.websockets if kind == "websocket" else self.event_streams

            async def send_wrapper(message: dict[str, Any]) -> None:
                async with session.lock:
                    if session.ended:
                        # ASGI 2.4: a send on a closed connection raises OSError
                        raise OSError("rollover: closed by the draining worker")
                    await send(message)
                kind = message.get("type")
                if kind == "websocket.accept" or (
                        kind == "http.response.start"
                        and is_event_stream(message.get("headers") or ())):
                    opened.add(session)
                elif kind == "websocket.close" or (
                        kind == "http.response.body" and not message.get("more_body")):
                    opened.discard(session)

            try:
                return await app(scope, receive, send_wrapper)
            finally:
                opened.discard(session)

        return tracked

    def close_websockets(self, code: int = 1012) -> int:
        """Send every open websocket a close frame (1012: Service Restart)."""
        return self._end(self.websockets, {"type": "websocket.close", "code": code,
                                           "reason": "Service Restart"})

    def end_event_streams(self) -> int:
        """End every open event stream with the final (empty) body chunk."""
        return self._end(self.event_streams,
                         {"type": "http.response.body", "body": b"", "more_body": False})

    def _end(self, sessions: set[_Session], message: dict[str, Any]) -> int:
        ended = list(sessions)
        sessions.clear()
        for session in ended:
            task = asyncio.ensure_future(self._send_last(session, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(ended)

    @staticmethod
    async def _send_last(session: _Session, message: dict[str, Any]) -> None:
        async with session.lock:
            if session.ended:
                return
            session.ended = True
            try:
                await session.send(message)
            except Exception as exc:  # the client went away meanwhile
                logger.debug("rollover: could not end a stream: %r", exc)
