"""`rollover deploy`: ship a new release to a running rollover master with no downtime.

An app root holds one directory per release, state shared by all of them, and a symlink
to the live one::

    <root>/releases/<id>/          the app's files, its own venv (venv/), links into
                                   shared/, .rollover-release.json (its outcome)
    <root>/shared/                 --shared paths (media/, db.sqlite3) and .env; never pruned
    <root>/current -> releases/<id>
    <root>/rollover.toml           the deploy's settings (`config`); flags override them

and gunicorn runs through the symlink::

    <root>/current/venv/bin/python <root>/current/venv/bin/gunicorn \\
        -c python:rollover.hooks --chdir <root>/current --pid <pidfile> app:app

A deploy, step by step (each one printed; `--json` prints a summary object at the end),
one module of this package each:

1. build (`build`): copy the source dir into `releases/<id>/` (not the shared paths),
   link the shared paths (`shared`), create `releases/<id>/venv`, pip install the
   requirements / wheels into it (never into a live venv), run the `--build` commands in
   it with the env file (`envfile`);
2. preflight (`preflight`): in a subprocess run by the new release's interpreter, in its
   directory, with the env file, import the app as gunicorn does and run the readiness
   probe in-process (`rollover/probe.py`, run by path). A broken release stops here,
   kept and marked failed; nothing live was touched;
3. plan (`facts` gathers, `plan` decides, purely): HUP or USR2 handoff;
4. switch (`layout`): `current` is replaced atomically (a new symlink renamed over it);
5. reload (`live`): HUP: `rollover reload --wait` semantics; USR2: the master re-executes
   (through `current`) into a new master that inherits the listening sockets; once the
   new master's status shows all its workers READY, the pidfile is pointed at it and the
   old master gets SIGTERM (a graceful stop) and is waited for;
6. verify (`live`): the new workers' working directory is the new release;
7. prune (`prune`), after the result is printed: keep the `--keep` newest releases that
   served and the `--keep-failed` newest others, never the live one, the rollback target,
   or one that a running process still uses; what goes is renamed away at once and
   deleted by a background process.

A failure in steps 4-6 switches `current` back and undoes the live change (`rollback`):
after a HUP, a second HUP rolls the workers back to the previous release (config and
code); after a USR2, the new master is stopped, the old one never stopped serving.

`command` puts the steps together (`init` is `--init`); `report` holds the exit codes and
the output. Talking to
the running master goes through `rollover.client`.
"""

from rollover.deploy.command import DEFAULT_KEEP, EPILOG, add_arguments, run
from rollover.deploy.facts import LiveMaster, changed_shared_objects
from rollover.deploy.layout import METADATA, Layout, Release
from rollover.deploy.prune import prune_plan
from rollover.deploy.report import (
    EXIT_BUILD_FAILED,
    EXIT_DEPLOYED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_PREFLIGHT_FAILED,
    EXIT_ROLLBACK_FAILED,
    EXIT_ROLLED_BACK,
    DeployError,
)
from rollover.deploy.rollback import failure_outcome

__all__ = [
    "DEFAULT_KEEP",
    "EPILOG",
    "EXIT_BUILD_FAILED",
    "EXIT_DEPLOYED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_PREFLIGHT_FAILED",
    "EXIT_ROLLBACK_FAILED",
    "EXIT_ROLLED_BACK",
    "METADATA",
    "DeployError",
    "Layout",
    "LiveMaster",
    "Release",
    "add_arguments",
    "changed_shared_objects",
    "failure_outcome",
    "prune_plan",
    "run",
]
