"""Counting a worker's requests by outcome, in the worker, without a syscall per request.

`counted_wsgi` and `counted_asgi` wrap the app a worker serves; each request adds one to a
`Tally` (plain integers: a thread switch between read and write may, rarely, lose one
count, which nothing here needs exact). WSGI: the status passed to `start_response` is the
outcome; an app that raises is `failed` (the iterable is not wrapped, so gunicorn's
sendfile path stays). ASGI (`http` scopes only): the status of `http.response.start`; an
app that raises, or returns without a response, is `failed`.

`close`, when given, is asked once per request whether this response should close its
connection (`rollover.worker.spread`: sending clients toward the canary): WSGI through
gunicorn's `Response.force_close()`, ASGI with a ``Connection: close`` header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rollover.core.outcomes import Outcomes

CLOSE_HEADER = (b"connection", b"close")

__all__ = ["Tally", "counted_asgi", "counted_wsgi"]


class Tally:
    """`on_error`, when set, is called after each error counted (5xx or raised): the
    reporter's wake-up, so a canary's errors reach the master without waiting for its
    next report."""

    __slots__ = ("client_error", "failed", "ok", "on_error", "requests", "server_error")

    def __init__(self) -> None:
        self.requests = self.ok = self.client_error = self.server_error = self.failed = 0
        self.on_error: Callable[[], None] | None = None

    def raised(self) -> None:
        self.failed += 1
        if self.on_error is not None:
            self.on_error()

    def answered(self, status: int) -> None:
        if status >= 500:
            self.server_error += 1
            if self.on_error is not None:
                self.on_error()
        elif status >= 400:
            self.client_error += 1
        else:
            self.ok += 1

    def snapshot(self) -> Outcomes:
        return Outcomes(self.requests, self.ok, self.client_error, self.server_error,
                        self.failed)


def _status_code(status: Any) -> int:
    try:
        return int(str(status)[:3])
    except ValueError:
        return 500


Close = Callable[[], bool]


def counted_wsgi(app: Callable[..., Iterable[bytes]], tally: Tally,
                 close: Close | None = None) -> Callable[..., Any]:
    def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        tally.requests += 1
        answered = False

        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal answered
            if not answered:  # a second call (exc_info) replaces the first answer
                answered = True
                tally.answered(_status_code(status))
                if close is not None and close():
                    # gunicorn drops an app's Connection header: close through its Response
                    force_close = getattr(getattr(start_response, "__self__", None),
                                          "force_close", None)
                    if force_close is not None:
                        force_close()
            return start_response(status, headers, exc_info)

        try:
            return app(environ, start)
        except BaseException:
            if not answered:
                tally.raised()
            raise

    counted.__wrapped__ = app  # type: ignore[attr-defined]
    return counted


def counted_asgi(app: Callable[..., Any], tally: Tally, close: Close | None = None,
                 shutdown: Callable[[], None] | None = None) -> Callable[..., Any]:
    """`shutdown`: called when the app's lifespan shutdown completes (the last moment
    some servers leave before they end the process by a signal)."""

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") == "lifespan" and shutdown is not None:
            async def lifespan_send(message: dict[str, Any]) -> None:
                if str(message.get("type", "")).startswith("lifespan.shutdown."):
                    shutdown()
                await send(message)

            return await app(scope, receive, lifespan_send)
        if scope.get("type") != "http":
            return await app(scope, receive, send)
        tally.requests += 1
        answered = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if not answered and message.get("type") == "http.response.start":
                answered = True
                tally.answered(int(message.get("status", 500)))
                if close is not None and close():
                    headers = list(message.get("headers") or ())
                    if not any(name.lower() == b"connection" for name, _ in headers):
                        message = {**message, "headers": [*headers, CLOSE_HEADER]}
            await send(message)

        try:
            result = await app(scope, receive, counting_send)
        except BaseException:
            if not answered:
                tally.raised()
            raise
        if not answered:
            tally.raised()
        return result

    counted.__wrapped__ = app  # type: ignore[attr-defined]
    return counted
