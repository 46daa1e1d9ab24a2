"""The USR2 handoff's canary: its pure parts, on hand-written statuses and a fake clock."""

from __future__ import annotations

from typing import Any

from rollover.core.canary import CanaryPolicy, Result
from rollover.core.outcomes import Outcomes
from rollover.deploy import handoff_canary
from rollover.deploy.handoff_canary import (
    HandoffJudge,
    counts,
    failure,
    policy_from_status,
    served,
)


def worker(pid: int, requests: int, five: int = 0, state: str = "ready") -> dict[str, Any]:
    return {"pid": pid, "state": state,
            "requests": {"requests": requests, "ok": requests - five, "4xx": 0, "5xx": five,
                         "failed": 0}}


def status(*workers: dict[str, Any]) -> dict[str, Any]:
    return {"workers": list(workers)}


def test_policy_comes_from_the_new_masters_status() -> None:
    given = {"settings": {"canary": {"confidence": 0.99, "max_seconds": 30.0,
                                     "unknown_later": 1}}}
    policy = policy_from_status(given)
    assert policy is not None and policy.confidence == 0.99 and policy.max_seconds == 30.0
    assert policy.idle == handoff_canary.IDLE_SLACK and not policy.strict
    strict = policy_from_status(given, strict=True)
    assert strict is not None and strict.strict
    assert policy_from_status({"settings": {"canary": None}}) is None  # off
    assert policy_from_status({}) == CanaryPolicy(idle=handoff_canary.IDLE_SLACK)  # older


def test_counts_and_windows() -> None:
    now = counts(status(worker(1, 10), worker(2, 5, five=5), worker(3, 7, state="booting"),
                        {"pid": 4, "state": "ready"}, "junk"))  # type: ignore[arg-type]
    assert now == {1: Outcomes(10, 10, 0, 0, 0), 2: Outcomes(5, 0, 0, 5, 0)}
    assert served(now, {1: Outcomes(4, 4, 0, 0, 0)}) == Outcomes(11, 6, 0, 5, 0)
    assert counts(None) == {}


def test_a_failing_new_master_fails_against_the_old_one() -> None:
    policy = CanaryPolicy()
    judge = HandoffJudge.start(policy, status(worker(10, 0)), status(worker(1, 100)), 0.0)
    assert judge.step(None, status(worker(1, 110)), 0.5) is None  # a transient miss
    # a worker READY after the start counts in full
    verdict = judge.step(status(worker(10, 2, five=2), worker(11, 2, five=2)),
                         status(worker(1, 120)), 1.0)
    assert verdict is not None and verdict.result is Result.FAILED
    assert verdict.summary == "4 of 4 failed vs 0 of 20 on the old workers, p < 0.001"
    assert failure(verdict, policy) == ("canary failed: 4 of 4 failed vs 0 of 20 on the old "
                                        "workers, p < 0.001")
    assert judge.step(status(worker(10, 9)), status(worker(1, 200)), 2.0) is verdict


def test_a_good_new_master_passes() -> None:
    policy = CanaryPolicy(strict=True)
    judge = HandoffJudge.start(policy, status(worker(10, 0), worker(11, 0)),
                               status(worker(1, 100)), 0.0)
    verdict = judge.step(status(worker(10, 15), worker(11, 15)), status(worker(1, 150)), 1.0)
    assert verdict is not None and verdict.result is Result.PASSED
    assert failure(verdict, policy) is None


def test_no_traffic_is_not_judged_and_strict_makes_it_a_failure() -> None:
    policy = policy_from_status({}, strict=True)
    assert policy is not None
    quiet_new, quiet_old = status(worker(10, 0)), status(worker(1, 50))
    judge = HandoffJudge.start(policy, quiet_new, quiet_old, 0.0)
    assert judge.step(quiet_new, quiet_old, 2.0) is None  # counts may be 2 s late
    verdict = judge.step(quiet_new, quiet_old, 2.5)
    assert verdict is not None and verdict.result is Result.NOT_JUDGED
    assert failure(verdict, policy) == ("canary not judged (--strict): no traffic: no request "
                                        "for 2.5s")


def test_errors_without_a_decision_hold_the_handoff_up_to_the_cap() -> None:
    policy = CanaryPolicy()
    judge = HandoffJudge.start(policy, status(worker(10, 0)), status(worker(1, 0)), 0.0)
    assert judge.step(status(worker(10, 3, five=2)), status(worker(1, 6)), 30.0) is None
    verdict = judge.step(status(worker(10, 3, five=3)), status(worker(1, 6)), 60.0)
    assert verdict is not None and verdict.result is Result.FAILED
    assert "errors and no verdict in 60s" in verdict.summary
