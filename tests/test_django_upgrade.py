"""A real framework upgrade end to end: Django 5.1 -> 5.2 under `--preload`.

A Django site (settings, an app with a model, a view that looks the model up in the app
registry and builds a query with it) is served with `--preload`, so Django, the settings
and the app's models are imported in the master. `pip install` of Django 5.2 into the
site's venv, then HUP: every answer must come from the new Django with a working app
registry (the model the registry returns is the app module's own class, its queries
build), and nothing is logged at ERROR. That needs the purge by dependency: Django
imported the site's settings and apps through `importlib.import_module`, so purging the
upgraded Django alone, or the app alone, would leave one holding the other's old objects.

The Django wheels are downloaded once into `.cache/django/` (gitignored; an fcntl lock
makes parallel sessions wait, a marker file says the download completed); each run
installs them into a venv of its own.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import matrix
import pytest
from harness import REPO, AppCode, VenvMaster, answers, ready_workers, refresh_lines, roll
from wheels import Venv, run

pytestmark = pytest.mark.process

CACHE = REPO / ".cache" / "django"
SERIES = {"old": "django>=5.1,<5.2", "new": "django>=5.2,<5.3"}
RECIPE = 1
WORKERS = 2

SITE = {
    "djsite/__init__.py": "",
    "djsite/settings.py": '''\
import os
BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "rollover-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
MIDDLEWARE = []
ROOT_URLCONF = "djsite.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.path.join(BASE_DIR, "db.sqlite3")}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
''',
    "djsite/urls.py": '''\
from django.urls import path

from shop import views

urlpatterns = [path("", views.index)]
''',
    "djsite/wsgi.py": '''\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
application = get_wsgi_application()
''',
    "shop/__init__.py": "",
    "shop/apps.py": '''\
from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
''',
    "shop/models.py": '''\
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=40)
''',
    "shop/views.py": '''\
import os

import django
from django.apps import apps
from django.http import JsonResponse

import shop.models


def index(request):
    item = apps.get_model("shop", "Item")  # the app registry, per request
    sql = str(item.objects.filter(name="x").query)
    return JsonResponse({
        "pid": os.getpid(),
        "django": django.get_version(),
        "label": item._meta.label,
        "registry_ready": apps.ready,
        "same_class": item is shop.models.Item,
        "query": "shop_item" in sql and "name" in sql,
    })
''',
}


def _versions(wheels: Path) -> dict[str, str]:
    found = sorted(p.name for p in wheels.glob("[Dd]jango-5.*-py3-none-any.whl"))
    out = {}
    for name in found:
        version = re.match(r"[Dd]jango-([^-]+)-", name)
        if version is None:
            continue
        series = "old" if version[1].startswith("5.1") else "new"
        out[series] = version[1]
    return out


@pytest.fixture(scope="session")
def django_wheels() -> Iterator[tuple[Path, dict[str, str]]]:
    """Django 5.1.x and 5.2.x wheels (and their dependencies), downloaded once."""
    wheels = CACHE / "wheels"
    marker = CACHE / "wheels.complete"
    key = f"{RECIPE} {sys.version_info[:2]} {SERIES}"
    with matrix.file_lock(CACHE / "wheels.lock"):
        if not marker.is_file() or marker.read_text() != key:
            wheels.mkdir(parents=True, exist_ok=True)
            for requirement in SERIES.values():  # one call each: pip refuses both at once
                run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                     "-d", str(wheels), requirement], timeout=600)
            marker.write_text(key)
    versions = _versions(wheels)
    assert set(versions) == {"old", "new"}, sorted(p.name for p in wheels.iterdir())
    yield wheels, versions


def test_django_minor_upgrade_under_preload(
        tmp_path: Path, django_wheels: tuple[Path, dict[str, str]],
        request: pytest.FixtureRequest) -> None:
    wheels, versions = django_wheels
    venv = Venv(tmp_path / "env")
    venv.install(f"django=={versions['old']}", "asgiref", "sqlparse", find_links=wheels)
    app = AppCode(tmp_path / "site")
    for name, text in SITE.items():
        (app.dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app.dir / name).write_text(text)
    workdir = tmp_path / "master"
    workdir.mkdir()
    master = VenvMaster(workdir, app, workers=WORKERS, extra_args=["--preload"],
                        env={"DJANGO_SETTINGS_MODULE": "djsite.settings"},
                        app_spec="djsite.wsgi:application", gunicorn_script=venv.gunicorn)
    try:
        master.start()
        master.wait_status(lambda s: len(ready_workers(s)) == WORKERS, 60, "workers ready")
        expected = {"label": "shop.Item", "registry_ready": True, "same_class": True,
                    "query": True}
        before = answers(master)
        assert {a["django"] for a in before.values()} == {versions["old"]}
        assert all({k: a[k] for k in expected} == expected for a in before.values()), before

        venv.install(f"django=={versions['new']}", find_links=wheels)
        status = roll(master, timeout=120)

        after = answers(master, status)
        line = refresh_lines(master)[-1]
        assert {a["django"] for a in after.values()} == {versions["new"]}, line
        assert all({k: a[k] for k in expected} == expected for a in after.values()), after
        report = status["refresh"]
        assert report["distributions_changed"] == {
            "django": f"{versions['old']} -> {versions['new']}"}, report
        assert {"django", "djsite", "shop"} <= set(report["modules_purged"]), report
        assert report["needs_reexec"] == [], report
        errors = [ln for ln in master.log_text().splitlines()
                  if "[ERROR]" in ln or "[CRITICAL]" in ln or "Traceback" in ln]
        assert errors == [], errors
        print(f"\n{line}\n{json.dumps(status['last_rollout'])}")
    finally:
        master.stop()
        if any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call")):
            print(master.tail(150))

