"""Fault matrix (issue 7), real processes: the master never dies and no request fails.

Each test drives a real rollover master (tests/harness.py) into one fault -- a broken
config at HUP, a hung or crashing new worker, a killed old worker, broken code on disk, a
HUP storm, stop signals and worker-count signals mid-roll, a broken first start,
`reuse_port` -- and checks the end state through the status file, the master's children,
its log and HTTP answers. The CLI, status-file and soak items are in test_faults_cli.py.

`ROLLOVER_TEST_SOAK_SCALE` (a factor, default 1; 0.16 when `CI=true`) shortens the
repeated scenarios (20 aborted rolls here, the 50-roll soak there).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from harness import (
    GUNICORN,
    AppCode,
    Load,
    Master,
    Status,
    assert_settled_on,
    booting_workers,
    check_roll,
    exit_deadline,
    fd_count,
    figures,
    group_members,
    log_since,
    pid_alive,
    ready_workers,
    roll_done,
    rss_kib,
    run_cli,
    scaled,
    settled_with,
    start_settled,
    wait_for,
    wait_only,
)

from rollover.status import StatusError, parse_iso, read_status

NO_CANARY = {"ROLLOVER_CANARY": "0"}

pytestmark = pytest.mark.process


CLIENTS = 6


# --------------------------------------------------------------------------- helpers


def versions_answering(master: Master, requests: int = 12) -> Counter[str]:
    """Versions answered by `requests` GETs on fresh connections."""
    from harness import http_get

    seen: Counter[str] = Counter()
    for _ in range(requests):
        code, body = http_get(master.port, timeout=5.0)
        assert code == 200, body
        seen[json.loads(body)["version"]] += 1
    return seen


def check_fault_roll(
    load: Load, *, hup_at: float, done_at: float, boot: float, version: str
) -> list[str]:
    """`check_roll` (a stall is requests that waited a boot, counted: CPU starvation alone,
    with every test file running in parallel on 2 cores, reached 0.8 s for one request)."""
    return check_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version=version)


def write_module(app: AppCode, text: str, version: str) -> None:
    """Write `app.py` atomically with arbitrary source (AppCode only knows sleep/raise)."""
    tmp = app.dir / ".app.py.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, app.path)
    app.version = version


class StatusSampler:
    """Reads the status file every `interval` s in a thread; keeps every snapshot."""

    def __init__(self, master: Master, interval: float = 0.05) -> None:
        self.master = master
        self.interval = interval
        self.samples: list[tuple[float, Status]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), read_status(str(self.master.status_path))))
            except StatusError as exc:
                self.errors.append(str(exc))
            self._stop.wait(self.interval)

    def max_serving_or_booting(self) -> int:
        return max(
            (
                sum(1 for w in st["workers"] if w["state"] in ("booting", "ready"))
                for _, st in self.samples
            ),
            default=0,
        )

    def states(self) -> Counter[str]:
        return Counter(st["state"] for _, st in self.samples)

    def last_rollouts(self) -> list[Status]:
        """Every distinct last_rollout record seen (by reload, generation, result), in order.

        (A record's ISO times may move by a microsecond between writes: the master turns
        monotonic times into wall times anew each time.)
        """
        out: list[Status] = []
        for _, st in self.samples:
            rec = st.get("last_rollout")
            key = None if rec is None else (rec["reload"], rec["generation"], rec["result"])
            if key is not None and (
                not out or (out[-1]["reload"], out[-1]["generation"], out[-1]["result"]) != key
            ):
                out.append(rec)
        return out


# --------------------------------------------------------------------------- 1. bad config

_GOOD_CONFIG = """\
from rollover.hooks import *  # noqa: F403

