"""Roll metrics through gunicorn's statsd instrumentation (`--statsd-host`).

A UDP socket on loopback stands in for statsd; a real master rolls once successfully and
once onto code that fails to import, and the datagrams must name both outcomes.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from harness import AppCode, Load, Master, run_cli, wait_for

pytestmark = pytest.mark.process

BOOT = 1.0


@pytest.fixture
def statsd() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return into
        into.extend(line for line in data.decode(errors="replace").splitlines() if line)


def wait_metric(sock: socket.socket, seen: list[str], pattern: str, timeout: float = 10) -> str:
    regex = re.compile(pattern)

    def find() -> str | None:
        drain(sock, seen)
        return next((m for m in seen if regex.fullmatch(m)), None)

    return wait_for(find, timeout, what=f"a metric matching {pattern!r}",
                    on_timeout=lambda: f" (received {seen[-20:]})")


def test_roll_metrics_reach_statsd(
    statsd: socket.socket,
    make_app: Callable[..., AppCode],
    masters: Callable[..., Master],
) -> None:
    port = statsd.getsockname()[1]
    app = make_app()
    app.write("v1", boot_delay=BOOT)
    master = masters(app, workers=2,
                     extra_args=["--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "web"])
    master.wait_serving()
    seen: list[str] = []

    app.write("v2", boot_delay=BOOT)
    started = time.monotonic()
    result = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
    elapsed_ms = (time.monotonic() - started) * 1000
    assert result.returncode == 0, result.stderr
    wait_metric(statsd, seen, r"web\.rollover\.rollouts\.started:1\|c(\|@1(\.0)?)?")
    wait_metric(statsd, seen, r"web\.rollover\.rollouts\.succeeded:1\|c(\|@1(\.0)?)?")
    duration = wait_metric(statsd, seen, r"web\.rollover\.rollout\.duration:[\d.]+\|h")
    value = float(duration.split(":")[1].split("|")[0])
    assert 0 < value <= elapsed_ms + 1000, (value, elapsed_ms)

    app.write("v3", boot_delay=BOOT, error="broken release")
    result = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    wait_metric(statsd, seen, r"web\.rollover\.rollouts\.aborted:1\|c(\|@1(\.0)?)?")
    assert sum(1 for m in seen if ".rollout.duration:" in m) == 2
    assert not [m for m in seen if ".rollouts.superseded" in m]


def test_recycles_reach_statsd(
    statsd: socket.socket,
    make_app: Callable[..., AppCode],
    masters: Callable[..., Master],
) -> None:
    port = statsd.getsockname()[1]
    app = make_app()
    app.write("v1", boot_delay=0.3)
    master = masters(app, workers=2,
                     extra_args=["--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "web",
                                 "--max-requests", "50", "--max-requests-jitter", "0"])
    master.wait_serving()
    seen: list[str] = []
    with Load(master.port, clients=2, keepalive=True, think=0.01) as load:
        wait_metric(statsd, seen, r"web\.rollover\.recycles:1\|c(\|@1(\.0)?)?", timeout=20)
    assert load.failed() == [], load.describe()


def test_a_failed_canary_reaches_statsd(
    statsd: socket.socket,
    make_app: Callable[..., AppCode],
    masters: Callable[..., Master],
) -> None:
    from test_canary_roll import write

    port = statsd.getsockname()[1]
    app = make_app()
    write(app, "v1", boot=0.3)
    master = masters(app, workers=2,
                     extra_args=["--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "web"])
    master.wait_status(lambda s: s["state"] == "idle", 30, "both workers READY")
    seen: list[str] = []
    # light load: gunicorn's own per-request datagrams must not overflow the socket
    statsd.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    with Load(master.port, clients=2, keepalive=False, think=0.02):
        write(app, "v2", status="500 Internal Server Error", boot=0.3)
        result = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    wait_metric(statsd, seen, r"web\.rollover\.canary\.failed:1\|c(\|@1(\.0)?)?")
    # which rule decided
    wait_metric(statsd, seen, r"web\.rollover\.canary\.rule\.significant:1\|c(\|@1(\.0)?)?")
    wait_metric(statsd, seen, r"web\.rollover\.rollouts\.aborted:1\|c(\|@1(\.0)?)?")
