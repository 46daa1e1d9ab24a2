"""Pruning after a failed release, off the deploy's critical path (issue #23).

v1 (with 200 MB of data files), v2, a v3 whose build step fails, then v4 with --keep 2:
the two newest releases that served (v4, v2) stay, the failed v3 is kept apart, v1 goes.
The test holds the prune lock while v4 deploys: the deploy must still end (so the 200 MB
are not deleted on its way), v1 already out of releases/; the files go once the lock is
free. No master runs: each deploy switches `current` only (the first one probes all the
same, with --probe-path).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from deploy_support import build_args, deploy_env, run_deploy, wheelhouse, write_source
from harness import ROLLOVER_CLI, wait_for

from rollover import deploy
from rollover.deploy.prune import PRUNE_LOCK

pytestmark = pytest.mark.process

BIG_FILES, BIG_FILE_MB = 200, 1


def _deploy_timed(root: Path, *args: str) -> tuple[int, dict[str, object], float, str]:
    """A deploy with its stdout lines timestamped: (exit, JSON, seconds from its
    'deployed' line to its exit, the output)."""
    cmd = [str(ROLLOVER_CLI), "deploy", "--root", str(root), "--pidfile",
           str(root / "run" / "gunicorn.pid"), "--app", "app:app", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=deploy_env(), stdin=subprocess.DEVNULL)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    code = proc.wait(240)
    exited = time.monotonic()
    reader.join(10)
    deployed = [t for t, line in lines if line.startswith("deployed ")]
    text = "".join(line for _, line in lines)
    return code, json.loads(out), (exited - deployed[0]) if deployed else -1.0, text


def test_keep_2_after_a_failed_release(tmp_path_factory: pytest.TempPathFactory) -> None:
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("deploy-prune")
    root, sources = base / "app", base / "sources"
    v1 = write_source(sources / "v1", "v1")
    (v1 / "data").mkdir()
    block = b"\x5a" * (BIG_FILE_MB << 20)
    for i in range(BIG_FILES):
        (v1 / "data" / f"blob{i:03d}").write_bytes(block)
    first = run_deploy(root, *build_args(wheels, v1, "v1"), "--probe-path", "/healthz")
    assert first.rc == 0, str(first)
    preflight = next(s for s in first.json["steps"] if s["step"] == "preflight")
    assert "GET /healthz -> 200" in preflight["detail"], preflight  # no master, still probed
    second = run_deploy(root, *build_args(wheels, write_source(sources / "v2", "v2"), "v2"))
    assert second.rc == 0, str(second)
    bad = run_deploy(root, *build_args(wheels, write_source(sources / "v3", "v3"), "v3"),
                     "--build", "echo compiling; echo 'error: no such asset' >&2; exit 7")
    assert bad.rc == deploy.EXIT_BUILD_FAILED, str(bad)
    err = bad.proc.stderr.strip().splitlines()
    assert "[build]     | compiling" in err
    assert err[-1] == ("rollover: build failed: `echo compiling; echo 'error: no such "
                       "asset' >&2; exit 7` exited 7: error: no such asset"), err[-1]
    assert bad.json["output_tail"] == ["compiling", "error: no such asset"], bad.json
    assert os.readlink(root / "current") == "releases/v2"
    assert "failed" in json.loads((root / "releases" / "v3" / deploy.METADATA).read_text())

    lock = os.open(root / PRUNE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the background removal waits for this
    try:
        code, out, after_deployed, text = _deploy_timed(
            root, *build_args(wheels, write_source(sources / "v4", "v4"), "v4"), "--keep", "2",
            "--json")
        prune_step = next((s for s in out.get("steps", []) if s["step"] == "prune"), {})
        print(f"\n[prune] 'deployed' line to exit: {after_deployed:.2f}s, of which the prune "
              f"step {prune_step.get('seconds')}s (pruning {BIG_FILES * BIG_FILE_MB} MB)\n"
              f"{text}")
        assert code == 0, text
        assert out["pruned"] == ["v1"] and out["kept"] == ["v4", "v3", "v2"], out
        names = sorted(p.name for p in (root / "releases").iterdir())
        assert [n for n in names if not n.startswith(".")] == ["v2", "v3", "v4"], names
        trash = [n for n in names if n.startswith(".trash-v1-")]
        assert len(trash) == 1, names  # out of the way, not deleted yet: after the exit
        assert (root / "releases" / trash[0] / "data" / "blob000").exists()
        assert after_deployed >= 0, text
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    started = time.monotonic()
    wait_for(lambda: not any(p.name.startswith(".trash-")
                             for p in (root / "releases").iterdir()),
             120, what="the background removal")
    print(f"[prune] removed in the background {time.monotonic() - started:.2f}s after the "
          "lock was free")
    assert os.readlink(root / "current") == "releases/v4"
