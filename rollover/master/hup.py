"""The master's HUP as a transaction: prepare the new generation, or put everything back.

Runs in the master, mixed into `RollingArbiter` ahead of gunicorn's `Arbiter`:

- `handle_hup` snapshots what the serving generation is forked with (`Snapshot`: config,
  rollover settings, environment, cwd, and with `preload_app` the code), then prepares the
  new one (import refresh, config, a preloaded app re-imported). A failure puts the snapshot
  back and records an aborted reload; success commits gunicorn's `reload()` side effects
  (minus its spawning of N workers at once) and starts a roll in the machine.
- While the roll runs, the snapshot is kept: an aborted roll forks the serving generation's
  config again (`_revert`) and, with `preload_app`, its code (`_roll_back`).
- `reexec` (USR2) execs `rollover_reexec_python` and starts the new master through the
  release symlink (`rollover.master.pinning`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from gunicorn import util
from gunicorn.pidfile import Pidfile

from rollover import refresh, settings
from rollover.core import rollout
from rollover.master import config_reload, gunicorn_compat, pinning
from rollover.worker import readiness


class Reload:
    """The HUP side of `RollingArbiter` (see the module docstring)."""

    # gunicorn's and RollingArbiter's attributes used here
    app: Any
    cfg: Any
    log: Any
    pid: Any
    pidfile: Any
    LISTENERS: list[Any]
    START_CTX: dict[Any, Any]
    master_name: str
    num_workers: int
    timeout: Any
    proc_name: Any
    worker_class: Any
    machine: rollout.Machine
    settings: settings.Settings
    notifier: Any
    refresh_report: refresh.RefreshReport | None
    _previous: Snapshot | None
    _release_pins: dict[int, dict[str, str]]
    _start_links: dict[str, str]
    _bound_address: Any

    if TYPE_CHECKING:  # RollingArbiter's and gunicorn's (no stubs: super() must reach them)
        def _fault(self, where: str) -> None: ...
        def _metric(self, name: str, value: float, mtype: str) -> None: ...
        def _policy(self) -> rollout.Policy: ...
        def setup(self, app: Any) -> None: ...
        def manage_workers(self) -> None: ...

    def handle_hup(self) -> None:
        """Prepare the new generation (the only step that blocks the loop), then roll."""
        self.log.info("Hang up: %s", self.master_name)
        try:
            self._reload()
        except Exception:
            self._fault("reloading on HUP")
        gunicorn_compat.forward_hup_to_dirty_arbiter(self)
        self.manage_workers()

    def _reload(self) -> None:
        self.notifier.reloading()
        gunicorn_compat.count_reload(self)
        started = time.monotonic()
        before = self._snapshot()
        try:
            error = self._prepare()
        except Exception as exc:
            self.log.exception("rollover: reload preparation failed")
            error = readiness.describe_exception(exc)
        if error is not None:
            self._restore(before)
        else:
            self._commit(before)
        now = time.monotonic()
        self.log.info("rollover: reload prepared in %.3fs", now - started)
        if error is not None:
            self.machine.reload_failed(now, error)
        else:
            can_roll_back = bool(self.cfg.preload_app)
            if self._previous is None:
                # what every worker runs when no roll is under way: what a failed roll
                # goes back to (without preload_app the code on disk cannot be taken back)
                self._previous = before if can_roll_back else before._replace(
                    imports=None, app_callable=None)
            self.machine.reload_started(now, can_roll_back=can_roll_back)
            pins = pinning.release_links([self.cfg.chdir, sys.prefix])
            self._release_pins = {g: p for g, p in self._release_pins.items()
                                  if g >= self.machine.generation - 4}
            self._release_pins[self.machine.generation] = pins
            self._metric("rollover.rollouts.started", 1, "counter")

    def _snapshot(self) -> Snapshot:
        return Snapshot(self.machine.spawn_generation, self.app.cfg,
                         sys.modules.get("__config__"), self.settings, self.worker_class,
                         self.num_workers, self.timeout, self.proc_name, os.getcwd(),
                         dict(os.environ), refresh.snapshot(),
                         getattr(self.app, "callable", None))

    def _restore(self, snap: Snapshot) -> None:
        """Put back what `_snapshot` took: the config the master forks workers with, its
        settings, environment and cwd, and (when kept) the code."""
        self.app.cfg = self.cfg = snap.cfg
        if snap.config_module is not None:
            sys.modules["__config__"] = snap.config_module
        if self.settings is not snap.settings:
            self.settings = snap.settings
            readiness.configure(self.settings)
            self.machine.policy = self._policy()
        self.worker_class, self.num_workers = snap.worker_class, snap.num_workers
        self.timeout, self.proc_name = snap.timeout, snap.proc_name
        with contextlib.suppress(OSError):
            os.chdir(snap.cwd)
        os.environ.clear()
        os.environ.update(snap.environ)
        if snap.imports is not None:
            refresh.restore(snap.imports)
            self.app.callable = snap.app_callable

    def _prepare(self) -> str | None:
        """Load the new config, refresh imports, re-import a preloaded app.

        Touches nothing the running workers or the next respawn depend on until it has
        succeeded; returns None, or the one-line cause (the caller restores the snapshot).
        """
        for k in self.cfg.env:
            if k in self.cfg.env_orig:
                os.environ[k] = self.cfg.env_orig[k]
            else:
                os.environ.pop(k, None)
        # Refresh first: a config file that imports a package then gets its new version.
        if self.settings.refresh:
            error = self._refresh()
            if error is not None:
                return error
        error = config_reload.load_config(self.app)
        if error is not None:
            return error
        try:
            settings.resolve(self.app.cfg)  # a bad rollover_* value fails the reload here
        except settings.SettingsError as exc:
            return f"config reload failed: {exc}"
        if self.app.cfg.preload_app:
            error = config_reload.preload(self.app, self.log)
        return error

    def _refresh(self) -> str | None:
        cfg = self.cfg
        protect = [cfg.chdir, *(os.path.abspath(p) for p in (cfg.pythonpath or "").split(",")
                                if p)]
        try:
            report = refresh.refresh(timeout=self.settings.refresh_timeout,
                                     keep=_worker_modules(cfg.worker_class),
                                     protect_paths=protect,
                                     dependents=self.settings.refresh_dependents)
        except refresh.RefreshError as exc:
            return str(exc)
        self.refresh_report = report
        self.log.info("rollover: import refresh: %s", report.summary())
        for item in report.needs_reexec:
            self.log.warning("rollover: %s: needs a re-exec (kill -USR2) to take effect", item)
        return None

    def _commit(self, before: Snapshot) -> None:
        """gunicorn's `reload()` side effects, minus its spawning of N workers at once."""
        self.settings = settings.resolve(self.app.cfg)
        readiness.configure(self.settings)
        self.machine.policy = self._policy()
        self.setup(self.app)
        self.log.reopen_files()
        if self._bound_address != self.cfg.address:
            from gunicorn import sock

            self._bound_address = self.cfg.address
            for lnr in self.LISTENERS:
                lnr.close()
            self.LISTENERS = sock.create_sockets(self.cfg, self.log)
            self.log.info("Listening at: %s", ",".join(str(lnr) for lnr in self.LISTENERS))
        try:
            self.cfg.on_reload(self)
        except Exception:
            self.log.exception("on_reload hook failed")
        if self.pidfile is not None:
            self.pidfile.unlink()
        if self.cfg.pidfile is not None:
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        util._setproctitle(f"master [{self.proc_name}]")

    def reexec(self) -> None:
        """USR2: exec `rollover_reexec_python` (e.g. `/srv/app/current/venv/bin/python`, a
        path through the release symlink) instead of the interpreter this master runs."""
        python = self.settings.reexec_python
        if python:
            self.START_CTX[0] = python
            self.START_CTX["args"][0] = python
        # gunicorn captured its start directory resolved (<root>/releases/v1): the new
        # master starts there, and its `chdir` default (validated at every HUP) would name
        # that release, which a later prune removes. Address it through the symlink, with
        # $PWD naming it, so the new master captures <root>/current in turn.
        cwd = self.START_CTX.get("cwd")
        env = self.cfg.env_orig
        saved_pwd = env.get("PWD")
        if isinstance(cwd, str):
            cwd = pinning.unresolve(cwd, self._start_links)
            self.START_CTX["cwd"] = cwd
            env["PWD"] = cwd
        try:
            super().reexec()  # type: ignore[misc]
        finally:  # in the old master (the child execs)
            if saved_pwd is None:
                env.pop("PWD", None)
            else:
                env["PWD"] = saved_pwd

    def _revert(self, generation: int) -> None:
        """An aborted roll: fork the serving generation's config again (its rollover
        settings, environment and cwd too); the aborted generation's is dropped."""
        snap = self._previous
        if snap is None or snap.generation != generation:
            self.log.error("rollover: no config of generation %s kept to go back to",
                           generation)
            return
        self._restore(snap._replace(imports=None, app_callable=None))
        util._setproctitle(f"master [{self.proc_name}]")
        if snap.imports is None:
            self._previous = None
            self.log.warning("rollover: respawns use generation %s's config and the code on "
                             "disk (no preload_app: the code cannot be taken back)",
                             generation)

    def _roll_back(self, generation: int) -> None:
        """Fork the serving generation's code again (preload_app kept it)."""
        snap = self._previous
        if snap is None or snap.imports is None or snap.generation != generation:
            self.log.error("rollover: no code of generation %s kept to roll back to", generation)
            return
        self._previous = None
        refresh.restore(snap.imports)
        self.app.callable = snap.app_callable
        self.log.warning("rollover: restored generation %s's config and code in the master",
                         generation)


class Snapshot(NamedTuple):
    """What one generation's workers are forked with: taken at each HUP, put back when
    the HUP fails, and kept for the serving generation while a roll is under way."""

    generation: int
    cfg: Any
    config_module: Any
    settings: settings.Settings
    worker_class: Any
    num_workers: int
    timeout: Any
    proc_name: Any
    cwd: str
    environ: dict[str, str]
    imports: refresh.ImportSnapshot | None
    """With preload_app, the code (None: workers import it from disk)."""
    app_callable: Any


def _worker_modules(worker_class: type) -> set[str]:
    """Top-level packages the worker class comes from: never purged on refresh."""
    return {c.__module__.split(".", 1)[0] for c in worker_class.__mro__
            if c.__module__ != "builtins"}
