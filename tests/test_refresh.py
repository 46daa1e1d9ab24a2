"""Unit tests for rollover.refresh: the pure parts (reconcile, purge selection), the
snapshot/restore pair, the report, and refresh() itself where it runs in a process of its
own (20 refreshes in a row) or must fail without touching anything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from rollover import refresh as rf
from rollover.refresh import (
    Fingerprint,
    changed_tops,
    imports_graph,
    reconcile,
    select_purge,
    versioned,
)
from rollover.refresh import state as refresh_state
from rollover.refresh import unload as refresh_purge
from rollover.refresh.imports_graph import GraphFacts

SP = "/venv/lib/python3.11/site-packages"
STD = ["/py/lib/python311.zip", "/py/lib/python3.11", "/py/lib/python3.11/lib-dynload"]
EGG1 = f"{SP}/pkg-1.0-py3.11.egg"
EGG2 = f"{SP}/pkg-2.0-py3.11.egg"


def everything_exists(path: str) -> bool:
    return True


def nothing_exists(path: str) -> bool:
    return False


# (id, running, fresh, protected, site_derived, exists, expected path, added, removed)
RECONCILE_CASES = [
    ("egg replaced (pth rewritten, old egg left on disk)",
     ["/app", "/venv/bin", *STD, SP, EGG1], [*STD, SP, EGG2], set(), {EGG1},
     everything_exists,
     ["/app", "/venv/bin", *STD, SP, EGG2], [EGG2], [EGG1]),
    ("egg replaced, old one superseded by version even if not known site-derived",
     [*STD, SP, EGG1], [*STD, SP, EGG2], set(), set(), everything_exists,
     [*STD, SP, EGG2], [EGG2], [EGG1]),
    ("old egg first (sys.__plen trick): the new one takes its precedence",
     ["/app", EGG1, *STD, SP], [EGG2, *STD, SP], set(), {EGG1}, everything_exists,
     ["/app", EGG2, *STD, SP], [EGG2], [EGG1]),
    (".pth removed: its entry goes although the directory still exists",
     [*STD, SP, "/opt/extra"], [*STD, SP], set(), {"/opt/extra"}, everything_exists,
     [*STD, SP], [], ["/opt/extra"]),
    ("new .pth: its entry lands where the fresh interpreter has it",
     ["/app", *STD, SP, "/opt/app-inserted"], [*STD, SP, "/opt/new", "/opt/new2"], set(),
     set(), everything_exists,
     ["/app", *STD, SP, "/opt/new", "/opt/new2", "/opt/app-inserted"],
     ["/opt/new", "/opt/new2"], []),
    ("chdir, pythonpath and '' kept even when missing; unknown missing entries dropped",
     ["/srv/app", "/srv/lib", "", *STD, SP, "/gone/app-inserted"], [*STD, SP],
     {"/srv/app", "/srv/lib"}, set(), nothing_exists,
     ["/srv/app", "/srv/lib", "", *STD, SP], [], ["/gone/app-inserted"]),
    ("protected beats site-derived",
     ["/srv/app", *STD, SP], [*STD, SP], {"/srv/app"}, {"/srv/app"}, nothing_exists,
     ["/srv/app", *STD, SP], [], []),
    ("running order kept for entries on both lists",
     ["/b", "/a", *STD], ["/a", "/b", *STD], set(), set(), everything_exists,
     ["/b", "/a", *STD], [], []),
    ("duplicates dropped, compared normalized",
     [*STD, SP, SP + "/", "/x", "/x/../x"], [*STD, SP], set(), set(), everything_exists,
     [*STD, SP, "/x"], [], []),
    ("a whole new venv: old site-derived entries out, new ones in",
     ["/app", *STD, "/old/site-packages"], [*STD, "/new/site-packages"], set(),
     {"/old/site-packages"}, everything_exists,
     ["/app", *STD, "/new/site-packages"], ["/new/site-packages"], ["/old/site-packages"]),
    ("no fresh entry on the running path: appended",
     ["/app"], ["/a", "/b"], set(), set(), everything_exists,
     ["/app", "/a", "/b"], ["/a", "/b"], []),
    ("editable placeholder of an uninstalled project goes (not a real path)",
     [*STD, SP, "__editable__.pkg-1.0.finder.__path_hook__"],
     [*STD, SP, "__editable__.pkg-2.0.finder.__path_hook__"], set(), set(),
     lambda p: p.startswith("/"),
     [*STD, SP, "__editable__.pkg-2.0.finder.__path_hook__"],
     ["__editable__.pkg-2.0.finder.__path_hook__"],
     ["__editable__.pkg-1.0.finder.__path_hook__"]),
    ("nothing changed", ["/app", "", *STD, SP], [*STD, SP], set(), {SP}, everything_exists,
     ["/app", "", *STD, SP], [], []),
]


@pytest.mark.parametrize(
    ("running", "fresh", "protected", "derived", "exists", "path", "added", "removed"),
    [case[1:] for case in RECONCILE_CASES], ids=[case[0] for case in RECONCILE_CASES])
def test_reconcile(running, fresh, protected, derived, exists, path, added, removed):
    result = reconcile(running, fresh, protected, site_derived=derived, exists=exists)
    assert result == (path, added, removed)
    # idempotent: once more with the same fresh path changes nothing
    again = reconcile(result[0], fresh, protected, site_derived=derived | set(fresh),
                      exists=exists)
    assert again == (path, [], [])


def test_reconcile_does_not_touch_its_input():
    running = [*STD, SP, EGG1]
    reconcile(running, [*STD, SP, EGG2], site_derived={EGG1})
    assert running == [*STD, SP, EGG1]


@pytest.mark.parametrize(("entry", "expected"), [
    ("/sp/pkg-1.0-py3.11.egg", ("pkg", "1.0")),
    ("/sp/My.Pkg-2.0.1-py3.11-linux-x86_64.egg", ("my_pkg", "2.0.1")),
    ("/opt/libs/foo_bar-1.2.3", ("foo_bar", "1.2.3")),
    ("/opt/libs/foo-1.2.3/", ("foo", "1.2.3")),
    ("/sp/pkg-1.0.zip", ("pkg", "1.0")),
    ("/venv/lib/python3.11/site-packages", None),
    ("/py/lib/python3.11/lib-dynload", None),
    ("/py/lib/python311.zip", None),
    ("/srv/releases/2", None),
    ("", None),
])
def test_versioned(entry, expected):
    assert versioned(entry) == expected


# --------------------------------------------------------------------------- purge selection

def fp(n: int, mtime: int = 100) -> Fingerprint:
    return Fingerprint(1, n, 10 * n, mtime, mtime)


FILES = {
    "pkg": "/sp/pkg/__init__.py",
    "pkg.sub": "/sp/pkg/sub.py",
    "pkg.sub.deep": "/sp/pkg/sub/deep.py",
    "pkg._speed": "/sp/pkg/_speed.cpython-311-x86_64-linux-gnu.so",
    "other": "/sp/other.py",
    "ns": None,
    "gunicorn": "/sp/gunicorn/__init__.py",
    "workerlib": "/sp/workerlib.py",
}
BEFORE = {path: fp(i) for i, path in enumerate(filter(None, FILES.values()), 1)}


def with_changes(**changes: Fingerprint | None) -> dict[str, Fingerprint | None]:
    now: dict[str, Fingerprint | None] = dict(BEFORE)
    for name, value in changes.items():
        now[FILES[name.replace("__", ".")]] = value
    return now


def changed(now, before=BEFORE, files=FILES, **kwargs):
    kwargs.setdefault("since_ns", 1_000)
    return changed_tops(files, before, now, **kwargs)


def test_changed_nothing():
    assert changed(with_changes()) == {}


def test_changed_submodule_names_the_whole_package():
    assert changed(with_changes(pkg__sub__deep=fp(99))) == {
        "pkg": "/sp/pkg/sub/deep.py changed"}


def test_changed_gone_file():
    assert changed(with_changes(other=None)) == {"other": "/sp/other.py is gone"}


def test_changed_file_without_earlier_fingerprint_uses_the_time():
    before = {k: v for k, v in BEFORE.items() if k != "/sp/other.py"}
    assert changed(with_changes(other=fp(50, mtime=999)), before=before) == {}
    assert list(changed(with_changes(other=fp(50, mtime=1001)), before=before)) == ["other"]


def test_changed_moved_or_new_distribution_version_wins():
    result = changed(with_changes(other=fp(3)), moved={
        "other": "distribution other 1.0 -> 2.0",
        "gunicorn": "distribution gunicorn 27.0.1 -> 27.0.2"})
    assert result == {"gunicorn": "distribution gunicorn 27.0.1 -> 27.0.2",
                      "other": "distribution other 1.0 -> 2.0"}


def test_changed_module_without_file_is_left_alone():
    assert changed({}, files={"ns": None}, before={}) == {}


# select_purge: the graph decision (rollover.refresh.imports_graph), on hand-written facts

LOADED = frozenset({"dep", "mid", "leaf", "app", "cext", "user_of_cext", "gunicorn",
                    "rollover", "packaging", "workerlib", "plugins"})
EDGES = {
    "mid": {"dep"},             # from dep import __version__ as DEP (or Requires-Dist)
    "leaf": {"mid"},            # two steps away from dep
    "app": {"leaf", "cext"},
    "user_of_cext": {"cext"},
    "cext": {"dep2"},           # dep2 is not loaded: ignored
    "gunicorn": {"packaging"},  # gunicorn's Requires-Dist
    "rollover": {"gunicorn"},
    "plugins": {"app"},         # a registry that imported the app's modules
}


def facts(**kwargs) -> GraphFacts:
    kwargs.setdefault("loaded", LOADED)
    kwargs.setdefault("edges", EDGES)
    kwargs.setdefault("app", frozenset({"app"}))
    kwargs.setdefault("protected", frozenset({"gunicorn", "rollover", "workerlib"}))
    kwargs.setdefault("native", {"cext": "cext._speed"})
    return GraphFacts(**kwargs)


def test_select_nothing_changed_purges_the_app_and_what_reaches_it():
    plan = select_purge(facts())
    assert plan.purge == {"app": "the app's own package", "plugins": "depends on app"}
    assert plan.blocked == {}


def test_select_changed_package_takes_every_dependent_along():
    plan = select_purge(facts(changed={"dep": "distribution dep 1.0 -> 2.0"}))
    assert plan.purge == {"dep": "distribution dep 1.0 -> 2.0", "mid": "depends on dep",
                          "leaf": "depends on mid", "app": "the app's own package",
                          "plugins": "depends on app"}
    assert plan.blocked == {}


def test_select_without_dependents_purges_only_what_changed():
    plan = select_purge(facts(changed={"dep": "x"}, dependents=False))
    assert plan == ({"dep": "x"}, {})


def test_select_protected_change_is_blocked_and_what_it_holds_stays():
    plan = select_purge(facts(changed={"gunicorn": "g 1 -> 2", "packaging": "p 1 -> 2",
                                       "workerlib": "w changed"}))
    assert plan.purge == {"app": "the app's own package", "plugins": "depends on app"}
    assert plan.blocked == {"gunicorn": "g 1 -> 2", "workerlib": "w changed",
                            "packaging": "p 1 -> 2 (held by gunicorn, which is never purged)"}


def test_select_held_by_protected_code_through_its_namespace():
    plan = select_purge(facts(changed={"dep": "d"}, held={"mid": "workerlib"}))
    # mid stays (workerlib holds it), so does what mid depends on: dep is blocked
    assert "dep" not in plan.purge and "mid" not in plan.purge and "leaf" not in plan.purge
    assert plan.blocked == {"dep": "d (held by workerlib, which is never purged)"}


def test_select_changed_distribution_with_a_loaded_c_extension_is_kept_whole():
    plan = select_purge(facts(changed={"cext": "distribution cext 1.0 -> 2.0"}))
    assert "cext" not in plan.purge and "user_of_cext" not in plan.purge
    assert plan.blocked == {
        "cext": "distribution cext 1.0 -> 2.0; holds the loaded C extension cext._speed, "
                "kept whole"}


def test_select_c_extension_reaching_a_change_keeps_it_and_is_listed():
    edges = {**EDGES, "cext": {"dep"}}
    plan = select_purge(facts(edges=edges, changed={"dep": "dep 1 -> 2"}))
    # cext holds dep: dep stays on its old version for everyone, no mixing; mid, which
    # only reaches dep, has nothing new to re-import against
    assert "dep" not in plan.purge and "cext" not in plan.purge and "mid" not in plan.purge
    assert plan.blocked == {
        "dep": "dep 1 -> 2 (held by cext, which holds a loaded C extension)",
        "cext": "depends on dep, which changed; holds the loaded C extension cext._speed, "
                "kept whole"}


def test_select_cycle_and_unloaded_edges():
    edges = {"a": {"b"}, "b": {"a", "gone"}, "c": {"b"}}
    plan = select_purge(GraphFacts(loaded=frozenset({"a", "b", "c"}), edges=edges,
                                   changed={"a": "a changed", "gone": "not loaded"}))
    assert plan.purge == {"a": "a changed", "b": "depends on a", "c": "depends on b"}


@pytest.mark.parametrize(("metadata", "requires_txt", "expected"), [
    ("Metadata-Version: 2.1\nName: mid\nRequires-Dist: dep\n"
     "Requires-Dist: Other.Thing (>=1.0)\nRequires-Dist: extra-only ; extra == \"x\"\n"
     "Requires-Dist: old-py ; python_version < \"3.8\"\n\nRequires-Dist: in-body\n",
     "", {"dep", "other_thing", "old_py"}),
    ("Name: egg\n", "dep>=1\n[:python_version < '3.12']\nmarked\n[extra]\nskipped\n",
     {"dep", "marked"}),
    ("", "", set()),
])
def test_parse_requires(metadata, requires_txt, expected):
    assert imports_graph.parse_requires(metadata, requires_txt) == expected


# --------------------------------------------------------------------------- snapshot/restore

def test_snapshot_restore_is_exact():
    containers = (sys.modules, sys.path, sys.meta_path, sys.path_hooks,
                  sys.path_importer_cache)
    doomed = types.ModuleType("_rollover_test_doomed")
    sys.modules["_rollover_test_doomed"] = doomed
    try:
        snap = rf.snapshot()
        sys.modules["_rollover_test_new"] = types.ModuleType("_rollover_test_new")
        del sys.modules["_rollover_test_doomed"]
        replaced = sys.modules["json"]
        sys.modules["json"] = types.ModuleType("json")
        sys.path.insert(0, "/rollover/test/nowhere")
        sys.meta_path.append(object())
        sys.path_hooks.append(lambda path: None)
        sys.path_importer_cache["/rollover/test/nowhere"] = None
        rf.restore(snap)
        assert (sys.modules, sys.path, sys.meta_path, sys.path_hooks,
                sys.path_importer_cache) == (snap.modules, snap.path, snap.meta_path,
                                             snap.path_hooks, snap.path_importer_cache)
        assert sys.modules["json"] is replaced
        assert sys.modules["_rollover_test_doomed"] is doomed
        assert "_rollover_test_new" not in sys.modules
        # the same containers, restored in place (other code holds references to them)
        assert all(a is b for a, b in zip(containers, (
            sys.modules, sys.path, sys.meta_path, sys.path_hooks, sys.path_importer_cache),
            strict=True))
    finally:
        sys.modules.pop("_rollover_test_doomed", None)


# --------------------------------------------------------------------------- the report

def test_report_summary_is_one_line_and_dict_is_json():
    report = rf.RefreshReport(
        paths_added=["/sp/pkg-2.0.egg"], paths_removed=["/sp/pkg-1.0.egg"],
        modules_purged=["pkg"], distributions_changed={"pkg": "1.0 -> 2.0"},
        finders_removed=["__editable___pkg_1_0_finder"],
        needs_reexec=["gunicorn: distribution gunicorn 27.0.1 -> 27.0.2"],
        problems=["x.pth line 1 raised\nValueError: multi\nline"], duration=0.0421)
    line = report.summary()
    assert "\n" not in line
    for part in ("+/sp/pkg-2.0.egg", "-/sp/pkg-1.0.egg", "purged pkg", "pkg 1.0 -> 2.0",
                 "NEEDS RE-EXEC", "1 problem(s)", "0.042s"):
        assert part in line, line
    assert json.loads(json.dumps(report.as_dict()))["modules_purged"] == ["pkg"]
    assert rf.RefreshReport(duration=0.01).summary() == "no changes in 0.010s"


# --------------------------------------------------------------------------- refresh()

def _import_state() -> tuple[list[str], list[object], list[object], dict[str, object]]:
    return (list(sys.path), list(sys.meta_path), list(sys.path_hooks), dict(sys.modules))


def test_refresh_timeout_raises_and_touches_nothing():
    before = _import_state()
    with pytest.raises(rf.RefreshError, match="did not answer within"):
        rf.refresh(timeout=0.001)
    assert _import_state() == before


def test_refresh_failing_interpreter_raises_one_line():
    with pytest.raises(rf.RefreshError) as info:
        rf.refresh(executable="/bin/false")
    assert "\n" not in str(info.value)
    assert "fresh interpreter" in str(info.value)


def test_refresh_failure_midway_restores_everything(monkeypatch):
    def boom(*args, **kwargs):
        sys.modules["_rollover_half_done"] = types.ModuleType("_rollover_half_done")
        sys.path.append("/rollover/half/done")
        raise OSError("disk on fire")

    monkeypatch.setattr(rf, "select_purge", boom)
    before = _import_state()
    with pytest.raises(rf.RefreshError, match="nothing changed: OSError: disk on fire"):
        rf.refresh()
    assert _import_state() == before


_STABLE = """
import importlib.metadata, json, site, sys
from rollover import refresh

