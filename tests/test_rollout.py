"""The rolling reload state machine, one transition at a time, on a fake clock.

Every test plays the arbiter through `Driver`: events go in with the driver's clock (a
plain float that only moves when a test says so), `tick` returns the actions, and the
driver executes each `Spawn` at once by allocating a fake pid and reporting it with
`spawned`, like the arbiter does. After every event and every tick the driver checks the
surge invariant (READY + BOOTING never above `target + max_surge`) and records the
lowest READY count seen while a roll is in progress, independently of the machine's own
`min_ready`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from rollover.core.rollout import (
    APP_LOAD_ERROR,
    WORKER_BOOT_ERROR,
    Action,
    Halt,
    Kill,
    Log,
    Machine,
    Policy,
    Result,
    Retire,
    Revert,
    RollBack,
    Spawn,
    WorkerState,
)

BOOTING, READY, DRAINING = WorkerState.BOOTING, WorkerState.READY, WorkerState.DRAINING
READY_TIMEOUT = 60.0
CAUSE = "ModuleNotFoundError: No module named 'nope'"


# -- the fake arbiter ------------------------------------------------------------------------


@dataclass
class Step:
    """What one `tick` returned, and the pids the driver gave the spawned workers."""

    actions: list[Action]
    spawned: list[int]

    @property
    def retired(self) -> list[int]:
        return [a.pid for a in self.actions if isinstance(a, Retire)]

    @property
    def killed(self) -> list[int]:
        return [a.pid for a in self.actions if isinstance(a, Kill)]

    @property
    def kills(self) -> list[Kill]:
        return [a for a in self.actions if isinstance(a, Kill)]

    @property
    def halts(self) -> list[Halt]:
        return [a for a in self.actions if isinstance(a, Halt)]

    @property
    def logs(self) -> list[Log]:
        return [a for a in self.actions if isinstance(a, Log)]


class Driver:
    """Plays the arbiter's loop against a `Machine`, with a clock tests move by hand."""

    def __init__(self, target: int = 4, *, now: float = 0.0, **policy: Any) -> None:
        self.policy = Policy(ready_timeout=READY_TIMEOUT, **policy)
        self.machine = Machine(self.policy, target)
        self.target = target
        self.now = now
        self.actions: list[Action] = []  # everything the machine ever asked for
        self.min_ready_rolling: int | None = None  # lowest READY seen during any roll
        self._pids = itertools.count(100)

    # -- clock ---------------------------------------------------------------------------

    def advance(self, seconds: float) -> Driver:
        self.now += seconds
        return self

    # -- events, as the arbiter feeds them -------------------------------------------------

    def reload(self, *, can_roll_back: bool = False) -> None:
        self.machine.reload_started(self.now, can_roll_back=can_roll_back)
        self._check()

    def reload_failed(self, error: str) -> None:
        self.machine.reload_failed(self.now, error)
        self._check()

    def ready(self, *pids: int) -> None:
        for pid in pids:
            self.machine.ready(self.now, pid)
            self._check()

    def exit(self, *pids: int, code: int | None = 0) -> None:
        """Workers end: with `code`, or by a signal when `code` is None."""
        for pid in pids:
            description = "was killed by a signal" if code is None else f"exited with code {code}"
            self.machine.exited(self.now, pid, description, code)
            self._check()

    def unlisten(self, *pids: int) -> None:
        """Workers say they accept no connection any more."""
        for pid in pids:
            self.machine.unlistened(self.now, pid)
            self._check()

    def fail(self, pid: int, cause: str = CAUSE, code: int | None = WORKER_BOOT_ERROR) -> None:
        """A booting worker reports why it cannot boot, then exits (gunicorn's way)."""
        self.machine.failed(pid, cause)
        self.exit(pid, code=code)

    def tick(self, target: int | None = None, *, fork_fails: bool = False) -> Step:
        if target is not None:
            self.target = target
        actions = self.machine.tick(self.now, self.target)
        self.actions.extend(actions)
        pids = []
        for action in actions:
            if isinstance(action, Spawn):
                if fork_fails:
                    self.machine.spawn_failed(self.now, action.generation, "EAGAIN")
                else:
                    pid = next(self._pids)
                    self.machine.spawned(self.now, pid, action.generation)
                    pids.append(pid)
        self._check()
        return Step(actions, pids)

    # -- a healthy world -------------------------------------------------------------------

    def settle(self, *, step: float = 0.5, limit: int = 200) -> None:
        """Every booting worker gets READY, every retired or killed one exits, until idle."""
        for _ in range(limit):
            self.ready(*self.pids(BOOTING))
            for pid in self.pids(DRAINING):
                self.exit(pid, code=None if self.machine.workers[pid].killed else 0)
            self.tick()
            m = self.machine
            if (m.rollout is None and not self.pids(BOOTING) and not self.pids(DRAINING)
                    and m.ready_count == self.target):
                return
            self.advance(step)
        raise AssertionError("the machine did not settle")

    # -- views -----------------------------------------------------------------------------

    def pids(self, state: WorkerState | None = None, generation: int | None = None) -> list[int]:
        """Live worker pids, oldest first, optionally of one state and generation."""
        workers = sorted(self.machine.workers.values(), key=lambda w: (w.spawned, w.pid))
        return [w.pid for w in workers
                if (state is None or w.state is state)
                and (generation is None or w.generation == generation)]

    def generations(self, state: WorkerState = READY) -> list[int]:
        return sorted(w.generation for w in self.machine.workers.values() if w.state is state)

    def spawns(self) -> list[Spawn]:
        return [a for a in self.actions if isinstance(a, Spawn)]

    # -- invariants ------------------------------------------------------------------------

    def _check(self) -> None:
        m = self.machine
        serving = m.ready_count + m.booting_count
        assert serving <= m.target + self.policy.max_surge, (
            f"{m.ready_count} ready + {m.booting_count} booting > "
            f"target {m.target} + max surge {self.policy.max_surge}")
        assert not any(isinstance(a, Halt) for a in self.actions) or not m.ever_ready
        if m.rollout is not None:
            low = m.ready_count
            self.min_ready_rolling = (low if self.min_ready_rolling is None
                                      else min(self.min_ready_rolling, low))


