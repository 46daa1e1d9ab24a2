"""`rollover deploy`: the command (its options, the steps in order, `--init`).

See the package's docstring for the steps; each lives in its own module of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from rollover.deploy.build import build, default_python
from rollover.deploy.facts import LiveMaster, find_master, gather
from rollover.deploy.layout import (
    RELEASE_ID,
    Layout,
    current_or_none,
    mark,
    new_release_id,
    now,
)
from rollover.deploy.live import Handoff, live_hup, live_usr2
from rollover.deploy.plan import Plan, check_usr2_possible
from rollover.deploy.plan import plan as decide
from rollover.deploy.preflight import preflight
from rollover.deploy.prune import master_references, prune
from rollover.deploy.report import (
    EXIT_BUILD_FAILED,
    EXIT_DEPLOYED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_PREFLIGHT_FAILED,
    EXIT_ROLLBACK_FAILED,
    EXIT_ROLLED_BACK,
    DeployError,
    LiveFailure,
    Report,
    error,
)
from rollover.deploy.rollback import failure_outcome, rollback, serving_release
from rollover.master import timeout_seconds
from rollover.status import default_status_path

EPILOG = f"""\
exit codes:
  {EXIT_DEPLOYED}    deployed (--dry-run: planned, nothing changed)
  {EXIT_ROLLED_BACK}    the live step failed; current and every READY worker are on the previous
       release (also when a step of the rollback failed: the cause is printed)
  {EXIT_ERROR}    bad usage or a failed precondition (no such root, not a rollover master,
       another deploy running, USR2 needed but impossible); nothing changed
  {EXIT_BUILD_FAILED}    building the release failed; nothing changed
  {EXIT_PREFLIGHT_FAILED}    the release failed its preflight (import or readiness probe); nothing
       live was touched
  {EXIT_ROLLBACK_FAILED}    the live step failed and the server is not known to serve either
       release (no READY worker, workers on both, or current disagrees): check it
  {EXIT_INTERRUPTED}  interrupted (a live step in progress is rolled back first)
"""

DEFAULT_KEEP = 5
DEFAULT_TIMEOUT = 300.0
DEFAULT_PREFLIGHT_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rollover deploy`'s options (--pidfile and --status come with every subcommand)."""
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="the app root: releases/<id>/ and the current symlink (made "
                        "by --init or the first deploy)")
    parser.add_argument("--init", action="store_true",
                        help="make the app root, releases/ and the pidfile's directory, and "
                        "print the start command and a systemd unit for them; deploy nothing")
    parser.add_argument("--bind", default="127.0.0.1:8000", metavar="ADDRESS",
                        help="for the printed start command (default 127.0.0.1:8000)")
    parser.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                        help="for the printed start command (default 4)")
    parser.add_argument("--app", metavar="MODULE:CALLABLE",
                        help="the app to preflight (default: taken from the master's command "
                        "line)")
    build_group = parser.add_argument_group("building a release (at least one, or --release "
                                            "naming a built one)")
    build_group.add_argument("--source", metavar="DIR",
                             help="the app's files, copied into the release (its "
                             "requirements.txt is installed unless --requirements is given)")
    build_group.add_argument("--requirements", action="append", default=[], metavar="FILE",
                             help="pip install -r FILE into the release's venv (repeatable)")
    build_group.add_argument("--wheel", action="append", default=[], metavar="FILE",
                             help="pip install FILE into the release's venv (repeatable)")
    build_group.add_argument("--find-links", action="append", default=[], metavar="DIR",
                             help="passed to pip (repeatable)")
    build_group.add_argument("--no-index", action="store_true", help="passed to pip")
    build_group.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                             help="another argument for pip install (repeatable)")
    build_group.add_argument("--python", metavar="PY",
                             help="the interpreter of the release's venv (default: the live "
                             "release's, else the one running rollover)")
    parser.add_argument("--release", metavar="ID",
                        help="the release id (default: a UTC timestamp); without build inputs "
                        "it names a release already built, e.g. to go back to it")
    parser.add_argument("--probe-path", metavar="PATH",
                        help="the readiness probe for the preflight (default: the master's "
                        "rollover_probe_path; '' for none)")
    parser.add_argument("--interface", choices=("auto", "wsgi", "asgi"), default="auto",
                        help="how to call the app in the preflight (default: from the "
                        "master's worker class, else from the app object)")
    parser.add_argument("--method", choices=("auto", "hup", "usr2"), default="auto",
                        help="how to switch the live master (default: auto, see README)")
    parser.add_argument("--keep", type=_positive_int, default=DEFAULT_KEEP, metavar="K",
                        help=f"releases to keep (default {DEFAULT_KEEP}); the live one, the "
                        "rollback target and releases in use are never removed")
    parser.add_argument("--timeout", type=timeout_seconds, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS", help="for each live step (roll, handoff) "
                        f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--preflight-timeout", type=timeout_seconds,
                        default=DEFAULT_PREFLIGHT_TIMEOUT, metavar="SECONDS",
                        help=f"for the preflight (default {DEFAULT_PREFLIGHT_TIMEOUT:g})")
    parser.add_argument("--strict", action="store_true",
                        help="a HUP roll whose canary was not judged (too little traffic) "
                        "is a failed deploy: the release is flipped back")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary on stdout (progress goes to stderr)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build and preflight in a scratch dir, print the plan; change "
                        "nothing live")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def run(opts: argparse.Namespace) -> int:
    """`rollover deploy`: returns the exit code; never raises (one line on stderr)."""
    report = Report(json_mode=opts.json, dry_run=opts.dry_run)
    try:
        code = deploy(opts, report)
    except DeployError as exc:
        code = exc.code
        report.error = str(exc)
        error(str(exc))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        report.error = report.error or "interrupted"
        error("interrupted")
    except Exception as exc:  # never a traceback
        code = EXIT_ERROR
        report.error = f"unexpected error: {type(exc).__name__}: {exc}"
        error(report.error)
    if opts.json:
        print(json.dumps(report.as_json(code), indent=2), flush=True)
    return code


