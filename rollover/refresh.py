"""Refresh the master's import state on HUP so new workers fork with what is on disk now.

First version: re-process site directories (new `.pth` entries and eggs appear on
`sys.path`) and invalidate importer caches, each finder guarded on its own so one broken
finder cannot stop the rest.
"""

from __future__ import annotations

import os
import site
import sys
from dataclasses import dataclass, field


@dataclass
class RefreshReport:
    paths_added: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.paths_added)} sys.path entries added"]
        if self.problems:
            parts.append(f"{len(self.problems)} problems: " + "; ".join(self.problems))
        return ", ".join(parts)


def refresh() -> RefreshReport:
    report = RefreshReport()
    before = list(sys.path)
    site_dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        site_dirs.append(site.getusersitepackages())
    for directory in filter(os.path.isdir, site_dirs):
        # addsitedir skips entries already on sys.path and runs new .pth files
        site.addsitedir(directory)
    report.paths_added = [p for p in sys.path if p not in before]
    for finder in list(sys.meta_path):
        invalidate = getattr(finder, "invalidate_caches", None)
        if invalidate is None:
            continue
        try:
            invalidate()
        except Exception as exc:
            report.problems.append(f"{finder!r}.invalidate_caches() failed: {exc}")
    for path, finder in list(sys.path_importer_cache.items()):
        if finder is None:
            # a path missing at first look may exist now
            del sys.path_importer_cache[path]
        elif hasattr(finder, "invalidate_caches"):
            try:
                finder.invalidate_caches()
            except Exception as exc:
                report.problems.append(f"path finder for {path} failed to invalidate: {exc}")
    return report
