"""rollover.refresh with real pip installs and real gunicorn masters.

Every scenario installs version 1.0 of a small local package (`rtpkg`: `__version__`, a
submodule `rtpkg.sub` the app imports lazily, dist metadata), starts a master, installs
2.0 the way a deploy would, sends HUP and checks what every new worker serves.

Isolation and speed (tests run in parallel, nothing pip writes is shared):
- each test gets a venv of its own, `python -m venv --without-pip` (~0.2 s), and pip
  installs into it from outside (`pip --python <its python> install --no-index`);
- that venv sees gunicorn and rollover through a `.pth` line naming a directory, also the
  test's own, of symlinks to the gunicorn installed here and to this work tree's rollover
  package: gunicorn is not installed again and the code under test is the work tree's.
  The master is that venv's own `bin/gunicorn` script, so `sys.executable`, `sys.prefix`
  and the fresh interpreter are the test venv's;
- built once per session (the first xdist worker builds, the other waits on a lock),
  read-only afterwards: the rtpkg 1.0 and 2.0 wheels, built with setuptools from tmp
  source dirs (`pip wheel --no-build-isolation --no-index`), and a `--target` dir with a
  setuptools that builds wheels and editable wheels by itself, put on PYTHONPATH of the
  pip runs only (the dev venv's setuptools 65 cannot without the `wheel` package; this is
  the one download, ~2 s). Editable sources are per test (setuptools writes into them).
Tests marked `interpreters` run on Python 3.12 and 3.13 too (tests/conftest.py): their
venvs are made by that interpreter and see the gunicorn of its matrix venv instead.
Eggs and zips are made by hand (that is all they are: a directory or an archive with the
package and its metadata, named by a `.pth` line). Release directories behind a `current`
symlink hold a venv each, made the same way; the master runs `current/venv/bin/gunicorn`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gunicorn
import pytest
from harness import (
    AppCode,
    Master,
    VenvMaster,
    answers,
    exit_deadline,
    ready_workers,
    refresh_lines,
    roll,
)

import rollover

pytestmark = pytest.mark.process

PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"
WORKERS = 2

APP = '''\
"""Test app: reports what it imported from rtpkg."""
import importlib
import importlib.metadata
import json
import os
import site
import sys

import rtpkg  # at import time: in the master too with --preload


def app(environ, start_response):
    sub = importlib.import_module("rtpkg.sub")  # imported lazily, on the first request
    try:
        extra = importlib.import_module("rtpkg.extra").VALUE
    except ImportError:
        extra = None
    try:
        dist = importlib.metadata.version("rtpkg")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    body = json.dumps({
        "pid": os.getpid(),
        "version": rtpkg.__version__,
        "sub": sub.VALUE,
        "dist": dist,
        "extra": extra,
        "file": rtpkg.__file__,
        "rtpkg_paths": [p for p in sys.path if "rtpkg" in p],
        "finders": [getattr(f, "__module__", None) or type(f).__module__
                    for f in sys.meta_path],
        "sizes": [len(sys.path), len(sys.meta_path), len(site.PREFIXES), len(sys.path_hooks)],
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

CONFIG_IMPORTING_PKG = '''\
from rollover.hooks import *  # noqa: F403

import rtpkg  # the master itself imports the package
'''


# --------------------------------------------------------------------------- building


def write_source(root: Path, version: str, *, marker: str | None = None,
                 extra: bool = False) -> Path:
    """A setuptools project (flat layout, so an editable install gets a finder)."""
    marker = marker or version
    pkg = root / "rtpkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "rtpkg"
        version = "{version}"

        [tool.setuptools]
        packages = ["rtpkg"]
    """))
    for name, text in package_files(marker, extra=extra).items():
        (pkg / name).write_text(text)
    return root


def package_files(marker: str, *, extra: bool = False) -> dict[str, str]:
    files = {
        "__init__.py": f'__version__ = "{marker}"\n',
        "sub.py": f'VALUE = "{marker}"\n',
    }
    if extra:
        files["extra.py"] = f'VALUE = "{marker}"\n'
    return files


def pkg_info(version: str) -> str:
    return f"Metadata-Version: 2.1\nName: rtpkg\nVersion: {version}\n"


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL, cwd=cwd)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


