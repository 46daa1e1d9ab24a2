"""`rollover deploy`: the command (its options, the steps in order, `--init`).

See the package's docstring for the steps; each lives in its own module of the package.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from rollover.client import timeout_seconds
from rollover.deploy import config as deploy_config
from rollover.deploy import envfile
from rollover.deploy import shared as shared_paths
from rollover.deploy.build import build, default_python
from rollover.deploy.facts import LiveMaster, find_master, gather
from rollover.deploy.init import init, pidfile_dir, shell_start, start_command
from rollover.deploy.layout import (
    BUILD_LOG,
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
from rollover.status import default_status_path

EPILOG = f"""\
exit codes:
  {EXIT_DEPLOYED}    deployed (--dry-run: planned, nothing changed)
  {EXIT_ROLLED_BACK}    the live step failed; current and every READY worker are on the previous
       release (also when a step of the rollback failed: the cause is printed)
  {EXIT_ERROR}    bad usage or a failed precondition (no such root, not a rollover master,
       another deploy running, USR2 needed but impossible); nothing changed
  {EXIT_BUILD_FAILED}    building the release failed (pip, or a --build command); nothing live was
       touched; the release is kept for inspection, marked failed
  {EXIT_PREFLIGHT_FAILED}    the release failed its preflight (import or readiness probe); nothing
       live was touched; the release is kept, marked failed
  {EXIT_ROLLBACK_FAILED}    the live step failed and the server is not known to serve either
       release (no READY worker, workers on both, or current disagrees): check it
  {EXIT_INTERRUPTED}  interrupted (a live step in progress is rolled back first)
"""

DEFAULT_KEEP = deploy_config.KEYS["keep"][1]
DEFAULT_TIMEOUT = deploy_config.KEYS["timeout"][1]
DEFAULT_PREFLIGHT_TIMEOUT = deploy_config.KEYS["preflight_timeout"][1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`rollover deploy`'s options (--pidfile and --status come with every subcommand).
    Every option that rollover.toml can set defaults to None here: unset, so the file's
    value (then the built-in default) applies; see `config.apply`."""
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="the app root: releases/<id>/, shared/, the current symlink "
                        "and rollover.toml (made by --init or the first deploy)")
    parser.add_argument("--init", action="store_true",
                        help="make the app root, releases/, shared/ (with the env file) and "
                        "the pidfile's directory, write rollover.toml from the options given, "
                        "and print the start command and a systemd unit; deploy nothing")
    parser.add_argument("--bind", metavar="ADDRESS",
                        help="for the printed start command (default 127.0.0.1:8000)")
    parser.add_argument("--workers", type=_positive_int, metavar="N",
                        help="for the printed start command (default 4)")
    parser.add_argument("--app", metavar="MODULE:CALLABLE",
                        help="the app to preflight (default: taken from the master's command "
                        "line)")
    build_group = parser.add_argument_group("building a release (at least one, or --release "
                                            "naming a built one)")
    build_group.add_argument("--source", metavar="DIR",
                             help="the app's files, copied into the release (its "
                             "requirements.txt is installed unless --requirements is given)")
    build_group.add_argument("--requirements", action="append", metavar="FILE",
                             help="pip install -r FILE into the release's venv (repeatable)")
    build_group.add_argument("--wheel", action="append", metavar="FILE",
                             help="pip install FILE into the release's venv (repeatable)")
    build_group.add_argument("--find-links", action="append", metavar="DIR",
                             help="passed to pip (repeatable)")
    build_group.add_argument("--no-index", action="store_true", default=None,
                             help="passed to pip")
    build_group.add_argument("--pip-arg", action="append", metavar="ARG",
                             help="another argument for pip install (repeatable)")
    build_group.add_argument("--python", metavar="PY",
                             help="the interpreter of the release's venv (default: the live "
                             "release's, else the one running rollover)")
    build_group.add_argument("--shared", action="append", metavar="PATH",
                             help="a path of the release linked to <root>/shared/PATH, e.g. "
                             "media/ (trailing / : a directory) or db.sqlite3; not copied from "
                             "the source, never pruned (repeatable)")
    build_group.add_argument("--build", action="append", metavar="CMD",
                             help="a shell command run in the new release after pip, with its "
                             "venv first on PATH, the shared links and the env file, e.g. "
                             "'python manage.py collectstatic --noinput' (repeatable)")
    build_group.add_argument("--build-timeout", type=timeout_seconds, metavar="SECONDS",
                             help="for each --build command (default 900)")
    parser.add_argument("--env-file", metavar="FILE",
                        help="the app's environment (KEY=VALUE lines) for the build commands "
                        "and the preflight, wins over this shell's (default: <root>/shared/"
                        ".env if it exists); the master gets it from systemd's "
                        "EnvironmentFile=")
    parser.add_argument("--release", metavar="ID",
                        help="the release id (default: a UTC timestamp); without build inputs "
                        "it names a release already built, e.g. to go back to it")
    parser.add_argument("--probe-path", metavar="PATH",
                        help="the readiness probe for the preflight (default: the master's "
                        "rollover_probe_path, else ROLLOVER_PROBE_PATH in the env file; '' "
                        "for none)")
    parser.add_argument("--interface", choices=("auto", "wsgi", "asgi"),
                        help="how to call the app in the preflight (default: from the "
                        "master's worker class, else from the app object)")
    parser.add_argument("--method", choices=("auto", "hup", "usr2"),
                        help="how to switch the live master (default: auto, see README)")
    parser.add_argument("--keep", type=_positive_int, metavar="K",
                        help=f"releases that served to keep (default {DEFAULT_KEEP}); the "
                        "live one, the rollback target and releases in use are never removed")
    parser.add_argument("--keep-failed", type=_positive_int, metavar="K",
                        help="releases that failed (build, preflight, rolled back) to keep "
                        "for inspection (default 3)")
    parser.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS",
                        help="for each live step (roll, handoff) "
                        f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--preflight-timeout", type=timeout_seconds, metavar="SECONDS",
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


