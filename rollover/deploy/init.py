"""`rollover deploy --init`: make the app root (releases/, shared/ with the env file and the
shared paths, the pidfile's directory), write `<root>/rollover.toml` from the options
given, and print how to start gunicorn on it (a command, and a systemd unit)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

from rollover.deploy import config as deploy_config
from rollover.deploy import envfile
from rollover.deploy import shared as shared_paths
from rollover.deploy.layout import Layout
from rollover.deploy.report import EXIT_DEPLOYED, DeployError, Report

# what --init writes into rollover.toml when given on its command line
CONFIG_KEYS = ("pidfile", "app", "shared", "build", "env_file", "probe_path", "requirements",
               "wheel", "find_links", "no_index", "pip_arg", "python", "keep", "keep_failed",
               "interface", "method", "bind", "workers")


def start_command(layout: Layout, opts: argparse.Namespace) -> list[str]:
    """How to start gunicorn on this root: everything through `current` (the interpreter,
    the chdir), so HUPs and USR2 handoffs follow it."""
    current = str(layout.current)
    return [f"{current}/venv/bin/python", f"{current}/venv/bin/gunicorn",
            "-c", "python:rollover.hooks", "--chdir", current,
            "--pid", os.path.abspath(opts.pidfile), "--bind", opts.bind,
            "--workers", str(opts.workers), opts.app or "app:app"]


def shell_start(layout: Layout, opts: argparse.Namespace, env_file: str) -> str:
    """The start command for a shell: the env file exported first (as systemd's
    EnvironmentFile= does), so the master has the environment the preflight had."""
    return (f"set -a; . {shlex.quote(env_file)}; set +a; exec "
            + shlex.join(start_command(layout, opts)))


SYSTEMD_UNIT = """\
# {unit_path}: gunicorn + rollover on the app root {root} (made by
# `rollover deploy --init`; see deploy/systemd/app.service for the notes)
[Unit]
Description={name} (gunicorn with rollover)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=all
# User={user}
RuntimeDirectory={runtime}
RuntimeDirectoryPreserve=yes
PIDFile={pidfile}
# The app's environment, the same file `rollover deploy` gives the build step and the
# preflight (it wins over Environment= lines; the master keeps it across HUP and USR2:
# `systemctl restart` after changing it)
EnvironmentFile={env_file}
WorkingDirectory={current}
ExecStart={start}
ExecReload={current}/venv/bin/rollover reload --pidfile {pidfile} --wait --timeout 300
TimeoutStartSec=330
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(layout: Layout, opts: argparse.Namespace, env_file: str) -> str:
    pidfile = os.path.abspath(opts.pidfile)
    name = layout.root.name or "app"
    run_dir = os.path.dirname(pidfile)
    runtime = run_dir[len("/run/"):] if run_dir.startswith("/run/") else name
    command = start_command(layout, opts)
    start = " \\\n    ".join(
        [shlex.join(command[:2])]
        + [shlex.join(command[i:i + 2]) for i in range(2, len(command) - 1, 2)]
        + [shlex.quote(command[-1])])
    return SYSTEMD_UNIT.format(unit_path=f"/etc/systemd/system/{name}.service",
                               root=layout.root, name=name, user=os.environ.get("USER", "app"),
                               runtime=runtime, pidfile=pidfile, current=layout.current,
                               start=start, env_file=env_file)


def toml_text(values: dict[str, Any]) -> str:
    """A `[deploy]` table (strings, numbers, booleans, lists of strings)."""
    lines = ["# rollover deploy's settings for this root (command-line flags override them)",
             "[deploy]"]
    for key, value in values.items():
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, int | float):
            shown = str(value)
        elif isinstance(value, list):
            shown = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        else:
            shown = json.dumps(value)
        lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"


def init(opts: argparse.Namespace, given: dict[str, Any], report: Report) -> int:
    """`--init`; `given`: the options given on the command line (for rollover.toml)."""
    layout = Layout(opts.root)
    report.root = str(layout.root)
    layout.check(create=True)
    pidfile_dir(opts.pidfile)
    out = report.out
    shared = shared_paths.entries(opts.shared)
    env_file = opts.env_file or str(layout.shared / envfile.DEFAULT_NAME)
    try:
        layout.shared.mkdir(exist_ok=True)
        made = shared_paths.prepare(layout.shared, shared, None)
        if not os.path.exists(env_file):
            os.makedirs(os.path.dirname(env_file), exist_ok=True)
            fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(envfile.TEMPLATE)
            made.append(f"{env_file} (the app's environment, mode 0600)")
    except OSError as exc:
        raise DeployError(f"cannot create {layout.shared}: {exc}") from None
    envfile.read(env_file)  # an existing file must parse
    config_path = layout.root / deploy_config.CONFIG_NAME
    values = {k: given[k] for k in CONFIG_KEYS if k in given}
    if "pidfile" in values:
        values["pidfile"] = os.path.abspath(values["pidfile"])
    if config_path.exists():
        config_note = f"{config_path} exists: left as it is"
    else:
        config_path.write_text(toml_text(values), encoding="utf-8")
        config_note = f"wrote {config_path} ({', '.join(values) or 'nothing given'})"
    report.start_command = start_command(layout, opts)
    report.start_shell = shell_start(layout, opts, env_file)
    print(f"app root {layout.root}: releases/ and shared/ ready, pidfile in "
          f"{os.path.dirname(os.path.abspath(opts.pidfile))}", file=out)
    for line in made:
        print(f"  created {line}", file=out)
    print(f"  {config_note}", file=out)
    deploy_cmd = ["rollover", "deploy", "--root", str(layout.root), "--source", "./app"]
    if not given.get("wheel") and not given.get("requirements"):
        deploy_cmd += ["--wheel", "gunicorn_rollover-*.whl"]
    print("\n1. put the app's settings into the env file, then deploy the first release "
          "(no master yet: it only switches current), e.g.:\n  " + shlex.join(deploy_cmd),
          file=out)
    print("\n2. start gunicorn through current, with the env file:\n  "
          + report.start_shell, file=out)
    print("\n   or as a systemd unit:\n", file=out)
    print(systemd_unit(layout, opts, env_file), file=out)
    print("3. later releases: the same `rollover deploy` (HUP or USR2 handoff, with rollback)",
          file=out, flush=True)
    return EXIT_DEPLOYED


def pidfile_dir(pidfile: str) -> None:
    directory = os.path.dirname(os.path.abspath(pidfile))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create the pidfile's directory {directory}: "
                          f"{exc.strerror}") from None
