"""RollingArbiter: gunicorn's arbiter, with HUP rolling workers over one at a time.

The decisions live in `rollover.core.rollout.Machine`; this class is the imperative shell
around it. It runs inside gunicorn's own main loop and never blocks it while rolling:
- `wait_for_signals` also wakes on messages from workers (`rollover.master.channel`: one pipe
  per worker) and feeds them in;
- `reap_workers` reports exits (and never halts the master on a worker's boot error);
- `manage_workers` asks the machine what to do and does it, then writes the status;
- `handle_hup` (`rollover.master.hup`) reloads the config and refreshes imports (the only
  step that may block the loop, briefly, logged with its duration), then starts a roll.
`activate(server)` switches a running `Arbiter` to this class (from `rollover.hooks`);
`RollingArbiter(app)` builds one directly, like gunicorn's `Arbiter(app)`. What differs
between gunicorn versions lives in `rollover.master.gunicorn_compat`.

gunicorn stops the master on any exception that escapes its loop. Rollover's own code in
the loop is a fault boundary instead (`_fault`): an exception there is logged at ERROR
with its traceback, and the master goes on with gunicorn's own behaviour for that step
(`manage_workers` keeps `workers` processes running as gunicorn's does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import gunicorn
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

import rollover
from rollover import refresh, settings, status
from rollover.core import rollout
from rollover.core.canary import CanaryPolicy
from rollover.core.messages import Counts, Failed, Ready, Recycle, Unlisten
from rollover.master import exits, gunicorn_compat, hup, pinning, service
from rollover.master.channel import Channel
from rollover.refresh import imports_graph
from rollover.worker import readiness, sender, spread

# The gunicorn hooks `rollover.hooks` defines: each reports to `hook_ran` when it runs.
HOOK_NAMES = ("on_starting", "when_ready")

# Seconds between status writes when only the workers' request counts changed.
STATUS_COUNTS_EVERY = 1.0

# The same internal error again within this many seconds is counted, not logged again.
FAULT_LOG_EVERY = 60.0


class RollingArbiter(hup.Reload, service.Service, gunicorn_compat.Loop, Arbiter):
    """A gunicorn `Arbiter` whose HUP is a rolling, ready-checked, abortable reload."""

    # gunicorn's own attributes this class uses (gunicorn has no type hints)
    LISTENERS: list[Any]
    pidfile: Any
    reexec_pid: int
    _last_logged_active_worker_count: int | None

    # Set by `_rollover_init`: from `__init__`, or from `activate` when the class is
    # switched on a running arbiter (whose `__init__` has run as gunicorn's).
    machine: rollout.Machine
    settings: settings.Settings
    channel: Channel

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._rollover_init()

    def _rollover_init(self) -> None:
        self.settings = _resolve_or_exit(self)
        readiness.configure(self.settings)
        self.channel = Channel()  # a pipe per worker, made at each fork
        spread.create()  # the canary window's board, shared (read-only) with every worker
        self._init_loop()
        # pid -> why rollover (or a stop) signalled it: its exit is planned, logged at INFO
        self._planned: dict[int, str] = {}
        self._stopping = False
        # internal errors contained by the fault boundary: count, and when each was logged
        self.faults = 0
        self._fault_logged: dict[tuple[str, str], float] = {}
        self._service_init()  # systemd notify (before gunicorn's READY=1), status cleanup
        _register_fork_cleanup(self)
        self.machine = rollout.Machine(self._policy(), target=self.num_workers)
        self._extend_worker_class(announce=True)
        self._last_status: dict[str, Any] | None = None
        self._settings_cached: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._last_counted: dict[str, Any] | None = None
        self._counts_written = float("-inf")
        self._status_error: str | None = None
        # While a roll is under way: the serving generation, as the master forked it
        # (config, settings, environment, cwd; with preload_app also its code). An aborted
        # roll goes back to it; a roll that succeeds drops it.
        self._previous: hup.Snapshot | None = None
        # Listening sockets are not taken back by an aborted roll: compare with these.
        self._bound_address = self.cfg.address
        self._wall_offset = time.time() - time.monotonic()
        self.refresh_report: refresh.RefreshReport | None = None
        self._reported_rollout: rollout.Rollout | None = None
        self._hooks_ran: set[str] = set()
        self._hooks_checked = False
        self._take_over()
        # release symlinks (<root>/current): as resolved at start, and per generation (a
        # worker is pinned at fork to its generation's release, rollover.master.pinning)
        self._start_links = pinning.release_links([self.cfg.chdir, sys.prefix])
        self._release_pins = {self.machine.generation: self._start_links}
        self._spawn_pins: dict[str, str] | None = None
        pinning.address_start_through_links(self, self._start_links)
        settings.announce(self.log, self.settings, self.cfg, rollover.__version__)
        if self.settings.status_path is None:
            self.log.warning("rollover: no pidfile and no rollover_status_path: no status "
                             "file, so `rollover status/reload` cannot follow this master")
        self._write_status()

    def _take_over(self) -> None:
        """A master started by a USR2 handoff continues the status of the master it
        replaces: its generation (+1: the handoff brought the new code), its reload count
        and its last rollout."""
        try:
            old_pid = self.master_pid or int(os.environ.get("GUNICORN_PID") or 0)
        except ValueError:
            return
        path = self.settings.status_path
        if not old_pid or path is None:
            return
        try:
            old = status.read_status(path)
        except Exception:
            return
        generation, reloads = old.get("generation"), old.get("reloads")
        if old.get("pid") != old_pid or not isinstance(generation, int):
            return
        machine = self.machine
        machine.generation = machine.spawn_generation = generation + 1
        machine.stable_generation = generation + 1
        if isinstance(reloads, int):
            machine.reloads = reloads
        last = old.get("last_rollout")
        if isinstance(last, dict):
            with contextlib.suppress(Exception):
                offset = time.time() - time.monotonic()
                finished = last.get("finished")
                result = last.get("result")
                machine.last_rollout = rollout.Rollout(
                    int(last["generation"]), int(last.get("reload") or 0),
                    status.parse_iso(last["started"]) - offset, last.get("min_ready"),
                    result=rollout.Result(result) if result else None,
                    error=last.get("error"),
                    finished=status.parse_iso(finished) - offset if finished else None,
                    rollback=last.get("rollback"))
                self._reported_rollout = machine.last_rollout  # counted by the old master
        # the handoff is this master's start: `rollover status` shows it as the last rollout
        # until a roll of its own ends (the old master's last rollout stays next to it)
        self._handoff = {"from_pid": old_pid, "generation": machine.generation,
                         "at": status.iso(time.time()),
                         "release": os.path.realpath(self.START_CTX.get("cwd") or os.getcwd())}
        self.log.info("rollover: took over from master %s: generation %s", old_pid,
                      machine.generation)

    def _policy(self) -> rollout.Policy:
        s = self.settings
        canary = None
        if s.canary:
            canary = CanaryPolicy(requests=s.canary_requests, seconds=s.canary_seconds,
                                  max_seconds=s.canary_max_seconds,
                                  threshold=s.canary_threshold,
                                  confidence=s.canary_confidence,
                                  min_failures=s.canary_min_failures,
                                  strict=s.canary_strict)
        return rollout.Policy(ready_timeout=s.ready_timeout, max_surge=s.max_surge,
                              graceful_timeout=s.graceful_timeout, max_draining=s.max_draining,
                              backoff_max=s.backoff_max, canary=canary)

    # -- gunicorn's main loop, extended ---------------------------------------------------

    def setup(self, app: Any) -> None:
        old = getattr(self, "cfg", None) and self.cfg.worker_class
        super().setup(app)
        # gunicorn resets worker_class from the config on every reload
        if hasattr(self, "machine"):
            self._extend_worker_class(announce=self.cfg.worker_class is not old)

    def _extend_worker_class(self, announce: bool) -> None:
        """Fork workers of the configured class extended with readiness (and drain);
        `announce`: log what was added (at start, and when a HUP changed the class)."""
        from rollover.worker.extend import extend_worker_class

        extension = extend_worker_class(self.cfg.worker_class, drain=self.settings.drain,
                                        name=self.cfg.worker_class_str)
        self.worker_class = extension.worker_class
        if announce:
            (self.log.warning if extension.warn else self.log.info)(extension.line)

    # The loop's wait and wake (signal, wakeup, wait_for_signals / sleep) come from
    # gunicorn_compat.Loop; it calls these two to wake on and hear readiness messages.

    def _channel_fds(self) -> list[int]:
        return self.channel.fds()

    def _read_channel(self, fds: Iterable[int] | None = None) -> None:
        """Hear what the workers sent (on the pipes `fds`, or all): never raises."""
        try:
            deliveries, problems = self.channel.read(fds)
            for problem in problems:
                self.log.warning("rollover: %s", problem)
            now = time.monotonic()
            if deliveries:
                self._adopt(now)  # a worker forked by gunicorn's own manage_workers, if any
            for d in deliveries:
                match d.message:
                    case Ready():
                        self.machine.ready(now, d.pid)
                    case Failed(cause):
                        self.machine.failed(d.pid, cause)
                    case Counts(outcomes):
                        self.machine.counted(now, d.pid, outcomes)
                    case Recycle(reason, overdue):
                        self.machine.recycle_requested(now, d.pid, reason, overdue=overdue)
                    case Unlisten():
                        self.machine.unlistened(now, d.pid)
        except Exception:
            self._fault("reading the workers' messages")

    def spawn_worker(self) -> int:
        # gunicorn's, with the worker's own pipe to the master made around the fork
        self.channel.prepare()
        try:
            pid: int = super().spawn_worker()
        except BaseException:
            if os.getpid() == self.pid:  # not the child's exit on its way out
                self.channel.abandon()
            raise
        self.channel.attach(pid)
        return pid

    def _fault(self, where: str) -> None:
        """The fault boundary: an exception from rollover's own code in the master's loop
        (called from its `except`). Logged at ERROR with its traceback (the same one again
        within `FAULT_LOG_EVERY` seconds only counted); the master goes on."""
        self.faults += 1
        exc = sys.exc_info()[1]
        key = (where, f"{type(exc).__name__}: {exc}")
        now = time.monotonic()
        if now - self._fault_logged.get(key, float("-inf")) < FAULT_LOG_EVERY:
            return
        self._fault_logged[key] = now
        self.log.exception("rollover: internal error while %s; the master goes on "
                           "(%s contained so far)", where, self.faults)

    def hook_ran(self, name: str) -> None:
        self._hooks_ran.add(name)

    def _check_hooks(self) -> None:
        """Once, after `when_ready`: name rollover hooks a user hook replaced unchained."""
        self._hooks_checked = True
        for name in HOOK_NAMES:
            if name not in self._hooks_ran:
                self.log.warning(
                    "rollover: your config's %s replaces rollover's without calling it; "
                    "call rollover.hooks.%s(server) from it, or decorate it with "
                    "@rollover.hooks.extend", name, name)

    def manage_workers(self) -> None:
        if not self._hooks_checked:
            self._check_hooks()
        try:
            self._roll()
        except HaltServer:
            raise
        except Exception:
            self._fault("deciding the roll")
            # gunicorn's own manage_workers for this tick: `workers` processes kept running
            # (what it spawns, the machine adopts: `_adopt`)
            try:
                Arbiter.manage_workers(self)
            except Exception:
                self._fault("managing workers as gunicorn does")
        for step, where in ((self._emit_metrics, "sending metrics"),
                            (self._write_status, "writing the status file"),
                            # after the status: a READY=1 finds the file saying so
                            (self._notify_progress, "notifying systemd")):
            try:
                step()
            except Exception:
                self._fault(where)

    def _adopt(self, now: float) -> None:
        """Workers the machine does not know (forked by gunicorn's manage_workers after a
        fault) become the machine's, as booting workers of the generation it spawns."""
        for pid in self.WORKERS:
            if pid not in self.machine.workers and pid not in self._planned:
                self.machine.spawned(now, pid, self.machine.spawn_generation)

    def _roll(self) -> None:
        """Tell the machine what changed, execute what it decides."""
        now = time.monotonic()
        for pid in [p for p in self.machine.workers if p not in self.WORKERS]:
            # gunicorn's kill_worker forgets a worker it finds already gone (ESRCH)
            self.machine.exited(now, pid, "vanished", None)
        self.channel.keep_only(self.WORKERS)
        self._adopt(now)
        for action in self.machine.tick(now, self.num_workers):
            self._execute(action, now)
        if (self._previous is not None and self.machine.rollout is None
                and self._previous.generation != self.machine.stable_generation):
            self._previous = None  # a roll succeeded: its generation is the serving one

    def _emit_metrics(self) -> None:
        count = len(self.WORKERS)
        if count != self._last_logged_active_worker_count:
            # gunicorn's own gauge, which its manage_workers (replaced here) sends
            self._last_logged_active_worker_count = count
            self.log.debug(f"{count} workers", extra={"metric": "gunicorn.workers",
                                                      "value": count, "mtype": "gauge"})
        gunicorn_compat.emit_backlog_metric(self)
        # roll events, through gunicorn's own instrumentation (`--statsd-host`)
        last = self.machine.last_rollout
        if last is None or last is self._reported_rollout:
            return
        self._reported_rollout = last
        self._metric(f"rollover.rollouts.{last.result}", 1, "counter")
        verdict = last.canary.verdict if last.canary is not None else None
        if verdict is not None:
            self._metric(f"rollover.canary.{str(verdict.result).replace(' ', '_')}", 1,
                         "counter")
            if verdict.rule is not None:  # which rule decided
                self._metric(f"rollover.canary.rule.{str(verdict.rule).replace(' ', '_')}",
                             1, "counter")
        if last.finished is not None:
            self._metric("rollover.rollout.duration", (last.finished - last.started) * 1000,
                         "histogram")

    def _metric(self, name: str, value: float, mtype: str) -> None:
        self.log.debug("", extra={"metric": name, "value": value, "mtype": mtype})

    def _execute(self, action: rollout.Action, now: float) -> None:
        match action:
            case rollout.Spawn(generation):
                self._spawn_pins = self._release_pins.get(generation)
                try:
                    pid = self.spawn_worker()
                except Exception as exc:
                    self.log.exception("rollover: could not spawn a worker")
                    self.machine.spawn_failed(now, generation, readiness.describe_exception(exc))
                else:
                    self.machine.spawned(now, pid, generation)
                finally:
                    self._spawn_pins = None
            case rollout.Retire(pid, recycled):
                if recycled is not None:
                    self._planned[pid] = f"recycled by rollover: {recycled}"
                    self._metric("rollover.recycles", 1, "counter")
                else:
                    self._planned[pid] = "retired by rollover"
                self.kill_worker(pid, signal.SIGTERM)
            case rollout.Kill(pid, reason):
                self.log.warning("rollover: killing worker %s: %s", pid, reason)
                self._planned[pid] = f"killed by rollover: {reason}"
                self.kill_worker(pid, signal.SIGKILL)
            case rollout.CanaryWindow(canary, every):
                if canary is None:
                    spread.close_window()
                else:
                    spread.open_window(canary, every)
            case rollout.Revert(generation):
                self._revert(generation)
            case rollout.RollBack(generation):
                self._roll_back(generation)
            case rollout.Log(level, message):
                getattr(self.log, level)("rollover: %s", message)
            case rollout.Halt(reason, exit_code):
                raise HaltServer(exits.halt_reason(exit_code, reason), exit_code)

    def stop(self, graceful: bool = True) -> None:
        # from here on workers exit because the master stops: no HaltServer from reaping
        # them (gunicorn's halt() is what called this; a second halt would exit 1)
        self._stopping = True
        super().stop(graceful)

    def kill_workers(self, sig: int) -> None:
        # gunicorn's stop() (TERM/QUIT, then KILL past graceful_timeout) and reload paths
        for pid in list(self.WORKERS):
            self._planned.setdefault(pid, "stopping")
        super().kill_workers(sig)

    def reap_workers(self) -> None:
        # Replaces gunicorn's, keeping its waitpid(-1) loop, its log lines (the OOM hint
        # on SIGKILL, the exit code), the child_exit hook and HaltServer on a boot error
        # (exit 3/4) — the latter only while no worker was ever READY: a serving master
        # never halts. It also tells the machine each exit, logs exits rollover asked
        # for at INFO, and closes the worker's heartbeat file before it halts.
        try:
            while True:
                wpid, wstatus = os.waitpid(-1, os.WNOHANG)
                if not wpid:
                    break
                if wpid == self.reexec_pid:
                    self.reexec_pid = 0
                    continue
                if gunicorn_compat.reap_dirty_arbiter(self, wpid, wstatus):
                    continue
                worker = self.WORKERS.pop(wpid, None)
                if worker is None:
                    self.log.debug("Reaped unknown child process (pid:%s, status:%s)",
                                   wpid, wstatus)
                    continue
                # its failure cause was written before it exited; then its pipe goes
                self._read_channel(self.channel.fds_of(wpid))
                self.channel.close(wpid)
                planned = self._planned.pop(wpid, None)
                try:
                    exits.log_exit(self.log, wpid, wstatus, planned)
                except Exception:
                    self._fault("logging a worker's exit")
                worker.tmp.close()
                try:
                    self.cfg.child_exit(self, worker)
                except Exception:
                    self.log.exception("child_exit hook failed")
                halt = None
                try:
                    description, exit_code = exits.describe(wstatus)
                    if (exit_code in exits.HALT_REASONS and not self.machine.ever_ready
                            and not self._stopping):
                        assert exit_code is not None
                        known = self.machine.workers.get(wpid)
                        cause = known.cause if known is not None else None
                        halt = HaltServer(exits.halt_reason(exit_code, cause), exit_code)
                    self.machine.exited(time.monotonic(), wpid, description, exit_code,
                                        planned=planned is not None)
                except Exception:
                    self._fault("handling a worker's exit")  # the next tick sees it gone
                if halt is not None:
                    raise halt
        except ChildProcessError:
            pass

    # -- status ------------------------------------------------------------------------------

    def _settings_view(self) -> dict[str, Any]:
        """The status's settings. They change only at a HUP (or its undoing): built once
        per change of the objects they come from, not on every wake of the loop."""
        key = (self.settings, self.cfg, self.machine.policy)
        cached = self._settings_cached
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        s, canary = self.settings, self.machine.policy.canary
        view = {"ready_timeout": s.ready_timeout, "max_surge": s.max_surge,
                "graceful_timeout": s.graceful_timeout, "max_draining": s.max_draining,
                "probe_path": s.probe_path, "recycle": s.recycle,
                "max_requests": self.cfg.max_requests or None,
                "max_worker_rss": s.max_worker_rss, "max_worker_age": s.max_worker_age,
                "reexec_python": s.reexec_python,
                # a USR2 handoff's canary is judged by `rollover deploy` with these
                "canary": dataclasses.asdict(canary) if canary is not None else None}
        self._settings_cached = (key, view)
        return view

    def _write_status(self) -> None:
        path = self._status_path()
        if path is None or getattr(self, "pid", None) is None:
            return  # no status file, or built directly and not started yet
        offset = time.time() - time.monotonic()
        if abs(offset - self._wall_offset) > 0.5:
            self._wall_offset = offset  # the wall clock was set: times follow it
        offset = self._wall_offset  # else the same one, so an unchanged status compares equal
        data = {
            "schema": status.SCHEMA,
            "pid": self.pid,
            "rollover": rollover.__version__,
            "gunicorn": gunicorn.__version__,
            "status_path": path,
            "python": {"executable": sys.executable,
                       "implementation": sys.implementation.name,
                       "version": ".".join(map(str, sys.version_info[:3])),
                       "prefix": sys.prefix},
            "start": {"cwd": self.START_CTX.get("cwd"),
                      "chdir_default": pinning.chdir_default()},
            "settings": self._settings_view(),
            **self.machine.describe(lambda t: status.iso(t + offset), counters=False),
            "serving_code": "preloaded" if self.cfg.preload_app else "disk",
            "refresh": self.refresh_report.as_dict() if self.refresh_report else None,
            "handoff": getattr(self, "_handoff", None),
        }
        # request counts change with every request: on their own, written once a second
        # (and only then described: this runs on every wake of the master's loop)
        now = time.monotonic()
        if data == self._last_status and now - self._counts_written < STATUS_COUNTS_EVERY:
            return
        counted = self.machine.describe(lambda t: status.iso(t + offset))
        if data == self._last_status and counted == self._last_counted:
            return
        self._last_counted, self._counts_written = counted, now
        data_with_time = {**data, **counted, "updated": status.iso(time.time())}
        try:
            status.write_status(path, data_with_time)
        except OSError as exc:
            # a full disk or a missing directory must not stop the master: log each new
            # kind of failure once, keep serving, retry on the next change
            # not str(exc): it names the random temp file, and each kind is logged once
            message = f"cannot write status file {path}: {exc.strerror or type(exc).__name__}"
            if message != self._status_error:
                self.log.error("rollover: %s", message)
                self._status_error = message
            return
        self._status_error = None
        self._last_status = data


