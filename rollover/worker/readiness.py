"""How a worker tells the master "I am READY" (or why it is not). Runs in the worker.

Each worker has a pipe of its own to the master (`rollover.worker.sender`, typed messages
of `rollover.core.messages`). READY is sent on the worker's first heartbeat
(`Worker.notify`), which every gunicorn worker class calls once its serving loop runs:
after the app is loaded and, for ASGI workers, after lifespan startup completed (an app
without lifespan support still reaches the loop, so READY never hangs on it).

Readiness probe (`rollover_probe_path`): before a new worker accepts on the shared
listener, it sends its own app one in-process request, `GET <probe_path>` (never through
the socket, where an old worker could answer):

- WSGI workers (`sync`, `gthread`, ...): the app is called with a synthetic environ
  (HTTP/1.1, `Host` and `SERVER_NAME`/`SERVER_PORT` of the first listener,
  `User-Agent: rollover-probe`) in the worker's main thread, before its serving loop.
- ASGI workers (gunicorn's `asgi`, uvicorn's, and subclasses of either):
  an `http` scope goes through the app once lifespan startup completed (when the app sends
  `lifespan.startup.complete`, before the server sees it, so before it starts serving),
  carrying a copy of the lifespan `state` like every real request. An app without lifespan
  support is probed when its lifespan call ends, still before the server starts serving.

A 2xx answer makes the worker go on to READY. Anything else (another status, an
exception, no response, or no complete answer before the worker's ready timeout runs
out) is a failure: the worker reports the cause to the master (e.g. `readiness probe GET
/healthz answered 500`) and exits with `PROBE_FAILED_EXIT_CODE` (3, gunicorn's
`WORKER_BOOT_ERROR`; ASGI workers exit through their servers' lifespan startup failure,
which uses the same code). The master aborts the roll; the old workers keep serving.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from rollover.core.messages import Failed, Ready
from rollover.probe import describe_exception, probe_asgi, probe_wsgi
from rollover.worker import recycle, sender, spread
from rollover.worker.counting import Tally, counted_asgi, counted_wsgi

if TYPE_CHECKING:
    from rollover.settings import Settings

# The master's current rollover settings, inherited by each worker at fork.
settings: Settings | None = None

# A worker whose readiness probe failed exits with this code: gunicorn's WORKER_BOOT_ERROR.
PROBE_FAILED_EXIT_CODE = 3

# How much sooner than the master's ready deadline the worker gives up on its probe, so
# the roll aborts with the probe's own cause rather than "not READY within ...".
_PROBE_MARGIN = 0.25
_PROBE_MARGIN_SHARE = 0.15


def configure(current: Settings) -> None:
    """Master side: the settings the next forked workers will see."""
    global settings
    settings = current


def report_failed(cause: str) -> None:
    """Tell the master why this worker cannot boot (its exit follows)."""
    sender.send(Failed(cause))


def _listener_address(sockets: list[Any]) -> tuple[str, int]:
    """(host, port) of the first TCP listener, for the probe's Host and SERVER_NAME."""
    for sock in sockets:
        with contextlib.suppress(OSError, AttributeError, TypeError, ValueError):
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                host = str(name[0])
                if host in ("0.0.0.0", "::", ""):
                    host = "localhost"
                elif ":" in host:
                    host = f"[{host}]"
                return host, int(name[1])
    return "localhost", 80


# async (app, lifespan state) -> the failure's cause, or None
Probe = Callable[[Callable[..., Any], dict[str, Any] | None], Awaitable[str | None]]


