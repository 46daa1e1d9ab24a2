"""What a refresh tells its caller: the report of what it did, or an error (nothing done)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class RefreshError(RuntimeError):
    """The refresh failed or timed out; nothing was changed. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class NeedsReexec(RefreshError):
    """The interpreter itself changed on disk (another Python version or binary behind the
    same path): its stdlib and site-packages cannot be loaded into this process, and
    new workers forked from it would half-load them. Nothing was changed; only a re-exec
    (`kill -USR2`) can pick the change up. `reasons`: what changed, for the status."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"import refresh: needs a re-exec (kill -USR2): {'; '.join(reasons)}")



def _short(items: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@dataclass
class RefreshReport:
    """What one refresh did (or found it could not do)."""

    paths_added: list[str] = field(default_factory=list)
    paths_removed: list[str] = field(default_factory=list)
    modules_purged: list[str] = field(default_factory=list)
    """Top-level names; each was purged together with all its submodules."""
    dependents_purged: list[str] = field(default_factory=list)
    """Those of `modules_purged` that did not change themselves: they depend on one that
    did, or they are the app's own (in no distribution)."""
    distributions_changed: dict[str, str] = field(default_factory=dict)
    """Distribution name -> "old -> new" ("none" for one that appeared or went away)."""
    finders_removed: list[str] = field(default_factory=list)
    """Stale setuptools editable finder modules taken out of `sys.meta_path`."""
    needs_reexec: list[str] = field(default_factory=list)
    """What changed on disk but cannot be refreshed in-process: re-exec (`kill -USR2`)."""
    problems: list[str] = field(default_factory=list)
    """Non-fatal trouble (a finder whose invalidate_caches raised, a bad .pth line)."""
    duration: float = 0.0

    def summary(self) -> str:
        """One line for the log."""
        parts: list[str] = []
        if self.paths_added or self.paths_removed:
            moves = [f"+{p}" for p in self.paths_added] + [f"-{p}" for p in self.paths_removed]
            parts.append(f"sys.path +{len(self.paths_added)} -{len(self.paths_removed)} "
                         f"({_short(moves)})")
        changed = [t for t in self.modules_purged if t not in self.dependents_purged]
        dependents = _short(self.dependents_purged, 8)
        if changed:
            parts.append(f"purged {_short(changed, 8)}"
                         + (f" (+ dependents {dependents})" if self.dependents_purged else ""))
        elif self.dependents_purged:
            parts.append(f"purged dependents {dependents}")
        if self.distributions_changed:
            parts.append("distributions " + _short(
                [f"{k} {v}" for k, v in sorted(self.distributions_changed.items())]))
        if self.finders_removed:
            parts.append(f"editable finders removed {_short(self.finders_removed)}")
        if self.needs_reexec:
            parts.append(f"NEEDS RE-EXEC (kill -USR2): {'; '.join(self.needs_reexec)}")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s): {'; '.join(self.problems)}")
        if not parts:
            parts.append("no changes")
        return " ".join(f"{', '.join(parts)} in {self.duration:.3f}s".split())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the status file."""
        return {
            "paths_added": list(self.paths_added),
            "paths_removed": list(self.paths_removed),
            "modules_purged": list(self.modules_purged),
            "dependents_purged": list(self.dependents_purged),
            "distributions_changed": dict(self.distributions_changed),
            "finders_removed": list(self.finders_removed),
            "needs_reexec": list(self.needs_reexec),
            "problems": list(self.problems),
            "duration": round(self.duration, 4),
        }

