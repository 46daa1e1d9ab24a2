"""The ops files under deploy/ parse and carry the settings deploy/README.md promises.

These are static checks; deploy/ansible/deploy.yml and deploy/nginx/app.conf also run for
real in test_deploy_fleet.py. The systemd unit and the Kubernetes manifests are checked
here only (no systemd or cluster in the test environment).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import REPO

DEPLOY = REPO / "deploy"


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


# --------------------------------------------------------------------------- kubernetes


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_k8s_deployment_rolls_one_pod_at_a_time() -> None:
    deployment = _k8s()["Deployment"]
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_k8s_probe_prestop_and_grace() -> None:
    pod = _k8s()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    probe_path = env["ROLLOVER_PROBE_PATH"]
    assert container["readinessProbe"]["httpGet"]["path"] == probe_path
    args = [*container.get("command", []), *container["args"]]
    assert _option(args, "-c") == "python:rollover.hooks"
    graceful = float(_option(args, "--graceful-timeout"))
    pre_stop = container["lifecycle"]["preStop"]
    sleep = pre_stop.get("sleep", {}).get("seconds")
    if sleep is None:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        sleep = float(command[1])
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] > graceful + sleep
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    bind = _option(args, "--bind")
    assert int(bind.rsplit(":", 1)[1]) == ports[container["readinessProbe"]["httpGet"]["port"]]


def test_k8s_service_selects_the_pods() -> None:
    docs = _k8s()
    service, deployment = docs["Service"], docs["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


# --------------------------------------------------------------------------- systemd


def _unit(name: str = "app.service") -> dict[str, dict[str, str]]:
    """The unit file as {section: {key: value}} (continuation lines joined)."""
    text = (DEPLOY / "systemd" / name).read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    return sections


def test_systemd_unit_reload_is_a_synchronous_rolling_reload() -> None:
    service = _unit()["Service"]
    reload = shlex.split(service["ExecReload"])
    assert reload[0].endswith("/rollover") and reload[1] == "reload"
    assert "--wait" in reload
    assert _option(reload, "--pidfile") == service["PIDFile"]
    assert float(service["TimeoutStartSec"]) > float(_option(reload, "--timeout"))
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"


def test_systemd_notify_reload_variant_differs_only_in_how_it_reloads() -> None:
    default, variant = _unit(), _unit("app-notify-reload.service")
    assert default["Service"]["Type"] == "notify"
    assert variant["Service"]["Type"] == "notify-reload"
    assert variant["Service"]["ReloadSignal"] == "SIGHUP"
    assert "ExecReload" not in variant["Service"]
    rest = {k: v for k, v in variant["Service"].items() if k not in ("Type", "ReloadSignal")}
    assert rest == {k: v for k, v in default["Service"].items()
                    if k not in ("Type", "ExecReload")}
    assert variant["Unit"] == default["Unit"] and variant["Install"] == default["Install"]


def test_systemd_unit_starts_gunicorn_through_current() -> None:
    service = _unit()["Service"]
    start = shlex.split(service["ExecStart"])
    python, script = start[0], start[1]
    root = python.split("/current/")[0]
    assert python == f"{root}/current/venv/bin/python"
    assert script == f"{root}/current/venv/bin/gunicorn"
    assert _option(start, "-c") == "python:rollover.hooks"
    assert _option(start, "--chdir") == f"{root}/current"
    assert _option(start, "--pid") == service["PIDFile"]
    assert float(service["TimeoutStopSec"]) > float(_option(start, "--graceful-timeout"))
    text = (DEPLOY / "systemd" / "app.service").read_text(encoding="utf-8")
    env = dict(line.split("=", 2)[1:] for line in text.splitlines()
               if line.startswith("Environment="))
    assert env["ROLLOVER_REEXEC_PYTHON"] == f"{root}/current/venv/bin/python"
    assert env["ROLLOVER_PROBE_PATH"].startswith("/")


# --------------------------------------------------------------------------- ansible


def test_ansible_playbook_rolls_host_by_host() -> None:
    (play,) = yaml.safe_load((DEPLOY / "ansible" / "deploy.yml").read_text(encoding="utf-8"))
    assert play["serial"] == 1
    assert play["max_fail_percentage"] == 0
    tasks = {t["name"]: t for t in play["tasks"]}
    deploy_task = next(t for t in tasks.values() if "ansible.builtin.command" in t)
    argv = deploy_task["ansible.builtin.command"]["argv"]
    assert "'deploy'" in argv and "--json" in argv
    assert deploy_task["failed_when"] == "rollover_deploy.rc != 0"
    health = next(t for t in tasks.values() if "ansible.builtin.uri" in t)
    assert "app_port" in health["ansible.builtin.uri"]["url"]
    assert health["until"] and health["retries"] >= 1
    defaults = yaml.safe_load((DEPLOY / "ansible" / "group_vars" / "all.yml").read_text())
    assert {"rollover_root", "rollover_pidfile", "rollover_bin", "app_port"} <= set(defaults)
    inventory = yaml.safe_load((DEPLOY / "ansible" / "inventory.example.yml").read_text())
    assert len(inventory["app"]["hosts"]) >= 2


def test_ansible_playbook_syntax() -> None:
    tool = Path(sys.executable).parent / "ansible-playbook"
    if not tool.exists():
        pytest.skip("ansible-playbook (ansible-core, the test extra) is not installed")
    proc = subprocess.run(
        [str(tool), "--syntax-check", "-i", str(DEPLOY / "ansible" / "inventory.example.yml"),
         str(DEPLOY / "ansible" / "deploy.yml")],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": "/tmp"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- nginx


def test_nginx_upstream_config(tmp_path: Path) -> None:
    site = (DEPLOY / "nginx" / "app.conf").read_text(encoding="utf-8")
    upstream = re.search(r"upstream (\w+) \{(.*?)\}", site, re.S)
    assert upstream is not None
    assert len(re.findall(r"^\s*server \S+:\d+", upstream.group(2), re.M)) >= 2
    assert re.search(r"^\s*keepalive \d+;", upstream.group(2), re.M)
    assert f"proxy_pass http://{upstream.group(1)};" in site
    assert "proxy_http_version 1.1;" in site and 'proxy_set_header Connection "";' in site
    assert re.search(r"proxy_next_upstream [^;]*\berror\b", site)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed: syntax not checked")
    (tmp_path / "app.conf").write_text(site, encoding="utf-8")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    f"events {{}}\nhttp {{ access_log off; include {tmp_path}/app.conf; }}\n")
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e",
                           str(tmp_path / "error.log")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_systemd_units_read_the_deploy_env_file() -> None:
    """The env file `rollover deploy` gives the build step and the preflight (issue #23)."""
    for name in ("app.service", "app-notify-reload.service"):
        service = _unit(name)["Service"]
        root = shlex.split(service["ExecStart"])[0].split("/current/")[0]
        assert service["EnvironmentFile"] == f"{root}/shared/.env", name
