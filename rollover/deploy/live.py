"""The live step, once `current` names the new release: a HUP (the master rolls its
workers onto it, `rollover reload --wait` semantics), or a USR2 handoff (the master
re-executes through `current` into a new master that inherits the listening sockets; once
the new master's workers are all READY, the pidfile names it and the old master is
stopped). Then the READY workers' working directory is checked to be the new release.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollover.client import (
    POLL_INTERVAL,
    MasterError,
    Progress,
    RollTimeout,
    child_pids,
    duration,
    follow_roll,
    parent_pid,
    pid_alive,
    pidfile_pid,
    poll_status,
    process_argv,
    process_cwd,
    send_hup,
)
from rollover.core.canary import CanaryPolicy
from rollover.deploy import handoff_canary
from rollover.deploy.facts import LiveMaster
from rollover.deploy.report import LiveFailure, Report
from rollover.status import default_status_path, write_atomic

START_TIMEOUT = 60.0  # USR2: the new master must write <pidfile>.2 within this


# --- HUP --------------------------------------------------------------------------------


def hup_and_wait(pidfile: str, status_path: str, timeout: float, report: Report,
                 step: str) -> dict[str, Any]:
    """`rollover reload --wait`: HUP, follow the roll; its record, or LiveFailure."""
    try:
        pid, status, sent_at = send_hup(pidfile, status_path)
        report.say(step, f"sent HUP to master {pid}")

        def show(progress: Progress) -> None:
            report.say(step, progress.line())

        outcome = follow_roll(pid, status_path, status, sent_at, timeout, show)
    except (MasterError, RollTimeout) as exc:
        raise LiveFailure(str(exc)) from None
    record = outcome.record
    if outcome.result == "succeeded":
        report.say(step, f"rolled out generation {record.get('generation')} in "
                   f"{duration(record)} (min ready {record.get('min_ready')})")
        return dict(record)
    raise LiveFailure(f"rollout of generation {record.get('generation')} "
                      f"{outcome.result}: {record.get('error') or 'no cause recorded'}")


def verify_workers(status: dict[str, Any], release_dir: Path, generation: int | None) -> str:
    """Check the READY workers (of `generation`) run in `release_dir`; LiveFailure if not."""
    expected = os.path.realpath(release_dir)
    workers = [w for w in status.get("workers", []) if isinstance(w, dict)
               and w.get("state") == "ready"
               and (generation is None or w.get("generation") == generation)]
    if not workers:
        raise LiveFailure("no READY worker to verify")
    wrong = []
    for worker in workers:
        cwd = process_cwd(worker["pid"])
        if cwd is None:
            continue  # gone meanwhile
        if os.path.realpath(cwd) != expected:
            wrong.append(f"{worker['pid']} in {cwd}")
    if wrong:
        raise LiveFailure(
            f"workers do not run the new release ({', '.join(wrong[:3])}): is gunicorn "
            f"started with --chdir {release_dir.parent.parent / 'current'}?"
        )
    return f"{len(workers)} workers run {release_dir.parent.name}/{release_dir.name}"


def live_hup(opts: argparse.Namespace, master: LiveMaster, release_dir: Path,
             report: Report) -> None:
    started = time.monotonic()
    record = hup_and_wait(opts.pidfile, master.status_path, opts.timeout, report, "reload")
    unjudged = not_judged(record)
    if unjudged is not None and getattr(opts, "strict", False):
        raise LiveFailure(f"canary not judged (--strict): {unjudged}")
    report.done("reload", started, f"HUP: rolled out generation {record.get('generation')}")
    started = time.monotonic()
    detail = wait_verified(master.status_path, master.pid, release_dir,
                           record.get("generation"))
    report.say("verify", detail)
    report.done("verify", started, detail)


def not_judged(record: dict[str, Any]) -> str | None:
    """The canary's summary when a roll went on without a verdict on it."""
    canary = record.get("canary")
    if isinstance(canary, dict) and canary.get("verdict") == "not judged":
        return str(canary.get("summary"))
    return None


def wait_verified(status_path: str, pid: int, release_dir: Path, generation: int | None,
                  timeout: float = 10.0) -> str:
    """`verify_workers` on the master's status, retried briefly over transient misses."""
    deadline = time.monotonic() + timeout
    while True:
        status = poll_status(status_path, pid) or {}
        try:
            return verify_workers(status, release_dir, generation)
        except LiveFailure:
            if time.monotonic() >= deadline:
                raise
        time.sleep(POLL_INTERVAL)


