"""What a worker tells its master, and the one encoding of it on the worker's pipe.

Each message is one line of ASCII-framed text, at most `MAX_LINE` bytes with its newline:

    ready <pid>
    failed <pid> <cause>
    counts <pid> <requests> <ok> <4xx> <5xx> <failed>
    recycle <pid> due|overdue <reason>
    unlisten <pid>

`<pid>` is the sender's process id (the master compares it with the pid of the worker whose
pipe carried the line); numbers are plain decimal digits, bounded (`MAX_PID`,
`MAX_COUNT`); text is UTF-8 with no line breaks, at most `MAX_TEXT` characters, shown to
operators with anything unprintable replaced.

`decode` is total: whatever bytes it is given (garbage, JSON, a line of 10 MB, numbers of
400 digits), it returns either an `Envelope` or a `Garbled` saying why, and never raises.
The format is flat (split on spaces, no nesting), so there is nothing to recurse into.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollover.core.outcomes import Outcomes

__all__ = [
    "MAX_COUNT",
    "MAX_LINE",
    "MAX_PID",
    "MAX_TEXT",
    "Counts",
    "Envelope",
    "Failed",
    "Garbled",
    "Message",
    "Ready",
    "Recycle",
    "Unlisten",
    "decode",
    "encode",
    "printable",
]

MAX_LINE = 2048
"""Bytes in one message, newline included (under PIPE_BUF: concurrent writes never mix)."""
MAX_TEXT = 1500
"""Characters of a cause or a reason; longer ones are cut and end with '...'."""
MAX_PID = 4_194_304
"""Linux's PID_MAX_LIMIT: no process id is larger."""
MAX_COUNT = 10**15
"""A worker serving a million requests a second for 30 years stays below this."""


@dataclass(frozen=True)
class Ready:
    """The worker serves: its app is loaded (and its lifespan started, its probe passed)."""


@dataclass(frozen=True)
class Failed:
    """Why the worker cannot boot; its exit follows."""

    cause: str


@dataclass(frozen=True)
class Counts:
    """The worker's requests since it started, by how they ended."""

    outcomes: Outcomes


@dataclass(frozen=True)
class Recycle:
    """The worker reached a limit (max_requests, RSS, age) and asks to be replaced;
    `overdue`: it is far past it (retired even without a replacement)."""

    reason: str
    overdue: bool = False


@dataclass(frozen=True)
class Unlisten:
    """The worker will accept no connection any more: its listening sockets are out of its
    loop for good (it may go on serving the connections it has)."""


Message = Ready | Failed | Counts | Recycle | Unlisten


@dataclass(frozen=True)
class Envelope:
    """A decoded line: what `pid` says it sent."""

    pid: int
    message: Message


@dataclass(frozen=True)
class Garbled:
    """A line that is not a message: why, and a printable sample of it."""

    reason: str
    sample: str


def _text(text: str) -> str:
    one_line = " ".join(text.split())  # no line breaks, tabs or runs of spaces
    if len(one_line) > MAX_TEXT:
        one_line = one_line[:MAX_TEXT] + "..."
    return one_line


def encode(pid: int, message: Message) -> bytes:
    """The line for `message` from `pid`, newline included, at most `MAX_LINE` bytes."""
    match message:
        case Ready():
            line = f"ready {pid}"
        case Failed(cause):
            line = f"failed {pid} {_text(cause)}"
        case Counts(o):
            line = (f"counts {pid} {o.requests} {o.ok} {o.client_error} {o.server_error} "
                    f"{o.failed}")
        case Recycle(reason, overdue):
            line = f"recycle {pid} {'overdue' if overdue else 'due'} {_text(reason)}"
        case Unlisten():
            line = f"unlisten {pid}"
    data = line.encode("utf-8", "replace")
    if len(data) >= MAX_LINE:
        data = data[:MAX_LINE - 4] + b"..."
    return data + b"\n"


def printable(data: bytes, limit: int = 80) -> str:
    """`data` as an operator may read it in a log line: decoded, unprintable -> '?'."""
    text = data[:limit * 4].decode("utf-8", "replace")
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return shown + ("..." if len(data) > len(shown.encode("utf-8", "replace")) else "")


def _number(field: str, maximum: int) -> int | None:
    """A bounded decimal: ASCII digits only (no sign, '_', exponent or spaces)."""
    if not (0 < len(field) <= len(str(maximum)) and field.isascii() and field.isdigit()):
        return None
    value = int(field)
    return value if value <= maximum else None


def decode(line: bytes) -> Envelope | Garbled:
    """The message in one line (without its newline). Never raises."""
    try:
        return _decode(line)
    except Exception as exc:  # a bug here must not cost the master: report, drop
        return Garbled(f"undecodable ({type(exc).__name__})", printable(line))


def _decode(line: bytes) -> Envelope | Garbled:
    if len(line) >= MAX_LINE:
        return Garbled(f"over {MAX_LINE} bytes", printable(line))
    text = line.decode("utf-8", "replace").rstrip("\r")
    kind, _, rest = text.partition(" ")
    pid_field, _, payload = rest.partition(" ")
    pid = _number(pid_field, MAX_PID)
    if kind not in ("ready", "failed", "counts", "recycle", "unlisten"):
        return Garbled("not a message", printable(line))
    if pid is None or pid < 1:
        return Garbled(f"bad pid in {kind!r}", printable(line))
    message: Message
    if kind in ("ready", "unlisten"):
        if payload:
            return Garbled(f"{kind!r} takes no fields", printable(line))
        message = Ready() if kind == "ready" else Unlisten()
    elif kind == "failed":
        message = Failed(_shown(payload))
    elif kind == "counts":
        fields = payload.split(" ")
        numbers = [_number(f, MAX_COUNT) for f in fields]
        if len(numbers) != 5 or any(n is None for n in numbers):
            return Garbled("'counts' takes five bounded whole numbers", printable(line))
        message = Counts(Outcomes(*(n or 0 for n in numbers)))
    else:
        due, _, reason = payload.partition(" ")
        if due not in ("due", "overdue"):
            return Garbled("'recycle' takes due or overdue", printable(line))
        message = Recycle(_shown(reason), overdue=due == "overdue")
    return Envelope(pid, message)


def _shown(text: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
