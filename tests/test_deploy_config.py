"""The pure and file-level parts of issue #23's deploy features, fast: rollover.toml, the
env file's syntax, the shared paths (checking, seeding, linking), `--init`'s files, and
one-line errors with exit 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from deploy_support import deploy_env
from harness import ROLLOVER_CLI

from rollover import cli, deploy
from rollover.deploy import config, envfile
from rollover.deploy import shared as shared_paths

# --------------------------------------------------------------------------- rollover.toml


def test_config_parses_and_makes_paths_absolute() -> None:
    got = config.parse('[deploy]\npidfile = "run/g.pid"\nshared = ["media/", "db.sqlite3"]\n'
                       'build = "python manage.py collectstatic --noinput"\nkeep = 2\n'
                       'wheel = ["/w/r.whl", "w/x.whl"]\nno_index = true\n', "/srv/app", "f")
    assert got == {"pidfile": "/srv/app/run/g.pid", "shared": ["media/", "db.sqlite3"],
                   "build": ["python manage.py collectstatic --noinput"], "keep": 2,
                   "wheel": ["/w/r.whl", "/srv/app/w/x.whl"], "no_index": True}


@pytest.mark.parametrize(("text", "needle"), [
    ("[deploy]\nkeep = 0\n", "deploy.keep must be a whole number >= 1"),
    ("[deploy]\nkep = 2\n", "unknown key deploy.kep"),
    ("keep = 2\n", "unknown table or key 'keep'"),
    ("[deploy]\nmethod = 'usr3'\n", "one of auto, hup, usr2"),
    ("[deploy]\nshared = [1]\n", "a list of strings"),
    ("[deploy\n", "f:"),
])
def test_config_errors_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(deploy.DeployError, match=None) as info:
        config.parse(text, "/srv/app", "f")
    assert needle in str(info.value)


# --------------------------------------------------------------------------- env file


def test_env_file_syntax_shared_by_shell_systemd_and_dotenv(tmp_path: Path) -> None:
    text = ("# comment\n\nSECRET_KEY='s3cr$t k#y'\nDATABASE_URL=sqlite:////srv/db\n"
            'GREETING="hello world"\nEMPTY=\n')
    env = envfile.parse(text, "f")
    assert env == {"SECRET_KEY": "s3cr$t k#y", "DATABASE_URL": "sqlite:////srv/db",
                   "GREETING": "hello world", "EMPTY": ""}
    # a shell reads the same values (`set -a; . FILE`, the printed start command)
    path = tmp_path / "env"
    path.write_text(text)
    out = subprocess.run(["sh", "-c", f"set -a; . {path}; set +a; env -0"], check=True,
                         capture_output=True, env={"PATH": os.environ["PATH"]}).stdout
    shell = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
    assert {k: shell[k] for k in env} == env


@pytest.mark.parametrize(("line", "needle"), [
    ("export A=1", "'export' is not understood"),
    ("A = 1", "no spaces around '='"),
    ("A=a b", "put it in single quotes"),
    ('A="$HOME/x"', "put it in single quotes"),
    ("A='x", "unterminated quote"),
    ("not a line", "not KEY=VALUE"),
])
def test_env_file_rejects_what_readers_disagree_on(line: str, needle: str) -> None:
    with pytest.raises(deploy.DeployError) as info:
        envfile.parse(f"OK=1\n{line}\n", "/srv/app/shared/.env")
    assert str(info.value).startswith("/srv/app/shared/.env:2: ") and needle in str(info.value)


def test_env_differences_ignore_process_variables() -> None:
    assert envfile.differences({"A": "1", "B": "2", "PWD": "/x"},
                               {"A": "1", "B": "3", "LISTEN_FDS": "1"}) == ["B"]


# --------------------------------------------------------------------------- shared paths


def test_shared_entries_checked() -> None:
    got = shared_paths.entries(["media/", "db.sqlite3", "conf/local.py", "media"])
    assert [(e.path, e.is_dir) for e in got] == [("conf/local.py", None), ("db.sqlite3", None),
                                                  ("media", True)]
    for bad in ("/abs", "../up", "venv/x", ".", "a/../../b"):
        with pytest.raises(deploy.DeployError, match="must be a path inside the release"):
            shared_paths.entries([bad])
    with pytest.raises(deploy.DeployError, match="lies inside"):
        shared_paths.entries(["media/", "media/avatars/"])


def test_shared_seeded_once_linked_relative_and_not_copied(tmp_path: Path) -> None:
    source, root = tmp_path / "src", tmp_path / "root"
    (source / "media").mkdir(parents=True)
    (source / "media" / "logo.png").write_bytes(b"png")
    (source / "app.py").write_text("x = 1\n")
    entries = shared_paths.entries(["media", "db.sqlite3", "conf/local.py"])
    shared = root / "shared"
    made = shared_paths.prepare(shared, entries, source)
    assert sorted(made) == ["shared/conf/local.py (empty file; end the name with / for a "
                            "directory)", "shared/db.sqlite3 (empty file; end the name with / "
                            "for a directory)", "shared/media (seeded from the source)"]
    (shared / "media" / "upload.jpg").write_bytes(b"user data")
    (source / "media" / "logo.png").write_bytes(b"new png")
    assert shared_paths.prepare(shared, entries, source) == []  # never overwritten
    assert (shared / "media" / "logo.png").read_bytes() == b"png"
    import shutil

    release = root / "releases" / "r1"
    shutil.copytree(source, release, ignore=shared_paths.copy_ignore(source, entries))
    assert not (release / "media").exists()
    shared_paths.link(release, shared, entries)
    assert os.readlink(release / "media") == "../../shared/media"
    assert os.readlink(release / "conf" / "local.py") == "../../../shared/conf/local.py"
    assert (release / "media" / "upload.jpg").read_bytes() == b"user data"
    shared_paths.link(release, shared, entries)  # again (a redeploy): the same links
    (release / "db.sqlite3").unlink()
    (release / "db.sqlite3").write_text("own copy")
    with pytest.raises(deploy.DeployError, match="the release's own copy"):
        shared_paths.link(release, shared, entries)


# --------------------------------------------------------------------------- --init, errors


def test_init_makes_shared_env_file_config_and_unit(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "app"
    pidfile = tmp_path / "run" / "gunicorn.pid"
    args = ["deploy", "--init", "--root", str(root), "--pidfile", str(pidfile), "--app",
            "djsite.wsgi:application", "--shared", "media/", "--shared", "db.sqlite3",
            "--build", "python manage.py collectstatic --noinput", "--keep", "3", "--json"]
    proc = subprocess.run([str(ROLLOVER_CLI), *args], capture_output=True, text=True,
                          timeout=60, check=False, env=deploy_env())
    assert proc.returncode == 0, proc.stderr
    assert (root / "shared" / "media").is_dir() and (root / "shared" / "db.sqlite3").is_file()
    env_file = root / "shared" / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600 and envfile.read(str(env_file)) == {}
    assert f"EnvironmentFile={env_file}" in proc.stderr
    toml = config.load(str(root))[0]
    assert toml == {"pidfile": str(pidfile), "app": "djsite.wsgi:application",
                    "shared": ["media/", "db.sqlite3"],
                    "build": ["python manage.py collectstatic --noinput"], "keep": 3}
    out = json.loads(proc.stdout)
    assert out["start_shell"].startswith(f"set -a; . {env_file}; set +a; exec ")
    # twice in a row: nothing overwritten
    env_file.write_text("A=1\n")
    again = subprocess.run([str(ROLLOVER_CLI), *args[:3], str(root), "--pidfile",
                            str(pidfile)], capture_output=True, text=True, timeout=60,
                           check=False, env=deploy_env())
    assert again.returncode == 0, again.stderr
    assert "rollover.toml exists: left as it is" in again.stdout
    assert env_file.read_text() == "A=1\n"


@pytest.mark.parametrize(("toml", "extra", "needle"), [
    ("", [], "which master? give --pidfile"),
    ("[deploy]\nkeep = -1\n", [], "deploy.keep must be"),
    ('[deploy]\npidfile = "p"\nshared = ["../x"]\n', ["--source", "."], "must be a path"),
    ('[deploy]\npidfile = "p"\nenv_file = "nope.env"\n', ["--source", "."], "no such file"),
    ('[deploy]\npidfile = "p"\n', ["--build", "true", "--release", "x"],
     "--build runs in a release being built"),
    # rollover.toml's wheels add to a build; --release alone redeploys a built release
    ('[deploy]\npidfile = "p"\nwheel = ["w.whl"]\nbuild = ["false"]\n', ["--release", "x"],
     "no complete release x in"),
    ('[deploy]\npidfile = "p"\nwheel = ["w.whl"]\n', ["--source", "."], "w.whl: no such file"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path: Path, toml: str, extra: list[str],
                                          needle: str, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ROLLOVER_PIDFILE", raising=False)
    (tmp_path / "rollover.toml").write_text(toml)
    code = cli.main(["deploy", "--root", str(tmp_path), "--app", "a:b", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == deploy.EXIT_ERROR, err
    assert len(err) == 1 and err[0].startswith("rollover: ") and needle in err[0], err


def test_deploy_warns_when_the_master_has_another_environment(
        capsys: pytest.CaptureFixture[str]) -> None:
    from rollover.deploy.command import _say_environment
    from rollover.deploy.report import Report

    master = deploy.LiveMaster(4242, {}, "", [], {"SECRET_KEY": "old", "A": "1",
                                                  "LISTEN_FDS": "1"})
    _say_environment("/srv/app/shared/.env", {"SECRET_KEY": "new", "A": "1", "B": "2"},
                     master, Report(json_mode=False))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[env]       /srv/app/shared/.env: 3 variables for the build and the preflight"
    assert out[1].startswith("[env]       warning: master 4242 does not have B, SECRET_KEY as "
                             "the env file says"), out
    _say_environment("/srv/app/shared/.env", {"A": "1"}, master, Report(json_mode=False))
    assert "warning" not in capsys.readouterr().out


def test_a_failed_release_is_kept_and_its_id_can_be_built_again(tmp_path: Path) -> None:
    """A build step that fails: exit 3, its output shown, the release kept and marked;
    the same id built again replaces it (no pip: the release's venv has no gunicorn, so
    the second attempt stops at the preflight, exit 4, kept as well)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "app.py").write_text("def app(environ, start_response):\n    return [b'']\n")
    root = tmp_path / "root"
    common = [str(ROLLOVER_CLI), "deploy", "--root", str(root), "--pidfile",
              str(tmp_path / "run" / "g.pid"), "--app", "app:app", "--source", str(source),
              "--release", "r1"]
    first = subprocess.run([*common, "--build", "echo step one; exit 3"], capture_output=True,
                           text=True, timeout=120, check=False, env=deploy_env())
    assert first.returncode == deploy.EXIT_BUILD_FAILED, first.stdout + first.stderr
    assert "[build]     | step one" in first.stdout
    assert first.stderr.strip() == ("rollover: build failed: `echo step one; exit 3` exited "
                                    "3: step one")
    meta = json.loads((root / "releases" / "r1" / deploy.METADATA).read_text())
    assert meta["complete"] is False and "exited 3" in meta["failed"], meta
    assert "step one" in (root / "releases" / "r1" / ".rollover-build.log").read_text()
    assert not (root / "current").exists()
    second = subprocess.run(common, capture_output=True, text=True, timeout=120, check=False,
                            env=deploy_env())
    assert second.returncode == deploy.EXIT_PREFLIGHT_FAILED, second.stdout + second.stderr
    assert "replacing the failed release r1" in second.stdout
    meta = json.loads((root / "releases" / "r1" / deploy.METADATA).read_text())
    assert meta["complete"] is True and "preflight failed" in meta["failed"], meta