def deploy(opts: argparse.Namespace, report: Report) -> int:
    if opts.init:
        return init(opts, report)
    layout = Layout(opts.root)
    report.root = str(layout.root)
    building = bool(opts.source or opts.requirements or opts.wheel)
    if not building and not opts.release:
        raise DeployError("nothing to deploy: give --source, --requirements or --wheel, or "
                          "--release naming a built release")
    if opts.release is not None and not RELEASE_ID.match(opts.release):
        raise DeployError(f"bad release id {opts.release!r} (letters, digits, . _ + -)")
    if opts.source and not os.path.isdir(opts.source):
        raise DeployError(f"--source {opts.source}: no such directory")
    for path in [*opts.requirements, *opts.wheel]:
        if not os.path.isfile(path):
            raise DeployError(f"{path}: no such file")
    layout.check(create=building and not opts.dry_run)
    if building and not opts.dry_run and not os.path.exists(opts.pidfile):
        _pidfile_dir(opts.pidfile)
    status_path = opts.status or default_status_path(opts.pidfile)
    with layout.lock():
        previous = layout.current_id()
        report.previous = previous
        master = find_master(opts.pidfile, status_path)
        if master is not None:
            report.master_pid = master.pid
            if master.status.get("state") == "rolling":
                raise DeployError(f"master {master.pid} is rolling already; try again when it "
                                  "is idle")
        app = opts.app or (master.app_spec() if master else None)
        if not app:
            raise DeployError("which app? give --app MODULE:CALLABLE")
        probe = opts.probe_path if opts.probe_path is not None else (
            master.probe_path if master else None)
        interface = opts.interface
        if interface == "auto" and master is not None:
            worker = (master.worker_class() or "").lower()
            if "uvicorn" in worker or worker.endswith("asgi") or "asgiworker" in worker:
                interface = "asgi"
        release_id = opts.release or new_release_id()
        report.release = release_id
        live = f"live: {previous or 'none'}" + (f", master {master.pid}" if master else
                                                 ", no master running")
        print(f"rollover deploy: release {release_id} into {layout.root} ({live})",
              file=report.out, flush=True)
        if building:
            if layout.path(release_id).exists():
                raise DeployError(f"release {release_id} exists already "
                                  f"({layout.path(release_id)})")
            release_dir = (layout.releases / f".dry-run-{release_id}-{os.getpid()}"
                           if opts.dry_run else layout.path(release_id))
        else:
            found = layout.release(release_id)
            if found is None or not found.complete:
                raise DeployError(f"no complete release {release_id} in {layout.releases}")
            if release_id == previous:
                raise DeployError(f"release {release_id} is live already")
            release_dir = found.path
        scratch = building and opts.dry_run
        try:
            try:
                if building:
                    build(opts, release_dir, opts.python or default_python(layout), report)
                facts = preflight(release_dir, app, probe, interface, opts.preflight_timeout,
                                  report)
            except BaseException:
                if building and not scratch:
                    layout.remove(release_dir)  # a rejected build leaves nothing behind
                raise
            plan = decide(gather(layout, master, facts, release_dir) if master else None,
                          opts.method)
            report.method, report.reasons = plan.method, plan.reasons
            _say_plan(plan, report)
            if plan.method == "usr2" and master is not None:
                check_usr2_possible(layout, master, str(release_dir / "venv" / "bin" / "python"))
            if opts.dry_run:
                prune(layout, opts.keep, {r for r in (previous,) if r}, report, dry_run=True)
                print(f"dry run: would switch current to {release_id} by "
                      f"{plan.method.upper() if plan.method != 'start' else 'no reload'}",
                      file=report.out, flush=True)
                return EXIT_DEPLOYED
        finally:
            if scratch:
                shutil.rmtree(release_dir, ignore_errors=True)
        return go_live(opts, layout, master, previous, release_id, release_dir, facts, plan,
                       report)