def _resolve_or_exit(server: Arbiter) -> settings.Settings:
    try:
        return settings.resolve(server.cfg)
    except settings.SettingsError as exc:
        _refuse(server, str(exc))


def _refuse(server: Arbiter, message: str) -> NoReturn:
    """Stop a master that cannot run rollover at start: one line, exit code 1."""
    print(f"rollover: {message}", file=sys.stderr, flush=True)
    if server.pidfile is not None:
        server.pidfile.unlink()
    sys.exit(1)


# The arbiter whose master-only fds a forked child must close (one per process).
_active: RollingArbiter | None = None


def _register_fork_cleanup(arbiter: RollingArbiter) -> None:
    global _active
    if _active is None:
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _active = arbiter


# Set in every process the master forks (a worker, the dirty arbiter, a re-exec).
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    if _forked:
        # forked by a worker: the app's own subprocess has nothing to tell the master
        sender.disconnect()
        return
    if _active is None:
        return
    _forked = True
    # Until the worker installs its own handlers, a stop signal must stop it, not land in
    # the master's signal queue copied into the child.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    imports_graph.uninstall()  # only the master refreshes
    if _active._spawn_pins:  # a worker: its generation's release, not whatever is current
        pinning.pin(_active._spawn_pins)
    # A worker keeps only the write end of its own pipe; the canary board, read-only.
    _active.channel.close_in_child()
    spread.seal_in_child()
    for fd in _active._loop_fds():
        with contextlib.suppress(OSError):
            os.close(fd)


def check_gunicorn_version() -> str | None:
    """None when this gunicorn is one rollover supports (23.0 through 27.x)."""
    return gunicorn_compat.unsupported(rollover.__version__)


def activate(server: Arbiter) -> bool:
    """Switch a running gunicorn arbiter to `RollingArbiter`. False if it already was."""
    if isinstance(server, RollingArbiter):
        return False
    problem = check_gunicorn_version()
    if problem is not None:
        _refuse(server, problem)
    server.__class__ = RollingArbiter
    server._rollover_init()
    return True