def booted(target: int = 4, **policy: Any) -> Driver:
    """A master whose `target` workers of generation 0 all reported READY at t=0."""
    d = Driver(target, **policy)
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()
    assert d.machine.state == "idle"
    assert d.generations() == [0] * target
    d.advance(10)
    return d


def assert_next_spawn_after(d: Driver, delay: float) -> int:
    """Nothing is spawned until exactly `delay` seconds from now; then exactly one worker."""
    start = d.now
    d.now = start + delay - 0.01
    assert d.tick().spawned == [], f"spawned before the {delay:g}s backoff"
    d.now = start + delay
    step = d.tick()
    assert len(step.spawned) == 1, f"expected one spawn after {delay:g}s, got {step.actions}"
    return step.spawned[0]


# -- first start -----------------------------------------------------------------------------


def test_boot_spawns_target_workers_of_generation_zero():
    d = Driver(target=4)

    step = d.tick()

    assert [a for a in step.actions if isinstance(a, Spawn)] == [Spawn(0)] * 4
    assert len(step.spawned) == 4
    assert d.pids(BOOTING) == step.spawned
    assert d.tick().actions == []  # they are booting: nothing more to do


def test_boot_is_degraded_until_every_worker_is_ready_then_idle():
    d = Driver(target=3)
    first, second, third = d.tick().spawned
    assert d.machine.state == "degraded"

    d.ready(first, second)
    d.tick()
    assert d.machine.state == "degraded"
    assert d.machine.ready_count == 2

    d.ready(third)
    assert d.tick().actions == []
    assert d.machine.state == "idle"
    assert d.machine.rollout is None
    assert d.machine.last_rollout is None
    assert d.machine.generation == 0


@pytest.mark.parametrize(
    ("exit_code", "halt_code"),
    [
        (WORKER_BOOT_ERROR, WORKER_BOOT_ERROR),
        (APP_LOAD_ERROR, APP_LOAD_ERROR),
        (1, WORKER_BOOT_ERROR),  # anything else counts as a boot error
        (None, WORKER_BOOT_ERROR),  # killed by a signal while booting
    ],
)
def test_boot_failure_before_any_worker_was_ready_halts(exit_code, halt_code):
    d = Driver(target=4)
    first, *_ = d.tick().spawned

    d.fail(first, CAUSE, code=exit_code)
    step = d.tick()

    assert step.halts == [Halt(CAUSE, halt_code)]


def test_boot_failure_without_a_reported_cause_halts_describing_the_exit():
    d = Driver(target=2)
    first, _ = d.tick().spawned

    d.exit(first, code=APP_LOAD_ERROR)
    (halt,) = d.tick().halts

    assert halt.exit_code == APP_LOAD_ERROR
    assert str(first) in halt.reason
    assert "before READY" in halt.reason


def test_boot_ready_timeout_before_any_worker_was_ready_kills_and_halts():
    d = Driver(target=2)
    first, second = d.tick().spawned

    d.advance(READY_TIMEOUT)
    assert d.tick().actions == []  # exactly on the deadline is still in time

    d.advance(0.5)
    step = d.tick()

    assert step.killed == [first, second]
    assert [h.exit_code for h in step.halts] == [WORKER_BOOT_ERROR] * 2
    assert f"not READY within {READY_TIMEOUT:g}s" in step.halts[0].reason


def test_fork_failure_before_any_worker_was_ready_halts():
    d = Driver(target=1)

    step = d.tick(fork_fails=True)
    step = d.tick()

    assert [h.exit_code for h in step.halts] == [WORKER_BOOT_ERROR]
    assert "could not fork a worker: EAGAIN" in step.halts[0].reason


def test_boot_failure_after_one_worker_was_ready_backs_off_instead_of_halting():
    d = Driver(target=2, backoff_base=1.0)
    first, second = d.tick().spawned
    d.ready(first)

    d.fail(second, CAUSE, code=APP_LOAD_ERROR)
    step = d.tick()

    assert step.halts == []
    assert any(CAUSE in log.message and log.level == "error" for log in step.logs)
    assert d.machine.state == "degraded"
    replacement = assert_next_spawn_after(d, 1.0)
    d.ready(replacement)
    d.tick()
    assert d.machine.state == "idle"


def test_never_halts_once_a_worker_was_ready_even_if_everything_later_fails():
    d = booted(target=2)

    d.exit(*d.pids(READY), code=1)  # both crash
    step = d.tick()
    assert len(step.spawned) == 2  # crashes after READY are respawned at once
    for pid in step.spawned:
        d.fail(pid, CAUSE, code=APP_LOAD_ERROR)
    d.advance(READY_TIMEOUT * 10)
    for _ in range(5):
        for pid in d.tick().spawned:
            d.fail(pid, CAUSE, code=WORKER_BOOT_ERROR)
        d.advance(READY_TIMEOUT)

    assert not any(isinstance(a, Halt) for a in d.actions)


