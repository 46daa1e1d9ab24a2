"""Plain WSGI twin of the demo app: ``gunicorn -k gthread demo_app.wsgi:app``."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from demo_app._knobs import STREAM_INTERVAL, apply_import_knobs, parse_count
from demo_app.version import VERSION

apply_import_knobs()

GUNICORN_VERSION = importlib.metadata.version("gunicorn")

StartResponse = Callable[..., Any]


def _identity() -> dict[str, object]:
    return {"pid": os.getpid(), "version": VERSION, "server": "wsgi"}


def _json(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _events(n: int | None) -> Iterator[bytes]:
    counter = itertools.count(1) if n is None else iter(range(1, n + 1))
    for i in counter:
        if i > 1:
            time.sleep(STREAM_INTERVAL)
        yield f"data: {json.dumps({**_identity(), 'counter': i})}\n\n".encode()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _json(start_response, "405 Method Not Allowed", {"error": "method not allowed"})
    if path == "/":
        return _json(start_response, "200 OK", {**_identity(), "gunicorn": GUNICORN_VERSION})
    if path == "/healthz":
        return _json(start_response, "200 OK", {"ok": True})
    if path == "/stream":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            n = parse_count(query.get("n", [None])[-1])
        except ValueError:
            error = {"error": "n must be a positive integer"}
            return _json(start_response, "400 Bad Request", error)
        start_response(
            "200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        )
        return _events(n)
    return _json(start_response, "404 Not Found", {"error": "not found"})