rollover_ready_timeout = 7
{extra}
"""

# (case id, config text, what the abort's error must mention)
_BAD_CONFIGS = [
    ("syntax-error", "from rollover.hooks import *\nworkers = (\n", "SyntaxError"),
    (
        "raising-statement",
        "from rollover.hooks import *\nrollover_ready_timeout = 3\n"
        "raise RuntimeError('config boom')\n",
        "config boom",
    ),
    (
        "invalid-gunicorn-value",
        "from rollover.hooks import *\nworkers = 'many'\n",
        "many",
    ),
    (
        "invalid-rollover-value",
        "from rollover.hooks import *\nrollover_max_surge = 0\n",
        "rollover_max_surge must be 1 to 1000, got 0",
    ),
]


def test_bad_config_at_hup_keeps_the_old_config_and_workers(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], tmp_path: Path
) -> None:
    boot, workers = 1.0, 2
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(_GOOD_CONFIG.format(extra=""), encoding="utf-8")
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, first = start_settled(masters, app, workers, config=str(config))
    pids = sorted(w["pid"] for w in first["workers"])
    assert first["settings"]["ready_timeout"] == 7.0, first
    table: list[str] = []

    with Load(master.port, clients=4, keepalive=True) as load:
        load.run_for(0.3, min_requests=4)
        for case, text, expected in _BAD_CONFIGS:
            config.write_text(text, encoding="utf-8")
            offset = len(master.log_text())
            before = master.status()
            assert before is not None
            cli = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "30")
            out = (cli.stdout + cli.stderr).strip()
            table.append(f"{case}: exit {cli.returncode}: {cli.stderr.strip()}")
            assert cli.returncode == 1, f"{case}: exit {cli.returncode}: {out}{master.tail()}"
            assert expected in cli.stderr, f"{case}: {out}"
            assert "Traceback" not in out, out
            st = master.wait_status(roll_done(before["reloads"]), 10, f"{case}: the abort")
            last = st["last_rollout"]
            assert last["result"] == "aborted", st
            assert expected in (last["error"] or ""), st
            # nothing changed: same generation, same workers, old settings
            assert st["generation"] == 0, st
            assert sorted(w["pid"] for w in ready_workers(st)) == pids, st
            assert st["settings"]["ready_timeout"] == 7.0, st
            assert st["settings"]["max_surge"] == 1, st
            assert master.worker_pids() == pids, master.tail()
            assert "reload aborted before rolling" in log_since(master, offset), master.tail()
            assert master.wait_serving()["version"] == "v1"

        # a fixed config (with a new setting value) and new code roll out
        config.write_text(_GOOD_CONFIG.format(extra="rollover_max_surge = 2"), encoding="utf-8")
        app.write("v2", boot_delay=boot)
        cli = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
        table.append(f"fixed config: exit {cli.returncode}: {cli.stdout.strip().splitlines()[-1]}")
        assert cli.returncode == 0, f"{cli.stdout}{cli.stderr}{master.tail()}"
        final = master.wait_status(settled_with(workers), 30, "settled on the fixed config")
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * load.clients, after=done_at)
    print("\n[bad config] " + "\n[bad config] ".join(table))
    print(f"[bad config] load: {load.describe()}")
    assert final["generation"] == 1, final
    assert final["last_rollout"]["result"] == "succeeded", final
    assert final["settings"]["max_surge"] == 2, final
    assert_settled_on(master, final, workers)
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v2"}, load.describe()


def test_bad_config_value_error_names_the_setting(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], tmp_path: Path
) -> None:
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(_GOOD_CONFIG.format(extra=""), encoding="utf-8")
    app = make_app("wsgi")
    app.write("v1", boot_delay=0.5)
    master, first = start_settled(masters, app, 1, config=str(config))
    config.write_text(_GOOD_CONFIG.format(extra="workers = 'many'"), encoding="utf-8")
    master.hup()
    st = master.wait_status(roll_done(first["reloads"]), 10, "the abort")
    error = st["last_rollout"]["error"] or ""
    print(f"\n[bad config value] recorded error: {error!r}")
    assert st["last_rollout"]["result"] == "aborted", st
    # gunicorn itself says "Invalid value for workers: many" (on stderr, in the log)
    assert "workers" in error, error


# --------------------------------------------------------------------------- 2. hung boot


def test_hung_new_worker_aborts_on_ready_timeout_without_leaks(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    rolls, workers, timeout = scaled(20, 4), 2, 1.0
    app = make_app("wsgi")
    app.write("v1", boot_delay=0.3)
    master, first = start_settled(
        masters, app, workers, env={"ROLLOVER_READY_TIMEOUT": str(timeout)}
    )
    pids = sorted(w["pid"] for w in first["workers"])
    assert first["settings"]["ready_timeout"] == timeout, first
    # the new code never finishes importing
    app.write("hung", boot_delay=3600)
    fds_start, rss_start = fd_count(master.pid), rss_kib(master.pid)
    fds_warm = rss_warm = 0
    hung: list[int] = []
    durations: list[float] = []

    for i in range(rolls):
        before = master.status()
        assert before is not None
        at = master.hup()
        rolling = master.wait_status(
            lambda st, b=before["reloads"]: (
                st["reloads"] > b
                and (bool(booting_workers(st, st["generation"])) or roll_done(b)(st))
            ),
            10,
            f"roll {i + 1}: a hung worker booting",
        )
        hung += [w["pid"] for w in booting_workers(rolling, rolling["generation"])]
        st = master.wait_status(roll_done(before["reloads"]), 10 + timeout, f"roll {i + 1} abort")
        durations.append(time.monotonic() - at)
        last = st["last_rollout"]
        assert last["result"] == "aborted", st
        assert f"not READY within {timeout:g}s" in (last["error"] or ""), st
        # the hung worker is killed; the old workers serve on
        wait_only(master, pids, timeout=10)
        assert sorted(w["pid"] for w in ready_workers(st)) == pids, st
        if i == 0:
            fds_warm, rss_warm = fd_count(master.pid), rss_kib(master.pid)

    assert hung, "never saw a hung worker booting"
    wait_for(
        lambda: not any(pid_alive(p) for p in hung),
        10,
        what="every hung worker to be gone",
        on_timeout=lambda: f" alive: {[p for p in hung if pid_alive(p)]}",
    )
    fds_end, rss_end = fd_count(master.pid), rss_kib(master.pid)
    print(
        f"\n[hung boot] {rolls} aborted rolls, abort after {min(durations):.2f}-"
        f"{max(durations):.2f}s (ready timeout {timeout:g}s); master fds {fds_start} -> "
        f"{fds_warm} (after roll 1) -> {fds_end}; RSS {rss_start} -> {rss_warm} -> "
        f"{rss_end} KiB; children {master.worker_pids()}"
    )
    assert master.worker_pids() == pids
    assert fds_end <= fds_warm + 2, f"master fds grew {fds_warm} -> {fds_end}"
    assert fds_end <= fds_start + 4, f"master fds grew {fds_start} -> {fds_end}"
    assert master.wait_serving()["version"] == "v1"


# --------------------------------------------------------------------------- 3. crash after READY

_CRASHING_APP = '''\
"""New code that boots in {boot}s, reports READY, then dies: a thread exits the worker
{after}s later. With preload_app the module is imported in the master, so the boot delay
and the thread start in each forked worker instead, and only while this module is the
app the master holds (a rolled-back master holds the old one again)."""
import json
import os
import sys
import threading
import time

VERSION = {version!r}
BOOT = {boot!r}
PRELOAD = {preload!r}
_ME = sys.modules[__name__]


def _die():
    time.sleep({after!r})
    os._exit(1)


def _boot_and_arm():
    time.sleep(BOOT)
    threading.Thread(target=_die, daemon=True).start()


def _after_fork():
    if sys.modules.get(__name__) is _ME:
        _boot_and_arm()


if PRELOAD:
    os.register_at_fork(after_in_child=_after_fork)
else:
    _boot_and_arm()


def app(environ, start_response):
    body = json.dumps({{"pid": os.getpid(), "version": VERSION}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def write_crashing_app(
    app: AppCode, version: str, *, boot: float, after: float, preload: bool
) -> None:
    write_module(
        app, _CRASHING_APP.format(version=version, boot=boot, after=after, preload=preload), version
    )


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_new_worker_crashing_after_ready_mid_roll(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], preload: bool
) -> None:
    boot, workers, crash_after = 1.0, 3, 0.6
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    extra = ["--preload"] if preload else []
    # no canary: this is about a crash after some old workers were retired already (a
    # canary holds the roll, so its crash leaves every old worker in place)
    master, first = start_settled(masters, app, workers, extra_args=extra, env=NO_CANARY)
    old = sorted(w["pid"] for w in first["workers"])
    label = f"crash after READY, {'preload' if preload else 'no preload'}"

    # Every v2 worker boots in 1 s, reports READY (0.1-0.4 s after its import ends), and
    # exits 0.6 s after its import: the first one crashes after READY while the second,
    # spawned when the first was READY, is still booting (at least 0.4 s apart).
    write_crashing_app(app, "v2", boot=boot, after=crash_after, preload=preload)
    offset = len(master.log_text())
    with StatusSampler(master) as sampler:
        hup_at = master.hup()
        st = master.wait_status(
            lambda s: (
                roll_done(first["reloads"])(s)
                and (s["last_rollout"].get("rollback") or "") != "running"
            ),
            30,
            "the crash to abort the roll",
        )
        aborted_at = time.monotonic()
        last = st["last_rollout"]
        print(f"\n[{label}] roll ended {aborted_at - hup_at:.2f}s after HUP: {last}")
        assert last["result"] == "aborted", st
        assert "exited with code 1 after READY" in (last["error"] or ""), st
        if preload:
            # the master kept v1: it rolls back to one consistent generation
            final = master.wait_status(settled_with(workers), 20, "rolled back, settled")
            assert final["last_rollout"]["rollback"] == "succeeded", final
            assert {w["generation"] for w in final["workers"]} == {0}, final
            wait_only(master, [w["pid"] for w in final["workers"]])
            assert set(versions_answering(master)) == {"v1"}
        else:
            # The code on disk is broken: the old workers not retired yet keep serving,
            # missing slots are refilled (from the broken code) and the status says
            # `degraded` while fewer than N are READY. Watch it for a while.
            surviving_old = [w["pid"] for w in ready_workers(st, 0)]
            assert len(surviving_old) == workers - 1, st
            assert set(surviving_old) <= set(old), st
            deadline = time.monotonic() + 4.0
            wait_for(
                lambda: time.monotonic() >= deadline or not master.alive(),
                10,
                what="the observation window",
            )
            assert master.alive(), master.tail()
            for pid in surviving_old:
                assert pid in master.worker_pids(), f"old worker {pid} is gone{master.tail()}"
            assert "v1" in versions_answering(master)
    after = [s for t, s in sampler.samples if t >= aborted_at]
    log = log_since(master, offset)
    print(
        f"[{label}] after the abort: {log.count('exited with code 1')} worker crashes, "
        f"states {dict(Counter(s['state'] for s in after))}, max serving+booting "
        f"{sampler.max_serving_or_booting()}"
    )
    assert master.alive(), master.tail()
    assert sampler.max_serving_or_booting() <= workers + 1
    if not preload:
        assert all(s["state"] != "rolling" for s in after), "a roll restarted by itself"
        assert "degraded" in {s["state"] for s in after}, sampler.states()

    # a good deploy recovers
    app.write("v3", boot_delay=boot)
    cli = run_cli("reload", "--pidfile", str(master.pidfile), "--wait", "--timeout", "60")
    assert cli.returncode == 0, f"{cli.stdout}{cli.stderr}{master.tail()}"
    final = master.wait_status(settled_with(workers), 30, "settled on v3")
    assert_settled_on(master, final, workers)
    assert set(versions_answering(master)) == {"v3"}


def test_crash_loop_after_ready_is_backed_off(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    boot, workers = 0.5, 2
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    # no canary: with one, the crashing canary aborts the roll and leaves no slot to refill
    master, first = start_settled(masters, app, workers, env=NO_CANARY)
    # READY comes 0.1-0.4 s after the import ends: 0.8 s later is surely after READY
    write_crashing_app(app, "v2", boot=boot, after=0.8, preload=False)
    offset = len(master.log_text())
    master.hup()
    master.wait_status(roll_done(first["reloads"]), 20, "the crash to abort the roll")
    # In the next 8 s the refilled slot keeps crashing soon after READY. Like a worker
    # that fails to boot, it must be respawned with growing delays (1 s, 2 s, 4 s, ...):
    # (counting the roll's own crash or two) 4 crashes at most, where respawning at once
    # crashes every ~1.3 s per slot.
    deadline = time.monotonic() + 8.0
    wait_for(lambda: time.monotonic() >= deadline or not master.alive(), 12, what="8 s")
    assert master.alive(), master.tail()
    log = log_since(master, offset)
    crashes = len(re.findall(r"Worker \(pid:\d+\) exited with code 1", log))
    delays = [float(x) for x in re.findall(r"next respawn in ([0-9.]+)s", log)]
    print(f"\n[crash loop] in 8 s: {crashes} crashes after READY, respawn delays {delays}")
    assert "before READY" not in log, f"a crash came before READY: fix the test{master.tail()}"
    assert crashes <= 4, f"{crashes} crash-respawns in 8 s: not backed off{master.tail(30)}"
    assert len(delays) >= 2 and delays[-1] > delays[0], delays


# --------------------------------------------------------------------------- 4. old worker killed


def test_old_worker_sigkilled_mid_roll_roll_completes(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    boot, workers = 1.0, 3
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, first = start_settled(masters, app, workers)
    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(0.3, min_requests=CLIENTS)
        app.write("v2", boot_delay=boot)
        hup_at = master.hup()
        mid = master.wait_status(
            lambda st: (
                st["state"] == "rolling"
                and bool(booting_workers(st, 1))
                and len(ready_workers(st, 0)) >= 2
            ),
            15,
            "mid-roll: a new worker booting, old ones ready",
        )
        victim = ready_workers(mid, 0)[-1]["pid"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        final = master.wait_status(
            lambda st: roll_done(first["reloads"])(st) and settled_with(workers)(st),
            40,
            "the roll to end, settled",
        )
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * CLIENTS, after=done_at)
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label="old worker SIGKILLed"))
    # a request in flight on the killed worker fails; its client may notice late (CPU
    # contention), so "at the kill" is a window of 2 s, and at most one per client
    at_kill = [
        r
        for r in load.records()
        if not r.ok and killed_at - 0.1 <= r.end and r.start <= killed_at + 2.0
    ]
    failed_elsewhere = [r for r in load.records() if not r.ok and r not in at_kill]
    print(
        f"[old worker SIGKILLed] killed {victim}; failed at the kill: "
        f"{[r.kind for r in at_kill]}, elsewhere: {len(failed_elsewhere)}; "
        f"final {final['last_rollout']}"
    )
    assert final["last_rollout"]["result"] == "succeeded", final
    assert final["generation"] == 1, final
    assert_settled_on(master, final, workers)
    assert set(load.versions_after(done_at)) == {"v2"}, load.describe()
    # requests in flight on the killed worker may fail; nothing else may
    assert failed_elsewhere == [], load.describe()
    assert len(at_kill) <= CLIENTS, load.describe()


# --------------------------------------------------------------------------- 5. broken disk


def test_respawns_back_off_while_the_code_on_disk_is_broken(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    boot, workers = 1.0, 3
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, first = start_settled(masters, app, workers, env={"ROLLOVER_BACKOFF_MAX": "8"})
    with (
        Load(master.port, clients=CLIENTS, keepalive=True) as load,
        StatusSampler(master) as sampler,
    ):
        load.run_for(0.3, min_requests=CLIENTS)
        app.write("v2", boot_delay=0.2, error="v2 cannot import")
        master.hup()
        st = master.wait_status(roll_done(first["reloads"]), 15, "the bad roll to abort")
        assert st["last_rollout"]["result"] == "aborted", st
        assert "v2 cannot import" in st["last_rollout"]["error"], st
        # make a slot go missing: an old worker exits (gracefully, so no request fails)
        offset = len(master.log_text())
        victim = ready_workers(st, 0)[0]["pid"]
        os.kill(victim, signal.SIGTERM)
        degraded = master.wait_status(
            lambda s: s["state"] == "degraded" and len(ready_workers(s)) == workers - 1,
            10,
            "degraded",
        )
        delays = wait_for(
            lambda: (
                (
                    d := [
                        float(x)
                        for x in re.findall(
                            r"next respawn in ([0-9.]+)s", log_since(master, offset)
                        )
                    ]
                )
                and len(d) >= 3
                and d
            ),
            30,
            what="three failed respawns",
            on_timeout=master.tail,
        )
        print(
            f"\n[broken disk] degraded: {degraded['state']}, "
            f"{len(ready_workers(degraded))}/{workers} ready; respawn delays {delays}"
        )
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        assert master.alive(), master.tail()
        assert len(master.worker_pids()) <= workers, master.worker_pids()
        # a good deploy arrives
        app.write("v3", boot_delay=boot)
        before = master.status()
        assert before is not None
        hup_at = master.hup()
        final = master.wait_status(
            lambda s: roll_done(before["reloads"])(s) and settled_with(workers)(s),
            40,
            "recovery on v3",
        )
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * CLIENTS, after=done_at)
    lines = [ln for ln in master.log_text()[offset:].splitlines() if "next respawn" in ln]
    print("[broken disk] log:\n  " + "\n  ".join(lines[:4]))
    print(figures(load, hup_at=hup_at, done_at=done_at, label="broken disk recovery"))
    print(f"[broken disk] states sampled: {dict(sampler.states())}")
    assert final["last_rollout"]["result"] == "succeeded", final
    assert_settled_on(master, final, workers)
    problems = check_fault_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v3")
    assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"


# --------------------------------------------------------------------------- 6. HUP storm


def test_hup_storm_one_succeeded_roll_within_surge(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    boot, workers, surge, hups = 1.0, 3, 1, 10
    app = make_app("wsgi")
    app.write("v0", boot_delay=boot)
    master, first = start_settled(masters, app, workers)
    with (
        Load(master.port, clients=CLIENTS, keepalive=True) as load,
        StatusSampler(master) as sampler,
    ):
        load.run_for(0.3, min_requests=CLIENTS)
        hup_at = time.monotonic()
        for i in range(1, hups + 1):
            app.write(f"v{i}", boot_delay=boot)
            master.hup()
            time.sleep(0.09)  # the storm's pacing (stimulus): 10 HUPs within 1 s
        storm = time.monotonic() - hup_at
        final = master.wait_status(
            lambda s: roll_done(first["reloads"])(s) and settled_with(workers)(s),
            60,
            "the storm to settle",
        )
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * CLIENTS, after=done_at)
    records = sampler.last_rollouts()
    results = Counter(r["result"] for r in records)
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label="HUP storm"))
    print(
        f"[HUP storm] {hups} HUPs in {storm:.2f}s; reloads {final['reloads']}, generation "
        f"{final['generation']}; results seen {dict(results)}; max serving+booting "
        f"{sampler.max_serving_or_booting()} (cap {workers + surge}); "
        f"{len(sampler.samples)} samples"
    )
    assert master.alive()
    last = final["last_rollout"]
    assert last["result"] == "succeeded", final
    assert last["generation"] == final["generation"], final
    assert all(r["result"] == "superseded" for r in records[:-1]), records
    assert final["reloads"] - first["reloads"] == final["generation"], final
    assert sampler.max_serving_or_booting() <= workers + surge
    assert_settled_on(master, final, workers)
    assert set(versions_answering(master)) == {f"v{hups}"}
    problems = check_fault_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version=f"v{hups}")
    assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"


# --------------------------------------------------------------------------- 7. stop signals


@pytest.mark.interpreters(sig=signal.SIGTERM)
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"]
)
def test_stop_signal_mid_roll_stops_promptly_without_orphans(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], sig: signal.Signals
) -> None:
    boot, workers, graceful = 1.5, 3, 4
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, _ = start_settled(
        masters, app, workers, extra_args=["--graceful-timeout", str(graceful)]
    )
    app.write("v2", boot_delay=boot)
    master.hup()
    # Mid-roll, with the booting worker at least 0.3 s old: a worker signalled in its first
    # milliseconds, before gunicorn's Worker.init_signals, still runs the master's
    # inherited handlers, ignores the stop and is SIGKILLed at graceful_timeout (as in
    # stock gunicorn); that window is not what this test measures.
    mid = master.wait_status(
        lambda st: (
            st["state"] == "rolling"
            and bool(ready_workers(st, 1))
            and any(time.time() - parse_iso(w["since"]) >= 0.3 for w in booting_workers(st, 1))
        ),
        15,
        "mid-roll: a new worker READY and one booting",
    )
    children = master.worker_pids()
    members = group_members(master.pid)
    sent = time.monotonic()
    os.kill(master.pid, sig)
    code = master.wait_exit(graceful + 10)
    took = time.monotonic() - sent
    with contextlib.suppress(TimeoutError):  # the kernel may take a moment to reap
        wait_for(
            lambda: not master.leftover_workers() and not group_members(master.pid),
            2,
            what="no process left",
        )
    left_children, left_group = master.leftover_workers(), group_members(master.pid)
    states = [(w["pid"], w["generation"], w["state"]) for w in mid["workers"]]
    print(
        f"\n[{sig.name} mid-roll] workers {states}; exit {code} after {took:.2f}s; "
        f"group before {members}; leftovers {left_children} / {left_group}"
    )
    assert code == 0, master.tail()
    # TERM: graceful, bounded by graceful_timeout; INT/QUIT: fast (well under it)
    limit = graceful + exit_deadline(3.0) if sig == signal.SIGTERM else graceful - 0.5
    assert took <= limit, f"{sig.name}: stopped after {took:.2f}s > {limit}s{master.tail()}"
    assert left_children == [], f"orphaned workers {left_children} (children were {children})"
    assert left_group == [], f"processes left in the master's group: {left_group}"
    assert not master.pidfile.exists(), "pidfile left behind"


# --------------------------------------------------------------------------- 8. worker count


class ConfigWorkersMaster(Master):
    """A master without `-w` on its command line, so the config file's `workers` counts."""

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("-w")
        return argv[:i] + argv[i + 2 :]


