"""The canary verdict: does the first new worker of a roll fail requests the old ones don't?

A pure function of counts (`rollover.core.outcomes.Outcomes`, taken over the same window for
the canary and for the old workers), the window's age and the time since the last request
anywhere. The roll holds while the verdict is None; `rollover.core.rollout.Machine` asks again
on every tick.

The rule, in an operator's words (the README's "Canary" says the same):

- Fail: the canary's errors (5xx answers and requests that raised) are significantly
  above the old workers' share in the same window: Fisher's exact test, one-sided, on
  (canary errors, canary clean, old errors, old clean) gives p <= 1 - `confidence`
  (0.005), and the canary has at least `min_failures` (3) errors. 3 of 3 failed vs 0 of
  16: p = 0.001, fails; 1 of 50 vs 0 of 400: p = 0.11, does not. With few old requests to
  compare with, an error rate significantly above `threshold` over the old workers' fails
  too (the binomial tail mirroring the pass rule): 4 of 4 vs 0 of 0 fails.
- Pass: its clean answers make an error rate `threshold` above the old workers'
  unlikely (a binomial tail: P(at most its errors | that rate) <= 1 - `confidence`; with no
  error, 20 points and 0.995: 24 requests), or it answered `requests` requests without
  failing.
- Low traffic: the window stays open for `seconds`. No decision then and no error: not
  judged (the roll goes on). No decision and errors: it stays open up to `max_seconds`;
  at that cap the bar drops to 90% confidence (`CAP_ALPHA`; with no old request to compare
  with, an error share above `threshold`) with `min_failures` errors: a deploy that cannot
  be judged and fails requests is not "deployed"; otherwise it is not judged.
- No request anywhere in the window for `idle` seconds: not judged at once (a server
  without traffic does not sit out the window).

It does not see: 4xx answers, wrong answers that are 2xx, slowness, errors on paths the
canary happened not to serve, or an excess too small to be significant in its window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rollover.core.outcomes import Outcomes

__all__ = ["CAP_ALPHA", "Canary", "CanaryPolicy", "Result", "Rule", "Verdict",
           "binomial_cdf", "binomial_sf", "decide", "figures", "fisher"]


CAP_ALPHA = 0.1
"""At `max_seconds`, a canary with errors fails at this p-value (90% confidence)."""


class Result(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_JUDGED = "not judged"


class Rule(StrEnum):
    """Which rule decided: shown in the status, the logs and statsd."""

    SIGNIFICANT = "significant"  # failed: errors significantly above the old workers'
    AT_CAP = "errors at cap"  # failed: errors above the old workers', undecided at max_seconds
    RULED_OUT = "ruled out"  # passed: a rate `threshold` above the old workers' is unlikely
    REQUESTS = "requests"  # passed: `requests` answered without a significant excess
    NO_TRAFFIC = "no traffic"  # not judged: no request anywhere
    TOO_FEW = "too few requests"  # not judged: traffic, but too little reached the canary


@dataclass(frozen=True)
class CanaryPolicy:
    requests: int = 50
    """It passes once it answered this many requests without failing (if not before)."""
    seconds: float = 10.0
    """The window: after this long without a decision and without an error, not judged."""
    max_seconds: float = 60.0
    """With errors but no decision, the window stays open this long; then it fails at 90%
    confidence (`CAP_ALPHA`) with `min_failures` errors, else it is not judged."""
    threshold: float = 0.2
    """The excess error rate (0.2: 20 points above the old workers') a pass must rule out."""
    confidence: float = 0.995
    """Both tests' confidence: p <= 1 - confidence decides."""
    min_failures: int = 3
    """It never fails on fewer errors than this."""
    idle: float = 1.0
    """No request anywhere for this long and none in the window: not judged at once."""
    strict: bool = False
    """A canary not judged aborts the roll (the machine's business; kept here with the rest)."""

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


@dataclass(frozen=True)
class Verdict:
    result: Result
    summary: str  # e.g. "3 of 3 failed vs 0 of 16 on the old workers, p = 0.001"
    rule: Rule | None = None
    p: float | None = None  # the p-value of the test that decided, if a test did


# -- the tests (stdlib only) ---------------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher(canary_errors: int, canary_requests: int, old_errors: int,
           old_requests: int) -> float:
    """One-sided Fisher's exact test: the probability, if the canary's requests had been a
    random draw of all the window's requests, that it would have drawn at least as many
    errors as it did (small: its errors are not chance)."""
    total, errors, drawn = canary_requests + old_requests, canary_errors + old_errors, \
        canary_requests
    if drawn == 0 or errors == 0:
        return 1.0
    low, high = canary_errors, min(errors, drawn)
    denominator = _log_comb(total, drawn)
    p = sum(math.exp(_log_comb(errors, k) + _log_comb(total - errors, drawn - k)
                     - denominator) for k in range(low, high + 1))
    return min(1.0, p)