def settings(opts: argparse.Namespace) -> dict[str, Any]:
    """Read `<root>/rollover.toml` and fill the options the command line left unset;
    returns the options that were given on the command line (paths made absolute)."""
    given = {}
    for key, (kind, _) in deploy_config.KEYS.items():
        value = getattr(opts, key, None)
        if value is not None:
            if kind == "path":
                value = os.path.abspath(value)
            elif kind == "paths":
                value = [os.path.abspath(v) for v in value]
            given[key] = value
    root = os.path.abspath(opts.root)
    config, _ = deploy_config.load(root) if os.path.isdir(root) else ({}, None)
    deploy_config.apply(opts, config)
    if not opts.pidfile:
        raise DeployError("which master? give --pidfile F (gunicorn --pid), or pidfile = "
                          f"\"...\" in {os.path.join(root, deploy_config.CONFIG_NAME)}")
    return given


def app_environment(opts: argparse.Namespace, layout: Layout) -> tuple[str | None,
                                                                          dict[str, str]]:
    """The env file (given, or `<root>/shared/.env` if it exists) and its variables."""
    path = opts.env_file
    if path is None and (layout.shared / envfile.DEFAULT_NAME).is_file():
        path = str(layout.shared / envfile.DEFAULT_NAME)
    return path, (envfile.read(path) if path else {})


def deploy(opts: argparse.Namespace, report: Report) -> int:
    given = settings(opts)
    if opts.init:
        return init(opts, given, report)
    layout = Layout(opts.root)
    report.root = str(layout.root)
    # a build needs its inputs on the command line: rollover.toml's requirements and wheels
    # only add to a build (`--release ID` alone redeploys a built release)
    building = bool(opts.source or given.get("requirements") or given.get("wheel"))
    if not building and not opts.release:
        raise DeployError("nothing to deploy: give --source, --requirements or --wheel, or "
                          "--release naming a built release")
    if opts.release is not None and not RELEASE_ID.match(opts.release):
        raise DeployError(f"bad release id {opts.release!r} (letters, digits, . _ + -)")
    if opts.source and not os.path.isdir(opts.source):
        raise DeployError(f"--source {opts.source}: no such directory")
    for path in [*opts.requirements, *opts.wheel] if building else []:
        if not os.path.isfile(path):
            raise DeployError(f"{path}: no such file")
    if given.get("build") and not building:  # rollover.toml's apply to builds only
        raise DeployError("--build runs in a release being built: give --source (or "
                          "--requirements/--wheel) too")
    shared = shared_paths.entries(opts.shared)
    env_path, file_env = app_environment(opts, layout)
    env = envfile.environment(file_env)
    layout.check(create=building and not opts.dry_run)
    if building and not opts.dry_run and not os.path.exists(opts.pidfile):
        pidfile_dir(opts.pidfile)
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
        probe = _probe_path(opts, master, file_env)
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
        _say_environment(env_path, file_env, master, report)
        if building:
            existing = layout.release(release_id)
            if existing is not None and existing.failed and release_id != previous \
                    and not opts.dry_run:
                layout.trash(existing.path)  # deleted in the background by the prune
                report.say("build", f"replacing the failed release {release_id} "
                           f"({existing.failed})")
            elif layout.path(release_id).exists():
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
            if shared:
                shared_paths.prepare(layout.shared, shared, None)
                shared_paths.link(release_dir, layout.shared, shared)
        scratch = building and opts.dry_run
        try:
            try:
                if building:
                    build(opts, release_dir, opts.python or default_python(layout), report,
                          layout, shared, env)
                facts = preflight(release_dir, app, probe, interface, opts.preflight_timeout,
                                  report, env)
            except BaseException as exc:
                if not scratch:
                    _rejected(opts, layout, release_dir, exc, previous, report,
                              building=building)
                raise
            plan = decide(gather(layout, master, facts, release_dir) if master else None,
                          opts.method)
            report.method, report.reasons = plan.method, plan.reasons
            _say_plan(plan, report)
            if plan.method == "usr2" and master is not None:
                check_usr2_possible(layout, master, str(release_dir / "venv" / "bin" / "python"))
            if opts.dry_run:
                prune(layout, opts.keep, {r for r in (previous,) if r}, report, dry_run=True,
                      keep_failed=opts.keep_failed)
                print(f"dry run: would switch current to {release_id} by "
                      f"{plan.method.upper() if plan.method != 'start' else 'no reload'}",
                      file=report.out, flush=True)
                return EXIT_DEPLOYED
        finally:
            if scratch:
                shutil.rmtree(release_dir, ignore_errors=True)
        return go_live(opts, layout, master, previous, release_id, release_dir, facts, plan,
                       report, env_path)


