"""`rollover`: look at a rollover master and ask it for a rolling reload.

    rollover status --pidfile /run/app/gunicorn.pid [--json]
    rollover reload --pidfile /run/app/gunicorn.pid [--wait [--timeout 300]]
    rollover deploy --pidfile /run/app/gunicorn.pid --root /srv/app --source DIR ...

The tool never signals a pid it has not validated: the pidfile must name a live process,
that process must be a gunicorn master, and the master's status file must name the same
pid. Every problem is one line on stderr prefixed ``rollover:`` and exit code 2.

`reload --wait` follows the status file until the roll that covers our HUP ends; the
decision is the pure function `follow`, so it can be tested on hand-written status dicts.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from rollover import __version__
from rollover.status import StatusError, default_status_path, parse_iso, read_status

EXIT_OK = 0  # done; with --wait: the roll succeeded
EXIT_ABORTED = 1  # reload --wait: the roll was aborted (the old workers keep serving)
EXIT_ERROR = 2  # usage error, no such master, unreadable status, master exited meanwhile
EXIT_TIMEOUT = 3  # reload --wait: the roll did not end within --timeout
EXIT_INTERRUPTED = 130  # Ctrl-C

DEFAULT_TIMEOUT = 300.0
POLL_INTERVAL = 0.1
CLOCK_SLACK = 0.5  # a roll that started this long before our HUP may still be ours

EPILOG = f"""\
exit codes:
  {EXIT_OK}    ok (reload --wait: the roll succeeded)
  {EXIT_ABORTED}    reload --wait: the roll was aborted, the old workers keep serving
  {EXIT_ERROR}    usage error, no such master, unreadable status, master exited meanwhile
  {EXIT_TIMEOUT}    reload --wait: timed out waiting for the roll
  {EXIT_INTERRUPTED}  interrupted
