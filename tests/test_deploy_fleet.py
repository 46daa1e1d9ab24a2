"""A fleet deploy: deploy/ansible/deploy.yml rolls two hosts behind a real nginx.

Two "hosts" on this machine, each with its own app root, port and master (started through
`<root>/current`, with APP_STAGE=live in its environment), behind nginx configured with
deploy/nginx/app.conf (its server lines pointed at the two ports). The playbook runs with a
local-connection inventory:

1. v2 rolls out host by host under keep-alive load through nginx: 0 failed requests, every
   answer afterwards v2;
2. a release that fails only on a live host (APP_STAGE=live) fails on the first host, which
   rolls back by itself, and the rollout stops: the second host is untouched.

Needs the Debian package nginx and ansible-core (the test extra); without them the tests
are skipped with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import (
    ReleaseMaster,
    build_args,
    current_release,
    deploy_env,
    run_deploy,
    stop_live_master,
    wheelhouse,
    write_source,
)
from harness import REPO, ROLLOVER_CLI, Load, children_of, free_port, http_get, wait_for

pytestmark = pytest.mark.process

PLAYBOOK = REPO / "deploy" / "ansible" / "deploy.yml"
NGINX_SITE = REPO / "deploy" / "nginx" / "app.conf"
CLIENTS = 6
THINK = 0.02  # seconds between a client's requests: leaves CPU to the deploy


def _tool(name: str, *candidates: Path) -> str | None:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


NGINX = _tool("nginx", Path("/usr/sbin/nginx"))
ANSIBLE_PLAYBOOK = _tool("ansible-playbook", Path(sys.executable).parent / "ansible-playbook")


def _require(tool: str | None, what: str) -> str:
    if tool is not None:
        return tool
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing, and CI=true: the fleet test must run in CI "
                    "(scripts/test.sh installs it)")
    pytest.skip(f"{what} is not installed (scripts/test.sh installs it as root with apt/pip)")


@dataclass
class Fleet:
    base: Path
    hosts: dict[str, ReleaseMaster]
    nginx_port: int
    wheels: Path
    sources: Path

    def root(self, name: str) -> Path:
        return self.hosts[name].root


def nginx_config(prefix: Path, ports: list[int], listen: int) -> Path:
    """deploy/nginx/app.conf with its server lines pointed at `ports`, in a main config."""
    site = NGINX_SITE.read_text(encoding="utf-8")
    servers = re.findall(r"^\s*server \d+\.\d+\.\d+\.\d+:\d+[^;]*;\n", site, re.M)
    assert len(servers) >= 2, "deploy/nginx/app.conf has no server lines to point at the hosts"
    local = "".join(re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", f"127.0.0.1:{port}", servers[0])
                    for port in ports)
    site = site.replace("".join(servers), local)
    site, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", site)
    assert count == 1
    (prefix / "app.conf").write_text(site, encoding="utf-8")
    temp = prefix / "temp"
    temp.mkdir()
    user = "user root root;\n" if os.geteuid() == 0 else ""
    main = f"""\
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/app.conf;
}}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(main, encoding="utf-8")
    return conf


@contextlib.contextmanager
def running_nginx(nginx: str, prefix: Path, ports: list[int]) -> Iterator[int]:
    listen = free_port()
    conf = nginx_config(prefix, ports, listen)
    argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
            "-g", "daemon off;"]
    check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def serving() -> bool:
        assert proc.poll() is None, (prefix / "error.log").read_text()
        with contextlib.suppress(OSError):
            return http_get(listen, timeout=2)[0] == 200
        return False

    try:
        wait_for(serving, 20, what="nginx to serve")
        yield listen
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nginx = _require(NGINX, "nginx")
    _require(ANSIBLE_PLAYBOOK, "ansible-playbook (ansible-core)")
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("fleet")
    sources = base / "sources"
    v1 = write_source(sources / "v1", "v1")
    hosts: dict[str, ReleaseMaster] = {}
    try:
        for name in ("web1", "web2"):
            root = base / name
            root.mkdir()
            first = run_deploy(root, *build_args(wheels, v1, "v1"))
            assert first.rc == 0, str(first)
            hosts[name] = ReleaseMaster(root, env={"APP_STAGE": "live",
                                                   "ROLLOVER_PROBE_PATH": "/healthz"})
            hosts[name].start()
        for master in hosts.values():
            master.wait_serving()
        prefix = base / "nginx"
        prefix.mkdir()
        with running_nginx(nginx, prefix, [m.port for m in hosts.values()]) as port:
            yield Fleet(base, hosts, port, wheels, sources)
    finally:
        for master in hosts.values():
            stop_live_master(master)


