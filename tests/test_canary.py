"""The canary, as a pure verdict and as a step of the roll (fake clock, no processes)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_rollout import BOOTING, READY, Driver

from rollover.core.canary import (
    CanaryPolicy,
    Result,
    Rule,
    binomial_cdf,
    binomial_sf,
    decide,
    fisher,
)
from rollover.core.outcomes import Outcomes
from rollover.core.rollout import CanaryWindow, Retire

POLICY = CanaryPolicy(requests=50, seconds=10, max_seconds=60, threshold=0.2,
                      confidence=0.995, min_failures=3, idle=1.0)


def o(requests: int, five: int = 0, four: int = 0, failed: int = 0) -> Outcomes:
    return Outcomes(requests, requests - five - four - failed, four, five, failed)


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("counts", "expected"), [
    ((3, 3, 0, 16), 1 / 969),  # 1 / C(19, 3)
    ((2, 2, 0, 16), 1 / 153),
    ((1, 50, 0, 400), 1 / 9),  # 50 / 450
    ((0, 10, 0, 10), 1.0),
    ((3, 3, 0, 0), 1.0),  # no old request: nothing to compare with
    ((0, 0, 5, 10), 1.0),
])
def test_fisher_exact_one_sided(counts: tuple[int, int, int, int], expected: float) -> None:
    assert fisher(*counts) == pytest.approx(expected, rel=1e-9)


def test_fisher_against_a_hand_sum() -> None:
    # 3 of 4 vs 1 of 16: P(X >= 3), X hypergeometric (20 requests, 4 errors, 4 drawn)
    expected = (math.comb(4, 3) * math.comb(16, 1) + 1) / math.comb(20, 4)
    assert fisher(3, 4, 1, 16) == pytest.approx(expected, rel=1e-9)


def test_binomial_upper_tail() -> None:
    assert binomial_sf(4, 4, 0.2) == pytest.approx(0.2 ** 4)
    assert binomial_sf(9, 10, 0.5) == pytest.approx(11 / 1024)
    assert binomial_sf(0, 5, 0.3) == 1.0
    assert binomial_sf(6, 5, 0.3) == 0.0


def test_binomial_tail() -> None:
    assert binomial_cdf(0, 24, 0.2) == pytest.approx(0.8 ** 24)
    assert binomial_cdf(1, 10, 0.5) == pytest.approx(11 / 1024)
    assert binomial_cdf(5, 5, 0.3) == 1.0
    assert binomial_cdf(0, 5, 0.0) == 1.0
    assert binomial_cdf(0, 5, 1.0) == 0.0


def test_large_counts_are_cheap_and_finite() -> None:
    assert 0.0 <= fisher(300, 5000, 2000, 100000) <= 1.0
    assert fisher(5000, 5000, 0, 100000) < 1e-100
    assert binomial_cdf(100, 20000, 0.2) < 1e-100


# -- the verdict: (canary, old, seconds since READY) -> verdict ----------------------------

F, P, N = Result.FAILED, Result.PASSED, Result.NOT_JUDGED


@pytest.mark.parametrize(("canary", "old", "elapsed", "expected", "rule"), [
    # the low-traffic deploy: every page 500, one request per 0.5 s
    (o(3, five=3), o(16), 6.0, F, Rule.SIGNIFICANT),
    (o(3, failed=3), o(16), 6.0, F, Rule.SIGNIFICANT),  # raised requests are errors too
    (o(47, five=47), o(412), 0.5, F, Rule.SIGNIFICANT),  # gross breakage, busy server
    (o(2, five=2), o(16), 6.0, None, None),  # under min_failures: wait for more
    (o(1, five=1), o(200), 6.0, None, None),  # one error is never enough
    # noise is not a failure
    (o(50, five=1), o(400), 3.0, P, Rule.RULED_OUT),  # p = 0.11
    (o(40, five=1), o(200, five=3), 3.0, P, Rule.RULED_OUT),  # 1-2% on both
    (o(60, five=2), o(300, five=5), 3.0, P, Rule.RULED_OUT),
    (o(100, five=20), o(400, five=80), 3.0, P, Rule.RULED_OUT),  # bad on both: not its fault
    (o(50, five=5), o(10), 3.0, P, Rule.REQUESTS),  # 10% vs 0 of 10: p = 0.39
    (o(50, four=50), o(400), 3.0, P, Rule.RULED_OUT),  # 4xx is no failure
    # a pass needs enough clean requests
    (o(24), o(100), 1.0, P, Rule.RULED_OUT),  # 0.8 ** 24 < 0.005
    (o(23), o(100), 1.0, None, None),
    (o(23), o(100), 10.0, N, Rule.TOO_FEW),  # traffic, too little of it on the canary
    (o(4), o(43), 10.0, N, Rule.TOO_FEW),  # the heavy load: 4 of 47
    # no traffic: not judged at once
    (o(0), o(0), 1.0, N, Rule.NO_TRAFFIC),
    (o(0), o(0), 0.5, None, None),
    # errors but no decision: the window stays open up to max_seconds...
    (o(2, five=2), o(16), 10.0, None, None),
    (o(2, five=2), o(16), 59.0, None, None),
    (o(3, five=1), o(30, five=1), 59.0, None, None),
    # ...where 90% confidence will do
    (o(3, five=3), o(5), 60.0, F, Rule.AT_CAP),  # 1 / C(8, 3) = 0.018
    (o(6, five=3), o(0), 60.0, F, Rule.AT_CAP),  # no old request: above the threshold
    (o(3, five=3), o(0), 6.0, None, None),  # 0.2 ** 3 = 0.008
    (o(4, five=4), o(0), 1.0, F, Rule.SIGNIFICANT),  # 0.2 ** 4: above 20% failing
    (o(6, five=6), o(2), 1.0, F, Rule.SIGNIFICANT),  # Fisher: 1 / 28, binomial: 6.4e-5
    (o(2, five=2), o(16), 60.0, N, Rule.TOO_FEW),  # under min_failures
    (o(12, five=3), o(40, five=4), 60.0, N, Rule.TOO_FEW),  # background errors
])
def test_verdicts(canary: Outcomes, old: Outcomes, elapsed: float,
                  expected: Result | None, rule: Rule | None) -> None:
    v = decide(canary, old, elapsed=elapsed, idle=0.0 if canary.requests else elapsed,
               policy=POLICY)
    assert (v and v.result, v and v.rule) == (expected, rule), v


def test_the_summary_says_which_rule_decided() -> None:
    failed = decide(o(3, five=3), o(16), elapsed=6, idle=0, policy=POLICY)
    assert failed is not None
    assert failed.summary == "3 of 3 failed vs 0 of 16 on the old workers, p = 0.001"
    assert failed.p == pytest.approx(1 / 969)
    passed = decide(o(24), o(100), elapsed=1, idle=0, policy=POLICY)
    assert passed is not None
    assert passed.summary == ("0 of 24 failed vs 0 of 100 on the old workers; "
                              "20% failing ruled out, p = 0.0047")
    idle = decide(o(0), o(0), elapsed=1, idle=1, policy=POLICY)
    assert idle is not None and idle.summary == "no traffic: no request for 1.0s"
    few = decide(o(4), o(43), elapsed=10, idle=0.2, policy=POLICY)
    assert few is not None
    assert few.summary == "0 of 4 failed vs 0 of 43 on the old workers: too few to judge in 10s"


def test_the_old_rule_let_the_low_traffic_broken_release_through() -> None:
    """What the fixed rule (>= 5 failures, >= 10 requests) made of the issue's figures;
    the exact test fails it."""
    def old_rule(canary: Outcomes, old: Outcomes) -> bool:
        share = canary.errors / canary.requests - old.errors / max(old.requests, 1)
        return canary.errors >= 5 and canary.requests >= 10 and share > 0.2

    assert not old_rule(o(3, five=3), o(16))
    v = decide(o(3, five=3), o(16), elapsed=10, idle=0.4, policy=POLICY)
    assert v is not None and v.result is Result.FAILED


def test_a_tighter_confidence_needs_more_evidence() -> None:
    strict = CanaryPolicy(confidence=0.9999)
    assert decide(o(3, five=3), o(16), elapsed=5, idle=0, policy=strict) is None
    assert decide(o(4, five=4), o(40), elapsed=5, idle=0, policy=strict) is not None


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
    assert last.error == ("canary failed: 6 of 6 failed vs 0 of 120 on the old workers, "
                          "p < 0.001")
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
    assert [log.message for log in step.logs if "canary not judged" in log.message] == [
        "canary not judged: no traffic: no request for 1.1s; the roll goes on"]
    assert not any(log.level == "warning" for log in step.logs)


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


def test_traffic_that_missed_the_canary_is_not_judged_with_a_warning() -> None:
    d, old, canary = rolling()
    d.tick()
    for pid in old:
        count(d, pid, o(30))
    count(d, canary, o(2))
    d.advance(10)
    step = d.tick()
    assert len(step.retired) == 1
    assert [(log.level, log.message) for log in step.logs
            if "canary not judged" in log.message] == [
        ("warning", "canary not judged: 0 of 2 failed vs 0 of 90 on the old workers: too few "
                    "to judge in 10s; the roll goes on")]


def test_errors_keep_the_window_open_and_at_the_cap_abort_the_roll() -> None:
    d, old, canary = rolling()
    d.tick()
    for pid in old:
        count(d, pid, o(2))
    count(d, canary, o(3, five=3))  # 3 of 3 vs 0 of 6: p = 1 / C(9, 3), not yet significant
    d.advance(30)
    assert d.tick().retired == []
    assert d.machine.rollout is not None and d.machine.rollout.holding
    d.advance(30)
    step = d.tick()
    assert step.retired == [canary]
    last = d.machine.last_rollout
    assert last is not None and last.result.value == "aborted"
    assert last.error is not None and "errors and no verdict in 60s" in last.error


def test_strict_not_judged_aborts_the_roll() -> None:
    d = Driver(3, canary=CanaryPolicy(strict=True))
    d.tick()
    d.ready(*d.pids(BOOTING))
    d.tick()
    d.advance(10)
    old = d.pids(READY)
    d.reload()
    (canary,) = d.tick().spawned
    d.advance(1)
    d.ready(canary)
    d.tick()
    d.advance(1.1)
    step = d.tick()
    assert step.retired == [canary]
    last = d.machine.last_rollout
    assert last is not None and last.result.value == "aborted"
    assert last.error == ("canary not judged (rollover_canary_strict): no traffic: no request "
                          "for 1.1s")
    assert sorted(d.pids(READY)) == sorted(old)


def test_a_failed_canarys_record_gets_its_final_counts_when_it_leaves() -> None:
    d, old, canary = rolling()
    d.tick()
    for pid in old:
        count(d, pid, o(40))
    count(d, canary, o(6, five=6))
    d.tick()
    last = d.machine.last_rollout
    assert last is not None and last.canary is not None
    assert last.canary.describe()["final"] is False
    # it answers a few more while it drains; its last report comes before its exit
    count(d, canary, o(9, five=9))
    d.exit(canary)
    step = d.tick()
    assert last.canary.describe()["final"] is True
    assert last.canary.describe()["failures"] == 9
    assert last.error == ("canary failed: 6 of 6 failed vs 0 of 120 on the old workers, "
                          "p < 0.001; in all it answered 9 requests, 9 failed")
    assert f"canary worker {canary} left: in all it answered 9 requests, 9 failed" in [
        log.message for log in step.logs]
