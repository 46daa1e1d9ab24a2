"""The master's ends of its workers' pipes: one pipe per worker, read without blocking.

Runs in the master. Right before each fork, `prepare()` makes a pipe and hands its write
end to `rollover.worker.sender` (the child inherits it); right after, `attach(pid)` keeps
the read end under the worker's pid and closes the write end. A message is therefore from
the worker whose pipe carried it, whatever it claims: one that names another pid (the
worker's own subprocess, or app code forging a recycle or counts for another worker) is
dropped with a WARNING naming both pids.

Reading is bounded and total: at most `READ_BUDGET` bytes per pipe per wake (a worker
flooding its pipe cannot starve the others or stall the loop), lines longer than
`messages.MAX_LINE` are dropped up to their newline, and each line goes through
`messages.decode`, which never raises. What is dropped is reported as problems, at most
one line per worker every `WARN_EVERY` seconds (with a count of what was dropped since).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rollover.core import messages
from rollover.core.messages import Envelope, Message
from rollover.master.gunicorn_compat import raw_read
from rollover.worker import sender

__all__ = ["READ_BUDGET", "WARN_EVERY", "Channel", "Delivery"]

READ_BUDGET = 65536
WARN_EVERY = 10.0


@dataclass(frozen=True)
class Delivery:
    pid: int
    message: Message


@dataclass
class _Pipe:
    pid: int
    fd: int
    buffer: bytearray = field(default_factory=bytearray)
    discarding: bool = False  # inside an over-long line: drop up to its newline
    eof: bool = False  # every write end closed: nothing more to poll for
    warned_at: float = float("-inf")
    dropped: int = 0  # problems not logged since warned_at


class Channel:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pipes: dict[int, _Pipe] = {}  # by the read end's fd
        self._by_pid: dict[int, _Pipe] = {}
        self._pending: tuple[int, int] | None = None  # (read, write) of the next fork

    # -- around a fork -------------------------------------------------------------------

    def prepare(self) -> None:
        """Before forking a worker: its pipe; the child inherits the write end."""
        self.abandon()
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pending = (read_fd, write_fd)
        sender.use(write_fd)

    def attach(self, pid: int) -> None:
        """In the master after the fork: the pipe prepared is `pid`'s."""
        pending, self._pending = self._pending, None
        sender.use(None)
        if pending is None:
            return
        read_fd, write_fd = pending
        with contextlib.suppress(OSError):
            os.close(write_fd)
        self.close(pid)  # a pid reused before its predecessor's pipe was closed
        pipe = _Pipe(pid, read_fd)
        self._pipes[read_fd] = self._by_pid[pid] = pipe

    def abandon(self) -> None:
        """The fork did not happen: close the prepared pipe."""
        pending, self._pending = self._pending, None
        sender.use(None)
        for fd in pending or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_in_child(self) -> None:
        """In any process forked by the master: the read ends are the master's (the
        prepared write end stays, for a worker; `sender` owns it)."""
        for fd in [*self._pipes, *(self._pending[:1] if self._pending else ())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipes.clear()
        self._by_pid.clear()

    # -- reading -------------------------------------------------------------------------

    def fds(self) -> list[int]:
        """The pipes to poll (not those at end of file, which would always be readable)."""
        return [fd for fd, pipe in self._pipes.items() if not pipe.eof]

    def read(self, fds: Iterable[int] | None = None) -> tuple[list[Delivery], list[str]]:
        """What the pipes (`fds`, or all) hold now: (messages, problems to log)."""
        deliveries: list[Delivery] = []
        problems: list[str] = []
        for fd in list(self._pipes) if fds is None else fds:
            pipe = self._pipes.get(fd)
            if pipe is not None:
                self._read_pipe(pipe, deliveries, problems)
        return deliveries, problems

    def fds_of(self, pid: int) -> list[int]:
        pipe = self._by_pid.get(pid)
        return [pipe.fd] if pipe is not None else []

    def close(self, pid: int) -> None:
        """The worker is gone: forget its pipe (read what it left first)."""
        pipe = self._by_pid.pop(pid, None)
        if pipe is not None:
            self._pipes.pop(pipe.fd, None)
            with contextlib.suppress(OSError):
                os.close(pipe.fd)

    def keep_only(self, pids: Iterable[int]) -> None:
        """Close the pipes of workers no longer known (gone without being reaped here)."""
        keep = set(pids)
        for pid in [p for p in self._by_pid if p not in keep]:
            self.close(pid)

    def _read_pipe(self, pipe: _Pipe, deliveries: list[Delivery], problems: list[str]) -> None:
        budget = READ_BUDGET
        lines: list[bytes] = []
        reasons: list[str] = []
        while budget > 0:
            try:
                # the stdlib's read: EAGAIN raises even in an eventlet-patched master
                chunk = raw_read(pipe.fd, min(budget, 65536))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                reasons.append(f"read failed ({exc.strerror or type(exc).__name__})")
                self.close(pipe.pid)
                break
            if not chunk:
                pipe.eof = True  # the worker is gone, or closed its end (app code may)
                break
            budget -= len(chunk)
            self._split(pipe, chunk, lines, reasons)
        for line in lines:
            decoded = messages.decode(line)
            if not isinstance(decoded, Envelope):
                reasons.append(f"{decoded.reason}: {decoded.sample!r}")
            elif decoded.pid != pipe.pid:
                reasons.append(f"claims to be worker {decoded.pid} "
                               f"({type(decoded.message).__name__.lower()}): dropped, a "
                               f"worker speaks only for itself")
            else:
                deliveries.append(Delivery(pipe.pid, decoded.message))
        if reasons:
            problems.extend(self._rate_limited(pipe, reasons))

    @staticmethod
    def _split(pipe: _Pipe, chunk: bytes, lines: list[bytes], reasons: list[str]) -> None:
        buffer = pipe.buffer
        buffer += chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if pipe.discarding:
                pipe.discarding = False
            else:
                lines.append(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) >= messages.MAX_LINE:
            if not pipe.discarding:
                reasons.append(f"a line over {messages.MAX_LINE} bytes: "
                               f"{messages.printable(bytes(buffer[:80]))!r}")
            pipe.discarding = True
            buffer.clear()

    def _rate_limited(self, pipe: _Pipe, reasons: list[str]) -> list[str]:
        now = self._clock()
        if now - pipe.warned_at < WARN_EVERY:
            pipe.dropped += len(reasons)
            return []
        more = len(reasons) - 1 + pipe.dropped
        since = f" (and {more} more dropped)" if more else ""
        pipe.warned_at, pipe.dropped = now, 0
        return [f"worker {pipe.pid} sent what the master drops: {reasons[0]}{since}"]
