"""Everything that differs between the gunicorn versions rollover supports (23.0 to 27.x).

`RollingArbiter` inherits the main-loop plumbing of its gunicorn from `Loop`:

- gunicorn 24.1+ (`QueueLoop`): signal handlers put the signal into a `SimpleQueue`; the
  loop blocks in `wait_for_signals(timeout)`; SIGCHLD has its own handler, `signal_chld`,
  which only queues, and the loop's `handle_chld` reaps.
- gunicorn 23 (`PipeLoop`): signal handlers append to a list (capped at 5) and write a
  self-pipe; the loop pops one signal per turn and `sleep()`s on the pipe when the list is
  empty; SIGCHLD's handler *is* `handle_chld`, which reaps inside the signal handler.
  Reaping there would re-enter rollover's state machine in the middle of a tick, so here
  the handler only flags the exit and wakes the loop, and `sleep()` reaps. Only `stop()`
  (gunicorn 23's waits for the handler to reap) gets a reaping handler back.

Both loops also wake at once on a worker's message (its pipe is polled with the wake
pipe). The rest is small: the dirty arbiter (25.3+, `handle_dirty_arbiter_exit` 26+),
`_stats` (25.3+), the backlog metric (24.1+), and the level gunicorn logs a SIGTERMed
worker at (23: ERROR). What a version lacks is simply absent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
from typing import Any

import gunicorn
from gunicorn.arbiter import Arbiter

OLDEST, NEWEST_MAJOR = (23, 0), 27
SUPPORTED = "23.0 through 27.x"


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("."), "0"][:2]
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except ValueError:
        return (-1, -1)


VERSION = _version(gunicorn.__version__)

# The master's I/O on its pipes, as the standard library defines it. gunicorn's eventlet
# worker module (before 26) monkey-patches the master when it is imported to resolve
# `-k eventlet`, and eventlet's green read/write/select wait in its hub on EAGAIN instead
# of raising, inside a signal handler too. rollover is imported first (it is the config).
raw_read, raw_write, raw_select = os.read, os.write, select.select
raw_poll = getattr(select, "poll", None)


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` readable within `timeout` seconds ([] on a signal). poll where the
    platform has it: select() cannot take an fd above 1023, which a busy master can hold."""
    try:
        if raw_poll is None:
            return list(raw_select(fds, [], [], timeout)[0])
        poller = raw_poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return [fd for fd, _ in poller.poll(timeout * 1000)]
    except InterruptedError:
        return []

# gunicorn 24.1 replaced the self-pipe and the signal list with a SimpleQueue.
QUEUED_SIGNALS = hasattr(Arbiter, "wait_for_signals")

# How gunicorn logs a worker that a SIGTERM ended when rollover did not ask for it.
SIGTERM_LEVEL = "info" if QUEUED_SIGNALS else "error"


def unsupported(rollover_version: str) -> str | None:
    """None when this gunicorn is one rollover supports, else the one-line reason."""
    if OLDEST <= VERSION and VERSION[0] <= NEWEST_MAJOR:
        return None
    return (f"gunicorn {gunicorn.__version__} is not supported (rollover {rollover_version} "
            f"supports gunicorn {SUPPORTED})")