def _probe_path(opts: argparse.Namespace, master: LiveMaster | None,
                file_env: dict[str, str]) -> str | None:
    """--probe-path (or rollover.toml's probe_path), else the master's, else the env
    file's ROLLOVER_PROBE_PATH (what a master started with it will probe): so the first
    deploy, with no master yet, probes too."""
    if opts.probe_path is not None:
        return str(opts.probe_path) or None
    if master is not None:
        return master.probe_path
    return file_env.get("ROLLOVER_PROBE_PATH") or None


def _say_environment(path: str | None, file_env: dict[str, str], master: LiveMaster | None,
                     report: Report) -> None:
    if path is None:
        return
    count = f"{len(file_env)} variable" + ("" if len(file_env) == 1 else "s")
    report.say("env", f"{path}: {count} for the build and the preflight")
    if master is None:
        return
    differ = envfile.differences(file_env, master.environ)
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5
                                         else "")
        report.say("env", f"warning: master {master.pid} does not have {shown} as the env file "
                   "says; it keeps the environment it started with across HUP and USR2: "
                   "restart it (systemctl restart) to apply the file")


def _rejected(opts: argparse.Namespace, layout: Layout, release_dir: Path, exc: BaseException,
              previous: str | None, report: Report, building: bool) -> None:
    """A build or preflight failed: a release built now stays for inspection, marked
    failed (counted by --keep-failed); failed releases beyond that count are pruned."""
    if not building:
        return
    cause = str(exc) if isinstance(exc, DeployError) else (
        "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
    if not release_dir.exists():
        return
    mark(release_dir, f"rejected {now()}: {cause}", failed=cause)
    report.say("build" if "build failed" in cause else "preflight",
               f"kept {release_dir} for inspection (build log: {BUILD_LOG})")
    if isinstance(exc, DeployError):
        with contextlib.suppress(Exception):
            prune(layout, opts.keep, {r for r in (previous, release_dir.name) if r}, report,
                  dry_run=False, keep_failed=opts.keep_failed,
                  referenced=master_references(opts.pidfile, opts.status or
                                               default_status_path(opts.pidfile)))


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
            plan: Plan, report: Report, env_path: str | None = None) -> int:
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
                  else f"failed {now()}: {cause}; rollback: {problem}", failed=cause)
            error(line)
            return code
        report.say("verify", line)
    how = {"start": "no reload", "hup": "HUP", "usr2": "USR2 handoff"}[plan.method]
    mark(release_dir, f"deployed {now()} ({how})", served=True)
    if master is None:
        report.start_command = start_command(layout, opts)
        report.start_shell = shell_start(layout, opts, env_path) if env_path else None
        print("start gunicorn on it with:\n  " + (report.start_shell
                                                  or shlex.join(report.start_command)),
              file=report.out, flush=True)
    print(f"deployed {release_id} in {time.monotonic() - report.started:.1f}s ({how})",
          file=report.out, flush=True)
    # after the result: decided and moved out of releases/ at once, deleted in the
    # background (a big venv takes seconds to unlink on a busy disk)
    protect = {release_id} | ({previous} if previous else set())
    with contextlib.suppress(Exception):
        prune(layout, opts.keep, protect, report, dry_run=False, keep_failed=opts.keep_failed,
              referenced=master_references(opts.pidfile,
                                           master.status_path if master else None))
    return EXIT_DEPLOYED
