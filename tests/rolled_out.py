""""Rolled out" means no old worker takes another connection: the cases, for one gunicorn
version (tests/test_rolled_out_<N>.py, one file per version so that `--dist loadfile`
spreads them over the xdist workers).

For each worker class (`sync`, `gthread`, `gevent`, `uvicorn_worker.UvicornWorker`), a
master of that version rolls `ROLLS` times in a row; after each `rollover reload --wait`
exits 0 (it printed "rolled out generation N"), `REQUESTS` requests, each on a new
connection, must all be answered by the new generation. A retired worker that still
accepts answers some of them with the previous version. Before the fixes: gunicorn 23's
gthread worker (its poller not woken by SIGTERM for up to a second) answered 1 of 40 in 9
of 10 rolls; gevent (its loop sleeps a second before closing its servers, and the master
counted the worker gone at SIGTERM) up to 19 of 40, on 23 and 27 alike.

`ROLLS` is 10 (the issue's figure), scaled by `ROLLOVER_TEST_SOAK_SCALE` (CI, where it is
0.16: 4 rolls). Two workers and a 0.2 s import keep a roll near a second, so the 20 cases
stay within the suite's budget.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from harness import AppCode, Master, http_get, run_cli, scaled, start_settled
from worker_rolls import missing

ROLLS = scaled(10, 4)
REQUESTS = 40
WORKERS = 2
BOOT = 0.2

CLASSES = ["sync", "gthread", "gevent", "uvicorn_worker.UvicornWorker"]


def answers(port: int, count: int) -> Counter[str]:
    """The version answering each of `count` requests, each on a new connection."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        try:
            status, body = http_get(port, timeout=10)
            seen[json.loads(body)["version"] if status == 200 else f"HTTP {status}"] += 1
        except Exception as exc:
            seen[f"{type(exc).__name__}"] += 1
    return seen


class RolledOutCases:
    """The cases, for gunicorn `VERSION` (set by each file's subclass)."""

    VERSION: str

    @pytest.mark.parametrize("worker_class", CLASSES)
    def test_after_rolled_out_only_the_new_generation_answers(
        self, worker_class: str, make_app: Callable[..., AppCode],
        masters: Callable[..., Master], gunicorn_venv: Callable[[str], Path],
    ) -> None:
        venv = gunicorn_venv(self.VERSION)
        reason = _missing_in(venv, worker_class)
        if reason:
            pytest.skip(reason)
        app = make_app("asgi" if worker_class.startswith("uvicorn") else "wsgi")
        app.write("v0", boot_delay=BOOT)
        master, _ = start_settled(partial(masters, venv=venv), app, WORKERS,
                                  worker_class=worker_class)
        label = f"gunicorn {self.VERSION} {worker_class}"
        stale: list[str] = []
        old_answers = 0
        for n in range(1, ROLLS + 1):
            app.write(f"v{n}", boot_delay=BOOT)
            cp = run_cli("reload", "--wait", "--timeout", "60", "--pidfile",
                         str(master.pidfile), venv=venv)
            assert cp.returncode == 0, f"roll {n}: exit {cp.returncode}\n{cp.stdout}" \
                                       f"{cp.stderr}{master.tail()}"
            assert f"rolled out generation {n}" in cp.stdout, cp.stdout
            seen = answers(master.port, REQUESTS)
            if seen != Counter({f"v{n}": REQUESTS}):
                stale.append(f"roll {n}: {dict(seen)}")
                old_answers += REQUESTS - seen[f"v{n}"]
        print(f"\n[{label}] {ROLLS} rolls, {REQUESTS} new connections after each "
              f"'rolled out': {old_answers} of {ROLLS * REQUESTS} answered by an old "
              f"generation (or failed)" + "".join(f"\n  {line}" for line in stale))
        assert stale == [], f"{label}: answers after 'rolled out':\n" + "\n".join(stale)


def _missing_in(venv: Path, worker_class: str) -> str | None:
    """Why `worker_class` cannot run in `venv` (a skip reason), or None."""
    site = next(venv.glob("lib/python*/site-packages"), None)
    module = {"gevent": "gevent", "uvicorn_worker.UvicornWorker": "uvicorn_worker"}.get(
        worker_class)
    if module is not None and (site is None or not (site / module).exists()):
        return f"{module} is not installed in {venv}"
    return missing(worker_class) if module is None else None
