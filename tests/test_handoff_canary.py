"""The USR2 handoff's canary, its pure parts and its polling loop on scripted statuses."""

from __future__ import annotations

from typing import Any

import pytest

from rollover.canary import CanaryPolicy, Result
from rollover.deploy import handoff_canary
from rollover.deploy.handoff_canary import counts, failure, policy_from_status, served
from rollover.outcomes import Outcomes


def worker(pid: int, requests: int, five: int = 0, state: str = "ready") -> dict[str, Any]:
    return {"pid": pid, "state": state,
            "requests": {"requests": requests, "ok": requests - five, "4xx": 0, "5xx": five,
                         "failed": 0}}


def test_policy_comes_from_the_new_masters_status() -> None:
    status = {"settings": {"canary": {"confidence": 0.99, "max_seconds": 30.0,
                                      "unknown_later": 1}}}
    policy = policy_from_status(status)
    assert policy is not None and policy.confidence == 0.99 and policy.max_seconds == 30.0
    assert policy.idle == handoff_canary.IDLE_SLACK and not policy.strict
    strict = policy_from_status(status, strict=True)
    assert strict is not None and strict.strict
    assert policy_from_status({"settings": {"canary": None}}) is None  # off
    assert policy_from_status({}) == CanaryPolicy(idle=handoff_canary.IDLE_SLACK)  # older


def test_counts_and_windows() -> None:
    status = {"workers": [worker(1, 10), worker(2, 5, five=5), worker(3, 7, state="booting"),
                          {"pid": 4, "state": "ready"}, "junk"]}
    now = counts(status)
    assert now == {1: Outcomes(10, 10, 0, 0, 0), 2: Outcomes(5, 0, 0, 5, 0)}
    assert served(now, {1: Outcomes(4, 4, 0, 0, 0)}) == Outcomes(11, 6, 0, 5, 0)
    assert counts(None) == {}


def scripted(*statuses: dict[str, Any] | None) -> Any:
    queue = list(statuses)

    def read() -> dict[str, Any] | None:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return read


def test_a_failing_new_master_fails_against_the_old_one() -> None:
    new = scripted({"workers": [worker(10, 0)]}, None,
                   {"workers": [worker(10, 4, five=4)]})
    old = scripted({"workers": [worker(1, 100)]}, {"workers": [worker(1, 120)]})
    lines: list[str] = []
    verdict = handoff_canary.judge_handoff(CanaryPolicy(), new, old, lambda: None,
                                           lines.append, poll=0.001)
    assert verdict.result is Result.FAILED
    assert verdict.summary == "4 of 4 failed vs 0 of 20 on the old workers, p < 0.001"
    assert failure(verdict, CanaryPolicy()) == ("canary failed: 4 of 4 failed vs 0 of 20 on "
                                                "the old workers, p < 0.001")
    assert lines[0].startswith("judging the new master's 1 workers against the old master's 1")


def test_a_good_new_master_passes() -> None:
    new = scripted({"workers": [worker(10, 0), worker(11, 0)]},
                   {"workers": [worker(10, 15), worker(11, 15)]})
    old = scripted({"workers": [worker(1, 100)]}, {"workers": [worker(1, 150)]})
    verdict = handoff_canary.judge_handoff(CanaryPolicy(), new, old, lambda: None,
                                           lambda _: None, poll=0.001)
    assert verdict.result is Result.PASSED
    assert failure(verdict, CanaryPolicy(strict=True)) is None


def test_no_traffic_is_not_judged_and_strict_makes_it_a_failure() -> None:
    quiet = {"workers": [worker(10, 0)]}
    policy = CanaryPolicy(idle=0.05, strict=True)
    verdict = handoff_canary.judge_handoff(policy, scripted(quiet), scripted(quiet),
                                           lambda: None, lambda _: None, poll=0.001)
    assert verdict.result is Result.NOT_JUDGED
    assert failure(verdict, policy) == ("canary not judged (--strict): no traffic: no request "
                                        f"for {verdict.summary.split('for ')[1]}")


def test_a_master_exiting_meanwhile_stops_the_judging() -> None:
    quiet = {"workers": [worker(10, 0)]}
    with pytest.raises(RuntimeError, match="the new master 7 exited"):
        handoff_canary.judge_handoff(CanaryPolicy(), scripted(quiet), scripted(quiet),
                                     lambda: "the new master 7 exited", lambda _: None,
                                     poll=0.001)