class ControlSocketMaster(Master):
    """A master with gunicorn 27's control socket on (`gunicornc worker add/remove`)."""

    @property
    def control_socket(self) -> Path:
        return self.workdir / "gunicorn.ctl"

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--no-control-socket")
        return [*argv[:i], "--control-socket", str(self.control_socket), *argv[i + 1 :]]

    def control(self, command: str) -> str:
        # gunicorn 27 stops its control server around every fork and starts it again (the
        # socket path is unlinked meanwhile): a roll forks often, so retry a refused connect
        for _ in range(20):
            cp = subprocess.run(
                [str(GUNICORN.parent / "gunicornc"), "-s", str(self.control_socket), "-c",
                 command],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if cp.returncode == 0 or "Failed to connect" not in cp.stdout + cp.stderr:
                break
            time.sleep(0.1)
        assert cp.returncode == 0, f"gunicornc {command!r}: {cp.stdout}{cp.stderr}{self.tail()}"
        return cp.stdout.strip()


@pytest.fixture
def custom_masters(tmp_path: Path) -> Iterator[Callable[..., Master]]:
    """`custom_masters(cls, app, **kwargs)`: like `masters`, with a Master subclass."""
    started: list[Master] = []

    def start(cls: type[Master], app: AppCode, **kwargs: Any) -> Master:
        workdir = tmp_path / f"custom{len(started) + 1}"
        workdir.mkdir()
        master = cls(workdir, app, **kwargs)
        started.append(master)
        return master.start()

    yield start
    for master in started:
        master.stop()
        if master.orphans:
            print(f"master {master.pid} left workers {master.orphans}")


@pytest.mark.parametrize("change", ["TTIN", "TTOU", "worker add", "worker remove"])
def test_worker_count_change_mid_roll_final_count_is_the_changed_one(
    make_app: Callable[..., AppCode], custom_masters: Callable[..., Master], change: str
) -> None:
    boot, workers = 1.0, 3
    expected = workers + 1 if change in ("TTIN", "worker add") else workers - 1
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    cls = ControlSocketMaster if change.startswith("worker") else Master
    master, first = start_settled(partial(custom_masters, cls), app, workers)
    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(0.3, min_requests=CLIENTS)
        app.write("v2", boot_delay=boot)
        hup_at = master.hup()
        master.wait_status(
            lambda st: (
                st["state"] == "rolling"
                and bool(ready_workers(st, 1))
                and bool(booting_workers(st, 1))
            ),
            15,
            "mid-roll",
        )
        if isinstance(master, ControlSocketMaster):
            answer = master.control(f"{change} 1")
            print(f"\n[{change} mid-roll] gunicornc: {' '.join(answer.split())}")
        else:
            os.kill(master.pid, getattr(signal, f"SIG{change}"))
        final = master.wait_status(
            lambda s: (
                roll_done(first["reloads"])(s)
                and settled_with(expected)(s)
                and s["workers_target"] == expected
            ),
            40,
            f"{expected} workers on the new generation",
        )
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * CLIENTS, after=done_at)
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label=f"{change} mid-roll"))
    print(f"[{change} mid-roll] final {final['last_rollout']}")
    assert final["last_rollout"]["result"] == "succeeded", final
    assert_settled_on(master, final, expected)
    problems = check_fault_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v2")
    assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"


