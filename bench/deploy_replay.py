"""Replay an operator's `rollover deploy` sequence from an empty directory, under load.

    .venv/bin/python -m bench.deploy_replay [--keep-dir]

Everything happens in a fresh temp directory on loopback: a wheelhouse (this checkout's
rollover wheel, gunicorn 27.0.1 and 27.0.0 and psutil, through pip's ordinary client and
cache), `rollover deploy --init`, the README's first deploy, the master started with the
printed start command (plus `-k gthread`, a short graceful timeout and a control socket in
the run dir), then:

    v1 first deploy + start   v2 HUP   v3 HUP   v4 USR2 (gunicorn 27.0.0)
    v5 HUP --keep 2 (prunes v1, the first master's release) + `rollover reload --wait`
    v6 HUP   v7 broken at import (preflight, exit 4)
    v8 passes the preflight, fails live (raises under APP_STAGE=live, which only the master
       has): exit 1, rolled back + `rollover reload --wait`

The app: `/` answers JSON naming its release and the release of a module it imports lazily
on that request (`lazypkg.m<i>`, a different one each time, so old workers keep importing
after `current` flips); an answer whose two names differ counts as a failure ("mixed").
2 gthread workers, 1 s import. Load: 4 keep-alive clients (closed loop, 10 ms think time),
every request recorded; failures by type. One row per step, then totals; the run ends with
every process stopped and checked gone through psutil.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROLLOVER = BIN / "rollover"
GUNICORN_LIVE = "27.0.1"
GUNICORN_OTHER = "27.0.0"
WORKERS = 2
BOOT_DELAY = 1.0
CLIENTS = 4
THINK = 0.01
LAZY_MODULES = 300

APP = '''\
"""Replay app {version}: `/` names its release and a lazily imported module's."""
import importlib
import json
import os
import time

VERSION = {version!r}
time.sleep({boot_delay!r})
{failure}
_N = 0


