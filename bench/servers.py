"""The servers under test: how to start them, signal them, watch their rolls, stop them.

Every server is a real subprocess in its own session (process group), bound to a free
port on 127.0.0.1, logging to a file in the scenario's directory. A roll "ends":

- rollover: when its status file records the rollout that serves our HUP as finished
  (succeeded, aborted or superseded); the duration is the status's finished - started;
- stock gunicorn and uvicorn: when the last old worker process is gone (or, uvicorn, when
  it logs that it aborted the restart; stock gunicorn, when the master itself exited).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.app import AppCode

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent

#: Order in which servers appear in tables and plots.
SERVER_NAMES = ("gunicorn", "uvicorn", "rollover", "gunicorn-wsgi", "rollover-wsgi")

#: Which stock server each rollover variant is compared with.
BASELINE = {"rollover": "gunicorn", "rollover-wsgi": "gunicorn-wsgi"}

GTHREAD_THREADS = 4

#: Seconds a new worker may take to come up, for every server: gunicorn's --timeout (which
#: rollover's ready timeout defaults to) and uvicorn's --timeout-worker-healthcheck (its
#: default, 5 s, aborts a roll whose new worker is slower than that to start).
READY_TIMEOUT = 60


def rollover_asgi_worker() -> str:
    """rollover's own uvicorn worker class when it exists, else uvicorn-worker's."""
    if importlib.util.find_spec("rollover.workers") is not None:
        return "rollover.workers.UvicornWorker"
    return "uvicorn_worker.UvicornWorker"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    family: str  # "gunicorn" (stock), "uvicorn" (standalone --workers) or "rollover"
    wsgi: bool

    @property
    def worker_class(self) -> str:
        if self.family == "uvicorn":
            return "uvicorn (multiprocess)"
        if self.wsgi:
            return f"gthread ({GTHREAD_THREADS} threads)"
        if self.family == "rollover":
            return rollover_asgi_worker()
        return "uvicorn_worker.UvicornWorker"

    @property
    def signal_name(self) -> str:
        return "SIGHUP"


SPECS = {
    "gunicorn": ServerSpec("gunicorn", "gunicorn", wsgi=False),
    "uvicorn": ServerSpec("uvicorn", "uvicorn", wsgi=False),
    "rollover": ServerSpec("rollover", "rollover", wsgi=False),
    "gunicorn-wsgi": ServerSpec("gunicorn-wsgi", "gunicorn", wsgi=True),
    "rollover-wsgi": ServerSpec("rollover-wsgi", "rollover", wsgi=True),
}


@dataclass(frozen=True, slots=True)
class RollEnd:
    """How and when a roll ended (`at` is time.monotonic())."""

    at: float
    result: str  # "succeeded", "aborted", "superseded", "halted (exit N)", "old workers gone"
    duration: float  # seconds, by the server's own definition (see module doc)
    detail: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str = "/", timeout: float = 2.0) -> dict[str, Any] | None:
    """GET on a fresh connection; the JSON body of a 200, else None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def _identity(pid: int) -> tuple[int, float] | None:
    """(pid, create time) of a live, non-zombie process; None when it is gone."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid, proc.create_time()
    except psutil.Error:
        return None


def _start_wall(pid: int) -> float | None:
    """When `pid` started, as a wall-clock time, to 10 ms: psutil's create_time() is
    anchored on the boot time, which /proc gives in whole seconds, so only its time since
    boot is taken, and anchored on CLOCK_BOOTTIME."""
    try:
        since_boot = psutil.Process(pid).create_time() - psutil.boot_time()
    except psutil.Error:
        return None
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


class Server:
    """One server process for one scenario."""

    def __init__(
        self,
        spec: ServerSpec,
        workdir: Path,
        app: AppCode,
        *,
        workers: int,
        graceful_timeout: float,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.app = app
        self.workers = workers
        self.graceful_timeout = graceful_timeout
        # Recycling (the recycle scenario): gunicorn's --max-requests / --max-requests-jitter,
        # uvicorn's --limit-max-requests / --limit-max-requests-jitter; 0 = off.
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.pidfile = workdir / "gunicorn.pid"
        self.status_path = workdir / "gunicorn.rollover.json"
        self.log_path = workdir / "server.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_ids: set[tuple[int, float]] = set()  # (pid, create time) at HUP
        self.answered: set[int] = set()  # worker pids that answered at start
        self._reloads_before = 0
        self._hup_mono = 0.0
        self._wall_offset = 0.0  # time.time() - time.monotonic() at the HUP
        self._log_offset = 0

    # ------------------------------------------------------------------ lifecycle

    def argv(self) -> list[str]:
        spec = self.spec
        target = "app:wsgi" if spec.wsgi else "app:app"
        if spec.family == "uvicorn":
            return [
                str(BIN / "uvicorn"),
                target,
                "--app-dir",
                str(self.app.dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--timeout-graceful-shutdown",
                f"{self.graceful_timeout:g}",
                # Recycling: uvicorn's default healthcheck (5 s). Its supervisor pings one
                # worker at a time and waits this long for an answer; a worker pinged as it
                # exits at its limit never answers, and meanwhile no exited worker is
                # restarted: with 60 s every worker ran out in the window (see README).
                *(
                    []
                    if self.max_requests > 0
                    else ["--timeout-worker-healthcheck", str(READY_TIMEOUT)]
                ),
                "--no-access-log",
                *self._limit_args("--limit-max-requests"),
            ]
        argv = [str(BIN / "gunicorn")]
        if spec.family == "rollover":
            argv += ["-c", "python:rollover.hooks"]
        if spec.wsgi:
            worker = ["-k", "gthread", "--threads", str(GTHREAD_THREADS)]
        else:
            worker = ["-k", spec.worker_class]
        return [
            *argv,
            "-b",
            f"127.0.0.1:{self.port}",
            "--pid",
            str(self.pidfile),
            "-w",
            str(self.workers),
            *worker,
            "--no-control-socket",
            "--graceful-timeout",
            f"{self.graceful_timeout:g}",
            "--timeout",
            str(READY_TIMEOUT),
            "--chdir",
            str(self.app.dir),
            *self._limit_args("--max-requests"),
            target,
        ]

    def _limit_args(self, flag: str) -> list[str]:
        if self.max_requests <= 0:
            return []
        args = [flag, str(self.max_requests)]
        if self.max_requests_jitter > 0:
            args += [f"{flag}-jitter", str(self.max_requests_jitter)]
        return args

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOVER_")}
        env.pop("PYTHONPATH", None)
        # The app file is rewritten within the same second: never import a stale .pyc.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float, attempts: int = 3) -> None:
        """Start the server and wait until all its workers answered (or raise)."""
        for _ in range(attempts):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"=== bench: {' '.join(self.argv())}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.argv(),
                    cwd=self.workdir,
                    env=self.environ(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self._wait_workers(timeout)
                return
            except RuntimeError:
                in_use = "Address already in use" in self.log_text()
                self.stop()
                if not in_use:
                    raise
        raise RuntimeError(f"{self.spec.name}: could not bind a free port{self.tail()}")

    def _wait_workers(self, timeout: float) -> None:
        """Poll `GET /` on fresh connections until `workers` distinct pids answered."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.spec.name} exited at start{self.tail()}")
            data = _get(self.port)
            if data is not None and isinstance(data.get("pid"), int):
                seen.add(data["pid"])
                if len(seen) >= self.workers:
                    self.answered = seen
                    return
            else:
                time.sleep(0.05)
        raise RuntimeError(
            f"{self.spec.name}: only {len(seen)}/{self.workers} workers answered "
            f"within {timeout:g}s{self.tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the master, wait, then SIGKILL whatever is left in its process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ observation

    def tree(self) -> list[psutil.Process]:
        """The master and all its descendants (empty once the master is gone)."""
        if not self.alive():
            return []
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children(recursive=True)]
        except psutil.Error:
            return []

    def tree_usage(self) -> tuple[int, int, float]:
        """(total RSS in bytes, number of processes, CPU seconds) of the process tree.

        The CPU seconds include what reaped children used (the master's children_user /
        children_system), so workers that exited still count.
        """
        total = 0
        count = 0
        cpu = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                count += 1
        return total, count, cpu

    def status(self) -> dict[str, Any] | None:
        """rollover's status file, None when missing or unreadable."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"\n--- {self.log_path} (tail) ---\n" + "\n".join(text)

    # ------------------------------------------------------------------ the reload

    def hup(self) -> float:
        """Note the current workers, send SIGHUP; returns when (time.monotonic())."""
        if self.spec.family == "rollover":
            status = self.status() or {}
            self._reloads_before = int(status.get("reloads") or 0)
        # The workers: the master's children that answered requests (uvicorn's master
        # may have other children, e.g. multiprocessing's resource tracker).
        children = {proc.pid for proc in self.tree()[1:] if _ppid(proc) == self.pid}
        self.worker_ids = {
            ident for pid in children & self.answered if (ident := _identity(pid)) is not None
        }
        self._log_offset = len(self.log_text())
        self._wall_offset = time.time() - time.monotonic()
        self._hup_mono = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        return self._hup_mono

    def old_left(self) -> int:
        """How many of the workers noted at the HUP are still running."""
        return sum(1 for pid, created in self.worker_ids if _identity(pid) == (pid, created))

    def poll_roll(self) -> RollEnd | None:
        """The end of the roll that serves our HUP, once it has ended; else None."""
        now = time.monotonic()
        if self.spec.family == "rollover":
            return self._poll_rollover(now)
        if self.proc is not None and self.proc.poll() is not None:
            return RollEnd(now, f"halted (exit {self.proc.returncode})", now - self._hup_mono)
        if self.spec.family == "uvicorn":
            log = self.log_text()[self._log_offset :]
            if "aborting the restart" in log:
                line = next(
                    (ln for ln in log.splitlines() if "aborting the restart" in ln), ""
                ).strip()
                return RollEnd(now, "aborted", now - self._hup_mono, line)
        if self.old_left() == 0:
            return RollEnd(now, "old workers gone", now - self._hup_mono)
        return None

    def _poll_rollover(self, now: float) -> RollEnd | None:
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            return RollEnd(now, f"halted (exit {code})", now - self._hup_mono)
        status = self.status()
        if status is None:
            return None
        last = status.get("last_rollout")
        if not isinstance(last, dict) or int(last.get("reload") or 0) <= self._reloads_before:
            return None
        started, finished = last.get("started"), last.get("finished")
        if not isinstance(started, str) or not isinstance(finished, str):
            return None
        from rollover.status import parse_iso

        start_wall, end_wall = parse_iso(started), parse_iso(finished)
        at = end_wall - self._wall_offset
        detail = str(last.get("error") or "")
        if last.get("min_ready") is not None:
            detail = f"min_ready {last['min_ready']}" + (f"; {detail}" if detail else "")
        return RollEnd(at, str(last.get("result")), end_wall - start_wall, detail)

    def new_worker_boots(self, seen: dict[int, dict[str, float]]) -> None:
        """rollover: note each new-generation worker's fork time and READY time (wall).

        `seen` maps pid -> {"created", "ready"}; the fork time comes from the process
        itself (psutil), READY from the status file's `since` of its `ready` state.
        """
        status = self.status()
        if status is None:
            return
        generation = status.get("generation")
        for worker in status.get("workers") or []:
            if not isinstance(worker, dict) or worker.get("generation") != generation:
                continue
            pid = worker.get("pid")
            if not isinstance(pid, int) or generation == 0:
                continue
            entry = seen.setdefault(pid, {})
            if "created" not in entry and (started := _start_wall(pid)) is not None:
                entry["created"] = started
            since = worker.get("since")
            if worker.get("state") == "ready" and "ready" not in entry and isinstance(since, str):
                from rollover.status import parse_iso

                entry["ready"] = parse_iso(since)

    def settings(self) -> dict[str, Any]:
        """rollover's effective settings (from the status file), {} for other servers."""
        status = self.status() if self.spec.family == "rollover" else None
        settings = (status or {}).get("settings")
        return settings if isinstance(settings, dict) else {}
