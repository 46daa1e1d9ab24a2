"""Nothing a worker sends can take the master down or steer it (real masters, real pipes).

The app here is hostile: one route writes what killed the master before (a JSON pid of
1e400, 200,000 nested brackets), 10 MB, 20,000 lines and random bytes on every pipe the
worker can write; one forges a recycle request and counts for another worker; one writes
to the canary board. The master stays up with every worker, other clients see no failed
request, a forged message changes nothing, and a HUP afterwards rolls.

The master's loop is also a fault boundary: an error injected into rollover's own code
(the roll machine's tick, through a config file) is logged with its traceback, gunicorn's
own worker management keeps the worker count meanwhile, and rolls work again afterwards.

On the code before this channel (one shared pipe, JSON lines, the pid taken from the body,
a writable board) the first test's master exits with "Unhandled exception in main loop"
and the forged recycle retires the other worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    AppCode,
    Load,
    Master,
    http_get,
    roll_done,
    settled_with,
    wait_for,
)

pytestmark = pytest.mark.process

_HOSTILE_APP = '''\
import fcntl, json, os, random, select, stat, struct, time
from urllib.parse import parse_qs

VERSION = {version!r}
time.sleep({boot!r})


def writable_pipes():
    """Every non-blocking pipe this process can write (blocking ones would hang it)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            mode = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if mode & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR) and not os.get_blocking(fd):
            found.append(fd)
    return found


def spray(fd, data):
    """Write all of `data` while someone reads the pipe (a full pipe that stays full for
    0.2 s is given up on); the number of bytes written."""
    done = 0
    view = memoryview(data)
    while done < len(data):
        try:
            done += os.write(fd, view[done:done + 65536])
        except BlockingIOError:
            if not select.select([], [fd], [], 0.2)[1]:
                break
        except BrokenPipeError:
            break
    return done


SPRAYED = []


def hostile(query):
    """Once per worker (a worker asked again answers at once: the test looks for all)."""
    pid = os.getpid()
    if SPRAYED:
        return {{"pid": pid, "written": SPRAYED[0], "again": True}}
    rng = random.Random(pid)
    payloads = [
        b'{{"pid": 1e400, "event": "ready"}}\\n',
        b"[" * 200_000 + b"\\n",
        b'{{"pid": %d, "event": "counts", "detail": "1 2 3"}}\\n' % pid,
        b"counts %d %s\\n" % (pid, b" ".join([b"1" + b"0" * 26] * 5)),
        b"ready 99999999999\\n",
        b"x" * 10_000_000 + b"\\n",
        b"".join(b"garbage line %d\\n" % i for i in range(20_000)),
        bytes(rng.getrandbits(8) for _ in range(65536)),
    ]
    written = {{}}
    SPRAYED.append(written)
    for fd in writable_pipes():
        written[fd] = sum(spray(fd, p) for p in payloads)
    return {{"pid": pid, "written": written}}


def forge(query):
    """Speak for another worker: ask for its replacement, report 5xx in its name."""
    me = os.getpid()
    target = next(int(p) for p in query["pids"][0].split(",") if int(p) != me)
    lines = (b"recycle %d overdue forged by worker %d\\n" % (target, me)
             + b"counts %d 900000 0 0 900000 0\\n" % target
             # the same in the JSON lines of the channel before (a shared pipe, the pid
             # taken from the body): there they retired the other worker
             + b'{{"pid": %d, "event": "recycle-overdue", "detail": "forged"}}\\n' % target
             + b'{{"pid": %d, "event": "counts", "detail": "900000 0 0 900000 0"}}\\n'
             % target)
    written = {{fd: spray(fd, lines) for fd in writable_pipes()}}
    return {{"pid": me, "target": target, "written": written}}


def board(query):
    from rollover.worker import spread
    error = None
    try:
        struct.pack_into("<IB", spread._board, 0, os.getpid(), 2)
    except Exception as exc:
        error = f"{{type(exc).__name__}}: {{exc}}"
    return {{"pid": os.getpid(), "error": error, "board": list(spread._board[:5]),
             "window_open": spread.window_open()}}


ROUTES = {{"/hostile": hostile, "/forge": forge, "/board": board}}