def test_hup_with_config_changing_workers_ends_with_the_new_count(
    make_app: Callable[..., AppCode], custom_masters: Callable[..., Master], tmp_path: Path
) -> None:
    boot = 1.0
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(_GOOD_CONFIG.format(extra="workers = 2"), encoding="utf-8")
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, first = start_settled(
        partial(custom_masters, ConfigWorkersMaster), app, 2, config=str(config)
    )
    seen = [first["workers_target"]]
    with Load(master.port, clients=CLIENTS, keepalive=True) as load:
        load.run_for(0.3, min_requests=CLIENTS)
        for count, version in ((3, "v2"), (1, "v3")):
            config.write_text(_GOOD_CONFIG.format(extra=f"workers = {count}"), encoding="utf-8")
            app.write(version, boot_delay=boot)
            before = master.status()
            assert before is not None
            hup_at = master.hup()
            final = master.wait_status(
                lambda s, b=before["reloads"], c=count: roll_done(b)(s) and settled_with(c)(s),
                40,
                f"{count} workers on {version}",
            )
            done_at = wait_only(master, [w["pid"] for w in final["workers"]])
            load.wait_requests(2 * CLIENTS, after=done_at)
            seen.append(final["workers_target"])
            assert final["last_rollout"]["result"] == "succeeded", final
            assert_settled_on(master, final, count)
            assert set(load.versions_after(done_at)) == {version}, load.describe()
    print(f"\n[config workers] targets {seen}; {load.describe()}")
    problems = check_fault_roll(load, hup_at=hup_at, done_at=done_at, boot=boot, version="v3")
    assert problems == [], f"{problems}\n{load.describe()}{master.tail()}"


