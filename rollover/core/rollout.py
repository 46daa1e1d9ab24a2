"""The rolling reload as a pure state machine.

Events go in (a worker was spawned, reported READY, failed, exited; a reload started),
each with a clock value; `tick(now, target)` decides and returns actions (spawn one
worker, retire one, kill one, log, halt) that the arbiter executes. Nothing here touches
the OS or reads a clock, so every transition is unit-tested with a fake clock.

Rules, in the words of the README:
- A roll spawns new-generation workers while fewer than `target` of them exist, keeping
  serving + booting workers within `target + max_surge`.
- Whenever more than `target` workers are READY, the surplus is retired, old generations
  first, oldest first: so one old worker is retired exactly when one new one is READY,
  and READY never drops below `target` while the roll is healthy. At most `max_draining`
  retired workers drain at once; each is killed after `graceful_timeout`.
- A new-generation worker that exits before READY, misses the ready timeout, or crashes
  after READY aborts the roll: no more new-generation spawns, its booting workers are
  killed, the workers not yet retired keep serving; missing slots are refilled with
  backoff, as the serving generation (`Revert`: the master forks its config again, and
  with `RollBack` its code). Nothing here ever halts a master that has served once.
- A reload during a roll supersedes it; booting workers of older generations are killed.
- A roll succeeds once every worker is of its generation and READY, and no worker of an
  older generation can accept a connection: a retired one counts as gone from the accept
  set only once it said so (`unlistened`: the worker's drain stopped accepting, or its
  serving loop returned), exits, or is killed. Every worker class rollover extends says it
  at the latest when its serving loop returns; a worker that never does (its message lost,
  its loop hung) is killed at `graceful_timeout`, which bounds the wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rollover.core import canary as canary_verdict
from rollover.core.actions import (
    Action,
    CanaryWindow,
    Halt,
    Kill,
    Log,
    Retire,
    Revert,
    RollBack,
    Spawn,
)
from rollover.core.canary import Canary, CanaryPolicy
from rollover.core.outcomes import Outcomes

__all__ = [
    "Action",
    "CanaryWindow",
    "Halt",
    "Kill",
    "Log",
    "Machine",
    "Policy",
    "Result",
    "Retire",
    "Revert",
    "RollBack",
    "Rollout",
    "Spawn",
    "Worker",
    "WorkerState",
]


class WorkerState(StrEnum):
    BOOTING = "booting"
    READY = "ready"
    DRAINING = "draining"


class Result(StrEnum):
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    ready_timeout: float
    max_surge: int = 1
    graceful_timeout: float = 30.0
    max_draining: int | None = None  # None: no cap
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 10.0  # READY this long without a failure ends the backoff
    canary: CanaryPolicy | None = None  # None: rolls go on without a canary verdict


@dataclass
class Worker:
    pid: int
    generation: int
    state: WorkerState
    spawned: float
    since: float
    cause: str | None = None  # why it failed, as the worker itself reported it
    killed: bool = False
    recycle: str | None = None  # why it asked to be replaced (max_requests, rss, age)
    overdue: bool = False  # far past that limit: retired even without a replacement
    accepting: bool = True  # may accept connections: until it says not, or is killed
    outcomes: Outcomes = field(default_factory=Outcomes)  # its requests, as last reported


@dataclass
class Rollout:
    generation: int
    reload: int
    started: float
    min_ready: int | None
    result: Result | None = None
    error: str | None = None
    finished: float | None = None
    can_roll_back: bool = False
    is_rollback: bool = False
    rollback: str | None = None  # on an aborted roll: "running", "succeeded", "failed: ..."
    canary: Canary | None = None

    @property
    def holding(self) -> bool:
        """Waiting for the canary's verdict: no retirement, no further spawn."""
        return self.canary is not None and self.canary.verdict is None


# Exit codes gunicorn gives a worker that could not boot / could not load the app.
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4