class QueueLoop:
    """gunicorn 24.1+: a SimpleQueue of signals, drained by `wait_for_signals`."""

    SIG_QUEUE: Any
    WAKEUP_REQUEST: int
    _wake_r: int
    _wake_w: int

    def _init_loop(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def _loop_fds(self) -> tuple[int, ...]:
        return (self._wake_r, self._wake_w)

    def signal(self, sig: int, frame: Any) -> None:
        self.SIG_QUEUE.put_nowait(sig)
        self._wake()

    signal_chld = signal

    def wakeup(self) -> None:
        super().wakeup()  # type: ignore[misc]
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            raw_write(self._wake_w, b".")

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        readable = wait_readable([self._wake_r, *self._channel_fds()], timeout)
        with contextlib.suppress(OSError):
            while raw_read(self._wake_r, 4096):
                pass
        signals: list[int] = []
        while not self.SIG_QUEUE.empty():
            sig = self.SIG_QUEUE.get_nowait()
            if sig == self.WAKEUP_REQUEST:
                continue
            if sig == signal.SIGHUP and sig in signals:
                continue  # a burst of HUPs is one reload
            signals.append(sig)
        self._read_channel([fd for fd in readable if fd != self._wake_r])
        return signals

    def _channel_fds(self) -> list[int]:
        raise NotImplementedError

    def _read_channel(self, fds: list[int] | None = None) -> None:
        raise NotImplementedError


class PipeLoop:
    """gunicorn 23: a list of signals, a self-pipe, and `sleep()` between turns."""

    SIG_QUEUE: list[int]
    PIPE: list[int]
    _chld_pending = False

    def _init_loop(self) -> None:
        pass  # gunicorn's PIPE, made by init_signals, is the wake pipe

    def _loop_fds(self) -> tuple[int, ...]:
        return ()  # gunicorn 23 leaves its PIPE open in workers: so does rollover

    def init_signals(self) -> None:
        super().init_signals()  # type: ignore[misc]
        signal.signal(signal.SIGCHLD, self.signal_chld)

    def signal(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGHUP and sig in self.SIG_QUEUE:
            return  # a burst of HUPs is one reload
        super().signal(sig, frame)  # type: ignore[misc]

    def signal_chld(self, sig: int, frame: Any) -> None:
        """SIGCHLD: no reaping inside the handler (see the module docstring)."""
        self._chld_pending = True
        self.wakeup()

    def wakeup(self) -> None:
        with contextlib.suppress(OSError):
            raw_write(self.PIPE[1], b".")

    def sleep(self) -> None:
        readable: list[int] = []
        try:
            readable = wait_readable([self.PIPE[0], *self._channel_fds()], 1.0)
            # bounded: gunicorn 23's workers inherit this pipe's write end, so app code
            # can flood it; what is left wakes the next turn
            for _ in range(16):
                if not raw_read(self.PIPE[0], 4096):
                    break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise
        except KeyboardInterrupt:
            sys.exit()
        self._read_channel([fd for fd in readable if fd != self.PIPE[0]])
        if self._chld_pending:
            self._chld_pending = False
            self.reap_workers()

    def stop(self, graceful: bool = True) -> None:
        # gunicorn 23's stop() waits for its SIGCHLD handler to reap the workers
        signal.signal(signal.SIGCHLD, lambda sig, frame: self.reap_workers())
        super().stop(graceful)  # type: ignore[misc]

    def reap_workers(self) -> None:
        raise NotImplementedError

    def _channel_fds(self) -> list[int]:
        raise NotImplementedError

    def _read_channel(self, fds: list[int] | None = None) -> None:
        raise NotImplementedError


Loop: type = QueueLoop if QUEUED_SIGNALS else PipeLoop


def reap_dirty_arbiter(arbiter: Any, wpid: int, status: int) -> bool:
    """True if `wpid` is gunicorn's dirty arbiter (25.3+), now forgotten and reported."""
    if not wpid or getattr(arbiter, "dirty_arbiter_pid", 0) != wpid:
        return False
    handle = getattr(arbiter, "handle_dirty_arbiter_exit", None)
    if handle is not None:
        handle(wpid, status)
        return True
    # 25.3 has no handler for it yet: what 26's does
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        arbiter.log.error("Dirty arbiter (pid:%s) exited with code %s", wpid,
                          os.WEXITSTATUS(status))
    elif os.WIFSIGNALED(status):
        arbiter.log.warning("Dirty arbiter (pid:%s) killed by signal %s", wpid,
                            os.WTERMSIG(status))
    else:
        arbiter.log.info("Dirty arbiter (pid:%s) exited", wpid)
    arbiter.dirty_arbiter_pid = 0
    arbiter.dirty_arbiter = None
    return True


def forward_hup_to_dirty_arbiter(arbiter: Any) -> None:
    if getattr(arbiter, "dirty_arbiter_pid", 0):
        arbiter.kill_dirty_arbiter(signal.SIGHUP)


def count_reload(arbiter: Any) -> None:
    """gunicorn 25.3+ counts reloads for its control socket (`gunicornc show stats`)."""
    stats = getattr(arbiter, "_stats", None)
    if isinstance(stats, dict) and "reloads" in stats:
        stats["reloads"] += 1


def emit_backlog_metric(arbiter: Any) -> None:
    """The `gunicorn.backlog` histogram gunicorn's manage_workers sends (24.1+)."""
    try:
        enabled = arbiter.cfg.enable_backlog_metric
    except AttributeError:
        return
    if not enabled:
        return
    backlog = sum(lnr.get_backlog() or 0 for lnr in arbiter.LISTENERS
                  if hasattr(lnr, "get_backlog"))
    if backlog >= 0:
        arbiter.log.debug(f"socket backlog: {backlog}",
                          extra={"metric": "gunicorn.backlog", "value": backlog,
                                 "mtype": "histogram"})
