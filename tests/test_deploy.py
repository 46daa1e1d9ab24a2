"""`rollover deploy` on one host: real releases, real venvs, a real master, real load.

The scenarios share one app root and one master (module-scoped: each build takes seconds),
and run in file order: v1 is deployed with no master running and a master is started on it
(with APP_STAGE=live in its environment, which the deploy command does not have); then

1. v2 by HUP under keep-alive load: 0 failed requests, every answer v2, v1 kept;
2. a release whose import fails: rejected by the preflight, the live master untouched;
3. a release that fails only with APP_STAGE=live: passes the preflight, fails in the live
   roll; `current` goes back to v2 and v2 answers;
4. a release pinning gunicorn 27.0.0: the USR2 handoff under load, 0 failed requests, the
   pidfile names the new master, the old one is gone, no orphans;
5. a USR2 handoff whose new master's workers fail: the new master is gone, the old one
   never stopped serving, `current` is back;
6. a dry run back to v2 (plans a USR2, changes nothing).

Each prints its figures (`pytest -s`). Fast unit tests of the pieces follow.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
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
    process_group,
    run_deploy,
    stop_live_master,
    wheelhouse,
    write_source,
)
from harness import Load, children_of, pid_alive, wait_for

from rollover import deploy
from rollover.probe import is_asgi
from rollover.probe import main as preflight_main

pytestmark = pytest.mark.process

CLIENTS = 6
THINK = 0.02  # seconds between a client's requests: leaves CPU to the deploy


@dataclass
class Host:
    root: Path
    sources: Path
    wheels: Path
    master: ReleaseMaster

    @property
    def port(self) -> int:
        return self.master.port

    def deploy(self, version: str, *extra: str, **source: Any) -> Any:
        src = write_source(self.sources / version, version, **source)
        return run_deploy(self.root, *build_args(self.wheels, src, version), *extra)

    def workers(self) -> list[int]:
        return sorted(children_of(self.master.live_pid()))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("deploy-host")
    root, sources = base / "app", base / "sources"
    root.mkdir()
    first = run_deploy(root, *build_args(wheels, write_source(sources / "v1", "v1"), "v1"))
    assert first.rc == 0, str(first)
    assert first.json["method"] == "start"
    master = ReleaseMaster(root, env={"APP_STAGE": "live", "ROLLOVER_PROBE_PATH": "/healthz"})
    master.start()
    try:
        master.wait_serving()
        yield Host(root, sources, wheels, master)
    finally:
        orphans = stop_live_master(master)
        assert not orphans, f"processes left behind: {orphans}"


def answering(port: int) -> str:
    from harness import http_get

    status, body = http_get(port)
    assert status == 200
    return str(json.loads(body)["version"])


def test_hup_deploy_under_load(host: Host) -> None:
    master_pid = host.master.live_pid()
    before = current_release(host.root)
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        result = host.deploy("v2")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy hup] {result.seconds:.1f}s, {load.describe()}\n{result.proc.stderr}")
    assert result.rc == 0, str(result)
    assert result.json["method"] == "hup", result.json
    assert load.failed() == [], load.describe()
    after = load.versions_after(done_at)
    assert set(after) == {"v2"}, after
    assert current_release(host.root) == "v2"
    assert host.master.live_pid() == master_pid
    assert (host.root / "releases" / before / "venv").is_dir()  # the old release is kept
    assert before in result.json["kept"]


def test_preflight_failure_leaves_live_untouched(host: Host) -> None:
    live = current_release(host.root)
    master_pid, workers = host.master.live_pid(), host.workers()
    result = host.deploy("bad-import", error="broken at import")
    print(f"\n[deploy preflight failure] {result.seconds:.1f}s\n{result.proc.stderr}")
    assert result.rc == deploy.EXIT_PREFLIGHT_FAILED, str(result)
    assert result.json["result"] == "rejected"
    assert "broken at import" in result.json["error"]
    assert "broken at import" in result.proc.stderr.splitlines()[-1]
    assert current_release(host.root) == live
    # kept for inspection, marked failed (pruned by --keep-failed, not counted by --keep)
    meta = json.loads((host.root / "releases" / "bad-import" / deploy.METADATA).read_text())
    assert "broken at import" in meta["failed"] and meta["note"].startswith("rejected")
    assert "served" not in meta
    assert (host.master.live_pid(), host.workers()) == (master_pid, workers)
    assert answering(host.port) == live


def test_live_failure_rolls_back(host: Host) -> None:
    live = current_release(host.root)
    master_pid = host.master.live_pid()
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        result = host.deploy("live-only-bug", live_only_error="no DATABASE_URL in production")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy live failure + rollback] {result.seconds:.1f}s, {load.describe()}\n"
          f"{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert result.json["result"] == "rolled-back"
    assert "no DATABASE_URL in production" in result.json["error"]
    assert current_release(host.root) == live
    assert host.master.live_pid() == master_pid
    assert set(load.versions_after(done_at)) == {live}
    assert load.failed() == [], load.describe()
    meta = json.loads((host.root / "releases" / "live-only-bug" / deploy.METADATA).read_text())
    assert meta["note"].startswith("rolled back")


def test_failed_canary_rolls_back(host: Host) -> None:
    """Boots, passes the preflight and the probe, answers 500: the canary stops the roll
    and the deploy flips the release back."""
    live = current_release(host.root)
    with Load(host.port, clients=CLIENTS, keepalive=False, think=THINK) as load:
        load.wait_requests(30)
        result = host.deploy("answers-500", live_only_status="500 Internal Server Error")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy failed canary] {result.seconds:.1f}s, {load.describe()}\n"
          f"{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert "canary failed: " in result.json["error"], result.json
    assert current_release(host.root) == live
    assert set(load.versions_after(done_at)) == {live}


def test_failed_canary_at_low_traffic_rolls_back(host: Host) -> None:
    """The same release at one request per 0.5 s: judged on the few requests it gets."""
    live = current_release(host.root)
    with Load(host.port, clients=1, keepalive=False, think=0.5) as load:
        load.wait_requests(2)
        result = host.deploy("answers-500-quiet", live_only_status="500 Internal Server Error")
        done_at = time.monotonic()
        load.wait_requests(3, after=done_at)
    print(f"\n[deploy failed canary, low traffic] {result.seconds:.1f}s, {load.describe()}\n"
          f"{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert "canary failed: " in result.json["error"], result.json
    assert current_release(host.root) == live
    assert set(load.versions_after(done_at)) == {live}
    assert set(load.failed()) <= {"HTTP 500"} and len(load.failed()) <= 6, load.describe()


def test_strict_deploy_without_a_canary_verdict_rolls_back(host: Host) -> None:
    """No traffic: the canary is not judged; with --strict that is no deploy."""
    live = current_release(host.root)
    result = host.deploy("unjudged", "--strict")
    print(f"\n[deploy --strict, no traffic] {result.seconds:.1f}s\n{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert result.json["error"].startswith("canary not judged (--strict): no traffic"), \
        result.json
    assert current_release(host.root) == live
    assert answering(host.port) == live


def test_usr2_handoff_to_a_failing_release_is_judged_and_rolled_back(host: Host) -> None:
    """A gunicorn change (USR2) to a release answering 500: the new master's workers are
    judged against the old master's while both serve; the new master is stopped, the old
    one never stopped serving."""
    live = current_release(host.root)
    old_pid = host.master.live_pid()
    with Load(host.port, clients=CLIENTS, keepalive=False, think=THINK) as load:
        load.wait_requests(30)
        result = host.deploy("usr2-500", gunicorn=GUNICORN_OTHER,
                             live_only_status="500 Internal Server Error")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy usr2 failed canary] {result.seconds:.1f}s, {load.describe()}\n"
          f"{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert result.json["method"] == "usr2", result.json
    assert result.json["error"].startswith("canary failed: "), result.json
    assert host.master.live_pid() == old_pid
    new_pid = result.json.get("new_master_pid")
    assert new_pid and not pid_alive(new_pid)
    assert current_release(host.root) == live
    assert set(load.versions_after(done_at)) == {live}
    assert set(load.failed()) <= {"HTTP 500"}, load.describe()


def test_gunicorn_change_uses_usr2_handoff(host: Host) -> None:
    old_pid = host.master.live_pid()
    old_workers = host.workers()
    pgid = host.master.pid
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        result = host.deploy("v5", gunicorn=GUNICORN_OTHER)
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy usr2] {result.seconds:.1f}s, {load.describe()}\n{result.proc.stderr}")
    assert result.rc == 0, str(result)
    assert result.json["method"] == "usr2", result.json
    assert any(f"gunicorn 27.0.1 -> {GUNICORN_OTHER}" in r for r in result.json["reasons"])
    # keep-alive clients stay on the old master's workers: too few requests reach the new
    # one's to judge them, and the handoff goes on
    assert "[canary]" in result.proc.stderr and "canary failed" not in result.proc.stderr
    new_pid = host.master.live_pid()
    assert new_pid != old_pid and new_pid == result.json["new_master_pid"]
    assert not pid_alive(old_pid)
    assert not [p for p in old_workers if pid_alive(p)]
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v5"}
    status = wait_for(host.master.status, 10, what="the promoted master's status")
    assert status["pid"] == new_pid and status["gunicorn"] == GUNICORN_OTHER
    assert not Path(f"{host.master.pidfile}.2").exists()
    # no orphans: the group holds the new master and its workers, nothing else
    assert set(process_group(pgid)) == {new_pid, *children_of(new_pid)}


def test_usr2_failure_stops_the_new_master(host: Host) -> None:
    live = current_release(host.root)
    master_pid, workers = host.master.live_pid(), host.workers()
    pgid = host.master.pid
    with Load(host.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        # the live master runs gunicorn 27.0.0 now: 27.0.1 means a USR2 handoff, whose new
        # master's workers all fail (APP_STAGE=live)
        result = host.deploy("usr2-bug", live_only_error="cannot reach the queue")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy usr2 failure + rollback] {result.seconds:.1f}s, {load.describe()}\n"
          f"{result.proc.stderr}")
    assert result.rc == deploy.EXIT_ROLLED_BACK, str(result)
    assert result.json["method"] == "usr2"
    assert current_release(host.root) == live
    assert (host.master.live_pid(), host.workers()) == (master_pid, workers)
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {live}
    assert not Path(f"{host.master.pidfile}.2").exists()
    assert not Path(f"{host.master.pidfile}.2.rollover.json").exists()
    assert set(process_group(pgid)) == {master_pid, *workers}


def test_dry_run_changes_nothing(host: Host) -> None:
    live = current_release(host.root)
    master_pid, workers = host.master.live_pid(), host.workers()
    result = run_deploy(host.root, "--release", "v2", "--dry-run")
    assert result.rc == 0, str(result)
    assert result.json["result"] == "planned"
    # the master now runs gunicorn 27.0.0, v2 has 27.0.1
    assert result.json["method"] == "usr2", result.json
    assert current_release(host.root) == live
    assert (host.master.live_pid(), host.workers()) == (master_pid, workers)
    assert not [p for p in (host.root / "releases").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- units


def test_switch_is_atomic_and_reads_back(tmp_path: Path) -> None:
    layout = deploy.Layout(str(tmp_path))
    layout.check()
    for rid in ("a", "b"):
        (layout.releases / rid).mkdir()
    assert layout.current_id() is None
    layout.switch("a")
    assert layout.current_id() == "a" and os.readlink(layout.current) == "releases/a"
    layout.switch("b")
    assert layout.current_id() == "b"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_current_must_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "current").mkdir()
    with pytest.raises(deploy.DeployError, match="not a symlink"):
        deploy.Layout(str(tmp_path)).check()


def test_prune_keeps_newest_protected_and_used() -> None:
    releases = [deploy.Release(str(i), Path(str(i)), float(i), True, served=True)
                for i in range(9, 0, -1)]
    kept, removed = deploy.prune_plan(releases, 3, protect={"2"}, in_use={"1"})
    assert [r.id for r in kept] == ["9", "8", "7", "2", "1"]
    assert [r.id for r in removed] == ["6", "5", "4", "3"]


def test_prune_counts_served_and_failed_releases_apart() -> None:
    """The issue's case: --keep 3 used to keep the broken v5b and remove the rollback
    targets v3 and v5. Served releases are counted by --keep, the rest by --keep-failed."""
    def release(rid: str, age: int, served: bool) -> deploy.Release:
        return deploy.Release(rid, Path(rid), float(100 - age), True, served=served,
                              failed=None if served else "preflight failed")

    releases = [release("v6", 0, True), release("v5b", 1, False), release("v5", 2, True),
                release("v4b", 3, False), release("v3", 4, True), release("v2", 5, True),
                release("v1b", 6, False)]
    kept, removed = deploy.prune_plan(releases, 3, protect={"v6", "v5"}, in_use=set(),
                                      keep_failed=1)
    assert [r.id for r in kept] == ["v6", "v5b", "v5", "v3"]
    assert [r.id for r in removed] == ["v4b", "v2", "v1b"]
    # a protected (live or rollback target) or used release is kept beyond either count
    kept, _ = deploy.prune_plan(releases, 1, protect={"v2"}, in_use={"v1b"}, keep_failed=1)
    assert [r.id for r in kept] == ["v6", "v5b", "v2", "v1b"]


def test_changed_shared_objects(tmp_path: Path) -> None:
    rel = tmp_path / "releases"
    site = "venv/lib/python3.11/site-packages"
    for rid, same, changed in (("old", b"A", b"B"), ("new", b"A", b"C")):
        (rel / rid / site).mkdir(parents=True)
        (rel / rid / site / "_same.cpython-311-x86_64-linux-gnu.so").write_bytes(same)
        (rel / rid / site / "_changed.cpython-311-x86_64-linux-gnu.so").write_bytes(changed)
    (rel / "old" / site / "_gone.so").write_bytes(b"x")
    (rel / "old" / site / "data.bin").write_bytes(b"x")
    old = rel / "old" / site

    def line(path: str) -> str:
        return f"7f00-7f01 r-xp 00000000 08:01 123 {path}"

    maps = "\n".join([
        line(f"{old}/_same.cpython-311-x86_64-linux-gnu.so"),
        line(f"{old}/_changed.cpython-311-x86_64-linux-gnu.so"),
        line(f"{old}/_gone.so"),
        line(f"{old}/data.bin"),
        line("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        "7f02-7f03 rw-p 00000000 00:00 0 ",
    ])
    changed, compared = deploy.changed_shared_objects(maps, str(rel), str(rel / "new"))
    assert compared == 3
    assert sorted(changed) == [
        f"{site}/_changed.cpython-311-x86_64-linux-gnu.so (changed)",
        f"{site}/_gone.so (not in the new release)",
    ]


def test_app_spec_and_worker_class_from_the_command_line() -> None:
    master = deploy.LiveMaster(1, {}, "", ["/srv/app/current/venv/bin/python",
                                           "/srv/app/current/venv/bin/gunicorn", "-c",
                                           "python:rollover.hooks", "-b", "localhost:8000",
                                           "-k", "uvicorn_worker.UvicornWorker",
                                           "myproj.asgi:create_app()"], {})
    assert master.app_spec() == "myproj.asgi:create_app()"
    assert master.worker_class() == "uvicorn_worker.UvicornWorker"
    assert master.reexec_python() == "/srv/app/current/venv/bin/python"
    master.environ["ROLLOVER_REEXEC_PYTHON"] = "/opt/py"
    assert master.reexec_python() == "/opt/py"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to deploy"),
        (["--release", "../x"], "bad release id"),
        (["--source", "/nonexistent/src"], "no such directory"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from rollover import cli

    code = cli.main(["deploy", "--root", str(tmp_path), "--pidfile",
                     str(tmp_path / "gunicorn.pid"), "--app", "app:app", *argv])
    assert code == deploy.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rollover: ") and message in err[0]


def test_no_app_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rollover import cli

    code = cli.main(["deploy", "--root", str(tmp_path / "missing"), "--pidfile",
                     str(tmp_path / "p.pid"), "--release", "x", "--json"])
    assert code == deploy.EXIT_ERROR
    out = json.loads(capsys.readouterr().out)
    assert out["result"] == "error" and "no such directory" in out["error"]


# --------------------------------------------------------------------------- preflight


def _preflight(tmp_path: Path, app: str, probe: str | None, interface: str = "auto") -> Any:
    out = tmp_path / "result.json"
    request = {"app": app, "probe": probe, "interface": interface, "out": str(out),
               "timeout": 5}
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(tmp_path)
    try:
        code = preflight_main([json.dumps(request)])
    finally:
        os.chdir(cwd)
        sys.path[:] = path
    result = json.loads(out.read_text())
    assert (code == 0) == result["ok"]
    return result


ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if FAIL_STARTUP:
                    await send({"type": "lifespan.startup.failed", "message": "no db"})
                    return
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status = 200 if scope.get("state", {}).get("db") == "connected" else 503
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
'''


@pytest.mark.parametrize(("fail_startup", "ok", "needle"), [
    (False, True, "GET /healthz -> 200"),
    (True, False, "lifespan startup failed: no db"),
])
def test_preflight_asgi_lifespan_and_probe(tmp_path: Path, fail_startup: bool, ok: bool,
                                           needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"asgi_app_{fail_startup}"
    (tmp_path / f"{module}.py").write_text(f"FAIL_STARTUP = {fail_startup}\n{ASGI_APP}")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _preflight(tmp_path, f"{module}:app", "/healthz")
    assert result["ok"] is ok
    assert needle in (result["detail"] if ok else result["error"])
    assert result["detail"].startswith("asgi") or not ok


def test_preflight_wsgi_probe_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wsgi_probe_app.py").write_text(
        "def app(environ, start_response):\n"
        "    code = '200 OK' if environ['PATH_INFO'] == '/ok' else '500 Oops'\n"
        "    start_response(code, [])\n"
        "    return [b'x']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _preflight(tmp_path, "wsgi_probe_app:app", "/ok")["ok"]
    bad = _preflight(tmp_path, "wsgi_probe_app:app", "/bad")
    assert bad["error"] == "readiness probe GET /bad answered 500"


def test_is_asgi() -> None:
    class Asgi:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        return []

    async def asgi_fn(scope: Any, receive: Any, send: Any) -> None: ...

    assert is_asgi(Asgi()) and is_asgi(asgi_fn)
    assert not is_asgi(wsgi)
    assert asyncio.iscoroutinefunction(asgi_fn)


def test_parser_has_deploy() -> None:
    from rollover import cli
    from rollover.deploy import config

    args = cli.build_parser().parse_args(["deploy", "--pidfile", "p", "--root", "r",
                                          "--source", "s", "--keep", "2"])
    assert isinstance(args, argparse.Namespace)
    assert args.keep == 2 and args.method is None  # unset: rollover.toml's, else the default
    config.apply(args, {"method": "usr2", "keep": 7, "shared": ["media/"]})
    assert args.keep == 2 and args.method == "usr2" and args.shared == ["media/"]
    assert args.keep_failed == 3 and args.timeout == deploy.command.DEFAULT_TIMEOUT


# --------------------------------------------------------------------------- the plan (pure)


def _facts(**changes: Any) -> Any:
    from rollover.deploy.facts import Facts

    same = {"implementation": "cpython", "version": "3.11.7", "gunicorn": "27.0.1",
            "rollover": "0.1.0"}
    facts = Facts(current="/srv/app/current", master_python="/srv/app/current/venv/bin/python",
                  python_follows_current=True,
                  old_python={"implementation": "cpython", "version": "3.11.7"},
                  new_python=same, old_versions={"gunicorn": "27.0.1", "rollover": "0.1.0"},
                  worker_packages=None, shared_objects=([], 4))
    return dataclasses.replace(facts, **changes)


@pytest.mark.parametrize(("changes", "method", "reason"), [
    ({}, "hup", None),
    ({"python_follows_current": False}, "usr2", "not the venv behind /srv/app/current"),
    ({"master_python": None}, "usr2", "interpreter path is unknown"),
    ({"old_python": None}, "usr2", "Python version is unknown"),
    ({"old_python": {"implementation": "cpython", "version": "3.11.6"}}, "usr2",
     "Python cpython 3.11.6 -> cpython 3.11.7"),
    ({"old_versions": {"gunicorn": "27.0.0", "rollover": "0.1.0"}}, "usr2",
     "gunicorn 27.0.0 -> 27.0.1"),
    ({"worker_packages": ({"uvicorn": "0.30"}, {"uvicorn": "0.31"})}, "usr2",
     "worker class packages uvicorn 0.30 -> uvicorn 0.31"),
    ({"worker_packages": ({"uvicorn": "0.30"}, {"uvicorn": "0.30"})}, "hup", None),
    ({"shared_objects": (["a.so (changed)"], 4)}, "usr2", "C extension loaded by the master"),
    ({"shared_objects": "Permission denied"}, "usr2", "cannot read the master's memory map"),
])
def test_plan_decides_hup_or_usr2(changes: dict[str, Any], method: str,
                                  reason: str | None) -> None:
    from rollover.deploy.plan import plan

    got = plan(_facts(**changes))
    assert got.method == method, got
    if reason is None:
        assert got.reasons == [] and got.checked
    else:
        assert any(reason in r for r in got.reasons), got.reasons


def test_plan_forced_and_without_master() -> None:
    from rollover.deploy.plan import plan

    assert plan(None, "usr2").method == "start"
    assert plan(_facts(), "usr2").reasons == ["--method usr2"]
    forced = plan(_facts(old_python=None), "hup")
    assert forced.method == "hup" and forced.reasons == ["the master's Python version is unknown"]
