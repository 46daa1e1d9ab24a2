"""The canary verdict: does the first new worker of a roll fail requests the old ones don't?

A pure function of counts (`rollover.outcomes.Outcomes`, taken over the same window for
the canary and for the old workers), the window's age and the time since the last request
anywhere. The roll holds while the verdict is None; `rollover.rollout.Machine` asks again
on every tick.

It is made to stop gross breakage fast (a route that answers 500, a setting read per
request that is missing, a schema the code no longer matches): it fails the canary when
its share of errors (5xx answers and requests that raised) is above the old workers' share
by more than `threshold`, with at least `min_failures` errors. It does not see: 4xx
answers (a client's error as often as the code's), wrong answers that are 2xx, slowness,
errors on paths the canary happened not to serve, or a failure rate below the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rollover.outcomes import Outcomes

__all__ = ["Canary", "CanaryPolicy", "Result", "Verdict", "decide"]


class Result(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_JUDGED = "not judged"


@dataclass(frozen=True)
class CanaryPolicy:
    requests: int = 50
    """The verdict comes once the canary answered this many requests..."""
    seconds: float = 10.0
    """...or once this many seconds passed since it was READY."""
    threshold: float = 0.2
    """Fails when its error share is above the old workers' by more than this (0.2: 20
    percentage points)..."""
    min_failures: int = 5
    """...and it got at least this many requests wrong."""
    min_requests: int = 10
    """Fewer answered requests when the window ends: not judged."""
    idle: float = 1.0
    """No request anywhere for this long: not judged at once (a server without traffic
    does not sit out the window)."""


@dataclass(frozen=True)
class Verdict:
    result: Result
    summary: str  # e.g. "canary answered 47 of 50 with 5xx; old workers 0 of 412"


def _share(o: Outcomes) -> float:
    return o.errors / o.requests if o.requests else 0.0


def summary(canary: Outcomes, old: Outcomes) -> str:
    return (f"canary answered {canary.errors} of {canary.requests} with 5xx; "
            f"old workers {old.errors} of {old.requests}")


def decide(canary: Outcomes, old: Outcomes, *, elapsed: float, idle: float,
           policy: CanaryPolicy) -> Verdict | None:
    """The verdict, or None to hold the roll and ask again later.

    `canary` and `old`: counts over the window (the old workers' summed); `elapsed`:
    seconds since the canary was READY; `idle`: seconds since any worker last reported a
    new request.
    """
    text = summary(canary, old)
    if (canary.errors >= policy.min_failures
            and _share(canary) - _share(old) > policy.threshold):
        return Verdict(Result.FAILED, text)
    if canary.requests >= policy.requests:
        return Verdict(Result.PASSED, text)
    if elapsed < policy.seconds and idle < policy.idle:
        return None
    if canary.requests >= policy.min_requests:
        return Verdict(Result.PASSED, text)
    why = (f"no request for {idle:.1f}s" if idle >= policy.idle
           else f"fewer than {policy.min_requests} requests in {policy.seconds:g}s")
    return Verdict(Result.NOT_JUDGED, f"{text}: {why}")


@dataclass
class Canary:
    """The first new worker of a roll, watched over a window before the roll goes on (the
    machine's record of it, in its `Rollout`)."""

    pid: int
    started: float
    base: Outcomes  # its counts when it became READY
    old_base: dict[int, Outcomes]  # the old workers' counts then
    window: Outcomes = field(default_factory=Outcomes)
    old_window: Outcomes = field(default_factory=Outcomes)
    verdict: Verdict | None = None

    @property
    def share(self) -> float:
        """The canary's share of the requests served in the window."""
        total = self.window.requests + self.old_window.requests
        return self.window.requests / total if total else 0.0

    def describe(self, counters: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": self.pid,
            "verdict": None if self.verdict is None else str(self.verdict.result),
            "summary": None if self.verdict is None else self.verdict.summary}
        if counters or self.verdict is not None:
            out.update(requests=self.window.requests, failures=self.window.errors,
                       share=round(self.share, 3), old_requests=self.old_window.requests,
                       old_failures=self.old_window.errors)
        return out
