"""`rollover.worker.extend`: the configured worker class's family, found by its base classes, and
what the master forks for it (in-process, no gunicorn master)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from rollover.worker import extend
from rollover.worker.drain import SUMMARY
from rollover.worker.extend import extend_worker_class, family_of


def load(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn.workers
        cls: type = getattr(importlib.import_module(module), name)
    return cls


def mixins(worker_class: type) -> list[str]:
    return [c.__name__ for c in worker_class.__mro__ if c.__name__ in ("UvicornDrain", "ASGIDrain")]


WSGI = [("gunicorn.workers.sync.SyncWorker", "sync"),
        ("gunicorn.workers.gthread.ThreadWorker", "gthread"),
        ("gunicorn.workers.ggevent.GeventWorker", "gevent"),
        ("gunicorn.workers.ggevent.GeventPyWSGIWorker", "gevent")]

ASGI = [("uvicorn_worker.UvicornWorker", "uvicorn", "UvicornDrain"),
        ("uvicorn_worker.UvicornH11Worker", "uvicorn", "UvicornDrain"),
        ("uvicorn.workers.UvicornWorker", "uvicorn", "UvicornDrain"),
        ("uvicorn.workers.UvicornH11Worker", "uvicorn", "UvicornDrain"),
        ("gunicorn.workers.gasgi.ASGIWorker", "asgi", "ASGIDrain")]


@pytest.mark.parametrize(("dotted", "family"), WSGI, ids=[d for d, _ in WSGI])
def test_wsgi_families_get_readiness_and_keep_gunicorns_drain(dotted: str, family: str) -> None:
    if family == "gevent":
        pytest.importorskip("gevent")
    cls = load(dotted)
    found = family_of(cls)
    assert found is not None and found[0].name == family, found
    ext = extend_worker_class(cls, name="k")
    assert ext.line == "rollover: worker class k: readiness, drain: gunicorn's own"
    assert not ext.warn
    assert issubclass(ext.worker_class, cls) and ext.worker_class._rollover_reports
    assert mixins(ext.worker_class) == []


@pytest.mark.parametrize(("dotted", "family", "mixin"), ASGI, ids=[d for d, _, _ in ASGI])
def test_asgi_families_get_readiness_and_the_drain(dotted: str, family: str, mixin: str) -> None:
    cls = load(dotted)
    found = family_of(cls)
    assert found is not None and found[0].name == family, found
    ext = extend_worker_class(cls, name=dotted)
    assert ext.line == f"rollover: worker class {dotted}: readiness, drain ({SUMMARY})"
    assert not ext.warn
    assert issubclass(ext.worker_class, cls) and ext.worker_class._rollover_reports
    assert mixins(ext.worker_class) == [mixin]
    # the same class on every call (a HUP re-extends the configured class)
    assert extend_worker_class(cls, name=dotted).worker_class is ext.worker_class

    off = extend_worker_class(cls, drain=False, name=dotted)
    assert off.line == f"rollover: worker class {dotted}: readiness; drain: off (rollover_drain)"
    assert not off.warn and mixins(off.worker_class) == []


def test_rollover_workers_are_the_stock_classes_with_the_drain() -> None:
    import uvicorn_worker
    from gunicorn.workers.gasgi import ASGIWorker

    from rollover import workers

    assert workers.UvicornWorker is extend.drained(uvicorn_worker.UvicornWorker)
    assert workers.UvicornH11Worker.CONFIG_KWARGS == {"loop": "asyncio", "http": "h11"}
    assert issubclass(workers.ASGIWorker, ASGIWorker)
    for cls in (workers.UvicornWorker, workers.UvicornH11Worker, workers.ASGIWorker):
        ext = extend_worker_class(cls)
        assert len(mixins(ext.worker_class)) == 1, ext.worker_class.__mro__
        assert not ext.warn and "drain (" in ext.line
    # rollover_drain=false does not take apart a class that has the drain built in
    assert mixins(extend_worker_class(workers.UvicornWorker, drain=False).worker_class)
    with pytest.raises(AttributeError):
        _ = workers.NoSuchWorker  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["UvicornWorker", "UvicornH11Worker", "ASGIWorker"])
def test_rollover_workers_resolve_by_their_own_dotted_path(name: str) -> None:
    """uvicorn-worker's suite (and pickle, and tools printing a class path) name a class by
    f"{cls.__module__}.{cls.__qualname__}": that path must find the class itself."""
    import pickle

    from rollover import workers

    cls = getattr(workers, name)
    assert f"{cls.__module__}.{cls.__qualname__}" == f"rollover.workers.{name}"
    assert load(f"{cls.__module__}.{cls.__qualname__}") is cls
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_an_extended_class_is_named_as_the_class_it_extends() -> None:
    """Its path finds the configured class, which a master extends the same way."""
    for dotted, *_ in ASGI:
        ext = extend_worker_class(load(dotted)).worker_class
        found = load(f"{ext.__module__}.{ext.__qualname__}")
        assert extend_worker_class(found).worker_class is ext, dotted


def test_subclass_keeping_the_serving_loop_gets_the_drain() -> None:
    import uvicorn_worker
    from gunicorn.workers.gasgi import ASGIWorker

    class H11(uvicorn_worker.UvicornWorker):
        CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}

    class Quiet(ASGIWorker):
        def handle_winch_signal(self) -> None:
            pass

    for cls in (H11, Quiet):
        ext = extend_worker_class(cls)
        assert len(mixins(ext.worker_class)) == 1 and not ext.warn, ext.line


@pytest.mark.parametrize("method", ["_serve", "run"])
def test_subclass_overriding_the_serving_loop_gets_readiness_and_a_warning(method: str) -> None:
    import uvicorn_worker

    Own = type("Own", (uvicorn_worker.UvicornWorker,), {method: lambda self: None})
    Own.__module__ = "app"
    Sub = type("Sub", (Own,), {})  # overridden further up still counts
    Sub.__module__ = "app"
    ext = extend_worker_class(Sub, name="app.Sub")
    assert ext.warn
    assert ext.line == (f"rollover: worker class app.Sub: readiness; the drain cannot be "
                        f"added: app.Own.{method} replaces the stock serving loop, so a roll "
                        f"may fail keep-alive requests")
    assert mixins(ext.worker_class) == [] and ext.worker_class._rollover_reports


def test_asgi_subclass_overriding_the_exit_signal_gets_no_drain() -> None:
    from gunicorn.workers.gasgi import ASGIWorker

    class Own(ASGIWorker):
        def handle_exit_signal(self) -> None:
            super().handle_exit_signal()

    ext = extend_worker_class(Own)
    assert ext.warn and "Own.handle_exit_signal replaces" in ext.line, ext.line
    assert mixins(ext.worker_class) == []


def test_a_class_of_no_known_family_gets_readiness_and_a_warning() -> None:
    from gunicorn.workers.base import Worker

    class Custom(Worker):
        pass

    assert family_of(Custom) is None
    ext = extend_worker_class(Custom, name="app.Custom")
    assert ext.warn
    assert ext.line.startswith("rollover: worker class app.Custom: readiness; drain: untested "
                               "(the class derives from none of uvicorn, asgi, gevent, "), ext.line
    with pytest.raises(TypeError, match="no drain"):
        extend.drained(Custom)


def test_finding_a_family_imports_nothing() -> None:
    """A WSGI master never imports uvicorn (nor gunicorn's asgi worker) to extend its class;
    each rollover module imports on its own (no cycles)."""
    code = (
        "import sys\n"
        "from gunicorn.workers.gthread import ThreadWorker\n"
        "from rollover.worker.extend import extend_worker_class\n"
        "ext = extend_worker_class(ThreadWorker)\n"
        "loaded = [m for m in ('uvicorn', 'uvicorn_worker', 'gunicorn.workers.gasgi',\n"
        "                      'rollover.worker.drain_uvicorn', 'rollover.worker.drain_asgi')\n"
        "          if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print(ext.line)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "drain: gunicorn's own" in out.stdout
    for module in ("rollover.worker.drain", "rollover.worker.drain_uvicorn",
                   "rollover.worker.drain_asgi", "rollover.worker.extend", "rollover.workers",
                   "rollover.worker.readiness"):
        run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                             text=True, check=False)
        assert run.returncode == 0, f"import {module}: {run.stderr}"
    drain_only = subprocess.run(
        [sys.executable, "-c", "import sys, rollover.worker.drain; "
         "assert 'uvicorn' not in sys.modules and 'gunicorn' not in sys.modules"],
        capture_output=True, text=True, check=False)
    assert drain_only.returncode == 0, drain_only.stderr
