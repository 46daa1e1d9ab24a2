"""The canary of a USR2 handoff: the new master's workers judged against the old master's.

Both masters serve from the same listening sockets while the deploy waits, so new
connections spread over both masters' workers. Once every worker of the new master is
READY, and before the old master is stopped, the deploy reads both status files (each
worker's request counts, rewritten once a second) and applies the same verdict as a
roll's canary (`rollover.core.canary.decide`, with the new master's canary settings) to the new
master's workers (summed) against the old master's, over the same window. A failed
verdict is a failed live step: the new master is stopped, the old one never stopped
serving.

The judging starts as soon as the new master has a READY worker (while the others boot)
and, without a verdict by the time all are READY, holds the handoff until there is one.
Everything here is pure (statuses and a clock in), tested on hand-written status dicts;
`rollover.deploy.live` polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from rollover.core.canary import CanaryPolicy, Result, Verdict, decide
from rollover.core.outcomes import Outcomes

__all__ = ["IDLE_SLACK", "HandoffJudge", "counts", "failure", "policy_from_status", "served"]

IDLE_SLACK = 2.5
"""No traffic: nothing counted for this long. A status file shows counts a second or two
late (the worker reports them once a second, the master writes them once a second)."""


def policy_from_status(status: dict[str, Any], strict: bool = False) -> CanaryPolicy | None:
    """The canary settings a master writes in its status (`settings.canary`); None when its
    canary is off. A master too old to write them: the defaults."""
    settings = status.get("settings")
    if not isinstance(settings, dict) or "canary" not in settings:
        policy = CanaryPolicy()
    elif settings["canary"] is None:
        return None
    else:
        known = {f.name for f in fields(CanaryPolicy)}
        given = settings["canary"] if isinstance(settings["canary"], dict) else {}
        try:
            policy = CanaryPolicy(**{k: v for k, v in given.items() if k in known})
        except TypeError:
            policy = CanaryPolicy()
    return replace(policy, strict=policy.strict or strict,
                   idle=max(policy.idle, IDLE_SLACK))


def counts(status: dict[str, Any] | None) -> dict[int, Outcomes]:
    """Each READY worker's request counts since it started, by pid (unreadable: left out)."""
    out: dict[int, Outcomes] = {}
    for w in (status or {}).get("workers") or []:
        if not isinstance(w, dict) or w.get("state") != "ready":
            continue
        pid = w.get("pid")
        try:
            out[int(pid)] = Outcomes.from_dict(w.get("requests"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return out


def served(now: dict[int, Outcomes], base: dict[int, Outcomes]) -> Outcomes:
    """What the workers in `now` answered since `base` (a worker not in `base`: all it
    answered), summed."""
    total = Outcomes()
    for pid, outcomes in now.items():
        total = total + (outcomes - base.get(pid, Outcomes()))
    return total


@dataclass
class HandoffJudge:
    """The window of one handoff's canary: started once the new master has a READY worker
    (and both statuses were read), stepped on every poll until it has a verdict. Pure: the
    caller brings the statuses and the clock."""

    policy: CanaryPolicy
    base_new: dict[int, Outcomes]
    base_old: dict[int, Outcomes]
    started: float
    last_change: float
    new: Outcomes = field(default_factory=Outcomes)
    old: Outcomes = field(default_factory=Outcomes)
    verdict: Verdict | None = None
    _seen: tuple[int, int] = (0, 0)

    @classmethod
    def start(cls, policy: CanaryPolicy, new_status: dict[str, Any],
              old_status: dict[str, Any], now: float) -> HandoffJudge:
        return cls(policy, counts(new_status), counts(old_status), now, now)

    def line(self) -> str:
        return (f"judging the new master's workers against the old master's "
                f"{len(self.base_old)} (at most {self.policy.seconds:g}s, "
                f"{self.policy.max_seconds:g}s if they fail requests)")

    def step(self, new_status: dict[str, Any] | None, old_status: dict[str, Any] | None,
             now: float) -> Verdict | None:
        """The verdict once there is one (`None` status: a transient miss, the last counts
        stand). A worker of the new master READY after the start counts in full."""
        if self.verdict is not None:
            return self.verdict
        if new_status is not None:
            self.new = served(counts(new_status), self.base_new)
        if old_status is not None:
            self.old = served(counts(old_status), self.base_old)
        if (self.new.requests, self.old.requests) != self._seen:
            self._seen, self.last_change = (self.new.requests, self.old.requests), now
        self.verdict = decide(self.new, self.old, elapsed=now - self.started,
                              idle=now - self.last_change, policy=self.policy)
        return self.verdict


def failure(verdict: Verdict, policy: CanaryPolicy) -> str | None:
    """Why the handoff must not go on, or None."""
    if verdict.result is Result.FAILED:
        return f"canary failed: {verdict.summary}"
    if verdict.result is Result.NOT_JUDGED and policy.strict:
        return f"canary not judged (--strict): {verdict.summary}"
    return None