def playbook(fleet: Fleet, release: str, source: Path) -> tuple[subprocess.CompletedProcess[str],
                                                                 float]:
    assert ANSIBLE_PLAYBOOK is not None
    work = fleet.base / f"ansible-{release}"
    work.mkdir()
    inventory = {"app": {
        "hosts": {name: {"ansible_connection": "local", "rollover_root": str(m.root),
                         "rollover_pidfile": str(m.pidfile), "app_port": m.port}
                  for name, m in fleet.hosts.items()},
        "vars": {"ansible_python_interpreter": sys.executable},
    }}
    (work / "inventory.json").write_text(json.dumps(inventory), encoding="utf-8")
    extra = {"rollover_release": release, "rollover_source": str(source),
             "rollover_bin": str(ROLLOVER_CLI),
             "rollover_deploy_args": ["--find-links", str(fleet.wheels), "--no-index"]}
    (work / "vars.json").write_text(json.dumps(extra), encoding="utf-8")
    env = deploy_env()
    env.update(ANSIBLE_LOCAL_TEMP=str(work / "tmp-local"),
               ANSIBLE_REMOTE_TEMP=str(work / "tmp-remote"),
               ANSIBLE_HOME=str(work / "home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_HOST_KEY_CHECKING="0",
               ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_FORCE_COLOR="0")
    started = time.monotonic()
    proc = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(work / "inventory.json"), "-e", f"@{work / 'vars.json'}",
         str(PLAYBOOK)],
        capture_output=True, text=True, env=env, cwd=work, timeout=400, check=False,
        stdin=subprocess.DEVNULL,
    )
    return proc, time.monotonic() - started


def versions(port: int, count: int = 20) -> set[str]:
    seen = set()
    for _ in range(count):
        status, body = http_get(port)
        assert status == 200
        seen.add(json.loads(body)["version"])
    return seen


def test_fleet_rolls_out_behind_nginx(fleet: Fleet) -> None:
    source = write_source(fleet.sources / "v2", "v2")
    with Load(fleet.nginx_port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        proc, seconds = playbook(fleet, "v2", source)
        done_at = time.monotonic()
        load.wait_requests(40, after=done_at)
    print(f"\n[fleet v2] playbook {seconds:.1f}s, {load.describe()}")
    print("\n".join(ln.strip() for ln in proc.stdout.splitlines() if '"msg"' in ln))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v2"}, load.describe()
    for master in fleet.hosts.values():
        assert current_release(master.root) == "v2"
        assert versions(master.port, 4) == {"v2"}
        assert (master.root / "releases" / "v1").is_dir()


def test_broken_release_stops_at_the_first_host(fleet: Fleet) -> None:
    web1, web2 = fleet.hosts["web1"], fleet.hosts["web2"]
    live = {name: current_release(m.root) for name, m in fleet.hosts.items()}
    # the last deploy's retired worker may still be draining: wait until it is gone
    wait_for(lambda: len(children_of(web2.live_pid())) == web2.workers, 20,
             what="web2 to have only its own workers")
    web2_before = (web2.live_pid(), sorted(children_of(web2.live_pid())))
    web1_master = web1.live_pid()
    source = write_source(fleet.sources / "v3", "v3", live_only_error="missing SECRET_KEY")
    with Load(fleet.nginx_port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        proc, seconds = playbook(fleet, "v3", source)
        done_at = time.monotonic()
        load.wait_requests(40, after=done_at)
    print(f"\n[fleet broken v3] playbook {seconds:.1f}s, {load.describe()}")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "missing SECRET_KEY" in output
    # the first host rolled back by itself
    assert current_release(web1.root) == live["web1"]
    assert web1.live_pid() == web1_master
    assert versions(web1.port, 4) == {live["web1"]}
    # the second host was never touched
    assert current_release(web2.root) == live["web2"]
    assert not (web2.root / "releases" / "v3").exists()
    assert (web2.live_pid(), sorted(children_of(web2.live_pid()))) == web2_before
    assert re.search(r"web2\s*:\s*ok=0", output) or "web2" not in output.split("PLAY RECAP")[-1]
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == set(live.values())