class Kit:
    """Read-only once built: setuptools for builds, and the rtpkg wheels."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tools = root / "tools"
        self.wheels = {version: root / "wheels" / f"rtpkg-{version}-py3-none-any.whl"
                       for version in ("1.0", "2.0")}

    def build(self) -> None:
        run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--no-deps", "--only-binary", ":all:", "--target", str(self.tools),
             "setuptools>=70.1"])
        for version in self.wheels:  # one call each: pip refuses two versions at once
            source = write_source(self.root / f"src-{version}", version)
            run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                 "--no-deps", "--no-build-isolation", "--no-index", str(source),
                 "-w", str(self.root / "wheels")], env=self.build_env())
        missing = [str(w) for w in self.wheels.values() if not w.is_file()]
        assert not missing, f"wheels not built: {missing}"

    def build_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOVER_")}
        env["PYTHONPATH"] = str(self.tools)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        return env


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """Built once per test session: under xdist, the first worker builds it in the
    session's own base temp dir (shared by its workers only), the others wait on a lock."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / "refresh-kit"
    root.mkdir(exist_ok=True)
    built = Kit(root)
    started = time.monotonic()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".done").exists():
            built.build()
            (root / ".done").touch()
            print(f"refresh kit built in {time.monotonic() - started:.1f}s")
    return built


class Env:
    """A venv of the test's own that sees gunicorn and the work tree's rollover.

    `python`: the interpreter the venv is made from; `shebang`: the interpreter path its
    `bin/gunicorn` script names (a venv reached through a release symlink); `gunicorn_from`:
    the venv whose gunicorn it sees (None: this interpreter's)."""

    def __init__(self, root: Path, kit: Kit, *, python: str = sys.executable,
                 shebang: Path | None = None, gunicorn_from: Path | None = None) -> None:
        self.root = root
        self.kit = kit
        self.venv = root / "venv"
        run([python, "-m", "venv", "--without-pip", str(self.venv)])
        self.python = self.venv / "bin" / "python"
        (self.site,) = (self.venv / "lib").glob("python3*/site-packages")
        self.pyver = self.site.parent.name.removeprefix("python")  # "3.12"
        base = root / "base"
        base.mkdir()
        gunicorn_dir = Path(gunicorn.__file__).parent
        if gunicorn_from is not None:
            (gunicorn_dir,) = gunicorn_from.glob("lib/python3*/site-packages/gunicorn")
        for target in [gunicorn_dir, *gunicorn_dir.parent.glob("gunicorn-*.dist-info"),
                       Path(rollover.__file__).parent]:
            (base / target.name).symlink_to(target)
        (self.site / "_rollover_test_base.pth").write_text(f"{base}\n")
        self.gunicorn = self.venv / "bin" / "gunicorn"
        self.gunicorn.write_text(f"#!{shebang or self.python}\nimport sys\n"
                                 "from gunicorn.app.wsgiapp import run\n"
                                 "sys.exit(run())\n")
        self.gunicorn.chmod(0o755)

    def pip(self, *args: str) -> None:
        run([sys.executable, "-m", "pip", "--python", str(self.python), *args, "-q",
             "--no-index", "--no-deps"], env=self.kit.build_env())

    def install(self, version: str) -> None:
        self.pip("install", str(self.kit.wheels[version]))

    def write_pth(self, name: str, text: str) -> None:
        """Atomically, as a deploy tool would."""
        tmp = self.site / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.site / name)


@pytest.fixture
def env(tmp_path: Path, kit: Kit, interpreter: str, interpreter_venv: Path | None) -> Env:
    """The test's venv, made by the test's interpreter (tests/conftest.py)."""
    if interpreter_venv is None:
        return Env(tmp_path / "env", kit)
    base_python = (interpreter_venv / "bin" / "python").resolve()
    made = Env(tmp_path / "env", kit, python=str(base_python), gunicorn_from=interpreter_venv)
    assert made.pyver == interpreter, (made.site, interpreter)
    return made


@pytest.fixture
def start_master(tmp_path: Path, env: Env,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., VenvMaster]]:
    started: list[VenvMaster] = []

    def start(mode: str = "plain", *, extra_env: dict[str, str] | None = None,
              script: Path | None = None, config_text: str = CONFIG_IMPORTING_PKG,
              ) -> VenvMaster:
        """mode: "plain" (only workers import rtpkg), "config" (the config file imports
        it in the master) or "preload" (--preload: the app, and rtpkg, load in the master).
        `script`: the gunicorn to run (the test venv's by default)."""
        app = AppCode(tmp_path / "app")
        app.path.write_text(APP)
        workdir = tmp_path / f"master{len(started) + 1}"
        workdir.mkdir()
        config = "python:rollover.hooks"
        extra_args: list[str] = []
        if mode == "config":
            config = str(workdir / "gunicorn_conf.py")
            Path(config).write_text(config_text)
        elif mode == "preload":
            extra_args.append("--preload")
        else:
            assert mode == "plain", mode
        master = VenvMaster(workdir, app, workers=WORKERS, config=config,
                            extra_args=extra_args, env=extra_env,
                            gunicorn_script=script or env.gunicorn)
        started.append(master)
        master.start()
        master.wait_status(lambda s: len(ready_workers(s)) == WORKERS, 30, "workers ready")
        return master

    yield start
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
                 for w in ("setup", "call"))
    for master in started:
        master.stop()
        if failed:
            print(master.tail(150))


