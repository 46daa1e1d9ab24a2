"""systemd's notify protocol (sd_notify) from the master: READY=1 once the workers serve,
STATUS= lines of the roll's progress, RELOADING=1 / READY=1 around a HUP's roll (for
`Type=notify-reload`), STOPPING=1 on shutdown, MAINPID= after a USR2 handoff.

gunicorn sends its own `READY=1` at the end of `Arbiter.start()`, before any worker could
serve. rollover takes `$NOTIFY_SOCKET` out of the environment when it activates (in
`on_starting`, before that), so gunicorn's finds nothing and the workers do not inherit it;
a USR2 child gets it back in its environment (`rollover.master.service`).

What to send is the pure `decide(sent, view)`; `Notifier` is the shell that keeps what was
sent and writes datagrams. Sending never raises: a failure is logged at debug, as gunicorn
does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

ENV = "NOTIFY_SOCKET"


def take_socket(environ: Any = None) -> str | None:
    """Remove `$NOTIFY_SOCKET` from the environment; return it (None when unset/empty)."""
    env = os.environ if environ is None else environ
    return env.pop(ENV, None) or None


def send(address: str | None, message: str, log: Any) -> None:
    """One datagram to the notify socket (`@name`: the abstract namespace)."""
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode("utf-8"))
    except Exception:
        log.debug("rollover: sd_notify(%r) failed", message, exc_info=True)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --- what to send (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The master as the notify protocol sees it (from `Machine.describe`)."""

    state: str  # "idle", "degraded", "rolling"
    generation: int  # the serving generation
    ready: int  # workers READY
    target: int
    rolling: int | None = None  # the generation being rolled out
    new_ready: int = 0
    canary: int | None = None  # the roll holds for this canary's verdict
    verdict: str | None = None  # then the verdict and the rule that decided it


def view(described: dict[str, Any]) -> View:
    """A `View` of `Machine.describe(...)` output, the data the status file gets."""
    workers = [w for w in described.get("workers") or [] if isinstance(w, dict)]
    roll = described.get("rollout")
    return View(
        state=str(described.get("state")),
        generation=int(described.get("serving_generation", described.get("generation", 0))),
        ready=sum(1 for w in workers if w.get("state") == "ready"),
        target=int(described.get("workers_target") or 0),
        rolling=int(roll["generation"]) if isinstance(roll, dict) else None,
        new_ready=int(roll.get("new_ready") or 0) if isinstance(roll, dict) else 0,
        canary=_judging(roll),
        verdict=_verdict(roll),
    )


def _verdict(roll: Any) -> str | None:
    canary = roll.get("canary") if isinstance(roll, dict) else None
    if isinstance(canary, dict) and canary.get("verdict") is not None:
        return f"canary {canary['verdict']}: {canary.get('summary')}"
    return None


def _judging(roll: Any) -> int | None:
    canary = roll.get("canary") if isinstance(roll, dict) else None
    if isinstance(canary, dict) and canary.get("verdict") is None:
        return int(canary.get("pid") or 0)
    return None


@dataclass(frozen=True)
class Sent:
    """What the master told systemd so far."""

    ready: bool = False  # the first READY=1 (the service is up)
    reloading: bool = False  # RELOADING=1 of a HUP, whose READY=1 is still due
    status: str | None = None  # the last STATUS= text
    mainpid: int | None = None  # a new master of a USR2 handoff: announce this pid as main


def status_text(v: View, started: bool) -> str:
    if v.rolling is not None:
        text = f"rolling: {v.new_ready}/{v.target} workers on generation {v.rolling}"
        if v.canary:
            return f"{text}, judging canary {v.canary}"
        return f"{text} ({v.verdict})" if v.verdict else text
    if not started:
        return f"starting: {v.ready}/{v.target} workers ready, generation {v.generation}"
    if v.state == "degraded":
        return f"degraded: {v.ready}/{v.target} workers ready, generation {v.generation}"
    return f"{v.state}: {v.ready} workers, generation {v.generation}"


def decide(sent: Sent, v: View) -> tuple[str | None, Sent]:
    """The datagram to send given what was sent and where the master is (None: nothing).

    READY=1 (with MAINPID= after a handoff) once all `target` workers are READY for the
    first time; READY=1 again when the roll a HUP started has ended (succeeded, aborted,
    or not started because its preparation failed); STATUS= whenever its text changes.
    """
    lines = []
    new = sent
    if not sent.ready:
        if v.target > 0 and v.ready >= v.target and v.rolling is None:
            lines.append("READY=1")
            if sent.mainpid is not None:
                lines.append(f"MAINPID={sent.mainpid}")
            new = replace(new, ready=True, mainpid=None)
    elif sent.reloading and v.rolling is None:
        lines.append("READY=1")
        new = replace(new, reloading=False)
    text = status_text(v, new.ready)
    if text != sent.status:
        lines.append(f"STATUS={text}")
        new = replace(new, status=text)
    return ("\n".join(lines) if lines else None), new


def reloading(sent: Sent, usec: int) -> tuple[str | None, Sent]:
    """A HUP: RELOADING=1 (once the service is up; before, READY=1 is still to come)."""
    if not sent.ready:
        return None, sent
    return f"RELOADING=1\nMONOTONIC_USEC={usec}", replace(sent, reloading=True)


# --- the shell -----------------------------------------------------------------------------


class Notifier:
    """The master's notify socket and what it sent there."""

    def __init__(self, address: str | None, log: Any, mainpid: int | None = None) -> None:
        self.address = address
        self.log = log
        self.sent = Sent(mainpid=mainpid)

    def update(self, describe: Callable[[], dict[str, Any]]) -> None:
        """`describe`: the master's `Machine.describe` output (only called with a socket)."""
        if not self.address:
            return
        message, self.sent = decide(self.sent, view(describe()))
        if message is not None:
            send(self.address, message, self.log)

    def reloading(self) -> None:
        if not self.address:
            return
        message, self.sent = reloading(self.sent, monotonic_usec())
        if message is not None:
            send(self.address, message, self.log)

    def stopping(self) -> None:
        send(self.address, "STOPPING=1", self.log)