def test_halt_is_the_last_thing_the_machine_asks_for():
    d = Driver(target=2)
    first, _ = d.tick().spawned

    d.fail(first, CAUSE, code=APP_LOAD_ERROR)
    step = d.tick()

    assert step.halts == [Halt(CAUSE, APP_LOAD_ERROR)]
    assert isinstance(step.actions[-1], Halt), "nothing after the Halt"
    assert not any(isinstance(a, Spawn) for a in d.tick().actions)


def test_reload_before_any_worker_was_ready_rolls_to_the_new_code():
    d = Driver(target=2)
    first, second = d.tick().spawned

    d.reload()
    step = d.tick()

    assert sorted(step.killed) == [first, second]
    assert [d.machine.workers[p].generation for p in step.spawned] == [1, 1]
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [1, 1]
    assert not any(isinstance(a, Halt) for a in d.actions)


# -- a healthy roll --------------------------------------------------------------------------


def test_roll_replaces_one_worker_at_a_time_with_max_surge_1():
    d = booted(target=4, max_surge=1)
    old = d.pids(READY)

    d.reload()
    assert d.machine.state == "rolling"
    assert d.machine.generation == 1

    step = d.tick()
    assert [a for a in step.actions if isinstance(a, Spawn)] == [Spawn(1)]
    assert step.retired == []
    assert d.tick().actions == []  # nothing moves until the new worker is READY

    for i, oldest in enumerate(old):
        d.advance(1)
        (new,) = d.pids(BOOTING)
        d.ready(new)
        step = d.tick()
        assert step.retired == [oldest], "one old worker goes when one new one is READY"
        assert len(step.spawned) == (1 if i < len(old) - 1 else 0)
        assert d.machine.ready_count == 4
        # the roll does not end on the tick that retires the last old worker: that one may
        # still accept until it says it stopped (or exits)
        assert d.machine.state == "rolling"
        d.exit(oldest)  # it finished its requests
    step = d.tick()

    m = d.machine
    assert m.state == "idle"
    assert m.rollout is None
    assert m.last_rollout.result is Result.SUCCEEDED
    assert m.last_rollout.error is None
    assert m.last_rollout.generation == 1
    assert m.last_rollout.min_ready == 4
    assert m.last_rollout.started == 10.0
    assert m.last_rollout.finished == d.now
    assert d.generations() == [1, 1, 1, 1]
    assert d.spawns() == [Spawn(0)] * 4 + [Spawn(1)] * 4
    assert d.min_ready_rolling == 4
    assert any("succeeded" in log.message for log in step.logs)


def test_roll_with_max_surge_2_replaces_two_at_a_time():
    d = booted(target=4, max_surge=2)
    old = d.pids(READY)

    d.reload()
    step = d.tick()
    assert len(step.spawned) == 2
    first, second = step.spawned

    d.ready(first, second)
    step = d.tick()
    assert step.retired == old[:2]
    assert len(step.spawned) == 2

    d.ready(*step.spawned)
    step = d.tick()
    assert step.retired == old[2:]
    assert step.spawned == []

    d.exit(*old)
    d.tick()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.machine.last_rollout.min_ready == 4
    assert d.generations() == [1, 1, 1, 1]


def test_with_max_surge_2_one_ready_worker_retires_exactly_one_old_worker():
    d = booted(target=4, max_surge=2)
    old = d.pids(READY)
    d.reload()
    first, _second = d.tick().spawned

    d.ready(first)
    step = d.tick()

    assert step.retired == [old[0]]
    assert len(step.spawned) == 1  # back to two booting
    assert d.machine.ready_count == 4
    assert d.machine.booting_count == 2


@pytest.mark.parametrize(("target", "max_surge"), [(1, 1), (3, 1), (4, 2), (5, 3), (2, 5)])
def test_ready_never_drops_below_target_during_a_healthy_roll(target, max_surge):
    d = booted(target=target, max_surge=max_surge)

    d.reload()
    d.settle()

    assert d.min_ready_rolling == target
    assert d.machine.last_rollout.min_ready == target
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [1] * target
    assert len(d.spawns()) == 2 * target  # one per slot, no extras


def test_roll_retires_old_generations_first_and_the_oldest_first():
    d = booted(target=3)
    a, b, c = d.pids(READY)
    d.exit(a)  # max_requests: respawned as the youngest of generation 0
    (a2,) = d.tick().spawned
    d.ready(a2)
    d.tick()
    d.advance(5)

    d.reload()
    d.settle()

    retired = [x.pid for x in d.actions if isinstance(x, Retire)]
    assert retired == [b, c, a2]


def test_roll_is_done_once_no_old_worker_serves():
    d = booted(target=2)
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)
    step = d.tick()
    (first,), (second,) = step.retired, step.spawned
    d.unlisten(first)
    d.ready(second)

    assert d.machine.state == "rolling"  # an old worker still serves
    step = d.tick()  # the last old worker is retired...
    (retired,) = step.retired
    assert d.machine.rollout is not None  # ...but may still accept a connection
    d.unlisten(retired)  # its loop let go of the listening sockets
    step = d.tick()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert any("succeeded" in log.message for log in step.logs)


def test_ready_log_counts_new_workers():
    d = booted(target=2)
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)

    step = d.tick()

    assert Log("info", f"worker {new} ready: 1/2 workers on generation 1") in step.logs


# -- aborted rolls ---------------------------------------------------------------------------