# --------------------------------------------------------------------------- observing


def served(master: Master, status: dict[str, Any] | None = None,
           keys: tuple[str, ...] = ("version", "sub", "dist")) -> set[tuple[Any, ...]]:
    return {tuple(a[k] for k in keys) for a in answers(master, status).values()}


# --------------------------------------------------------------------------- scenarios


@pytest.mark.interpreters
@pytest.mark.parametrize("mode", ["plain", "config", "preload"])
def test_pip_upgrade_is_served_after_hup(env: Env, start_master, mode: str) -> None:
    env.install("1.0")
    master = start_master(mode)
    assert served(master) == {("1.0", "1.0", "1.0")}
    env.install("2.0")
    status = roll(master)
    assert served(master, status) == {("2.0", "2.0", "2.0")}, refresh_lines(master)
    line = refresh_lines(master)[-1]
    assert "rtpkg 1.0 -> 2.0" in line, line
    if mode != "plain":
        assert "purged rtpkg" in line, line


@pytest.mark.parametrize("mode", ["config", "preload"])
def test_without_refresh_the_master_import_stays_stale(env: Env, start_master,
                                                       mode: str) -> None:
    """The same deploy with the refresh off: proves the test above can fail."""
    env.install("1.0")
    master = start_master(mode, extra_env={"ROLLOVER_REFRESH": "0"})
    env.install("2.0")
    status = roll(master)
    versions = {a["version"] for a in answers(master, status).values()}
    assert versions == {"1.0"}
    assert refresh_lines(master) == []


@pytest.mark.interpreters
def test_egg_named_by_rewritten_pth(env: Env, start_master) -> None:
    """easy_install style: `.pth` names pkg-1.0 egg; rewritten to name the 2.0 egg, the old
    one left on disk. A plain `site` pass would append 2.0 after 1.0, and 1.0 would win."""
    eggs = {}
    for version in ("1.0", "2.0"):
        egg = env.site / f"rtpkg-{version}-py{env.pyver}.egg"
        (egg / "rtpkg").mkdir(parents=True)
        for name, text in package_files(version).items():
            (egg / "rtpkg" / name).write_text(text)
        (egg / "EGG-INFO").mkdir()
        (egg / "EGG-INFO" / "PKG-INFO").write_text(pkg_info(version))
        eggs[version] = egg
    env.write_pth("easy-install.pth", f"./{eggs['1.0'].name}\n")
    master = start_master("plain")
    first = answers(master)
    assert {a["version"] for a in first.values()} == {"1.0"}
    assert {tuple(a["rtpkg_paths"]) for a in first.values()} == {(str(eggs["1.0"]),)}
    env.write_pth("easy-install.pth", f"./{eggs['2.0'].name}\n")
    status = roll(master)
    after = answers(master, status)
    assert {(a["version"], a["sub"], a["dist"]) for a in after.values()} == {
        ("2.0", "2.0", "2.0")}
    assert {tuple(a["rtpkg_paths"]) for a in after.values()} == {(str(eggs["2.0"]),)}
    line = refresh_lines(master)[-1]
    assert f"+{eggs['2.0']}" in line and f"-{eggs['1.0']}" in line, line


def write_zip(path: Path, version: str, *, extra: bool) -> None:
    """Overwrite the archive in place (same inode), as `cp` or a naive deploy does."""
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w") as archive:
        for name, text in package_files(version, extra=extra).items():
            archive.writestr(f"rtpkg/{name}", text)
        archive.writestr(f"rtpkg-{version}.dist-info/METADATA", pkg_info(version))


@pytest.mark.interpreters(mode="preload")
@pytest.mark.parametrize("mode", ["config", "preload"])
def test_zip_replaced_in_place(env: Env, start_master, mode: str) -> None:
    archive = env.root / "rtpkg.zip"
    write_zip(archive, "1.0", extra=False)
    inode = archive.stat().st_ino
    env.write_pth("rtpkg-zip.pth", f"{archive}\n")
    master = start_master(mode)
    assert served(master, keys=("version", "sub", "dist", "extra")) == {
        ("1.0", "1.0", "1.0", None)}
    write_zip(archive, "2.0", extra=True)
    assert archive.stat().st_ino == inode
    status = roll(master)
    assert served(master, status, keys=("version", "sub", "dist", "extra")) == {
        ("2.0", "2.0", "2.0", "2.0")}, refresh_lines(master)


