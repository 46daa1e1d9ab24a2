"""How often the canary's verdict fails a good release, and stops a bad one (simulated).

One-off measurement (not run by CI):

    .venv/bin/python -m bench.canary_verdict [--rolls 1000] [--seed 7]

Each simulated roll sends requests (a Poisson stream of `rate` per second) to the canary
with probability `share` (0.2: 4 old workers and the canary) and to the old workers
otherwise; each request fails with the background rate (old and new code alike), or, for
a bad release, the canary's with the release's own rate. `rollover.core.canary.decide` is asked
every 0.25 s (the reporting cadence while a canary is judged) until it gives a verdict.
Printed: the share of rolls failed, passed and not judged, per case. The README's "Canary"
section quotes these figures.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

from rollover.core.canary import CanaryPolicy, Verdict, decide
from rollover.core.outcomes import Outcomes

LOOK_EVERY = 0.25


def _o(requests: int, errors: int) -> Outcomes:
    return Outcomes(requests, requests - errors, 0, errors, 0)


def roll(rng: random.Random, rate: float, share: float, background: float,
         release: float | None, policy: CanaryPolicy) -> Verdict:
    canary = canary_errors = old = old_errors = 0
    t, look = 0.0, LOOK_EVERY
    while True:
        t += rng.expovariate(rate)
        while look < t:
            verdict = decide(_o(canary, canary_errors), _o(old, old_errors), elapsed=look,
                             idle=0.0, policy=policy)
            if verdict is not None:
                return verdict
            look += LOOK_EVERY
        if rng.random() < share:
            canary += 1
            canary_errors += rng.random() < (background if release is None else release)
        else:
            old += 1
            old_errors += rng.random() < background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rolls", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--share", type=float, default=0.2)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    policy = CanaryPolicy()
    cases = [(None, bg) for bg in (0.0, 0.01, 0.02, 0.05)] + [
        (bad, bg) for bad in (1.0, 0.3) for bg in (0.0, 0.02)]
    for rate in (2.0, 20.0, 200.0):
        for release, background in cases:
            results = Counter(str(roll(rng, rate, opts.share, background, release,
                                       policy).result) for _ in range(opts.rolls))
            kind = "good release" if release is None else f"release failing {release:.0%}"
            shares = ", ".join(f"{k} {v / opts.rolls:.1%}" for k, v in sorted(results.items()))
            print(f"{rate:g} requests/s, {background:.0%} background, {kind}: {shares}",
                  flush=True)


if __name__ == "__main__":
    main()
