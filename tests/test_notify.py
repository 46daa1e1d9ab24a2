"""systemd notify (issue #16): the pure `decide`, then real masters talking to a real
AF_UNIX datagram socket the test binds (a path in tmp_path, or an abstract `@name`).

- READY=1 only once the workers serve (an app with a 1 s boot answers at once when it
  arrives); stock gunicorn's READY=1 comes before such an app answers.
- HUP: RELOADING=1 with MONOTONIC_USEC, STATUS= progress, READY=1 once the roll ended
  (and at once when the HUP's config fails to load); SIGTERM: STOPPING=1.
- A USR2 handoff: the new master sends MAINPID=<its pid> with its READY=1, the old one no
  STOPPING=1; the status file stays (the new master's), and goes on a clean exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import AppCode, Master, http_get, pid_alive, wait_for

from rollover.master import notify
from rollover.master.notify import Sent, View, decide

pytestmark = pytest.mark.process

# --------------------------------------------------------------------------- pure


def test_decide_ready_only_once_all_workers_are_ready() -> None:
    sent = Sent()
    message, sent = decide(sent, View("degraded", 1, ready=1, target=2))
    assert message == "STATUS=starting: 1/2 workers ready, generation 1"
    message, sent = decide(sent, View("idle", 1, ready=2, target=2))
    assert message == "READY=1\nSTATUS=idle: 2 workers, generation 1"
    assert decide(sent, View("idle", 1, ready=2, target=2)) == (None, sent)
    message, _ = decide(sent, View("degraded", 1, ready=1, target=2))
    assert message == "STATUS=degraded: 1/2 workers ready, generation 1"


def test_decide_reload_cycle_and_failed_preparation() -> None:
    sent = Sent(ready=True, status="idle: 2 workers, generation 1")
    message, sent = notify.reloading(sent, 123)
    assert message == "RELOADING=1\nMONOTONIC_USEC=123"
    message, sent = decide(sent, View("rolling", 1, 2, 2, rolling=2, new_ready=0))
    assert message == "STATUS=rolling: 0/2 workers on generation 2"
    message, sent = decide(sent, View("rolling", 1, 2, 2, rolling=2, new_ready=1, canary=99))
    assert message == "STATUS=rolling: 1/2 workers on generation 2, judging canary 99"
    message, sent = decide(sent, View("rolling", 1, 2, 2, rolling=2, new_ready=1,
                                      verdict="canary passed: 0 of 24 failed vs 0 of 80 on "
                                              "the old workers; 20% failing ruled out, "
                                              "p = 0.0047"))
    assert message == ("STATUS=rolling: 1/2 workers on generation 2 (canary passed: 0 of 24 "
                       "failed vs 0 of 80 on the old workers; 20% failing ruled out, "
                       "p = 0.0047)")
    message, sent = decide(sent, View("idle", 2, 2, 2))
    assert message == "READY=1\nSTATUS=idle: 2 workers, generation 2"
    assert not sent.reloading
    # a HUP whose preparation failed: no roll at all, READY=1 on the next update
    _, sent = notify.reloading(sent, 456)
    message, sent = decide(sent, View("idle", 2, 2, 2))
    assert message == "READY=1"


def test_decide_mainpid_with_the_first_ready_and_no_reloading_before_it() -> None:
    sent = Sent(mainpid=77)
    assert notify.reloading(sent, 1) == (None, sent)
    message, sent = decide(sent, View("idle", 3, 2, 2))
    assert message == "READY=1\nMAINPID=77\nSTATUS=idle: 2 workers, generation 3"
    assert sent.mainpid is None


def test_send_never_raises() -> None:
    class Log:
        lines: list[str] = []

        def debug(self, *args: object, **kwargs: object) -> None:
            self.lines.append(str(args[0]))

    log = Log()
    notify.send("/nonexistent/notify.sock", "READY=1", log)
    notify.send("@rollover-test-nobody-listens-" + uuid.uuid4().hex, "READY=1", log)
    assert len(log.lines) == 2


# --------------------------------------------------------------------------- real masters


class Listener:
    """The test's notify socket: datagrams as (monotonic time received, text)."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.received: list[tuple[float, str]] = []
        sock.settimeout(0.05)

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            self.received.append((time.monotonic(), data.decode()))

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str,
             after: int = 0) -> int:
        """Index of the first datagram (from `after` on) matching `predicate`."""

        def found() -> int | None:
            self.poll()
            for i, (_, text) in enumerate(self.received[after:], after):
                if predicate(text):
                    return i + 1  # truthy
            return None

        return wait_for(found, timeout, what=what,
                        on_timeout=lambda: f"; received {self.texts()}") - 1

    def texts(self, after: int = 0) -> list[str]:
        self.poll()
        return [text for _, text in self.received[after:]]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        path = Path("/tmp") / f"rollover-notify-{uuid.uuid4().hex}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Listener(sock, str(path))
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"rollover-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


def answers_at_once(master: Master, within: float) -> bool:
    try:
        status, _ = http_get(master.port, timeout=within)
    except OSError:
        return False
    return status == 200


def ready(text: str) -> bool:
    return "READY=1" in text.splitlines()


