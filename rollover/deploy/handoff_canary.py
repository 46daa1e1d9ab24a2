"""The canary of a USR2 handoff: the new master's workers judged against the old master's.

Both masters serve from the same listening sockets while the deploy waits, so new
connections spread over both masters' workers. Once every worker of the new master is
READY, and before the old master is stopped, the deploy reads both status files (each
worker's request counts, rewritten once a second) and applies the same verdict as a
roll's canary (`rollover.canary.decide`, with the new master's canary settings) to the new
master's workers (summed) against the old master's, over the same window. A failed
verdict is a failed live step: the new master is stopped, the old one never stopped
serving.

The pure parts (`policy_from_status`, `counts`, `served`) are tested on hand-written
status dicts; `judge_handoff` polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from rollover.canary import CanaryPolicy, Result, Verdict, decide
from rollover.outcomes import Outcomes

__all__ = ["IDLE_SLACK", "counts", "failure", "judge_handoff", "policy_from_status", "served"]

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


Read = Callable[[], dict[str, Any] | None]


def judge_handoff(policy: CanaryPolicy, read_new: Read, read_old: Read,
                  alive: Callable[[], str | None], say: Callable[[str], None],
                  poll: float = 0.1) -> Verdict:
    """Hold the handoff until the new master's workers have a verdict. `read_new` /
    `read_old`: each master's status (None on a transient miss); `alive`: None while both
    masters run, else why not (a RuntimeError is raised with it)."""
    first_new, first_old = read_new(), read_old()
    deadline = time.monotonic() + IDLE_SLACK
    while (first_new is None or first_old is None) and time.monotonic() < deadline:
        time.sleep(poll)  # a transient miss: the window must start from real counts
        first_new, first_old = first_new or read_new(), first_old or read_old()
    base_new, base_old = counts(first_new), counts(first_old)
    started = last_change = time.monotonic()
    new, old = Outcomes(), Outcomes()
    seen = (0, 0)
    say(f"judging the new master's {len(base_new)} workers against the old master's "
        f"{len(base_old)} (at most {policy.seconds:g}s, {policy.max_seconds:g}s if they fail "
        f"requests)")
    while True:
        problem = alive()
        if problem is not None:
            raise RuntimeError(problem)
        now_new, now_old = read_new(), read_old()
        if now_new is not None:
            new = served(counts(now_new), base_new)
        if now_old is not None:
            old = served(counts(now_old), base_old)
        now = time.monotonic()
        if (new.requests, old.requests) != seen:
            seen, last_change = (new.requests, old.requests), now
        verdict = decide(new, old, elapsed=now - started, idle=now - last_change,
                         policy=policy)
        if verdict is not None:
            return verdict
        time.sleep(poll)


def failure(verdict: Verdict, policy: CanaryPolicy) -> str | None:
    """Why the handoff must not go on, or None."""
    if verdict.result is Result.FAILED:
        return f"canary failed: {verdict.summary}"
    if verdict.result is Result.NOT_JUDGED and policy.strict:
        return f"canary not judged (--strict): {verdict.summary}"
    return None