# --------------------------------------------------------------------------- 9. first start


@pytest.mark.parametrize("fault", ["raises-at-import", "no-such-module"])
def test_broken_app_at_first_start_exits_like_gunicorn(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], fault: str
) -> None:
    """Stock gunicorn 27.0.1 measured: exit 3, "Reason: Worker failed to boot."."""
    app = make_app("wsgi")
    if fault == "raises-at-import":
        app.write("v1", boot_delay=0.2, error="cannot start: DATABASE_URL missing")
        master, cause = masters(app, workers=2), "RuntimeError: cannot start: DATABASE_URL missing"
    else:
        app.write("v1", boot_delay=0.2)
        master, cause = masters(app, workers=2, app_spec="nosuchmod:app"), "nosuchmod"
    code = master.wait_exit(30)
    log = master.log_text()
    reason = [ln for ln in log.splitlines() if "Reason:" in ln]
    print(f"\n[first start, {fault}] exit {code}; {reason[-1:]}")
    assert code in (3, 4), f"exit {code}{master.tail()}"
    assert reason and cause in reason[-1], master.tail()
    # gunicorn's own words first: tools (and uvicorn-worker's tests) grep for them
    words = "Worker failed to boot." if code == 3 else "App failed to load."
    assert f"Reason: {words}" in reason[-1], master.tail()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: master.leftover_workers() == [], 3, what="workers gone")
    assert master.leftover_workers() == [], master.leftover_workers()
    assert group_members(master.pid) == []


