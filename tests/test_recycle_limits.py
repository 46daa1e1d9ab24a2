"""The worker's side of recycling: which limit is due, and how max_requests is taken over."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from rollover.core import messages
from rollover.core.messages import Counts
from rollover.core.outcomes import Outcomes
from rollover.settings import resolve
from rollover.worker.counting import Tally, counted_wsgi
from rollover.worker.recycle import HARD_CAP_FACTOR, Limits, due, take_limits

MIB = 1024 * 1024


def settings(**values):
    cfg = Config()
    return resolve(cfg, {f"rollover_{k}": v for k, v in values.items()}, {})


def test_nothing_is_due_below_every_limit() -> None:
    limits = Limits(max_requests=100, max_rss=100 * MIB, max_age=60.0)
    assert due(limits, 99, 99 * MIB, 59.9) is None
    assert not Limits().any and due(Limits(), 10**9, 10**12, 10**6) is None


def test_each_limit_names_itself_and_turns_overdue_at_the_hard_cap() -> None:
    limits = Limits(max_requests=100, max_rss=100 * MIB, max_age=60.0)
    reached = due(limits, 100, None, 0)
    assert reached is not None and reached.reason == "max_requests: served 100 of 100"
    assert not reached.overdue
    overdue = due(limits, 100 * HARD_CAP_FACTOR, None, 0)
    assert overdue is not None and overdue.overdue
    rss = due(limits, 0, 130 * MIB, 0)
    assert rss is not None and rss.reason.startswith("max_worker_rss: 130 MiB")
    age = due(limits, 0, None, 61)
    assert age is not None and age.reason == "max_worker_age: up 61s, limit 60s"


def worker(max_requests: int, **cfg_values):
    cfg = SimpleNamespace(max_requests=max_requests, **cfg_values)
    return SimpleNamespace(cfg=cfg, max_requests=max_requests + 7 if max_requests else
                           sys.maxsize)


def test_max_requests_is_taken_over_with_gunicorns_jitter() -> None:
    w = worker(1000)
    limits = take_limits(w, settings())
    assert limits.max_requests == 1007  # what gunicorn drew for this worker
    assert w.max_requests == sys.maxsize  # the class's own exit is off


def test_uvicorns_copy_of_the_limit_is_switched_off_too() -> None:
    w = worker(1000)
    w.config = SimpleNamespace(limit_max_requests=1007, limit_max_requests_jitter=0)
    take_limits(w, settings())
    assert w.config.limit_max_requests is None


def test_recycle_off_leaves_max_requests_to_gunicorn() -> None:
    w = worker(1000)
    limits = take_limits(w, settings(recycle=False))
    assert limits.max_requests is None and w.max_requests == 1007


def test_age_gets_a_jitter_of_a_tenth_by_default() -> None:
    ages = {take_limits(worker(0), settings(max_worker_age=100),
                        random.Random(seed)).max_age for seed in range(20)}
    assert all(a is not None and 100 <= a <= 110 for a in ages) and len(ages) == 20
    fixed = take_limits(worker(0), settings(max_worker_age=100, max_worker_age_jitter=0))
    assert fixed.max_age == 100


def test_counting_wsgi_by_class() -> None:
    tally = Tally()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("boom")
        start_response({"/": "200 OK", "/missing": "404 Not Found"}.get(path, "503 Busy"), [])
        return [b""]

    counted = counted_wsgi(app, tally)
    for path in ["/", "/", "/missing", "/other"]:
        counted({"PATH_INFO": path}, lambda *a: None)
    with pytest.raises(RuntimeError):
        counted({"PATH_INFO": "/boom"}, lambda *a: None)
    assert tally.snapshot() == Outcomes(requests=5, ok=2, client_error=1, server_error=1,
                                        failed=1)
    sent = messages.decode(messages.encode(7, Counts(tally.snapshot())).rstrip(b"\n"))
    assert sent == messages.Envelope(7, Counts(tally.snapshot()))


def test_errors_wake_the_reporter_only_while_a_canary_is_judged() -> None:
    from rollover.worker import spread
    from rollover.worker.recycle import Reporter

    calls: list[str] = []
    tally = Tally()
    counted = counted_wsgi(lambda environ, start: [start(environ["status"], []) or b""],
                           tally)
    tally.on_error = lambda: calls.append("error")
    for status in ["200 OK", "404 Not Found", "500 Oops", "503 Busy"]:
        counted({"status": status}, lambda *a: None)
    assert calls == ["error", "error"]

    reporter = Reporter(SimpleNamespace(alive=False), Tally(), Limits(),
                        lambda *a: None)
    spread.create()
    try:
        spread.close_window()
        reporter._error()
        assert not reporter._wake.is_set()
        spread.open_window(99999, 3)
        reporter._error()
        assert reporter._wake.is_set()
    finally:
        spread.close_window()