@pytest.mark.interpreters(same_version=False)
@pytest.mark.parametrize("same_version", [False, True], ids=["1.0-to-2.0", "both-1.0"])
def test_editable_install_switched(env: Env, start_master, same_version: bool) -> None:
    """`pip install -e src1`, then `-e src2`: exactly one editable finder, code from src2.
    With the same version both times the finder module keeps its name, its file changes."""
    src1 = write_source(env.root / "src1", "1.0", marker="src1")
    v2 = "1.0" if same_version else "2.0"
    src2 = write_source(env.root / "src2", v2, marker="src2")
    env.pip("install", "--no-build-isolation", "-e", str(src1))
    assert list(env.site.glob("__editable___rtpkg_*_finder.py")), "no finder: not the case"
    master = start_master("config")
    first = answers(master)
    assert {(a["version"], a["sub"]) for a in first.values()} == {("src1", "src1")}
    env.pip("install", "--no-build-isolation", "-e", str(src2))
    status = roll(master)
    after = answers(master, status)
    assert {(a["version"], a["sub"], a["dist"]) for a in after.values()} == {
        ("src2", "src2", v2)}, refresh_lines(master)
    assert all(a["file"].startswith(str(src2)) for a in after.values())
    finder = f"__editable___rtpkg_{v2.replace('.', '_')}_finder"
    for a in after.values():
        assert [f for f in a["finders"] if "rtpkg" in f] == [finder], a["finders"]
    assert "editable finders removed __editable___rtpkg_1_0_finder" in refresh_lines(master)[-1]


def test_twenty_hups_are_stable(env: Env, start_master) -> None:
    env.install("1.0")
    master = start_master("config")
    sizes = {tuple(a["sizes"]) for a in answers(master).values()}
    assert len(sizes) == 1
    for _ in range(19):
        reloads = master.status()["reloads"]  # type: ignore[index]
        master.hup()
        master.wait_status(lambda s, r=reloads: s["reloads"] > r, 30, "the HUP to be taken")
    status = roll(master)
    after = answers(master, status)
    assert {tuple(a["sizes"]) for a in after.values()} == sizes
    assert {a["version"] for a in after.values()} == {"1.0"}
    lines = refresh_lines(master)
    assert len(lines) == 20
    assert all(line.startswith("no changes in ") for line in lines), lines


def find_python(version: str) -> str | None:
    """An interpreter of another version that runs (a pyenv shim may not)."""
    candidates = [str(p) for p in sorted(
        Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))]
    candidates += filter(None, [shutil.which(f"python{version}")])
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([candidate, "-c", "import venv"], capture_output=True,
                              timeout=30, check=False).returncode == 0:
                return candidate
    return None


def native_module() -> Path | None:
    """A C extension module of the stdlib to copy into rtpkg (as `rtpkg._bisect`)."""
    spec = importlib.util.find_spec("_bisect")
    origin = getattr(spec, "origin", None) or ""
    return Path(origin) if origin.endswith(".so") else None