# --------------------------------------------------------------------------- 10. reuse_port


def reuse_port_roll(
    make_app: Callable[..., AppCode], masters: Callable[..., Master], keepalive: bool
) -> tuple[Master, Load, Status, float, float]:
    """A roll of 3 workers with `--reuse-port` (each worker its own listening socket)."""
    boot, workers = 1.0, 3
    app = make_app("wsgi")
    app.write("v1", boot_delay=boot)
    master, first = start_settled(masters, app, workers, extra_args=["--reuse-port"])
    with Load(master.port, clients=CLIENTS, keepalive=keepalive) as load:
        load.run_for(0.5, min_requests=CLIENTS)
        app.write("v2", boot_delay=boot)
        hup_at = master.hup()
        final = master.wait_status(
            lambda st: roll_done(first["reloads"])(st) and settled_with(workers)(st),
            30,
            "the roll to end, settled",
        )
        done_at = wait_only(master, [w["pid"] for w in final["workers"]])
        load.wait_requests(2 * CLIENTS, after=done_at)
    label = f"reuse_port {'keep-alive' if keepalive else 'new-conn'}"
    print("\n" + figures(load, hup_at=hup_at, done_at=done_at, label=label))
    assert final["last_rollout"]["result"] == "succeeded", final
    assert_settled_on(master, final, workers)
    return master, load, final, hup_at, done_at


