"""Closed-loop HTTP load with aiohttp, keeping a per-request timeline.

Half the clients (rounded up) reuse one keep-alive connection each; the others open a new
connection for every request. Each client loops: request, record, pause `think` seconds,
until stopped, past its deadline, or after `max_requests`. Every request becomes a
`Record` (monotonic start and end, ok or the error kind, the version and pid that answered).

aiohttp silently retries an idempotent request once when a reused keep-alive connection
turns out to be closed; that would hide exactly the races a reload causes, so the
benchmark turns it off (`retry=False`, the default) and counts every failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import time
from dataclasses import dataclass, field

import aiohttp

STREAM_INTERVAL = 0.5  # the app's seconds between server-sent events


@dataclass(frozen=True, slots=True)
class Record:
    client: int
    keepalive: bool
    start: float
    end: float
    kind: str  # "ok", "HTTP <status>", "bad body" or the error kind
    version: str | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class StreamRecord:
    """One long server-sent-events response held open across the reload."""

    start: float = 0.0
    end: float | None = None
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (t, version, pid)
    #: "completed" (all events), "closed by client" (at the end of the load), "ended by
    #: server" (a clean end before all events: e.g. a drain deadline), "HTTP <status>",
    #: or the error kind when the connection was cut.
    outcome: str = "not started"

    @property
    def cut(self) -> bool:
        """True when the stream broke off with an error (not a clean end)."""
        return self.outcome not in ("completed", "closed by client", "ended by server", "open")


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a failed request: the exception class, plus errno."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "Timeout"
    name = type(exc).__name__
    code = getattr(exc, "errno", None)
    if code is None and isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
    if isinstance(code, int) and code in errno.errorcode:
        return f"{name}({errno.errorcode[code]})"
    return name


def _session(keepalive: bool, timeout: float, retry: bool) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=1, force_close=not keepalive)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={} if keepalive else {"Connection": "close"},
    )
    if not retry and hasattr(session, "_retry_connection"):
        session._retry_connection = False  # see the module docstring
    return session


class Load:
    """`clients` closed-loop clients against `http://127.0.0.1:port/`."""

    def __init__(
        self,
        port: int,
        *,
        clients: int,
        think: float,
        timeout: float,
        max_seconds: float,
        max_requests: int = 200_000,
        retry: bool = False,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.clients = clients
        self.think = think
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.retry = retry
        self.records: list[Record] = []
        self.started_at = 0.0
        self.stop_requested_at: float | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.started_at = time.monotonic()
        deadline = self.started_at + self.max_seconds
        per_client = max(1, self.max_requests // max(1, self.clients))
        for i in range(self.clients):
            keepalive = i % 2 == 0
            self._tasks.append(
                asyncio.create_task(self._client(i, keepalive, deadline, per_client))
            )

    async def stop(self) -> None:
        """Stop issuing requests; wait for those in flight (at most the request timeout)."""
        self.stop_requested_at = time.monotonic()
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.timeout + 2)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)

    async def _client(self, index: int, keepalive: bool, deadline: float, limit: int) -> None:
        async with _session(keepalive, self.timeout, self.retry) as session:
            for _ in range(limit):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                record = await self._one(session, index, keepalive)
                self.records.append(record)
                # Pacing: a refused connect would otherwise spin a core.
                pause = self.think if record.ok else max(self.think, 0.02)
                if pause > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), pause)

    async def _one(self, session: aiohttp.ClientSession, index: int, keepalive: bool) -> Record:
        start = time.monotonic()
        try:
            async with session.get(self.url) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Record(index, keepalive, start, time.monotonic(), error_kind(exc))
        end = time.monotonic()
        if status != 200:
            return Record(index, keepalive, start, end, f"HTTP {status}")
        try:
            data = json.loads(body)
            return Record(
                index, keepalive, start, end, "ok", str(data["version"]), int(data["pid"])
            )
        except (ValueError, KeyError, TypeError):
            return Record(index, keepalive, start, end, "bad body")


class Stream:
    """One SSE response (`GET /stream?n=...`) held open until it ends or `stop()`."""

    def __init__(self, port: int, *, max_seconds: float, read_timeout: float) -> None:
        self.count = max(1, min(10_000, int(max_seconds / STREAM_INTERVAL) + 1))
        self.url = f"http://127.0.0.1:{port}/stream?n={self.count}"
        self.read_timeout = read_timeout
        self.record = StreamRecord()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def opened(self, timeout: float) -> bool:
        """Wait until the first event arrived (the stream is held by some worker)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.record.events or self.record.end is not None:
                return bool(self.record.events)
            await asyncio.sleep(0.02)
        return False

    async def stop(self) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.record.outcome = "closed by client"
            self.record.end = time.monotonic()

    async def _run(self) -> None:
        rec = self.record
        rec.start = time.monotonic()
        rec.outcome = "open"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.read_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url) as resp,
            ):
                if resp.status != 200:
                    rec.outcome = f"HTTP {resp.status}"
                else:
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = json.loads(line[5:])
                        rec.events.append(
                            (time.monotonic(), str(data["version"]), int(data["pid"]))
                        )
                    rec.outcome = (
                        "completed" if len(rec.events) >= self.count else "ended by server"
                    )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            rec.outcome = error_kind(exc)
        rec.end = time.monotonic()
