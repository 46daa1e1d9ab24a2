"""The app's environment file (default `<root>/shared/.env`): one file read by the build
step, the preflight and (through systemd's `EnvironmentFile=`) the master.

The syntax is what dotenv readers, systemd's `EnvironmentFile=` and a shell (`set -a;
. FILE`) read alike: `KEY=VALUE` lines, `#` comments and blank lines, a value bare or in
single or double quotes, taken literally. Anything they would read differently (`export
KEY=...`, a line without `=`, a bad name, a bare value with a space, `$` or a backslash
outside single quotes) is an error naming the line, so they never disagree. In build and
preflight the file wins over the deploy shell's environment; under systemd
`EnvironmentFile=` wins over the unit's `Environment=` lines.
"""

from __future__ import annotations

import os
import re

from rollover.deploy.report import DeployError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_NAME = ".env"
TEMPLATE = """\
# The app's environment: read by `rollover deploy` (build step and preflight) and by the
# master (systemd EnvironmentFile=). KEY=VALUE lines; quotes optional; no $ expansion.
# ROLLOVER_PROBE_PATH=/healthz
"""

# characters whose meaning differs between `sh` (`set -a; . FILE`), systemd and dotenv
_UNSAFE_BARE = set(" \t$`\\\"';&|<>()#")
_UNSAFE_DOUBLE = set("$`\\\"")

# what never goes from a master's environment into a comparison with the file
_PROCESS_ONLY = {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "GUNICORN_FD",
                 "GUNICORN_PID", "INVOCATION_ID", "JOURNAL_STREAM", "PWD"}


def parse(text: str, where: str) -> dict[str, str]:
    """KEY -> value, in file order; DeployError naming the line for anything unclear."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if sep and (key != key.rstrip() or value != value.lstrip()):
            raise DeployError(f"{where}:{number}: no spaces around '=' (a shell would run "
                              f"{key.strip()!r} as a command)")
        if not sep or not NAME.match(key):
            hint = (" ('export' is not understood by systemd's EnvironmentFile=)"
                    if key.startswith("export ") else "")
            raise DeployError(f"{where}:{number}: not KEY=VALUE: {raw.strip()[:60]!r}{hint}")
        quote = value[:1] if value[:1] in ("'", '"') else ""
        if quote and (len(value) < 2 or value[-1] != quote):
            raise DeployError(f"{where}:{number}: unterminated quote in {key}")
        inner = value[1:-1] if quote else value
        unsafe = {"'": "'", '"': _UNSAFE_DOUBLE, "": _UNSAFE_BARE}[quote]
        found = sorted({c for c in inner if c in unsafe})
        if found:
            shown = " ".join(repr(c) for c in found)
            raise DeployError(f"{where}:{number}: {key}'s value has {shown}, which a shell, "
                              "systemd and dotenv read differently: put it in single quotes "
                              "(and no ' inside)")
        env[key] = inner
    return env


def read(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise DeployError(f"env file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read the env file {path}: {exc}") from None
    return parse(text, path)


def environment(file_env: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the build step and the preflight: the deploy's own (without a
    virtualenv's variables), the file's on top (the file wins)."""
    env = dict(os.environ if base is None else base)
    for key in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(file_env)
    return env


def differences(file_env: dict[str, str], master_env: dict[str, str]) -> list[str]:
    """Names whose value the master does not have as the file says (pure)."""
    return sorted(k for k, v in file_env.items()
                  if k not in _PROCESS_ONLY and master_env.get(k) != v)
