"""Starlette demo app.

Serve it with ``gunicorn -c python:rollover.hooks -k rollover.workers.UvicornWorker
demo_app.asgi:app``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from demo_app._knobs import STREAM_INTERVAL, apply_import_knobs, parse_count
from demo_app.version import VERSION

apply_import_knobs()

STARLETTE_VERSION = importlib.metadata.version("starlette")


def _identity() -> dict[str, object]:
    return {"pid": os.getpid(), "version": VERSION}


async def index(request: Request) -> Response:
    return JSONResponse({**_identity(), "starlette": STARLETTE_VERSION})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def stream(request: Request) -> Response:
    try:
        n = parse_count(request.query_params.get("n"))
    except ValueError:
        return JSONResponse({"error": "n must be a positive integer"}, status_code=400)

    async def events() -> AsyncIterator[str]:
        counter = itertools.count(1) if n is None else iter(range(1, n + 1))
        for i in counter:
            if i > 1:
                await asyncio.sleep(STREAM_INTERVAL)
            yield f"data: {json.dumps({**_identity(), 'counter': i})}\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(_identity())
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    print(f"demo_app.asgi: startup pid={os.getpid()} version={VERSION}", file=sys.stderr)
    yield
    print(f"demo_app.asgi: shutdown pid={os.getpid()}", file=sys.stderr)


app = Starlette(
    routes=[
        Route("/", index),
        Route("/healthz", healthz),
        Route("/stream", stream),
        WebSocketRoute("/ws", ws),
    ],
    lifespan=lifespan,
)
