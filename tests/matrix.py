"""One venv per gunicorn version, for the version matrix and the peer suites.

`gunicorn_venv("26.2.0")` returns a venv (under `.cache/matrix/`, gitignored) holding that
gunicorn, rollover installed editable from this checkout (code changes need no rebuild),
uvicorn, uvicorn-worker, Starlette, httpx, gevent and pytest (for the version's own tests). It is
made once and reused across test runs and pytest-xdist workers:

- one venv per version at `.cache/matrix/gunicorn-<version>/`, with a marker file written
  only once it is complete and naming a key (a hash of pyproject.toml, the version, the
  recipe below and the interpreter): a venv without the marker, or with another key, is
  deleted and rebuilt;
- creation is guarded by a lock file per version (`fcntl.flock`, so it holds between
  threads as well as processes): whoever comes second waits, then reuses;
- `prebuild()` starts every version's build in background threads at once (pip mostly
  waits on I/O), so a session that needs several venvs waits about as long as for one.

`sdist(name, version)` downloads a package's source distribution once into
`.cache/matrix/sdists/` (`pip download --no-deps --no-binary :all:`) and returns the path.

`python_venv("3.12")` is the same for another interpreter: a venv at
`.cache/matrix/python-3.12/` made by that Python, holding gunicorn `PYTHON_GUNICORN` and the
rest as above (no pytest: only masters run there). The interpreter is found by
`find_python()` (pyenv's versions, then `python3.12` on PATH); `MissingInterpreter` when
there is none.

Run as a script (`python tests/matrix.py [VERSION|pyX.Y ...]`) it builds the venvs (every
gunicorn version and every interpreter found) and prints how long each took;
`scripts/test.sh` starts that in the background before pytest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "matrix"
SDISTS = CACHE / "sdists"

VERSIONS = ("23.0.0", "24.1.1", "25.3.0", "26.2.0", "27.0.1")
# The interpreters of the process matrix besides the one running the tests (conftest.py's
# `interpreter` fixture), each in a venv with this gunicorn. ROLLOVER_TEST_PYTHONS (comma
# separated, e.g. "3.12,3.13,3.14"; empty: none) overrides.
PYTHONS = tuple(
    p.strip() for p in os.environ.get("ROLLOVER_TEST_PYTHONS", "3.12,3.13").split(",")
    if p.strip())
PYTHON_GUNICORN = "27.0.1"
# The version whose venv also runs uvicorn-worker's own test suite.
UVICORN_WORKER_SUITE_GUNICORN = "27.0.1"
UVICORN_WORKER_VERSION = "0.4.0"
# The version whose venv also has eventlet (gunicorn's eventlet worker is gone in 26).
EVENTLET_GUNICORN = "25.3.0"

# Bump to rebuild every venv (anything in `requirements()` changed).
RECIPE = 1
MARKER = ".rollover-matrix-complete"
BUILD_TIMEOUT = 600.0


def requirements(version: str) -> list[str]:
    """What `pip install` gets for gunicorn `version` (the pin on the same command line,
    so resolving rollover's own `gunicorn` requirement can never upgrade it)."""
    reqs = [
        f"gunicorn=={version}",
        "-e",
        str(REPO),
        "uvicorn>=0.36",
        f"uvicorn-worker=={UVICORN_WORKER_VERSION}",
        "starlette>=0.40",
        "httpx>=0.27",
        # gunicorn's tests/test_arbiter.py imports only gunicorn, pytest and the stdlib
        # (23.0 through 27.0)
        "pytest>=8",
        # -k gevent in tests/test_rolled_out_*.py (gunicorn 27's worker needs 24.10.1+)
        "gevent>=24.10.1",
    ]
    if version == UVICORN_WORKER_SUITE_GUNICORN:
        # what uvicorn-worker's tests/conftest.py imports
        reqs += ["trustme", "cryptography"]
    if version == EVENTLET_GUNICORN:
        reqs.append("eventlet")
    return reqs


def venv_dir(version: str) -> Path:
    return CACHE / f"gunicorn-{version}"


def venv_key(version: str) -> str:
    """Changes whenever the venv for `version` must be rebuilt."""
    return _key(version, str(RECIPE), *requirements(version), sys.version,
                os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def _key(*parts: str) -> str:
    digest = hashlib.sha256()
    digest.update((REPO / "pyproject.toml").read_bytes())
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _is_ready(target: Path, key: str) -> bool:
    try:
        return (target / MARKER).read_text(encoding="utf-8").split()[0] == key
    except (OSError, IndexError):
        return False


def is_ready(version: str) -> bool:
    """The venv for `version` is complete and current."""
    return _is_ready(venv_dir(version), venv_key(version))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path`, held between processes and between threads (each
    call opens the file anew, and flock locks belong to the open file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class BuildError(RuntimeError):
    pass


# seconds each build took in this process (for the report), by version
build_times: dict[str, float] = {}


def gunicorn_venv(version: str) -> Path:
    """The venv for gunicorn `version`, built first if missing or stale."""
    target = venv_dir(version)
    if is_ready(version):
        return target
    with file_lock(CACHE / f"gunicorn-{version}.lock"):
        if is_ready(version):  # built meanwhile by another thread or process
            return target
        started = time.monotonic()
        _build(version, target)
        build_times[version] = time.monotonic() - started
    return target


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run_logged(argv: Sequence[str], log: Path, what: str) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            cp = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_pip_env(), timeout=BUILD_TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{what}: timed out after {BUILD_TIMEOUT:g}s (log {log})") from exc
    if cp.returncode != 0:
        lines = [
            line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
            if "is ignored: it is neither a file nor a directory" not in line
        ]
        tail = "\n".join(lines[-30:])
        raise BuildError(f"{what}: exit {cp.returncode} (log {log})\n{tail}")


def _build(version: str, target: Path, *, python: str = sys.executable,
           reqs: Sequence[str] | None = None, key: str | None = None) -> None:
    """A venv at `target` made by `python`, with `reqs` (gunicorn `version`'s by default)."""
    log = target.parent / f"{target.name}.log"
    log.write_bytes(b"")
    shutil.rmtree(target, ignore_errors=True)
    # Without pip of its own: the running interpreter's pip installs into it (`--python`),
    # which saves the ensurepip step.
    _run_logged([python, "-m", "venv", "--without-pip", str(target)], log,
                f"creating the venv {target.name}")
    _run_logged(
        [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
         "-q", *(requirements(version) if reqs is None else reqs)],
        log,
        f"installing gunicorn {version} and rollover into {target}",
    )
    got = installed_gunicorn(target)
    if got != version:
        raise BuildError(f"{target} holds gunicorn {got}, not {version} (log {log})")
    key = venv_key(version) if key is None else key
    (target / MARKER).write_text(f"{key} gunicorn {version}\n", encoding="utf-8")


def installed_gunicorn(venv: Path) -> str | None:
    """The gunicorn version installed in `venv` (from its dist-info; no subprocess)."""
    for dist in venv.glob("lib/python*/site-packages/gunicorn-*.dist-info"):
        match = re.fullmatch(r"gunicorn-(.+)\.dist-info", dist.name)
        if match:
            return match.group(1)
    return None


_prebuild_lock = threading.Lock()
_prebuilt: dict[str, threading.Thread] = {}


def prebuild(versions: Sequence[str] = VERSIONS) -> list[threading.Thread]:
    """Start building every venv of `versions` not ready yet, each in a background thread
    (once per process); `gunicorn_venv()` then waits for the one it needs. A build that
    failed here is retried by the `gunicorn_venv()` call that needs it, which reports it."""
    started = []
    with _prebuild_lock:
        for version in versions:
            if version in _prebuilt or is_ready(version):
                continue

            def build(v: str = version) -> None:
                with contextlib.suppress(Exception):
                    gunicorn_venv(v)

            # Not a daemon: a process that ends meanwhile waits for the build, rather than
            # leave its pip running on in a venv that the next run deletes and rebuilds.
            thread = threading.Thread(target=build, name=f"matrix-{version}", daemon=False)
            _prebuilt[version] = thread
            thread.start()
            started.append(thread)
    return started


# --------------------------------------------------------------------------- interpreters


class MissingInterpreter(LookupError):
    pass


_found_pythons: dict[str, tuple[str, str] | None] = {}


def find_python(minor: str) -> tuple[str, str] | None:
    """(path, full version) of a Python `minor` ("3.12") that runs, or None. Looks in
    pyenv's versions ($PYENV_ROOT, ~/.pyenv) first, newest patch first, then on PATH (a
    pyenv shim for a version not selected fails to run, and is passed over)."""
    if minor in _found_pythons:
        return _found_pythons[minor]
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    candidates: list[str] = []
    for root in filter(None, dict.fromkeys(roots)):
        found = Path(root).glob(f"versions/{minor}.*/bin/python{minor}")
        candidates += [str(p) for p in sorted(found, key=_patch_level, reverse=True)]
    candidates += filter(None, [shutil.which(f"python{minor}")])
    result = None
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            cp = subprocess.run(
                [candidate, "-c", "import sys, venv; print(sys.version.split()[0])"],
                capture_output=True, text=True, timeout=60, check=False,
                env=_pip_env(), stdin=subprocess.DEVNULL)
            full = cp.stdout.strip()
            if cp.returncode == 0 and full.startswith(f"{minor}."):
                result = (os.path.realpath(candidate), full)
                break
    _found_pythons[minor] = result
    return result


def _patch_level(path: Path) -> tuple[int, ...]:
    """3.12.10 sorts after 3.12.9 (the versions/<X.Y.Z> directory name)."""
    name = path.parent.parent.name
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def python_requirements() -> list[str]:
    """What an interpreter's venv gets: gunicorn and rollover (editable) and the ASGI stack
    the process tests run (no pytest: only masters run there)."""
    return [r for r in requirements(PYTHON_GUNICORN)
            if r.split(">")[0].split("=")[0] not in ("httpx", "pytest", "trustme", "cryptography")]


def python_dir(minor: str) -> Path:
    return CACHE / f"python-{minor}"


def python_key(minor: str) -> str | None:
    found = find_python(minor)
    if found is None:
        return None
    return _key(f"python-{minor}", str(RECIPE), *python_requirements(), *found)


def python_venv(minor: str) -> Path:
    """The venv of interpreter `minor` ("3.12"), built first if missing or stale;
    MissingInterpreter when this machine has no such Python."""
    found = find_python(minor)
    key = python_key(minor)
    if found is None or key is None:
        raise MissingInterpreter(
            f"no Python {minor} found (looked in $PYENV_ROOT and ~/.pyenv versions, "
            f"and for python{minor} on PATH)")
    target = python_dir(minor)
    if _is_ready(target, key):
        return target
    with file_lock(CACHE / f"python-{minor}.lock"):
        if _is_ready(target, key):
            return target
        started = time.monotonic()
        _build(PYTHON_GUNICORN, target, python=found[0], reqs=python_requirements(), key=key)
        build_times[f"py{minor}"] = time.monotonic() - started
    return target


# --------------------------------------------------------------------------- sdists


def sdist(name: str, version: str) -> Path:
    """The source distribution of `name==version` (a .tar.gz), downloaded once."""
    SDISTS.mkdir(parents=True, exist_ok=True)
    with file_lock(SDISTS / f"{name}-{version}.lock"):
        found = _find_sdist(name, version)
        if found is not None:
            return found
        tmp = SDISTS / f".download-{name}-{version}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log = SDISTS / f"{name}-{version}.log"
        log.write_bytes(b"")
        try:
            _run_logged(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                 ":all:", f"{name}=={version}", "-d", str(tmp)],
                log,
                f"downloading the sdist of {name} {version}",
            )
            files = sorted(tmp.glob("*.tar.gz"))
            if len(files) != 1:
                raise BuildError(f"pip download of {name}=={version} left {files} (log {log})")
            os.replace(files[0], SDISTS / files[0].name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        found = _find_sdist(name, version)
        assert found is not None
        return found


def _find_sdist(name: str, version: str) -> Path | None:
    # PEP 625 names it with underscores (uvicorn_worker-0.4.0.tar.gz); older ones may not
    for stem in {name, name.replace("-", "_")}:
        path = SDISTS / f"{stem}-{version}.tar.gz"
        if path.is_file():
            return path
    return None


def extract(archive: Path, dest: Path, *, members: str = "") -> Path:
    """Extract `archive` (an sdist) into `dest`; returns its top directory there.
    `members`: only paths under this directory of the sdist (e.g. "tests")."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        prefix = f"{top}/{members}".rstrip("/")
        chosen = [
            m for m in tar.getmembers()
            if m.name == prefix or m.name.startswith(prefix + "/") or not members
        ]
        if hasattr(tarfile, "data_filter"):  # 3.11.4+
            tar.extractall(dest, members=chosen, filter="data")
        else:
            tar.extractall(dest, members=chosen)
    return dest / top


# --------------------------------------------------------------------------- script


def _quiet_python_venv(minor: str) -> None:
    with contextlib.suppress(Exception):
        python_venv(minor)


def main(argv: Sequence[str]) -> int:
    versions = [a for a in argv if not a.startswith("py")] or ([] if argv else list(VERSIONS))
    pythons = [a[2:] for a in argv if a.startswith("py")] or ([] if argv else list(PYTHONS))
    started = time.monotonic()
    threads = prebuild(versions)
    for minor in pythons:
        thread = threading.Thread(target=_quiet_python_venv, args=(minor,), daemon=False)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    failed = 0
    for minor in pythons:
        try:
            path = python_venv(minor)
        except MissingInterpreter as exc:
            print(f"python {minor}: skipped: {exc}")
            continue
        except BuildError as exc:
            print(f"python {minor}: FAILED: {exc}", file=sys.stderr)
            failed += 1
            continue
        took = build_times.get(f"py{minor}")
        how = "cached" if took is None else f"built in {took:.1f}s"
        print(f"python {minor}: {path} ({how})")
    for version in versions:
        try:
            path = gunicorn_venv(version)
        except BuildError as exc:
            print(f"gunicorn {version}: FAILED: {exc}", file=sys.stderr)
            failed += 1
            continue
        took = build_times.get(version)
        how = "cached" if took is None else f"built in {took:.1f}s"
        print(f"gunicorn {version}: {path} ({how})")
    print(f"{len(versions) + len(pythons)} venvs done in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