def _watch_lifespan(app: Callable[..., Any], probe: Probe | None = None) -> Callable[..., Any]:
    """Wrap an ASGI app: report `lifespan.startup.failed` with its cause, and run `probe`
    (if any) once startup completed, before the server hears of it.

    A failed probe is reported and turned into `lifespan.startup.failed`, so the server
    exits the way it does for a failed startup (exit code 3, gunicorn's boot error).
    """

    async def app_with_lifespan_report(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") != "lifespan":
            return await app(scope, receive, send)
        startup_ended = False

        async def probe_failed() -> bool:
            """Run the probe; on failure report it and fail the startup. True if failed."""
            assert probe is not None
            cause = await probe(app, scope.get("state"))
            if cause is None:
                return False
            report_failed(cause)
            await send({"type": "lifespan.startup.failed", "message": cause})
            return True

        async def send_and_report(message: dict[str, Any]) -> None:
            nonlocal startup_ended
            kind = message.get("type")
            if kind == "lifespan.startup.failed":
                startup_ended = True
                lines = str(message.get("message") or "").strip().splitlines()
                report_failed("lifespan startup failed" + (f": {lines[-1]}" if lines else ""))
            elif kind == "lifespan.startup.complete":
                startup_ended = True
                if probe is not None and await probe_failed():
                    return
            await send(message)

        try:
            result = await app(scope, receive, send_and_report)
        except Exception:
            # No lifespan support: the server goes on without it; probe before it serves.
            if not startup_ended and probe is not None and await probe_failed():
                return None
            raise
        if not startup_ended and probe is not None:
            await probe_failed()
        return result

    return app_with_lifespan_report


# How a worker class serves its app, which decides how it is probed:
# "wsgi": `self.wsgi` is a WSGI app (sync, gthread, gevent, eventlet);
# "asgi": gunicorn's asgi worker, the ASGI app in `self.asgi`, lifespan run by gunicorn;
# "uvicorn": uvicorn's worker classes, the app in `self.wsgi`, adapted by uvicorn's config.
# None: not known (another family): "asgi" if the loaded worker has `self.asgi`, else "wsgi".
Interface = Literal["wsgi", "asgi", "uvicorn"]

_worker_classes: dict[tuple[type, Interface | None], type] = {}


def with_readiness(worker_class: type, interface: Interface | None) -> type:
    """A subclass of a gunicorn worker class that reports READY / failure to the master,
    and runs the readiness probe (see the module docstring) when one is configured.

    `interface` says how the class serves its app (see `Interface`); `rollover.worker.extend`
    knows it from the class's family.
    """
    if getattr(worker_class, "_rollover_reports", False):
        return worker_class
    cached = _worker_classes.get((worker_class, interface))
    if cached is not None:
        return cached

    class ReportingWorker(worker_class):
        asgi: Any  # gunicorn's asgi worker keeps its app here (set in load_wsgi)
        wsgi: Any  # every other class's app (uvicorn's too, before it adapts it)
        _rollover_reports = True
        _rollover_ready = False
        _rollover_asgi = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Runs in the master right before the fork: the master's ready clock starts now.
            self._rollover_spawned_at = time.monotonic()
            # max_requests (with gunicorn's jitter, drawn just now) becomes a request for a
            # replacement; the class's own exit is switched off (rollover.worker.recycle)
            self._rollover_limits = (recycle.take_limits(self, settings)
                                     if settings is not None else recycle.Limits())
            self._rollover_tally = Tally()

        def notify(self) -> None:
            super().notify()
            if not self._rollover_ready:
                self._rollover_ready = True
                sender.send(Ready())

        def load_wsgi(self) -> None:
            super().load_wsgi()
            # gunicorn's asgi worker keeps the ASGI app in .asgi; uvicorn's worker keeps it
            # in .wsgi and is wrapped in run(), after uvicorn adapted the app's interface.
            if interface == "uvicorn":
                self._rollover_asgi = True
            elif interface == "asgi" or (interface is None
                                         and getattr(self, "asgi", None) is not None):
                self._rollover_asgi = True
                self.asgi = _watch_lifespan(self.asgi, self._rollover_asgi_probe())

        def run(self) -> None:
            path = _probe_path()
            if interface == "uvicorn":
                config = self.config
                config.app = self.wsgi
                if not config.loaded:
                    config.load()
                config.loaded_app = _watch_lifespan(config.loaded_app,
                                                    self._rollover_asgi_probe())
            elif (path is not None and self._rollover_asgi and getattr(self, "loop", None)
                  and getattr(self.cfg, "asgi_lifespan", "auto") == "off"):
                # gunicorn's asgi worker with lifespan off: probe before it serves
                probe = self._rollover_asgi_probe()
                assert probe is not None
                cause = self.loop.run_until_complete(probe(self.asgi, None))
                if cause is not None:
                    self._rollover_probe_failed(cause, logged=True)
            elif path is not None and not self._rollover_asgi:
                host, port = _listener_address(self.sockets)
                cause = probe_wsgi(self.wsgi, path, host=host, port=port,
                                   timeout=self._rollover_probe_timeout())
                if cause is not None:
                    self._rollover_probe_failed(cause)
            if self._rollover_counts():
                self._rollover_start_counting()
            try:
                super().run()
            finally:
                # the serving loop is over, so nothing accepts any more: what every class
                # says at least (the drains and the stock loops rollover knows say it as
                # soon as they stop accepting, see rollover.worker.extend)
                sender.unlisten()

        def _rollover_counts(self) -> bool:
            """Requests are counted for the canary and for the recycling limits."""
            return (settings is not None and settings.canary) or self._rollover_limits.any

        def _rollover_start_counting(self) -> None:
            """Count requests from here on (the probe's is not one), and report the counts;
            while a canary window is open, send some keep-alive clients toward it."""
            tally = self._rollover_tally
            close = (spread.Spreader().should_close if settings is not None and settings.canary
                     else None)
            reporter = recycle.Reporter(self, tally, self._rollover_limits, sender.send)
            if interface == "uvicorn":
                self.config.loaded_app = counted_asgi(self.config.loaded_app, tally, close,
                                                      reporter.last_counts)
            elif self._rollover_asgi:
                self.asgi = counted_asgi(self.asgi, tally, close, reporter.last_counts)
            else:
                self.wsgi = counted_wsgi(self.wsgi, tally, close)
            reporter.start()

        def _rollover_probe_timeout(self) -> float:
            ready_timeout = settings.ready_timeout if settings is not None else 30.0
            left = ready_timeout - (time.monotonic() - self._rollover_spawned_at)
            # the margin grows with the timeout: a busy machine delays the report too
            return max(0.1, left - max(_PROBE_MARGIN, ready_timeout * _PROBE_MARGIN_SHARE))

        def _rollover_probe_failed(self, cause: str, logged: bool = False) -> None:
            report_failed(cause)
            if not logged:
                self.log.error("rollover: %s; worker exiting (code %s)", cause,
                               PROBE_FAILED_EXIT_CODE)
            sys.exit(PROBE_FAILED_EXIT_CODE)

        def _rollover_asgi_probe(self) -> Probe | None:
            path = _probe_path()
            if path is None:
                return None
            worker = self

            async def probe(app: Callable[..., Any], state: dict[str, Any] | None) -> str | None:
                host, port = _listener_address(worker.sockets)
                cause = await probe_asgi(app, path, state=state, host=host, port=port,
                                         timeout=worker._rollover_probe_timeout())
                if cause is not None:
                    worker.log.error("rollover: %s; worker exiting (code %s)", cause,
                                     PROBE_FAILED_EXIT_CODE)
                return cause

            return probe

        def init_process(self) -> None:
            try:
                super().init_process()
            except SystemExit:
                raise
            except BaseException as exc:
                if not self._rollover_ready:
                    report_failed(describe_exception(exc))
                raise

    ReportingWorker.__name__ = worker_class.__name__
    ReportingWorker.__qualname__ = worker_class.__qualname__
    ReportingWorker.__module__ = worker_class.__module__
    _worker_classes[(worker_class, interface)] = ReportingWorker
    return ReportingWorker


def _probe_path() -> str | None:
    return settings.probe_path if settings is not None else None
