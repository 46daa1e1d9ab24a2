"""The readiness probe: one in-process `GET <path>` to a WSGI or ASGI app, and the
preflight that `rollover deploy` runs in a new release.

Standard library only, and no rollover import: a worker imports this module
(`rollover.worker.readiness`), and `rollover deploy` runs this very file by path in the new
release's interpreter (whose installed rollover may be another version)::

    <release>/venv/bin/python .../rollover/probe.py '{"app": ..., "probe": ..., "out": ...}'

which imports the app as gunicorn does and probes it (`main`); the result goes to the
file named by `out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PROBE_USER_AGENT = "rollover-probe"
PREFLIGHT_USER_AGENT = "rollover-preflight"


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


class _ProbeTimeout(Exception):
    pass


def _split_path(path: str) -> tuple[str, str]:
    path_only, _, query = path.partition("?")
    return path_only, query


def _probe_failure(path: str, what: str) -> str:
    return f"readiness probe GET {path} {what}"


def judge(path: str, status: Any) -> str | None:
    """None for a 2xx status code, else the cause."""
    try:
        code = int(status)
    except (TypeError, ValueError):
        return _probe_failure(path, f"answered a malformed status {status!r}")
    if 200 <= code < 300:
        return None
    return _probe_failure(path, f"answered {code}")


def wsgi_get(app: Callable[..., Any], path: str, *, host: str, port: int, timeout: float,
             user_agent: str = PROBE_USER_AGENT) -> tuple[str | None, Any]:
    """Call a WSGI app with `GET path`: (None when it answered 2xx, else the cause;
    the status code).

    Runs in the calling (main) thread; `timeout` is enforced with SIGALRM, whose handler
    is restored afterwards.
    """
    path_only, query = _split_path(path)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path_only,
        "QUERY_STRING": query,
        "RAW_URI": path,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "HTTP_HOST": f"{host}:{port}",
        "HTTP_USER_AGENT": user_agent,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(status_line: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        status[:] = [status_line]
        return lambda data: None

    def on_alarm(signum: int, frame: Any) -> None:
        raise _ProbeTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
    try:
        body = app(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except _ProbeTimeout:
        return _probe_failure(path, f"did not answer within {timeout:.1f}s"), None
    except Exception as exc:
        return _probe_failure(path, f"raised {describe_exception(exc)}"), None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if not status:
        return _probe_failure(path, "returned without calling start_response"), None
    code = status[0].split(" ", 1)[0]
    return judge(path, code), code


def probe_wsgi(app: Callable[..., Any], path: str, *, host: str, port: int,
               timeout: float) -> str | None:
    """Call a WSGI app with `GET path`; None when it answered 2xx, else the cause."""
    return wsgi_get(app, path, host=host, port=port, timeout=timeout)[0]


async def asgi_get(app: Callable[..., Any], path: str, *, state: dict[str, Any] | None,
                   host: str, port: int, timeout: float,
                   user_agent: str = PROBE_USER_AGENT) -> tuple[str | None, Any]:
    """Send an ASGI app one `http` request, `GET path`: (None when it answered 2xx, else
    the cause; the status code)."""
    path_only, query = _split_path(path)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode("utf-8", "replace"),
        "query_string": query.encode("utf-8", "replace"),
        "root_path": "",
        "headers": [(b"host", f"{host}:{port}".encode("latin-1", "replace")),
                    (b"user-agent", user_agent.encode())],
        "client": ("127.0.0.1", 0),
        "server": (host, port),
    }
    if state is not None:
        scope["state"] = dict(state)
    status: list[Any] = []
    answered = asyncio.Event()
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            status[:] = [message.get("status")]
        elif message.get("type") == "http.response.body" and not message.get("more_body"):
            answered.set()

    task = asyncio.ensure_future(app(scope, receive, send))
    waiter = asyncio.ensure_future(answered.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=max(timeout, 0.01),
                           return_when=asyncio.FIRST_COMPLETED)
        if answered.is_set() and not task.done():
            # the response is complete: let the app return (background tasks and all)
            await asyncio.wait({task}, timeout=1.0)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        assert exc is not None
        return _probe_failure(path, f"raised {describe_exception(exc)}"), None
    if not answered.is_set():
        if not task.done() or task.cancelled():
            return _probe_failure(path, f"did not answer within {timeout:.1f}s"), None
        return _probe_failure(path, "returned without a complete response"), None
    code = status[0] if status else None
    return judge(path, code), code


async def probe_asgi(app: Callable[..., Any], path: str, *, state: dict[str, Any] | None,
                     host: str, port: int, timeout: float) -> str | None:
    """Send an ASGI app one `http` request, `GET path`; None when it answered 2xx."""
    return (await asgi_get(app, path, state=state, host=host, port=port, timeout=timeout))[0]


# --- the preflight (in the new release's interpreter) -------------------------------------


def main(argv: list[str]) -> int:
    """Import the app as gunicorn does and probe it; the result goes to a file."""
    request = json.loads(argv[0])
    result: dict[str, Any] = {"ok": False, "facts": python_facts()}

    def finish(error: str | None, detail: str = "") -> int:
        result.update(ok=error is None, error=error, detail=detail)
        with open(request["out"], "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        return 0 if error is None else 1

    facts = result["facts"]
    if facts.get("gunicorn") is None:
        return finish("gunicorn is not installed in the release's venv")
    if facts.get("rollover") is None:
        return finish("rollover (gunicorn-rollover) is not installed in the release's venv: "
                      "give --wheel gunicorn_rollover-<version>-py3-none-any.whl (pip wheel "
                      "--no-deps <rollover checkout>), or the requirements line "
                      "'gunicorn-rollover @ file:///<path to that wheel>'")
    cwd = os.getcwd()
    if "" in sys.path:
        sys.path.remove("")
    sys.path.insert(0, cwd)  # like gunicorn's --chdir
    try:
        from gunicorn.util import import_app

        app = import_app(request["app"])
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return finish(f"importing {request['app']} failed: {_describe_where(exc)}")
    kind = request["interface"]
    if kind == "auto":
        kind = "asgi" if is_asgi(app) else "wsgi"
    probe = request.get("probe")
    timeout = float(request.get("timeout") or 60)
    try:
        if kind == "asgi":
            error, detail = asyncio.run(_asgi_preflight(app, probe, timeout))
        elif probe:
            error, code = wsgi_get(app, probe, host="localhost", port=80, timeout=timeout,
                                   user_agent=PREFLIGHT_USER_AGENT)
            detail = "" if error else f"GET {probe} -> {code}"
        else:
            error, detail = None, "imported (no probe path)"
    except Exception as exc:
        return finish(f"preflight of {request['app']} failed: {_describe_where(exc)}")
    return finish(error, f"{kind}; {detail}")


def python_facts() -> dict[str, Any]:
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "implementation": sys.implementation.name,
        "version": platform.python_version(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "gunicorn": version("gunicorn"),
        "rollover": version("gunicorn-rollover"),
    }


def _describe_where(exc: BaseException) -> str:
    """The exception's first line and where it was raised (file:line)."""
    text = str(exc).strip().splitlines()
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" ({os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}".strip()


