"""The canary with real masters: new code that boots fine but fails its requests stops its
own roll before it replaces anything (`reload --wait` exits 1 with the figures)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from harness import AppCode, Load, Master, run_cli

pytestmark = pytest.mark.process

_WSGI = '''\
import json, os, time
time.sleep({boot!r})

def app(environ, start_response):
    body = json.dumps({{"pid": os.getpid(), "version": {version!r}}}).encode()
    start_response({status!r}, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])
    return [body]
'''

_ASGI = '''\
import os, time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
time.sleep({boot!r})

async def index(request):
    return JSONResponse({{"pid": os.getpid(), "version": {version!r}}},
                        status_code=int({status!r}[:3]))

app = Starlette(routes=[Route("/", index)])
'''


def write(app: AppCode, version: str, status: str = "200 OK", boot: float = 1.0) -> None:
    template = _WSGI if app.kind == "wsgi" else _ASGI
    app.path.write_text(template.format(version=version, status=status, boot=boot))


def reload(master: Master) -> tuple[int, str]:
    result = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
    return result.returncode, result.stdout + result.stderr


CLASSES = [("gthread", "wsgi"), ("uvicorn_worker.UvicornWorker", "asgi")]


@pytest.mark.interpreters(worker_class="gthread")
@pytest.mark.parametrize(("worker_class", "kind"), CLASSES)
def test_new_code_answering_500_is_stopped_by_its_canary(
    masters: Callable[..., Master], make_app: Callable[..., AppCode], worker_class: str,
    kind: str,
) -> None:
    app = make_app(kind)
    write(app, "v1")
    master = masters(app, worker_class=worker_class)
    master.wait_status(lambda s: s["state"] == "idle", 30, "all workers READY")
    with Load(master.port, clients=8, keepalive=True) as kept, \
            Load(master.port, clients=8, keepalive=False) as fresh:
        kept.run_for(0.5)
        write(app, "v2", status="500 Internal Server Error")
        code, out = reload(master)
        done = kept.records()[-1].end if kept.records() else 0.0
        kept.run_for(1.5)
    assert code == 1, out
    assert "canary failed: " in out and "failed vs 0 of" in out and "p < 0.001" in out, out
    status = master.status() or {}
    canary = status["last_rollout"]["canary"]
    print(f"\n{worker_class}: {out.strip().splitlines()[-1]}; canary {canary}; "
          f"keep-alive {kept.describe()}; new connections {fresh.describe()}")
    failed = kept.failed() + fresh.failed()
    assert set(failed) <= {"HTTP 500"}, Counter(failed)
    # `reload --wait` waited for the canary's drain: its counts are final, and every 500
    # a client saw is one of them
    assert canary["final"] is True and "; in all it answered " in out, (canary, out)
    assert len(failed) <= canary["failures"], (len(failed), canary)
    after = [r for r in kept.records(since=done) + fresh.records(since=done)]
    assert after and all(r.ok and r.version == "v1" for r in after[-50:])
    assert status["workers_target"] == 4 and len(status["workers"]) == 4


def test_new_code_answering_only_4xx_rolls_out(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    write(app, "v1")
    master = masters(app)
    master.wait_serving()
    with Load(master.port, clients=8, keepalive=False):
        write(app, "v2", status="404 Not Found")
        code, out = reload(master)
    assert code == 0, out
    canary = (master.status() or {})["last_rollout"]["canary"]
    assert canary["verdict"] == "passed", canary


def test_no_traffic_is_not_judged_and_the_roll_completes(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    app = make_app()
    write(app, "v1", boot=0.5)
    master = masters(app, workers=2)
    master.wait_serving()
    write(app, "v2", status="500 Internal Server Error", boot=0.5)
    code, out = reload(master)
    assert code == 0, out
    canary = (master.status() or {})["last_rollout"]["canary"]
    assert canary["verdict"] == "not judged" and canary["rule"] == "no traffic", canary
    log = master.log_text()
    lines = [line for line in log.splitlines() if "canary not judged" in line]
    assert len(lines) == 1 and "[INFO] rollover: canary not judged: no traffic" in lines[0], log
    assert "[WARNING]" not in log, log


def test_keep_alive_clients_are_sent_toward_the_canary(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """Only keep-alive clients, connected before the canary exists (as behind a proxy):
    the old workers close one in N+1 responses, so the canary gets its share."""
    app = make_app()
    write(app, "v1")
    master = masters(app, extra_args=["--threads", "4"],
                     # threshold 0: no early pass, the window lasts 200 requests
                     env={"ROLLOVER_CANARY_REQUESTS": "200", "ROLLOVER_CANARY_THRESHOLD": "0"})
    master.wait_serving()
    with Load(master.port, clients=8, keepalive=True, think=0.01) as kept:
        kept.run_for(0.5)
        write(app, "v2")
        code, out = reload(master)
    assert code == 0, out
    canary = (master.status() or {})["last_rollout"]["canary"]
    print(f"\ncanary share under keep-alive only: {canary}")
    assert canary["verdict"] == "passed" and canary["requests"] >= 200, canary
    assert kept.failed() == [], kept.describe()


def test_a_canary_that_crashes_in_its_window_aborts_the_roll(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    """READY, then dead 1.2 s later (its thread exits the worker) while the roll holds for
    its verdict (a window of 50 requests it does not reach under this light load)."""
    from test_faults import write_crashing_app

    app = make_app()
    app.write("v1", boot_delay=0.5)
    master = masters(app, workers=3)
    master.wait_status(lambda s: s["state"] == "idle", 30, "all workers READY")
    old = sorted(w["pid"] for w in (master.status() or {})["workers"])
    with Load(master.port, clients=2, keepalive=False, think=0.1) as load:
        write_crashing_app(app, "v2", boot=0.5, after=1.2, preload=False)
        code, out = reload(master)
    assert code == 1, out
    assert "after READY" in out, out
    status = master.status() or {}
    assert sorted(w["pid"] for w in status["workers"] if w["generation"] == 0) == old
    assert status["last_rollout"]["canary"]["verdict"] is None  # it died before one
    # at most the request the canary was answering when it died
    assert len(load.failed()) <= 1, load.describe()
