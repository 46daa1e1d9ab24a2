"""`rollover deploy` for a real Django app, as the README's walk-through does it (issue #23).

A Django project made here (an app with a model and a migration, a template using static
files through ManifestStaticFilesStorage, uploads to MEDIA_ROOT, SQLite): the database and
media/ live in `<root>/shared/`, the settings come from `<root>/shared/.env` (a setting
that is only there, APP_GREETING, is required by the settings module), and each release is
built with `migrate` and `collectstatic`. Every deploy is `rollover deploy --root R
--source S` (plus --release/--json for the test): the rest is in rollover.toml, written
by `--init`. In file order:

1. `--init` on an empty directory, the env file filled in, the first deploy (no master:
   its preflight still probes /healthz, the path from the env file), the master started
   with the start command `--init` printed (the env file exported first);
2. three deploys under keep-alive load: a template change, a Django patch upgrade, and a
   release whose build step fails (collectstatic: a CSS file refers to a missing image);
3. back to the template-change release with `--release`.

Before each deploy a note is written (a row in the shared database, an uploaded file in
the shared media/); after it every note and file is still there, the static file the
template names answers 200, and no request failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matrix
import pytest
from deploy_support import deploy_env, wheelhouse
from harness import REPO, ROLLOVER_CLI, Load, free_port, wait_for
from wheels import run

from rollover import deploy

pytestmark = pytest.mark.process

CACHE = REPO / ".cache" / "django-deploy"
DJANGO = ("5.2.18", "5.2.19")  # a patch upgrade
CLIENTS = 4
THINK = 0.02

SETTINGS = '''\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent  # the release (current resolved)
SECRET_KEY = os.environ["SECRET_KEY"]
GREETING = os.environ["APP_GREETING"]  # only in shared/.env: a KeyError without it
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.staticfiles", "shop"]
MIDDLEWARE = []
ROOT_URLCONF = "djsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates",
              "APP_DIRS": True, "OPTIONS": {}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": BASE_DIR / "db.sqlite3"}}  # a link to shared/db.sqlite3
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # per release, filled by collectstatic
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND":
                    "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / "media"  # a link to shared/media
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
'''

SITE = {
    "manage.py": '''\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
''',
    "djsite/__init__.py": "",
    "djsite/settings.py": SETTINGS,
    "djsite/wsgi.py": '''\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
application = get_wsgi_application()
''',
    "djsite/urls.py": '''\
from django.conf import settings
from django.urls import path, re_path
from django.views.static import serve

from shop import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("notes", views.notes),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]
''',
    "shop/__init__.py": "",
    "shop/apps.py": '''\
from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
''',
    "shop/models.py": '''\
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
''',
    "shop/migrations/__init__.py": "",
    "shop/migrations/0001_initial.py": '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True,
                                               serialize=False, verbose_name="ID")),
                    ("text", models.CharField(max_length=200))],
        ),
    ]
''',
    "shop/views.py": '''\
import os

import django
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string

from shop.models import Note
from shop.version import VERSION


def index(request):
    built = (settings.BASE_DIR / "build-greeting.txt").read_text().strip()
    return JsonResponse({"pid": os.getpid(), "version": VERSION,
                         "django": django.get_version(), "greeting": settings.GREETING,
                         "build_greeting": built, "notes": Note.objects.count(),
                         "page": render_to_string("shop/index.html", {"version": VERSION})})


def healthz(request):
    Note.objects.exists()  # the database and its tables are there
    return HttpResponse("ok")


def notes(request):
    if request.method == "POST":
        note = Note.objects.create(text=request.body.decode())
        name = default_storage.save(f"uploads/note-{note.pk}.txt", ContentFile(request.body))
        return JsonResponse({"id": note.pk, "file": settings.MEDIA_URL + name})
    return JsonResponse({"notes": [n.text for n in Note.objects.order_by("pk")]})
''',
    "shop/templates/shop/index.html": '''\
{% load static %}<link rel="stylesheet" href="{% static 'shop/style.css' %}"><h1>{{ version }}</h1>
''',
    "shop/static/shop/style.css": "h1 { color: #333; }\n",
}

BUILD = ["python manage.py migrate --noinput", "python manage.py collectstatic --noinput",
         'echo "$APP_GREETING" > build-greeting.txt']

ENV_FILE = """\
DJANGO_SETTINGS_MODULE=djsite.settings
SECRET_KEY='test-only-not-secret'
APP_GREETING='hello from shared/.env'
ROLLOVER_PROBE_PATH=/healthz
GUNICORN_CMD_ARGS='--graceful-timeout 5'
"""


def write_site(directory: Path, version: str, django_version: str, *,
               template: str = "", broken_css: bool = False) -> Path:
    for name, text in SITE.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    (directory / "shop" / "version.py").write_text(f"VERSION = {version!r}\n")
    if template:
        path = directory / "shop" / "templates" / "shop" / "index.html"
        path.write_text(path.read_text().replace("<h1>", f"<h1 class={template!r}>"))
    if broken_css:  # ManifestStaticFilesStorage fails on a url() to a missing file
        (directory / "shop" / "static" / "shop" / "style.css").write_text(
            'h1 { background: url("missing.png"); }\n')
    (directory / "requirements.txt").write_text(
        f"django=={django_version}\ngunicorn==27.0.1\n")  # rollover: the wheel in rollover.toml
    return directory


@pytest.fixture(scope="module")
def django_wheels() -> Path:
    """Django 5.2.18 and 5.2.19 with their dependencies, downloaded once."""
    wheels, marker = CACHE / "wheels", CACHE / "wheels.complete"
    key = f"{DJANGO} {sys.version_info[:2]}"
    with matrix.file_lock(CACHE / "wheels.lock"):
        if not marker.is_file() or marker.read_text() != key:
            wheels.mkdir(parents=True, exist_ok=True)
            for version in DJANGO:
                run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                     "-d", str(wheels), f"django=={version}"], timeout=600)
            marker.write_text(key)
    return wheels


@dataclass
class Site:
    base: Path
    root: Path
    port: int
    master: subprocess.Popen[bytes] | None = None

    def deploy(self, version: str, source: Path | None = None, *extra: str) -> Any:
        cmd = [str(ROLLOVER_CLI), "deploy", "--root", str(self.root), "--release", version,
               "--json", *extra]
        if source is not None:
            cmd += ["--source", str(source)]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              check=False, env=deploy_env(), cwd=self.base)
        proc.seconds = time.monotonic() - started  # type: ignore[attr-defined]
        return proc

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def index(self) -> dict[str, Any]:
        status, body = self.get("/")
        assert status == 200, body[:500]
        return dict(json.loads(body))

    def write_note(self, text: str) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/notes",
                                     data=text.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["file"])

    def check_data(self, notes: dict[str, str]) -> None:
        """Every note written so far is in the database, its file in media/; the
        stylesheet the page names is served."""
        status, body = self.get("/notes")
        assert status == 200 and json.loads(body)["notes"] == list(notes), body
        for text, url in notes.items():
            assert self.get("/" + url.lstrip("/")) == (200, text.encode()), url
        page = self.index()["page"]
        css = page.split('href="', 1)[1].split('"', 1)[0]
        assert css.startswith("/static/shop/style.") and css != "/static/shop/style.css", page
        assert self.get(css)[0] == 200, css


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, django_wheels: Path) -> Iterator[Site]:
    wheels = wheelhouse(tmp_path_factory)
    base = tmp_path_factory.mktemp("deploy-django")
    site = Site(base, base / "srv" / "shop", free_port())
    yield site
    if site.master is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int((base / "run" / "gunicorn.pid").read_text()), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            site.master.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(site.master.pid, signal.SIGKILL)
    print(f"\n[django wheels] {django_wheels}, rollover wheels {wheels}\n"
          + (site.base / "master.log").read_text(errors="replace")[-3000:]
          if (site.base / "master.log").exists() else "")


NOTES: dict[str, str] = {}


def test_init_first_deploy_and_start(site: Site, tmp_path_factory: pytest.TempPathFactory,
                                     django_wheels: Path) -> None:
    wheels = wheelhouse(tmp_path_factory)
    pidfile = site.base / "run" / "gunicorn.pid"
    init = subprocess.run(
        [str(ROLLOVER_CLI), "deploy", "--init", "--root", str(site.root), "--pidfile",
         str(pidfile), "--app", "djsite.wsgi:application", "--bind", f"127.0.0.1:{site.port}",
         "--workers", "2", "--shared", "media/", "--shared", "db.sqlite3",
         *[a for cmd in BUILD for a in ("--build", cmd)],
         "--wheel", str(next(wheels.glob("gunicorn_rollover-*.whl"))),
         "--find-links", str(wheels), "--find-links", str(django_wheels), "--no-index",
         "--keep", "2", "--json"],
        capture_output=True, text=True, timeout=60, check=False, env=deploy_env())
    assert init.returncode == 0, init.stderr
    assert f"EnvironmentFile={site.root}/shared/.env" in init.stderr
    (site.root / "shared" / ".env").write_text(ENV_FILE)  # the operator's settings
    first = site.deploy("v1", write_site(site.base / "src" / "v1", "v1", DJANGO[0]))
    print(f"\n[first deploy] {first.seconds:.1f}s\n{first.stderr}")
    assert first.returncode == 0, first.stdout + first.stderr
    out = json.loads(first.stdout)
    assert out["method"] == "start"
    # the first deploy probes too: the path comes from the env file
    preflight = next(s for s in out["steps"] if s["step"] == "preflight")
    assert "GET /healthz -> 200" in preflight["detail"], preflight
    assert "Applying shop.0001_initial... OK" in first.stderr  # the build step's output
    assert f"--bind 127.0.0.1:{site.port} --workers 2" in first.stderr  # from rollover.toml
    assert (site.root / "shared" / "db.sqlite3").stat().st_size > 0
    assert os.readlink(site.root / "releases" / "v1" / "media") == "../../shared/media"
    # the start command --init printed: the env file exported, then gunicorn through current
    env = {k: v for k, v in deploy_env().items() if k not in ("APP_GREETING", "SECRET_KEY")}
    log = open(site.base / "master.log", "wb")  # noqa: SIM115
    site.master = subprocess.Popen(["sh", "-c", json.loads(init.stdout)["start_shell"]],
                                   stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=site.base, start_new_session=True)
    log.close()
    wait_for(lambda: _serving(site), 60, what="the Django master to serve")
    answer = site.index()
    # a setting only in the env file reached the build step and the workers
    assert answer["greeting"] == answer["build_greeting"] == "hello from shared/.env"
    assert answer["version"] == "v1" and answer["django"] == DJANGO[0]
    NOTES[f"before-{len(NOTES)}"] = site.write_note(f"before-{len(NOTES)}")
    site.check_data(NOTES)


def _serving(site: Site) -> bool:
    try:
        return site.get("/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize(("version", "django", "changes", "expected"), [
    ("v2", DJANGO[0], {"template": "changed"}, 0),
    ("v3", DJANGO[1], {"template": "changed"}, 0),
    ("v4", DJANGO[1], {"broken_css": True}, deploy.EXIT_BUILD_FAILED),
])
def test_deploy_under_load(site: Site, version: str, django: str, changes: dict[str, Any],
                           expected: int) -> None:
    assert site.master is not None, "the first deploy's test failed"
    live = site.index()["version"]
    NOTES[f"before-{version}"] = site.write_note(f"before-{version}")
    source = write_site(site.base / "src" / version, version, django, **changes)
    with Load(site.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        result = site.deploy(version, source)
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[deploy {version}] exit {result.returncode} in {result.seconds:.1f}s, "
          f"{load.describe()}\n{result.stderr}")
    assert result.returncode == expected, result.stdout + result.stderr
    assert load.failed() == [], load.describe()
    serving = version if expected == 0 else live
    assert set(load.versions_after(done_at)) == {serving}
    answer = site.index()
    assert answer["django"] == django if expected == 0 else True
    site.check_data(NOTES)
    if expected == deploy.EXIT_BUILD_FAILED:
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("rollover: build failed: `python manage.py collectstatic"), error
        assert "missing.png" in error, error
        meta = json.loads((site.root / "releases" / version / deploy.METADATA).read_text())
        assert "collectstatic" in meta["failed"], meta  # kept for inspection
        assert os.readlink(site.root / "current") == f"releases/{live}"
    else:
        out = json.loads(result.stdout)
        assert out["method"] == "hup"
        # --keep 2 (rollover.toml): v3 is the third release that served, v1 goes
        assert out["pruned"] == (["v1"] if version == "v3" else []), out


def test_back_to_an_earlier_release(site: Site) -> None:
    assert site.master is not None, "the first deploy's test failed"
    NOTES["before-rollback"] = site.write_note("before-rollback")
    with Load(site.port, clients=CLIENTS, keepalive=True, think=THINK) as load:
        load.wait_requests(30)
        result = site.deploy("v2")
        done_at = time.monotonic()
        load.wait_requests(30, after=done_at)
    print(f"\n[back to v2] exit {result.returncode} in {result.seconds:.1f}s, "
          f"{load.describe()}\n{result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert load.failed() == [], load.describe()
    assert set(load.versions_after(done_at)) == {"v2"}
    assert site.index()["django"] == DJANGO[0]
    site.check_data(NOTES)
    # --keep 2: the two newest releases that served, v2 and v3, stay; the failed v4 is
    # kept apart (--keep-failed)
    out = json.loads(result.stdout)
    assert out["pruned"] == [] and out["kept"] == ["v4", "v3", "v2"], out
    releases = sorted(p.name for p in (site.root / "releases").iterdir()
                      if not p.name.startswith("."))
    assert releases == ["v2", "v3", "v4"], releases
    assert sorted(p.name for p in (site.root / "shared").iterdir()) == [
        ".env", "db.sqlite3", "media"]