@dataclass
class Machine:
    policy: Policy
    target: int
    generation: int = 0
    spawn_generation: int = 0  # the config (and code) the master forks now: the serving one
    stable_generation: int = 0  # the generation last rolled out completely
    reloads: int = 0
    workers: dict[int, Worker] = field(default_factory=dict)
    rollout: Rollout | None = None
    last_rollout: Rollout | None = None
    pending_spawns: int = 0
    failures: int = 0
    next_spawn_at: float = 0.0
    last_failure_at: float = float("-inf")
    last_failure: str | None = None  # why the last respawn (or worker) failed
    ever_ready: bool = False
    halted: bool = False
    recycles: int = 0  # workers retired because they asked to be replaced
    last_traffic: float = float("-inf")  # when a worker last reported a new request
    _out: list[Action] = field(default_factory=list)

    # -- views ---------------------------------------------------------------------------

    def _live(self, state: WorkerState) -> list[Worker]:
        return [w for w in self.workers.values() if w.state is state]

    @property
    def ready_count(self) -> int:
        return len(self._live(WorkerState.READY))

    @property
    def booting_count(self) -> int:
        return len(self._live(WorkerState.BOOTING))

    @property
    def state(self) -> str:
        if self.rollout is not None:
            return "rolling"
        return "degraded" if self.ready_count < self.target else "idle"

    # -- events --------------------------------------------------------------------------

    def reload_started(self, now: float, can_roll_back: bool = False) -> None:
        """A HUP whose preparation (config, import refresh) succeeded: roll to new code.

        `can_roll_back`: the master kept the stable generation's code (preload_app), so an
        aborted roll can refill with it and end on one consistent generation.
        """
        self.reloads += 1
        if self.rollout is not None:
            self._finish(now, Result.SUPERSEDED, "superseded by a newer reload")
        self.generation += 1
        self.spawn_generation = self.generation
        self.rollout = Rollout(self.generation, self.reloads, now, self.ready_count,
                               can_roll_back=can_roll_back)
        self.failures, self.next_spawn_at = 0, 0.0
        self._log("info", f"rolling to generation {self.generation}: "
                          f"{self.target} workers, max surge {self.policy.max_surge}")
        for w in self._live(WorkerState.BOOTING):
            if w.generation != self.generation:
                self._kill(now, w, f"boots generation {w.generation}, superseded")

    def reload_failed(self, now: float, error: str) -> None:
        """A HUP whose preparation failed: nothing changes, the failure is recorded."""
        self.reloads += 1
        failed = Rollout(self.generation + 1, self.reloads, now, None,
                         Result.ABORTED, error, now)
        self.last_rollout = failed
        self._log("error", f"reload aborted before rolling: {error}")

    def spawned(self, now: float, pid: int, generation: int) -> None:
        self.pending_spawns = max(0, self.pending_spawns - 1)
        self.workers[pid] = Worker(pid, generation, WorkerState.BOOTING, now, now)

    def spawn_failed(self, now: float, generation: int, error: str) -> None:
        self.pending_spawns = max(0, self.pending_spawns - 1)
        self._boot_failed(now, generation, f"could not fork a worker: {error}", None)

    def ready(self, now: float, pid: int) -> None:
        w = self.workers.get(pid)
        if w is None or w.state is not WorkerState.BOOTING:
            return
        w.state, w.since = WorkerState.READY, now
        self.ever_ready = True
        roll = self.rollout
        if roll is not None and w.generation == roll.generation:
            new_ready = self._new_ready()
            self._log("info", f"worker {pid} ready: {new_ready}/{self.target} "
                              f"workers on generation {w.generation}")
            if roll.canary is None:
                self._watch_canary(now, roll, w)

    def recycle_requested(self, now: float, pid: int, reason: str,
                          overdue: bool = False) -> None:
        """A READY worker reached a limit (max_requests, RSS, age) and asks to be replaced:
        a replacement is spawned (within the surge) and, once it is READY, this worker is
        retired. In a roll, a worker of an older generation is replaced by the roll.
        `overdue`: it is far past its limit (twice); while replacements fail to boot, it is
        retired without one (gunicorn's max_requests exit)."""
        w = self.workers.get(pid)
        if w is None or w.state is not WorkerState.READY:
            return
        w.overdue = w.overdue or overdue
        if w.recycle is None:
            w.recycle = reason
            self._log("info", f"worker {pid} asks to be replaced ({reason})")

    def counted(self, now: float, pid: int, outcomes: Outcomes) -> None:
        """A worker's request counts since it started."""
        w = self.workers.get(pid)
        if w is not None:
            if outcomes.requests > w.outcomes.requests:
                self.last_traffic = now
            w.outcomes = outcomes
            judged = self.last_rollout.canary if self.last_rollout is not None else None
            if judged is not None and judged.pid == pid:
                judged.window = outcomes - judged.base  # what it served until it left

    def unlistened(self, now: float, pid: int) -> None:
        """The worker accepts no connection any more (it keeps serving the ones it has)."""
        w = self.workers.get(pid)
        if w is not None and w.accepting:
            w.accepting = False
            if w.state is WorkerState.DRAINING:
                self._log("debug", f"worker {pid} (generation {w.generation}) stopped "
                                   f"accepting")

    def failed(self, pid: int, cause: str) -> None:
        """The worker reported why it cannot boot; its exit follows."""
        w = self.workers.get(pid)
        if w is not None and w.cause is None:
            w.cause = cause

    def exited(self, now: float, pid: int, description: str, exit_code: int | None,
               *, planned: bool = False) -> None:
        """A worker process ended. `exit_code` is None when a signal ended it; `planned`:
        the master stopped it itself (gunicorn's shutdown), so it is no fault."""
        w = self.workers.pop(pid, None)
        if w is None:
            return
        self._canary_left(pid)
        roll = self.rollout
        in_roll = roll is not None and w.generation == roll.generation
        if w.state is WorkerState.DRAINING or planned:
            return
        if w.state is WorkerState.BOOTING:
            cause = w.cause or f"worker {pid} {description} before READY"
            self._boot_failed(now, w.generation, cause, exit_code)
            return
        if in_roll and exit_code != 0:
            self._abort(now, f"worker {pid} of generation {w.generation} "
                             f"{description} after READY")
        elif exit_code != 0 and now - w.since < self.policy.stable_after:
            # crashing soon after READY is a crash loop in the making: back off
            cause = f"worker {pid} {description} {now - w.since:.1f}s after READY"
            delay = self._back_off(now, cause)
            self._log("error", f"{cause}; next respawn in {delay:g}s")
        elif exit_code == 0:
            # left by itself, e.g. gunicorn's max_requests: a planned exit
            self._log("info", f"worker {pid} {description}")
        else:
            self._log("warning", f"worker {pid} {description}")

    def _canary_left(self, pid: int) -> None:
        """A judged canary exited: its counts (its last report came before its exit) are
        final; a failed one's record says what it answered in all, its drain included."""
        last = self.last_rollout
        c = last.canary if last is not None else None
        if last is None or c is None or c.pid != pid or c.verdict is None or c.final:
            return
        c.final = True
        if c.verdict.result is canary_verdict.Result.FAILED:
            total = (f"in all it answered {c.window.requests} requests, "
                     f"{c.window.errors} failed")
            last.error = f"canary failed: {c.verdict.summary}; {total}"
            self._log("info", f"canary worker {pid} left: {total}")

    def _watch_canary(self, now: float, roll: Rollout, w: Worker) -> None:
        """The first new worker READY: hold the roll until the canary has a verdict."""
        policy = self.policy.canary
        old = [o for o in self._live(WorkerState.READY) if o.generation != roll.generation]
        if policy is None or roll.is_rollback or not old:
            return  # a handoff's first workers have no old workers to be compared with
        roll.canary = Canary(w.pid, now, w.outcomes, {o.pid: o.outcomes for o in old})
        self._out.append(CanaryWindow(w.pid, len(old) + 1))
        self._log("info", f"canary: worker {w.pid} of generation {w.generation} holds the "
                          f"roll until it is judged against the old workers (at most "
                          f"{policy.seconds:g}s, {policy.max_seconds:g}s if it fails "
                          f"requests)")

    # -- decisions -----------------------------------------------------------------------

    def tick(self, now: float, target: int) -> list[Action]:
        self.target = target
        self._forgive(now)
        self._enforce_deadlines(now)
        self._judge_canary(now)
        self._maybe_succeed(now)
        self._retire_surplus(now)
        self._retire_overdue(now)
        self._maybe_succeed(now)  # the last retirement may have completed the roll
        self._spawn(now)
        self._observe()
        out, self._out = self._out, []
        return out

    def _forgive(self, now: float) -> None:
        """End the backoff once a worker READY since the last failure has stayed up."""
        if self.failures and any(
                w.state is WorkerState.READY and w.since > self.last_failure_at
                and now - w.since >= self.policy.stable_after
                for w in self.workers.values()):
            self.failures, self.next_spawn_at = 0, 0.0

    def _enforce_deadlines(self, now: float) -> None:
        for w in list(self.workers.values()):
            if w.killed:
                continue
            if (w.state is WorkerState.BOOTING
                    and now - w.spawned > self.policy.ready_timeout):
                cause = (f"worker {w.pid} of generation {w.generation} not READY within "
                         f"{self.policy.ready_timeout:g}s")
                self._kill(now, w, cause)
                self._boot_failed(now, w.generation, cause, None)
            elif (w.state is WorkerState.DRAINING
                    and now - w.since > self.policy.graceful_timeout):
                self._kill(now, w, f"still draining after {self.policy.graceful_timeout:g}s")

    def _judge_canary(self, now: float) -> None:
        roll = self.rollout
        c = roll.canary if roll is not None else None
        policy = self.policy.canary
        if roll is None or c is None or c.verdict is not None or policy is None:
            return
        w = self.workers.get(c.pid)
        if w is None or w.state is not WorkerState.READY:
            return  # its exit is judged as any new worker's (a crash aborts the roll)
        c.window = w.outcomes - c.base
        old = Outcomes()
        for pid, base in c.old_base.items():
            o = self.workers.get(pid)
            if o is not None:
                old = old + (o.outcomes - base)
        c.old_window = old
        verdict = canary_verdict.decide(c.window, old, elapsed=now - c.started,
                                        idle=now - max(self.last_traffic, c.started),
                                        policy=policy)
        if verdict is None:
            return
        c.verdict = verdict
        self._out.append(CanaryWindow(None))
        share = f"{c.share:.0%} of the window's {c.window.requests + old.requests} requests"
        if verdict.result is canary_verdict.Result.FAILED:
            self._retire_new(now, roll)
            self._abort(now, f"canary failed: {verdict.summary}")
        elif verdict.result is canary_verdict.Result.PASSED:
            self._log("info", f"canary passed: {verdict.summary} (it served {share})")
        elif policy.strict:
            self._retire_new(now, roll)
            self._abort(now, f"canary not judged (rollover_canary_strict): {verdict.summary}")
        else:
            # no traffic is no fault; traffic that did not reach the canary leaves a
            # release unjudged: worth a warning
            quiet = verdict.rule is canary_verdict.Rule.NO_TRAFFIC
            self._log("info" if quiet else "warning",
                      f"canary not judged: {verdict.summary}; the roll goes on")

    def _retire_new(self, now: float, roll: Rollout) -> None:
        """The canary is the roll's surge: no old worker was retired, nothing to refill.
        Any other new worker READY (a roll that also filled a missing slot) runs the same
        code: retired with it."""
        for new in self._live(WorkerState.READY):
            if new.generation == roll.generation:
                new.state, new.since = WorkerState.DRAINING, now
                self._out.append(Retire(new.pid))

    def _maybe_succeed(self, now: float) -> None:
        roll = self.rollout
        if roll is None:
            return
        if not self._old_accepting() and self._new_ready() >= self.target:
            self._finish(now, Result.SUCCEEDED, None)

    def _old_accepting(self) -> list[Worker]:
        """Workers of older generations than the roll's that may still accept: not retired,
        or retired and not yet said to have stopped accepting (nor killed)."""
        roll = self.rollout
        return [w for w in self.workers.values()
                if roll is not None and w.generation != roll.generation
                and (w.state is not WorkerState.DRAINING or w.accepting)]

    def _retire_surplus(self, now: float) -> None:
        if self.rollout is not None and self.rollout.holding:
            return
        ready = self._live(WorkerState.READY)
        surplus = len(ready) - self.target
        if self.policy.max_draining is not None:
            draining = sum(1 for w in self._live(WorkerState.DRAINING) if not w.killed)
            surplus = min(surplus, self.policy.max_draining - draining)
        if surplus <= 0:
            return
        # Workers the roll replaces first, then older generations, then the oldest: the
        # roll retires one old worker for each new one that became READY.
        # Outside a roll, workers that asked to be replaced go first; in a roll, before the
        # others of their generation.
        goal = self.rollout.generation if self.rollout is not None else None
        ready.sort(key=lambda w: (w.generation == goal, goal is None and w.recycle is None,
                                  w.generation, w.recycle is None, w.spawned))
        for w in ready[:surplus]:
            w.state, w.since = WorkerState.DRAINING, now
            if w.recycle is not None and (goal is None or w.generation == goal):
                self.recycles += 1
                self._out.append(Retire(w.pid, w.recycle))
                self._log("info", f"recycling worker {w.pid} (generation {w.generation}): "
                                  f"its replacement is READY")
            else:
                self._out.append(Retire(w.pid))
                self._log("info", f"retiring worker {w.pid} (generation {w.generation})")

    def _retire_overdue(self, now: float) -> None:
        """While replacements fail to boot, a worker far past its limit is retired without
        one, one at a time: what gunicorn's max_requests does, capacity dip included; but
        never the last READY worker (serving from a worn worker beats serving nothing)."""
        if (not self.failures or self.rollout is not None or self.ready_count <= 1
                or self._live(WorkerState.DRAINING)):
            return
        overdue = [w for w in self._live(WorkerState.READY) if w.overdue]
        if not overdue:
            return
        w = min(overdue, key=lambda w: w.spawned)
        w.state, w.since = WorkerState.DRAINING, now
        self.recycles += 1
        self._out.append(Retire(w.pid, f"{w.recycle}; no replacement could boot"))
        self._log("warning", f"recycling worker {w.pid} without a replacement: it is far past "
                             f"its limit ({w.recycle}) and respawns fail "
                             f"({self.last_failure})")

    def _spawn(self, now: float) -> None:
        busy = self.ready_count + self.booting_count + self.pending_spawns
        roll = self.rollout
        if roll is not None and roll.holding:
            return
        if roll is not None:
            new = self.pending_spawns + sum(
                1 for w in self.workers.values()
                if w.generation == roll.generation and w.state is not WorkerState.DRAINING)
            count = min(self.target - new, self.target + self.policy.max_surge - busy)
        else:
            # one replacement for each worker that asked, booting within the surge
            asking = sum(1 for w in self._live(WorkerState.READY) if w.recycle is not None)
            count = self.target + min(asking, self.policy.max_surge) - busy
        if count <= 0 or now < self.next_spawn_at or self.halted:
            return
        if self.failures:
            # probe with one worker at a time while boots keep failing
            if self.booting_count + self.pending_spawns:
                return
            count = 1
        self.pending_spawns += count
        self._out.extend(Spawn(self.spawn_generation) for _ in range(count))

    def _observe(self) -> None:
        roll = self.rollout
        if roll is not None and roll.min_ready is not None:
            roll.min_ready = min(roll.min_ready, self.ready_count)

    # -- transitions ---------------------------------------------------------------------

    def _boot_failed(self, now: float, generation: int, cause: str,
                     exit_code: int | None) -> None:
        roll = self.rollout
        if roll is not None and generation == roll.generation:
            self._abort(now, cause)
            return
        if not self.ever_ready:
            code = exit_code if exit_code in (WORKER_BOOT_ERROR, APP_LOAD_ERROR) \
                else WORKER_BOOT_ERROR
            self._out.append(Halt(cause, code))
            self.halted = True
            return
        delay = self._back_off(now, cause)
        self._log("error", f"{cause}; next respawn in {delay:g}s")

    def _back_off(self, now: float, cause: str) -> float:
        self.failures += 1
        self.last_failure_at = now
        self.last_failure = cause
        delay = min(self.policy.backoff_base * 2 ** (self.failures - 1),
                    self.policy.backoff_max)
        self.next_spawn_at = now + delay
        return delay

    def _abort(self, now: float, cause: str) -> None:
        roll = self.rollout
        assert roll is not None
        for w in self._live(WorkerState.BOOTING):
            if w.generation == roll.generation:
                self._kill(now, w, "its roll was aborted")
        self._finish(now, Result.ABORTED, cause)
        if roll.is_rollback:
            self._back_off(now, cause)
            self._log("error", f"rollback to generation {roll.generation} failed: {cause}")
            return
        self._log("error", f"rollout of generation {roll.generation} aborted: {cause}")
        # Respawns from now on are the serving generation's, never the aborted one's.
        self._out.append(Revert(self.stable_generation))
        self.spawn_generation = self.stable_generation
        if roll.can_roll_back:
            # The master still holds the stable code: go back to one consistent generation.
            self._out.append(RollBack(self.stable_generation))
            self.spawn_generation = self.stable_generation
            roll.rollback = "running"
            self.rollout = Rollout(self.stable_generation, roll.reload, now, self.ready_count,
                                   is_rollback=True)
            self._log("info", f"rolling back to generation {self.stable_generation}")
        else:
            # The code on disk is what failed: refill missing slots, if any, with backoff.
            self._back_off(now, cause)

    def _finish(self, now: float, result: Result, error: str | None) -> None:
        roll = self.rollout
        assert roll is not None
        self._observe()
        if roll.holding:
            self._out.append(CanaryWindow(None))  # ended (superseded, aborted) before a verdict
        roll.result, roll.error, roll.finished = result, error, now
        self.rollout = None
        if roll.is_rollback:
            # A rollback is part of the aborted roll's record, not a rollout of its own.
            if self.last_rollout is not None:
                self.last_rollout.rollback = (f"{result}: {error}" if result is Result.ABORTED
                                              else str(result))
            if result is Result.SUCCEEDED:
                self._log("info", f"rolled back to generation {roll.generation}")
            return
        self.last_rollout = roll
        if result is Result.SUCCEEDED:
            self.stable_generation = roll.generation
            self._log("info", f"rollout of generation {roll.generation} succeeded in "
                              f"{now - roll.started:.2f}s (min ready {roll.min_ready})")
        elif result is Result.SUPERSEDED:
            self._log("info", f"rollout of generation {roll.generation} superseded")

    def _kill(self, now: float, w: Worker, reason: str) -> None:
        w.state, w.since, w.killed = WorkerState.DRAINING, now, True
        w.accepting = False  # SIGKILL: it runs no more code
        self._out.append(Kill(w.pid, reason))

    def _new_ready(self) -> int:
        roll = self.rollout
        return sum(1 for w in self._live(WorkerState.READY)
                   if roll is not None and w.generation == roll.generation)

    def _log(self, level: str, message: str) -> None:
        self._out.append(Log(level, message))

    # -- status --------------------------------------------------------------------------

    def describe(self, wall: Callable[[float], str | None],
                 counters: bool = True) -> dict[str, Any]:
        """The machine's part of the status file; `wall` turns clock values into ISO times.
        `counters`: with the request counts (per worker, and the canary's), which change
        with every request; without them the rest can be compared cheaply."""

        def record(r: Rollout | None) -> dict[str, Any] | None:
            if r is None:
                return None
            out: dict[str, Any] = {
                "generation": r.generation, "reload": r.reload,
                "result": None if r.result is None else str(r.result),
                "error": r.error, "min_ready": r.min_ready, "started": wall(r.started),
                "finished": None if r.finished is None else wall(r.finished)}
            if r.canary is not None:
                out["canary"] = r.canary.describe(counters)
            return out

        current = record(self.rollout)
        if current is not None and self.rollout is not None:
            current.update(new_ready=self._new_ready(), target=self.target,
                           kind="rollback" if self.rollout.is_rollback else "rollout",
                           old_accepting=len(self._old_accepting()))
        last = record(self.last_rollout)
        if last is not None and self.last_rollout is not None:
            last["rollback"] = self.last_rollout.rollback
        respawn = None
        if self.failures:
            respawn = {"failures": self.failures, "last_failure": self.last_failure,
                       "next_at": wall(self.next_spawn_at)}
        return {
            "generation": self.generation,
            "serving_generation": self.spawn_generation,
            "state": self.state,
            "respawn": respawn,
            "workers_target": self.target,
            "reloads": self.reloads,
            "workers": [{"pid": w.pid, "generation": w.generation, "state": str(w.state),
                         "since": wall(w.since), "recycle": w.recycle,
                         **({"overdue": True} if w.overdue else {}),
                         **({"accepting": w.accepting}
                            if w.state is WorkerState.DRAINING else {}),
                         **({"requests": w.outcomes.as_dict()} if counters else {})}
                        for w in sorted(self.workers.values(), key=lambda w: w.spawned)],
            "recycles": self.recycles,
            "rollout": current,
            "last_rollout": last,
        }
