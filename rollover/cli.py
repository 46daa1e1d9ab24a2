"""`rollover`: look at a rollover master and ask it for a rolling reload.

    rollover status --pidfile /run/app/gunicorn.pid [--json]
    ROLLOVER_PIDFILE=/run/app/gunicorn.pid rollover status   # the default --pidfile
    rollover reload --pidfile /run/app/gunicorn.pid [--wait [--timeout 300]]
    rollover deploy --pidfile /run/app/gunicorn.pid --root /srv/app --source DIR ...

The tool never signals a pid it has not validated: the pidfile must name a live process,
that process must be a gunicorn master, and the master's status file must name the same
pid. Every problem is one line on stderr prefixed ``rollover:`` and exit code 2.

Validating the master, sending the HUP and following the roll (`reload --wait`) is
`rollover.client`'s, shared with `rollover deploy`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, NoReturn

from rollover import __version__
from rollover.client import (
    Done,
    MasterError,
    Progress,
    RollTimeout,
    duration,
    follow_roll,
    send_hup,
    timeout_seconds,
    validate_master,
)
from rollover.deploy import command as deploy_command
from rollover.settings import PIDFILE_ENV
from rollover.status import default_status_path, parse_iso

EXIT_OK = 0  # done; with --wait: the roll succeeded
EXIT_ABORTED = 1  # reload --wait: the roll was aborted (the old workers keep serving)
EXIT_ERROR = 2  # usage error, no such master, unreadable status, master exited meanwhile
EXIT_TIMEOUT = 3  # reload --wait: the roll did not end within --timeout (it carries on)
EXIT_INTERRUPTED = 130  # Ctrl-C

DEFAULT_TIMEOUT = 300.0

_ENVIRONMENT = f"""
environment:
  {PIDFILE_ENV}   the default of --pidfile
"""

# Exit codes per subcommand: each subcommand's --help lists only its own.
STATUS_EPILOG = f"""\
exit codes:
  {EXIT_OK}    ok
  {EXIT_ERROR}    usage error, no such master, not a rollover master, unreadable status
  {EXIT_INTERRUPTED}  interrupted
""" + _ENVIRONMENT

RELOAD_EPILOG = f"""\
exit codes:
  {EXIT_OK}    ok (with --wait: the roll succeeded: no worker of an older generation
       accepts connections any more)
  {EXIT_ABORTED}    with --wait: the roll was aborted, the old workers keep serving
  {EXIT_ERROR}    usage error, no such master, not a rollover master, unreadable status,
       or the master exited while waiting
  {EXIT_TIMEOUT}    with --wait: timed out waiting for the roll (the roll carries on in
       the master; `rollover status` follows it)
  {EXIT_INTERRUPTED}  interrupted