def test_reuse_port_roll_keepalive_failures_measured(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    """Measured on 2 cores, 5 runs: 0, 0, 1, 1, 2 ConnectionResetError out of ~2700
    requests. A client reconnecting after a retiring worker's `Connection: close` can land
    in that worker's own accept queue, which is reset when it closes its socket. Not
    asserted 0 (it is not): bounded, and reported."""
    _, load, _, _, done_at = reuse_port_roll(make_app, masters, keepalive=True)
    failed = Counter(load.failed())
    print(
        f"[reuse_port keep-alive] failed requests during the roll: {sum(failed.values())} "
        f"{dict(failed)} of {load.total}"
    )
    # connection-level losses only, and a handful: a sanity bound, not a promise
    assert set(failed) <= {"ConnectionResetError", "RemoteDisconnected", "BrokenPipeError"}, (
        load.describe()
    )
    assert sum(failed.values()) <= 20, load.describe()
    # (stalls of ~boot seconds are the new-connections test's subject)
    assert set(load.versions_after(done_at)) == {"v2"}, load.describe()


@pytest.mark.xfail(
    strict=True,
    reason="BUG: with reuse_port a booting worker listens on its "
    "own socket before its app is loaded: new connections wait ~boot seconds",
)
def test_reuse_port_roll_new_connections_no_stall(
    make_app: Callable[..., AppCode], masters: Callable[..., Master]
) -> None:
    _, load, _, hup_at, done_at = reuse_port_roll(make_app, masters, keepalive=False)
    print(
        f"[reuse_port new-conn] failed {len(load.failed())}, from the HUP on: "
        f"{load.latency_window(hup_at)}"
    )
    problems = check_roll(load, hup_at=hup_at, done_at=done_at, boot=1.0, version="v2")
    assert problems == [], f"{problems}\n{load.describe()}"