def flip(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.mark.parametrize("case", ["newer-dependency", "changed-c-extension", "other-python"])
def test_release_venv_behind_symlink(tmp_path: Path, kit: Kit, start_master,
                                     case: str) -> None:
    """gunicorn started as /srv/current/venv/bin/gunicorn; `current` flipped from
    releases/1 to releases/2, whose venv has rtpkg 2.0. Same Python: 2.0 is served after
    HUP. A loaded C extension that changed: reported as needing a re-exec, and the package
    stays 1.0 as a whole (its __path__ pinned to releases/1). Another Python: the roll is
    aborted with the cause, the old workers keep serving 1.0."""
    current = tmp_path / "srv" / "current"
    shebang = current / "venv" / "bin" / "python"
    python2 = sys.executable
    if case == "other-python":
        other = f"3.{sys.version_info[1] + 1}"
        python2 = find_python(other) or find_python(f"3.{sys.version_info[1] - 1}") or ""
        if not python2:
            pytest.skip("no other Python version on this machine")
    so = native_module()
    if case == "changed-c-extension" and so is None:
        pytest.skip("_bisect is not a shared library here")
    releases = []
    for number, (version, python) in enumerate([("1.0", sys.executable), ("2.0", python2)], 1):
        release = Env(tmp_path / "srv" / "releases" / str(number), kit, python=python,
                      shebang=shebang)
        release.install(version)
        if case == "changed-c-extension":
            assert so is not None
            shutil.copy(so, release.site / "rtpkg" / so.name)
        releases.append(release)
    current.symlink_to("releases/1")
    config_text = CONFIG_IMPORTING_PKG
    if case == "changed-c-extension":
        config_text += "import rtpkg._bisect\n"
    master = start_master("config", script=current / "venv" / "bin" / "gunicorn",
                          config_text=config_text)
    assert served(master, keys=("version", "sub")) == {("1.0", "1.0")}
    flip(current, "releases/2")
    if case == "other-python":
        reloads = master.status()["reloads"]  # type: ignore[index]
        master.hup()
        status = master.wait_status(
            lambda s: s["reloads"] > reloads and s["last_rollout"] is not None
            and s["last_rollout"]["reload"] > reloads, 30, "the reload to be refused")
        last = status["last_rollout"]
        assert last["result"] == "aborted", last
        assert "re-exec" in last["error"] and "interpreter changed" in last["error"], last
        assert served(master, status, keys=("version", "sub")) == {("1.0", "1.0")}
        return
    status = roll(master)
    line = refresh_lines(master)[-1]
    if case == "newer-dependency":
        assert served(master, status) == {("2.0", "2.0", "2.0")}, line
        assert "purged rtpkg" in line and "rtpkg 1.0 -> 2.0" in line, line
    else:
        assert served(master, status, keys=("version", "sub")) == {("1.0", "1.0")}, line
        assert "NEEDS RE-EXEC" in line and "C extension rtpkg._bisect" in line, line
        assert f"submodules still load from {releases[0].site / 'rtpkg'}" in line, line


# --------------------------------------------------------------------------- refresh() itself

DIRECT = '''\
import json, sys
import rtpkg, rtpkg.sub
from rollover import refresh
saved = None
print("ready", flush=True)
for line in sys.stdin:
    op = json.loads(line)
    report = None
    if op["op"] == "snapshot":
        saved = refresh.snapshot()
    elif op["op"] == "restore":
        refresh.restore(saved)
    elif op["op"] == "import":
        __import__(op["name"])
    else:
        report = refresh.refresh(keep=set(op.get("keep", []))).as_dict()
    import rtpkg, rtpkg.sub
    print(json.dumps({"report": report, "version": rtpkg.__version__,
                      "sub": rtpkg.sub.VALUE, "path": sys.path}), flush=True)
'''


def test_refresh_report_in_a_process_of_its_own(env: Env) -> None:
    """refresh() without gunicorn: the exact report, re-imports in the same process, a
    second refresh that finds nothing, a restore() after which the next refresh finds the
    same change again, and kept code reported as needing a re-exec, not half-loaded."""
    env.install("1.0")
    (env.root / "fakeworker.py").write_text("import rtpkg.sub\n\nHELD = rtpkg.sub\n")
    proc = subprocess.Popen([str(env.python), "-c", DIRECT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=env.root)
    assert proc.stdin is not None and proc.stdout is not None

    def ask(op: str, **kwargs: Any) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        return dict(json.loads(line))

    def upgraded(answer: dict[str, Any], old: str, new: str) -> None:
        report = answer["report"]
        assert report["modules_purged"] == ["rtpkg"], report
        assert report["distributions_changed"] == {"rtpkg": f"{old} -> {new}"}, report
        assert report["needs_reexec"] == [] and report["problems"] == [], report
        assert (answer["version"], answer["sub"]) == (new, new)

    try:
        assert proc.stdout.readline().strip() == "ready"
        ask("snapshot")
        env.install("2.0")
        first = ask("refresh")
        upgraded(first, "1.0", "2.0")
        second = ask("refresh")
        assert second["report"]["modules_purged"] == []
        assert second["report"]["distributions_changed"] == {}
        assert second["path"] == first["path"]
        # a roll-back puts the old modules back, and refresh's baseline with them
        assert ask("restore")["version"] == "1.0"
        upgraded(ask("refresh"), "1.0", "2.0")
        # code that is never purged (keep) holds rtpkg: a change is not half-loaded
        ask("import", name="fakeworker")
        env.install("1.0")
        kept = ask("refresh", keep=["fakeworker"])
        assert kept["report"]["modules_purged"] == []
        assert [n.split(":")[0] for n in kept["report"]["needs_reexec"]] == ["rtpkg"]
        assert "held by fakeworker" in kept["report"]["needs_reexec"][0]
        assert kept["version"] == "2.0"
        # and it stays reported until a re-exec
        assert ask("refresh", keep=["fakeworker"])["report"]["needs_reexec"]
    finally:
        proc.stdin.close()
        proc.wait(exit_deadline(30))
