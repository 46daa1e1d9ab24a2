"""The deploy config: `<root>/rollover.toml`, so every deploy's command line is
`rollover deploy --root R --source S` and nothing else. Flags override it, key by key
(a list given on the command line replaces the config's list).

    [deploy]
    pidfile = "/run/app/gunicorn.pid"
    app = "mysite.wsgi:application"
    shared = ["media/", "db.sqlite3"]          # linked into every release from <root>/shared/
    build = ["python manage.py collectstatic --noinput"]
    env_file = "shared/.env"                   # the default
    probe_path = "/healthz"
    keep = 5
    wheel = ["/srv/wheels/gunicorn_rollover-0.1.0-py3-none-any.whl"]

Relative paths in the file are relative to the root. `parse` is pure; `apply` fills the
options the command line left unset (None), then the built-in defaults.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from rollover.deploy.report import DeployError

CONFIG_NAME = "rollover.toml"

# key: (kind, default). Kinds: str, path (relative to the root), paths (a list of them),
# strs, int (>= 1), float (> 0), bool, or a tuple of allowed strings.
KEYS: dict[str, tuple[Any, Any]] = {
    "pidfile": ("path", None),
    "status": ("path", None),
    "app": ("str", None),
    "shared": ("strs", []),
    "build": ("strs", []),
    "env_file": ("path", None),
    "probe_path": ("str", None),
    "requirements": ("paths", []),
    "wheel": ("paths", []),
    "find_links": ("paths", []),
    "no_index": ("bool", False),
    "pip_arg": ("strs", []),
    "python": ("path", None),
    "interface": (("auto", "wsgi", "asgi"), "auto"),
    "method": (("auto", "hup", "usr2"), "auto"),
    "keep": ("int", 5),
    "keep_failed": ("int", 3),
    "timeout": ("float", 300.0),
    "preflight_timeout": ("float", 120.0),
    "build_timeout": ("float", 900.0),
    "bind": ("str", "127.0.0.1:8000"),
    "workers": ("int", 4),
}


def parse(text: str, root: str, where: str) -> dict[str, Any]:
    """The `[deploy]` table of a rollover.toml, checked; paths made absolute."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(f"{where}: {exc}") from None
    unknown_tables = sorted(set(data) - {"deploy"})
    if unknown_tables:
        raise DeployError(f"{where}: unknown table or key {unknown_tables[0]!r} (the settings "
                          "go under [deploy])")
    table = data.get("deploy", {})
    if not isinstance(table, dict):
        raise DeployError(f"{where}: deploy must be a table ([deploy])")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise DeployError(f"{where}: unknown key deploy.{key} (known: "
                              f"{', '.join(sorted(KEYS))})")
        out[key] = _check(key, value, KEYS[key][0], root, where)
    return out


def _check(key: str, value: Any, kind: Any, root: str, where: str) -> Any:
    def bad(what: str) -> DeployError:
        return DeployError(f"{where}: deploy.{key} must be {what}, got {value!r}")

    if isinstance(kind, tuple):
        if value not in kind:
            raise bad("one of " + ", ".join(kind))
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise bad("a string")
        return os.path.join(root, value) if kind == "path" and value else value
    if kind in ("strs", "paths"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad("a list of strings")
        return [os.path.join(root, v) for v in value] if kind == "paths" else list(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a whole number >= 1")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise bad("a number > 0")
    return float(value)


def load(root: str) -> tuple[dict[str, Any], str | None]:
    """The root's rollover.toml parsed ({} and None without one), and its path."""
    path = Path(root) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None
    return parse(text, str(Path(root).resolve()), str(path)), str(path)


def apply(opts: argparse.Namespace, config: dict[str, Any]) -> None:
    """Fill every option the command line left unset from `config`, then the default."""
    for key, (_, default) in KEYS.items():
        if getattr(opts, key, None) is None:
            value = config.get(key, default)
            setattr(opts, key, list(value) if isinstance(value, list) else value)