def sizes():
    return [len(sys.path), len(sys.meta_path), len(site.PREFIXES), len(sys.path_hooks),
            len(sys.path_importer_cache) > 0]

first = sizes()
path = list(sys.path)
summaries = []
for _ in range(20):
    report = refresh.refresh()
    summaries.append(report.summary())
    assert sizes() == first, (sizes(), first, report.summary())
print(json.dumps({"sizes": first, "path_same": sys.path == path, "summaries": summaries}))
"""


def test_twenty_refreshes_are_stable():
    """A process of its own (the editable install of rollover puts a setuptools finder on
    sys.meta_path: it must stay exactly one)."""
    done = subprocess.run([sys.executable, "-c", _STABLE], capture_output=True, text=True,
                          timeout=120, check=False, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["path_same"]
    assert len(result["summaries"]) == 20
    assert all(s.startswith("no changes in ") for s in result["summaries"]), result


def test_refresh_clears_importlib_metadata_caches():
    code = textwrap.dedent("""
        import importlib.metadata as md
        from rollover import refresh
        md.version("gunicorn")
        assert md.FastPath.__new__.cache_info().currsize > 0
        report = refresh.refresh()
        assert not report.problems, report.problems
        assert md.FastPath.__new__.cache_info().currsize == 0
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)


