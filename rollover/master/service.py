"""The master as a service: its systemd notifications (`rollover.master.notify`) and its status
file's removal on a clean exit, mixed into `RollingArbiter` ahead of gunicorn's `Arbiter`.

- `_service_init` (from `_rollover_init`, in `on_starting` or `RollingArbiter.__init__`)
  takes `$NOTIFY_SOCKET` out of the environment before gunicorn's premature READY=1 and
  before any worker is forked; a master started by a USR2 handoff will announce its pid
  (MAINPID=) with its READY=1.
- `_notify_progress` (after each status write): READY=1 / STATUS= / the READY=1 that ends
  a HUP's roll; `handle_hup` calls `notifier.reloading()`.
- `stop`: STOPPING=1, unless one side of a USR2 handoff (the service goes on).
- `reexec`: the USR2 child gets the socket back in its environment.
- `halt`: exit status 0 removes the status file if it is still this master's.
- `maybe_promote_master`: a USR2 master, promoted, moves its status file with the pidfile
  and listens on gunicorn's control socket anew; `_status_path` follows the pidfile.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from rollover import status
from rollover.master import notify


class Service:
    # gunicorn's and RollingArbiter's attributes used here
    cfg: Any
    log: Any
    pid: Any
    master_pid: int
    reexec_pid: int
    machine: Any
    notifier: notify.Notifier
    pidfile: Any
    settings: Any

    def _write_status(self) -> None:
        raise NotImplementedError

    def _service_init(self) -> None:
        handoff = bool(self.master_pid or os.environ.get("GUNICORN_PID"))
        self.notifier = notify.Notifier(notify.take_socket(), self.log,
                                        mainpid=os.getpid() if handoff else None)

    def _notify_progress(self) -> None:
        self.notifier.update(lambda: self.machine.describe(lambda t: None, counters=False))

    def stop(self, graceful: bool = True) -> None:
        if not (self.reexec_pid or self.master_pid):  # not when one side of a USR2 handoff
            self.notifier.stopping()
        super().stop(graceful)  # type: ignore[misc]

    def reexec(self) -> None:
        # gunicorn execs the USR2 child with `cfg.env_orig`, which a HUP's new Config took
        # from the environment without the socket
        env = self.cfg.env_orig
        saved = env.get(notify.ENV)
        if self.notifier.address:
            env[notify.ENV] = self.notifier.address
        try:
            super().reexec()  # type: ignore[misc]
        finally:  # in the old master (the child execs)
            if saved is None:
                env.pop(notify.ENV, None)
            else:
                env[notify.ENV] = saved

    def halt(self, reason: Any = None, exit_status: int = 0) -> None:
        try:
            super().halt(reason, exit_status)  # type: ignore[misc]  # exits
        finally:  # a clean exit takes its status file away (unless a new master's)
            if exit_status == 0:
                status.remove_own(self._status_path(), self.pid)

    def maybe_promote_master(self) -> None:
        before = self._status_path()
        handed_over = self.master_pid != 0
        super().maybe_promote_master()  # type: ignore[misc]
        after = self._status_path()
        if before is not None and before != after:
            # promoted after USR2: the status moves with the pidfile
            with contextlib.suppress(OSError):
                os.unlink(before)
            self._write_status()
        if (handed_over and self.master_pid == 0
                and getattr(self, "_control_server", None) is not None):
            # the old master removed the control socket's path on its way out (gunicorn
            # 25.3+ unlinks it in halt()): listen on it anew
            arbiter: Any = self  # gunicorn's methods (25.3+), not declared here
            with contextlib.suppress(Exception):
                arbiter._stop_control_server()
                arbiter._start_control_server()

    def _status_path(self) -> str | None:
        """The configured path; the default follows the pidfile gunicorn really writes,
        which is `<pidfile>.2` for a master started by USR2 until it is promoted."""
        path = self.settings.status_path
        if (path is not None and self.pidfile is not None and self.cfg.pidfile
                and path == status.default_status_path(self.cfg.pidfile)):
            return status.default_status_path(self.pidfile.fname)
        return path
