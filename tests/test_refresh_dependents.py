"""A HUP purges by dependency: real masters, real `pip install`s of tiny hand-made wheels.

`dep` (1.0 -> 2.0) is upgraded; three distributions that are never upgraded hold values
from it, each known to the purge in another way:

- `mid` declares `Requires-Dist: dep` and does `from dep import __version__ as DEP` (a str:
  no namespace scan would see where it came from);
- `sub` declares nothing and subclasses `dep.Base` (an import edge, recorded);
- `plug` declares nothing and fills a registry through `importlib.import_module`
  (a first load through `sys.meta_path`, recorded).

With `--preload` the app imports them in the master; in "config" mode the config file
does (no preload): either way new workers fork with the master's modules. After the
HUP every answer must come from dep 2.0 through all three; with
`rollover_refresh_dependents = false` the same deploy serves the stale 1.0 through them
(the test can fail). A distribution with a loaded C extension (compiled here) is kept
whole and reported under `needs_reexec`, while a pure one upgraded with it is served new.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    AppCode,
    Master,
    VenvMaster,
    answers,
    ready_workers,
    refresh_lines,
    roll,
    wait_for,
)
from wheels import Venv, build_extension, make_wheel

pytestmark = pytest.mark.process

WORKERS = 2


def dep_files(version: str) -> dict[str, str]:
    return {"dep/__init__.py": f'__version__ = "{version}"\n\n\nclass Base:\n'
                               f'    VERSION = "{version}"\n',
            "dep/plugin.py": f'VALUE = "{version}"\n'}


DEPENDENTS = {
    "mid": ({"mid/__init__.py": "from dep import __version__ as DEP\n"}, ["dep"]),
    "sub": ({"sub.py": "from dep import Base\n\n\nclass Derived(Base):\n    pass\n"}, []),
    "plug": ({"plug/__init__.py": "import importlib\n\nREGISTRY = {}\n"
                                  "for name in ['dep.plugin']:\n"
                                  "    REGISTRY[name] = importlib.import_module(name).VALUE\n"},
             []),
}

APP = '''\
import json
import os

import dep
import mid
import plug
import sub


def app(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(), "dep": dep.__version__, "mid": mid.DEP,
        "sub": sub.Derived.VERSION, "sub_is_dep": issubclass(sub.Derived, dep.Base),
        "plug": plug.REGISTRY["dep.plugin"],
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

CONFIG = '''\
from rollover.hooks import *  # noqa: F403

import mid, plug, sub  # noqa: E401  the master itself imports the dependents
'''


@pytest.fixture
def start(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Master]]:
    started: list[Master] = []

    def start_master(venv: Venv, app_text: str, mode: str,
                     extra_env: dict[str, str] | None = None) -> Master:
        app = AppCode(tmp_path / "app")
        app.path.write_text(app_text)
        workdir = tmp_path / f"master{len(started) + 1}"
        workdir.mkdir()
        config, extra_args = "python:rollover.hooks", ["--preload"]
        if mode == "config":
            config, extra_args = str(workdir / "gunicorn_conf.py"), []
            Path(config).write_text(CONFIG)
        master = VenvMaster(workdir, app, workers=WORKERS, config=config,
                            extra_args=extra_args, env=extra_env,
                            gunicorn_script=venv.gunicorn)
        started.append(master)
        master.start()
        master.wait_status(lambda s: len(ready_workers(s)) == WORKERS, 30, "workers ready")
        return master

    yield start_master
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
                 for w in ("setup", "call"))
    for master in started:
        master.stop()
        if failed:
            print(master.tail(150))


def served(master: Master, status: dict[str, Any], keys: tuple[str, ...]) -> set[tuple[Any, ...]]:
    return {tuple(a[k] for k in keys) for a in answers(master, status).values()}


@pytest.mark.parametrize("dependents", [True, False], ids=["dependents", "changed-only"])
@pytest.mark.parametrize("mode", ["preload", "config"])
def test_dependents_of_an_upgraded_package_serve_the_new_one(
        tmp_path: Path, start: Callable[..., Master], mode: str, dependents: bool) -> None:
    wheels = tmp_path / "wheels"
    dep1, dep2 = (make_wheel(wheels / v, "dep", v, dep_files(v)) for v in ("1.0", "2.0"))
    others = [make_wheel(wheels, name, "1.0", files, requires=requires)
              for name, (files, requires) in DEPENDENTS.items()]
    venv = Venv(tmp_path / "env")
    venv.install(dep1, *others)
    env = None if dependents else {"ROLLOVER_REFRESH_DEPENDENTS": "0"}
    master = start(venv, APP, mode, env)
    keys = ("dep", "mid", "sub", "sub_is_dep", "plug")
    assert served(master, master.status(), keys) == {("1.0", "1.0", "1.0", True, "1.0")}

    venv.install(dep2)
    status = roll(master)

    line = refresh_lines(master)[-1]
    if dependents:
        assert served(master, status, keys) == {("2.0", "2.0", "2.0", True, "2.0")}, line
        assert "purged dep (+ dependents " in line, line
        for name in DEPENDENTS:
            assert name in status["refresh"]["dependents_purged"], status["refresh"]
    else:
        # what the purge of changed packages alone leaves behind: stale values through
        # the dependents, a subclass of a class that is no longer dep's
        assert served(master, status, keys) == {("2.0", "1.0", "1.0", False, "1.0")}, line
        assert status["refresh"]["modules_purged"] == ["dep"], status["refresh"]
    assert status["refresh"]["needs_reexec"] == []


C_APP = '''\
import json
import os

import cdep
import cmid
import dep


def app(environ, start_response):
    body = json.dumps({
        "pid": os.getpid(), "cdep": cdep.__version__, "c_at_import": cdep.C_VERSION,
        "c_now": cdep._speed.version(), "pure": cdep.pure.VALUE, "cmid": cmid.CDEP,
        "dep": dep.__version__,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def test_upgraded_distribution_with_a_loaded_c_extension_is_kept_whole(
        tmp_path: Path, start: Callable[..., Master]) -> None:
    wheels = tmp_path / "wheels"
    cdep = {}
    for version in ("1.0", "2.0"):
        so_name, so = build_extension(tmp_path / "build", "_speed", version)
        cdep[version] = make_wheel(wheels / version, "cdep", version, {
            f"cdep/{so_name}": so,
            "cdep/__init__.py": f'from cdep._speed import version as _v\n\n'
                                f'__version__ = "{version}"\nC_VERSION = _v()\n\n'
                                f'from cdep import pure  # noqa: E402\n',
            "cdep/pure.py": f'VALUE = "{version}"\n'})
    dep1, dep2 = (make_wheel(wheels / v, "dep", v, dep_files(v)) for v in ("1.0", "2.0"))
    cmid = make_wheel(wheels, "cmid", "1.0", {"cmid.py": "from cdep import __version__ as CDEP\n"},
                      requires=["cdep"])
    venv = Venv(tmp_path / "env")
    venv.install(cdep["1.0"], dep1, cmid)
    master = start(venv, C_APP, "preload")
    keys = ("cdep", "c_at_import", "c_now", "pure", "cmid", "dep")
    assert served(master, master.status(), keys) == {("1.0",) * 6}

    venv.install(cdep["2.0"], dep2)
    status = roll(master)

    # cdep stays 1.0 as a whole (its C part cannot be re-initialised; its pure part and
    # its dependent stay with it), dep upgraded alongside is served new
    assert served(master, status, keys) == {("1.0",) * 5 + ("2.0",)}, refresh_lines(master)
    report = status["refresh"]
    assert [item.split(":")[0] for item in report["needs_reexec"]] == ["cdep"], report
    assert "C extension cdep._speed" in report["needs_reexec"][0], report
    assert "cdep" not in report["modules_purged"] and "cmid" not in report["modules_purged"]
    assert "dep" in report["modules_purged"], report
    assert "NEEDS RE-EXEC (kill -USR2): cdep:" in refresh_lines(master)[-1]
    wait_for(lambda: "needs a re-exec" in master.log_text(), 5, what="the re-exec warning")
    assert json.dumps(status["last_rollout"]["result"]) == '"succeeded"'
