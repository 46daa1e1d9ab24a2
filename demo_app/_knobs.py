"""Import-time knobs shared by the demo apps (read from the environment)."""

from __future__ import annotations

import os
import time

STREAM_INTERVAL = 0.5  # seconds between /stream events


def apply_import_knobs() -> None:
    """Sleep ``DEMO_BOOT_DELAY`` seconds, then raise if ``DEMO_FAIL_AT_IMPORT`` is set.

    Called at module import time, so in gunicorn it runs in each freshly forked worker.
    """
    raw_delay = os.environ.get("DEMO_BOOT_DELAY", "").strip()
    if raw_delay:
        try:
            delay = float(raw_delay)
        except ValueError:
            msg = f"DEMO_BOOT_DELAY must be a number of seconds, got {raw_delay!r}"
            raise ValueError(msg) from None
        if delay > 0:
            time.sleep(delay)
    fail = os.environ.get("DEMO_FAIL_AT_IMPORT", "")
    if fail:
        raise RuntimeError(fail)


def parse_count(raw: str | None) -> int | None:
    """Parse the ``?n=`` query value: None (absent) means stream forever."""
    if raw is None or raw == "":
        return None
    n = int(raw)  # ValueError for junk; callers turn it into a 400
    if n < 1:
        raise ValueError("n must be >= 1")
    return n