"""


class CliError(Exception):
    """A problem worth one line on stderr and exit code 2."""


# --- following a roll (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """The roll covering our HUP is under way."""

    generation: int
    new_ready: int
    target: int


@dataclass(frozen=True)
class Done:
    """The roll covering our HUP ended: `result` is "succeeded" or "aborted"."""

    result: str
    record: dict[str, Any]


def covers(record: Any, before: int, sent_at: float) -> bool:
    """Whether a rollout record belongs to a HUP processed after ours was sent.

    `reload` is the master's HUP count when the roll started, so it must exceed the count
    we read before signalling; `started` guards against an earlier roll by someone else
    that the counter alone cannot tell apart (a burst of HUPs may count once).
    """
    if not isinstance(record, dict):
        return False
    reload, started = record.get("reload"), record.get("started")
    if not isinstance(reload, int) or isinstance(reload, bool) or reload <= before:
        return False
    try:
        return parse_iso(started) >= sent_at - CLOCK_SLACK
    except (TypeError, ValueError, OverflowError):
        return False


def follow(status: dict[str, Any], before: int, sent_at: float) -> Progress | Done | None:
    """Where the roll covering our HUP stands in `status`; None while nothing covers it yet.

    A finished covering roll wins over one in progress (ours ended, someone else's began);
    a superseded one means keep following the roll that replaced it.
    """
    last = status.get("last_rollout")
    if covers(last, before, sent_at) and last.get("result") != "superseded":
        return Done(str(last.get("result")), last)
    current = status.get("rollout")
    if covers(current, before, sent_at):
        return Progress(
            generation=_int(current.get("generation")),
            new_ready=_int(current.get("new_ready")),
            target=_int(current.get("target", status.get("workers_target"))),
        )
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- validating the master ---------------------------------------------------------------


def read_pidfile(pidfile: str) -> int:
    try:
        with open(pidfile, encoding="utf-8", errors="replace") as fh:
            text = fh.read(64).strip()
    except OSError as exc:
        raise CliError(f"pidfile {pidfile}: {(exc.strerror or str(exc)).lower()}") from None
    if not text:
        raise CliError(f"pidfile {pidfile}: empty")
    try:
        pid = int(text)
    except ValueError:
        raise CliError(f"pidfile {pidfile}: not a pid: {text[:40]!r}") from None
    if pid <= 0 or pid > 2**31 - 1:  # kill(0) or kill(-n) would signal a process group
        raise CliError(f"pidfile {pidfile}: not a pid: {text[:40]!r}")
    return pid


def is_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie; PermissionError if it is someone else's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) is all we know
    return state not in ("Z", "X")


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise CliError(f"stale pidfile: no process {pid}") from None
    except OSError as exc:
        raise CliError(f"cannot read the command line of process {pid}: {exc.strerror}") from None
    try:  # no /proc (macOS, BSD)
        ps = ["ps", "-p", str(pid), "-o", "command="]
        return subprocess.run(ps, capture_output=True, text=True, check=False).stdout
    except OSError as exc:
        raise CliError(f"cannot read the command line of process {pid}: {exc}") from None


def validate_master(pidfile: str, status_path: str) -> tuple[int, dict[str, Any]]:
    """The master's pid and current status, or CliError; nothing is signalled here."""
    pid = read_pidfile(pidfile)
    try:
        alive = is_alive(pid)
    except PermissionError:
        raise CliError(f"process {pid} belongs to another user") from None
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise CliError(f"process {pid} belongs to another user") from None
        raise CliError(f"cannot check process {pid}: {exc.strerror or exc}") from None
    if not alive:
        raise CliError(f"stale pidfile: no process {pid}")
    if "gunicorn" not in command_line(pid):
        raise CliError(f"process {pid} is not a gunicorn master")
    try:
        status = read_status(status_path)
    except StatusError as exc:
        raise CliError(str(exc)) from None
    if status["pid"] != pid:
        raise CliError(
            f"master {pid} is not running rollover (status file names pid {status['pid']})"
        )
    return pid, status


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


def duration(record: dict[str, Any]) -> str:
    try:
        return f"{parse_iso(record['finished']) - parse_iso(record['started']):.1f}s"
    except (KeyError, TypeError, ValueError, OverflowError):
        return "?s"


def describe_last(record: dict[str, Any]) -> str:
    generation, result = record.get("generation", "?"), record.get("result", "?")
    min_ready = record.get("min_ready")
    text = f"generation {generation} {result}"
    text += f" in {duration(record)}" if result == "succeeded" else f" after {duration(record)}"
    if record.get("error"):
        text += f": {record['error']}"
    if min_ready is not None:
        text += f" (min ready {min_ready})"
    return text


def degraded_reason(status: dict[str, Any], now: float) -> str:
    """Why fewer workers than wanted are READY: the last respawn failure and when the next
    respawn is due, or the workers still booting."""
    respawn = status.get("respawn")
    if isinstance(respawn, dict) and respawn.get("last_failure"):
        text = f"last respawn failed: {respawn['last_failure']}"
        try:
            wait = parse_iso(respawn.get("next_at")) - now
        except (TypeError, ValueError, OverflowError):
            return text
        return text + (f"; next respawn in {wait:.0f}s" if wait >= 0.5 else "; respawning")
    booting = sum(1 for w in status["workers"]
                  if isinstance(w, dict) and w.get("state") == "booting")
    return f"{booting} worker(s) booting" if booting else "waiting for a respawn"


def render_status(status: dict[str, Any], now: float) -> str:
    workers = [w for w in status["workers"] if isinstance(w, dict)]
    ready = sum(1 for w in workers if w.get("state") == "ready")
    target = status.get("workers_target", len(workers))
    serving = status.get("serving_generation", status["generation"])
    lines = [
        f"master {status['pid']} · generation {serving} · {status['state']}"
        f" · {ready}/{target} workers ready"
    ]
    current, last = status.get("rollout"), status.get("last_rollout")
    if status["state"] == "degraded":
        lines.append(f"degraded: {degraded_reason(status, now)}")
    if serving != status["generation"] and not isinstance(current, dict):
        code = ("the code on disk" if status.get("serving_code") == "disk"
                else "its preloaded code")
        lines.append(f"generation {status['generation']} was not rolled out: respawns use "
                     f"generation {serving}'s config and {code}")
    if isinstance(current, dict):
        lines.append(
            f"rolling generation {current.get('generation', '?')}:"
            f" {current.get('new_ready', '?')}/{current.get('target', target)} new workers ready,"
            f" started {age(current.get('started'), now)} ago"
        )
    if isinstance(last, dict):
        lines.append(f"last rollout: {describe_last(last)}, {age(last.get('finished'), now)} ago")
    elif not isinstance(current, dict):
        lines.append("no rollout yet")
    lines.append("")
    lines.append(f"{'PID':>8}  {'GEN':>4}  {'STATE':<8}  SINCE")
    for w in workers:
        lines.append(
            f"{w.get('pid', '?')!s:>8}  {w.get('generation', '?')!s:>4}"
            f"  {w.get('state', '?')!s:<8}  {age(w.get('since'), now)}"
        )
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
    pid, status = validate_master(args.pidfile, status_path)
    before = status["reloads"]
    sent_at = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"stale pidfile: no process {pid}") from None
    except PermissionError:
        raise CliError(f"process {pid} belongs to another user") from None
    print(f"sent HUP to master {pid}", flush=True)
    if not args.wait:
        return EXIT_OK
    return wait_for_roll(pid, status_path, status, before, sent_at, args.timeout)


