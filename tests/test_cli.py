"""The `rollover` command line: the pure `follow` logic, then the CLI as a real subprocess.

A fake gunicorn master is a small Python process whose command line mentions "gunicorn";
on HUP it records a marker and, depending on its mode, rewrites the status file the way
the real master would (reloads + 1, a rollout, then a last_rollout).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import exit_deadline

from rollover import __version__
from rollover.cli import age, render_status
from rollover.client import Done, Progress, follow
from rollover.status import iso, write_status

NOW = 1_700_000_000.0


def status_dict(pid: int = 4242, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": 1,
        "pid": pid,
        "rollover": __version__,
        "gunicorn": "27.0.1",
        "updated": iso(NOW),
        "generation": 1,
        "state": "idle",
        "workers_target": 2,
        "reloads": 0,
        "workers": [
            {"pid": pid + 1, "generation": 1, "state": "ready", "since": iso(NOW - 12)},
            {"pid": pid + 2, "generation": 1, "state": "ready", "since": iso(NOW - 12)},
        ],
        "rollout": None,
        "last_rollout": None,
        "status_path": "/tmp/x.rollover.json",
        "settings": {},
    }
    data.update(overrides)
    return data


def rollout(generation: int, reload: int, started: float, new_ready: int = 1) -> dict[str, Any]:
    return {"generation": generation, "reload": reload, "started": iso(started),
            "new_ready": new_ready, "target": 2}


def last(generation: int, reload: int, started: float, result: str,
         error: str | None = None) -> dict[str, Any]:
    return {"generation": generation, "reload": reload, "result": result, "error": error,
            "min_ready": 2, "started": iso(started), "finished": iso(started + 4.2)}


# --- follow (pure) -------------------------------------------------------------------------


def test_follow_hup_not_processed_yet() -> None:
    assert follow(status_dict(reloads=3), before=3, sent_at=NOW) is None


def test_follow_in_progress() -> None:
    status = status_dict(reloads=4, generation=2, state="rolling",
                         rollout=rollout(2, 4, NOW + 0.01, new_ready=1))
    assert follow(status, before=3, sent_at=NOW) == Progress(generation=2, new_ready=1, target=2)


def test_follow_succeeded() -> None:
    record = last(2, 4, NOW + 0.01, "succeeded")
    status = status_dict(reloads=4, generation=2, last_rollout=record)
    assert follow(status, before=3, sent_at=NOW) == Done("succeeded", record)


def test_follow_aborted() -> None:
    record = last(2, 4, NOW + 0.01, "aborted", error="worker failed to boot")
    status = status_dict(reloads=4, generation=2, state="degraded", last_rollout=record)
    assert follow(status, before=3, sent_at=NOW) == Done("aborted", record)


def test_follow_superseded_then_succeeded() -> None:
    superseded = last(2, 4, NOW + 0.01, "superseded")
    status = status_dict(reloads=5, generation=3, state="rolling", last_rollout=superseded,
                         rollout=rollout(3, 5, NOW + 0.5))
    assert follow(status, before=3, sent_at=NOW) == Progress(3, 1, 2)
    status = status_dict(reloads=5, generation=3, last_rollout=superseded, rollout=None)
    assert follow(status, before=3, sent_at=NOW) is None  # the next roll is not recorded yet
    record = last(3, 5, NOW + 0.5, "succeeded")
    status = status_dict(reloads=5, generation=3, last_rollout=record)
    assert follow(status, before=3, sent_at=NOW) == Done("succeeded", record)


def test_follow_ignores_a_stale_earlier_roll() -> None:
    # reload > before (a burst counted late, or someone else's HUP) but it started well
    # before we signalled: not ours, keep waiting.
    status = status_dict(reloads=4, generation=2, last_rollout=last(2, 4, NOW - 10, "aborted"))
    assert follow(status, before=3, sent_at=NOW) is None
    status = status_dict(reloads=4, generation=2, state="rolling", rollout=rollout(2, 4, NOW - 10))
    assert follow(status, before=3, sent_at=NOW) is None


def test_follow_tolerates_clock_slack() -> None:
    record = last(2, 4, NOW - 0.3, "succeeded")
    assert follow(status_dict(reloads=4, last_rollout=record), 3, NOW) == Done("succeeded", record)


def test_follow_our_finished_roll_wins_over_a_later_one() -> None:
    record = last(2, 4, NOW + 0.1, "succeeded")
    status = status_dict(reloads=5, generation=3, state="rolling", last_rollout=record,
                         rollout=rollout(3, 5, NOW + 5))
    assert follow(status, before=3, sent_at=NOW) == Done("succeeded", record)


def test_follow_ignores_old_records_and_junk() -> None:
    old = last(1, 3, NOW + 1, "succeeded")  # reload == before: a roll from before our HUP
    assert follow(status_dict(reloads=3, last_rollout=old), 3, NOW) is None
    for junk in ("x", [], {}, {"reload": "4", "started": iso(NOW + 1)},
                 {"reload": 4, "started": "yesterday"}, {"reload": True, "started": iso(NOW)}):
        assert follow(status_dict(reloads=4, rollout=junk, last_rollout=junk), 3, NOW) is None


def test_age_and_render() -> None:
    assert [age(iso(NOW - s), NOW) for s in (0, 12, 305, 3 * 3600 + 300, 2 * 86400)] == [
        "0s", "12s", "5m05s", "3h05m", "2d00h"]
    assert age("garbage", NOW) == "?"
    status = status_dict(generation=3, last_rollout=last(3, 2, NOW - 10, "succeeded"))
    text = render_status(status, NOW)
    assert text.splitlines()[0] == "master 4242 · generation 3 · idle · 2/2 workers ready"
    assert "last rollout: generation 3 succeeded in 4.2s (min ready 2)" in text
    assert "4243" in text and "12s" in text


def test_render_names_a_usr2_handoff_as_the_last_rollout() -> None:
    """A master started by a USR2 handoff (issue #23): the handoff, with its release, is
    the last rollout; the old master's last rollout comes after it; a later roll of its
    own is the last again."""
    before = last(3, 2, NOW - 100, "succeeded")
    handoff = {"from_pid": 4100, "generation": 4, "at": iso(NOW - 30),
               "release": "/srv/app/releases/v5"}
    text = render_status(status_dict(generation=4, last_rollout=before, handoff=handoff), NOW)
    assert ("last rollout: USR2 handoff from master 4100 to generation 4 "
            "(/srv/app/releases/v5), 30s ago") in text
    assert "before it: generation 3 succeeded in 4.2s (min ready 2)" in text
    later = last(5, 3, NOW - 5, "succeeded")
    text = render_status(status_dict(generation=5, last_rollout=later, handoff=handoff), NOW)
    assert "last rollout: generation 5 succeeded" in text and "USR2" not in text


# --- the CLI as a subprocess ---------------------------------------------------------------

FAKE_MASTER = r"""
import os, signal, sys, time
from rollover.status import iso, read_status, write_status

directory, mode = sys.argv[2], sys.argv[3]
path = os.path.join(directory, "gunicorn.rollover.json")
hups = []
signal.signal(signal.SIGHUP, lambda *_: hups.append(1))
open(os.path.join(directory, "ready"), "w").close()

def roll(s, result, error=None, steps=2):
    s["reloads"] += 1
    s["generation"] += 1
    current = {"generation": s["generation"], "reload": s["reloads"],
               "started": iso(time.time()), "new_ready": 0, "target": 2}
    s.update(state="rolling", rollout=current)
    write_status(path, s)
    for n in range(1, steps + 1):
        time.sleep(0.1)
        current["new_ready"] = n
        write_status(path, s)
    if result is None:
        return
    time.sleep(0.1)
    s["last_rollout"] = dict(current, result=result, error=error, min_ready=2,
                             finished=iso(time.time()))
    s.update(state="idle", rollout=None)
    write_status(path, s)

handled = 0
while True:
    time.sleep(0.01)
    if len(hups) == handled:
        continue
    handled = len(hups)
    with open(os.path.join(directory, "hup"), "a") as fh:
        fh.write("HUP\n")
    if mode == "die":
        sys.exit(0)
    if mode == "succeed":
        roll(read_status(path), "succeeded")
    elif mode == "succeed-at-once":  # the last READY and the success in one write
        roll(read_status(path), "succeeded", steps=0)
    elif mode == "abort":
        roll(read_status(path), "aborted", "worker failed to boot", steps=1)
    elif mode == "hang":
        roll(read_status(path), None, steps=1)
    elif mode == "supersede":
        roll(read_status(path), "superseded", steps=1)
        roll(read_status(path), "succeeded")
"""


def run_cli(*args: str, timeout: float = 30, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "ROLLOVER_PIDFILE"}
    return subprocess.run([sys.executable, "-m", "rollover.cli", *args],
                          capture_output=True, text=True, timeout=exit_deadline(timeout),
                          env={**environ, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rollover: "), result.stderr
    return lines[0]


def wait_for(path: Path, timeout: float = 15) -> bool:
    """Whether `path` appears within `timeout` (a process starting and acting: scaled by
    TEST_TIME_SCALE)."""
    deadline = time.monotonic() + exit_deadline(timeout)
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def fake_master(tmp_path: Path, procs: list[subprocess.Popen[bytes]]
                ) -> Callable[..., subprocess.Popen[bytes]]:
    """Start a fake master in `mode`, write the pidfile and (unless told not to) a status."""

    def start(mode: str = "none", status: bool = True) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_MASTER, "gunicorn-fake",
                                 str(tmp_path), mode])
        procs.append(proc)
        assert wait_for(tmp_path / "ready"), "fake master did not start"
        (tmp_path / "gunicorn.pid").write_text(f"{proc.pid}\n")
        if status:
            write_status(str(tmp_path / "gunicorn.rollover.json"),
                         status_dict(proc.pid, updated=iso(time.time())))
        return proc

    return start


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["status"],
    ["status", "--pidfile"],
    ["reload", "--pidfile", "x", "--bogus"],
    ["reload", "--pidfile", "x", "--wait", "--timeout", "abc"],
    ["reload", "--pidfile", "x", "--wait", "--timeout", "-1"],
    ["reload", "--pidfile", "x", "--wait", "--timeout", "nan"],
    ["reload", "--pidfile", "x", "--wait", "--timeout", "0"],
    ["reload", "--pidfile", "x", "--timeout", "5"],
])
def test_bad_usage_is_one_line_exit_2(args: list[str]) -> None:
    one_error_line(run_cli(*args))


def test_version_and_help() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rollover {__version__}"
    result = run_cli("reload", "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--timeout" in result.stdout


def test_missing_pidfile(tmp_path: Path) -> None:
    line = one_error_line(run_cli("reload", "--pidfile", str(tmp_path / "nope.pid")))
    assert line == f"rollover: pidfile {tmp_path / 'nope.pid'}: no such file or directory"


@pytest.mark.parametrize("content", ["", "abc\n", "0\n", "-1\n", "12.5\n"])
def test_garbage_pidfile(tmp_path: Path, content: str) -> None:
    # "0" and "-1" matter most: kill(0, HUP) would hit our own process group.
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(content)
    assert f"pidfile {pidfile}:" in one_error_line(run_cli("reload", "--pidfile", str(pidfile)))


def test_stale_pidfile(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(f"{proc.pid}\n")
    line = one_error_line(run_cli("reload", "--pidfile", str(pidfile)))
    assert line == f"rollover: stale pidfile: no process {proc.pid}"


def test_not_a_gunicorn_process(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    procs.append(sleeper)
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    # Even a status file naming it does not make it a master.
    write_status(str(tmp_path / "gunicorn.rollover.json"), status_dict(sleeper.pid))
    for command in ("reload", "status"):
        line = one_error_line(run_cli(command, "--pidfile", str(pidfile)))
        assert line == f"rollover: process {sleeper.pid} is not a gunicorn master"
    time.sleep(0.05)
    assert sleeper.poll() is None  # never signalled


def test_no_status_file(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master(status=False)
    line = one_error_line(run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid")))
    assert "no status file at" in line
    assert not (tmp_path / "hup").exists()


def test_corrupt_status_file(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master(status=False)
    (tmp_path / "gunicorn.rollover.json").write_text('{"schema": 1, "pid": ')
    for command in ("status", "reload"):
        line = one_error_line(run_cli(command, "--pidfile", str(tmp_path / "gunicorn.pid")))
        assert "is corrupt" in line
    assert not (tmp_path / "hup").exists()


def test_status_file_of_another_master(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    proc = fake_master(status=False)
    write_status(str(tmp_path / "gunicorn.rollover.json"), status_dict(proc.pid + 100000))
    line = one_error_line(run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid")))
    assert line == (f"rollover: master {proc.pid} is not running rollover "
                    f"(status file names pid {proc.pid + 100000})")
    assert not (tmp_path / "hup").exists()


def test_status_json_and_human(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    proc = fake_master()
    pidfile = str(tmp_path / "gunicorn.pid")
    result = run_cli("status", "--pidfile", pidfile, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pid"] == proc.pid and data["workers_target"] == 2
    result = run_cli("status", "--pidfile", pidfile)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"master {proc.pid} · generation 1 · idle · 2/2 workers ready"
    assert "no rollout yet" in lines
    assert any(line.split()[:3] == [str(proc.pid + 1), "1", "ready"] for line in lines)


def test_explicit_status_path(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master()
    moved = tmp_path / "elsewhere.json"
    (tmp_path / "gunicorn.rollover.json").rename(moved)
    result = run_cli("status", "--pidfile", str(tmp_path / "gunicorn.pid"),
                     "--status", str(moved), "--json")
    assert result.returncode == 0, result.stderr


def test_reload_sends_hup(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    proc = fake_master()
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sent HUP to master {proc.pid}\n"
    assert wait_for(tmp_path / "hup")
    assert proc.poll() is None


def test_reload_wait_succeeded(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master("succeed")
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"), "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("rolled out generation 2 in ")
    assert result.stdout.rstrip().endswith("(min ready 2)")


def test_reload_wait_aborted(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master("abort")
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"), "--wait")
    assert result.returncode == 1, result
    assert result.stderr == "rollover: rollout of generation 2 aborted: worker failed to boot\n"


def test_reload_wait_superseded_then_succeeded(tmp_path: Path,
                                               fake_master: Callable[..., Any]) -> None:
    fake_master("supersede")
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"), "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("rolled out generation 3 in ")


def test_reload_wait_timeout(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master("hang")
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"),
                     "--wait", "--timeout", "1")
    assert result.returncode == 3, result
    assert "1/2 workers on generation 2" in result.stdout.splitlines()
    assert result.stderr == ("rollover: timed out after 1s waiting for the roll; "
                             "state: rolling, 1/2 on generation 2; the roll carries on in "
                             "the master (`rollover status` shows it)\n")


def test_reload_wait_master_exits(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    # The fake stays an unreaped zombie (our child): the CLI must still see it as gone.
    proc = fake_master("die")
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"), "--wait")
    line = one_error_line(result)
    assert line == f"rollover: master {proc.pid} exited while waiting for the roll"


def test_interrupt_exits_130(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    fake_master("none")  # takes the HUP and never rolls
    cli = subprocess.Popen([sys.executable, "-m", "rollover.cli", "reload", "--pidfile",
                            str(tmp_path / "gunicorn.pid"), "--wait"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(tmp_path / "hup")
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=exit_deadline(30))
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130 and "Traceback" not in stderr
    assert os.path.exists(tmp_path / "hup")


@pytest.mark.parametrize("mode", ["succeed", "succeed-at-once"])
def test_reload_wait_prints_the_final_progress_line(tmp_path: Path, mode: str,
                                                    fake_master: Callable[..., Any]) -> None:
    fake_master(mode)
    result = run_cli("reload", "--pidfile", str(tmp_path / "gunicorn.pid"), "--wait")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2] == "2/2 workers on generation 2", lines
    assert lines[-1].startswith("rolled out generation 2 in "), lines
    assert lines.count("2/2 workers on generation 2") == 1, lines


def test_pidfile_from_the_environment(tmp_path: Path, fake_master: Callable[..., Any]) -> None:
    proc = fake_master("succeed")
    env = {"ROLLOVER_PIDFILE": str(tmp_path / "gunicorn.pid")}
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == proc.pid
    result = run_cli("reload", "--wait", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"sent HUP to master {proc.pid}"
    # an explicit --pidfile wins over the environment
    env = {"ROLLOVER_PIDFILE": str(tmp_path / "other.pid")}
    result = run_cli("status", "--pidfile", str(tmp_path / "gunicorn.pid"), env=env)
    assert result.returncode == 0, result.stderr
    result = run_cli("reload", "--help", env=env)
    assert "$ROLLOVER_PIDFILE" in result.stdout and "other.pid" in result.stdout


@pytest.mark.parametrize("command", ["status", "reload"])
def test_missing_pidfile_option_points_to_the_subcommand_help(command: str) -> None:
    line = one_error_line(run_cli(command))
    assert "--pidfile (or $ROLLOVER_PIDFILE)" in line, line
    assert line.endswith(f"(see 'rollover {command} --help')"), line


def test_deploy_without_pidfile_points_to_rollover_toml(tmp_path: Path) -> None:
    """`deploy` may take its pidfile from <root>/rollover.toml (issue #23)."""
    line = one_error_line(run_cli("deploy"))
    assert "the following arguments are required: --root" in line, line
    line = one_error_line(run_cli("deploy", "--root", str(tmp_path), "--source", str(tmp_path)))
    assert line == (f"rollover: which master? give --pidfile F (gunicorn --pid), or pidfile = "
                    f'"..." in {tmp_path}/rollover.toml'), line


def test_render_shows_requests_5xx_recycles_and_the_canary() -> None:
    status = status_dict(generation=3, state="rolling",
                         rollout={**rollout(4, 3, NOW - 2),
                                  "canary": {"pid": 4300, "verdict": None, "requests": 31,
                                             "failures": 0}})
    status["workers"][0]["requests"] = {"requests": 1200, "ok": 1190, "4xx": 3, "5xx": 6,
                                        "failed": 1}
    status["workers"][0]["recycle"] = "max_requests: served 1000 of 1000"
    text = render_status(status, NOW)
    assert "canary: worker 4300 answered 31 requests, 0 with 5xx; waiting for its verdict" \
        in text
    row = next(line for line in text.splitlines() if line.strip().startswith("4243"))
    assert row.split()[4:6] == ["1200", "7"], row
    assert row.endswith("asked to be replaced: max_requests: served 1000 of 1000")


def test_progress_names_the_canary_while_it_is_judged_and_its_verdict() -> None:
    judging = {**rollout(2, 4, NOW + 1), "canary": {"pid": 77, "verdict": None}}
    progress = follow(status_dict(reloads=4, state="rolling", rollout=judging), 3, NOW)
    assert isinstance(progress, Progress)
    assert progress.line() == "1/2 workers on generation 2 (canary judging worker 77)"
    judged = {**judging, "canary": {"pid": 77, "verdict": "passed",
                                    "summary": "canary answered 0 of 50 with 5xx; "
                                               "old workers 0 of 150"}}
    progress = follow(status_dict(reloads=4, state="rolling", rollout=judged), 3, NOW)
    assert isinstance(progress, Progress)
    assert progress.line().endswith("(canary passed: canary answered 0 of 50 with 5xx; "
                                    "old workers 0 of 150)")


def test_a_failed_canary_is_waited_for_until_its_counts_are_final() -> None:
    from rollover.client import draining_canary

    record: dict[str, Any] = {"result": "aborted",
                              "canary": {"verdict": "failed", "final": False}}
    assert draining_canary(record)
    record["canary"]["final"] = True
    assert not draining_canary(record)
    assert not draining_canary({"canary": {"verdict": "passed", "final": False}})
    assert not draining_canary({"canary": {"verdict": "failed"}})  # an older master's record
    assert not draining_canary({"result": "aborted"})


def test_status_says_which_rule_decided_the_canary() -> None:
    from rollover.cli import describe_last

    record: dict[str, Any] = {
        "generation": 3, "result": "succeeded", "error": None, "min_ready": 4,
        "started": "2026-12-06T03:00:00.000Z", "finished": "2026-12-06T03:00:04.000Z",
        "canary": {"verdict": "passed", "rule": "ruled out", "p": 0.0047,
                   "summary": "0 of 24 failed vs 0 of 80 on the old workers; 20% failing "
                              "ruled out, p = 0.0047"}}
    assert describe_last(record) == (
        "generation 3 succeeded in 4.0s (canary passed: 0 of 24 failed vs 0 of 80 on the old "
        "workers; 20% failing ruled out, p = 0.0047) (min ready 4)")
    record.update(result="aborted", error="canary failed: 3 of 3 failed vs 0 of 16 on the old "
                  "workers, p = 0.001; in all it answered 5 requests, 5 failed",
                  canary={"verdict": "failed"})
    assert describe_last(record).endswith(": canary failed: 3 of 3 failed vs 0 of 16 on the "
                                          "old workers, p = 0.001; in all it answered 5 "
                                          "requests, 5 failed (min ready 4)")


# --- first-hour rough edges (issue 25) -----------------------------------------------------


def test_render_counts_ready_workers_once_per_generation_in_a_roll() -> None:
    workers = [{"pid": 4243, "generation": 1, "state": "ready", "since": iso(NOW - 12)},
               {"pid": 4244, "generation": 1, "state": "draining", "since": iso(NOW - 1)},
               {"pid": 4245, "generation": 2, "state": "ready", "since": iso(NOW - 1)}]
    status = status_dict(generation=2, serving_generation=2, state="rolling",
                         workers=workers, rollout=rollout(2, 2, NOW - 3))
    lines = render_status(status, NOW).splitlines()
    assert lines[0] == ("master 4242 · generation 2 · rolling · ready: 1 on generation 1, "
                        "1/2 on generation 2"), lines
    assert lines[1] == "rolling to generation 2, started 3s ago", lines
    assert not any("new workers ready" in line or "workers ready" in line for line in lines)


def test_timeout_without_wait_points_to_the_reload_help() -> None:
    line = one_error_line(run_cli("reload", "--pidfile", "x", "--timeout", "5"))
    assert line == ("rollover: --timeout only applies with --wait "
                    "(see 'rollover reload --help')"), line


@pytest.mark.parametrize("command", ["status", "reload", "deploy"])
@pytest.mark.parametrize("env", [{}, {"ROLLOVER_PIDFILE": "/run/app/gunicorn.pid"}])
def test_usage_says_where_the_pidfile_comes_from(command: str, env: dict[str, str]) -> None:
    result = run_cli(command, "--help", env=env)
    assert result.returncode == 0, result.stderr
    usage = " ".join(result.stdout.split("\n\n")[0].split())
    # deploy's pidfile may also come from <root>/rollover.toml: optional there
    pidfile = ("[--pidfile F | $ROLLOVER_PIDFILE]" if command == "deploy"
               else "(--pidfile F | $ROLLOVER_PIDFILE)")
    assert usage.startswith(f"usage: rollover {command} [-h] {pidfile}") or (
        command == "deploy" and pidfile in usage), usage
    if command == "reload":
        assert usage.endswith("[--wait [--timeout SECONDS]]"), usage


def test_each_subcommand_lists_its_own_exit_codes() -> None:
    def codes(*args: str) -> list[str]:
        text = run_cli(*args).stdout
        block = text.split("exit codes:\n", 1)[1].split("\n\n", 1)[0]
        return [line.split()[0] for line in block.splitlines() if line[:4].strip()]

    assert codes("status", "--help") == ["0", "2", "130"]
    assert codes("reload", "--help") == ["0", "1", "2", "3", "130"]
    top = run_cli("--help").stdout
    assert "\nexit codes:\n" not in top and "rollover COMMAND --help" in top, top
    status_help = run_cli("status", "--help").stdout
    assert "reload --wait" not in status_help and "timed out" not in status_help


def test_a_roll_waiting_for_a_retired_worker_to_stop_accepting_says_so() -> None:
    workers = [{"pid": 4244, "generation": 1, "state": "draining", "since": iso(NOW - 1),
                "accepting": True},
               {"pid": 4245, "generation": 2, "state": "ready", "since": iso(NOW - 2)},
               {"pid": 4246, "generation": 2, "state": "ready", "since": iso(NOW - 1)}]
    current = {**rollout(2, 2, NOW - 3, new_ready=2), "old_accepting": 1}
    status = status_dict(generation=2, serving_generation=2, state="rolling",
                         workers=workers, rollout=current)
    lines = render_status(status, NOW).splitlines()
    assert lines[0].endswith("· rolling · ready: 2/2 on generation 2"), lines
    assert lines[1] == ("rolling to generation 2, started 3s ago; waiting for retired "
                        "worker(s) 4244 to stop accepting"), lines
    progress = follow(status_dict(reloads=2, state="rolling", rollout=current), 1, NOW - 5)
    assert isinstance(progress, Progress)
    assert progress.line() == ("2/2 workers on generation 2 (waiting for 1 retired worker(s) "
                               "to stop accepting)")


def test_the_final_progress_line_follows_a_waiting_one() -> None:
    from rollover.client import final_progress

    waiting = Progress(generation=2, new_ready=2, target=2, accepting=1)
    done = Done("succeeded", {"generation": 2})
    final = final_progress(done, status_dict(), waiting)
    assert final is not None and final.line() == "2/2 workers on generation 2"
    assert final_progress(done, status_dict(), Progress(2, 2, 2)) is None
