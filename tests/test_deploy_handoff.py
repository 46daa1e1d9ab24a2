"""`rollover deploy` across a USR2 handoff and pruning, as an operator meets it (issue #12).

One app root, one master started through `<root>/current` with its control socket on;
the scenarios run in file order:

1. v2 by HUP under keep-alive load on /lazy (every request imports a module the worker has
   not imported yet): no answer mixes releases (an old worker after the flip imports from
   its own release), and identical gunicorn/rollover copies give no needs_reexec warning;
2. v3 pinning gunicorn 27.0.0: a USR2 handoff, 0 failed; the new master continues the
   generation and the last rollout, and its control socket answers;
3. v4 with --keep 1 prunes v1, the release the first master started from; v5 by HUP
   succeeds under load, and so does `rollover reload --wait`;
4. a release that fails only live: exit 1, the JSON and the workers show v5 serving.

Then: `--init` from an empty directory to a serving master, the wheel's contents, and units.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    GUNICORN_OTHER,
    ReleaseMaster,
    build_args,
    current_release,
    deploy_env,
    run_deploy,
    stop_live_master,
    wheelhouse,
    write_source,
)
from harness import ROLLOVER_CLI, Load, free_port, http_get, pid_alive, wait_for

from rollover import deploy

pytestmark = pytest.mark.process

CLIENTS = 4
THINK = 0.01


class SocketMaster(ReleaseMaster):
    """A ReleaseMaster with gunicorn's control socket on (in the run dir)."""

    @property
    def control_socket(self) -> Path:
        return self.root / "run" / "gunicorn.ctl"

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--no-control-socket")
        argv[i:i + 1] = ["--control-socket", str(self.control_socket)]
        return argv


@dataclass
class Host:
    root: Path
    sources: Path
    wheels: Path
    master: SocketMaster

    @property
    def port(self) -> int:
        return self.master.port

    def deploy(self, version: str, *extra: str, **source: Any) -> Any:
        src = write_source(self.sources / version, version, lazy=True, **source)
        return run_deploy(self.root, *build_args(self.wheels, src, version), *extra)

    def status(self) -> dict[str, Any]:
        return dict(wait_for(self.master.status, 10, what="the master's status"))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("deploy-handoff")
    root, sources = base / "app", base / "sources"
    first = run_deploy(root, *build_args(wheels, write_source(sources / "v1", "v1",
                                                              lazy=True), "v1"))
    assert first.rc == 0, str(first)  # the first deploy made the root and run/
    master = SocketMaster(root, env={"APP_STAGE": "live", "ROLLOVER_PROBE_PATH": "/healthz"})
    master.start()
    try:
        master.wait_serving()
        yield Host(root, sources, wheels, master)
    finally:
        orphans = stop_live_master(master)
        assert not orphans, f"processes left behind: {orphans}"


class FlipWatch:
    """When `current` changed (polled every 2 ms in a thread)."""

    def __init__(self, current: Path) -> None:
        self.current = current
        self.first = os.readlink(current)
        self.flipped_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.flipped_at is None:
            if os.readlink(self.current) != self.first:
                self.flipped_at = time.monotonic()
            self._stop.wait(0.002)

    def __enter__(self) -> FlipWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_hup_deploy_pins_old_workers_and_warns_nothing(host: Host) -> None:
    log_offset = len(host.master.log_text())
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK, path="/lazy") as load, \
            FlipWatch(host.root / "current") as flip:
        load.wait_requests(30)
        result = host.deploy("v2")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    ok = [r for r in load.records() if r.ok]
    mixed = [r.version for r in ok if len(set((r.version or "/").split("/"))) != 1]
    assert flip.flipped_at is not None
    old_after_flip = [r for r in ok if r.start > flip.flipped_at and r.version == "v1/v1"]
    print(f"\n[hup + lazy imports] {result.seconds:.1f}s, {load.describe()}, "
          f"{len(old_after_flip)} answers of v1 workers after the flip, {len(mixed)} mixed")
    assert result.rc == 0, str(result)
    assert result.json["method"] == "hup", result.json
    assert load.failed() == [], load.describe()
    assert old_after_flip, "no old worker answered after the flip: nothing was tested"
    assert mixed == [], mixed[:5]
    assert set(load.versions_after(done_at)) == {"v2/v2"}
    log = host.master.log_text()[log_offset:]
    assert "needs a re-exec" not in log, log
    refresh = host.status().get("refresh") or {}
    assert refresh.get("needs_reexec") == [], refresh