def poll_status(path: str, pid: int) -> dict[str, Any] | None:
    """The status if readable and still our master's; None for a transient miss."""
    try:
        status = read_status(path)
    except StatusError:
        return None
    return status if status["pid"] == pid else None


def wait_for_roll(
    pid: int, path: str, status: dict[str, Any], before: int, sent_at: float, timeout: float
) -> int:
    deadline = time.monotonic() + timeout
    shown: Progress | None = None
    while True:
        alive = is_alive(pid)  # sampled before reading: a final status is never missed
        status = poll_status(path, pid) or status
        outcome = follow(status, before, sent_at)
        if isinstance(outcome, Done):
            return report(outcome)
        if isinstance(outcome, Progress) and outcome != shown:
            shown = outcome
            print(f"{shown.new_ready}/{shown.target} workers on generation {shown.generation}",
                  flush=True)
        if not alive:
            raise CliError(f"master {pid} exited while waiting for the roll")
        if time.monotonic() >= deadline:
            where = f"state: {status.get('state', '?')}"
            if shown is not None:
                where += f", {shown.new_ready}/{shown.target} on generation {shown.generation}"
            elif status["reloads"] <= before:
                where += ", the master has not processed the HUP yet"
            error(f"timed out after {timeout:g}s waiting for the roll; {where}")
            return EXIT_TIMEOUT
        time.sleep(POLL_INTERVAL)


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
        error(f"{message} (see 'rollover --help')")
        sys.exit(EXIT_ERROR)


def timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


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

    def command(name: str, help: str, epilog: str = EPILOG) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--pidfile", required=True, metavar="F",
                         help="the gunicorn master's pidfile (gunicorn --pid)")
        sub.add_argument("--status", metavar="S",
                         help="the status file (default: next to the pidfile, "
                         "gunicorn.pid -> gunicorn.rollover.json)")
        return sub

    status = command("status", "show the master's workers and rolls")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(run=cmd_status)

    reload = command("reload", "send HUP to the master: roll the workers one at a time")
    reload.add_argument("--wait", action="store_true",
                        help="follow the roll until it ends; exit 0 if it succeeded, "
                        "1 if it was aborted")
    reload.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS",
                        help=f"with --wait: give up after SECONDS (default {DEFAULT_TIMEOUT:g}), "
                        f"exit {EXIT_TIMEOUT}")
    reload.set_defaults(run=cmd_reload)

    from rollover import deploy as deploy_command  # imported here: it imports this module

    deploy = command("deploy", "build a release into <root>/releases, preflight it, switch "
                     "<root>/current to it and reload the master with no downtime (HUP or "
                     "USR2 handoff); roll back on failure", epilog=deploy_command.EPILOG)
    deploy_command.add_arguments(deploy)
    deploy.set_defaults(run=deploy_command.run)
    return parser


def error(message: str) -> None:
    print(f"rollover: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "reload":
            if args.timeout is not None and not args.wait:
                parser.error("--timeout only applies with --wait")
            if args.timeout is None:
                args.timeout = DEFAULT_TIMEOUT
        return int(args.run(args))
    except CliError as exc:
        error(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # never a traceback
        error(f"unexpected error: {type(exc).__name__}: {exc}")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