""" + _ENVIRONMENT

EPILOG = """\
Each command's exit codes: rollover COMMAND --help.
""" + _ENVIRONMENT

# Where the pidfile comes from, in each command's usage line.
PIDFILE_USAGE = f"(--pidfile F | ${PIDFILE_ENV})"


# --- rollover status ---------------------------------------------------------------------


def age(ts: Any, now: float) -> str:
    """`12s`, `5m07s`, `3h05m`, `2d04h` since the ISO timestamp `ts` ("?" if unparseable)."""
    try:
        seconds = max(0, int(now - parse_iso(ts)))
    except (TypeError, ValueError, OverflowError):
        return "?"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def describe_last(record: dict[str, Any]) -> str:
    generation, result = record.get("generation", "?"), record.get("result", "?")
    min_ready = record.get("min_ready")
    text = f"generation {generation} {result}"
    text += f" in {duration(record)}" if result == "succeeded" else f" after {duration(record)}"
    if record.get("error"):
        text += f": {record['error']}"
    canary = record.get("canary")
    if isinstance(canary, dict) and canary.get("verdict") in ("passed", "not judged"):
        text += f" (canary {canary['verdict']}: {canary.get('summary')})"
    if min_ready is not None:
        text += f" (min ready {min_ready})"
    return text


def _newer(at: Any, last: Any) -> bool:
    """Whether the handoff at `at` came after the last rollout `last` finished."""
    if not isinstance(last, dict) or not last.get("finished"):
        return True
    try:
        return parse_iso(at) >= parse_iso(last["finished"])
    except (TypeError, ValueError, OverflowError):
        return True


def degraded_reason(status: dict[str, Any], now: float) -> str:
    """Why fewer workers than wanted are READY: the last respawn failure and when the next
    respawn is due, or the workers still booting."""
    respawn = status.get("respawn")
    if isinstance(respawn, dict) and respawn.get("last_failure"):
        text = f"last respawn failed: {respawn['last_failure']}"
        try:
            wait = parse_iso(str(respawn.get("next_at"))) - now
        except (TypeError, ValueError, OverflowError):
            return text
        return text + (f"; next respawn in {wait:.0f}s" if wait >= 0.5 else "; respawning")
    booting = sum(1 for w in status["workers"]
                  if isinstance(w, dict) and w.get("state") == "booting")
    return f"{booting} worker(s) booting" if booting else "waiting for a respawn"


def ready_by_generation(workers: list[dict[str, Any]], current: dict[str, Any],
                        target: Any) -> str:
    """`3 on generation 2, 1/4 on generation 3`: the READY workers of each generation in a
    roll, the rolling one last, counted toward the target."""
    rolling = current.get("generation")
    counts: dict[Any, int] = {}
    for w in workers:
        if w.get("state") == "ready":
            counts[w.get("generation")] = counts.get(w.get("generation"), 0) + 1
    older = sorted((g for g in counts if g != rolling), key=str)
    parts = [f"{counts[g]} on generation {g}" for g in older]
    parts.append(f"{counts.get(rolling, 0)}/{target} on generation {rolling}")
    return ", ".join(parts)


def render_status(status: dict[str, Any], now: float) -> str:
    workers = [w for w in status["workers"] if isinstance(w, dict)]
    ready = sum(1 for w in workers if w.get("state") == "ready")
    target = status.get("workers_target", len(workers))
    serving = status.get("serving_generation", status["generation"])
    current, last = status.get("rollout"), status.get("last_rollout")
    if isinstance(current, dict):
        # one count per generation: the new one's toward the target, the older ones' beside
        lines = [f"master {status['pid']} · generation {serving} · {status['state']}"
                 f" · ready: {ready_by_generation(workers, current, target)}"]
    else:
        lines = [f"master {status['pid']} · generation {serving} · {status['state']}"
                 f" · {ready}/{target} workers ready"]
    if status["state"] == "degraded":
        lines.append(f"degraded: {degraded_reason(status, now)}")
    if serving != status["generation"] and not isinstance(current, dict):
        code = ("the code on disk" if status.get("serving_code") == "disk"
                else "its preloaded code")
        lines.append(f"generation {status['generation']} was not rolled out: respawns use "
                     f"generation {serving}'s config and {code}")
    if isinstance(current, dict):
        line = (f"rolling to generation {current.get('generation', '?')},"
                f" started {age(current.get('started'), now)} ago")
        accepting = [str(w.get("pid", "?")) for w in workers
                     if w.get("state") == "draining" and w.get("accepting") is True]
        if accepting:
            line += (f"; waiting for retired worker(s) {', '.join(accepting)} to stop "
                     f"accepting")
        lines.append(line)
        canary = current.get("canary")
        if isinstance(canary, dict) and canary.get("verdict") is None:
            lines.append(f"canary: worker {canary.get('pid')} answered "
                         f"{canary.get('requests', 0)} requests, {canary.get('failures', 0)} "
                         f"with 5xx; waiting for its verdict")
    handoff = status.get("handoff")
    if isinstance(handoff, dict) and _newer(handoff.get("at"), last):
        lines.append(f"last rollout: USR2 handoff from master {handoff.get('from_pid')} to "
                     f"generation {handoff.get('generation')} ({handoff.get('release')}), "
                     f"{age(handoff.get('at'), now)} ago")
        if isinstance(last, dict):
            lines.append(f"before it: {describe_last(last)}, {age(last.get('finished'), now)}"
                         " ago")
    elif isinstance(last, dict):
        lines.append(f"last rollout: {describe_last(last)}, {age(last.get('finished'), now)} ago")
    elif not isinstance(current, dict):
        lines.append("no rollout yet")
    lines.append("")
    lines.append(f"{'PID':>8}  {'GEN':>4}  {'STATE':<8}  {'SINCE':<8}  {'REQUESTS':>8}"
                 f"  {'5XX':>6}")
    for w in workers:
        raw = w.get("requests")
        counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        served = counts.get("requests", "-")
        errors = (counts.get("5xx", 0) + counts.get("failed", 0)) if counts else "-"
        line = (f"{w.get('pid', '?')!s:>8}  {w.get('generation', '?')!s:>4}"
                f"  {w.get('state', '?')!s:<8}  {age(w.get('since'), now):<8}"
                f"  {served!s:>8}  {errors!s:>6}")
        if w.get("recycle"):
            line += f"  asked to be replaced: {w['recycle']}"
            if w.get("overdue"):
                line += " (past twice its limit: no replacement could boot)"
        lines.append(line.rstrip())
    if not workers:
        lines.append(f"{'(none)':>8}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    _, status = validate_master(args.pidfile, args.status or default_status_path(args.pidfile))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render_status(status, time.time()))
    return EXIT_OK


# --- rollover reload ---------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace) -> int:
    status_path = args.status or default_status_path(args.pidfile)
    pid, status, sent_at = send_hup(args.pidfile, status_path)
    print(f"sent HUP to master {pid}", flush=True)
    if not args.wait:
        return EXIT_OK
    return wait_for_roll(pid, status_path, status, sent_at, args.timeout)


def wait_for_roll(pid: int, path: str, status: dict[str, Any], sent_at: float,
                  timeout: float) -> int:
    def show(progress: Progress) -> None:
        print(progress.line(), flush=True)

    try:
        done = follow_roll(pid, path, status, sent_at, timeout, show)
    except RollTimeout as exc:
        error(str(exc))
        return EXIT_TIMEOUT
    return report(done)


def report(done: Done) -> int:
    record = done.record
    generation = record.get("generation", "?")
    if done.result == "succeeded":
        text = f"rolled out generation {generation} in {duration(record)}"
        if record.get("min_ready") is not None:
            text += f" (min ready {record['min_ready']})"
        print(text)
        return EXIT_OK
    cause = record.get("error") or "no cause recorded"
    error(f"rollout of generation {generation} {done.result}: {cause}")
    return EXIT_ABORTED


# --- command line ------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required"):
            message = message.replace("--pidfile", f"--pidfile (or ${PIDFILE_ENV})", 1)
        error(f"{message} (see '{self.prog} --help')")
        sys.exit(EXIT_ERROR)


def build_parser() -> Parser:
    parser = Parser(
        prog="rollover",
        description="Zero-downtime rolling reload for gunicorn: inspect a rollover master or "
        "ask it to roll its workers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rollover {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, epilog: str,
                pidfile_elsewhere: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        default = os.environ.get(PIDFILE_ENV) or None
        sub.add_argument("--pidfile", required=default is None and not pidfile_elsewhere,
                         default=default, metavar="F",
                         help=f"the gunicorn master's pidfile (gunicorn --pid); default: "
                         f"${PIDFILE_ENV}" + (f" ({default})" if default else ", unset")
                         + pidfile_elsewhere)
        sub.add_argument("--status", metavar="S",
                         help="the status file (default: next to the pidfile, "
                         "gunicorn.pid -> gunicorn.rollover.json)")
        return sub

    status = command("status", "show the master's workers and rolls", STATUS_EPILOG)
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(run=cmd_status)

    reload = command("reload", "send HUP to the master: roll the workers one at a time",
                     RELOAD_EPILOG)
    reload.add_argument("--wait", action="store_true",
                        help="follow the roll until it ends; exit 0 if it succeeded, "
                        "1 if it was aborted")
    reload.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS",
                        help=f"with --wait: give up after SECONDS (default {DEFAULT_TIMEOUT:g}), "
                        f"exit {EXIT_TIMEOUT}")
    reload.set_defaults(run=cmd_reload)

    deploy = command("deploy", "build a release into <root>/releases, preflight it, switch "
                     "<root>/current to it and reload the master with no downtime (HUP or "
                     "USR2 handoff); roll back on failure", epilog=deploy_command.EPILOG,
                     pidfile_elsewhere=", else pidfile in <root>/rollover.toml")
    deploy_command.add_arguments(deploy)
    deploy.set_defaults(run=deploy_command.run)
    for sub in (status, reload, deploy):
        sub.set_defaults(parser=sub)
        sub.usage = _usage(sub, pidfile_optional=sub is deploy)
    return parser


def _usage(sub: argparse.ArgumentParser, pidfile_optional: bool = False) -> str:
    """argparse's usage line, saying where the pidfile comes from (the option or the
    environment), and that --timeout goes with --wait."""
    usage = sub.format_usage().removeprefix("usage: ").rstrip("\n")
    shown = PIDFILE_USAGE.replace("$", "$$")
    if pidfile_optional:  # deploy: else the pidfile in rollover.toml
        shown = "[" + shown[1:-1] + "]"
    usage = re.sub(r"\[?--pidfile F\]?", shown, usage, count=1)
    usage = re.sub(r"\[--wait\]\s+\[--timeout SECONDS\]", "[--wait [--timeout SECONDS]]", usage)
    return usage.replace("%", "%%").replace("$$", "$")


def error(message: str) -> None:
    print(f"rollover: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "reload":
            if args.timeout is not None and not args.wait:
                args.parser.error("--timeout only applies with --wait")
            if args.timeout is None:
                args.timeout = DEFAULT_TIMEOUT
        return int(args.run(args))
    except MasterError as exc:
        error(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback
        error(f"unexpected error: {type(exc).__name__}: {exc}")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