def app(environ, start_response):
    global _N
    if environ.get("PATH_INFO") == "/healthz":
        body, ctype = b"ok", "text/plain"
    else:
        _N += 1
        mod = importlib.import_module(f"lazypkg.m{{_N % {lazy}}}")
        body = json.dumps({{"pid": os.getpid(), "release": VERSION,
                           "lazy": mod.VERSION}}).encode()
        ctype = "application/json"
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
'''


# --------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Record:
    start: float
    end: float
    kind: str  # "ok", "mixed", "HTTP <status>", "bad body" or the exception class name
    release: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class Load:
    """Closed loop of keep-alive clients on GET /; an idle connection the server closed
    is noticed before reuse and replaced (counted in `stale`, not as a failure)."""

    def __init__(self, port: int, clients: int = CLIENTS) -> None:
        self.port = port
        self.stale = 0
        self._records: list[list[Record]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _run(self, index: int) -> None:
        out = self._records[index]
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            elif conn.sock is not None and _dropped(conn.sock):
                self.stale += 1
                conn.close()
            start = time.monotonic()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                out.append(Record(start, time.monotonic(), type(exc).__name__))
                conn.close()
                conn = None
                self._stop.wait(0.02)
                continue
            end = time.monotonic()
            if resp.status != 200:
                out.append(Record(start, end, f"HTTP {resp.status}"))
            else:
                try:
                    data = json.loads(body)
                    release, lazy = str(data["release"]), str(data["lazy"])
                except (ValueError, KeyError, TypeError):
                    out.append(Record(start, end, "bad body"))
                else:
                    out.append(Record(start, end, "ok" if release == lazy else "mixed",
                                      release if release == lazy else f"{release}/{lazy}"))
            if resp.will_close:
                conn.close()
                conn = None
            self._stop.wait(THINK)
        if conn is not None:
            conn.close()

    def records(self, since: float = 0.0, until: float = float("inf")) -> list[Record]:
        return sorted((r for per in self._records for r in list(per)
                       if since <= r.start <= until), key=lambda r: r.start)

    def overlapping(self, since: float, until: float) -> list[Record]:
        return [r for per in self._records for r in list(per)
                if r.end >= since and r.start <= until]

    def wait_requests(self, count: int, after: float, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records(since=after)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} requests in {timeout:g}s")
            time.sleep(0.02)


def _dropped(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


# --------------------------------------------------------------------------- setup


def run(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env=env, cwd=cwd)


def must(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args)} exited {proc.returncode}:\n"
                           f"{proc.stdout}{proc.stderr}")


def wheelhouse(base: Path) -> tuple[Path, Path]:
    """rollover's wheel (from a copy of this checkout: an in-tree build writes build/),
    gunicorn 27.0.1 + 27.0.0 and psutil, for offline installs. Returns (dir, rollover wheel)."""
    house, src = base / "wheels", base / "rollover-src"
    house.mkdir()
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "rollover", src / "rollover",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip"]
    must(run([*pip, "wheel", "-q", "--no-deps", str(src), "-w", str(house)], cwd=base))
    for spec in (f"gunicorn=={GUNICORN_LIVE}", f"gunicorn=={GUNICORN_OTHER}",
                 f"psutil=={metadata.version('psutil')}"):
        must(run([*pip, "download", "-q", "--no-deps", spec, "-d", str(house)], cwd=base))
    return house, next(house.glob("gunicorn_rollover-*.whl"))


def write_source(directory: Path, version: str, *, gunicorn: str,
                 failure: str = "") -> Path:
    lazy = directory / "lazypkg"
    lazy.mkdir(parents=True)
    (lazy / "__init__.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    for i in range(LAZY_MODULES):
        (lazy / f"m{i}.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
    (directory / "app.py").write_text(APP.format(version=version, boot_delay=BOOT_DELAY,
                                                 failure=failure, lazy=LAZY_MODULES),
                                      encoding="utf-8")
    (directory / "requirements.txt").write_text(f"gunicorn=={gunicorn}\n", encoding="utf-8")
    return directory


def deploy_env() -> dict[str, str]:
    """What an operator's shell has: none of the master's APP_STAGE or ROLLOVER_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ROLLOVER_") and k not in ("APP_STAGE", "PYTHONPATH")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str = "/") -> dict[str, Any] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return json.loads(body) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


# --------------------------------------------------------------------------- the replay


@dataclass
class Row:
    step: str
    method: str = "-"
    rc: int | None = None
    seconds: float = 0.0
    requests: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    max_ms: float = 0.0
    serving: str = "-"
    reload_rc: int | None = None
    note: str = ""


class Replay:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "srv" / "app"
        self.pidfile = base / "run" / "app" / "gunicorn.pid"
        self.sources = base / "sources"
        self.port = free_port()
        self.wheels, self.wheel = Path(), Path()
        self.master: subprocess.Popen[bytes] | None = None
        self.session = 0
        self.load: Load | None = None
        self.rows: list[Row] = []
        self.log = base / "master.log"

    # -- commands

    def deploy(self, version: str, *extra: str, gunicorn: str = GUNICORN_OTHER,
               failure: str = "") -> tuple[int, dict[str, Any], str, float]:
        src = write_source(self.sources / version, version, gunicorn=gunicorn,
                           failure=failure)
        cmd = [str(ROLLOVER), "deploy", "--root", str(self.root), "--pidfile",
               str(self.pidfile), "--app", "app:app", "--source", str(src), "--wheel",
               str(self.wheel), "--find-links", str(self.wheels), "--no-index",
               "--release", version, "--json", *extra]
        started = time.monotonic()
        proc = run(cmd, timeout=300, env=deploy_env())
        seconds = time.monotonic() - started
        try:
            summary = json.loads(proc.stdout)
        except ValueError:
            summary = {}
        (self.base / f"deploy-{version}.log").write_text(proc.stdout + proc.stderr)
        return proc.returncode, summary, proc.stderr, seconds

    def reload_wait(self) -> tuple[int, str, float]:
        started = time.monotonic()
        proc = run([str(self.root / "current" / "venv" / "bin" / "rollover"), "reload",
                    "--pidfile", str(self.pidfile), "--wait", "--timeout", "60"],
                   timeout=90, env=deploy_env())
        return proc.returncode, (proc.stdout + proc.stderr).strip(), time.monotonic() - started

    def status(self) -> dict[str, Any]:
        proc = run([str(ROLLOVER), "status", "--pidfile", str(self.pidfile), "--json"],
                   timeout=30, env=deploy_env())
        try:
            return dict(json.loads(proc.stdout))
        except ValueError:
            return {}

    def serving(self) -> str:
        """The releases the master's READY workers run in (their cwd), from the status,
        once the status is settled (not rolling) and names the pidfile's master."""
        deadline = time.monotonic() + 20
        while True:
            st = self.status()
            if st.get("state") == "idle" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        releases: Counter[str] = Counter()
        for worker in st.get("workers", []):
            if worker.get("state") != "ready":
                continue
            with contextlib.suppress(OSError):
                releases[os.path.basename(os.path.realpath(f"/proc/{worker['pid']}/cwd"))] += 1
        current = os.path.basename(os.readlink(self.root / "current"))
        ready = "+".join(f"{r}x{n}" for r, n in sorted(releases.items())) or "none"
        last = (st.get("last_rollout") or {}).get("result", "-")
        return (f"{ready} (current={current}, gen {st.get('generation', '?')}, "
                f"{st.get('state', '?')}, last roll {last})")

    # -- steps

    def measured(self, row: Row, action: Any) -> Any:
        """Run `action()`, recording the requests that started while it ran and the worst
        latency of any request in flight then."""
        t0 = time.monotonic()
        result = action()
        t1 = time.monotonic()
        if self.load is not None:
            during = self.load.records(t0, t1)
            row.requests = len(during)
            row.failed = Counter(r.kind for r in during if not r.ok)
            lat = [r.end - r.start for r in self.load.overlapping(t0, t1)]
            row.max_ms = max(lat, default=0.0) * 1000
            # what answers the requests sent once the command returned
            self.load.wait_requests(40, after=t1)
            after = Counter(r.release if r.ok else r.kind for r in self.load.records(since=t1))
            row.note = (row.note + f" answers to the {sum(after.values())} requests sent "
                        f"after it returned: {dict(after)};").strip()
        return result

    def step_deploy(self, name: str, *extra: str, expect: int = 0, **source: Any) -> Row:
        row = Row(name)
        rc, summary, stderr, seconds = self.measured(
            row, lambda: self.deploy(name, *extra, **source))
        row.rc, row.seconds = rc, seconds
        row.method = summary.get("method") or "-"
        if summary.get("pruned"):
            on_disk = sorted(p.name for p in (self.root / "releases").iterdir())
            row.note += f" pruned {sorted(summary['pruned'])}, releases on disk {on_disk};"
        if rc != 0:
            cause = summary.get("error") or stderr.strip().splitlines()[-1:]
            row.note = (f"{row.note} error: {cause}; deploy's serving: "
                        f"{summary.get('serving')};").strip()
        if rc != expect:
            row.note = f"UNEXPECTED exit (wanted {expect}); " + row.note
        row.serving = self.serving()
        self.rows.append(row)
        print(self.format(row), row.note, flush=True)
        return row

    def step_reload(self, after: Row) -> None:
        row = Row(f"{after.step} reload --wait", method="hup")
        rc, out, seconds = self.measured(row, self.reload_wait)
        row.rc, row.seconds, after.reload_rc = rc, seconds, rc
        row.note = f"{out.splitlines()[-1] if out else ''}; {row.note}".strip()
        row.serving = self.serving()
        self.rows.append(row)
        print(self.format(row), row.note, flush=True)

    def first(self) -> None:
        row = Row("v1", method="start")
        started = time.monotonic()
        common = ["--root", str(self.root), "--pidfile", str(self.pidfile), "--app", "app:app"]
        init = run([str(ROLLOVER), "deploy", "--init", *common, "--bind",
                    f"127.0.0.1:{self.port}", "--workers", str(WORKERS), "--json"],
                   timeout=60, env=deploy_env())
        must(init)
        command = json.loads(init.stdout)["start_command"]
        rc, summary, stderr, _ = self.deploy("v1", gunicorn=GUNICORN_LIVE)
        if rc != 0:
            raise RuntimeError(f"first deploy exited {rc}: {stderr}")
        # the printed command, plus the worker class and a few settings before the app
        ctl = self.pidfile.parent / "gunicorn.ctl"
        argv = [*command[:-1], "-k", "gthread", "--graceful-timeout", "5",
                "--control-socket", str(ctl), command[-1]]
        env = {**deploy_env(), "APP_STAGE": "live", "ROLLOVER_PROBE_PATH": "/healthz"}
        with open(self.log, "wb") as log:
            self.master = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=self.base, start_new_session=True)
        self.session = self.master.pid
        deadline = time.monotonic() + 30
        while (answer := get(self.port)) is None:
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"master did not serve:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        row.rc, row.seconds = rc, time.monotonic() - started
        row.serving = self.serving()
        row.note = f"init + deploy ({summary.get('method')}) + start; first answer {answer}"
        self.rows.append(row)
        print(self.format(row), row.note, flush=True)

    def replay(self) -> None:
        self.wheels, self.wheel = wheelhouse(self.base)
        print(f"wheelhouse: {sorted(p.name for p in self.wheels.iterdir())}", flush=True)
        self.first()
        with Load(self.port) as load:
            self.load = load
            load.wait_requests(30, after=0.0)
            self.step_deploy("v2", gunicorn=GUNICORN_LIVE)
            self.step_deploy("v3", gunicorn=GUNICORN_LIVE)
            self.step_deploy("v4", gunicorn=GUNICORN_OTHER)
            self.step_deploy("v5", "--keep", "2", gunicorn=GUNICORN_OTHER)
            self.step_reload(self.rows[-1])
            self.step_deploy("v6", gunicorn=GUNICORN_OTHER)
            self.step_deploy("v7", expect=4, gunicorn=GUNICORN_OTHER,
                             failure="raise RuntimeError('broken at import')")
            self.step_deploy("v8", expect=1, gunicorn=GUNICORN_OTHER,
                             failure="if os.environ.get('APP_STAGE') == 'live':\n"
                                     "    raise RuntimeError('no DATABASE_URL (live only)')")
            self.step_reload(self.rows[-1])
            time.sleep(1)
        self.load = None
        everything = load.records()
        print(f"\nload total: {len(everything)} requests, failed "
              f"{dict(Counter(r.kind for r in everything if not r.ok))}, max latency "
              f"{max((r.end - r.start for r in everything), default=0) * 1000:.0f} ms, "
              f"stale keep-alive reconnects {load.stale}, answers "
              f"{dict(Counter(r.release for r in everything if r.ok))}", flush=True)

    # -- teardown

    def stop(self) -> list[str]:
        """SIGTERM whichever master the pidfile names, then the one started here; return
        what is left afterwards (then SIGKILLed): processes of the master's session or
        running from this directory."""
        with contextlib.suppress(OSError, ValueError):
            live = int(self.pidfile.read_text().strip())
            proc = psutil.Process(live)
            if "gunicorn" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGTERM)
                psutil.wait_procs([proc], timeout=30)
        if self.master is not None and self.master.poll() is None:
            self.master.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.master.wait(30)
        deadline = time.monotonic() + 15
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return [f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}" for p in left]

    def leftovers(self) -> list[psutil.Process]:
        out = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                in_session = self.session and os.getsid(proc.pid) == self.session
                cmd = " ".join(proc.info["cmdline"] or [])
            except (OSError, psutil.Error):
                continue
            if in_session or str(self.base) in cmd:
                out.append(proc)
        return out

    # -- output

    HEADER = ("step", "method", "exit", "s", "requests", "failed", "max ms",
              "serving after (READY workers' release)", "reload --wait")

    @staticmethod
    def format(row: Row) -> str:
        failed = (f"{sum(row.failed.values())} {dict(row.failed)}" if row.failed else "0")
        cells = (row.step, row.method, "-" if row.rc is None else str(row.rc),
                 f"{row.seconds:.1f}", str(row.requests), failed, f"{row.max_ms:.0f}",
                 row.serving, "-" if row.reload_rc is None else str(row.reload_rc))
        return "| " + " | ".join(cells) + " |"

    def table(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |",
                 "|" + " --- |" * len(self.HEADER)]
        lines += [self.format(row) for row in self.rows]
        lines += ["", "notes:"] + [f"- {row.step}: {row.note}" for row in self.rows if row.note]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-dir", action="store_true",
                        help="leave the temp directory (releases, logs) in place")
    opts = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="rollover-deploy-replay-"))
    assert not any(base.iterdir())
    replay = Replay(base)
    started = time.monotonic()
    problem = ""
    try:
        replay.replay()
    except Exception as exc:  # report what we got
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        left = replay.stop()
    print(f"\n{replay.table()}\n")
    print(f"run: {time.monotonic() - started:.0f}s in {base}; leftover processes after stop: "
          f"{left or 'none'}")
    if problem:
        print(f"replay stopped early: {problem}")
        with contextlib.suppress(OSError):
            print("master log tail:\n" + replay.log.read_text()[-3000:])
    if not opts.keep_dir:
        shutil.rmtree(base, ignore_errors=True)
    unexpected = [r for r in replay.rows if "UNEXPECTED" in r.note or r.failed]
    return 1 if problem or left or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