def app(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO"))
    if route is None:
        data = {{"pid": os.getpid(), "version": VERSION}}
    else:
        data = route(parse_qs(environ.get("QUERY_STRING", "")))
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def hostile_app(make_app: Callable[..., AppCode], version: str = "v1") -> AppCode:
    app = make_app()
    write_hostile(app, version)
    return app


def write_hostile(app: AppCode, version: str) -> None:
    tmp = app.dir / ".app.py.tmp"
    tmp.write_text(_HOSTILE_APP.format(version=version, boot=0.3), encoding="utf-8")
    os.replace(tmp, app.path)


def get_json(master: Master, path: str) -> dict:
    status, body = http_get(master.port, path, timeout=20)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def until_every_worker(master: Master, path: str, pids: set[int]) -> dict[int, dict]:
    """GET `path` on new connections until each of `pids` has answered it once."""
    answers: dict[int, dict] = {}

    def all_answered() -> bool:
        data = get_json(master, path)
        answers.setdefault(data["pid"], data)
        return set(answers) >= pids

    wait_for(all_answered, 60, what=f"every worker to answer {path}", interval=0.01,
             on_timeout=master.tail)
    return answers


def worker_pids(status: dict) -> set[int]:
    return {w["pid"] for w in status["workers"]}


@pytest.mark.parametrize("gunicorn", ["installed", "23.0.0"])
def test_hostile_writes_on_every_pipe_leave_the_master_and_its_workers_serving(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
    gunicorn_venv: Callable[[str], Path], gunicorn: str,
) -> None:
    """gunicorn 23's workers can also write the master's own wake pipe (they inherit it)."""
    app = hostile_app(make_app)
    venv = None if gunicorn == "installed" else gunicorn_venv(gunicorn)
    master = masters(app, workers=4, worker_class="gthread", venv=venv)
    status = master.wait_status(settled_with(4), 30, "4 ready workers")
    pids = worker_pids(status)
    with Load(master.port, clients=4, keepalive=True, think=0.01) as load:
        answers = until_every_worker(master, "/hostile", pids)
        load.run_for(2.0)
        assert master.alive(), master.tail()
        after = master.wait_status(settled_with(4), 10, "4 ready workers")
        assert worker_pids(after) == pids, (after, master.tail())  # none died, none retired
        # a HUP afterwards rolls as usual
        before = after["reloads"]
        write_hostile(app, "v2")
        master.hup()
        rolled = master.wait_status(roll_done(before), 60, "the roll after the hostile writes")
        assert rolled["last_rollout"]["result"] == "succeeded", rolled
        load.wait_version("v2", timeout=30)
    written = {pid: sum(a["written"].values()) for pid, a in answers.items()}
    log = master.log_text()
    drops = log.count("sent what the master drops")
    print(f"\nhostile: bytes written per worker {written}; {drops} warnings; {load.describe()}")
    assert all(n > 10_000_000 for n in written.values()), written  # the master read it all
    assert load.failed() == [], load.describe()
    assert "Unhandled exception in main loop" not in log
    # each worker's flood is reported, rate-limited: a few lines, not thousands
    assert len(pids) <= drops <= 4 * len(pids), log[-3000:]


def test_a_worker_cannot_ask_for_another_workers_replacement_or_report_its_counts(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    master = masters(hostile_app(make_app), workers=2, worker_class="gthread")
    status = master.wait_status(settled_with(2), 30, "2 ready workers")
    pids = worker_pids(status)
    forged = get_json(master, "/forge?pids=" + ",".join(map(str, pids)))
    sender, target = forged["pid"], forged["target"]
    assert sum(forged["written"].values()) > 0
    with Load(master.port, clients=2, keepalive=True, think=0.01) as load:
        load.run_for(2.5)  # longer than the reporter's and the status's 1 s cadence
    status = master.status() or {}
    by_pid = {w["pid"]: w for w in status["workers"]}
    log = master.log_text()
    assert set(by_pid) == pids, (status, log[-2000:])  # nobody retired
    assert by_pid[target]["state"] == "ready" and not by_pid[target].get("recycle"), status
    assert by_pid[target]["requests"]["5xx"] == 0, status  # the forged counts were not taken
    assert "asks to be replaced" not in log
    assert load.failed() == [], load.describe()
    assert (f"worker {sender} sent what the master drops: claims to be worker {target}"
            in log), log[-2000:]


def test_app_code_cannot_write_the_canary_board(
    masters: Callable[..., Master], make_app: Callable[..., AppCode],
) -> None:
    master = masters(hostile_app(make_app), workers=2, worker_class="gthread")
    status = master.wait_status(settled_with(2), 30, "2 ready workers")
    answers = until_every_worker(master, "/board", worker_pids(status))
    for answer in answers.values():
        assert answer["error"] and answer["error"].startswith("TypeError"), answer
        assert answer["board"] == [0, 0, 0, 0, 0], answer
        assert answer["window_open"] is False, answer


_FAULTY_CONFIG = '''\
"""A config that injects a fault into rollover's roll machine while {trigger} exists."""
import os

from rollover import hooks as rollover_hooks
from rollover.hooks import *  # noqa: F403

TRIGGER = {trigger!r}


def when_ready(server):
    rollover_hooks.when_ready(server)
    tick = server.machine.tick

    def faulty_tick(now, target):
        if os.path.exists(TRIGGER):
            raise RuntimeError("injected fault in the roll machine")
        return tick(now, target)

    server.machine.tick = faulty_tick
'''


def test_an_error_in_rollovers_own_code_is_contained_and_gunicorn_keeps_the_workers(
    masters: Callable[..., Master], make_app: Callable[..., AppCode], tmp_path: Path,
) -> None:
    app = make_app()
    app.write("v1", boot_delay=0.3)
    trigger = tmp_path / "fault-now"
    config = tmp_path / "faulty.conf.py"
    config.write_text(_FAULTY_CONFIG.format(trigger=str(trigger)), encoding="utf-8")
    master = masters(app, workers=3, worker_class="gthread", config=str(config))
    status = master.wait_status(settled_with(3), 30, "3 ready workers")
    victim = min(worker_pids(status))
    with Load(master.port, clients=3, keepalive=True, think=0.01) as load:
        trigger.touch()
        wait_for(lambda: "injected fault in the roll machine" in master.log_text(), 10,
                 what="the injected fault logged", on_timeout=master.tail)
        os.kill(victim, signal.SIGKILL)
        # gunicorn's own manage_workers replaces it while rollover's tick keeps failing
        wait_for(lambda: len(set(master.worker_pids()) - worker_pids(status)) == 1
                 and victim not in master.worker_pids(), 30,
                 what="a replacement forked by gunicorn's manage_workers",
                 on_timeout=master.tail)
        trigger.unlink()
        # (the replacement is forked before that turn's status is written: wait for it)
        master.wait_status(lambda st: settled_with(3)(st) and victim not in worker_pids(st),
                           30, "3 ready workers again, the killed one gone")
        settled = master.wait_status(settled_with(3), 30, "3 ready workers")
        before = settled["reloads"]
        app.write("v2", boot_delay=0.3)
        master.hup()
        rolled = master.wait_status(roll_done(before), 60, "a roll after the fault")
        assert rolled["last_rollout"]["result"] == "succeeded", rolled
        load.wait_version("v2", timeout=30)
    log = master.log_text()
    assert master.alive()
    assert "Unhandled exception in main loop" not in log
    assert "[ERROR] rollover: internal error while deciding the roll" in log, log[-3000:]
    assert "Traceback" in log
    # the same fault on every tick is logged once (then counted), not once a tick
    assert log.count("RuntimeError: injected fault in the roll machine") == 1, log[-3000:]
    # only the worker killed by the test failed requests (none of its clients' retries)
    assert len(load.failed()) <= 3, load.describe()


def test_every_numeric_setting_out_of_range_stops_the_start_with_one_line(
    make_app: Callable[..., AppCode], tmp_path: Path,
) -> None:
    """ROLLOVER_<NAME> above its range, for each numeric setting: exit 1, one line."""
    from harness import GUNICORN, free_port

    from rollover.settings import RANGES

    app = make_app()
    app.write("v1", boot_delay=0.0)
    procs = {}
    for name, limits in RANGES.items():
        key = f"ROLLOVER_{name.upper()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOVER_")}
        env[key] = "1e400" if not limits.integer else "99999999999"
        argv = [str(GUNICORN), "-c", "python:rollover.hooks", "-b",
                f"127.0.0.1:{free_port()}", "--chdir", str(app.dir), "app:app"]
        procs[key] = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    for key, proc in procs.items():
        _out, err = proc.communicate(timeout=60)
        lines = [line for line in err.splitlines() if line.startswith("rollover: ")]
        assert proc.returncode == 1, (key, proc.returncode, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"rollover: {key} must be "), err
        assert "Traceback" not in err, err
        assert "Booting worker" not in err, err
