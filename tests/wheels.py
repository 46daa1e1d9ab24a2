"""Tiny distributions made by hand for the refresh tests, and venvs to pip-install them in.

A wheel is a zip: the package files, `<name>-<version>.dist-info/` with METADATA (here
with `Requires-Dist` lines), WHEEL and RECORD (sha256 of every file). Writing one takes a
millisecond, so each test makes its own, and `pip install` puts them in place exactly as
it would a wheel from an index (same dist-info, same RECORD-driven uninstall on upgrade).

`Venv` is a venv of the test's own (`python -m venv --without-pip`, ~0.2 s) that sees the
gunicorn installed here and this work tree's rollover through a `.pth` line naming a
directory of symlinks; its `bin/gunicorn` is a script run by the venv's own interpreter,
so `sys.executable`, `sys.prefix` and the refresh's fresh interpreter are the venv's.
`extra_site` adds more directories the same way (e.g. a cached Django install).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Mapping
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import gunicorn

import rollover


def make_wheel(out_dir: Path, name: str, version: str, files: Mapping[str, str | bytes], *,
               requires: Iterable[str] = ()) -> Path:
    """Write `<name>-<version>-py3-none-any.whl` holding `files` (path in the wheel ->
    content) and its metadata; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    metadata = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                        *(f"Requires-Dist: {r}\n" for r in requires)])
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()}
    contents[f"{info}/METADATA"] = metadata.encode()
    contents[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: rollover-tests\n"
                                 b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    tops = sorted({p.split("/", 1)[0].removesuffix(".py") for p in files
                   if not p.split("/", 1)[0].endswith(EXTENSION_SUFFIXES_TUPLE)})
    contents[f"{info}/top_level.txt"] = "".join(f"{t}\n" for t in tops).encode()
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


EXTENSION_SUFFIXES_TUPLE = tuple(EXTENSION_SUFFIXES)

_C_SOURCE = """\
#include <Python.h>
static PyObject *version(PyObject *self, PyObject *args) {
    return PyUnicode_FromString("%(version)s");
}
static PyMethodDef methods[] = {{"version", version, METH_NOARGS, NULL}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "%(name)s", NULL, -1, methods};
PyMODINIT_FUNC PyInit_%(name)s(void) { return PyModule_Create(&module); }
"""


def build_extension(work: Path, name: str, version: str) -> tuple[str, bytes]:
    """Compile a C extension module `name` whose `version()` returns `version`; returns
    (its file name with this interpreter's suffix, the shared object's bytes)."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"{name}-{version}.c"
    source.write_text(_C_SOURCE % {"name": name, "version": version})
    target = work / f"{name}-{version}.so"
    include = sysconfig.get_paths()["include"]
    done = subprocess.run(["cc", "-shared", "-fPIC", "-O0", f"-I{include}", str(source), "-o",
                           str(target)], capture_output=True, text=True, check=False,
                          timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"compiling {source} failed:\n{done.stderr}")
    return f"{name}{EXTENSION_SUFFIXES[0]}", target.read_bytes()


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ROLLOVER_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run(argv: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=pip_env(), capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


class Venv:
    """A venv of the test's own that sees gunicorn and the work tree's rollover."""

    def __init__(self, root: Path, *, extra_site: Iterable[Path] = ()) -> None:
        self.root = root
        self.venv = root / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)])
        self.python = self.venv / "bin" / "python"
        (self.site,) = (self.venv / "lib").glob("python3*/site-packages")
        base = root / "base"
        base.mkdir()
        gunicorn_dir = Path(gunicorn.__file__).parent
        for target in [gunicorn_dir, *gunicorn_dir.parent.glob("gunicorn-*.dist-info"),
                       Path(rollover.__file__).parent]:
            (base / target.name).symlink_to(target)
        lines = [str(base), *(str(p) for p in extra_site)]
        (self.site / "_rollover_test_base.pth").write_text("".join(f"{ln}\n" for ln in lines))
        self.gunicorn = self.venv / "bin" / "gunicorn"
        self.gunicorn.write_text(f"#!{self.python}\nimport sys\n"
                                 "from gunicorn.app.wsgiapp import run\n"
                                 "sys.exit(run())\n")
        self.gunicorn.chmod(0o755)

    def install(self, *wheels: Path | str, find_links: Path | None = None) -> None:
        """`pip install` into this venv from outside (`pip --python`), without an index."""
        argv = [sys.executable, "-m", "pip", "--python", str(self.python), "install", "-q",
                "--no-index", "--no-deps"]
        if find_links is not None:
            argv += ["--find-links", str(find_links)]
        run([*argv, *(str(w) for w in wheels)])
