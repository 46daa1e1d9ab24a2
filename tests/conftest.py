"""Fixtures for the real-process tests (see tests/harness.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import matrix
import pytest
from harness import AppCode, Master


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so fixtures know whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., AppCode]:
    """`make_app(kind="wsgi")`: an app directory of its own under the test's tmp dir."""
    count = 0

    def make(kind: str = "wsgi") -> AppCode:
        nonlocal count
        count += 1
        return AppCode(tmp_path / f"app{count}", kind)

    return make


@pytest.fixture
def masters(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Master]]:
    """`masters(app, **Master kwargs)`: start a master; every one is stopped at teardown.

    When the test failed, the tail of each master's log is printed (shown by pytest in
    the report's "Captured stdout teardown" section).
    """
    started: list[Master] = []

    def start(app: AppCode, **kwargs: Any) -> Master:
        workdir = tmp_path / f"master{len(started) + 1}"
        workdir.mkdir()
        master = Master(workdir, app, **kwargs)
        started.append(master)
        return master.start()

    yield start

    for master in started:
        master.stop()
    failed = _failed(request)
    for master in started:
        if failed:
            print(master.tail(120))
        if master.orphans:
            message = (
                f"master {master.pid} left workers {master.orphans} running after it "
                f"exited (killed by the harness)"
            )
            print(message)
            warnings.warn(message, stacklevel=1)


@pytest.fixture(scope="session")
def gunicorn_venv() -> Callable[[str], Path]:
    """`gunicorn_venv("26.2.0")`: the venv holding that gunicorn and rollover (editable), built
    once and shared by every test and xdist worker (tests/matrix.py). The first use starts
    every version's build in the background, so the versions after the first are ready
    or nearly so when their tests ask."""
    matrix.prebuild()
    return matrix.gunicorn_venv