def test_new_worker_failing_before_ready_aborts_the_roll_with_its_cause():
    d = booted(target=4)
    old = d.pids(READY)
    d.reload()
    (new,) = d.tick().spawned
    d.advance(2)

    d.fail(new, CAUSE, code=WORKER_BOOT_ERROR)
    step = d.tick()

    m = d.machine
    assert m.rollout is None
    assert m.last_rollout.result is Result.ABORTED
    assert m.last_rollout.error == CAUSE
    assert m.last_rollout.finished == d.now
    assert m.last_rollout.min_ready == 4
    assert step.halts == []
    assert step.retired == []
    assert step.spawned == []
    assert any(log.level == "error" and CAUSE in log.message for log in step.logs)
    assert m.state == "idle"
    assert d.pids(READY) == old

    d.advance(3600)
    for _ in range(3):
        assert d.tick().actions == []
    assert d.spawns() == [Spawn(0)] * 4 + [Spawn(1)]  # the failed one was the last
    assert not any(isinstance(a, Retire) for a in d.actions)


def test_abort_kills_the_other_booting_new_workers():
    d = booted(target=4, max_surge=2)
    d.reload()
    first, second = d.tick().spawned

    d.fail(first, CAUSE)
    step = d.tick()

    assert step.kills == [Kill(second, "its roll was aborted")]
    assert d.machine.last_rollout.error == CAUSE
    assert step.spawned == []

    d.exit(second, code=None)  # the SIGKILL arrives: not another failure
    step = d.tick()
    assert step.actions == []
    assert d.machine.last_rollout.error == CAUSE
    assert d.machine.state == "idle"


def test_abort_after_some_slots_were_replaced_keeps_the_mixed_fleet():
    d = booted(target=4)
    old = d.pids(READY)
    d.reload()
    d.tick()
    for _ in range(2):  # two slots replaced
        d.advance(1)
        d.ready(*d.pids(BOOTING))
        d.exit(*d.tick().retired)
    (third,) = d.pids(BOOTING, generation=1)

    d.fail(third, CAUSE)
    step = d.tick()

    assert d.machine.last_rollout.result is Result.ABORTED
    assert step.retired == []
    assert step.spawned == []
    assert d.generations() == [0, 0, 1, 1]
    assert d.pids(READY, generation=0) == old[2:]
    assert d.machine.state == "idle"
    assert d.machine.last_rollout.min_ready == 4


def test_refill_after_an_abort_waits_for_the_backoff_which_doubles_up_to_max():
    d = booted(target=4, backoff_base=1.0, backoff_max=5.0)
    d.reload()
    d.tick()
    for _ in range(2):
        d.advance(1)
        d.ready(*d.pids(BOOTING))
        d.exit(*d.tick().retired)
    (third,) = d.pids(BOOTING, generation=1)
    d.fail(third, CAUSE)
    d.tick()
    assert d.machine.last_rollout.result is Result.ABORTED

    d.exit(d.pids(READY, generation=0)[0], code=1)  # an old worker dies: a slot is missing
    assert d.machine.state == "degraded"

    # No crash loop: each refill (generation 0's config, the code on disk) waits, one at
    # a time.
    for delay in (1.0, 2.0, 4.0, 5.0, 5.0):
        probe = assert_next_spawn_after(d, delay)
        assert d.machine.workers[probe].generation == 0
        d.fail(probe, CAUSE)
    assert not any(isinstance(a, Halt) for a in d.actions)

    # A worker READY for `stable_after` seconds ends the backoff.
    probe = assert_next_spawn_after(d, 5.0)
    d.ready(probe)
    d.tick()
    assert d.machine.state == "idle"
    d.advance(d.policy.stable_after)
    d.tick()
    d.exit(d.pids(READY, generation=0)[0], code=1)
    (again,) = d.tick().spawned  # immediately: nothing is failing any more
    d.fail(again, CAUSE)
    assert_next_spawn_after(d, 1.0)


def test_refill_of_several_missing_slots_probes_one_worker_at_a_time():
    d = booted(target=4, backoff_base=1.0)
    d.reload()
    (new,) = d.tick().spawned
    d.fail(new, CAUSE)
    d.tick()
    d.exit(*d.pids(READY)[:2], code=1)  # two slots go missing after the abort

    probe = assert_next_spawn_after(d, 1.0)  # one, not two, while boots keep failing
    assert d.tick().spawned == []
    d.ready(probe)
    step = d.tick()

    assert len(step.spawned) == 1  # the last missing slot, at once
    d.ready(*step.spawned)
    d.tick()
    assert d.machine.state == "idle"
    assert d.generations() == [0, 0, 0, 0]  # refilled as the serving generation


def test_ready_timeout_kills_the_new_worker_and_aborts_naming_the_timeout():
    d = booted(target=4)
    d.reload()
    (new,) = d.tick().spawned

    d.advance(READY_TIMEOUT)
    assert d.tick().actions == []
    d.advance(1)
    step = d.tick()

    cause = f"worker {new} of generation 1 not READY within {READY_TIMEOUT:g}s"
    assert step.kills == [Kill(new, cause)]
    assert d.machine.last_rollout.result is Result.ABORTED
    assert d.machine.last_rollout.error == cause
    assert step.spawned == []
    assert step.retired == []

    d.exit(new, code=None)  # its SIGKILL
    assert d.tick().actions == []
    assert d.machine.state == "idle"
    assert d.machine.last_rollout.error == cause


@pytest.mark.parametrize(("code", "how"), [(1, "exited with code 1"),
                                           (None, "was killed by a signal")])