def _say_plan(plan: Plan, report: Report) -> None:
    started = time.monotonic()
    if plan.method == "start":
        text = "no master running: switch current only (start gunicorn afterwards)"
    elif plan.method == "hup":
        text = "HUP: " + "; ".join(plan.checked)
        if plan.reasons:
            text += " (forced, although: " + "; ".join(plan.reasons) + ")"
    else:
        text = "USR2 handoff: " + "; ".join(plan.reasons)
    report.say("plan", text)
    report.done("plan", started, text)


def go_live(opts: argparse.Namespace, layout: Layout, master: LiveMaster | None,
            previous: str | None, release_id: str, release_dir: Path, facts: dict[str, Any],
            plan: Plan, report: Report) -> int:
    handoff = Handoff()
    started = time.monotonic()
    layout.switch(release_id)
    report.say("switch", f"current -> releases/{release_id}")
    report.done("switch", started, f"current -> releases/{release_id}")
    interrupted = False
    try:
        if master is None:
            report.say("reload", f"no master running (pidfile {opts.pidfile}): start gunicorn "
                       f"to serve {release_id}")
        elif plan.method == "hup":
            live_hup(opts, master, release_dir, report)
        else:
            live_usr2(opts, master, release_dir, facts, report, handoff)
    except (LiveFailure, KeyboardInterrupt, OSError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        cause = "interrupted" if interrupted else str(exc)
        if isinstance(exc, OSError):
            cause = f"{type(exc).__name__}: {exc}"
        report.error = cause
        report.say("handoff" if plan.method == "usr2" else "reload", f"failed: {cause}")
        assert master is not None
        problem = rollback(opts, layout, master, previous, plan.method, handoff, report)
        report.rollback_error = problem
        current = current_or_none(layout)
        report.serving = serving_release(layout, opts.pidfile, master.status_path)
        code, line = failure_outcome(release_id, previous, current, report.serving, cause,
                                     problem, interrupted)
        if code != EXIT_DEPLOYED:
            mark(release_dir, f"rolled back {now()}: {cause}" if code != EXIT_ROLLBACK_FAILED
                  else f"failed {now()}: {cause}; rollback: {problem}")
            error(line)
            return code
        report.say("verify", line)
    how = {"start": "no reload", "hup": "HUP", "usr2": "USR2 handoff"}[plan.method]
    mark(release_dir, f"deployed {now()} ({how})")
    protect = {release_id} | ({previous} if previous else set())
    prune(layout, opts.keep, protect, report, dry_run=False,
          referenced=master_references(opts.pidfile, master.status_path if master else None))
    if master is None:
        report.start_command = start_command(layout, opts)
        print("start gunicorn on it with:\n  " + shlex.join(report.start_command),
              file=report.out, flush=True)
    print(f"deployed {release_id} in {time.monotonic() - report.started:.1f}s ({how})",
          file=report.out, flush=True)
    return EXIT_DEPLOYED


def start_command(layout: Layout, opts: argparse.Namespace) -> list[str]:
    """How to start gunicorn on this root: everything through `current` (the interpreter,
    the chdir), so HUPs and USR2 handoffs follow it."""
    current = str(layout.current)
    return [f"{current}/venv/bin/python", f"{current}/venv/bin/gunicorn",
            "-c", "python:rollover.hooks", "--chdir", current,
            "--pid", os.path.abspath(opts.pidfile), "--bind", opts.bind,
            "--workers", str(opts.workers), opts.app or "app:app"]


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


def systemd_unit(layout: Layout, opts: argparse.Namespace) -> str:
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
                               start=start)


def init(opts: argparse.Namespace, report: Report) -> int:
    """`--init`: the app root, releases/ and the pidfile's directory; print how to start."""
    layout = Layout(opts.root)
    report.root = str(layout.root)
    layout.check(create=True)
    _pidfile_dir(opts.pidfile)
    report.start_command = start_command(layout, opts)
    out = report.out
    print(f"app root {layout.root}: releases/ ready, pidfile in "
          f"{os.path.dirname(os.path.abspath(opts.pidfile))}", file=out)
    print("\n1. deploy the first release (no master yet: it only switches current), e.g.:\n  "
          + shlex.join(["rollover", "deploy", "--root", str(layout.root), "--pidfile",
                        os.path.abspath(opts.pidfile), "--app", opts.app or "app:app",
                        "--source", "./app", "--wheel", "gunicorn_rollover-*.whl"]), file=out)
    print("\n2. start gunicorn through current:\n  " + shlex.join(report.start_command),
          file=out)
    print("\n   or as a systemd unit:\n", file=out)
    print(systemd_unit(layout, opts), file=out)
    print("3. later releases: the same `rollover deploy` (HUP or USR2 handoff, with rollback)",
          file=out, flush=True)
    return EXIT_DEPLOYED


def _pidfile_dir(pidfile: str) -> None:
    directory = os.path.dirname(os.path.abspath(pidfile))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create the pidfile's directory {directory}: "
                          f"{exc.strerror}") from None
