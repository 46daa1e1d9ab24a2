"""The decision: HUP, USR2 handoff, or (no master) just switch `current`. Pure: it reads
only the `Facts` gathered beforehand.

HUP when the master already runs from the venv behind `current`, the release has the same
Python (implementation and version), the same gunicorn and rollover versions, the same
worker class packages, and no shared library the master has mapped changed; otherwise a
USR2 handoff.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rollover.deploy.facts import Facts, LiveMaster
from rollover.deploy.layout import Layout, under
from rollover.deploy.report import DeployError


@dataclass
class Plan:
    method: str  # "hup", "usr2" or "start" (no master running)
    reasons: list[str]  # why not HUP (empty for HUP)
    checked: list[str]  # what matched


def plan(facts: Facts | None, forced: str = "auto") -> Plan:
    """`forced`: "auto", or the --method given ("hup", "usr2"). `facts` None: no master."""
    if facts is None:
        return Plan("start", [], ["no master is running"])
    reasons: list[str] = []
    checked: list[str] = []
    python = facts.master_python
    if python is None:
        reasons.append("the master's interpreter path is unknown (its command line was "
                       "rewritten?), so a HUP may not see the new venv")
    elif not facts.python_follows_current:
        reasons.append(f"the master runs {python}, not the venv behind {facts.current}: a "
                       "HUP would not load the new release's packages")
    else:
        checked.append(f"master runs {python}")
    old_py, new = facts.old_python, facts.new_python
    new_impl, new_ver = new.get("implementation"), new.get("version")
    if old_py is None:
        reasons.append("the master's Python version is unknown")
    elif (old_py.get("implementation"), old_py.get("version")) != (new_impl, new_ver):
        reasons.append(f"Python {old_py.get('implementation')} {old_py.get('version')} -> "
                       f"{new_impl} {new_ver}")
    else:
        checked.append(f"Python {new_impl} {new_ver}")
    for name in ("gunicorn", "rollover"):
        old_v, new_v = facts.old_versions.get(name), new.get(name)
        if old_v != new_v:
            reasons.append(f"{name} {old_v} -> {new_v}")
        else:
            checked.append(f"{name} {new_v}")
    if facts.worker_packages is not None:
        live, release = facts.worker_packages
        if live != release:
            reasons.append(f"worker class packages {_versions(live)} -> {_versions(release)} "
                           "(the master keeps them across a HUP)")
        else:
            checked.append(f"worker class packages {_versions(release)}")
    if isinstance(facts.shared_objects, str):
        reasons.append(f"cannot read the master's memory map ({facts.shared_objects}) to "
                       "compare C extensions")
    else:
        changed, compared = facts.shared_objects
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more"
                                              if len(changed) > 3 else "")
            reasons.append(f"C extension loaded by the master changed: {shown}")
        else:
            checked.append(f"no changed C extension ({compared} mapped from releases)")
    if forced == "hup":
        return Plan("hup", reasons, checked)
    if forced == "usr2" or reasons:
        return Plan("usr2", reasons or ["--method usr2"], checked)
    return Plan("hup", [], checked)


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "none"


def check_usr2_possible(layout: Layout, master: LiveMaster, new_python: str) -> None:
    """A USR2 handoff starts the new release only if the master re-execs through `current`."""
    python = master.reexec_python()
    if python is not None and (under(python, layout.current)
                               or os.path.abspath(python) == os.path.abspath(new_python)):
        return
    shown = python or "an unknown interpreter"
    raise DeployError(
        f"a USR2 handoff is needed but the master would re-exec {shown}, which does not "
        f"follow {layout.current}: start gunicorn as {layout.current}/venv/bin/python "
        f"{layout.current}/venv/bin/gunicorn ..., or set rollover_reexec_python="
        f"{layout.current}/venv/bin/python"
    )
