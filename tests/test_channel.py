"""The master's ends of the workers' pipes (`rollover.master.channel`), on real pipes.

A worker is simulated by writing to the write end the channel hands `rollover.worker.sender`
before a fork; `attach(pid)` then files the pipe under that pid, as the master does after
forking. The clock is a fake one, for the rate limit on warnings.
"""

from __future__ import annotations

import os

import pytest

from rollover.core.messages import MAX_LINE, Counts, Ready, Recycle, encode
from rollover.core.outcomes import Outcomes
from rollover.master.channel import READ_BUDGET, WARN_EVERY, Channel, Delivery
from rollover.worker import sender


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def channel(clock: Clock) -> Channel:
    ch = Channel(clock)
    yield ch
    for pid in list(ch._by_pid):
        ch.close(pid)
    sender.disconnect()


def worker(channel: Channel, pid: int) -> int:
    """A pipe for worker `pid`: its write end (a dup, as the forked worker would hold)."""
    channel.prepare()
    assert sender._fd is not None
    write_fd = os.dup(sender._fd)
    channel.attach(pid)
    assert sender._fd is None  # the master keeps no write end
    os.set_blocking(write_fd, False)
    return write_fd


def write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def test_a_workers_messages_arrive_under_its_pid(channel: Channel) -> None:
    fd = worker(channel, 101)
    write(fd, encode(101, Ready()) + encode(101, Counts(Outcomes(3, 3, 0, 0, 0))))
    deliveries, problems = channel.read()
    assert deliveries == [Delivery(101, Ready()), Delivery(101, Counts(Outcomes(3, 3)))]
    assert problems == []
    os.close(fd)


def test_a_message_for_another_pid_is_dropped_naming_both(channel: Channel) -> None:
    fd = worker(channel, 101)
    worker(channel, 202)
    write(fd, encode(202, Recycle("forged")) + encode(101, Ready()))
    deliveries, problems = channel.read()
    assert deliveries == [Delivery(101, Ready())]
    assert len(problems) == 1
    assert "worker 101" in problems[0] and "claims to be worker 202" in problems[0]
    os.close(fd)


def test_a_line_split_across_reads_is_joined(channel: Channel) -> None:
    fd = worker(channel, 101)
    line = encode(101, Recycle("max_requests: served 10 of 10"))
    write(fd, line[:7])
    assert channel.read() == ([], [])
    write(fd, line[7:])
    assert channel.read()[0] == [Delivery(101, Recycle("max_requests: served 10 of 10"))]
    os.close(fd)


def test_an_over_long_line_is_dropped_up_to_its_newline(channel: Channel) -> None:
    fd = worker(channel, 101)
    write(fd, b"x" * (MAX_LINE * 3))
    deliveries, problems = channel.read()
    assert deliveries == [] and len(problems) == 1 and "over" in problems[0]
    write(fd, b"y" * 100 + b"\n" + encode(101, Ready()))  # the rest of it, then a message
    assert channel.read()[0] == [Delivery(101, Ready())]
    assert len(channel._by_pid[101].buffer) == 0
    os.close(fd)


def test_a_flood_is_read_in_bounded_bites_and_warned_about_once(
        channel: Channel, clock: Clock) -> None:
    flooder = worker(channel, 101)
    quiet = worker(channel, 202)
    junk = b"[" * 1000 + b"\n"
    written = sum(write(flooder, junk) for _ in range(200))  # until the pipe is full
    assert written > READ_BUDGET / 2
    write(quiet, encode(202, Ready()))
    warnings: list[str] = []
    for _ in range(50):
        deliveries, problems = channel.read()
        warnings += problems
        assert all(d.pid == 202 for d in deliveries)
        clock.now += 0.1
        write(flooder, junk * 20)
    assert len(warnings) == 1, warnings  # 5 s of flood, one line
    clock.now += WARN_EVERY
    write(flooder, junk)
    problems = channel.read()[1]
    assert len(problems) == 1 and "more dropped" in problems[0]
    os.close(flooder)
    os.close(quiet)


def test_a_closed_pipe_is_no_longer_polled(channel: Channel) -> None:
    fd = worker(channel, 101)
    write(fd, encode(101, Ready()))
    os.close(fd)
    assert channel.read()[0] == [Delivery(101, Ready())]
    assert channel.fds() == []  # at end of file: poll would wake the master for ever
    channel.close(101)
    assert channel._by_pid == {}


def test_pipes_of_forgotten_workers_are_closed(channel: Channel) -> None:
    fds = [worker(channel, pid) for pid in (101, 202, 303)]
    channel.keep_only([202])
    assert list(channel._by_pid) == [202]
    for fd in fds:
        os.close(fd)


def test_the_sender_never_raises(channel: Channel) -> None:
    sender.use(None)
    sender.send(Ready())  # not connected: nothing
    r, w = os.pipe()
    os.close(r)
    sender.use(w)
    sender.send(Ready())  # EPIPE (SIGPIPE is ignored by Python): swallowed
    os.close(w)
    sender.send(Ready())  # EBADF: swallowed
    sender.use(None)