def is_asgi(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    if inspect.isclass(app) or inspect.isroutine(app):
        return False
    return inspect.iscoroutinefunction(type(app).__call__) if callable(app) else False


async def _asgi_preflight(app: Callable[..., Any], path: str | None,
                          timeout: float) -> tuple[str | None, str]:
    """Lifespan startup, one http request (if `path`), lifespan shutdown."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    startup: asyncio.Future[str | None] = loop.create_future()
    shutdown: asyncio.Future[None] = loop.create_future()
    state: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete" and not startup.done():
            startup.set_result(None)
        elif kind == "lifespan.startup.failed" and not startup.done():
            startup.set_result(str(message.get("message") or "no message"))
        elif (kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
              and not shutdown.done()):
            shutdown.set_result(None)

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
             "state": state}
    task = asyncio.ensure_future(app(scope, receive, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait({task, startup}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    lifespan = True
    if startup.done():
        cause = startup.result()
        if cause is not None:
            return f"lifespan startup failed: {cause}", ""
    elif task.done():
        lifespan = False  # the app does not support lifespan (returned or raised at once)
    else:
        task.cancel()
        return f"lifespan startup did not complete within {timeout:g}s", ""
    details = ["lifespan startup ok" if lifespan else "no lifespan support"]
    error = None
    if path:
        error, code = await asgi_get(app, path, state=state if lifespan else None,
                                     host="localhost", port=80, timeout=timeout,
                                     user_agent=PREFLIGHT_USER_AGENT)
        details.append("" if error else f"GET {path} -> {code}")
    if lifespan and not task.done():
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait({task, shutdown}, timeout=min(timeout, 10),
                           return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    return error, "; ".join(d for d in details if d)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