def test_new_worker_crashing_after_ready_aborts_the_roll(code, how):
    d = booted(target=4, backoff_base=1.0)
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)
    (second,) = d.tick().spawned

    d.exit(new, code=code)
    step = d.tick()

    m = d.machine
    assert m.last_rollout.result is Result.ABORTED
    assert m.last_rollout.error == f"worker {new} of generation 1 {how} after READY"
    assert step.kills == [Kill(second, "its roll was aborted")]
    assert step.spawned == []  # the missing slot waits for the backoff
    assert m.state == "degraded"
    assert d.generations() == [0, 0, 0]
    refill = assert_next_spawn_after(d, 1.0)
    d.ready(refill)
    d.tick()
    assert m.state == "idle"


def test_new_worker_exiting_cleanly_after_ready_is_not_an_abort():
    d = booted(target=4)
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)
    d.tick()

    d.exit(new, code=0)  # max_requests reached: a normal recycle
    step = d.tick()

    assert d.machine.rollout is not None
    assert d.machine.state == "rolling"
    assert [d.machine.workers[p].generation for p in step.spawned] == [1]
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [1, 1, 1, 1]


def test_old_worker_dying_mid_roll_is_replaced_by_a_new_generation_worker():
    d = booted(target=4)
    old = d.pids(READY)
    d.reload()
    (first,) = d.tick().spawned

    d.exit(old[-1], code=1)
    step = d.tick()

    assert [d.machine.workers[p].generation for p in step.spawned] == [1]
    assert d.machine.rollout is not None  # an old worker's crash is not the roll's fault
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.machine.last_rollout.error is None
    assert d.machine.last_rollout.min_ready == 3
    assert d.generations() == [1, 1, 1, 1]
    assert first in d.pids(READY)


def test_fork_failure_during_a_roll_aborts_it():
    d = booted(target=2)
    d.reload()

    d.tick(fork_fails=True)
    step = d.tick()

    assert d.machine.last_rollout.result is Result.ABORTED
    assert d.machine.last_rollout.error == "could not fork a worker: EAGAIN"
    assert step.halts == []
    assert d.generations() == [0, 0]


def test_reload_after_an_abort_rolls_again_without_waiting_for_the_backoff():
    d = booted(target=2, backoff_base=30.0)
    d.reload()
    (new,) = d.tick().spawned
    d.fail(new, CAUSE)
    d.tick()

    d.reload()  # the fix is deployed
    step = d.tick()

    assert [d.machine.workers[p].generation for p in step.spawned] == [2]
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.machine.last_rollout.generation == 2
    assert d.generations() == [2, 2]


# -- reloads ---------------------------------------------------------------------------------


def test_reload_during_a_roll_supersedes_it_and_kills_its_booting_workers():
    d = booted(target=4)
    old = d.pids(READY)
    d.reload()
    (a,) = d.tick().spawned
    d.ready(a)
    step = d.tick()
    (b,) = step.spawned
    d.exit(*step.retired)
    d.advance(1)

    d.reload()

    m = d.machine
    assert m.generation == 2
    assert m.reloads == 2
    assert m.last_rollout.generation == 1
    assert m.last_rollout.result is Result.SUPERSEDED
    assert m.last_rollout.finished == d.now
    assert m.rollout.generation == 2
    step = d.tick()
    assert step.kills == [Kill(b, "boots generation 1, superseded")]
    assert [m.workers[p].generation for p in step.spawned] == [2]

    d.settle()
    assert m.last_rollout.generation == 2
    assert m.last_rollout.result is Result.SUCCEEDED
    assert m.last_rollout.min_ready == 4
    assert d.generations() == [2, 2, 2, 2]
    retired = [x.pid for x in d.actions if isinstance(x, Retire)]
    assert retired == [*old, a]  # generation 0 first, then generation 1
    assert d.min_ready_rolling == 4


def test_a_burst_of_reloads_ends_on_the_newest_generation():
    d = booted(target=3, max_surge=2)

    for _ in range(3):
        d.reload()
        d.ready(*d.tick().spawned[:1])  # each roll gets one new worker READY
        d.tick()
        d.advance(0.2)
    d.reload()
    d.reload()  # two in the same loop iteration
    d.settle()

    m = d.machine
    assert m.generation == 5
    assert m.reloads == 5
    assert m.last_rollout.result is Result.SUCCEEDED
    assert m.last_rollout.generation == 5
    assert m.last_rollout.reload == 5
    assert d.generations() == [5, 5, 5]
    assert d.min_ready_rolling == 3


def test_failed_reload_when_idle_is_recorded_and_changes_nothing():
    d = booted(target=2)
    workers = d.pids(READY)

    d.reload_failed("SyntaxError: invalid syntax (settings.py, line 3)")
    step = d.tick()

    m = d.machine
    assert m.generation == 0
    assert m.reloads == 1
    assert m.rollout is None
    assert m.state == "idle"
    assert m.last_rollout.result is Result.ABORTED
    assert m.last_rollout.error == "SyntaxError: invalid syntax (settings.py, line 3)"
    assert m.last_rollout.generation == 1
    assert m.last_rollout.min_ready is None
    assert m.last_rollout.started == m.last_rollout.finished == d.now
    assert [a for a in step.actions if not isinstance(a, Log)] == []
    assert [log.level for log in step.logs] == ["error"]
    assert d.pids(READY) == workers