def binomial_cdf(k: int, n: int, rate: float) -> float:
    """P(at most `k` errors in `n` requests that each fail with probability `rate`)."""
    if k >= n or rate <= 0.0:
        return 1.0
    if rate >= 1.0:
        return 0.0
    log_rate, log_ok = math.log(rate), math.log1p(-rate)
    return min(1.0, sum(math.exp(_log_comb(n, i) + i * log_rate + (n - i) * log_ok)
                        for i in range(k + 1)))


def binomial_sf(k: int, n: int, rate: float) -> float:
    """P(at least `k` errors in `n` requests that each fail with probability `rate`)."""
    if k <= 0 or rate >= 1.0:
        return 1.0
    if k > n or rate <= 0.0:
        return 0.0
    log_rate, log_ok = math.log(rate), math.log1p(-rate)
    return min(1.0, sum(math.exp(_log_comb(n, i) + i * log_rate + (n - i) * log_ok)
                        for i in range(k, n + 1)))


# -- the verdict ---------------------------------------------------------------------------


def _share(o: Outcomes) -> float:
    return o.errors / o.requests if o.requests else 0.0


def figures(canary: Outcomes, old: Outcomes) -> str:
    """`3 of 3 failed vs 0 of 16 on the old workers`."""
    return (f"{canary.errors} of {canary.requests} failed vs "
            f"{old.errors} of {old.requests} on the old workers")


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def decide(canary: Outcomes, old: Outcomes, *, elapsed: float, idle: float,
           policy: CanaryPolicy) -> Verdict | None:
    """The verdict, or None to hold the roll and ask again later.

    `canary` and `old`: counts over the window (the old workers' summed); `elapsed`:
    seconds since the canary was READY; `idle`: seconds since any worker last reported a
    new request.
    """
    text = figures(canary, old)
    alpha = policy.alpha
    rate = min(1.0, _share(old) + policy.threshold)
    # worse than the old workers, or (with few old requests to compare with) than `rate`
    worse = min(fisher(canary.errors, canary.requests, old.errors, old.requests),
                binomial_sf(canary.errors, canary.requests, rate))
    if canary.errors >= policy.min_failures and worse <= alpha:
        return Verdict(Result.FAILED, f"{text}, {_p(worse)}", Rule.SIGNIFICANT, worse)
    bad = binomial_cdf(canary.errors, canary.requests, rate)
    if canary.requests and bad <= alpha:
        return Verdict(Result.PASSED, f"{text}; {rate:.0%} failing ruled out, {_p(bad)}",
                       Rule.RULED_OUT, bad)
    if canary.requests >= policy.requests:
        return Verdict(Result.PASSED, f"{text}; no significant excess in "
                                      f"{canary.requests} requests, {_p(worse)}",
                       Rule.REQUESTS, worse)
    if canary.requests + old.requests == 0 and idle >= policy.idle:
        return Verdict(Result.NOT_JUDGED, f"no traffic: no request for {idle:.1f}s",
                       Rule.NO_TRAFFIC)
    if elapsed < policy.seconds:
        return None
    if canary.errors == 0:
        if canary.requests + old.requests == 0:
            return Verdict(Result.NOT_JUDGED, f"no traffic: no request in {elapsed:.0f}s",
                           Rule.NO_TRAFFIC)
        return Verdict(Result.NOT_JUDGED, f"{text}: too few to judge in {elapsed:.0f}s",
                       Rule.TOO_FEW)
    if elapsed < max(policy.max_seconds, policy.seconds):
        return None  # it has seen errors: wait for the evidence, up to the cap
    # At the cap, weaker evidence will do: 90% confidence, or, with no old request to
    # compare with, an error share above the threshold.
    if canary.errors >= policy.min_failures and (
            worse <= CAP_ALPHA if old.requests else _share(canary) > policy.threshold):
        return Verdict(Result.FAILED, f"{text}: errors and no verdict in {elapsed:.0f}s, "
                                      f"{_p(worse)}", Rule.AT_CAP, worse)
    return Verdict(Result.NOT_JUDGED, f"{text}: too few to judge in {elapsed:.0f}s",
                   Rule.TOO_FEW)


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
    final: bool = False  # it exited: `window` holds all it answered, its drain included

    @property
    def share(self) -> float:
        """The canary's share of the requests served in the window."""
        total = self.window.requests + self.old_window.requests
        return self.window.requests / total if total else 0.0

    def describe(self, counters: bool = True) -> dict[str, Any]:
        v = self.verdict
        out: dict[str, Any] = {
            "pid": self.pid,
            "verdict": None if v is None else str(v.result),
            "summary": None if v is None else v.summary}
        if v is not None:
            out.update(rule=None if v.rule is None else str(v.rule),
                       p=None if v.p is None else float(f"{v.p:.3g}"), final=self.final)
        if counters or v is not None:
            out.update(requests=self.window.requests, failures=self.window.errors,
                       share=round(self.share, 3), old_requests=self.old_window.requests,
                       old_failures=self.old_window.errors)
        return out
