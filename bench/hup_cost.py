"""What a HUP costs with a big app in the master, and what the import recorder costs.

One-off measurement (not run by CI):

    .venv/bin/python -m bench.hup_cost [--venv .cache/bench/venv] [--hups 3]

The venv (made if missing, from PyPI) holds Django 5.1, pandas and SQLAlchemy; gunicorn and
this work tree's rollover are seen through a `.pth` line (as in the tests). It measures

1. the import recorder's overhead (`rollover.refresh.imports_graph.install()`): a fresh interpreter
   imports pandas, SQLAlchemy (ORM, a declarative model) and Django (setup with two contrib
   apps), with and without the recorder, 7 runs each interleaved; medians;
2. the HUP cost under `--preload` with that app in the master (~1,000+ modules): the
   refresh's duration and the whole preparation (refresh, config, re-import of what was
   purged), for HUPs that change nothing (with the dependency purge on and off) and for
   a `pip install` of Django 5.2 (Django and the app purged and re-imported).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gunicorn

import rollover

REPO = Path(__file__).resolve().parent.parent

IMPORTS = """\
import os, sys, time
if os.environ.get("RECORD") == "1":
    from rollover.refresh import imports_graph
    imports_graph.install()
else:
    import rollover.refresh.imports_graph  # imported either way: only install() differs
t, c = time.perf_counter(), time.process_time()
import pandas, sqlalchemy, sqlalchemy.orm
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
                   DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": ":memory:"}})
django.setup()
import django.db.models, django.contrib.auth.models
print(time.perf_counter() - t, time.process_time() - c, len(sys.modules))
"""

APP = '''\
import os
import sys

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
from django.core.wsgi import get_wsgi_application  # noqa: E402


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "thing"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(30))


FRAME = pd.DataFrame({"a": [1, 2, 3]})
django_app = get_wsgi_application()


def app(environ, start_response):
    import django
    body = (f'{{"pid": {os.getpid()}, "modules": {len(sys.modules)}, '
            f'"django": "{django.get_version()}", "sum": {int(FRAME.a.sum())}}}').encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

SETTINGS = '''\
SECRET_KEY = "bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
'''


def pip(venv: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", *args], check=True)


def make_venv(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip(venv, "django>=5.1,<5.2", "pandas", "sqlalchemy")
    (site,) = (venv / "lib").glob("python3*/site-packages")
    base = venv / "rollover-base"
    base.mkdir(exist_ok=True)
    gunicorn_dir = Path(gunicorn.__file__).parent
    for target in [gunicorn_dir, *gunicorn_dir.parent.glob("gunicorn-*.dist-info"),
                   Path(rollover.__file__).parent]:
        link = base / target.name
        if not link.exists():
            link.symlink_to(target)
    (site / "_rollover_bench_base.pth").write_text(f"{base}\n")
    script = venv / "bin" / "gunicorn"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\n"
                      "from gunicorn.app.wsgiapp import run\nsys.exit(run())\n")
    script.chmod(0o755)


def recorder_overhead(venv: Path, runs: int) -> dict[str, float]:
    """CPU time of the imports (the machine may be busy: wall time is noisy), the fastest
    of `runs` each, interleaved."""
    times: dict[str, list[float]] = {"0": [], "1": []}
    modules = 0
    for _ in range(runs):
        for record in ("0", "1"):
            env = {**os.environ, "RECORD": record}
            env.pop("PYTHONPATH", None)
            out = subprocess.run([str(venv / "bin" / "python"), "-c", IMPORTS], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            times[record].append(float(out[1]))
            modules = int(out[2])
    off, on = min(times["0"]), min(times["1"])
    return {"modules": modules, "import_cpu_s_without": round(off, 4),
            "import_cpu_s_with": round(on, 4), "overhead_pct": round(100 * (on - off) / off, 2),
            "median_without": round(statistics.median(times["0"]), 4),
            "median_with": round(statistics.median(times["1"]), 4)}


class Server:
    def __init__(self, venv: Path, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.log = work / "master.log"
        self.pidfile = work / "gunicorn.pid"
        self.port = 0
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("ROLLOVER_", "PYTHON", "VIRTUAL_ENV"))}
        full_env.update(env)
        (work / "gunicorn.rollover.json").unlink(missing_ok=True)  # a previous master's
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "gunicorn"), "-c", "python:rollover.hooks", "-b",
                 f"127.0.0.1:{self.port}", "--pid", str(self.pidfile), "-w", "2",
                 "--preload", "--no-control-socket", "--chdir", str(work), "app:app"],
                cwd=work, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.wait(lambda s: s["state"] == "idle" and len(s["workers"]) == 2, 120)

    def status(self) -> dict:
        try:
            return json.loads((self.work / "gunicorn.rollover.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            time.sleep(0.05)
        raise TimeoutError(self.log.read_text()[-3000:])

    def get(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as resp:
            return json.loads(resp.read())

    def hup(self) -> dict[str, object]:
        before = self.status()["reloads"]
        offset = len(self.log.read_text())
        os.kill(self.proc.pid, signal.SIGHUP)
        status = self.wait(lambda s: s["reloads"] > before and s["rollout"] is None
                           and s["state"] == "idle"
                           and all(w["state"] == "ready" for w in s["workers"]), 120)
        text = self.log.read_text()[offset:]
        refresh = re.search(r"import refresh: (.*) in ([0-9.]+)s", text)
        prepared = re.search(r"reload prepared in ([0-9.]+)s", text)
        return {"refresh_s": float(refresh[2]) if refresh else None,
                "prepared_s": float(prepared[1]) if prepared else None,
                "summary": refresh[1] if refresh else None,
                "result": status["last_rollout"]["result"]}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def hup_costs(venv: Path, hups: int) -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "app.py").write_text(APP)
        (work / "site_settings.py").write_text(SETTINGS)
        for label, env in (("no change, dependents on", {}),
                           ("no change, dependents off", {"ROLLOVER_REFRESH_DEPENDENTS": "0"})):
            server = Server(venv, work, env)
            try:
                out["master_modules"] = server.get()["modules"]
                out[label] = [server.hup() for _ in range(hups)]
            finally:
                server.stop()
        server = Server(venv, work, {})
        try:
            pip(venv, "django>=5.2,<5.3")
            out["django 5.1 -> 5.2"] = server.hup()
            out["django_served"] = sorted({server.get()["django"] for _ in range(6)})
            pip(venv, "django>=5.1,<5.2")  # and back, for a second sample (and the next run)
            out["django 5.2 -> 5.1"] = server.hup()
        finally:
            server.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".cache" / "bench" / "venv")
    parser.add_argument("--hups", type=int, default=3)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    make_venv(args.venv)
    result = {"recorder": recorder_overhead(args.venv, args.runs),
              "hup": hup_costs(args.venv, args.hups)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

