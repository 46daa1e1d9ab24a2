"""In-process tests for the demo apps; import-time knobs are checked in subprocesses."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from demo_app import asgi, wsgi
from demo_app.version import VERSION

with warnings.catch_warnings():
    # Starlette 1.x prefers `httpx2` and warns when falling back to `httpx`.
    warnings.filterwarnings("ignore", message=r".*install `httpx2`")
    from starlette.testclient import TestClient

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sse_events(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")
    ]


# --- ASGI -------------------------------------------------------------------------------


@pytest.fixture
def client() -> Iterable[TestClient]:
    with TestClient(asgi.app) as c:  # context manager runs the lifespan
        yield c


def test_asgi_index(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.json() == {
        "pid": os.getpid(),
        "version": VERSION,
        "starlette": importlib.metadata.version("starlette"),
    }


def test_asgi_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"ok": True}


def test_asgi_stream_n(client: TestClient) -> None:
    r = client.get("/stream?n=2")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert events == [
        {"pid": os.getpid(), "version": VERSION, "counter": 1},
        {"pid": os.getpid(), "version": VERSION, "counter": 2},
    ]


@pytest.mark.parametrize("n", ["0", "-1", "x"])
def test_asgi_stream_bad_n(client: TestClient, n: str) -> None:
    assert client.get(f"/stream?n={n}").status_code == 400


def test_asgi_ws_echo(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"pid": os.getpid(), "version": VERSION}
        ws.send_text("hello")
        assert ws.receive_text() == "hello"
        ws.send_text("again")
        assert ws.receive_text() == "again"


# --- WSGI -------------------------------------------------------------------------------


def _call_wsgi(
    path: str, query: str = "", method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_METHOD": method,
        "wsgi.input": io.BytesIO(b""),
    }
    setup_testing_defaults(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"] = status
        captured["headers"] = {k.lower(): v for k, v in headers}

    result = wsgi.app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body


def test_wsgi_index() -> None:
    status, headers, body = _call_wsgi("/")
    assert status == "200 OK"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {
        "pid": os.getpid(),
        "version": VERSION,
        "server": "wsgi",
        "gunicorn": importlib.metadata.version("gunicorn"),
    }


def test_wsgi_healthz() -> None:
    status, _, body = _call_wsgi("/healthz")
    assert status == "200 OK"
    assert json.loads(body) == {"ok": True}


def test_wsgi_stream_n() -> None:
    status, headers, body = _call_wsgi("/stream", "n=2")
    assert status == "200 OK"
    assert headers["content-type"] == "text/event-stream"
    assert _sse_events(body.decode()) == [
        {"pid": os.getpid(), "version": VERSION, "server": "wsgi", "counter": 1},
        {"pid": os.getpid(), "version": VERSION, "server": "wsgi", "counter": 2},
    ]


def test_wsgi_errors() -> None:
    assert _call_wsgi("/nope")[0] == "404 Not Found"
    assert _call_wsgi("/stream", "n=0")[0] == "400 Bad Request"
    assert _call_wsgi("/", method="POST")[0] == "405 Method Not Allowed"


# --- import-time knobs (fresh interpreter each, so nothing leaks into this process) -----


def _import_fresh(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["demo_app.asgi", "demo_app.wsgi"])
def test_fail_at_import(module: str) -> None:
    proc = _import_fresh(module, DEMO_FAIL_AT_IMPORT="broken deploy")
    assert proc.returncode != 0
    assert "RuntimeError: broken deploy" in proc.stderr


@pytest.mark.parametrize("module", ["demo_app.asgi", "demo_app.wsgi"])
def test_boot_delay(module: str) -> None:
    t0 = time.monotonic()
    proc = _import_fresh(module, DEMO_BOOT_DELAY="0.6")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed >= 0.6


def test_bad_boot_delay() -> None:
    proc = _import_fresh("demo_app.asgi", DEMO_BOOT_DELAY="soon")
    assert proc.returncode != 0
    assert "DEMO_BOOT_DELAY" in proc.stderr


def test_empty_knobs_are_ignored() -> None:
    proc = _import_fresh("demo_app.asgi", DEMO_BOOT_DELAY="", DEMO_FAIL_AT_IMPORT="")
    assert proc.returncode == 0, proc.stderr