def test_usr2_handoff_continues_status_and_control_socket(host: Host) -> None:
    before = host.status()
    old_pid = host.master.live_pid()
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK, path="/lazy") as load:
        load.wait_requests(30)
        result = host.deploy("v3", gunicorn=GUNICORN_OTHER)
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[usr2] {result.seconds:.1f}s, {load.describe()}")
    assert result.rc == 0, str(result)
    assert result.json["method"] == "usr2", result.json
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v3/v3"}
    new_pid = host.master.live_pid()
    assert new_pid != old_pid and not pid_alive(old_pid)
    status = wait_for(lambda: (s := host.master.status()) and s["pid"] == new_pid and s,
                      10, what="the new master's status")
    assert status["generation"] == before["generation"] + 1, (before, status)
    assert status["reloads"] == before["reloads"]
    assert status["last_rollout"] and status["last_rollout"]["generation"] == \
        before["last_rollout"]["generation"]
    # `rollover status` names the handoff, with its release, as the last rollout
    assert status["handoff"]["from_pid"] == old_pid, status["handoff"]
    assert status["handoff"]["release"] == os.path.realpath(host.root / "releases" / "v3")
    shown = subprocess.run([str(ROLLOVER_CLI), "status", "--pidfile", str(host.master.pidfile)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert f"last rollout: USR2 handoff from master {old_pid} to generation " \
        f"{status['generation']}" in shown.stdout, shown.stdout + shown.stderr
    # gunicorn captured its start directory through the symlink, not as releases/v2
    assert status["start"]["cwd"] == str(host.root / "current"), status["start"]
    assert status["start"]["chdir_default"] == str(host.root / "current"), status["start"]
    # the control socket: the old master unlinked its path on exit; the new one listens again
    gunicornc = host.root / "current" / "venv" / "bin" / "gunicornc"
    proc = wait_for(lambda: (p := subprocess.run(
        [str(gunicornc), "-s", str(host.master.control_socket), "-c", "show workers", "-j"],
        capture_output=True, text=True, timeout=10, check=False)).returncode == 0 and p,
        10, what="gunicornc to answer")
    assert str(new_pid) in proc.stdout or "pid" in proc.stdout, proc.stdout


def test_prune_the_first_masters_release_then_hup_deploys(host: Host) -> None:
    result = host.deploy("v4", "--keep", "1", gunicorn=GUNICORN_OTHER)
    assert result.rc == 0, str(result)
    assert result.json["method"] == "hup", result.json
    assert "v1" in result.json["pruned"], result.json
    assert not (host.root / "releases" / "v1").exists()
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK, path="/lazy") as load:
        load.wait_requests(30)
        result = host.deploy("v5", "--keep", "1", gunicorn=GUNICORN_OTHER)
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[hup after prune] {result.seconds:.1f}s, {load.describe()}")
    assert result.rc == 0, str(result)
    assert result.json["method"] == "hup", result.json
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v5/v5"}
    reload = subprocess.run([str(ROLLOVER_CLI), "reload", "--pidfile", str(host.master.pidfile),
                             "--wait", "--timeout", "60"], capture_output=True, text=True,
                            timeout=90, check=False)
    assert reload.returncode == 0, reload.stdout + reload.stderr


def test_live_failure_exit_1_shows_previous_serving(host: Host) -> None:
    live = current_release(host.root)
    result = host.deploy("live-bug", live_only_error="no DATABASE_URL",
                         gunicorn=GUNICORN_OTHER)
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert result.json["serving"] == live, result.json
    assert current_release(host.root) == live
    for worker in host.status()["workers"]:
        if worker["state"] == "ready":
            assert os.path.realpath(f"/proc/{worker['pid']}/cwd").endswith(f"/{live}")
    meta = json.loads((host.root / "releases" / "live-bug" / deploy.METADATA).read_text())
    assert meta["note"].startswith("rolled back")
    # the same release, fixed and deployed again later, says so (not "rolled back")
    assert json.loads((host.root / "releases" / live / deploy.METADATA).read_text())[
        "note"].startswith("deployed")


# --------------------------------------------------------------------------- first deploy


def test_init_then_first_deploy_serves(tmp_path_factory: pytest.TempPathFactory) -> None:
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("deploy-init")
    root, pidfile, port = base / "srv" / "app", base / "run" / "app" / "gunicorn.pid", free_port()
    common = ["--root", str(root), "--pidfile", str(pidfile), "--app", "app:app"]
    init = subprocess.run([str(ROLLOVER_CLI), "deploy", "--init", *common, "--bind",
                           f"127.0.0.1:{port}", "--workers", "2", "--json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=deploy_env())
    assert init.returncode == 0, init.stderr
    assert "[Service]" in init.stderr and "ExecReload=" in init.stderr
    command = json.loads(init.stdout)["start_command"]
    assert (root / "releases").is_dir() and pidfile.parent.is_dir()
    # the README's first deploy: the app's source (its requirements.txt names gunicorn),
    # rollover from its wheel
    src = write_source(base / "src", "first")
    (src / "requirements.txt").write_text("gunicorn==27.0.1\n", encoding="utf-8")
    wheel = next(wheels.glob("gunicorn_rollover-*.whl"))
    first = subprocess.run([str(ROLLOVER_CLI), "deploy", *common, "--source", str(src),
                            "--wheel", str(wheel), "--find-links", str(wheels), "--no-index",
                            "--release", "first"], capture_output=True, text=True, timeout=240,
                           check=False, env=deploy_env())
    assert first.returncode == 0, first.stdout + first.stderr
    assert os.readlink(root / "current") == "releases/first"
    log = open(base / "master.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=deploy_env(),
                            cwd=base, start_new_session=True)
    try:
        _, body = wait_for(lambda: _get(port), 30, what="the master to serve")
        assert json.loads(body)["version"] == "first"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _get(port: int) -> tuple[int, bytes] | None:
    try:
        status, body = http_get(port)
    except OSError:
        return None
    return (status, body) if status == 200 else None


def test_wheel_holds_only_rollover(tmp_path_factory: pytest.TempPathFactory) -> None:
    wheel = next(wheelhouse(tmp_path_factory).glob("gunicorn_rollover-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"rollover"}, tops


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(("serving", "current", "problem", "code"), [
    ("v1", "v1", None, deploy.EXIT_ROLLED_BACK),
    ("v1", "v1", "rolling back to v1 failed: config reload failed", deploy.EXIT_ROLLED_BACK),
    (None, "v1", "rolling back to v1 failed", deploy.EXIT_ROLLBACK_FAILED),
    ("v2", "v1", "rolling back to v1 failed", deploy.EXIT_ROLLBACK_FAILED),
    ("v2", "v2", "the old master was stopped already", deploy.EXIT_DEPLOYED),
])
def test_failure_outcome_says_what_is_true(serving: str | None, current: str,
                                           problem: str | None, code: int) -> None:
    got, line = deploy.failure_outcome("v2", "v1", current, serving, "roll aborted", problem,
                                       interrupted=False)
    assert got == code, line
    assert "roll aborted" in line


def test_pinning_rewrites_through_links(tmp_path: Path) -> None:
    from rollover.master import pinning

    (tmp_path / "releases" / "v1" / "venv").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/v1")
    links = pinning.release_links([str(tmp_path / "current" / "venv"), None])
    real = os.path.realpath(tmp_path / "releases" / "v1")
    assert links == {str(tmp_path / "current"): real}
    assert pinning.resolve(f"{tmp_path}/current/venv/lib", links) == f"{real}/venv/lib"
    assert pinning.unresolve(f"{real}/venv", links) == f"{tmp_path}/current/venv"
    assert pinning.unresolve("/elsewhere", links) == "/elsewhere"
    assert pinning.resolve(f"{tmp_path}/currently", links) == f"{tmp_path}/currently"