def test_failed_reload_during_a_roll_lets_the_roll_continue():
    d = booted(target=3)
    d.reload()
    (new,) = d.tick().spawned

    d.reload_failed("bad config")
    step = d.tick()

    m = d.machine
    assert step.killed == []
    assert m.rollout is not None
    assert m.generation == 1
    assert m.last_rollout.error == "bad config"
    assert new in d.pids(BOOTING)
    d.settle()
    assert m.last_rollout.result is Result.SUCCEEDED
    assert m.last_rollout.generation == 1
    assert d.generations() == [1, 1, 1]


# -- worker count changes (TTIN / TTOU) ------------------------------------------------------


def test_ttin_when_idle_spawns_the_extra_workers():
    d = booted(target=2)

    step = d.tick(target=4)

    assert [a for a in step.actions if isinstance(a, Spawn)] == [Spawn(0)] * 2
    assert d.machine.state == "degraded"
    d.ready(*step.spawned)
    d.tick()
    assert d.machine.state == "idle"


def test_ttou_when_idle_retires_the_oldest_workers():
    d = booted(target=4)
    old = d.pids(READY)

    step = d.tick(target=2)

    assert step.retired == old[:2]
    assert step.spawned == []
    assert d.machine.state == "idle"


def test_target_increase_mid_roll_ends_with_the_new_count():
    d = booted(target=4)
    d.reload()
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()

    step = d.tick(target=6)

    assert len(step.spawned) == 2  # 4 READY + 1 booting + 2 = 6 + max surge 1
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [1] * 6
    assert d.machine.target == 6


def test_target_decrease_mid_roll_ends_with_the_new_count():
    d = booted(target=4)
    old = d.pids(READY)
    d.reload()
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()

    step = d.tick(target=2)

    assert step.retired == old[1:3]  # the oldest old workers still serving
    assert step.spawned == []
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [1, 1]


# -- draining --------------------------------------------------------------------------------


def test_retired_worker_exiting_is_quiet():
    d = booted(target=2)
    (retired,) = d.tick(target=1).retired

    d.exit(retired, code=1)  # even a non-zero exit while draining is not news

    assert d.tick().actions == []
    assert d.machine.state == "idle"


def test_draining_worker_past_graceful_timeout_is_killed_once():
    d = booted(target=2, graceful_timeout=30.0)
    (retired,) = d.tick(target=1).retired

    d.advance(30)
    assert d.tick().actions == []
    d.advance(0.5)
    step = d.tick()

    assert step.kills == [Kill(retired, "still draining after 30s")]
    d.advance(60)
    assert d.tick().actions == []  # killed once, then waited for
    d.exit(retired, code=None)
    assert d.tick().actions == []
    assert d.pids() == d.pids(READY)


def test_old_worker_draining_too_long_during_a_roll_is_killed_and_the_roll_completes():
    d = booted(target=2, graceful_timeout=5.0)
    d.reload()
    d.ready(*d.tick().spawned)
    (slow,) = d.tick().retired

    d.advance(6)
    step = d.tick()

    assert step.kills == [Kill(slow, "still draining after 5s")]
    assert d.machine.rollout is not None
    d.settle()
    assert d.machine.last_rollout.result is Result.SUCCEEDED


# -- robustness ------------------------------------------------------------------------------


def test_events_for_unknown_pids_are_ignored():
    d = booted(target=2)
    d.reload()
    d.tick()
    before = d.machine.describe(str)

    d.ready(4242)
    d.machine.failed(4242, CAUSE)
    d.exit(4242, code=3)
    d.exit(4243, code=None)

    assert d.machine.describe(str) == before
    assert d.tick().actions == []
    assert d.machine.rollout is not None


def test_ready_is_only_taken_from_booting_workers():
    d = booted(target=2)
    first, _ = d.pids(READY)
    (retired,) = d.tick(target=1).retired
    since = d.machine.workers[first].since
    d.advance(1)

    d.ready(first)  # a duplicate READY
    d.ready(retired)  # a late READY from a worker being retired

    assert d.machine.workers[first].since == since
    assert d.machine.workers[retired].state is DRAINING
    assert d.tick().actions == []


def test_worker_crash_after_ready_while_idle_is_respawned_at_once():
    d = booted(target=2)
    first, _ = d.pids(READY)

    d.exit(first, code=1)
    step = d.tick()

    assert [a for a in step.actions if isinstance(a, Spawn)] == [Spawn(0)]
    assert any(log.level == "warning" and str(first) in log.message for log in step.logs)


# -- status ----------------------------------------------------------------------------------


def wall(t: float) -> str:
    return f"T+{t:g}"


def test_describe_when_idle():
    d = booted(target=2)
    first, second = d.pids(READY)

    assert d.machine.describe(wall, counters=False) == {
        "generation": 0,
        "serving_generation": 0,
        "state": "idle",
        "respawn": None,
        "workers_target": 2,
        "reloads": 0,
        "workers": [
            {"pid": first, "generation": 0, "state": "ready", "since": "T+0", "recycle": None},
            {"pid": second, "generation": 0, "state": "ready", "since": "T+0", "recycle": None},
        ],
        "recycles": 0,
        "rollout": None,
        "last_rollout": None,
    }


