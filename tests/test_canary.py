"""The canary, as a pure verdict and as a step of the roll (fake clock, no processes)."""

from __future__ import annotations

from typing import Any

from test_rollout import BOOTING, READY, Driver

from rollover.canary import CanaryPolicy, Result, decide
from rollover.outcomes import Outcomes
from rollover.rollout import CanaryWindow, Retire

POLICY = CanaryPolicy(requests=50, seconds=10, threshold=0.2, min_failures=5,
                      min_requests=10, idle=1.0)


def o(requests: int, five: int = 0, four: int = 0, failed: int = 0) -> Outcomes:
    return Outcomes(requests, requests - five - four - failed, four, five, failed)


# -- the verdict ---------------------------------------------------------------------------


def test_gross_breakage_fails_as_soon_as_the_minimum_of_failures_is_reached() -> None:
    v = decide(o(5, five=5), o(100), elapsed=0.3, idle=0.0, policy=POLICY)
    assert v is not None and v.result is Result.FAILED
    assert v.summary == "canary answered 5 of 5 with 5xx; old workers 0 of 100"


def test_requests_that_raised_count_as_failures() -> None:
    v = decide(o(8, failed=6), o(100), elapsed=1, idle=0, policy=POLICY)
    assert v is not None and v.result is Result.FAILED


def test_errors_the_old_workers_make_too_are_not_the_canarys_fault() -> None:
    v = decide(o(50, five=20), o(400, five=150), elapsed=2, idle=0, policy=POLICY)
    assert v is not None and v.result is Result.PASSED


def test_4xx_is_not_a_failure() -> None:
    v = decide(o(50, four=50), o(400), elapsed=2, idle=0, policy=POLICY)
    assert v is not None and v.result is Result.PASSED


def test_holds_until_enough_requests_or_the_window_ends() -> None:
    assert decide(o(30), o(300), elapsed=2, idle=0.1, policy=POLICY) is None
    passed = decide(o(50), o(300), elapsed=2, idle=0.1, policy=POLICY)
    assert passed is not None and passed.result is Result.PASSED
    late = decide(o(12), o(30), elapsed=10, idle=0.5, policy=POLICY)
    assert late is not None and late.result is Result.PASSED


def test_too_few_requests_is_not_judged() -> None:
    v = decide(o(3), o(30), elapsed=10, idle=0.5, policy=POLICY)
    assert v is not None and v.result is Result.NOT_JUDGED
    assert "fewer than 10 requests in 10s" in v.summary


def test_no_traffic_is_not_judged_at_once() -> None:
    v = decide(o(0), o(0), elapsed=1.0, idle=1.0, policy=POLICY)
    assert v is not None and v.result is Result.NOT_JUDGED
    assert "no request for 1.0s" in v.summary


def test_a_few_failures_under_the_minimum_do_not_fail_it() -> None:
    v = decide(o(50, five=4), o(400), elapsed=2, idle=0, policy=POLICY)
    assert v is not None and v.result is Result.PASSED


# -- in the roll ---------------------------------------------------------------------------


def reloaded(target: int = 3, **policy: Any) -> tuple[Driver, list[int], list[int]]:
    """A master with `target` READY workers, just HUPed: (driver, old pids, spawned)."""
    d = Driver(target, canary=POLICY, **policy)
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()
    d.advance(10)
    old = d.pids(READY)
    d.reload()
    return d, old, d.tick().spawned


def rolling(target: int = 3) -> tuple[Driver, list[int], int]:
    d, old, (canary,) = reloaded(target)
    d.advance(1)
    d.ready(canary)
    return d, old, canary


def count(d: Driver, pid: int, outcomes: Outcomes) -> None:
    d.machine.counted(d.now, pid, outcomes)


def test_the_roll_holds_at_the_first_new_worker() -> None:
    d, old, canary = rolling()
    step = d.tick()
    assert CanaryWindow(canary, len(old) + 1) in d.actions
    assert step.retired == [] and step.spawned == []
    for _ in range(5):
        d.advance(0.25)
        for pid in old:
            count(d, pid, o(int(d.now * 10)))
        step = d.tick()
        assert step.retired == [] and step.spawned == []
    assert d.machine.rollout is not None and d.machine.rollout.holding


def test_a_failing_canary_aborts_the_roll_and_is_the_only_worker_retired() -> None:
    d, old, canary = rolling()
    d.tick()
    d.advance(0.5)
    count(d, canary, o(6, five=6))
    for pid in old:
        count(d, pid, o(40))
    step = d.tick()
    assert step.retired == [canary]
    assert CanaryWindow(None) in step.actions
    last = d.machine.last_rollout
    assert last is not None and last.result.value == "aborted"
    assert last.error == "canary failed: canary answered 6 of 6 with 5xx; old workers 0 of 120"
    assert all(d.machine.workers[pid].state is READY for pid in old)
    d.exit(canary)
    d.advance(60)
    d.tick()
    assert sorted(d.pids(READY)) == sorted(old) and d.pids(BOOTING) == []


def test_a_passing_canary_lets_the_roll_go_on() -> None:
    d, old, canary = rolling()
    d.tick()
    d.advance(0.5)
    count(d, canary, o(50))
    for pid in old:
        count(d, pid, o(60))
    step = d.tick()
    assert len(step.retired) == 1 and step.retired[0] in old
    assert any(isinstance(a, Retire) for a in step.actions)
    assert d.machine.rollout is not None
    assert d.machine.rollout.canary is not None
    assert d.machine.rollout.canary.verdict is not None
    d.settle()
    assert d.generations() == [1, 1, 1]


def test_without_traffic_the_roll_goes_on_after_a_second() -> None:
    d, _, _ = rolling()
    d.tick()
    d.advance(0.9)
    assert d.tick().retired == []
    d.advance(0.2)
    step = d.tick()
    assert len(step.retired) == 1
    assert any(log.level == "warning" and "canary not judged" in log.message
               for log in step.logs)


def test_a_canary_that_crashes_in_the_window_aborts_the_roll() -> None:
    d, old, canary = rolling()
    d.tick()
    d.exit(canary, code=1)
    step = d.tick()
    assert CanaryWindow(None) in step.actions
    last = d.machine.last_rollout
    assert last is not None and last.result.value == "aborted"
    assert sorted(d.pids(READY)) == sorted(old)


def test_the_status_shows_the_canary() -> None:
    d, _, canary = rolling()
    d.tick()
    count(d, canary, o(7, five=1))
    d.tick()
    status = d.machine.describe(lambda t: f"T+{t:g}")
    assert status["rollout"]["canary"]["pid"] == canary
    assert status["rollout"]["canary"]["requests"] == 7
    assert status["rollout"]["canary"]["verdict"] is None
    quiet = d.machine.describe(lambda t: f"T+{t:g}", counters=False)
    assert "requests" not in quiet["rollout"]["canary"]


def test_off_by_policy_no_hold() -> None:
    d = Driver(2)
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()
    d.reload()
    (new,) = d.tick().spawned
    d.ready(new)
    assert len(d.tick().retired) == 1



def test_a_failing_canary_takes_every_new_worker_with_it() -> None:
    d, old, (first, second) = reloaded(3, max_surge=2)
    d.ready(first, second)
    d.tick()
    count(d, first, o(6, five=6))
    step = d.tick()
    assert sorted(step.retired) == sorted([first, second])
    assert sorted(d.pids(READY)) == sorted(old)
