"""The master as a service: its systemd notifications (`rollover.notify`) and its status
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
"""

from __future__ import annotations

import os
from typing import Any

from rollover import notify, status


class Service:
    # gunicorn's and RollingArbiter's attributes used here
    cfg: Any
    log: Any
    pid: Any
    master_pid: int
    reexec_pid: int
    machine: Any
    notifier: notify.Notifier

    def _status_path(self) -> str | None:
        raise NotImplementedError

    def _service_init(self) -> None:
        handoff = bool(self.master_pid or os.environ.get("GUNICORN_PID"))
        self.notifier = notify.Notifier(notify.take_socket(), self.log,
                                        mainpid=os.getpid() if handoff else None)

    def _notify_progress(self) -> None:
        self.notifier.update(lambda: self.machine.describe(lambda t: None))

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
