"""The peers' own test suites, run against rollover: is it a drop-in?

a. For every supported gunicorn, that version's own `tests/test_arbiter.py` (from its sdist)
   with `gunicorn.arbiter.Arbiter` rebound to `rollover.master.arbiter.RollingArbiter`, in that
   version's venv (tests/matrix.py): every test must pass. Each version's suite also runs
   once as shipped (no rebind), as a baseline: a test failing there fails for a reason of
   this environment, not rollover's.
b. uvicorn-worker's own suite (its sdist) against gunicorn 27 with rollover's hooks: its
   tests start `gunicorn -k uvicorn_worker.UvicornWorker ...` with no `-c`, so
   `GUNICORN_CMD_ARGS="-c python:rollover.hooks"` in their environment switches rollover
   on (gunicorn reads a config from it when the command line has none); a plugin added
   to their conftest checks that every master's log says rollover was active.

An exclusion is a line in `EXCLUDED` naming the gunicorn test and why its assertion
cannot hold for rollover's arbiter (never to hide a failure that is rollover's to fix).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matrix
import pytest
from harness import exit_deadline

pytestmark = pytest.mark.process

# "<gunicorn version or *>::<node id>" -> why the gunicorn test's assertion cannot apply
# to rollover's arbiter. Empty: every test of every version must pass.
EXCLUDED: dict[str, str] = {}

# Appended to the suite's tests/conftest.py (made if it has none): the rebind, and a report
# of what the suite ran against (so a rebind that did not take is not a silent pass).
_REPORT = '''

# --- added by rollover's tests/test_peer_suites.py: what this run tested
def pytest_sessionfinish(session):
    import json
    import os

    import gunicorn
    import gunicorn.arbiter

    cls = gunicorn.arbiter.Arbiter
    with open(os.environ["PEER_SUITE_REPORT"], "w", encoding="utf-8") as fh:
        json.dump({"gunicorn": gunicorn.__version__,
                   "arbiter": f"{cls.__module__}.{cls.__qualname__}"}, fh)
'''

_REBIND = '''

# --- added by rollover's tests/test_peer_suites.py: run this suite on rollover's arbiter
import gunicorn.arbiter as _rollover_gunicorn_arbiter  # noqa: E402
from rollover.master.arbiter import RollingArbiter as _RollingArbiter  # noqa: E402

_rollover_gunicorn_arbiter.Arbiter = _RollingArbiter
'''


@dataclass
class SuiteResult:
    """What a peer suite run reported (from its JUnit XML)."""

    returncode: int
    output: str
    tests: int = 0
    failed: list[str] = field(default_factory=list)  # node id: first line of the message
    skipped: int = 0
    report: dict[str, str] = field(default_factory=dict)  # what the suite's conftest saw

    @property
    def passed(self) -> int:
        return self.tests - len(self.failed) - self.skipped

    def summary(self) -> str:
        lines = [f"{self.passed} passed, {len(self.failed)} failed, {self.skipped} skipped "
                 f"(exit {self.returncode})"]
        lines += [f"  FAILED {f}" for f in self.failed]
        return "\n".join(lines)


def read_junit(path: Path, returncode: int, output: str) -> SuiteResult:
    result = SuiteResult(returncode, output)
    if not path.exists():
        return result
    for case in ET.parse(path).getroot().iter("testcase"):
        result.tests += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            bad = case.find(kind)
            if bad is not None:
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                result.failed.append(f"{name}: {kind}: {message[0] if message else ''}"[:300])
                break
        else:
            if case.find("skipped") is not None:
                result.skipped += 1
    return result


def peer_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment a peer suite runs in: `venv` first on PATH, nothing of ours."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("ROLLOVER_", "PYTEST_", "PYTHON", "VIRTUAL_ENV", "GUNICORN_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_suite(
    venv: Path, cwd: Path, args: list[str], *, env: dict[str, str], timeout: float
) -> SuiteResult:
    junit = cwd / "peer-junit.xml"
    argv = [str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
            "-q", "-rfE", f"--junitxml={junit}", *args]
    # In a session of its own: uvicorn-worker's USR2 test leaves the master gunicorn
    # re-exec'd running after it terminates the old one (so would stock gunicorn); all of
    # the suite's processes go with the session when it ends.
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(exit_deadline(10))
    return read_junit(junit, proc.returncode, out or "")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- a. gunicorn


def excluded_for(version: str) -> dict[str, str]:
    out = {}
    for key, why in EXCLUDED.items():
        which, _, node = key.partition("::")
        if which in ("*", version):
            out[node] = why
    return out


def gunicorn_arbiter_suite(version: str, venv: Path, workdir: Path, *, rebind: bool) -> SuiteResult:
    """Run gunicorn `version`'s tests/test_arbiter.py in `venv`, from `workdir`.

    Only the sdist's `tests/` is extracted (beside no `gunicorn/`, so the conftest of 25.3+
    that puts its parent on sys.path cannot shadow the installed gunicorn)."""
    top = matrix.extract(matrix.sdist("gunicorn", version), workdir, members="tests")
    tests = top / "tests"
    assert (tests / "test_arbiter.py").is_file(), f"no tests/test_arbiter.py in {top}"
    conftest = tests / "conftest.py"
    shipped = conftest.read_text(encoding="utf-8") if conftest.exists() else ""
    conftest.write_text(shipped + (_REBIND if rebind else "") + _REPORT, encoding="utf-8")
    # their own pytest config (pyproject.toml) wants pytest-cov and pytest-asyncio, which
    # test_arbiter.py does not use: a bare one instead, which also pins the rootdir here
    (top / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    args = []
    if rebind:
        for node in excluded_for(version):
            args += ["--deselect", node]
    report = top / "peer-report.json"
    result = run_suite(venv, top, [*args, "tests/test_arbiter.py"],
                       env=peer_env(venv, PEER_SUITE_REPORT=str(report)), timeout=300)
    if report.exists():
        result.report = json.loads(report.read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize("rebind", [False, True], ids=["stock", "rollover"])
@pytest.mark.parametrize("version", matrix.VERSIONS)
def test_gunicorn_arbiter_suite(
    gunicorn_venv: Callable[[str], Path], tmp_path: Path, version: str, rebind: bool
) -> None:
    venv = gunicorn_venv(version)
    result = gunicorn_arbiter_suite(version, venv, tmp_path, rebind=rebind)
    label = f"gunicorn {version} tests/test_arbiter.py ({'rollover' if rebind else 'stock'})"
    print(f"\n[{label}] {result.summary()}")
    arbiter = "rollover.master.arbiter.RollingArbiter" if rebind else "gunicorn.arbiter.Arbiter"
    assert result.report == {"gunicorn": version, "arbiter": arbiter}, _tail(result.output)
    assert result.tests > 0, _tail(result.output)
    assert result.failed == [] and result.returncode == 0, (
        f"{label}: {result.summary()}\n{_tail(result.output)}"
    )


# --------------------------------------------------------------------------- b. uvicorn-worker

# Appended to uvicorn-worker's tests/conftest.py: every master log their tests read must
# say rollover is active (proof that GUNICORN_CMD_ARGS took effect), once it says the master
# is listening (rollover says so before; a log read earlier, as their fixed sleeps do on a
# loaded machine, tells nothing: "-").
_UVICORN_WORKER_CHECK = '''

# --- added by rollover's tests/test_peer_suites.py
import os as _os

import pytest as _pytest

_current = [""]


@_pytest.fixture(autouse=True)
def _rollover_current_test(request):
    _current[0] = request.node.nodeid
    yield


def pytest_collection_modifyitems(session, config, items):
    import tests.test_workers as tw

    if getattr(tw.Process.read_output, "_rollover", False):
        return
    original = tw.Process.read_output

    def read_output(self):
        text = original(self)
        if "rollover" in text and " active: " in text:
            active = "1"
        elif "Listening at" in text:
            active = "0"
        else:
            active = "-"
        with open(_os.environ["PEER_SUITE_REPORT"], "a", encoding="utf-8") as fh:
            fh.write(f"{_current[0]}\\t{active}\\n")
        return text

    read_output._rollover = True
    tw.Process.read_output = read_output
'''


def test_uvicorn_worker_suite_with_rollover_hooks(
    gunicorn_venv: Callable[[str], Path], tmp_path: Path
) -> None:
    version = matrix.UVICORN_WORKER_SUITE_GUNICORN
    venv = gunicorn_venv(version)
    top = matrix.extract(
        matrix.sdist("uvicorn-worker", matrix.UVICORN_WORKER_VERSION), tmp_path / "src"
    )
    conftest = top / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text(encoding="utf-8") + _UVICORN_WORKER_CHECK,
                        encoding="utf-8")
    report = tmp_path / "rollover-active.tsv"
    # --no-control-socket: gunicorn 27 would otherwise open ~/.gunicorn/gunicorn.ctl, one
    # path for every master on the machine (their tests do not use it).
    env = peer_env(venv, GUNICORN_CMD_ARGS="-c python:rollover.hooks --no-control-socket",
                   PEER_SUITE_REPORT=str(report))
    # One test at a time: their tests give a master fixed sleeps (1 s, 1.5 s, 2 s) to start,
    # to fail or to log a signal, which a 2-core machine running the rest of our suite
    # stretches enough without more of their masters starting at once.
    result = run_suite(venv, top, ["tests"], env=env, timeout=600)
    print(f"\n[uvicorn-worker {matrix.UVICORN_WORKER_VERSION} suite, gunicorn {version}, "
          f"rollover hooks] {result.summary()}")

    text = report.read_text(encoding="utf-8") if report.exists() else ""
    reads = [line.split("\t") for line in text.splitlines()]
    # (a test may read the log before its master wrote anything, then again)
    tested = {node for node, _ in reads}
    inactive = sorted({node for node, active in reads if active == "0"}
                      - {node for node, active in reads if active == "1"})
    unknown = sorted(tested - {node for node, active in reads if active != "-"})
    if unknown:
        print(f"[uvicorn-worker suite] read only before their master listened: {unknown}")
    assert reads, f"no master log was read{_tail(result.output)}"
    assert inactive == [], f"masters without rollover active in: {inactive}"
    assert len(unknown) <= len(tested) // 4, f"too few master logs read after listening: {unknown}"
    assert result.tests >= 42, result.summary()
    assert len(tested) >= result.tests - result.skipped, (
        f"only {len(tested)} of {result.tests} tests read a master log"
    )
    assert result.failed == [] and result.returncode == 0, (
        f"{result.summary()}\n{_tail(result.output)}"
    )


def main() -> int:  # pragma: no cover - a manual look at one suite
    """`python tests/test_peer_suites.py VERSION [stock]`: run one arbiter suite, print."""
    import tempfile

    version = sys.argv[1]
    rebind = len(sys.argv) < 3 or sys.argv[2] != "stock"
    with tempfile.TemporaryDirectory() as tmp:
        result = gunicorn_arbiter_suite(version, matrix.gunicorn_venv(version), Path(tmp),
                                        rebind=rebind)
    print(result.output)
    print(json.dumps({"version": version, "rebind": rebind, "summary": result.summary()}))
    return 0 if not result.failed else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
