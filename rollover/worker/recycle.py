"""A worker's side of recycling, and its reporter: counts and recycle requests to the master.

gunicorn's `max_requests` makes a worker exit once it served its limit, and only then does
the master fork a replacement, which must boot: capacity drops for a whole boot per
recycle. rollover takes the limit over (with gunicorn's jitter, as the worker drew it) and
switches the class's own exit off: at the limit the worker asks the master for a
replacement instead, and keeps serving until the master retires it, once the replacement
is READY (drained as in a roll). When no replacement can come (the code on disk broke
since: respawns fail, with backoff), a worker past `HARD_CAP_FACTOR` times its limit says
so when it asks (`overdue`), and the master retires it without a replacement, as gunicorn's
max_requests would have.

Two more triggers, rollover's own, ask the same way: `rollover_max_worker_rss` (MiB of
resident memory) and `rollover_max_worker_age` (seconds since the worker started serving, plus a
random jitter of up to `rollover_max_worker_age_jitter`, so workers started together do
not all ask at once).

The reporter is a daemon thread of the worker's (a greenlet under gevent or eventlet),
on a clock of its own: it sends the worker's request counts when they changed, every
`COUNTS_EVERY` seconds while a canary is judged (`rollover.worker.spread`: its verdict
waits on them; an error counted then is reported within `ERROR_EVERY`) and every
`QUIET_COUNTS_EVERY` seconds otherwise (each message wakes the master's loop; the status
shows counts once a second), and while a limit is reached it
checks every `COUNTS_EVERY` seconds and asks for a replacement every
`ASK_EVERY` seconds (the channel drops a message rather than block a worker, so a request
may be lost: asking again is how it is answered).
"""

from __future__ import annotations

import atexit
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollover.core.messages import Counts, Message, Recycle
from rollover.core.outcomes import Outcomes
from rollover.worker import spread
from rollover.worker.counting import Tally

if TYPE_CHECKING:
    from rollover.settings import Settings

__all__ = [
    "ASK_EVERY",
    "COUNTS_EVERY",
    "ERROR_EVERY",
    "HARD_CAP_FACTOR",
    "QUIET_COUNTS_EVERY",
    "Due",
    "Limits",
    "Reporter",
    "due",
    "take_limits",
]

COUNTS_EVERY = 0.25
ERROR_EVERY = 0.05  # while a canary is judged, an error is reported this soon at most
QUIET_COUNTS_EVERY = 1.0
ASK_EVERY = 1.0
HARD_CAP_FACTOR = 2
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_requests: int | None = None
    """Requests after which the worker asks for a replacement (gunicorn's jitter included)."""
    max_rss: int | None = None
    """Bytes of resident memory."""
    max_age: float | None = None
    """Seconds since the worker started (jitter included)."""

    @property
    def any(self) -> bool:
        return (self.max_requests, self.max_rss, self.max_age) != (None, None, None)


@dataclass(frozen=True)
class Due:
    reason: str
    overdue: bool  # past HARD_CAP_FACTOR times the limit


def due(limits: Limits, requests: int, rss: int | None, age: float) -> Due | None:
    """Why the worker should be replaced now, or None. Pure: the reporter brings the facts."""
    if limits.max_requests is not None and requests >= limits.max_requests:
        return Due(f"max_requests: served {requests} of {limits.max_requests}",
                   requests >= limits.max_requests * HARD_CAP_FACTOR)
    if limits.max_rss is not None and rss is not None and rss >= limits.max_rss:
        return Due(f"max_worker_rss: {rss / _MIB:.0f} MiB resident, "
                   f"limit {limits.max_rss / _MIB:.0f} MiB",
                   rss >= limits.max_rss * HARD_CAP_FACTOR)
    if limits.max_age is not None and age >= limits.max_age:
        return Due(f"max_worker_age: up {age:.0f}s, limit {limits.max_age:.0f}s",
                   age >= limits.max_age * HARD_CAP_FACTOR)
    return None


def take_limits(worker: Any, settings: Settings, rng: random.Random | None = None) -> Limits:
    """In the master, right after gunicorn's `Worker.__init__` (which drew the jitter): take
    over the class's max_requests (its own exit switched off) and draw the age jitter."""
    rng = rng or random.Random()
    soft = None
    configured = getattr(worker.cfg, "max_requests", 0) or 0
    if settings.recycle and configured > 0:
        soft = int(worker.max_requests)
        worker.max_requests = sys.maxsize  # gunicorn's own "no limit"
        config: Any = getattr(worker, "config", None)  # uvicorn copied it into its Config
        if getattr(config, "limit_max_requests", None) is not None:
            config.limit_max_requests = None
    age = None
    if settings.max_worker_age is not None:
        jitter = settings.max_worker_age_jitter
        if jitter is None:
            jitter = settings.max_worker_age / 10
        age = settings.max_worker_age + rng.uniform(0, jitter)
    rss = int(settings.max_worker_rss * _MIB) if settings.max_worker_rss is not None else None
    return Limits(soft, rss, age)


class Reporter:
    """The worker's reporting thread (see the module docstring)."""

    def __init__(self, worker: Any, tally: Tally, limits: Limits,
                 send: Callable[[Message], None]) -> None:
        self.worker = worker
        self.send = send
        self.tally = tally
        self.limits = limits
        self.started = time.monotonic()
        self._process: Any = None
        if limits.max_rss is not None:
            import psutil  # only where a memory limit is set

            self._process = psutil.Process()
        self._sent: Outcomes | None = None
        self._wake = threading.Event()

    def _error(self) -> None:
        """An error was counted (in the serving thread): while a canary is judged, report
        without waiting for the next tick, so a failing canary is stopped sooner."""
        if not self._wake.is_set() and spread.window_open():
            self._wake.set()

    def start(self) -> None:
        self.tally.on_error = self._error
        threading.Thread(target=self._run, name="rollover-reporter", daemon=True).start()
        atexit.register(self.last_counts)

    def last_counts(self) -> None:
        """At the worker's exit (atexit; uvicorn's, which ends by re-raising SIGTERM, calls
        it at lifespan shutdown): what it served since the last report."""
        counts = self.tally.snapshot()
        if counts != self._sent:
            self.send(Counts(counts))

    def _rss(self) -> int | None:
        if self._process is None:
            return None
        try:
            return int(self._process.memory_info().rss)
        except Exception:  # psutil.Error: the process is ending
            return None

    def _run(self) -> None:
        tick = threading.Event()
        next_ask = next_counts = 0.0
        while getattr(self.worker, "alive", True):
            tick.wait(ERROR_EVERY)  # a floor: errors coming fast are reported in batches
            self._wake.wait(COUNTS_EVERY - ERROR_EVERY)
            self._wake.clear()
            counts = self.tally.snapshot()
            now = time.monotonic()
            if counts != self._sent and (now >= next_counts or spread.window_open()):
                self.send(Counts(counts))
                self._sent, next_counts = counts, now + QUIET_COUNTS_EVERY
            if self.limits.any and now >= next_ask:
                ask = due(self.limits, counts.requests, self._rss(), now - self.started)
                if ask is not None and getattr(self.worker, "alive", True):
                    self.send(Recycle(ask.reason, overdue=ask.overdue))
                    next_ask = now + ASK_EVERY
