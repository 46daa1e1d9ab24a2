"""Fixtures for the real-process tests (see tests/harness.py).

The interpreter matrix: a test marked `@pytest.mark.interpreters` runs once on the Python
running pytest and once on each of `matrix.PYTHONS` (3.12, 3.13), ids `[py3.12]`...; its
masters (the `masters` fixture, and tests/test_refresh_process.py's venvs) run on that
interpreter, from a venv of it made once (`matrix.python_venv`, cached in `.cache/`). The
marker's keyword arguments narrow the other interpreters to some of the test's parameters:
`@pytest.mark.interpreters(keepalive=True)` runs the `keepalive=False` case on the running
Python only (a tuple names several values). A missing interpreter skips with one line per
interpreter (`-ra`), and fails under `CI=true`.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import matrix
import pytest
from harness import AppCode, Master

# The interpreter running pytest, as "3.11"
CURRENT = f"{sys.version_info[0]}.{sys.version_info[1]}"
# A Python warning about fork() (3.12+: a process with threads), or raised in rollover's code
PYTHON_WARNING = re.compile(r"Warning: .*\bfork\(\)|/rollover/\S+\.py:\d+: \w*Warning")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interpreters(**only): also run on Python 3.12 and 3.13 (tests/conftest.py); keyword "
        "arguments restrict those runs to the parameters given",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (metafunc.definition.get_closest_marker("interpreters") is not None
            and "interpreter" in metafunc.fixturenames):
        pythons = [CURRENT, *(p for p in matrix.PYTHONS if p != CURRENT)]
        metafunc.parametrize("interpreter", pythons, ids=[f"py{p}" for p in pythons])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the other interpreters' runs of parameters the marker leaves out."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("interpreters")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (marker is not None and params.get("interpreter", CURRENT) != CURRENT
                and not all(_matches(params.get(k), v) for k, v in marker.kwargs.items())):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _matches(value: object, wanted: object) -> bool:
    """A parameter `value` is what the marker names: that value, or one of a tuple."""
    return value in wanted if isinstance(wanted, tuple) else value == wanted


def missing_interpreter(minor: str) -> str | None:
    """Why the matrix cannot run on Python `minor` here (None: it can)."""
    if minor == CURRENT or matrix.find_python(minor) is not None:
        return None
    return (f"Python {minor} matrix: no Python {minor} found (looked in $PYENV_ROOT and "
            f"~/.pyenv versions, and for python{minor} on PATH)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test's run on a missing interpreter (fail it under CI=true). Raised here, not
    in a fixture, so that `-ra` reports every such skip on one line per interpreter."""
    minor = getattr(getattr(item, "callspec", None), "params", {}).get("interpreter")
    why = missing_interpreter(minor) if isinstance(minor, str) else None
    if why is not None:
        if in_ci():
            pytest.fail(f"{why}, and CI=true: it must run in CI", pytrace=False)
        pytest.skip(why)


@pytest.fixture
def interpreter() -> str:
    """The Python the test's masters run on ("3.12"); parametrized for tests marked
    `interpreters`, the running one otherwise."""
    return CURRENT


@pytest.fixture(scope="session")
def python_venvs() -> Callable[[str], Path]:
    """`python_venvs("3.12")`: that interpreter's venv (tests/matrix.py), built once;
    skips the test when the interpreter is missing (fails under CI=true)."""

    def get(minor: str) -> Path:
        try:
            return matrix.python_venv(minor)
        except matrix.MissingInterpreter as exc:
            if in_ci():
                pytest.fail(f"Python {minor} matrix: {exc}, and CI=true: it must run in CI",
                            pytrace=False)
            pytest.skip(f"Python {minor} matrix: {exc}")

    return get


@pytest.fixture
def interpreter_venv(interpreter: str, python_venvs: Callable[[str], Path]) -> Path | None:
    """The venv the test's masters run from: None (this interpreter's) or the venv of the
    `interpreter` it is parametrized with."""
    return None if interpreter == CURRENT else python_venvs(interpreter)


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
def masters(
    tmp_path: Path, request: pytest.FixtureRequest, interpreter: str,
    interpreter_venv: Path | None,
) -> Iterator[Callable[..., Master]]:
    """`masters(app, **Master kwargs)`: start a master; every one is stopped at teardown.
    Its `venv` defaults to the test's interpreter's (see the module docstring); on another
    interpreter its processes run with PYTHONWARNINGS=default, and a warning about fork() or
    from rollover's code in its log fails the test.

    When the test failed, the tail of each master's log is printed (shown by pytest in
    the report's "Captured stdout teardown" section).
    """
    started: list[Master] = []

    def start(app: AppCode, **kwargs: Any) -> Master:
        workdir = tmp_path / f"master{len(started) + 1}"
        workdir.mkdir()
        kwargs.setdefault("venv", interpreter_venv)
        if interpreter_venv is not None:
            # the matrix shows warnings Python hides by default (3.12's os.fork() in a
            # process with threads, 3.13's importlib deprecations), checked at teardown
            kwargs["env"] = {"PYTHONWARNINGS": "default", **(kwargs.get("env") or {})}
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
    if interpreter_venv is not None and not failed:
        warned = [line for master in started for line in master.log_text().splitlines()
                  if PYTHON_WARNING.search(line)]
        assert not warned, f"Python {interpreter} warned in a master or worker:\n" + "\n".join(
            warned[:10])


@pytest.fixture(scope="session")
def gunicorn_venv() -> Callable[[str], Path]:
    """`gunicorn_venv("26.2.0")`: the venv holding that gunicorn and rollover (editable), built
    once and shared by every test and xdist worker (tests/matrix.py). The first use starts
    every version's build in the background, so the versions after the first are ready
    or nearly so when their tests ask."""
    matrix.prebuild()
    return matrix.gunicorn_venv