def test_interpreter_flags_follow_the_running_interpreter():
    code = "from rollover.refresh import interpreter_flags; print(interpreter_flags())"
    done = subprocess.run([sys.executable, "-s", "-X", "frozen_modules=off", "-c", code],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['-s', '-X', 'frozen_modules=off']"


def test_fresh_interpreter_answers_like_a_new_process(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        from rollover.refresh import ask_fresh_interpreter
        fresh = ask_fresh_interpreter()
        print(json.dumps([fresh["path"], sys.path[1:]]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True, cwd=tmp_path)
    fresh, ours = json.loads(done.stdout.splitlines()[-1])
    assert fresh == ours


def test_interpreter_change_is_detected():
    reg = rf._registry
    same = {"version": sys.version, "executable": reg.executable,
            "base_prefix": reg.base_prefix}
    assert refresh_state.interpreter_changes(reg, same) == []
    other = refresh_state.interpreter_changes(reg, {**same, "version": "3.99.0 (main) [GCC]"})
    assert len(other) == 1 and "Python" in other[0] and "3.99.0 is on disk" in other[0]
    assert refresh_state.interpreter_changes(reg, {**same, "executable": "/usr/bin/python9"})


def test_refresh_refuses_another_interpreter_and_touches_nothing(monkeypatch):
    reg = rf._registry
    monkeypatch.setattr(rf, "ask_fresh_interpreter", lambda *a, **k: {
        "path": ["/elsewhere"], "site_dirs": [], "version": "3.99.0 (main)",
        "executable": "/opt/py399/bin/python3.99", "base_prefix": reg.base_prefix})
    before = _import_state()
    with pytest.raises(rf.NeedsReexec, match=r"needs a re-exec \(kill -USR2\)"):
        rf.refresh()
    assert _import_state() == before
    assert rf._registry is reg


def test_a_module_known_under_a_second_name_goes_with_its_real_package(monkeypatch):
    """Cython registers `pandas._libs._cyutility` as `_cyutility` too: not a package of its
    own (none that a fresh import finds), purged with pandas."""
    import importlib.machinery

    module = types.ModuleType("_rollover_real.sub")
    module.__spec__ = importlib.machinery.ModuleSpec("_rollover_real.sub", None,
                                                     origin="/sp/_rollover_real/sub.so")
    monkeypatch.setitem(sys.modules, "_rollover_real.sub", module)
    monkeypatch.setitem(sys.modules, "_rollover_alias", module)
    assert refresh_state.alias_of("_rollover_alias", module) == "_rollover_real.sub"
    assert refresh_state.alias_of("_rollover_real.sub", module) is None
    assert not refresh_state.considered("_rollover_alias", module)


def test_finalizers_of_purged_code_are_detached_so_it_can_be_collected():
    """Django's Signal.connect registers `weakref.finalize(receiver, signal._remove_receiver)`:
    with both in purged code, the entry would pin the purged modules for good."""
    import weakref

    purged = types.ModuleType("_rollover_purged.signals")
    exec("class Signal:\n    def remove(self):\n        pass\n\ndef receiver():\n    pass\n",
         purged.__dict__)
    signal = purged.Signal()
    ours = weakref.finalize(purged.receiver, signal.remove)
    kept_code = weakref.finalize(purged.receiver, print)  # a callback that is not purged
    other = weakref.finalize(signal, signal.remove)
    try:
        assert refresh_purge._detach_finalizers({"_rollover_purged"}) == 2
        assert not ours.alive and not other.alive and kept_code.alive
        assert refresh_purge._detach_finalizers(set()) == 0
    finally:
        kept_code.detach()


def test_code_on_the_stack_is_never_purged():
    """pytest around an in-process arbiter, or the module whose run() started it: code
    that is running cannot be replaced under itself (it is kept like gunicorn)."""
    namespace = {"__name__": "_rollover_running_pkg.mod", "purge": refresh_purge}
    exec("def probe():\n    return purge.running_tops()\n", namespace)
    assert "_rollover_running_pkg" in namespace["probe"]()
    assert "_rollover_running_pkg" not in refresh_purge.running_tops()