def test_describe_during_a_roll():
    d = booted(target=2)
    first, second = d.pids(READY)
    d.reload()  # at t=10
    (new,) = d.tick().spawned
    d.advance(2)
    d.ready(new)
    d.tick()

    status = d.machine.describe(wall, counters=False)

    assert status["state"] == "rolling"
    assert status["generation"] == 1
    assert status["reloads"] == 1
    assert status["workers"] == [
        {"pid": first, "generation": 0, "state": "draining", "since": "T+12", "recycle": None,
         "accepting": True},
        {"pid": second, "generation": 0, "state": "ready", "since": "T+0", "recycle": None},
        {"pid": new, "generation": 1, "state": "ready", "since": "T+12", "recycle": None},
        {"pid": status["workers"][3]["pid"], "generation": 1, "state": "booting",
         "since": "T+12", "recycle": None},
    ]
    assert status["rollout"] == {
        "generation": 1, "reload": 1, "result": None, "error": None, "min_ready": 2,
        "started": "T+10", "finished": None, "new_ready": 1, "target": 2, "kind": "rollout",
        "old_accepting": 2,
    }
    assert status["last_rollout"] is None
    d.unlisten(first)
    status = d.machine.describe(wall, counters=False)
    assert status["workers"][0]["accepting"] is False
    assert status["rollout"]["old_accepting"] == 1


def test_describe_after_an_aborted_roll():
    d = booted(target=2)
    d.reload()
    (new,) = d.tick().spawned
    d.advance(3)
    d.fail(new, CAUSE)
    d.tick()

    status = d.machine.describe(wall, counters=False)

    assert status["state"] == "idle"
    assert (status["generation"], status["serving_generation"]) == (1, 0)
    assert status["rollout"] is None
    assert status["last_rollout"] == {
        "generation": 1, "reload": 1, "result": "aborted", "error": CAUSE, "min_ready": 2,
        "started": "T+10", "finished": "T+13", "rollback": None,
    }


# -- rollback (preload_app: the master kept the stable generation's code) --------------------


def test_aborted_roll_with_rollback_returns_to_one_consistent_generation():
    d = booted(target=3)
    d.reload(can_roll_back=True)
    (first,) = d.tick().spawned
    d.ready(first)
    step = d.tick()
    (retired,) = step.retired  # one slot already handed to generation 1
    (second,) = step.spawned
    d.exit(retired)

    d.fail(second, CAUSE)
    step = d.tick()

    assert RollBack(0) in step.actions
    assert d.machine.last_rollout.result is Result.ABORTED
    assert d.machine.last_rollout.rollback == "running"
    assert d.machine.rollout.is_rollback
    assert [a.generation for a in step.actions if isinstance(a, Spawn)] == [0]
    d.settle()
    assert d.generations() == [0, 0, 0]
    assert d.machine.last_rollout.rollback == "succeeded"
    assert d.machine.last_rollout.result is Result.ABORTED  # the record stays the abort
    assert d.machine.state == "idle"
    assert d.min_ready_rolling == 3


def test_rollback_retires_the_new_generations_ready_workers_one_for_one():
    d = booted(target=2)
    d.reload(can_roll_back=True)
    (first,) = d.tick().spawned
    d.ready(first)
    (second,) = d.tick().spawned
    d.exit(*d.pids(DRAINING))
    d.fail(second, CAUSE)
    (back,) = d.tick().spawned  # generation 0 again, while `first` keeps serving
    assert first in d.pids(READY)

    d.ready(back)
    assert d.tick().retired == [first]


def test_without_rollback_an_aborted_roll_keeps_mixed_generations():
    d = booted(target=2)
    d.reload()
    (first,) = d.tick().spawned
    d.ready(first)
    (second,) = d.tick().spawned
    d.exit(*d.pids(DRAINING))

    d.fail(second, CAUSE)
    step = d.tick()

    assert not any(isinstance(a, RollBack) for a in step.actions)
    assert d.generations() == [0, 1]
    assert d.machine.last_rollout.rollback is None


def test_a_reload_during_a_rollback_supersedes_it_and_rolls_forward():
    d = booted(target=2)
    d.reload(can_roll_back=True)
    (first,) = d.tick().spawned
    d.ready(first)
    (second,) = d.tick().spawned
    d.exit(*d.pids(DRAINING))
    d.fail(second, CAUSE)
    d.tick()
    assert d.machine.rollout.is_rollback

    d.reload(can_roll_back=True)
    d.settle()

    assert d.machine.last_rollout.generation == 2
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.generations() == [2, 2]


def test_a_worker_crashing_soon_after_ready_is_respawned_with_backoff():
    d = booted(target=2, backoff_base=1.0, stable_after=20.0)  # READY for 10s so far

    for delay in (1.0, 2.0, 4.0):
        (victim, _) = d.pids(READY)
        d.exit(victim, code=1)  # crashes a moment after READY
        replacement = assert_next_spawn_after(d, delay)
        d.ready(replacement)
        d.tick()
        d.advance(0.5)

    d.advance(20)  # a worker READY this long ends the backoff
    d.tick()
    d.exit(d.pids(READY)[0], code=1)  # a crash after a long, healthy run: at once
    assert len(d.tick().spawned) == 1


# -- log levels: planned exits are INFO, faults WARNING and above ------------------------


def test_a_ready_worker_leaving_by_itself_with_code_0_logs_at_info():
    d = booted(target=2)
    worker = d.pids(READY)[0]
    d.exit(worker, code=0)  # e.g. gunicorn's max_requests
    d.tick()
    levels = {log.level for log in d.actions if isinstance(log, Log) and str(worker) in log.message}
    assert levels == {"info"}


def test_a_ready_worker_crashing_logs_a_warning_or_worse():
    d = booted(target=2)
    worker = d.pids(READY)[0]
    d.exit(worker, code=None)
    d.tick()
    levels = {log.level for log in d.actions if isinstance(log, Log) and str(worker) in log.message}
    assert levels and levels <= {"warning", "error"}


