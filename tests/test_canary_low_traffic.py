"""The canary at the traffic it gets: one request per 0.5 s (a quiet hour), and a steady 1-2%
of errors on old and new code alike (real masters, real clients)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from harness import AppCode, Load, Master, run_cli

pytestmark = pytest.mark.process

# `fail_every`: the 1st, N+1th, 2N+1th... request of a worker answers 500 (0: never): a
# counter, not a random draw, so the background error rate is the same on every run, and
# the canary's first request is one of its errors.
_WSGI = '''\
import itertools, json, os, time
time.sleep({boot!r})
_count = itertools.count(1)

def app(environ, start_response):
    n = next(_count)
    status = {status!r}
    if {fail_every!r} and n % {fail_every!r} == 1:
        status = "500 Internal Server Error"
    body = json.dumps({{"pid": os.getpid(), "version": {version!r}}}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
'''


def write(app: AppCode, version: str, status: str = "200 OK", boot: float = 0.5,
          fail_every: int = 0) -> None:
    app.path.write_text(_WSGI.format(version=version, status=status, boot=boot,
                                     fail_every=fail_every))


def reload(master: Master) -> tuple[int, str]:
    result = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "120")
    return result.returncode, result.stdout + result.stderr


def test_low_traffic_broken_release_is_stopped(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """The issue's case: every page 500s, one request every 0.5 s. The old rule (>= 5
    failures, >= 10 requests in 10 s) said "not judged" and deployed it."""
    app = make_app()
    write(app, "v1")
    master = masters(app, workers=3)
    master.wait_status(lambda s: s["state"] == "idle", 30, "all workers READY")
    with Load(master.port, clients=1, keepalive=False, think=0.5) as load:
        load.run_for(1.0)
        write(app, "v2", status="500 Internal Server Error")
        code, out = reload(master)
        done = load.records()[-1].end
        load.run_for(2.0)
    status = master.status() or {}
    canary = status["last_rollout"]["canary"]
    print(f"\nlow traffic, broken: {out.strip().splitlines()[-1]}; canary {canary}; "
          f"load {load.describe()}")
    assert code == 1, out
    assert "canary failed: " in out, out
    assert canary["verdict"] == "failed" and canary["final"] is True, canary
    assert "; in all it answered " in out, out
    failed = load.failed()
    assert set(failed) <= {"HTTP 500"}, Counter(failed)
    # every 500 a client saw is one the canary answered, by its final counts
    assert len(failed) <= canary["failures"], (len(failed), canary)
    after = load.records(since=done)
    assert after and all(r.ok and r.version == "v1" for r in after), load.describe()
    assert all(w["generation"] == 0 for w in status["workers"]), status["workers"]


def test_low_traffic_good_releases_never_fail(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    write(app, "v0")
    master = masters(app, workers=3)
    master.wait_status(lambda s: s["state"] == "idle", 30, "all workers READY")
    verdicts = []
    with Load(master.port, clients=1, keepalive=False, think=0.5) as load:
        for version in ("v1", "v2", "v3"):
            write(app, version)
            code, _ = reload(master)
            canary = (master.status() or {})["last_rollout"]["canary"]
            verdicts.append((code, canary["verdict"], canary["summary"]))
    print(f"\nlow traffic, good: {verdicts}")
    assert all(code == 0 and verdict in ("passed", "not judged")
               for code, verdict, _ in verdicts), verdicts
    assert load.failed() == [], load.describe()


def test_background_errors_on_both_are_no_failure(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """2% of requests 500 on the old code and on the new one, at moderate load: the
    canary's errors (its first request is one) are no worse than the old workers', three
    rolls, none fails."""
    app = make_app()
    write(app, "v0", fail_every=50)
    master = masters(app, workers=3)
    master.wait_status(lambda s: s["state"] == "idle", 30, "all workers READY")
    verdicts = []
    with Load(master.port, clients=4, keepalive=False, think=0.02) as load:
        load.run_for(1.0)
        for version in ("v1", "v2", "v3"):
            write(app, version, fail_every=50)
            code, _ = reload(master)
            canary = (master.status() or {})["last_rollout"]["canary"]
            verdicts.append((code, canary["verdict"], canary["summary"]))
    print(f"\nbackground 2%: {verdicts}; load {load.describe()}")
    assert all(code == 0 and verdict == "passed" for code, verdict, _ in verdicts), verdicts
    for _, _, summary in verdicts:  # its errors: the app's own 1 in 50 (the first is one)
        failed, _, answered = summary.split(" failed vs ")[0].partition(" of ")
        assert 1 <= int(failed) <= 1 + int(answered) // 50, verdicts
    assert set(load.failed()) <= {"HTTP 500"}
