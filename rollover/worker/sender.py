"""A worker's end of its pipe to the master: `send(message)`, which never raises or blocks.

The master makes one pipe per worker right before it forks it (`rollover.master.channel`); the
worker inherits the write end, named here by `use()` in the master just before the fork.
Only that worker's messages travel on it, so the master knows the sender by the pipe, not
by what a message says. A process the worker forks in turn (the app's own subprocesses)
is disconnected (`disconnect()`, from the fork hook): it has nothing to tell the master.

Writes are non-blocking: a full pipe drops the message (a worker must never wait on its
master; what matters is sent again).

`unlisten()` says, once, that the worker will accept no connection any more (its listening
sockets are out of its loop): the master counts a retired worker as gone from the accept
set only then, or when it exits (see `rollover.core.rollout`).
"""

from __future__ import annotations

import contextlib
import os

from rollover.core.messages import Message, Unlisten, encode

__all__ = ["disconnect", "send", "unlisten", "use"]

_fd: int | None = None
_unlistened = False


def use(fd: int | None) -> None:
    """Master side, around a fork: the write end the next forked worker will own."""
    global _fd
    _fd = fd


def disconnect() -> None:
    """In a process forked by a worker: close the inherited write end."""
    global _fd
    fd, _fd = _fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def send(message: Message) -> None:
    """Tell the master. Never raises: a worker must not die of telling."""
    fd = _fd
    if fd is None:
        return
    with contextlib.suppress(Exception):
        os.write(fd, encode(os.getpid(), message))


def unlisten() -> None:
    """Tell the master, once, that this worker accepts no connection any more. Call it only
    from the thread that accepts, after the last accept: never raises."""
    global _unlistened
    if not _unlistened:
        _unlistened = True
        send(Unlisten())