def test_workers_the_master_stopped_are_no_fault_even_mid_roll():
    d = booted(target=2)
    d.reload()
    (new,) = d.tick().spawned
    for pid in [*d.pids(READY), new]:
        d.machine.exited(d.now, pid, "was killed by SIGTERM", None, planned=True)
    d.tick()
    faults = [a for a in d.actions if isinstance(a, Log) and a.level in ("warning", "error")]
    assert faults == []


def test_an_aborted_roll_reverts_to_the_serving_generations_config():
    d = booted(target=2)
    d.reload()
    (new,) = d.tick().spawned
    # respawns are the roll's
    assert d.machine.describe(wall, counters=False)["serving_generation"] == 1
    d.fail(new, CAUSE)
    step = d.tick()

    assert Revert(0) in step.actions
    assert not any(isinstance(a, RollBack) for a in step.actions)
    d.exit(d.pids(READY)[0], code=None)  # an old worker dies after the abort
    replacement = assert_next_spawn_after(d, 1.0)
    assert d.machine.workers[replacement].generation == 0
    assert d.machine.describe(wall, counters=False)["serving_generation"] == 0


def test_revert_comes_before_the_rollback_and_the_respawns():
    d = booted(target=2)
    d.reload(can_roll_back=True)
    (new,) = d.tick().spawned
    d.fail(new, CAUSE)
    actions = d.tick().actions
    kinds = [type(a) for a in actions if isinstance(a, Revert | RollBack | Spawn)]
    assert kinds[:2] == [Revert, RollBack]


def test_describe_says_why_it_is_degraded():
    d = booted(target=2, backoff_base=1.0)
    d.exit(d.pids(READY)[0], code=None)
    (probe,) = d.tick().spawned
    d.fail(probe, "readiness probe GET /healthz answered 404")
    d.tick()

    status = d.machine.describe(wall, counters=False)

    assert status["state"] == "degraded"
    assert status["respawn"] == {
        "failures": 1, "last_failure": "readiness probe GET /healthz answered 404",
        "next_at": f"T+{d.now + 1:g}"}


# -- "rolled out": no old worker accepts ------------------------------------------------------


def roll_to_the_last_retirement(target: int = 2, **policy: Any) -> tuple[Driver, int]:
    """A roll whose new workers are all READY and whose last old worker was just retired."""
    d = booted(target=target, **policy)
    d.reload()
    d.tick()
    retired: list[int] = []
    while len(retired) < target:
        d.advance(1)
        d.ready(*d.pids(BOOTING))
        retired += d.tick().retired
        for pid in retired[:-1]:
            if pid in d.machine.workers:
                d.exit(pid)
    assert d.machine.rollout is not None
    assert d.machine.describe(wall, counters=False)["rollout"]["old_accepting"] == 1
    return d, retired[-1]


def test_a_retired_worker_leaves_the_accept_set_when_it_says_so():
    d, last = roll_to_the_last_retirement()
    d.advance(0.3)
    assert d.tick().actions == []  # every new worker READY, but `last` may still accept
    assert d.machine.state == "rolling"

    d.unlisten(last)  # draining its open connections may go on
    step = d.tick()

    assert d.machine.last_rollout.result is Result.SUCCEEDED
    assert d.machine.last_rollout.finished == d.now
    assert step.retired == [] and step.kills == []
    assert last in d.pids(DRAINING)  # still draining: only the roll's record moved on
    assert any(log.level == "debug" and f"worker {last}" in log.message
               and "stopped accepting" in log.message for log in d.actions
               if isinstance(log, Log))


def test_a_retired_worker_that_never_says_so_ends_the_roll_by_exiting():
    d, last = roll_to_the_last_retirement()
    d.advance(2)
    assert d.tick().actions == []
    d.exit(last)
    d.tick()
    assert d.machine.last_rollout.result is Result.SUCCEEDED


def test_a_silent_retired_worker_ends_the_roll_at_the_graceful_timeout_when_killed():
    d, last = roll_to_the_last_retirement(graceful_timeout=5.0)
    d.advance(5)
    assert d.tick().actions == [] and d.machine.rollout is not None
    d.advance(0.5)
    step = d.tick()
    # the bound: killed (it runs no more code), so out of the accept set before it is reaped
    assert step.kills == [Kill(last, "still draining after 5s")]
    assert d.machine.last_rollout.result is Result.SUCCEEDED


def test_a_worker_saying_it_stopped_accepting_twice_or_unknown_changes_nothing():
    d, last = roll_to_the_last_retirement()
    d.unlisten(last)
    d.unlisten(last)
    d.unlisten(999)
    d.tick()
    assert d.machine.last_rollout.result is Result.SUCCEEDED
    logs = [a for a in d.actions if isinstance(a, Log) and "stopped accepting" in a.message]
    assert len(logs) == 1


def test_a_ready_old_worker_that_stopped_accepting_still_counts_until_it_is_retired():
    # e.g. SIGTERMed by hand: it goes, but the roll still replaces it one for one
    d = booted(target=2)
    first, second = d.pids(READY)
    d.unlisten(second)
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)
    step = d.tick()
    assert step.retired == [first]
    d.unlisten(first)
    (new2,) = step.spawned
    d.ready(new2)
    assert d.tick().retired == [second]  # retired having said it already: out at once
    assert d.machine.last_rollout is not None
    assert d.machine.last_rollout.result is Result.SUCCEEDED