# --- USR2 handoff ----------------------------------------------------------------------


def write_pidfile(path: str, pid: int) -> None:
    """Name `pid` in `path` atomically (as gunicorn writes it: mode 0644)."""
    write_atomic(path, f"{pid}\n", 0o644)


def new_status_path(opts: argparse.Namespace, master: LiveMaster) -> str:
    if master.status_path == default_status_path(opts.pidfile):
        return default_status_path(opts.pidfile + ".2")
    return master.status_path  # an explicit path: both masters write it, told apart by pid


def _all_ready(status: dict[str, Any]) -> bool:
    workers = [w for w in status.get("workers", []) if isinstance(w, dict)]
    target = status.get("workers_target")
    ready = sum(1 for w in workers if w.get("state") == "ready")
    return (isinstance(target, int) and target > 0 and ready >= target
            and all(w.get("state") == "ready" for w in workers)
            and status.get("state") == "idle")


@dataclass
class Handoff:
    new_pid: int | None = None
    old_stopped: bool = False


def live_usr2(opts: argparse.Namespace, master: LiveMaster, release_dir: Path,
              facts: dict[str, Any], report: Report, handoff: Handoff) -> None:
    old = master.pid
    pid2_path = opts.pidfile + ".2"
    status2_path = new_status_path(opts, master)
    stale = pidfile_pid(pid2_path)
    if stale is not None and pid_alive(stale):
        raise LiveFailure(f"{pid2_path} names a running process {stale}: a USR2 handoff is "
                          "already under way")
    started = time.monotonic()
    deadline = started + opts.timeout
    os.kill(old, signal.SIGUSR2)
    report.say("handoff", f"sent USR2 to master {old}")
    # 1. the new master: a child of the old one, named in <pidfile>.2 once it listens
    start_deadline = min(deadline, started + START_TIMEOUT)
    new_pid = None
    while new_pid is None:
        pid = pidfile_pid(pid2_path)
        if pid is not None and parent_pid(pid) == old:
            new_pid = pid
            break
        if not pid_alive(old):
            raise LiveFailure(f"master {old} exited after USR2")
        if time.monotonic() >= start_deadline:
            raise LiveFailure(f"no new master wrote {pid2_path} within "
                              f"{start_deadline - started:.0f}s of USR2 (did it fail to start? "
                              "see the gunicorn log)")
        time.sleep(POLL_INTERVAL)
    handoff.new_pid = new_pid
    report.new_master_pid = new_pid
    report.say("handoff", f"new master {new_pid} started; waiting for its workers")
    # 2. its workers READY; from the first one on, the canary: the new master's workers
    # judged against the old master's, both serving from the same sockets
    policy: CanaryPolicy | None = None  # the new master's, read once it has a READY worker
    judge: handoff_canary.HandoffJudge | None = None
    shown = None
    ready_seen = False
    while True:
        if not pid_alive(new_pid):
            raise LiveFailure(f"the new master {new_pid} exited before its workers were ready "
                              "(see the gunicorn log)")
        status = poll_status(status2_path, new_pid)
        if status is not None:
            ready = sum(1 for w in status.get("workers", [])
                        if isinstance(w, dict) and w.get("state") == "ready")
            progress = (ready, status.get("workers_target"))
            if progress != shown:
                shown = progress
                report.say("handoff", f"{ready}/{status.get('workers_target')} workers of the "
                           f"new master ready")
            if ready and not ready_seen:
                ready_seen = True
                policy = handoff_canary.policy_from_status(
                    status, strict=getattr(opts, "strict", False))
                if policy is None:
                    report.say("canary", "off in the new master: not judged")
            judge = _judge_step(judge, policy, status, master.status_path, old, report)
            if _all_ready(status):
                break
        if time.monotonic() >= deadline:
            raise LiveFailure(f"the new master's workers were not all ready within "
                              f"{opts.timeout:g}s")
        time.sleep(POLL_INTERVAL)
    if status.get("gunicorn") != facts.get("gunicorn"):
        raise LiveFailure(f"the new master runs gunicorn {status.get('gunicorn')}, not the "
                          f"release's {facts.get('gunicorn')}: did it re-exec through current?")
    detail = verify_workers(status, release_dir, None)
    report.say("verify", detail)
    # 3. no verdict yet: the handoff holds until there is one (the old master serving);
    # a window that cannot even start (no counts in a status) is not judged
    start_by = time.monotonic() + 2 * handoff_canary.IDLE_SLACK
    while policy is not None and (judge is None or judge.verdict is None):
        if judge is None and time.monotonic() >= start_by:
            report.say("canary", "not judged: no request counts in the masters' statuses")
            if policy.strict:
                raise LiveFailure("canary not judged (--strict): no request counts in the "
                                  "masters' statuses")
            break
        if not pid_alive(new_pid):
            raise LiveFailure(f"the new master {new_pid} exited while its workers were judged")
        if not pid_alive(old):
            raise LiveFailure(f"the old master {old} exited while the new master was judged")
        time.sleep(POLL_INTERVAL)
        judge = _judge_step(judge, policy, poll_status(status2_path, new_pid),
                            master.status_path, old, report)
    # 4. the pidfile names the new master before the old one exits (under systemd with
    # PIDFile=, the main PID moves to the new master when the old one exits)
    write_pidfile(opts.pidfile, new_pid)
    old_workers = child_pids(old) - {new_pid}
    os.kill(old, signal.SIGTERM)
    handoff.old_stopped = True
    report.say("handoff", f"pidfile names {new_pid}; sent SIGTERM to the old master {old}")
    stop_deadline = time.monotonic() + master.graceful_timeout + 30
    while pid_alive(old) and time.monotonic() < stop_deadline:
        time.sleep(POLL_INTERVAL)
    if pid_alive(old):
        report.say("handoff", f"old master {old} still running after its graceful timeout: "
                   "SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)
    left = [p for p in old_workers if pid_alive(p) and process_argv(p) == master.argv]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        report.say("handoff", f"killed old workers left behind: {left}")
    # 5. the new master is promoted: its status moves to the normal path
    promote_deadline = time.monotonic() + 15
    while time.monotonic() < promote_deadline:
        promoted = poll_status(master.status_path, new_pid)
        if promoted is not None and not os.path.exists(pid2_path):
            break
        time.sleep(POLL_INTERVAL)
    else:
        report.say("handoff", f"warning: master {new_pid} has not moved its status to "
                   f"{master.status_path} yet")
    if pidfile_pid(opts.pidfile) != new_pid:
        raise LiveFailure(f"{opts.pidfile} does not name the new master {new_pid}")
    if not pid_alive(new_pid):
        raise LiveFailure(f"the new master {new_pid} exited after the handoff")
    report.say("handoff", f"master {old} -> {new_pid} in {time.monotonic() - started:.1f}s")
    report.done("handoff", started, f"USR2: master {old} -> {new_pid}; {detail}")


def _judge_step(judge: handoff_canary.HandoffJudge | None,
                policy: CanaryPolicy | None, new_status: dict[str, Any] | None,
                old_status_path: str, old: int, report: Report,
                ) -> handoff_canary.HandoffJudge | None:
    """Start the handoff's canary once the new master has a READY worker, then step it; a
    verdict is reported once, and one that stops the handoff raises LiveFailure."""
    if policy is None or new_status is None or (judge is not None and judge.verdict):
        return judge
    old_status = poll_status(old_status_path, old)
    now = time.monotonic()
    if judge is None:
        if not (handoff_canary.counts(new_status) and handoff_canary.counts(old_status)):
            return None  # no counted READY worker yet, or a transient miss: the next poll
        assert old_status is not None
        judge = handoff_canary.HandoffJudge.start(policy, new_status, old_status, now)
        report.say("canary", judge.line())
        return judge
    verdict = judge.step(new_status, old_status, now)
    if verdict is not None:
        report.say("canary", f"{verdict.result}: {verdict.summary}")
        problem = handoff_canary.failure(verdict, policy)
        if problem is not None:
            raise LiveFailure(problem)
    return judge


def stop_new_master(pid: int, grace: float) -> str | None:
    """Stop a new master started by USR2 (rollback); the cause if it would not go."""
    children = child_pids(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    problem = None
    if pid_alive(pid):
        problem = f"new master {pid} ignored SIGTERM; killed"
        children |= child_pids(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for child in children:
        if pid_alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    return problem
