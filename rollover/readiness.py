"""How a worker tells the master "I am READY" (or why it is not), and how the master hears it.

The master creates one pipe before it forks any worker; every worker inherits the write
end. A worker writes one JSON line per event; lines are shorter than PIPE_BUF, so writes
from concurrent workers never interleave. READY is sent on the worker's first heartbeat
(`Worker.notify`), which every gunicorn worker class calls once its serving loop runs:
after the app is loaded and, for ASGI workers, after lifespan startup completed (an app
without lifespan support still reaches the loop, so READY never hangs on it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rollover.settings import Settings

# Leave room under PIPE_BUF (4096 on Linux) for the JSON framing.
_MAX_DETAIL = 1500

# The write end, set in the master before the first fork and inherited by every worker.
_write_fd: int | None = None

# The master's current rollover settings, inherited by each worker at fork.
settings: Settings | None = None


def configure(current: Settings) -> None:
    """Master side: the settings the next forked workers will see."""
    global settings
    settings = current


@dataclass(frozen=True)
class Message:
    pid: int
    event: str  # "ready" | "failed"
    detail: str = ""


class Channel:
    """The master's end: non-blocking reads, framed by newlines, garbage reported."""

    def __init__(self) -> None:
        global _write_fd
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Workers must never block on a full pipe: they drop the message instead.
        _write_fd = self.write_fd
        self._buffer = b""

    def fileno(self) -> int:
        return self.read_fd

    def drain(self) -> tuple[list[Message], list[str]]:
        """Everything readable now: (messages, problems with garbled input)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._buffer += b"".join(chunks)
        *lines, self._buffer = self._buffer.split(b"\n")
        messages, problems = [], []
        for line in lines:
            try:
                raw = json.loads(line)
                messages.append(Message(int(raw["pid"]), str(raw["event"]),
                                        str(raw.get("detail", ""))))
            except (ValueError, KeyError, TypeError):
                problems.append(f"garbled readiness message: {line[:200]!r}")
        return messages, problems

    def close_in_child(self) -> None:
        """In a forked worker: the read end belongs to the master."""
        with contextlib.suppress(OSError):
            os.close(self.read_fd)


def report(event: str, detail: str = "") -> None:
    """Worker side: tell the master. Never raises: a worker must not die of telling."""
    if _write_fd is None:
        return
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    line = json.dumps({"pid": os.getpid(), "event": event, "detail": detail}) + "\n"
    with contextlib.suppress(OSError):
        os.write(_write_fd, line.encode("utf-8", "replace"))


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def _watch_lifespan(app: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an ASGI app so a `lifespan.startup.failed` message is reported with its cause."""

    async def app_with_lifespan_report(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") != "lifespan":
            return await app(scope, receive, send)

        async def send_and_report(message: dict[str, Any]) -> None:
            if message.get("type") == "lifespan.startup.failed":
                lines = str(message.get("message") or "").strip().splitlines()
                report("failed", "lifespan startup failed" + (f": {lines[-1]}" if lines else ""))
            await send(message)

        return await app(scope, receive, send_and_report)

    return app_with_lifespan_report


_worker_classes: dict[type, type] = {}


def with_readiness(worker_class: type) -> type:
    """A subclass of a gunicorn worker class that reports READY / failure to the master."""
    if getattr(worker_class, "_rollover_reports", False):
        return worker_class
    cached = _worker_classes.get(worker_class)
    if cached is not None:
        return cached

    class ReportingWorker(worker_class):  # type: ignore[misc, valid-type]
        _rollover_reports = True
        _rollover_ready = False

        def notify(self) -> None:
            super().notify()
            if not self._rollover_ready:
                self._rollover_ready = True
                report("ready")

        def load_wsgi(self) -> None:
            super().load_wsgi()
            # uvicorn's worker keeps the ASGI app in .wsgi, gunicorn's asgi worker in .asgi
            if getattr(self, "asgi", None) is not None:
                self.asgi = _watch_lifespan(self.asgi)
            elif any(c.__name__ == "UvicornWorker" for c in type(self).__mro__):
                self.wsgi = _watch_lifespan(self.wsgi)

        def init_process(self) -> None:
            try:
                super().init_process()
            except SystemExit:
                raise
            except BaseException as exc:
                if not self._rollover_ready:
                    report("failed", describe_exception(exc))
                raise

    ReportingWorker.__name__ = worker_class.__name__
    ReportingWorker.__qualname__ = worker_class.__qualname__
    ReportingWorker.__module__ = worker_class.__module__
    _worker_classes[worker_class] = ReportingWorker
    return ReportingWorker