def test_ready_when_workers_serve_then_reload_and_stop(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        listener: Listener) -> None:
    app = make_app()
    app.write("v1", boot_delay=1.0)
    master = masters(app, workers=2, env={"NOTIFY_SOCKET": listener.address})
    i = listener.wait(ready, 20, "READY=1")
    assert answers_at_once(master, 2.0), f"READY=1 before the app answers{master.tail()}"
    status = master.status()
    assert status is not None
    assert sum(w["state"] == "ready" for w in status["workers"]) == 2
    assert not any(ready(t) for t in listener.texts()[:i])
    # gunicorn's own READY=1 never went out: the only READY so far is ours
    assert "Gunicorn arbiter booted" not in "".join(listener.texts())

    app.write("v2", boot_delay=0.3)
    before = len(listener.received)
    hup_at = master.hup()
    r = listener.wait(lambda t: t.startswith("RELOADING=1"), 10, "RELOADING=1", after=before)
    usec = int(listener.received[r][1].split("MONOTONIC_USEC=")[1].split()[0])
    assert abs(usec / 1e6 - hup_at) < 5  # CLOCK_MONOTONIC, like time.monotonic()
    end = listener.wait(ready, 30, "READY=1 after the roll", after=r)
    status = master.status()
    assert status is not None and status["rollout"] is None
    assert status["last_rollout"]["result"] == "succeeded"
    statuses = [t for t in listener.texts(r)[: end - r + 1] if "STATUS=rolling" in t]
    assert len(statuses) >= 2, listener.texts(r)
    assert f"STATUS=idle: 2 workers, generation {status['generation']}" in listener.texts(end)[0]

    os.kill(master.pid, signal.SIGTERM)
    assert master.wait_exit(30) == 0
    listener.wait(lambda t: "STOPPING=1" in t, 5, "STOPPING=1", after=end)
    assert not master.status_path.exists(), "a clean exit leaves no status file"


def test_stock_gunicorn_is_ready_before_the_app_answers(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        listener: Listener) -> None:
    app = make_app()
    app.write("v1", boot_delay=1.5)
    master = masters(app, workers=2, config=None, env={"NOTIFY_SOCKET": listener.address})
    listener.wait(ready, 20, "gunicorn's READY=1")
    assert not answers_at_once(master, 0.5), \
        "stock gunicorn's READY=1 came after the app answered"
    master.wait_serving()


def test_abstract_socket_and_a_hup_whose_config_fails(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        abstract_listener: Listener, tmp_path: Path) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.2)
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("from rollover.hooks import *  # noqa\n")
    master = masters(app, workers=2, config=str(config),
                     env={"NOTIFY_SOCKET": abstract_listener.address})
    i = abstract_listener.wait(ready, 20, "READY=1")
    config.write_text("from rollover.hooks import *  # noqa\nworkers = (\n")
    master.hup()
    r = abstract_listener.wait(lambda t: t.startswith("RELOADING=1"), 10, "RELOADING=1",
                               after=i + 1)
    abstract_listener.wait(ready, 10, "READY=1 after the failed HUP", after=r)
    status = master.wait_status(lambda s: s["last_rollout"] is not None, 10)
    error = status["last_rollout"]["error"]
    assert f"{config}:" in error and "SyntaxError" in error, error


def test_usr2_handoff_mainpid_and_status_file(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        listener: Listener) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.2)
    master = masters(app, workers=2, env={"NOTIFY_SOCKET": listener.address})
    i = listener.wait(ready, 20, "READY=1")
    os.kill(master.pid, signal.SIGUSR2)
    pid2 = Path(f"{master.pidfile}.2")
    new_pid = wait_for(lambda: pid2.exists() and pid2.read_text().strip(), 20,
                       what="the new master's pidfile")
    j = listener.wait(lambda t: f"MAINPID={new_pid}" in t, 30, "MAINPID", after=i + 1)
    assert ready(listener.texts(j)[0])
    os.kill(master.pid, signal.SIGTERM)
    assert master.wait_exit(30) == 0

    def promoted() -> bool:
        status = master.status()
        return status is not None and status["pid"] == int(new_pid)

    wait_for(promoted, 20, what="the new master's status at the normal path")
    assert not any("STOPPING=1" in t for t in listener.texts(i)), listener.texts(i)
    k = len(listener.received)
    os.kill(int(new_pid), signal.SIGTERM)
    wait_for(lambda: not pid_alive(int(new_pid)), 30, what="the new master to exit")
    listener.wait(lambda t: "STOPPING=1" in t, 5, "STOPPING=1 of the new master", after=k)
    assert not master.status_path.exists()


def test_when_ready_fallback_says_gunicorns_ready_went_out_early(
        make_app: Callable[..., AppCode], masters: Callable[..., Master],
        listener: Listener, tmp_path: Path) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.2)
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("from rollover.hooks import *  # noqa\n\n"
                      "def on_starting(server):  # replaces rollover's, unchained\n"
                      "    pass\n")
    master = masters(app, workers=2, config=str(config),
                     env={"NOTIFY_SOCKET": listener.address})
    listener.wait(lambda t: "Gunicorn arbiter booted" in t, 20, "gunicorn's own READY=1")
    master.wait_serving()
    wait_for(lambda: "activated in when_ready, after gunicorn sent systemd READY=1"
             in master.log_text(), 10, what="the warning", on_timeout=master.tail)
