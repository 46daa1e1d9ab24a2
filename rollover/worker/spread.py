"""Sending keep-alive clients toward the canary: a board the master writes, workers read.

A keep-alive client stays on the worker it is connected to; behind a proxy with upstream
keep-alive, a new worker may see no new connection for a long time. While the canary's
window is open, every old worker answers one in `every` (the old workers + 1) of its
requests with ``Connection: close``: its clients reconnect, and the accepts spread over
all workers, the canary included.

The board is a few bytes of shared memory (a memfd), mapped by the master before it forks
any worker: bytes 0-3 the canary's pid, byte 4 `every` (0: the window is closed). A worker
reads one byte per request: no syscall. Only the master writes it: each forked process
maps it again read-only and closes the file (`seal_in_child`, from the fork hook), so app
code that writes to it gets a TypeError and cannot open a canary window of its own.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile

__all__ = ["Spreader", "close_window", "create", "open_window", "seal_in_child",
           "window_open"]

_FORMAT = "<IB"
_SIZE = struct.calcsize(_FORMAT)
_board: mmap.mmap | None = None
_fd: int | None = None  # the master's file behind the board (closed in every child)


def create() -> None:
    """Master side, before the first fork."""
    global _board, _fd
    if _board is not None:
        return
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("rollover-canary-board")  # close-on-exec
    else:
        with tempfile.TemporaryFile() as tmp:
            fd = os.dup(tmp.fileno())
    os.ftruncate(fd, _SIZE)
    _board, _fd = mmap.mmap(fd, _SIZE), fd  # MAP_SHARED, read-write: the master's


def seal_in_child() -> None:
    """In a process forked by the master: the board again, read-only; the file closed."""
    global _board, _fd
    board, fd = _board, _fd
    if board is None or fd is None:
        return
    try:
        _board = mmap.mmap(fd, _SIZE, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        _board = None  # no board: no window seen (never a writable one)
    finally:
        _fd = None
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(Exception):
            board.close()


def open_window(canary: int, every: int) -> None:
    if _board is not None:
        struct.pack_into(_FORMAT, _board, 0, canary, max(2, min(every, 255)))


def window_open() -> bool:
    """Worker side: whether a canary is being judged now."""
    board = _board
    return board is not None and bool(board[4])


def close_window() -> None:
    if _board is not None:
        struct.pack_into(_FORMAT, _board, 0, 0, 0)


class Spreader:
    """Worker side: `should_close()` for each request, true for one in `every` of them
    while the window is open and this worker is not the canary."""

    __slots__ = ("_count", "_pid")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._count = 0

    def should_close(self) -> bool:
        board = _board
        if board is None or not board[4]:
            return False
        canary, every = struct.unpack_from(_FORMAT, board)
        if canary == self._pid or not every:
            return False
        self._count += 1
        return self._count % every == 0
