"""How a worker's requests ended, counted by class: what workers report, what the master sums.

A worker counts every request its app is called for (WSGI and ASGI `http`, not websockets)
by the class of its answer: 2xx/3xx (`ok`), 4xx (`client_error`), 5xx (`server_error`), or
`failed` (the app raised, or ended, before it answered).
Counts only grow for the life of a worker; the master compares two reports to get a window.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

__all__ = ["Outcomes"]


@dataclass(frozen=True)
class Outcomes:
    requests: int = 0
    ok: int = 0
    client_error: int = 0
    server_error: int = 0
    failed: int = 0

    @property
    def errors(self) -> int:
        """Requests the server got wrong: 5xx answers and failed requests."""
        return self.server_error + self.failed

    def __add__(self, other: Outcomes) -> Outcomes:
        return Outcomes(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Outcomes) -> Outcomes:
        return Outcomes(*(max(0, a - b)
                          for a, b in zip(astuple(self), astuple(other), strict=True)))

    @classmethod
    def from_dict(cls, data: object) -> Outcomes:
        """The inverse of `as_dict` (a status file's per-worker `requests`); ValueError for
        anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"expected request counts, got {str(data)[:80]!r}")
        try:
            numbers = [data[key] for key in ("requests", "ok", "4xx", "5xx", "failed")]
        except KeyError as exc:
            raise ValueError(f"request counts without {exc}") from None
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                   for n in numbers):
            raise ValueError(f"expected five counts, got {str(data)[:80]!r}")
        return cls(*numbers)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "ok": self.ok, "4xx": self.client_error,
                "5xx": self.server_error, "failed": self.failed}
